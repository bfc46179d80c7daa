"""pipeline.PythonProcessor and its native op, PythonStage: per-record Python
stages in a pipe, run by the runtime instances with the GIL held only for
the call.

Jobs here read a Dataset and write a Dataset (through a queue), and the
test fetches the written columns after the run."""
import collections
import ctypes
import os
import threading

import numpy as np
import pytest

from fastpipe import core, schema, stats
from fastpipe.dataio import ReaderWithLimit
from fastpipe.dataset import Dataset
from fastpipe.errors import FastpipeError, GraphError, OperatorDefError, RunError
from fastpipe.pipeline import ProcessingReader, PythonProcessor, pipe, processor_name
from fastpipe.task import TaskGroup

from pipeline_helpers import local_session

FEAT = 4


def _struct(fields):
    return schema.Struct(*[(name, schema.Scalar(t)) for name, t in fields])


def _dataset(ws, name, fields, columns=None):
    """A Dataset of ``fields`` ((name, schema type) pairs) in ws, holding
    ``columns`` (arrays, one per field) or empty."""
    ds = Dataset(_struct(fields), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):
        ds.init_empty(init)
    ws.run(init)
    if columns is not None:
        for blob, col in zip(ds.get_blobs(), columns):
            ws.blobs[str(blob)].feed(col)
    return ds


ID_X = [("id", np.int64), ("x", (np.float32, (FEAT,)))]


def _source(ws, n, name="src"):
    ids = np.arange(n, dtype=np.int64)
    xs = (np.arange(n * FEAT) % 1000).astype(np.float32).reshape(n, FEAT)
    return _dataset(ws, name, ID_X, [ids, xs]), ids, xs


def _columns(ws, ds):
    return [ws.blobs[str(b)].fetch() for b in ds.get_blobs()]


def _run(ws, src, processor, out_fields, n_instances=1, batch_size=1, **pipe_kw):
    """src -> pipe(processor, N instances) -> queue -> Dataset(out_fields);
    returns the written columns."""
    dst = _dataset(ws, "dst", out_fields)
    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=batch_size), processor=processor,
                 num_runtime_threads=n_instances, **pipe_kw)
        pipe(q, dst.writer())
    local_session(ws).run(tg)
    return _columns(ws, dst)


def _rows(*cols):
    """The multiset of rows (as hashable tuples) of equal-length columns."""
    return collections.Counter(
        tuple(tuple(np.asarray(c[i]).ravel().tolist()) for c in cols)
        for i in range(len(cols[0])))


def _stage_timer_counts(name):
    """Counts of the pipe timers whose profiler name names the stage."""
    return [v for k, v in stats.export().items()
            if k.endswith("/time_ns/count") and ("/pipe/%s/" % name) in k]


# --- results -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_instances", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [1, 16])
def test_outputs_are_exact_for_any_instance_count(ws, n_instances, batch_size):
    src, ids, xs = _source(ws, 500)

    def affine(i, x):
        return i + 1000, x * 2 + 1

    got_ids, got_x = _run(ws, src, PythonProcessor(affine), ID_X, n_instances, batch_size)
    assert _rows(got_ids, got_x) == _rows(ids + 1000, xs * 2 + 1)


@pytest.mark.timeout(60)
def test_one_array_result_with_a_renamed_output(ws):
    src, ids, xs = _source(ws, 100)
    proc = PythonProcessor(lambda i, x: x.sum(axis=-1), outputs=("s",))
    (got,) = _run(ws, src, proc, [("s", np.float32)], 2, batch_size=8)
    assert sorted(got.tolist()) == sorted(xs.sum(axis=1).tolist())
    assert proc.schema().field_names() == ["s"]


