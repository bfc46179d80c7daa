"""Appending to a Dataset: Dataset -> y = 2x+1 on float32[16] -> queue ->
Dataset (batch 64, 1 instance), each timed round a fresh job writing into a
fresh, empty destination, so that the cost of growing the destination
(allocation, copies, page faults) is in the measurement.

Side by side in one run: fastpipe's in-place growth ("mapped": mmap +
mremap), fastpipe's previous growth path ("copy": a new buffer and a copy on
every 40% growth, selected with the private switch _core._append_growth) and
a numpy baseline (the same work in a Python loop, output grown by
np.concatenate).  "4 jobs in a row" runs four fresh 2 M-record jobs back to
back in one process and reports each job's rate, to show the rate stays
flat after earlier jobs freed their buffers.

Run: python -m pytest bench/test_bench_append.py --benchmark-only
"""
import gc
import time

import numpy as np
import pytest

from fastpipe import _core, core, workspace
from test_bench_pipe import _ns

BATCH = 64
SIZES = [250_000, 2_000_000]


@pytest.fixture(params=["mapped", "copy"])
def growth(request):
    prev = _core._append_growth(request.param)
    yield request.param
    _core._append_growth(prev)


def _source(n):
    return (np.arange(n * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(n, 16)


def _job(n, x):
    """A fresh job (own workspace, empty destination) ready to run once."""
    from fastpipe import dataset, pipeline, schema, session, task
    from fastpipe.net_builder import ops
    ws = workspace.C.Workspace()
    init, tg, src, dst, _ = _ns["build"](core, schema, dataset, pipeline, task, ops, None, 1, BATCH)
    ws.run(init)
    ws.blobs[str(src.get_blobs()[0])].feed(x)
    sess = session.LocalSession(ws)
    sess.compile(tg)
    return ws, sess, tg, dst


def _check(ws, dst, x):
    y = ws.blobs[str(dst.get_blobs()[0])].fetch()
    assert y.shape == x.shape
    assert abs(float(y.astype(np.float64).sum()) - _ns["expected_checksum"](x)) < 1e-3 * len(x)


@pytest.mark.parametrize("n", SIZES)
def test_append_fastpipe(benchmark, record, growth, n):
    benchmark.group = "append: Dataset -> 2x+1 -> queue -> Dataset, %d records" % n
    x = _source(n)
    last = {}

    def setup():
        last.clear()
        gc.collect()     # the previous job goes now, not inside the timed run
        last["job"] = _job(n, x)
        return (), {}

    def run():
        ws, sess, tg, dst = last["job"]
        sess.run(tg)
    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    ws, sess, tg, dst = last["job"]
    _check(ws, dst, x)
    record("fastpipe %s growth" % growth, records=n, rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.parametrize("n", SIZES)
def test_append_numpy_concatenate(benchmark, record, n):
    benchmark.group = "append: Dataset -> 2x+1 -> queue -> Dataset, %d records" % n
    x = _source(n)

    def run():
        # the same work in Python: batches of 2x+1 appended to an output that
        # grows by 40% through np.concatenate when full
        out = np.empty((0, 16), np.float32)
        size = 0
        for i in range(0, n, BATCH):
            b = x[i:i + BATCH] * np.float32(2) + np.float32(1)
            if size + len(b) > len(out):
                out = np.concatenate([out[:size], np.empty((int((size + len(b)) * 1.4), 16), np.float32)])
            out[size:size + len(b)] = b
            size += len(b)
        return out[:size]
    y = benchmark.pedantic(run, rounds=1, iterations=1)
    assert abs(float(y.astype(np.float64).sum()) - _ns["expected_checksum"](x)) < 1e-3 * n
    record("numpy concatenate growth", records=n, rate_per_s=n / benchmark.stats.stats.median)


def test_append_four_jobs_in_a_row(benchmark, record, growth):
    benchmark.group = "append: 4 fresh 2M-record jobs in a row, one process"
    n = 2_000_000
    x = _source(n)
    rates = []
    last = {}

    def run():
        for _ in range(4):
            last.clear()
            gc.collect()
            ws, sess, tg, dst = _job(n, x)
            t0 = time.perf_counter()
            sess.run(tg)
            rates.append(n / (time.perf_counter() - t0))
            last["job"] = (ws, dst)
            del ws, sess, tg, dst
    benchmark.pedantic(run, rounds=2, iterations=1)
    ws, dst = last["job"]
    _check(ws, dst, x)
    med = float(np.median(rates))
    record("fastpipe %s growth" % growth, records=4 * n, jobs=4,
           rate_per_s=4 * n / benchmark.stats.stats.median,
           job_rates_M_per_s=[round(r / 1e6, 2) for r in rates],
           median_job_rate_M_per_s=round(med / 1e6, 2),
           last_over_first=round(rates[-1] / rates[0], 2))
