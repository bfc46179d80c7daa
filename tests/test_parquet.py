"""fastpipe.parquet.ParquetReader: row groups as units of work, one shared
cursor, exact batches, exact counts (skipped without pyarrow)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from fastpipe import pipeline, session, task
from fastpipe.errors import ArgumentError, FastpipeError, NotSupportedError, RunError
from fastpipe.sources import FileMissingError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fastpipe.parquet import NullValueError, ParquetReader  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def pyarrow_threads_started(tmp_path_factory):
    """pyarrow starts process-wide helper threads on first use (and keeps
    them): start them before the tests' thread-leak check looks."""
    path = str(tmp_path_factory.mktemp("warm") / "w.parquet")
    pq.write_table(pa.table({"a": np.arange(1000), "s": [str(i) for i in range(1000)]}), path,
                   row_group_size=100)
    import pyarrow.compute as pc
    pc.fill_null(pa.array([1, None]), 0)
    pq.ParquetFile(path).read_row_group(0).column(1).to_numpy()
    yield


def iterate_all(ws, reader, instances=1):
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances)
    with session.LocalSession(ws) as s:
        return [tuple(np.asarray(a) for a in b) for b in s.iterate(tg, q)]


def write(path, n, start=0, row_group_size=100, **extra):
    ids = np.arange(start, start + n, dtype=np.int64)
    cols = {"id": ids, "x": (ids * 0.5).astype(np.float32)}
    cols.update(extra)
    pq.write_table(pa.table(cols), str(path), row_group_size=row_group_size)
    return ids


def check_batches(batches, batch_size):
    """Every batch is full but one (the last cut; with several instances it
    may reach the loop before others)."""
    sizes = [len(b[0]) for b in batches]
    assert all(0 < s <= batch_size for s in sizes)
    assert sum(s != batch_size for s in sizes) <= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.float16, np.float32, np.float64, np.bool_])
def test_every_numeric_dtype_round_trips(ws, tmp_path, dtype):
    n = 333
    ids = np.arange(n, dtype=np.int64)
    vals = (ids % 2 == 0) if dtype is np.bool_ else (ids % 100).astype(dtype)
    pq.write_table(pa.table({"id": ids, "v": vals}), str(tmp_path / "t.parquet"),
                   row_group_size=50)
    reader = ParquetReader(str(tmp_path / "t.parquet"), batch_size=40)
    assert reader.dtypes == [np.dtype(np.int64), np.dtype(dtype)]
    got = iterate_all(ws, reader, 2)
    check_batches(got, 40)
    got_ids = np.concatenate([b[0] for b in got])
    got_v = np.concatenate([b[1] for b in got])
    assert got_v.dtype == np.dtype(dtype)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_v, vals[got_ids])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["string", "large_string", "dictionary"])
def test_strings_become_string_tensors(ws, tmp_path, kind):
    n = 250
    words = ["w%d" % (i % 17) + "é" * (i % 3) for i in range(n)]
    col = pa.array(words, type=pa.large_string() if kind == "large_string" else pa.string())
    if kind == "dictionary":
        col = col.dictionary_encode()
    pq.write_table(pa.table({"id": np.arange(n, dtype=np.int64), "w": col}),
                   str(tmp_path / "s.parquet"), row_group_size=64)
    reader = ParquetReader(str(tmp_path / "s.parquet"), batch_size=30)
    got = iterate_all(ws, reader, 2)
    check_batches(got, 30)
    ids = np.concatenate([b[0] for b in got])
    ws_ = np.concatenate([b[1] for b in got])
    assert sorted(ids.tolist()) == list(range(n))
    assert [w.decode("utf-8") if isinstance(w, bytes) else w for w in ws_] == \
        [words[i] for i in ids]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [1, 7, 100, 5000])
def test_several_files_every_record_exactly_once(ws, tmp_path, instances, batch_size):
    ids = np.concatenate([write(tmp_path / "a.parquet", 1000, 0, row_group_size=128),
                          write(tmp_path / "b.parquet", 17, 1000, row_group_size=5),
                          write(tmp_path / "c.parquet", 450, 1017, row_group_size=450)])
    reader = ParquetReader(str(tmp_path), fields=["x", "id"], batch_size=batch_size)
    assert reader.num_records == len(ids) and reader.num_row_groups == 8 + 4 + 1
    got = iterate_all(ws, reader, instances)
    check_batches(got, batch_size)
    got_x = np.concatenate([b[0] for b in got])
    got_ids = np.concatenate([b[1] for b in got])
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_x, (got_ids * 0.5).astype(np.float32))
    counts = reader.batch_counts()
    assert counts["borrowed"] + counts["assembled"] == len(got)


