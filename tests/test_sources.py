"""fastpipe.sources (ArrayReader, IterableReader), Dataset.epoch_reader and
the re-run warning of Dataset.reader().

Until LocalSession.iterate is merged here, records are observed through a
collecting writer (a Python op at the end of the pipe) or a Dataset."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref

import numpy as np
import pytest

from fastpipe import core, schema, sources
from fastpipe.dataio import Writer
from fastpipe.dataset import Dataset
from fastpipe.errors import ArgumentError, FastpipeError, FastpipeWarning, RunError
from fastpipe.pipeline import pipe
from fastpipe.session import LocalSession
from fastpipe.task import TaskGroup

from pipeline_helpers import make_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Collect(Writer):
    """A writer that copies every record it gets into a Python list."""

    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def write(self, writer_net, fields):
        def collect(inputs, outputs):
            rec = tuple(np.array(i.data, copy=True) for i in inputs)
            with self.lock:
                self.items.append(rec)
        writer_net.Python(collect)(list(fields), [])


def data(n=1000):
    ids = np.arange(n, dtype=np.int64)
    xs = (np.arange(n * 16, dtype=np.int64) % 1000).astype(np.float32).reshape(n, 16)
    return ids, xs


def run_pipe(ws, reader, instances=1, runs=1):
    out = Collect()
    with TaskGroup() as tg:
        pipe(reader, out, num_runtime_threads=instances)
    s = LocalSession(ws)
    per_run = []
    for _ in range(runs):
        before = len(out.items)
        s.run(tg)
        per_run.append(out.items[before:])
    return per_run if runs > 1 else per_run[0]


# --- ArrayReader: exact records ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
@pytest.mark.parametrize("batch_size", [1, 7, 64, None])
def test_array_reader_exact_records(ws, batch_size, instances):
    n = 1000
    ids, xs = data(n)
    items = run_pipe(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch_size),
                     instances)
    if batch_size is None:
        assert all(i.shape == () and x.shape == (16,) for i, x in items)
        assert all(i.dtype == np.int64 and x.dtype == np.float32 for i, x in items)
        got = sorted(int(i) for i, _ in items)
        for i, x in items:
            np.testing.assert_array_equal(x, xs[int(i)])
    else:
        # one shared cursor: full batches of consecutive records, one short tail
        sizes = sorted((len(i) for i, _ in items), reverse=True)
        expect = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        assert sizes == expect
        for i, x in items:
            assert x.shape == (len(i), 16)
            np.testing.assert_array_equal(i, np.arange(i[0], i[0] + len(i)))
            np.testing.assert_array_equal(x, xs[i])
        got = sorted(int(v) for i, _ in items for v in i)
    assert got == list(range(n))


@pytest.mark.timeout(60)
def test_array_reader_enforce_batch_size_drops_the_tail(ws):
    ids, xs = data(100)
    items = run_pipe(ws, sources.ArrayReader((ids, xs), batch_size=32, enforce_batch_size=True), 2)
    assert sorted(len(i) for i, _ in items) == [32, 32, 32]
    assert sorted(int(v) for i, _ in items for v in i) == list(range(96))


@pytest.mark.timeout(60)
def test_array_reader_every_run_starts_at_the_beginning(ws):
    ids, _ = data(50)
    runs = run_pipe(ws, sources.ArrayReader(ids, batch_size=8), 2, runs=3)
    for items in runs:
        assert sorted(int(v) for (i,) in items for v in i) == list(range(50))


def test_array_reader_schema_and_fields():
    ids, xs = data(10)
    r = sources.ArrayReader({"id": ids, "x": xs})
    assert r.schema().field_names() == ["id", "x"]
    assert sources.ArrayReader((ids, xs)).schema().field_names() == ["f0", "f1"]
    assert sources.ArrayReader(xs).schema().field_names() == ["data"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(arrays={"a": np.zeros(3), "b": np.zeros(4)}), "'b' has 4 records but field 'a' has 3"),
    (dict(arrays={"a": np.float32(1)}), "'a' is a 0-d array"),
    (dict(arrays={}), "no arrays"),
    (dict(arrays=np.zeros(3), batch_size=0), "batch_size=0"),
    (dict(arrays=np.zeros(3), shuffle=True, seed=-1), "seed=-1"),
])
def test_array_reader_bad_arguments(kwargs, match):
    arrays = kwargs.pop("arrays")
    with pytest.raises(ArgumentError, match=match) as e:
        sources.ArrayReader(arrays, name="src", **kwargs)
    assert isinstance(e.value, FastpipeError) and isinstance(e.value, ValueError)
    assert "'src'" in str(e.value)


# --- ArrayReader: zero copy -----------------------------------------------------------------


class Probe(Collect):
    """A Collect that also runs ``probe(tensor_refs)`` on the reader's own
    (borrowed) blobs in every write, after optional in-place ops on them."""

    def __init__(self, reader, probe, before=None):
        Collect.__init__(self)
        self.reader = reader
        self.probe = probe
        self.before = before

    def write(self, writer_net, fields):
        Collect.write(self, writer_net, fields)
        blobs = [str(b) for b in self.reader._blobs]
        self.reader = None      # the process-wide Python-op table keeps self
        if self.before is not None:
            self.before(writer_net, blobs)
        probe = self.probe
        writer_net.Python(lambda inputs, outputs: probe(inputs))(blobs, [])


def run_probe(ws, reader, probe, before=None, instances=1):
    out = Probe(reader, probe, before)
    with TaskGroup() as tg:
        pipe(reader, out, num_runtime_threads=instances)
    LocalSession(ws).run(tg)
    return out.items


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2])
def test_array_reader_borrows_the_arrays(ws, instances):
    ids, xs = data(200)
    ids_before, xs_before = ids.copy(), xs.copy()
    r = sources.ArrayReader({"id": ids, "x": xs}, batch_size=16)
    assert r.copied_fields == ()
    seen = []
    items = run_probe(ws, r, lambda t: seen.append((t[0].data.ctypes.data,
                                                    t[1].data.ctypes.data,
                                                    t[1].data.flags.writeable)),
                      instances=instances)
    assert sorted(int(v) for i, _ in items for v in i) == list(range(200))
    # during the run the workspace tensors are the user's memory, read-only
    assert len(seen) == len(items) == 13
    assert set(seen) == {(ids.ctypes.data, xs.ctypes.data, False)}
    np.testing.assert_array_equal(ids, ids_before)
    np.testing.assert_array_equal(xs, xs_before)


@pytest.mark.timeout(60)
def test_a_writer_never_writes_into_a_borrowed_array(ws):
    """An op whose output is the borrowed blob itself (in place) gets a new
    buffer: the user's array is never written."""
    ids, xs = data(64)
    xs_before = xs.copy()
    r = sources.ArrayReader({"id": ids, "x": xs}, batch_size=64)
    seen = []

    def scale_in_place(net, blobs):
        net.Scale([blobs[1]], [blobs[1]], scale=3.0)
    run_probe(ws, r, lambda t: seen.append((t[1].data.ctypes.data, t[1].data.copy())),
              before=scale_in_place)
    np.testing.assert_array_equal(xs, xs_before)
    assert len(seen) == 1
    assert seen[0][0] != xs.ctypes.data
    np.testing.assert_array_equal(seen[0][1], xs_before * 3)


