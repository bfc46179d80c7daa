"""End to end: Dataset -> processor (y = 2x + 1 on float32[16]) -> queue ->
Dataset, batch 1 and batch 64, records/s with a checksum; fastpipe beside a
Python+numpy pipeline on threads and queue.Queue, and Caffe2 itself when the
oracle is installed.

Run: python -m pytest bench/test_bench_pipe.py --benchmark-only
"""
import queue
import threading

import numpy as np
import pytest

from conftest import caffe2_seconds
from fastpipe import core, workspace

N = {1: 1_000_000, 64: 4_000_000}
N_CAFFE2 = {1: 100_000, 64: 1_000_000}

# Written against the Caffe2 API only, so the oracle runs the same source.
PIPE_SRC = '''
import numpy as np

def build(core, schema, dataset, pipeline, task, ops, ws_feed, n, batch, instances=1):
    src = dataset.Dataset(schema.Struct(("x", schema.Scalar((np.float32, (16,))))), name="src")
    dst = dataset.Dataset(schema.Struct(("y", schema.Scalar((np.float32, (16,))))), name="dst")
    init = core.Net("bench_init")
    with core.NameScope("src"):
        src.init_empty(init)
    with core.NameScope("dst"):
        dst.init_empty(init)
    writer = dst.writer(init_net=init)
    x = (np.arange(n * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(n, 16)

    def proc(rec):
        two = ops.Const(np.array(2.0, dtype=np.float32))
        one = ops.Const(np.array(1.0, dtype=np.float32))
        y = ops.Add([ops.Mul([rec.x(), two], broadcast=1), one], broadcast=1)
        return schema.Struct(("y", schema.Scalar((np.float32, (16,)), y)))

    with task.TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=batch), processor=proc,
                          num_runtime_threads=instances, capacity=256)
        pipeline.pipe(q, writer, num_runtime_threads=1)
    return init, tg, src, dst, x

def expected_checksum(x):
    return float((2.0 * x.astype(np.float64) + 1.0).sum())
'''
_ns = {}
exec(PIPE_SRC, _ns)


def _run_fastpipe(n, batch):
    from fastpipe import dataset, pipeline, schema, session, task
    from fastpipe.net_builder import ops
    ws = workspace.C.Workspace()
    init, tg, src, dst, x = _ns["build"](core, schema, dataset, pipeline, task, ops, None,
                                         n, batch)
    ws.run(init)
    ws.blobs[str(src.get_blobs()[0])].feed(x)
    sess = session.LocalSession(ws)
    sess.compile(tg)

    def run():
        # fresh, empty destination each round (the run appends to it)
        ws.blobs[str(dst.get_blobs()[0])].feed(np.zeros((0, 16), np.float32))
        sess.run(tg)
    return run, ws, dst, x


@pytest.mark.benchmark(group="pipe Dataset -> 2x+1 -> queue -> Dataset")
@pytest.mark.parametrize("batch", [1, 64])
def test_pipe_fastpipe(benchmark, record, batch):
    n = N[batch]
    run, ws, dst, x = _run_fastpipe(n, batch)
    benchmark.pedantic(run, rounds=3, iterations=1)
    y = ws.blobs[str(dst.get_blobs()[0])].fetch()
    assert y.shape == (n, 16)
    assert abs(float(y.astype(np.float64).sum()) - _ns["expected_checksum"](x)) < 1e-3 * n
    record("fastpipe batch %d" % batch, records=n, rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="pipe Dataset -> 2x+1 -> queue -> Dataset")
@pytest.mark.parametrize("batch", [1, 64])
def test_pipe_python_threads(benchmark, record, batch):
    n = N[batch] if batch > 1 else N[batch] // 4
    x = (np.arange(n * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(n, 16)

    def run():
        q = queue.Queue(256)
        out = []

        def reader():
            for i in range(0, n, batch):
                q.put(x[i:i + batch] * np.float32(2) + np.float32(1))
            q.put(None)

        def writer():
            while True:
                b = q.get()
                if b is None:
                    break
                out.append(b)
        ts = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return np.concatenate(out)
    y = benchmark.pedantic(run, rounds=1, iterations=1)
    assert abs(float(y.astype(np.float64).sum()) - _ns["expected_checksum"](x)) < 1e-3 * n
    record("python threads + queue.Queue batch %d" % batch, records=n,
           rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="pipe Dataset -> 2x+1 -> queue -> Dataset")
@pytest.mark.parametrize("batch", [1, 64])
def test_pipe_caffe2(benchmark, record, batch):
    n = N_CAFFE2[batch]
    secs = caffe2_seconds("pipe batch %d (%d records)" % (batch, n), PIPE_SRC + '''
import time
from caffe2.python import core, schema, dataset, pipeline, task, session, workspace
from caffe2.python.net_builder import ops
ws = workspace.C.Workspace()
init, tg, src, dst, x = build(core, schema, dataset, pipeline, task, ops, None, %d, %d)
ws.run(init)
ws.blobs[str(src.get_blobs()[0])].feed(x)
sess = session.LocalSession(ws)
sess.compile(tg)
t = time.perf_counter(); sess.run(tg); dt = time.perf_counter() - t
y = ws.blobs[str(dst.get_blobs()[0])].fetch()
assert y.shape[0] == %d, y.shape
print(dt)
''' % (n, batch, n), records=n)
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info["caffe2_rate_per_s"] = "%.3g" % (n / secs)
