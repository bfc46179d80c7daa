"""Files in and out, each beside its baseline in the same run.

* NpyReader over a memory-mapped 2,000,000-record ``.npy`` pair (id int64,
  x float32[16]; 144 MB) in batches of 64, 1 and 2 runtime instances,
  reader only (an empty writer), beside a plain Python loop over
  ``np.load(mmap_mode="r")`` slices that copies each batch out.  The
  reader copies nothing: a batch inside a file borrows the mapping.  The
  files are in the page cache (written just before).
* NpyReader over the same data in 4 shards per field (read in place, every
  shard mapped; the 3 batches that span a shard boundary are assembled),
  construction timed with the run.
* ParquetReader over a 1,000,000-record Parquet file (id int64, x float32;
  row groups of 65,536, snappy) in batches of 1024, 1 and 2 runtime
  instances, beside a plain ``pyarrow.parquet.ParquetFile.iter_batches``
  loop (batch 1024; pyarrow's thread pool on and off) that turns each
  column into numpy.  Each reader instance decodes its row groups on its
  own thread (``use_threads=False``).  Skipped without pyarrow.
* TextFileWriter (native, std::to_chars) writing 200,000 records
  (id int64, value float32, shortest round-trip digits) beside the ``csv``
  module writing the same rows from Python lists (floats as ``repr`` of the
  value as a double: also exact).

Counts are checked after timing.  Run:
    python -m pytest bench/test_bench_files.py --benchmark-only
"""
import csv
import os
import threading

import numpy as np
import pytest

from fastpipe import schema, session, sources, task, workspace
from fastpipe.dataio import Writer
from fastpipe.pipeline import pipe
from fastpipe.text_file_reader import TextFileWriter

N = 2_000_000
BATCH = 64


class _Sink(Writer):
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