@pytest.mark.timeout(60)
def test_tuple_result_renamed_and_of_other_dtypes(ws):
    src, ids, xs = _source(ws, 100)
    proc = PythonProcessor(lambda i, x: (i.astype(np.int32), x.astype(np.float64) / 2,
                                         i % 2 == 0),
                           outputs=["k", "half", "even"])
    got_k, got_half, got_even = _run(
        ws, src, proc, [("k", np.int32), ("half", (np.float64, (FEAT,))), ("even", np.bool_)],
        2, batch_size=5)
    assert got_k.dtype == np.int32 and got_half.dtype == np.float64
    assert got_even.dtype == np.bool_
    assert _rows(got_k, got_half, got_even) == _rows(ids, xs / 2.0, ids % 2 == 0)


@pytest.mark.timeout(60)
def test_dict_result_by_field_name_in_any_order(ws):
    src, ids, xs = _source(ws, 60)
    proc = PythonProcessor(lambda i, x: {"x": x - 1, "id": i * 3})
    got_ids, got_x = _run(ws, src, proc, ID_X, 2, batch_size=4)
    assert _rows(got_ids, got_x) == _rows(ids * 3, xs - 1)


@pytest.mark.timeout(60)
def test_inputs_passed_through_unchanged(ws):
    """A field returned as it came (the input's view) is passed on without a
    copy; the next records must not write under it."""
    src, ids, xs = _source(ws, 300)
    got_ids, got_x = _run(ws, src, PythonProcessor(lambda i, x: (i, x)), ID_X, 2, batch_size=7)
    assert _rows(got_ids, got_x) == _rows(ids, xs)


@pytest.mark.timeout(60)
def test_views_kept_by_the_function_stay_valid(ws):
    """The arguments are views of the runtime's buffers; a view the function
    keeps pins its buffer, so later records never overwrite it."""
    src, ids, xs = _source(ws, 200)
    kept = []

    def keep_views(i, x):
        kept.append((i, x))
        return i, x + 0

    _run(ws, src, PythonProcessor(keep_views), ID_X, 1, batch_size=10)
    assert len(kept) == 20
    for i, x in kept:
        np.testing.assert_array_equal(x, xs[i])