@pytest.mark.timeout(60)
def test_numeric_columns_are_not_copied(ws, tmp_path):
    write(tmp_path / "a.parquet", 500, row_group_size=500)
    reader = ParquetReader(str(tmp_path / "a.parquet"), batch_size=100)
    st = reader._state
    st.start_epoch()
    ids, xs = st.decode(0, reader.name, pa, pq)
    for a in (ids, xs):         # views of the arrow buffers pyarrow decoded into
        assert not a.flags.owndata and not a.flags.writeable and a.base is not None
    got = iterate_all(ws, reader, 1)
    assert len(got) == 5 and reader.batch_counts() == {"borrowed": 5, "assembled": 0}


@pytest.mark.timeout(60)
def test_a_list_of_files_and_types_that_differ(ws, tmp_path):
    write(tmp_path / "a.parquet", 10)
    pq.write_table(pa.table({"id": np.arange(3, dtype=np.int32),
                             "x": np.zeros(3, np.float32)}), str(tmp_path / "b.parquet"))
    with pytest.raises(ArgumentError, match=r"column 'id' is int32 in .*b\.parquet.*int64 in "
                                            r".*a\.parquet"):
        ParquetReader([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])
    got = iterate_all(ws, ParquetReader([str(tmp_path / "a.parquet")], fields=["id"],
                                        batch_size=4))
    assert sorted(np.concatenate([b[0] for b in got]).tolist()) == list(range(10))


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(ArgumentError, match=r"bad\.parquet.*not a readable Parquet file") as e:
        ParquetReader(str(bad))
    assert isinstance(e.value, FastpipeError)
    with pytest.raises(FileMissingError, match=r"gone\.parquet"):
        ParquetReader(str(tmp_path / "gone.parquet"))
    with pytest.raises(FileMissingError, match=r"also_gone\.parquet"):
        ParquetReader([str(bad), str(tmp_path / "also_gone.parquet")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArgumentError, match="no .parquet files"):
        ParquetReader(str(empty))


def test_missing_column_names_file_and_column(tmp_path):
    write(tmp_path / "a.parquet", 10)
    write(tmp_path / "b.parquet", 10, 10, extra=np.zeros(10, np.int8))
    with pytest.raises(ArgumentError, match=r"a\.parquet.* no column 'extra'"):
        ParquetReader(str(tmp_path), fields=["id", "extra"])


@pytest.mark.parametrize("t", [pa.uint32(), pa.uint64(), pa.timestamp("us"),
                               pa.list_(pa.int32())])
def test_unsupported_type_names_the_column(tmp_path, t):
    col = pa.array([[1], [2]] if pa.types.is_list(t) else [1, 2], type=t)
    pq.write_table(pa.table({"id": np.arange(2), "bad": col}), str(tmp_path / "u.parquet"))
    with pytest.raises(ArgumentError, match=r"u\.parquet.* column 'bad' has type"):
        ParquetReader(str(tmp_path / "u.parquet"))


@pytest.mark.timeout(60)
def test_nulls_are_an_error_naming_file_column_and_row_group(ws, tmp_path):
    vals = pa.array([1.0] * 25 + [None] + [2.0] * 4, type=pa.float32())
    pq.write_table(pa.table({"id": np.arange(30), "v": vals}), str(tmp_path / "n.parquet"),
                   row_group_size=10)
    with pytest.raises(RunError, match="nulls") as e:
        iterate_all(ws, ParquetReader(str(tmp_path / "n.parquet"), batch_size=4, name="pr"))
    cause = e.value.__cause__
    assert isinstance(cause, NullValueError) and isinstance(cause, ValueError)
    msg = str(cause)
    assert "n.parquet" in msg and "column 'v'" in msg and "row group 2" in msg \
        and "row 5 of the row group" in msg and "'pr'" in msg
    # a fill value reads them
    got = iterate_all(ws, ParquetReader(str(tmp_path / "n.parquet"), batch_size=4,
                                        fill_nulls={"v": -1.0}), 2)
    ids = np.concatenate([b[0] for b in got])
    v = np.concatenate([b[1] for b in got])
    assert dict(zip(ids.tolist(), v.tolist()))[25] == -1.0 and sorted(ids.tolist()) == \
        list(range(30))
    with pytest.raises(ArgumentError, match="fill_nulls names 'nope'"):
        ParquetReader(str(tmp_path / "n.parquet"), fill_nulls={"nope": 0})


def test_a_fill_value_that_does_not_fit_a_column_is_refused_naming_it(tmp_path):
    """fill_nulls=0 for every column, one of them strings: refused when the
    reader is made, naming the column (before: an ArrowTypeError at run
    time naming no column -- a newcomer's report)."""
    pq.write_table(pa.table({"id": np.arange(4, dtype=np.int64),
                             "label": ["a", None, "c", "d"]}), str(tmp_path / "s.parquet"))
    with pytest.raises(ArgumentError, match="fill_nulls value 0 does not fit column 'label'"
                                            ".*fill_nulls=\\{column: value\\}"):
        ParquetReader(str(tmp_path / "s.parquet"), fill_nulls=0)
    with pytest.raises(ArgumentError, match="does not fit column 'label'"):
        ParquetReader(str(tmp_path / "s.parquet"), fill_nulls={"label": 3.5})
    ParquetReader(str(tmp_path / "s.parquet"), fill_nulls={"label": "?"})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [2, 4])
