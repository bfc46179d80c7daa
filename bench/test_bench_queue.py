"""Queue handoff: 10^6 records of two small arrays (an int64 id and a
float32[4] payload) through a bounded queue, 1 producer / 1 consumer and
2 / 2, fastpipe beside the stdlib's queue.Queue (and Caffe2's BlobsQueue
when the oracle is installed).  Every run checks count and checksum.

Run: python -m pytest bench/test_bench_queue.py --benchmark-only
"""
import queue
import threading

import numpy as np
import pytest

from conftest import caffe2_seconds
from fastpipe import core, workspace

N = 1_000_000
CAPACITY = 256

# The plan builder below is written against the Caffe2 API only, so the
# same source runs on the oracle (with `fastpipe` aliased to caffe2).
PLAN_SRC = '''
def build(core, n, producers, consumers, capacity):
    init = core.Net("hinit")
    init.CreateBlobsQueue([], "hq", capacity=capacity, num_blobs=2)
    init.CreateCounter([], "ctr", init_count=0)
    prods = []
    for p in range(producers):
        net = core.Net("produce_%d" % p)
        net.CountUp("ctr", "id_%d" % p)
        net.ConstantFill([], "pay_%d" % p, shape=[4], value=1.0)
        net.SafeEnqueueBlobs(["hq", "id_%d" % p, "pay_%d" % p],
                             ["id_%d" % p, "pay_%d" % p, "pst_%d" % p])
        prods.append(core.execution_step("prod_%d" % p, net, num_iter=n // producers))
    close = core.Net("hclose")
    close.CloseBlobsQueue(["hq"], [])
    conss = []
    for c in range(consumers):
        init.ConstantFill([], "acc_%d" % c, shape=[], value=0, dtype=core.DataType.INT64)
        init.ConstantFill([], "cnt_%d" % c, shape=[], value=0, dtype=core.DataType.INT64)
        init.ConstantFill([], "one_%d" % c, shape=[], value=1, dtype=core.DataType.INT64)
        deq = core.Net("consume_%d" % c)
        deq.SafeDequeueBlobs(["hq"], ["cid_%d" % c, "cpay_%d" % c, "cst_%d" % c])
        acc = core.Net("accumulate_%d" % c)
        acc.Add(["acc_%d" % c, "cid_%d" % c], "acc_%d" % c)
        acc.Add(["cnt_%d" % c, "one_%d" % c], "cnt_%d" % c)
        conss.append(core.execution_step("cons_%d" % c, [deq, acc],
                                         should_stop_blob=core.BlobReference("cst_%d" % c)))
    producers_then_close = core.execution_step(
        "producers", [core.execution_step("prods", prods, concurrent_substeps=True),
                      core.execution_step("close", close)])
    plan = core.Plan("handoff")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("run", conss + [producers_then_close],
                                     concurrent_substeps=True))
    return plan
'''
_ns = {}
exec(PLAN_SRC, _ns)
build = _ns["build"]


def _check(consumers):
    total = sum(int(workspace.FetchBlob("acc_%d" % c)) for c in range(consumers))
    count = sum(int(workspace.FetchBlob("cnt_%d" % c)) for c in range(consumers))
    assert count == N
    assert total == N * (N - 1) // 2


@pytest.mark.benchmark(group="queue handoff 10^6 records (int64 + float32[4])")
@pytest.mark.parametrize("pc", [(1, 1), (2, 2)], ids=["1P1C", "2P2C"])
def test_handoff_fastpipe(benchmark, record, pc):
    plan = build(core, N, pc[0], pc[1], CAPACITY)
    benchmark.pedantic(workspace.RunPlan, args=(plan,), rounds=5, iterations=1)
    _check(pc[1])
    record("fastpipe %dP/%dC" % pc, rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="queue handoff 10^6 records (int64 + float32[4])")
@pytest.mark.parametrize("pc", [(1, 1), (2, 2)], ids=["1P1C", "2P2C"])
def test_handoff_stdlib_queue(benchmark, record, pc):
    producers, consumers = pc

    def run():
        q = queue.Queue(CAPACITY)
        counter = iter(range(N))
        lock = threading.Lock()
        results = [None] * consumers

        def produce(k):
            pay = np.ones(4, np.float32)
            for _ in range(N // producers):
                with lock:
                    i = next(counter)
                q.put((i, pay.copy()))

        def consume(c):
            acc = cnt = 0
            while True:
                item = q.get()
                if item is None:
                    break
                acc += item[0]
                cnt += 1
            results[c] = (acc, cnt)
        cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
        ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in cs + ps:
            t.start()
        for t in ps:
            t.join()
        for _ in cs:
            q.put(None)
        for t in cs:
            t.join()
        return results
    res = benchmark.pedantic(run, rounds=1, iterations=1)
    assert sum(r[1] for r in res) == N and sum(r[0] for r in res) == N * (N - 1) // 2
    record("queue.Queue + threads %dP/%dC" % pc, rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="queue handoff 10^6 records (int64 + float32[4])")
@pytest.mark.parametrize("pc", [(1, 1), (2, 2)], ids=["1P1C", "2P2C"])
def test_handoff_caffe2(benchmark, record, pc):
    secs = caffe2_seconds("queue handoff %dP/%dC" % pc, PLAN_SRC + '''
import time
from caffe2.python import core, workspace
plan = build(core, %d, %d, %d, %d)
t = time.perf_counter(); workspace.RunPlan(plan); dt = time.perf_counter() - t
tot = sum(int(workspace.FetchBlob("cnt_%%d" %% c)) for c in range(%d))
assert tot == %d, tot
print(dt)
''' % (N, pc[0], pc[1], CAPACITY, pc[1], N), records=N)
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info["caffe2_rate_per_s"] = "%.3g" % (N / secs)