@pytest.mark.timeout(60)
def test_borrowed_array_is_released_after_the_run(ws):
    """The run's workspace holds one reference to the array while the blob
    lives (here: released by a runtime thread when the run ends)."""
    ids = np.arange(100, dtype=np.int64)
    base = sys.getrefcount(ids)
    r = sources.ArrayReader(ids, batch_size=10)
    assert r._state.arrays[0] is ids
    during = []
    run_probe(ws, r, lambda t: during.append(sys.getrefcount(ids)))
    assert set(during) == {base + 2}    # the reader's list + the workspace tensor
    assert sys.getrefcount(ids) == base + 1
    state = weakref.ref(r._state)
    del r
    gc.collect()
    assert state() is None and sys.getrefcount(ids) == base


@pytest.mark.timeout(60)
def test_non_contiguous_and_byteswapped_arrays_are_copied_once(ws):
    n = 300
    ids = np.arange(n, dtype=">i8")                      # big-endian
    big = (np.arange(n * 32) % 777).astype(np.float32).reshape(n, 32)
    xs = big[:, ::2]                                       # strided view
    r = sources.ArrayReader({"id": ids, "x": xs}, batch_size=7)
    assert set(r.copied_fields) == {"id", "x"}
    items = run_pipe(ws, r, 2)
    for i, x in items:
        assert i.dtype == np.int64
        np.testing.assert_array_equal(x, xs[i])
    assert sorted(int(v) for i, _ in items for v in i) == list(range(n))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shuffle", [False, True])