def test_shuffle_with_a_seed_is_reproducible(ws, tmp_path, instances):
    ids = np.concatenate([write(tmp_path / "a.parquet", 300, 0, row_group_size=64),
                          write(tmp_path / "b.parquet", 200, 300, row_group_size=50)])

    def order(seed, inst=1):
        got = iterate_all(ws, ParquetReader(str(tmp_path), batch_size=32, shuffle=True,
                                            seed=seed), inst)
        check_batches(got, 32)
        return np.concatenate([b[0] for b in got]).tolist()
    first = order(5)
    assert first == order(5) and sorted(first) == ids.tolist()
    assert first != ids.tolist() and first != order(6)
    assert sorted(order(5, instances)) == ids.tolist()


@pytest.mark.timeout(60)
def test_each_run_is_a_new_epoch(ws, tmp_path):
    ids = write(tmp_path / "a.parquet", 200, row_group_size=30)
    reader = ParquetReader(str(tmp_path / "a.parquet"), batch_size=16, shuffle=True, seed=1)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=2)
    runs = []
    with session.LocalSession(ws) as s:
        for _ in range(2):
            runs.append(np.concatenate([np.asarray(b[0]) for b in s.iterate(tg, q)]).tolist())
    assert reader.epoch == 2
    assert sorted(runs[0]) == sorted(runs[1]) == ids.tolist() and runs[0] != runs[1]


def test_arguments(tmp_path):
    write(tmp_path / "a.parquet", 10)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ArgumentError, match="batch_size"):
            ParquetReader(str(tmp_path / "a.parquet"), batch_size=bad)
    with pytest.raises(ArgumentError, match="seed"):
        ParquetReader(str(tmp_path / "a.parquet"), shuffle=True, seed=-1)
    with pytest.raises(ArgumentError, match="distinct"):
        ParquetReader(str(tmp_path / "a.parquet"), fields=["id", "id"])


def test_without_pyarrow_the_error_names_the_extra(tmp_path, monkeypatch):
    write(tmp_path / "a.parquet", 10)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(NotSupportedError, match=r"pip install fastpipe\[parquet\]"):
        ParquetReader(str(tmp_path / "a.parquet"))


@pytest.mark.timeout(60)
def test_importing_fastpipe_never_imports_pyarrow():
    code = ("import sys, fastpipe, fastpipe.parquet, fastpipe.sources, fastpipe.pipeline\n"
            "assert 'pyarrow' not in sys.modules, 'pyarrow imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=50)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [2, 4])
def test_a_null_mid_stream_fails_the_run_with_every_instance_joined(ws, tmp_path, instances):
    vals = pa.array([1.0] * 900 + [None] + [2.0] * 99, type=pa.float32())
    pq.write_table(pa.table({"id": np.arange(1000), "v": vals}), str(tmp_path / "n.parquet"),
                   row_group_size=50)
    with pytest.raises(RunError, match="row group 18"):
        iterate_all(ws, ParquetReader(str(tmp_path / "n.parquet"), batch_size=7), instances)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 4])
def test_leaving_the_loop_early_stops_the_readers(ws, tmp_path, instances):
    write(tmp_path / "a.parquet", 5000, row_group_size=100)
    reader = ParquetReader(str(tmp_path / "a.parquet"), batch_size=10)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances, capacity=1)
    with session.LocalSession(ws) as s:
        it = s.iterate(tg, q)
        first = [next(it) for _ in range(3)]
        it.close()
    assert all(len(b[0]) == 10 for b in first)
    # the reader starts over in the next run, every record once
    with session.LocalSession(ws) as s:
        ids = np.concatenate([np.asarray(b[0]) for b in s.iterate(tg, q)])
    assert sorted(ids.tolist()) == list(range(5000))
