"""Exact resume of LocalSession.iterate: ``it.state()`` and
``iterate(..., state=saved)``.

The property: run 1 hands out some items and saves ``state()``; run 2 (a
fresh job, maybe other instance counts, capacities and batch sizes, maybe
a new process) resumes from the JSON of that state; the records of run 1
(up to the state) and of run 2 together are the source's records, each
exactly once -- including the records that were in queues or inside a
stage when the state was taken.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpipe import core, dataio, pipeline, schema, session, sources, task, workspace
from fastpipe.dataset import Dataset
from fastpipe.errors import ArgumentError, NotSupportedError
from fastpipe.net_builder import ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 300
TIMEOUT = 30            # seconds one next() may wait (a hang fails, never blocks)


# ---- jobs ----------------------------------------------------------------------------

def _dataset(ws, n, name):
    ds = Dataset(schema.Struct(("id", schema.Scalar(np.int64))), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):
        ds.init_empty(init)
    ws.run(init)
    ws.blobs[str(ds.get_blobs()[0])].feed(np.arange(n, dtype=np.int64))
    return ds


_TSV = {}


def _tsv_file(n):
    """A TSV file of ids 0..n-1, one per line (made once per process)."""
    if n not in _TSV:
        import tempfile
        fd, path = tempfile.mkstemp(suffix=".tsv")
        with os.fdopen(fd, "w") as f:
            f.write("".join("%d\n" % i for i in range(n)))
        _TSV[n] = path
    return _TSV[n]


def _reader(ws, kind, n, batch, shuffle, tag=""):
    """A resumable source of ids 0..n-1 (`kind`), seeded when shuffled."""
    if kind == "array":
        return sources.ArrayReader({"id": np.arange(n, dtype=np.int64)}, batch_size=batch,
                                   shuffle=shuffle, seed=11)
    bs = batch or 1
    if kind == "text":
        from fastpipe.text_file_reader import TextFileReader
        path = _tsv_file(n)
        init = core.Net("tsv_init" + tag)
        r = TextFileReader(init, path, schema.Struct(("id", schema.Scalar(np.int64))),
                           batch_size=bs)
        ws.run(init)
        return r
    ds = _dataset(ws, n, "ds" + tag)
    if kind == "dataset":
        return ds.reader(batch_size=bs)
    if kind == "epoch":
        return ds.epoch_reader(batch_size=bs, shuffle=shuffle, seed=5)
    assert kind == "random"
    init = core.Net("rnd_init" + tag)
    r = ds.random_reader(init_net=init, batch_size=bs)
    r.reset(init)
    r.indices = init.SortAndShuffle([r.cursor] + ds.content().field_blobs(), "indices" + tag,
                                    sort_by_field_idx=-1, shuffle_size=2, batch_size=4,
                                    seed=3)     # the same order whatever the read batch
    r.computeoffset(init)
    ws.run(init)
    return r


def _py_stage(keep_odd):
    if keep_odd:
        return pipeline.PythonProcessor(
            lambda ids: ids[ids % 2 == 1] if (ids % 2 == 1).any() else None)
    return pipeline.PythonProcessor(lambda ids: ids)


def _native_filter(rec):
    """Keep ids whose id % 3 != 0 (BooleanMask: the batch shrinks or empties)."""
    three = ops.Const(np.int64(3))
    m = ops.Mul([ops.Div([rec.id(), three], broadcast=1), three], broadcast=1)
    keep = ops.NE([m, rec.id()])
    kept = ops.BooleanMask([rec.id(), keep])
    return schema.Struct(("id", schema.Scalar(np.int64, kept)))


def _job(ws, kind="array", n=N, batch=4, shuffle=False, inst=(2, 2), caps=(4, 4),
         keep_odd=False, native_filter=False, tag="", dq=1):
    """source -> Python stage x inst[0] -> queue (read dq records at a time:
    downstream rebatching) -> native stage x inst[1] -> queue."""
    from fastpipe import queue_util
    src = _reader(ws, kind, n, batch, shuffle, tag)
    with task.TaskGroup() as tg:
        mid = queue_util.Queue(capacity=caps[0], num_dequeue_records=dq)
        q = pipeline.pipe(src, output=mid, processor=_py_stage(keep_odd),
                          num_runtime_threads=inst[0])
        q = pipeline.pipe(q, processor=_native_filter if native_filter else None,
                          num_runtime_threads=inst[1], capacity=caps[1])
    return tg, q


def _ids(item):
    return np.asarray(item[0]).reshape(-1).tolist()


def _run1(ws, tg, q, stop, num_records=1):
    """Take `stop` items, then state() (JSON round trip), then close."""
    got = []
    with session.LocalSession(ws).iterate(tg, q, num_records=num_records,
                                          timeout=TIMEOUT) as it:
        for k in range(stop):           # every item next() returned is delivered
            item = next(it, None)
            if item is None:
                break
            got.extend(_ids(item))
        saved = json.loads(json.dumps(it.state()))
    return got, saved


def _run2(ws, tg, q, saved, num_records=1):
    with session.LocalSession(ws).iterate(tg, q, num_records=num_records, timeout=TIMEOUT,
                                          state=saved) as it:
        got = [i for item in it for i in _ids(item)]
        after = it.state()
    return got, after


def _expected(n, keep_odd=False, native_filter=False):
    ids = [i for i in range(n) if (not keep_odd or i % 2 == 1)
           and (not native_filter or i % 3 != 0)]
    return sorted(ids)


# ---- the property -----------------------------------------------------------------

@pytest.mark.timeout(120)
@settings(max_examples=int(os.environ.get("FASTPIPE_RESUME_EXAMPLES", "40")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["array", "dataset", "epoch", "random", "text"]),
       shuffle=st.booleans(),
       batch1=st.sampled_from([None, 1, 3, 16]), batch2=st.sampled_from([None, 1, 5, 16]),
       inst1=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       inst2=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       caps1=st.tuples(st.sampled_from([1, 2, 8]), st.sampled_from([1, 3, 16])),
       caps2=st.tuples(st.sampled_from([1, 2, 8]), st.sampled_from([1, 3, 16])),
       keep_odd=st.booleans(), k2=st.sampled_from([1, 2, 7]),
       dq=st.tuples(st.sampled_from([1, 3]), st.sampled_from([1, 2, 4])),
       stop=st.integers(0, 200))
def test_every_record_exactly_once_across_a_resume(kind, shuffle, batch1, batch2, inst1,
                                                   inst2, caps1, caps2, keep_odd, k2, dq, stop):
    if kind != "array":
        batch1, batch2 = batch1 or 1, batch2 or 1
    if batch1 is None or batch2 is None:
        k2 = 1                  # 0-d records cannot be concatenated by num_records
        dq = (1, 1)
    ws1 = workspace.C.Workspace()
    tg, q = _job(ws1, kind, batch=batch1, shuffle=shuffle, inst=inst1, caps=caps1,
                 keep_odd=keep_odd, dq=dq[0])
    first, saved = _run1(ws1, tg, q, stop)
    ws2 = workspace.C.Workspace()
    tg, q = _job(ws2, kind, batch=batch2, shuffle=shuffle, inst=inst2, caps=caps2,
                 keep_odd=keep_odd, dq=dq[1])
    second, after = _run2(ws2, tg, q, saved, num_records=k2)
    assert sorted(first + second) == _expected(N, keep_odd)
    # the state is bounded by what can be in flight, not by the records read
    for s in saved["sources"]:
        assert len(s["ranges"]) <= 64
    assert after["sources"][0]["low"] == N and after["sources"][0]["ranges"] == []


def test_state_is_small_and_json():
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", n=20000, batch=1, shuffle=True, inst=(4, 4), caps=(8, 8))
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        for k, _ in enumerate(it):
            if k == 15000:
                break
        s = it.state()
    text = json.dumps(s)
    assert len(text) < 2000        # 15001 records read: the state holds ranges, not ids
    src = s["sources"][0]
    # exactly the records handed out: a low-water mark plus the ranges above
    # it, one hole per record still in flight (queues, stages)
    assert src["low"] + sum(b - a for a, b in src["ranges"]) == 15001
    assert len(src["ranges"]) <= 8 + 8 + 4 + 4 + 2


# ---- a new process ----------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, %(tests)r)
    import test_resume as T
    from fastpipe import workspace
    ws = workspace.C.Workspace()
    tg, q = T._job(ws, %(kind)r, batch=%(batch)r, shuffle=True, inst=(3, 1), caps=(2, 5))
    saved = json.load(open(sys.argv[1]))
    got, after = T._run2(ws, tg, q, saved)
    json.dump({"got": got, "after": after}, open(sys.argv[2], "w"))
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["array", "epoch", "random", "dataset"])
def test_resume_in_a_fresh_process_from_a_json_file(kind, tmp_path):
    ws = workspace.C.Workspace()
    tg, q = _job(ws, kind, batch=3, shuffle=True, inst=(2, 3), caps=(3, 2))
    first, saved = _run1(ws, tg, q, stop=37)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(saved))
    out = tmp_path / "out.json"
    script = tmp_path / "child.py"
    script.write_text(_CHILD % {"tests": os.path.join(REPO, "tests"), "kind": kind,
                                "batch": 5})
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(path), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert sorted(first + res["got"]) == list(range(N))
    assert len(first) > 0 and len(res["got"]) > 0


# ---- edges ---------------------------------------------------------------------------

def test_state_before_the_first_record_resumes_everything():
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=4, shuffle=True)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        saved = it.state()            # before next(): nothing delivered
    assert saved["sources"][0]["low"] == 0 and saved["sources"][0]["ranges"] == []
    ws2 = workspace.C.Workspace()
    tg, q = _job(ws2, "array", batch=7, shuffle=True, inst=(1, 3))
    got, _ = _run2(ws2, tg, q, saved)
    assert sorted(got) == list(range(N))


def test_state_after_the_end_resumes_nothing():
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "dataset", batch=4, keep_odd=True)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        got = [i for item in it for i in _ids(item)]
        saved = it.state()
    assert sorted(got) == _expected(N, keep_odd=True)
    ws2 = workspace.C.Workspace()
    tg, q = _job(ws2, "dataset", batch=2, keep_odd=True, inst=(3, 1))
    again, _ = _run2(ws2, tg, q, saved)
    assert again == []


def test_resume_twice_chains_the_states():
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=2, shuffle=True)
    a, s1 = _run1(ws, tg, q, stop=10)
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=5, shuffle=True, inst=(4, 1))
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT, state=s1) as it:
        b = []
        for k in range(12):
            b.extend(_ids(next(it)))
        s2 = json.loads(json.dumps(it.state()))
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=1, shuffle=True, inst=(1, 2))
    c, _ = _run2(ws, tg, q, s2)
    assert sorted(a + b + c) == list(range(N))


def test_same_process_same_job_resumes_its_epoch():
    """A shuffled reader resumed in the same process (its epoch counter has
    moved on) re-reads the permutation of the run it resumes."""
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=4, shuffle=True)
    first, saved = _run1(ws, tg, q, stop=9)
    got, _ = _run2(ws, tg, q, saved)          # the same job object: epoch 1 would differ
    assert sorted(first + got) == list(range(N))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["array", "dataset"])
def test_a_native_filter_stage_drops_records_once(kind):
    ws = workspace.C.Workspace()
    tg, q = _job(ws, kind, batch=3, native_filter=True, keep_odd=True, inst=(3, 2))
    first, saved = _run1(ws, tg, q, stop=20)
    ws = workspace.C.Workspace()
    tg, q = _job(ws, kind, batch=4, native_filter=True, keep_odd=True, inst=(1, 4))
    second, after = _run2(ws, tg, q, saved)
    assert sorted(first + second) == _expected(N, keep_odd=True, native_filter=True)
    assert after["sources"][0]["low"] == N


@pytest.mark.parametrize("k1,k2", [(4, 1), (3, 8), (1, 5)])
def test_num_records_unions_the_items(k1, k2):
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=2, shuffle=True, inst=(2, 3))
    first, saved = _run1(ws, tg, q, stop=6, num_records=k1)
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=3, shuffle=True, inst=(3, 1))
    second, _ = _run2(ws, tg, q, saved, num_records=k2)
    assert sorted(first + second) == list(range(N))


def _two_source_job(ws, batch, inst):
    """Two readers (an ArrayReader, a Dataset) feeding one queue: each item
    carries a range of each source."""
    from fastpipe.dataio import CompositeReader
    a = sources.ArrayReader({"id": np.arange(0, 200, dtype=np.int64)}, batch_size=batch,
                            shuffle=True, seed=1)
    b = _dataset(ws, 200, "two").reader(batch_size=batch)

    def shift(rec):       # the Dataset's ids, shifted past the ArrayReader's
        return schema.Struct(("a", schema.Scalar(np.int64, rec.a.id())),
                             ("b", schema.Scalar(np.int64, ops.Add(
                                 [rec.b.id(), ops.Const(np.int64(1000))], broadcast=1))))
    with task.TaskGroup() as tg:
        q = pipeline.pipe(CompositeReader(["a", "b"], [a, b]), processor=shift,
                          num_runtime_threads=inst, capacity=2)
        q = pipeline.pipe(q, processor=pipeline.PythonProcessor(lambda x, y: (x, y)),
                          num_runtime_threads=inst, capacity=3)
    return tg, q


def _pairs(it, stop=None):
    got = []
    for k, item in enumerate(it):
        got.extend(np.asarray(item[0]).tolist() + np.asarray(item[1]).tolist())
        if stop is not None and k + 1 >= stop:
            break
    return got


def test_two_sources_feeding_one_queue():
    ws = workspace.C.Workspace()
    tg, q = _two_source_job(ws, 3, 2)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        first = _pairs(it, stop=20)
        saved = json.loads(json.dumps(it.state()))
    assert len(saved["sources"]) == 2
    ws = workspace.C.Workspace()
    tg, q = _two_source_job(ws, 5, 3)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT, state=saved) as it:
        second = _pairs(it)
    assert sorted(first + second) == list(range(200)) + list(range(1000, 1200))


# ---- refusals -------------------------------------------------------------------------

def test_unseeded_array_shuffle_is_refused():
    ws = workspace.C.Workspace()
    src = sources.ArrayReader({"id": np.arange(10, dtype=np.int64)}, shuffle=True,
                              name="unseeded")
    with task.TaskGroup() as tg:
        q = pipeline.pipe(src, num_runtime_threads=2)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        next(it)
        with pytest.raises(NotSupportedError) as e:
            it.state()
    assert str(e.value).startswith("cannot resume: ReadArrayBatch 'unseeded' (source 0, cursor ")
    assert str(e.value).endswith("shuffles without a seed (a new process draws another "
                                 "permutation; give the reader seed=...)")


def test_unseeded_epoch_reader_shuffle_is_refused_at_iterate():
    ws = workspace.C.Workspace()
    ds = _dataset(ws, 20, "ues")
    with task.TaskGroup() as tg:
        q = pipeline.pipe(ds.epoch_reader(batch_size=4, shuffle=True), num_runtime_threads=2)
    with pytest.raises(NotSupportedError, match=r"^cannot resume: ReadArrayBatch .*shuffles "
                                                r"without a seed"):
        session.LocalSession(ws).iterate(tg, q, state={"version": 1, "sources": []})


def test_unseeded_sort_and_shuffle_is_refused():
    ws = workspace.C.Workspace()
    ds = _dataset(ws, 20, "uss")
    init = core.Net("uss_init")
    r = ds.random_reader(init_net=init, batch_size=2)
    r.sort_and_shuffle(init, batch_size=2)      # no seed
    r.computeoffset(init)
    ws.run(init)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(r, num_runtime_threads=2)
    with pytest.raises(NotSupportedError, match=r"made by a SortAndShuffle without a seed"):
        session.LocalSession(ws).iterate(tg, q, state={"version": 1, "sources": []})
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        list(it)
        with pytest.raises(NotSupportedError, match=r"ReadRandomBatch .*source 0"):
            it.state()


def test_iterable_reader_is_refused():
    ws = workspace.C.Workspace()

    def gen():
        for i in range(10):
            yield np.int64(i)
    src = sources.IterableReader(gen, fields="id", name="gen")
    with task.TaskGroup() as tg:
        q = pipeline.pipe(src, num_runtime_threads=1)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        assert len(list(it)) == 10
        with pytest.raises(NotSupportedError) as e:
            it.state()
    assert str(e.value) == (
        "cannot resume: IterableReader 'gen' reads a Python iterable, which fastpipe cannot "
        "seek (use sources.ArrayReader / NpyReader, a Dataset or a TextFileReader for an "
        "exact resume)")


class _PythonOpReader(dataio.Reader):
    """A reader whose records a Python op makes: fastpipe cannot resume it."""

    def __init__(self, n):
        dataio.Reader.__init__(self, schema.Struct(("id", schema.Scalar(np.int64))))
        self.n = n
        self.next = 0
        self.lock = threading.Lock()

    def read(self, read_net):
        def make(inputs, outputs):
            with self.lock:
                i = self.next
                self.next += 1
            outputs[0].feed(np.bool_(i >= self.n))
            outputs[1].feed(np.array([i], dtype=np.int64))
        stop, rec = read_net.NextName("stop"), read_net.NextName("id")
        read_net.Python(make)([], [stop, rec])
        return core.BlobReference(stop), [core.BlobReference(rec)]


def test_a_python_op_reader_is_refused():
    """A source fastpipe does not know leaves its records untagged: state()
    names the enqueue that took them."""
    ws = workspace.C.Workspace()
    with task.TaskGroup() as tg:
        q = pipeline.pipe(_PythonOpReader(10), num_runtime_threads=2)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        assert sorted(_ids(x)[0] for x in it) == list(range(10))
        with pytest.raises(NotSupportedError) as e:
            it.state()
    msg = str(e.value)
    assert msg.startswith("cannot resume: SafeEnqueueBlobs ")
    assert msg.endswith("a record that no resumable source read (a reader fastpipe cannot "
                        "resume, e.g. a Python op, or a stage that splits one item into "
                        "several queue items)")


def test_a_stage_splitting_items_is_refused():
    """A rebatching queue splits a batch into records: refused, naming it."""
    ws = workspace.C.Workspace()
    mk = core.Net("rq_init")
    mk.CreateRebatchingQueue([], "split_q", capacity=64, num_blobs=1)
    ws.run(mk)
    src = sources.ArrayReader({"id": np.arange(40, dtype=np.int64)}, batch_size=4)
    with task.TaskGroup() as tg:
        def into(rec):
            ops.EnqueueRebatchingQueue([core.BlobReference("split_q"), rec.id()], [],
                                       enqueue_batch=True)
            return schema.Struct(("id", schema.Scalar(np.int64, rec.id())))
        q = pipeline.pipe(src, processor=into, num_runtime_threads=2)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        assert len(list(it)) == 10
        with pytest.raises(NotSupportedError) as e:
            it.state()
    assert str(e.value).startswith("cannot resume: EnqueueRebatchingQueue ")
    assert str(e.value).endswith("enqueues into rebatching queue 'split_q', which splits and "
                                 "regroups records: exact resume cannot follow them")


def test_a_state_of_another_job_is_rejected():
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=4, shuffle=True)
    _, saved = _run1(ws, tg, q, stop=3)
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "dataset", batch=4)
    with pytest.raises(ArgumentError, match=r"source 0 is a ReadNextBatch here but "
                                            r"'ReadArrayBatch' in the state"):
        session.LocalSession(ws).iterate(tg, q, state=saved)
    with pytest.raises(ArgumentError, match=r"expected a dict from RecordIterator.state"):
        session.LocalSession(ws).iterate(tg, q, state={"sources": 3})
    saved["sources"][0]["seed"] = 12
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=4, shuffle=True)
    with pytest.raises(ArgumentError, match=r"seeded with 11 here but 12 in the state"):
        session.LocalSession(ws).iterate(tg, q, state=saved)


def test_untracked_job_pays_nothing_and_plain_iterate_still_works():
    """An iterator without a state behaves as before (items, order of fields)."""
    ws = workspace.C.Workspace()
    tg, q = _job(ws, "array", batch=None)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        got = sorted(int(rec[0]) for rec in it)
    assert got == list(range(N))


# ---- TextFileReader -------------------------------------------------------------------

def _tsv_job(ws, path, batch, inst, passes):
    from fastpipe.text_file_reader import TextFileReader
    init = core.Net("tsv_init")
    reader = TextFileReader(init, str(path), schema.Struct(("id", schema.Scalar(np.int64))),
                            num_passes=passes, batch_size=batch)
    ws.run(init)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, processor=_py_stage(True), num_runtime_threads=inst[0],
                          capacity=2)
        q = pipeline.pipe(q, num_runtime_threads=inst[1], capacity=3)
    return tg, q


@pytest.mark.timeout(120)
@pytest.mark.parametrize("passes,stop", [(1, 0), (1, 13), (2, 40), (2, 1000)])
def test_text_file_reader_resumes_by_line(tmp_path, passes, stop):
    path = tmp_path / "ids.tsv"
    path.write_text("".join("%d\n" % i for i in range(N)))
    ws = workspace.C.Workspace()
    tg, q = _tsv_job(ws, path, 7, (2, 2), passes)
    first, saved = _run1(ws, tg, q, stop)
    ws = workspace.C.Workspace()
    tg, q = _tsv_job(ws, path, 3, (3, 1), passes)
    second, _ = _run2(ws, tg, q, saved)
    assert sorted(first + second) == sorted(_expected(N, keep_odd=True) * passes)


def test_text_file_reader_same_reader_restarts_on_resume(tmp_path):
    """The reader object of run 1 (its file read to the middle) resumes
    from the start of the file, skipping what was delivered."""
    path = tmp_path / "ids.tsv"
    path.write_text("".join("%d\n" % i for i in range(N)) + "%d" % N)   # no last newline
    ws = workspace.C.Workspace()
    tg, q = _tsv_job(ws, path, 5, (2, 2), 1)
    first, saved = _run1(ws, tg, q, stop=9)
    second, _ = _run2(ws, tg, q, saved)
    assert sorted(first + second) == _expected(N + 1, keep_odd=True)


# ---- iterate over a rebatching queue ----------------------------------------------------

def _rebatch_job(ws, rows, iters, capacity=8):
    mk = core.Net("rq_mk")
    mk.CreateRebatchingQueue([], "rq_it", capacity=capacity, num_blobs=2)
    ws.run(mk)
    ws.feed_blob("rq_ids", np.arange(rows, dtype=np.int64))
    ws.feed_blob("rq_x", np.arange(rows * 3, dtype=np.float32).reshape(rows, 3))
    with task.TaskGroup() as tg:
        with task.Task(name="fill"):
            fill = core.Net("rq_fill")
            fill.EnqueueRebatchingQueue(["rq_it", "rq_ids", "rq_x"], [], enqueue_batch=True)
            ops.net(core.execution_step("rq_fill_loop", fill, num_iter=iters))
            close = core.Net("rq_close")
            close.CloseRebatchingQueue(["rq_it"], [])
            ops.net(close)
    return tg


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k,capacity", [(1, 1), (5, 8), (64, 4)])
def test_iterate_a_rebatching_queue(k, capacity):
    ws = workspace.C.Workspace()
    tg = _rebatch_job(ws, rows=12, iters=10, capacity=capacity)
    with session.LocalSession(ws).iterate(tg, "rq_it", num_records=k, timeout=TIMEOUT) as it:
        items = list(it)
    # what DequeueRebatchingQueue(num_elements=k) returns: k records stacked on a new dim 0
    assert all(ids.shape[0] <= k and x.shape == (ids.shape[0], 3) for ids, x in items)
    assert sum(ids.shape[0] for ids, _ in items) == 120
    ids = np.concatenate([i for i, _ in items])
    xs = np.concatenate([x for _, x in items])
    assert sorted(ids.tolist()) == sorted(list(range(12)) * 10)
    assert (xs[:, 0] == ids * 3).all()
    if k < 120:
        assert items[0][0].shape == (k,)


@pytest.mark.timeout(60)
def test_state_over_a_rebatching_queue_is_refused():
    ws = workspace.C.Workspace()
    tg = _rebatch_job(ws, rows=4, iters=3)
    with session.LocalSession(ws).iterate(tg, "rq_it", num_records=2, timeout=TIMEOUT) as it:
        assert sum(i.shape[0] for i, _ in it) == 12
        with pytest.raises(NotSupportedError, match=r"enqueues into rebatching queue 'rq_it'"):
            it.state()


@pytest.mark.timeout(60)
def test_closing_an_iterator_over_a_blocked_rebatching_queue_joins_the_job():
    ws = workspace.C.Workspace()
    tg = _rebatch_job(ws, rows=4, iters=1000, capacity=2)     # the filler blocks on full
    it = session.LocalSession(ws).iterate(tg, "rq_it", num_records=3, timeout=TIMEOUT)
    ids, _ = next(it)
    assert ids.shape == (3,)
    it.close()                  # cancels the job: the blocked enqueue wakes, threads join
    with pytest.raises(StopIteration):
        next(it)


# ---- nested Dataset fields, NpyReader ---------------------------------------------------

def _nested_job(ws, n, batch, inst, epoch_shuffle=False):
    """Records (id, v) where v is a list of id % 4 values id * 10 + j: the
    skip of a resumed ReadNextBatch must move the nested offsets too."""
    ds = Dataset(["id", "v:lengths", "v:values"], name="nest")
    init = core.Net("nest_init")
    with core.NameScope("nest"):
        ds.init_empty(init)
    ws.run(init)
    lens = (np.arange(n) % 4).astype(np.int32)
    vals = np.concatenate([np.arange(k, dtype=np.float32) + 10 * i for i, k in enumerate(lens)])
    b = ds.get_blobs()
    ws.blobs[str(b[0])].feed(np.arange(n, dtype=np.int64))
    ws.blobs[str(b[1])].feed(lens)
    ws.blobs[str(b[2])].feed(vals)
    reader = ds.epoch_reader(batch_size=batch, shuffle=True, seed=9) if epoch_shuffle \
        else ds.reader(batch_size=batch)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=inst, capacity=2)
        q = pipeline.pipe(q, num_runtime_threads=inst, capacity=2)
    return tg, q


def _nested_records(it, stop=None):
    out = {}
    for k, (ids, lens, vals) in enumerate(it):
        off = 0
        for i, l in zip(ids.tolist(), lens.tolist()):
            assert i not in out
            out[i] = vals[off:off + l].tolist()
            off += l
        if stop is not None and k + 1 >= stop:
            break
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("epoch_shuffle", [False, True])
def test_nested_dataset_fields_resume_whole_records(epoch_shuffle):
    ws = workspace.C.Workspace()
    tg, q = _nested_job(ws, 200, 3, 2, epoch_shuffle)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT) as it:
        first = _nested_records(it, stop=11)
        saved = json.loads(json.dumps(it.state()))
    ws = workspace.C.Workspace()
    tg, q = _nested_job(ws, 200, 5, 3, epoch_shuffle)
    with session.LocalSession(ws).iterate(tg, q, timeout=TIMEOUT, state=saved) as it:
        second = _nested_records(it)
    assert not set(first) & set(second)
    allrec = {**first, **second}
    assert sorted(allrec) == list(range(200))
    assert all(v == [10.0 * i + j for j in range(i % 4)] for i, v in allrec.items())


@pytest.mark.parametrize("shards", [1, 7])
@pytest.mark.parametrize("shuffle", [False, True])
def test_npy_reader_resumes(tmp_path, shards, shuffle):
    """NpyReader reads in place through ReadSegmentBatch: one file, and 7
    shards (batches that cross a shard boundary are assembled)."""
    ids = np.arange(N, dtype=np.int64)
    if shards == 1:
        np.save(str(tmp_path / "id.npy"), ids)
    else:
        for k, part in enumerate(np.array_split(ids, shards)):
            np.save(str(tmp_path / ("id-%d.npy" % k)), part)

    def job(ws, batch, inst):
        with task.TaskGroup() as tg:
            src = sources.NpyReader(str(tmp_path), fields=["id"], batch_size=batch,
                                    shuffle=shuffle, seed=4)
            q = pipeline.pipe(src, processor=_py_stage(False), num_runtime_threads=inst)
        return tg, q
    ws = workspace.C.Workspace()
    tg, q = job(ws, 8, 2)
    first, saved = _run1(ws, tg, q, stop=7)
    ws = workspace.C.Workspace()
    tg, q = job(ws, 3, 4)
    second, _ = _run2(ws, tg, q, saved)
    assert sorted(first + second) == list(range(N))