@pytest.mark.timeout(60)
def test_scalars_strided_arrays_and_longlong(ws):
    """A numpy scalar is a 0-d array (and a 0-d input of the next stage), a
    strided view is copied contiguously, and int64 is int64 whichever C type
    numpy names it."""
    src, ids, xs = _source(ws, 30)
    first = PythonProcessor(lambda i, x: (np.float32(x.sum()), x[:, ::2], i.astype(np.longlong)),
                            outputs=("s", "half", "k"))
    second = PythonProcessor(lambda s, half, k: (s.reshape(1), half, k))
    dst = _dataset(ws, "dst", [("s", np.float32), ("half", (np.float32, (FEAT // 2,))),
                               ("k", np.int64)])
    with TaskGroup() as tg:
        q = pipe(ProcessingReader(src.reader(batch_size=1), first), processor=second,
                 num_runtime_threads=2)
        pipe(q, dst.writer())
    local_session(ws).run(tg)
    got_s, got_half, got_k = _columns(ws, dst)
    assert got_k.dtype == np.int64
    assert _rows(got_s, got_half, got_k) == _rows(xs.sum(axis=1), xs[:, ::2], ids)


@pytest.mark.timeout(60)
def test_views_are_writable_unless_their_buffer_is_shared(ws):
    """A stage may change its arguments in place -- unless the buffer is
    shared (here: the previous stage passed its input on without a copy, so
    the next stage's view is read-only and the write fails naming it)."""
    src, ids, xs = _source(ws, 20)
    flags = []

    def first(i, x):
        flags.append(x.flags.writeable)
        x += 1                          # in place: a private buffer
        return i, x                     # passed on without a copy

    def second(i, x):
        flags.append(x.flags.writeable)
        return i, x * 2

    reader = ProcessingReader(src.reader(batch_size=5), PythonProcessor(first))
    dst = _dataset(ws, "dst", ID_X)
    with TaskGroup() as tg:
        q = pipe(reader, processor=PythonProcessor(second))
        pipe(q, dst.writer())
    local_session(ws).run(tg)
    assert flags == [True, False] * 4
    got_ids, got_x = _columns(ws, dst)
    assert _rows(got_ids, got_x) == _rows(ids, (xs + 1) * 2)

    def write_shared(i, x):
        x[:] = 0
        return i, x

    reader = ProcessingReader(src.reader(batch_size=5), PythonProcessor(lambda i, x: (i, x)))
    with pytest.raises(RunError, match=r"Python stage 'writer' on record #0 .* raised "
                                       r"ValueError: .*read-only"):
        with TaskGroup() as tg:
            pipe(reader, processor=PythonProcessor(write_shared, name="writer"))
        local_session(ws).run(tg)


@pytest.mark.timeout(60)
def test_string_output(ws):
    src, ids, xs = _source(ws, 20)
    proc = PythonProcessor(lambda i, x: np.array([b"r%d" % v for v in i]), outputs="name")
    (got,) = _run(ws, src, proc, [("name", str)], 1, batch_size=3)
    assert sorted(got.tolist()) == sorted(b"r%d" % v for v in range(20))


# --- None drops the record -----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_instances", [1, 2, 4])
def test_none_drops_the_record(ws, n_instances):
    src, ids, xs = _source(ws, 1000)
    stats.export(reset=True)
    proc = PythonProcessor(lambda i, x: None if i[0] % 3 == 0 else (i, x), name="every_third")
    got_ids, got_x = _run(ws, src, proc, ID_X, n_instances, batch_size=1)
    keep = ids % 3 != 0
    assert len(got_ids) == keep.sum() == 666
    assert _rows(got_ids, got_x) == _rows(ids[keep], xs[keep])
    # each instance's timer began and ended once per record read, plus once
    # for the read that found the end: dropped records keep them balanced
    assert sum(_stage_timer_counts("every_third")) == 1000 + n_instances


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_instances", [1, 2])
def test_a_filter_that_drops_everything(ws, n_instances):
    src, ids, xs = _source(ws, 300)
    stats.export(reset=True)
    calls = []
    lock = threading.Lock()

    def drop(i, x):
        with lock:
            calls.append(len(i))
        return None

    got_ids, got_x = _run(ws, src, PythonProcessor(drop, name="drop_all"), ID_X,
                          n_instances, batch_size=8)
    assert len(got_ids) == 0 and len(got_x) == 0
    assert sum(calls) == 300                    # every record was seen once
    assert sum(_stage_timer_counts("drop_all")) == len(calls) + n_instances


@pytest.mark.timeout(60)
def test_a_dropped_record_skips_later_stages(ws):
    """Two stages in one pipe: the second never sees a record the first
    dropped, and sees every other one once."""
    src, ids, xs = _source(ws, 400)
    seen = []
    lock = threading.Lock()

    def second(i, x):
        with lock:
            seen.extend(i.tolist())
        return i, x * 10

    reader = ProcessingReader(src.reader(batch_size=1),
                              PythonProcessor(lambda i, x: None if i[0] % 2 else (i, x)))
    dst = _dataset(ws, "dst", ID_X)
    with TaskGroup() as tg:
        q = pipe(reader, processor=PythonProcessor(second), num_runtime_threads=2)
        pipe(q, dst.writer())
    local_session(ws).run(tg)
    got_ids, got_x = _columns(ws, dst)
    assert sorted(seen) == list(range(0, 400, 2))
    assert _rows(got_ids, got_x) == _rows(ids[::2], xs[::2] * 10)


@pytest.mark.timeout(60)
def test_a_drop_inside_a_limited_reader_still_ends_the_pipe(ws):
    """ReaderWithLimit over a dropping stage: the limit counts reads, and the
    end of the inner reader still reaches the pipe's status."""
    src, ids, xs = _source(ws, 50)
    proc = PythonProcessor(lambda i, x: None if len(i) == 0 or i[0] % 2 else (i, x))
    limited = ReaderWithLimit(ProcessingReader(src.reader(batch_size=1), proc), num_iter=10)
    dst = _dataset(ws, "dst", ID_X)
    with TaskGroup() as tg:
        pipe(limited, dst.writer())
    local_session(ws).run(tg)
    assert sorted(_columns(ws, dst)[0].tolist()) == [0, 2, 4, 6, 8]

    src2, _, _ = _source(ws, 7, name="src2")
    limited = ReaderWithLimit(ProcessingReader(src2.reader(batch_size=1), proc), num_iter=100)
    dst2 = _dataset(ws, "dst2", ID_X)
    with TaskGroup() as tg:
        pipe(limited, dst2.writer())
    local_session(ws).run(tg)       # the data ends before the limit: the run ends
    assert sorted(_columns(ws, dst2)[0].tolist()) == [0, 2, 4, 6]


# --- per-instance state ----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_instances", [1, 2, 4])
def test_factory_is_called_once_per_instance_with_distinct_ids(ws, n_instances):
    src, ids, xs = _source(ws, 400)
    made = []
    lock = threading.Lock()

    def factory(instance_id, num_instances):
        with lock:
            made.append((instance_id, num_instances, threading.get_ident()))
        return lambda i, x: (i, np.full_like(x, instance_id))

    got_ids, got_x = _run(ws, src, PythonProcessor(factory=factory), ID_X, n_instances,
                          batch_size=4)
    assert sorted(m[0] for m in made) == list(range(n_instances))
    assert {m[1] for m in made} == {n_instances}
    assert len({m[2] for m in made}) == n_instances      # each on its instance's thread
    assert sorted(got_ids.tolist()) == ids.tolist()     # every record once
    assert set(np.unique(got_x).tolist()) <= set(range(n_instances))


@pytest.mark.timeout(60)
def test_factory_in_static_pipe_copies_gets_the_copy_index(ws):
    src, ids, xs = _source(ws, 100)
    made = []
    lock = threading.Lock()

    def factory(instance_id, num_instances):
        with lock:
            made.append((instance_id, num_instances))
        return lambda i, x: (i, x)

    dst = _dataset(ws, "dst", ID_X)
    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=4), processor=PythonProcessor(factory=factory),
                 num_threads=3)
        pipe(q, dst.writer())
    local_session(ws).run(tg)
    assert sorted(made) == [(0, 3), (1, 3), (2, 3)]
    assert sorted(_columns(ws, dst)[0].tolist()) == ids.tolist()


@pytest.mark.timeout(60)
def test_factory_runs_again_for_each_run(ws):
    src, ids, xs = _source(ws, 10)
    made = []
    proc = PythonProcessor(factory=lambda k, n: made.append(k) or (lambda i, x: (i, x)))
    dst = _dataset(ws, "dst", ID_X)
    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=4), processor=proc, num_runtime_threads=2)
        pipe(q, dst.writer())
    s = local_session(ws)
    s.run(tg)
    s.run(tg)
    assert sorted(made) == [0, 0, 1, 1]