@pytest.fixture(scope="module")
def npy_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("npy")
    ids = np.arange(N, dtype=np.int64)
    xs = (np.arange(N * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(N, 16)
    np.save(d / "id.npy", ids)
    np.save(d / "x.npy", xs)
    shards = tmp_path_factory.mktemp("shards")
    for k, part in enumerate(np.array_split(np.arange(N), 4)):
        np.save(shards / ("id-%05d.npy" % k), ids[part])
        np.save(shards / ("x-%05d.npy" % k), xs[part])
    return str(d), str(shards)


def _job(ws, reader, writer, instances):
    with task.TaskGroup() as tg:
        pipe(reader, writer, num_runtime_threads=instances)
    sess = session.LocalSession(ws)
    sess.compile(tg)
    return lambda: sess.run(tg)


@pytest.mark.benchmark(group="files: NpyReader, 2M records (id int64, x float32[16]), batch 64")
@pytest.mark.parametrize("layout, instances", [("one file", 1), ("one file", 2),
                                               ("4 shards", 2)])
def test_npy_reader(benchmark, record, npy_pair, layout, instances):
    path = npy_pair[0] if layout == "one file" else npy_pair[1]
    ws = workspace.C.Workspace()
    if layout == "one file":
        run = _job(ws, sources.NpyReader(path, batch_size=BATCH), _Sink(), instances)
    else:
        def run():   # opening (mapping) the shards is timed too
            _job(ws, sources.NpyReader(path, batch_size=BATCH), _Sink(), instances)()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    count = _Count()
    _job(ws, sources.NpyReader(path, batch_size=BATCH), count, instances)()
    assert count.rows == N and count.ids == N * (N - 1) // 2
    record("NpyReader %s, %d instance(s)" % (layout, instances),
           records_per_s=N / benchmark.stats.stats.median, instances=instances)


@pytest.mark.benchmark(group="files: NpyReader, 2M records (id int64, x float32[16]), batch 64")
def test_npy_plain_loop_baseline(benchmark, record, npy_pair):
    d = npy_pair[0]

    def loop():
        ids = np.load(os.path.join(d, "id.npy"), mmap_mode="r")
        xs = np.load(os.path.join(d, "x.npy"), mmap_mode="r")
        total = 0
        for i in range(0, len(ids), BATCH):
            a = np.array(ids[i:i + BATCH])
            np.array(xs[i:i + BATCH])
            total += len(a)
        return total
    benchmark.pedantic(loop, rounds=5, iterations=1, warmup_rounds=1)
    assert loop() == N
    record("plain loop over np.load(mmap_mode='r') slices (1 thread)",
           records_per_s=N / benchmark.stats.stats.median)


PQ_N = 1_000_000
PQ_BATCH = 1024


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = str(tmp_path_factory.mktemp("pq") / "data.parquet")
    ids = np.arange(PQ_N, dtype=np.int64)
    pq.write_table(pa.table({"id": ids, "x": (ids % 1000).astype(np.float32)}), path,
                   row_group_size=65536)
    return path


@pytest.mark.benchmark(group="files: Parquet, 1M records (id int64, x float32), batch 1024")
@pytest.mark.parametrize("instances", [1, 2])
def test_parquet_reader(benchmark, record, parquet_file, instances):
    from fastpipe.parquet import ParquetReader
    ws = workspace.C.Workspace()

    def run():
        _job(ws, ParquetReader(parquet_file, batch_size=PQ_BATCH), _Sink(), instances)()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    count = _Count()
    _job(ws, ParquetReader(parquet_file, batch_size=PQ_BATCH), count, instances)()
    assert count.rows == PQ_N and count.ids == PQ_N * (PQ_N - 1) // 2
    record("ParquetReader, %d instance(s)" % instances,
           records_per_s=PQ_N / benchmark.stats.stats.median, instances=instances)


@pytest.mark.benchmark(group="files: Parquet, 1M records (id int64, x float32), batch 1024")
@pytest.mark.parametrize("use_threads", [True, False])
def test_parquet_iter_batches_baseline(benchmark, record, parquet_file, use_threads):
    import pyarrow.parquet as pq

    def loop():
        total = 0
        for b in pq.ParquetFile(parquet_file).iter_batches(batch_size=PQ_BATCH,
                                                           use_threads=use_threads):
            ids = b.column(0).to_numpy()
            b.column(1).to_numpy()
            total += len(ids)
        return total
    benchmark.pedantic(loop, rounds=5, iterations=1, warmup_rounds=1)
    assert loop() == PQ_N
    record("pyarrow ParquetFile.iter_batches loop -> numpy, use_threads=%s" % use_threads,
           records_per_s=PQ_N / benchmark.stats.stats.median)


TSV_N = 200_000


def _tsv_data():
    ids = np.arange(TSV_N, dtype=np.int64)
    values = (ids * 0.37 - 11.0).astype(np.float32)
    return ids, values


@pytest.mark.benchmark(group="files: TSV writer, 200k records (id int64, value float32)")
@pytest.mark.parametrize("instances", [1, 2])
def test_text_file_writer(benchmark, record, tmp_path, instances):
    ids, values = _tsv_data()
    path = str(tmp_path / "out.tsv")
    ws = workspace.C.Workspace()
    writer = TextFileWriter(path, schema.Struct(("id", schema.Scalar(np.int64)),
                                                ("value", schema.Scalar(np.float32))))
    run = _job(ws, sources.ArrayReader({"id": ids, "value": values}, batch_size=1024),
               writer, instances)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    with open(path) as fh:
        assert sum(1 for _ in fh) == TSV_N
    record("TextFileWriter batch 1024, %d instance(s)" % instances,
           records_per_s=TSV_N / benchmark.stats.stats.median, instances=instances)


@pytest.mark.benchmark(group="files: TSV writer, 200k records (id int64, value float32)")
def test_csv_module_writer_baseline(benchmark, record, tmp_path):
    ids, values = _tsv_data()
    path = str(tmp_path / "out.tsv")

    def write():
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerows(zip(ids.tolist(), map(repr, values.astype(np.float64).tolist())))
    benchmark.pedantic(write, rounds=5, iterations=1, warmup_rounds=1)
    with open(path) as fh:
        assert sum(1 for _ in fh) == TSV_N
    record("csv.writer (1 thread)", records_per_s=TSV_N / benchmark.stats.stats.median)
