"""TextFileReader: a 1,000,000-line TSV file (id int64, value float32) read
natively, beside Python's csv module, numpy.loadtxt and (when installed)
pyarrow's CSV reader on one thread -- same file, same run of pytest.

Every reader counts the lines and sums both columns, and the sums are
checked after timing.  fastpipe reads batches of 1024 through pipe() into
LocalSession.iterate (the sink sums each batch with numpy), with 1 and 2
runtime instances sharing one reader.  Run:

    python -m pytest bench/test_bench_textfile.py --benchmark-only

Targets (issue 9): >= 5x the csv module, within 2x of pyarrow's
single-threaded reader.
"""
import csv

import numpy as np
import pytest

from fastpipe import core, pipeline, schema, session, task, workspace
from fastpipe.text_file_reader import TextFileReader

N = 1_000_000
GROUP = "textfile: 1,000,000-line TSV (id int64, value float32)"


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    """The file, and the exact id sum / reference value sum."""
    rng = np.random.default_rng(0)
    # positive values: the sums are far from 0, so a relative check is meaningful
    values = (rng.random(N) * 2000).astype(np.float32)
    path = tmp_path_factory.mktemp("tsv") / "data.tsv"
    text = "".join(["%d\t%.7g\n" % (i, v) for i, v in enumerate(values.tolist())])
    path.write_text(text)
    ref = np.array(text.split(), dtype=np.float64)[1::2].astype(np.float32)
    return str(path), N * (N - 1) // 2, float(ref.astype(np.float64).sum())


def _check(tsv, rows, id_sum, value_sum):
    _, ids, values = tsv
    assert rows == N
    assert id_sum == ids
    assert value_sum == pytest.approx(values, rel=1e-9)


def _fastpipe_job(path, instances):
    ws = workspace.C.Workspace()
    init = core.Net("init")
    reader = TextFileReader(init, path, schema.Struct(("id", schema.Scalar(np.int64)),
                                                      ("value", schema.Scalar(np.float32))),
                            batch_size=1024)
    ws.run(init)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances)
    return (ws, tg, q), {}


def _fastpipe_read(ws, tg, q):
    rows = id_sum = 0
    value_sum = 0.0
    with session.LocalSession(ws) as s:
        for ids, values in s.iterate(tg, q):
            rows += len(ids)
            id_sum += int(ids.sum())
            value_sum += float(values.sum(dtype=np.float64))
    return rows, id_sum, value_sum


@pytest.mark.benchmark(group=GROUP)
def test_csv_module(benchmark, record, tsv):
    def run():
        rows = id_sum = 0
        value_sum = 0.0
        with open(tsv[0], newline="") as f:
            for r in csv.reader(f, delimiter="\t"):
                rows += 1
                id_sum += int(r[0])
                value_sum += float(r[1])
        return rows, id_sum, value_sum
    result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    rows, id_sum, value_sum = result
    assert rows == N and id_sum == tsv[1]
    # the csv loop sums float64 values (no float32 rounding): close, not equal
    assert value_sum == pytest.approx(tsv[2], rel=1e-6)
    record("csv.reader + int/float", rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP)
def test_numpy_loadtxt(benchmark, record, tsv):
    dt = np.dtype([("id", np.int64), ("value", np.float32)])

    def run():
        a = np.loadtxt(tsv[0], delimiter="\t", dtype=dt)
        return len(a), int(a["id"].sum()), float(a["value"].sum(dtype=np.float64))
    result = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    _check(tsv, *result)
    record("numpy.loadtxt", rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP)
def test_pyarrow_single_thread(benchmark, record, tsv):
    pa = pytest.importorskip("pyarrow")
    pcsv = pytest.importorskip("pyarrow.csv")
    read_options = pcsv.ReadOptions(use_threads=False, column_names=["id", "value"])
    parse_options = pcsv.ParseOptions(delimiter="\t")
    convert_options = pcsv.ConvertOptions(column_types={"id": pa.int64(), "value": pa.float32()})

    def run():
        t = pcsv.read_csv(tsv[0], read_options=read_options, parse_options=parse_options,
                          convert_options=convert_options)
        ids = t.column("id").to_numpy()
        values = t.column("value").to_numpy()
        return len(ids), int(ids.sum()), float(values.sum(dtype=np.float64))
    result = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    _check(tsv, *result)
    record("pyarrow.csv.read_csv use_threads=False", rate_per_s=N / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("instances", [1, 2])
def test_fastpipe_text_file_reader(benchmark, record, tsv, instances):
    result = benchmark.pedantic(_fastpipe_read, setup=lambda: _fastpipe_job(tsv[0], instances),
                                rounds=5, iterations=1, warmup_rounds=1)
    _check(tsv, *result)
    record("TextFileReader batch 1024, %d instance%s" % (instances, "s" * (instances > 1)),
           rate_per_s=N / benchmark.stats.stats.median, instances=instances)