@pytest.mark.timeout(60)
def test_the_gil_is_released_around_the_call():
    """Two instances are inside the function at the same time: each one's
    first call waits at a barrier for the other (a GIL held around the call,
    or a lock serialising the stage, would break the barrier)."""
    from fastpipe import workspace
    ws = workspace.C.Workspace()
    src, ids, xs = _source(ws, 50)
    barrier = threading.Barrier(2, timeout=20)
    met = []

    def factory(instance_id, num_instances):
        first = [True]

        def fn(i, x):
            if first[0]:
                first[0] = False
                barrier.wait()          # raises BrokenBarrierError after the timeout
                met.append(instance_id)
            return i, x
        return fn

    got_ids, _ = _run(ws, src, PythonProcessor(factory=factory), ID_X, 2, batch_size=1)
    assert sorted(met) == [0, 1]
    assert sorted(got_ids.tolist()) == ids.tolist()


def _thread_states():
    """How many Python thread states the interpreter has."""
    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
    api.PyThreadState_Next.restype = ctypes.c_void_p
    api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
    n = 0
    ts = api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while ts:
        n += 1
        ts = api.PyThreadState_Next(ts)
    return n


@pytest.mark.timeout(60)
def test_an_instance_keeps_one_python_thread_state(ws):
    """Each native thread calls the stage under one Python thread state for
    its life (thread-local data survives from record to record), and gives
    it back when it exits."""
    src, ids, xs = _source(ws, 120)
    local = threading.local()
    seen = collections.Counter()
    lock = threading.Lock()

    def count(i, x):
        local.n = getattr(local, "n", 0) + 1
        with lock:
            seen[threading.get_ident()] = local.n
        return i, x

    before = _thread_states()
    for _ in range(3):
        seen.clear()
        _run(ws, src, PythonProcessor(count), ID_X, 2, batch_size=1)
        assert sum(seen.values()) == 120            # the last count of each thread
    assert _thread_states() == before


