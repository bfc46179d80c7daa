"""Rebatching: 2*10^5 records (an int64 id and a float32[4] payload) enqueued
in batches of 64 (split on enqueue) and dequeued in batches of 16
(concatenated on a new dim 0), 1 producer / 1 consumer, fastpipe's
RebatchingQueue beside a stdlib queue.Queue of rows re-stacked with numpy
(and Caffe2's RebatchingQueue when the oracle is installed).  Every run
checks the checksum of the ids.

Run: python -m pytest bench/test_bench_rebatch.py --benchmark-only
"""
import queue
import threading

import numpy as np
import pytest

from conftest import caffe2_seconds
from fastpipe import core, workspace

N = 200_000
IN_BATCH = 64
OUT_BATCH = 16
CAPACITY = 256

PLAN_SRC = '''
def build(core, n, in_batch, out_batch, capacity):
    init = core.Net("rb_init")
    init.CreateRebatchingQueue([], "rbq", capacity=capacity, num_blobs=2)
    init.GivenTensorInt64Fill([], "rb_ids", shape=[in_batch], values=list(range(in_batch)))
    init.ConstantFill([], "rb_pay", shape=[in_batch, 4], value=1.0)
    init.ConstantFill([], "rb_acc", shape=[out_batch], value=0, dtype=core.DataType.INT64)
    prod = core.Net("rb_prod")
    prod.EnqueueRebatchingQueue(["rbq", "rb_ids", "rb_pay"], [], enqueue_batch=True)
    cons = core.Net("rb_cons")
    cons.DequeueRebatchingQueue(["rbq"], ["rb_cid", "rb_cpay"], num_elements=out_batch)
    cons.Add(["rb_acc", "rb_cid"], "rb_acc")
    plan = core.Plan("rebatch")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("run", [
        core.execution_step("cons", cons, num_iter=n // out_batch),
        core.execution_step("prod", prod, num_iter=n // in_batch)], concurrent_substeps=True))
    return plan
'''
_ns = {}
exec(PLAN_SRC, _ns)
build = _ns["build"]
CHECKSUM = (N // IN_BATCH) * (IN_BATCH * (IN_BATCH - 1) // 2)


@pytest.mark.benchmark(group="rebatch 2*10^5 records, 64 in / 16 out")
def test_rebatch_fastpipe(benchmark, record):
    plan = build(core, N, IN_BATCH, OUT_BATCH, CAPACITY)
    benchmark.pedantic(workspace.RunPlan, args=(plan,), rounds=5, iterations=1)
    assert int(workspace.FetchBlob("rb_acc").sum()) == CHECKSUM
    record("fastpipe RebatchingQueue", rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="rebatch 2*10^5 records, 64 in / 16 out")
def test_rebatch_stdlib_queue(benchmark, record):
    def run():
        q = queue.Queue(CAPACITY)
        ids = np.arange(IN_BATCH, dtype=np.int64)
        pay = np.ones((IN_BATCH, 4), np.float32)
        out = [0]

        def produce():
            for _ in range(N // IN_BATCH):
                for r in range(IN_BATCH):
                    q.put((ids[r].copy(), pay[r].copy()))

        def consume():
            acc = 0
            for _ in range(N // OUT_BATCH):
                rows = [q.get() for _ in range(OUT_BATCH)]
                cid = np.stack([r[0] for r in rows])
                np.stack([r[1] for r in rows])
                acc += int(cid.sum())
            out[0] = acc
        ts = [threading.Thread(target=consume), threading.Thread(target=produce)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out[0]
    acc = benchmark.pedantic(run, rounds=3, iterations=1)
    assert acc == CHECKSUM
    record("queue.Queue + np.stack", rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="rebatch 2*10^5 records, 64 in / 16 out")
def test_rebatch_caffe2(benchmark, record):
    secs = caffe2_seconds("rebatch", PLAN_SRC + '''
import time
from caffe2.python import core, workspace
plan = build(core, %d, %d, %d, %d)
t = time.perf_counter(); workspace.RunPlan(plan); dt = time.perf_counter() - t
assert int(workspace.FetchBlob("rb_acc").sum()) == %d
print(dt)
''' % (N, IN_BATCH, OUT_BATCH, CAPACITY, CHECKSUM), records=N)
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info["caffe2_rate_per_s"] = "%.3g" % (N / secs)