def test_string_fields_are_copied_and_read(ws, shuffle):
    names = np.array(["rec%d" % i for i in range(50)])
    ids = np.arange(50, dtype=np.int64)
    r = sources.ArrayReader({"id": ids, "name": names}, batch_size=4, shuffle=shuffle, seed=1)
    items = run_pipe(ws, r, 2)
    got = sorted((int(i), n.decode() if isinstance(n, bytes) else str(n))
                 for b_ids, b_names in items for i, n in zip(b_ids, b_names))
    assert got == [(i, "rec%d" % i) for i in range(50)]


# --- ArrayReader: shuffling and epochs -------------------------------------------------------


def _orders(ws, reader, runs):
    per_run = run_pipe(ws, reader, 1, runs=runs)
    if runs == 1:
        per_run = [per_run]
    return [[int(i) for (i, _x) in items] for items in per_run]


@pytest.mark.timeout(60)
def test_shuffle_every_record_once_and_a_new_order_each_epoch(ws):
    ids, xs = data(500)
    orders = _orders(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=None,
                                             shuffle=True, seed=11), 3)
    for o in orders:
        assert sorted(o) == list(range(500))
        assert o != list(range(500))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    # the same seed in a fresh reader gives the same sequence of epochs
    assert _orders(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=None,
                                           shuffle=True, seed=11), 3) == orders
    assert _orders(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=None,
                                           shuffle=True, seed=12), 1)[0] != orders[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [2, 8])
def test_shuffled_batches_across_instances(ws, instances):
    ids, xs = data(1000)
    runs = run_pipe(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=64,
                                            shuffle=True, seed=3), instances, runs=2)
    for items in runs:
        got = [int(v) for i, _ in items for v in i]
        assert sorted(got) == list(range(1000))
        for i, x in items:
            np.testing.assert_array_equal(x, xs[i])
    assert sorted(sorted(int(v) for v in i) for i, _ in runs[0]) != \
        sorted(sorted(int(v) for v in i) for i, _ in runs[1])


_ORDER_SCRIPT = textwrap.dedent("""
    import json, sys, threading
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from fastpipe import sources, workspace
    from fastpipe.dataio import Writer
    from fastpipe.pipeline import pipe
    from fastpipe.session import LocalSession
    from fastpipe.task import TaskGroup
    got = []
    class Collect(Writer):
        def write(self, net, fields):
            net.Python(lambda i, o: got.append(int(i[0].data)))(list(fields), [])
    with TaskGroup() as tg:
        pipe(sources.ArrayReader(np.arange(200, dtype=np.int64), batch_size=None,
                                 shuffle=True, seed=2024), Collect())
    s = LocalSession(workspace.C.Workspace())
    orders = []
    for _ in range(2):
        del got[:]
        s.run(tg)
        orders.append(list(got))
    print(json.dumps(orders))
""")


@pytest.mark.timeout(120)
def test_same_seed_same_orders_in_two_fresh_processes(tmp_path):
    script = tmp_path / "order.py"
    script.write_text(_ORDER_SCRIPT)
    outs = [json.loads(subprocess.run([sys.executable, str(script), REPO], check=True,
                                      capture_output=True, text=True, timeout=100).stdout)
            for _ in range(2)]
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[0][1]
    assert sorted(outs[0][0]) == sorted(outs[0][1]) == list(range(200))