# --- errors ----------------------------------------------------------------------------------


def _tasks():
    return set(os.listdir("/proc/self/task"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_instances", [1, 2])
def test_an_exception_fails_the_run_naming_stage_instance_and_record(ws, n_instances):
    src, ids, xs = _source(ws, 200)
    where = []          # (instance, position among the records it read) of the failure

    def factory(instance_id, num_instances):
        count = [0]

        def fn(i, x):
            count[0] += 1
            if i[0] == 57:
                where.append((instance_id, count[0] - 1))
                raise ValueError("bad record %d" % i[0])
            return i, x
        return fn

    before = _tasks()
    with pytest.raises(RunError) as ei:
        _run(ws, src, PythonProcessor(factory=factory, name="augment"), ID_X, n_instances)
    err = ei.value
    msg = str(err)
    ((inst, pos),) = where
    assert "Python stage 'augment' on record #%d read by instance %d" % (pos, inst) in msg
    assert "raised ValueError: bad record 57" in msg
    assert isinstance(err.__cause__, ValueError)
    assert err.op_type == "PythonStage"
    if n_instances > 1:
        assert err.instance == inst
        assert "instance %d)" % inst in msg         # the step's instance, too
    assert isinstance(err, FastpipeError)
    assert _tasks() == before                  # every native thread was joined


@pytest.mark.timeout(60)
def test_error_names_the_functions_qualname_by_default(ws):
    src, ids, xs = _source(ws, 5)

    def explode(i, x):
        raise KeyError("nope")

    proc = PythonProcessor(explode)
    assert proc.name == processor_name(proc) == \
        "test_error_names_the_functions_qualname_by_default.<locals>.explode"
    with pytest.raises(RunError, match=r"Python stage 'test_error_names_the_functions_"
                                       r"qualname_by_default.<locals>.explode' on record #0 "
                                       r"read by instance 0") as ei:
        _run(ws, src, proc, ID_X)
    assert isinstance(ei.value.__cause__, KeyError)


@pytest.mark.timeout(60)
def test_factory_error_fails_the_run_naming_the_stage(ws):
    src, ids, xs = _source(ws, 5)

    def factory(k, n):
        if k == 1:
            raise RuntimeError("no model for %d" % k)
        return lambda i, x: (i, x)

    before = _tasks()
    with pytest.raises(RunError, match=r"factory of Python stage 'loader' \(called for "
                                       r"instance 1 of 2\) raised RuntimeError") as ei:
        _run(ws, src, PythonProcessor(factory=factory, name="loader"), ID_X, 2)
    assert isinstance(ei.value.__cause__, RuntimeError)
    assert _tasks() == before

    with pytest.raises(RunError, match=r"factory\(0, 1\) returned 'int', which is not "
                                       r"callable"):
        _run(ws, src, PythonProcessor(factory=lambda k, n: 3, name="loader"), ID_X)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn, outputs, match", [
    (lambda i, x: (i,), None,
     r"returned a tuple of 1 item\(s\) for 2 output field\(s\) \(id, x\); name the outputs"),
    (lambda i, x: x, None, r"returned one ndarray for 2 output fields \(id, x\)"),
    (lambda i, x: (i, [1.0] * 4), None, r"returned list for output field 'x': expected a "
                                        r"numpy array"),
    (lambda i, x: (i, 3), None, r"returned int for output field 'x'"),
    (lambda i, x: (i, np.array([object()])), None, r"returned an object array \(dtype object\) "
                                                   r"for output field 'x'"),
    (lambda i, x: (i, x.astype(np.complex64)), None, r"returned dtype complex64 for output "
                                                     r"field 'x', which is not supported"),
    (lambda i, x: {"id": i}, None, r"returned a dict without output field\(s\) 'x' \(its keys: "
                                   r"'id'\)"),
    (lambda i, x: {"id": i, "x": x, "z": x}, None, r"returned a dict with unknown field\(s\) "
                                                   r"'z'"),
    (lambda i, x: "y", ("y",), r"returned str for output field 'y'"),
    (lambda i, x: (i, x.astype(">f4")), None, r"returned dtype >f4 for output field 'x', "
                                               r"which is not supported"),
    (lambda i, x: (i.astype(np.uint32), x), None, r"returned dtype uint32 for output field "
                                                  r"'id', which is not supported"),
])
def test_a_bad_result_fails_naming_the_stage(ws, fn, outputs, match):
    src, ids, xs = _source(ws, 5)
    before = _tasks()
    with pytest.raises(RunError, match=r"PythonStage 'bad' in net .*: Python stage 'bad' on "
                       r"record #0 read by instance 0 \(counting from 0\) " + match):
        _run(ws, src, PythonProcessor(fn, outputs=outputs, name="bad"),
             ID_X if outputs is None else [(outputs[0], str)])
    assert _tasks() == before


