"""Sources: how fast ArrayReader reads the peer workloads' data, beside the
Dataset reader it replaces (same data, same pipe, same run of pytest).

* 200,000 single records (W_pipe_record's data: id int64, x float32[16]),
  2 runtime instances, reader only (an empty writer): ArrayReader with
  batch_size=None (records without the batch dim) and batch_size=1, beside
  a Dataset reader with batch_size=1.
* 2,000,000 records in batches of 64 (W_pipe_batched's data): ArrayReader,
  ArrayReader shuffled, Dataset epoch_reader shuffled and plain.
* The per-run setup: a 10-record ArrayReader (its task init borrows the
  arrays in a Python op, once per run) beside a Dataset reader.

Counts are checked after timing.  Run:
    python -m pytest bench/test_bench_sources.py --benchmark-only
"""
import threading

import numpy as np
import pytest

from fastpipe import core, dataset, schema, session, sources, task, workspace
from fastpipe.dataio import Writer
from fastpipe.pipeline import pipe


class _Sink(Writer):
    """Writes nothing (the write net is empty): the pipe's cost is the read."""

    def write(self, writer_net, fields):
        pass


class _Count(Writer):
    def __init__(self):
        self.rows = 0
        self.ids = 0
        self.lock = threading.Lock()

    def write(self, writer_net, fields):
        def count(inputs, outputs):
            d = inputs[0].data
            with self.lock:
                self.rows += d.size
                self.ids += int(d.sum())
        writer_net.Python(count)([fields[0]], [])


def _data(n):
    ids = np.arange(n, dtype=np.int64)
    xs = (np.arange(n * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(n, 16)
    return ids, xs


def _dataset(ws, ids, xs):
    ds = dataset.Dataset(schema.Struct(("id", schema.Scalar(np.int64)),
                                       ("x", schema.Scalar((np.float32, (16,))))), name="bsrc")
    init = core.Net("bsrc_init")
    with core.NameScope("bsrc"):
        ds.init_empty(init)
    ws.run(init)
    ws.blobs[str(ds.get_blobs()[0])].feed(ids)
    ws.blobs[str(ds.get_blobs()[1])].feed(xs)
    return ds


def _make_reader(kind, ws, ids, xs, batch):
    if kind == "ArrayReader":
        return sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch)
    if kind == "ArrayReader shuffled":
        return sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch, shuffle=True, seed=0)
    ds = _dataset(ws, ids, xs)
    if kind == "Dataset.reader":
        return ds.reader(batch_size=batch)       # cursor made in the task init: every run reads
    if kind == "Dataset.epoch_reader shuffled":
        return ds.epoch_reader(batch_size=batch, shuffle=True, seed=0)
    raise ValueError(kind)


def _job(ws, reader, writer, instances=2):
    with task.TaskGroup() as tg:
        pipe(reader, writer, num_runtime_threads=instances)
    sess = session.LocalSession(ws)
    sess.compile(tg)
    return lambda: sess.run(tg)


def _bench(benchmark, record, kind, n, batch, rounds=5):
    ws = workspace.C.Workspace()
    ids, xs = _data(n)
    run = _job(ws, _make_reader(kind, ws, ids, xs, batch), _Sink())
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    # correctness after timing: the same reader kind, counted
    count = _Count()
    _job(ws, _make_reader(kind, ws, ids, xs, batch), count)()
    assert count.rows == n and count.ids == n * (n - 1) // 2
    record("%s batch=%s" % (kind, batch), records_per_s=n / med, instances=2)


@pytest.mark.benchmark(group="sources: 200k single records (W_pipe_record data), 2 instances")
@pytest.mark.parametrize("kind, batch", [("ArrayReader", None), ("ArrayReader", 1),
                                         ("Dataset.reader", 1)])
def test_single_records(benchmark, record, kind, batch):
    _bench(benchmark, record, kind, 200_000, batch)


@pytest.mark.benchmark(group="sources: 2M records in batches of 64 (W_pipe_batched data), 2 instances")
@pytest.mark.parametrize("kind", ["ArrayReader", "ArrayReader shuffled", "Dataset.reader",
                                  "Dataset.epoch_reader shuffled"])
def test_batches(benchmark, record, kind):
    _bench(benchmark, record, kind, 2_000_000, 64, rounds=3)


@pytest.mark.benchmark(group="sources: 2M records in batches of 64 (W_pipe_batched data), 2 instances")
def test_batches_numpy_shuffle_baseline(benchmark, record):
    """The same shuffled epoch in numpy on one thread: a permutation, then
    one gather per field (what a shuffled epoch must at least do)."""
    n = 2_000_000
    ids, xs = _data(n)
    rng = np.random.default_rng(0)

    def epoch():
        p = rng.permutation(n)
        return ids[p], xs[p]
    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    a, b = epoch()
    assert int(a.sum()) == n * (n - 1) // 2
    record("numpy permutation + take (1 thread)", records_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="sources: per-run setup (10 records, batch 64)")
@pytest.mark.parametrize("kind", ["ArrayReader", "ArrayReader shuffled", "Dataset.reader"])
def test_per_run_setup(benchmark, record, kind):
    ws = workspace.C.Workspace()
    ids, xs = _data(10)
    run = _job(ws, _make_reader(kind, ws, ids, xs, 64), _Sink(), instances=1)
    benchmark.pedantic(run, rounds=200, iterations=1, warmup_rounds=5)
    record(kind)