# --- IterableReader ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_iterable_reader_generator_object_is_consumed_once(ws):
    gen = ((np.int64(i), np.full(4, i, np.float32)) for i in range(30))
    runs = run_pipe(ws, sources.IterableReader(gen, fields=("id", "x")), 2, runs=2)
    assert sorted(int(i) for i, _ in runs[0]) == list(range(30))
    for i, x in runs[0]:
        np.testing.assert_array_equal(x, np.full(4, int(i), np.float32))
    assert runs[1] == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
def test_iterable_reader_callable_restarts_every_run(ws, instances):
    def records():
        for i in range(40):
            yield {"x": np.float32(i) * 2, "id": np.int64(i)}
    runs = run_pipe(ws, sources.IterableReader(records, fields=("id", "x")), instances, runs=2)
    for items in runs:
        assert sorted(int(i) for i, _ in items) == list(range(40))
        assert all(float(x) == 2 * int(i) for i, x in items)


@pytest.mark.timeout(60)
def test_iterable_reader_batches(ws):
    items = run_pipe(ws, sources.IterableReader(lambda: iter(range(10)), batch_size=4))
    assert sorted(len(b) for (b,) in items) == [2, 4, 4]
    assert sorted(int(v) for (b,) in items for v in b) == list(range(10))


@pytest.mark.timeout(60)
def test_an_exception_in_the_generator_fails_the_job_naming_the_reader(ws):
    class Boom(Exception):
        pass

    def records():
        yield np.int64(1)
        raise Boom("bad record 2")
    with pytest.raises(RunError, match="my_source") as e:
        run_pipe(ws, sources.IterableReader(records, name="my_source"), 2)
    assert isinstance(e.value.__cause__, Boom)
    assert "bad record 2" in str(e.value)


# --- Dataset.epoch_reader and the re-run warning ------------------------------------------------


def _dataset(ws, name, n):
    return make_dataset(ws, name, {"x": list(range(n))})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
def test_epoch_reader_reads_everything_in_every_run(ws, instances):
    ds = _dataset(ws, "ep", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastpipeWarning)
        runs = run_pipe(ws, ds.epoch_reader(batch_size=9), instances, runs=3)
    for items in runs:
        assert sorted(int(v) for (b,) in items for v in b) == list(range(100))


@pytest.mark.timeout(60)
def test_shuffled_epoch_reader_has_a_new_order_each_run(ws):
    ds = _dataset(ws, "eps", 200)
    reader = ds.epoch_reader(batch_size=1, shuffle=True, seed=5)
    runs = run_pipe(ws, reader, 1, runs=3)
    orders = [[int(b[0]) for (b,) in items] for items in runs]
    for o in orders:
        assert sorted(o) == list(range(200)) and o != list(range(200))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert reader.epoch == 3
    again = run_pipe(ws, ds.epoch_reader(batch_size=1, shuffle=True, seed=5), 1, runs=3)
    assert [[int(b[0]) for (b,) in items] for items in again] == orders


@pytest.mark.timeout(60)
def test_shuffled_epoch_reader_keeps_nested_records_whole(ws):
    ds = Dataset(schema.Struct(("v", schema.List(schema.Scalar(np.int64)))), name="nested")
    init = core.Net("nested_init")
    with core.NameScope("nested"):
        ds.init_empty(init)
    ws.run(init)
    lengths = np.array([i % 3 for i in range(30)], dtype=np.int32)
    values = np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(lengths)])
    ws.blobs[str(ds.get_blobs()[0])].feed(lengths)
    ws.blobs[str(ds.get_blobs()[1])].feed(values)
    items = run_pipe(ws, ds.epoch_reader(batch_size=4, shuffle=True, seed=1), 2)
    seen = []
    for ln, vals in items:
        off = 0
        for k in ln:
            rec = vals[off:off + k]
            off += k
            seen.append(tuple(rec.tolist()))
    assert sorted(seen) == sorted(tuple([i] * n) for i, n in enumerate(lengths.tolist()))