def test_bad_processor_arguments_are_rejected_at_build_time():
    with pytest.raises(GraphError, match="exactly one of fn or factory=, got neither"):
        PythonProcessor()
    with pytest.raises(GraphError, match="exactly one of fn or factory=, got both"):
        PythonProcessor(lambda x: x, factory=lambda k, n: None)
    with pytest.raises(GraphError, match="fn=3 is not callable"):
        PythonProcessor(3)
    with pytest.raises(GraphError, match="not unique"):
        PythonProcessor(lambda x: x, outputs=["a", "a"])
    with pytest.raises(GraphError, match="outputs=\\(\\) names no field"):
        PythonProcessor(lambda x: x, outputs=[])
    with pytest.raises(GraphError, match="non-empty str"):
        PythonProcessor(lambda x: x, name="")
    with pytest.raises(GraphError) as ei:
        PythonProcessor(lambda x: x, outputs=[1])
    assert isinstance(ei.value, FastpipeError) and isinstance(ei.value, ValueError)


def test_the_op_schema_checks_fields_against_outputs():
    net = core.Net("ps_schema")
    with pytest.raises(OperatorDefError, match=r"PythonStage in net 'ps_schema': 1 output "
                                               r"field name\(s\) \['a'\] for 3 output blob"):
        net.PythonStage(["x"], ["a", "b", "keep"], token="t", fields=["a"])
    with pytest.raises(OperatorDefError, match="argument 'token' is required"):
        net.PythonStage(["x"], ["a", "keep"], fields=["a"])
    with pytest.raises(OperatorDefError, match="give both"):
        net.PythonStage(["x"], ["a", "keep"], token="t", fields=["a"], instance=1)


# --- names -----------------------------------------------------------------------------------


def test_the_task_and_profiler_are_named_after_the_stage(ws):
    src, ids, xs = _source(ws, 3)

    def augment(i, x):
        return i, x

    with TaskGroup() as tg:
        pipe(src.reader(), processor=PythonProcessor(augment))
        pipe(src.reader(), processor=PythonProcessor(augment, name="aug2"))
    names = [t.name for t in tg.tasks()]
    assert names == ["local/test_the_task_and_profiler_are_named_after_the_stage."
                     "<locals>.augment", "local/aug2"]
    assert repr(PythonProcessor(augment, name="aug2")) == "PythonProcessor('aug2')"