@pytest.mark.timeout(60)
def test_a_reader_whose_cursor_is_at_the_end_warns_on_a_rerun(ws):
    ds = _dataset(ws, "stale", 20)
    init = core.Net("stale_init")
    reader = ds.reader(init_net=init, batch_size=4)
    ws.run(init)
    out = Collect()
    with TaskGroup() as tg:
        pipe(reader, out, num_runtime_threads=2)
    s = LocalSession(ws)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastpipeWarning)
        s.run(tg)                       # the first run reads everything, no warning
    assert sorted(int(v) for (b,) in out.items for v in b) == list(range(20))
    with pytest.warns(FastpipeWarning, match="epoch_reader") as rec:
        s.run(tg)
    assert len(out.items) == 5          # the re-run read nothing
    msgs = [str(w.message) for w in rec if issubclass(w.category, FastpipeWarning)]
    assert len(msgs) == 1 and "stale_cursor" in msgs[0] and "20 records" in msgs[0]
    assert issubclass(FastpipeWarning, UserWarning)


@pytest.mark.timeout(60)
def test_no_warning_for_an_empty_dataset_or_a_reset_cursor(ws):
    ds = _dataset(ws, "empty", 0)
    init = core.Net("empty_init")
    reader = ds.reader(init_net=init)
    ws.run(init)
    with TaskGroup() as tg:
        pipe(reader, Collect())
    s = LocalSession(ws)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastpipeWarning)
        s.run(tg)
        s.run(tg)


# --- EpochPermutation ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_epoch_permutation_is_a_permutation(ws, n):
    net = core.Net("perm")
    ws.feed_blob("key", np.array([7, 0], np.int64))
    ws.feed_blob("rows", np.zeros((n, 3), np.float32))
    net.EpochPermutation(["key", "rows"], ["p"])
    ws.run(net)
    p = ws.blobs["p"].fetch()
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(n))


def test_epoch_permutation_bad_key(ws):
    ws.feed_blob("key", np.array([7], np.int64))
    ws.feed_blob("rows", np.zeros(4, np.float32))
    net = core.Net("perm_bad")
    net.EpochPermutation(["key", "rows"], ["p"])
    with pytest.raises(RunError, match="EpochPermutation.*int64 \\[2\\]"):
        ws.run(net)


_EXIT_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from fastpipe import core, sources, workspace
    ws = workspace.C.Workspace()
    keep = np.arange(1000, dtype=np.int64)
    r = sources.ArrayReader(keep)
    init = core.Net("root_init")
    r.setup_ex(init, None)          # borrowed blobs in the root workspace
    ws.run(init)
    assert ws.blobs[str(r._blobs[0])].fetch().sum() == keep.sum()
    del r
    print("ok")
    # the interpreter exits with the workspace (and its borrowed tensor) alive
""")


@pytest.mark.timeout(120)
def test_interpreter_exit_with_a_borrowed_tensor_alive(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT)
    p = subprocess.run([sys.executable, str(script), REPO], capture_output=True, text=True,
                       timeout=100)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"


@pytest.mark.parametrize("kind", ["array", "iterable", "epoch"])
def test_a_reader_reused_in_a_second_task_group_is_refused(kind):
    """Its run-time setup lives in the first group's task init: a second
    group would run without it (a missing cursor, or silently nothing)."""
    from fastpipe import dataset as _dataset, pipeline as _pipeline, schema as _schema, \
        sources as _sources, task as _task
    from fastpipe.errors import GraphError
    if kind == "array":
        reader = _sources.ArrayReader({"id": np.arange(10)}, batch_size=2)
    elif kind == "iterable":
        reader = _sources.IterableReader(lambda: iter(range(10)), fields=["v"])
    else:
        from fastpipe import core as _c
        ds = _dataset.Dataset(_schema.Struct(("v", _schema.Scalar(np.int64))), name="reuse_ds")
        ds.init_empty(_c.Net("reuse_ds_init"))
        reader = ds.epoch_reader(batch_size=2)
    with _task.TaskGroup():
        _pipeline.pipe(reader)
    with _task.TaskGroup():
        with pytest.raises(GraphError, match="one reader per TaskGroup"):
            _pipeline.pipe(reader)
