"""LocalSession.start (RunHandle) and LocalSession.iterate (RecordIterator):
records of a running job read from Python -- exact multisets over instance
counts and capacities, items, num_records batching, every early-exit path
(each ends with no native thread left), failures raised from next(),
timeouts, re-runs, the ways to name the queue."""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest

from fastpipe import core, queue_util, schema, session, task, workspace
from fastpipe.dataset import Dataset
from fastpipe.errors import (ArgumentError, CancelledError, FastpipeError, IterTimeoutError,
                             RunError)
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe

from conftest import _native_tids
from conftest import extra_native_tids as _extra_tids

FEAT = 4



def _source(ws, n, name="src"):
    """A Dataset of n records (id int64, x float32[FEAT]) with x[i] = i*FEAT + k."""
    ds = Dataset(schema.Struct(("id", schema.Scalar(np.int64)),
                               ("x", schema.Scalar((np.float32, (FEAT,))))), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):
        ds.init_empty(init)
    ws.run(init)
    b = ds.get_blobs()
    ws.blobs[str(b[0])].feed(np.arange(n, dtype=np.int64))
    ws.blobs[str(b[1])].feed(np.arange(n * FEAT, dtype=np.float32).reshape(n, FEAT))
    return ds


def _affine(rec):
    """y = 2x + 1 as native ops; keeps id."""
    y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                 ops.Const(np.float32(1))], broadcast=1)
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("y", schema.Scalar((np.float32, (FEAT,)), y)))


def _job(ws, n, batch=1, instances=2, capacity=16, processor=_affine, name="src"):
    src = _source(ws, n, name)
    with task.TaskGroup() as tg:
        q = pipe(src.reader(batch_size=batch), processor=processor,
                 num_runtime_threads=instances, capacity=capacity)
    return tg, q


def _expected_y(ids):
    return 2 * (ids[:, None] * FEAT + np.arange(FEAT, dtype=np.float32)) + 1


def _check_items(items, n):
    ids = np.concatenate([np.atleast_1d(i) for i, _ in items])
    ys = np.concatenate([y.reshape(-1, FEAT) for _, y in items])
    assert sorted(ids.tolist()) == list(range(n))
    np.testing.assert_array_equal(ys, _expected_y(ids).astype(np.float32))


# ---- records ---------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1, 2, 64])
@pytest.mark.parametrize("instances", [1, 2, 8])
@pytest.mark.parametrize("batch", [1, 7])
def test_every_record_exactly_once(ws, batch, instances, capacity):
    n = 301
    tg, q = _job(ws, n, batch, instances, capacity)
    s = session.LocalSession(ws)
    before = _native_tids()
    items = list(s.iterate(tg, q))
    _check_items(items, n)
    sizes = [len(i) for i, _ in items]
    assert all(sz <= batch for sz in sizes)
    assert sum(sizes) == n
    assert _extra_tids(before) == set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1, 2, 64])
@pytest.mark.parametrize("instances", [1, 2, 8])
def test_every_single_record_exactly_once(ws, instances, capacity):
    """Single records (ArrayReader(batch_size=None)): items are (id 0-d,
    y (FEAT,)), each record exactly once."""
    from fastpipe import sources
    n = 257
    ids = np.arange(n, dtype=np.int64)
    xs = np.arange(n * FEAT, dtype=np.float32).reshape(n, FEAT)
    with task.TaskGroup() as tg:
        q = pipe(sources.ArrayReader({"id": ids, "x": xs}, batch_size=None),
                 processor=_affine, num_runtime_threads=instances, capacity=capacity)
    before = _native_tids()
    items = list(session.LocalSession(ws).iterate(tg, q))
    assert all(i.shape == () and y.shape == (FEAT,) for i, y in items)
    _check_items(items, n)
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_items_are_records_with_field_access(ws):
    tg, q = _job(ws, 20, batch=4)
    it = session.LocalSession(ws).iterate(tg, q)
    assert it.fields == ("id", "y")
    rec = next(it)
    assert isinstance(rec, tuple) and len(rec) == 2
    ids, y = rec
    assert rec[0] is ids and rec[1] is y
    assert rec.id is ids and rec.y is y
    assert rec["id"] is ids and rec["y"] is y
    assert ids.dtype == np.int64 and y.dtype == np.float32 and y.shape == (len(ids), FEAT)
    with pytest.raises(KeyError) as info:
        rec["nope"]
    assert "nope" in str(info.value) and isinstance(info.value, FastpipeError)
    assert type(next(it)) is type(rec)      # one class per field-name tuple
    assert "id=" in repr(rec)
    it.close()


@pytest.mark.timeout(60)
def test_arrays_are_writable_and_stay_valid(ws):
    n = 5000
    tg, q = _job(ws, n, batch=1, instances=2, capacity=4)
    kept = []
    seen = 0
    for ids, y in session.LocalSession(ws).iterate(tg, q):
        if len(kept) < 10:
            kept.append((ids, y))
        seen += 1
    assert seen == n
    for ids, y in kept:     # thousands of records flowed through the same queue since
        assert ids.flags.writeable and y.flags.writeable
        np.testing.assert_array_equal(y, _expected_y(ids).astype(np.float32))
        y[...] = -1
        assert (y == -1).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k", [1, 5, 64])
def test_num_records_concatenates_along_dim0(ws, k):
    n = 123
    tg, q = _job(ws, n, batch=1, instances=2, capacity=8)
    items = list(session.LocalSession(ws).iterate(tg, q, num_records=k))
    _check_items(items, n)
    sizes = [len(i) for i, _ in items]
    assert all(sz == k for sz in sizes[:-1]) and 1 <= sizes[-1] <= k
    assert items[0].y.shape == (sizes[0], FEAT)


def _manual_plan(ws, name, records):
    """A plan that creates queue `name` (one blob per record), enqueues the
    given arrays (one record each) and closes it."""
    init = core.Net(name + "_init")
    init.CreateBlobsQueue([], name, capacity=len(records) + 1, num_blobs=1, field_names=["v"])
    fill = core.Net(name + "_fill")
    for i, r in enumerate(records):
        blob = "%s_rec%d" % (name, i)
        ws.feed_blob(blob, r)
        fill.EnqueueBlobs([name, blob], [blob])
    fill.CloseBlobsQueue([name], [])
    plan = core.Plan(name + "_plan")
    plan.AddStep(core.execution_step(name + "_s0", init))
    plan.AddStep(core.execution_step(name + "_s1", fill))
    return plan


@pytest.mark.timeout(30)
def test_num_records_checks_inner_dims_and_names_the_queue(ws):
    plan = _manual_plan(ws, "mixq", [np.zeros((1, 2), np.float32), np.zeros((1, 3), np.float32)])
    it = session.LocalSession(ws).iterate(plan, "mixq", num_records=2)
    with pytest.raises(RunError) as info:
        next(it)
    assert "mixq" in str(info.value) and "record 1" in str(info.value)
    assert next(it, "end") == "end"


@pytest.mark.timeout(30)
def test_scalar_records_are_0d_arrays_and_cannot_be_batched(ws):
    plan = _manual_plan(ws, "scq", [np.array(3.5, np.float32), np.array(4.5, np.float32)])
    s = session.LocalSession(ws)
    items = list(s.iterate(plan, "scq"))
    assert [r.v.shape for r in items] == [(), ()]
    assert [float(r.v) for r in items] == [3.5, 4.5]
    plan = _manual_plan(ws, "scq", [np.array(3.5, np.float32), np.array(4.5, np.float32)])
    with pytest.raises(RunError) as info:
        next(s.iterate(plan, "scq", num_records=2))
    assert "scq" in str(info.value) and "0-d" in str(info.value)


@pytest.mark.timeout(30)
def test_bad_arguments_are_clear(ws):
    tg, q = _job(ws, 3)
    s = session.LocalSession(ws)
    with pytest.raises(ArgumentError, match="num_records"):
        s.iterate(tg, q, num_records=0)
    with pytest.raises(ArgumentError, match="timeout"):
        s.iterate(tg, q, timeout=-1)
    with pytest.raises(ArgumentError, match="queue"):
        s.iterate(tg, 42)


# ---- the queue given as a blob reference, a name, a wrapper -------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["queue", "blobref", "name", "wrapper"])
def test_queue_by_reference_name_or_wrapper(ws, how):
    n = 40
    tg, q = _job(ws, n, batch=3)
    given = {"queue": q, "blobref": q.queue(), "name": str(q.queue()),
             "wrapper": queue_util.QueueWrapper(q.queue(), q.schema())}[how]
    assert isinstance(q.queue(), core.BlobReference)
    it = session.LocalSession(ws).iterate(tg, given)
    items = list(it)
    _check_items(items, n)
    assert it.fields == ("id", "y")     # the native queue's field names
    assert items[0].y is items[0][1]


# ---- re-runs --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_iterating_again_runs_a_new_epoch(ws):
    n = 50
    tg, q = _job(ws, n, batch=4, capacity=2)
    s = session.LocalSession(ws)
    for _ in range(3):
        _check_items(list(s.iterate(tg, q)), n)


@pytest.mark.timeout(60)
def test_a_queue_left_by_the_previous_run_is_not_read(ws):
    """The second run must read its own queue, not the first run's (drained,
    closed) one that the blob still holds when the second run starts."""
    n = 30
    tg, q = _job(ws, n, batch=1, capacity=64)
    s = session.LocalSession(ws)
    first = s.iterate(tg, q)
    first.run.wait()            # the whole epoch sits in the queue
    _check_items(list(first), n)
    second_items = list(s.iterate(tg, q))
    _check_items(second_items, n)


# ---- failures -------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_operator_error_is_raised_from_next(ws):
    def bad(rec):
        y = ops.Mul([rec.x(), ops.Const(np.zeros(3, np.float32))], broadcast=1)
        return schema.Struct(("y", schema.Scalar((np.float32, (FEAT,)), y)))
    tg, q = _job(ws, 20, processor=bad)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, q)
    with pytest.raises(RunError) as info:
        for _ in it:
            pass
    assert "Mul" in str(info.value)
    assert _extra_tids(before) == set()
    assert next(it, "end") == "end"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("instances", [1, 4])
def test_python_op_exception_mid_stream_is_the_cause(ws, instances):
    def boom(inputs, outputs):
        if int(np.asarray(inputs[0].data).ravel()[0]) == 137:
            raise ValueError("record 137 is cursed")

    def proc(rec):
        ops.Python(boom)([rec.id()], [])
        return _affine(rec)
    tg, q = _job(ws, 1000, processor=proc, instances=instances, capacity=2)
    before = _native_tids()
    got = 0
    with pytest.raises(RunError) as info:
        for _ in session.LocalSession(ws).iterate(tg, q):
            got += 1
    assert isinstance(info.value.__cause__, ValueError)
    assert "cursed" in str(info.value.__cause__)
    assert got < 1000
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_a_failure_wakes_a_blocked_next(ws):
    """next() waits on an empty queue (its timeout proves it), then a Python
    op of the job fails: the next next() raises the failure at once (the
    run's cancel closes the queue), not after its timeout."""
    go = threading.Event()

    def slow_fail(inputs, outputs):
        go.wait(20)
        raise ValueError("late failure")

    def proc(rec):
        ops.Python(slow_fail)([rec.id()], [])
        return _affine(rec)
    tg, q = _job(ws, 10, processor=proc, instances=1)
    it = session.LocalSession(ws).iterate(tg, q, timeout=1.0)
    with pytest.raises(IterTimeoutError):
        next(it)
    go.set()
    with pytest.raises(RunError) as info:
        next(it)
    assert "late failure" in str(info.value.__cause__)


# ---- timeouts -------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_timeout_raises_and_leaves_the_job_running(ws):
    go = threading.Event()

    def gate(inputs, outputs):
        if not go.wait(20):
            raise RuntimeError("gate never opened")

    def proc(rec):
        ops.Python(gate)([rec.id()], [])
        return _affine(rec)
    n = 12
    tg, q = _job(ws, n, processor=proc, instances=2, capacity=4)
    it = session.LocalSession(ws).iterate(tg, q, timeout=0.05)
    with pytest.raises(IterTimeoutError) as info:
        next(it)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, FastpipeError)
    assert not it.run.done()
    go.set()
    _check_items(list(it), n)


# ---- early exits ----------------------------------------------------------------------

def _endless(ws, capacity=2):
    """A job with far more records than the loop reads: its writers block on
    the full queue while the loop body runs."""
    return _job(ws, 200000, batch=1, instances=2, capacity=capacity, name="endless")


@pytest.mark.timeout(30)
def test_break_and_close_cancels_and_joins(ws):
    tg, q = _endless(ws)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, q)
    for i, _ in enumerate(it):
        if i == 10:
            break
    t0 = time.monotonic()
    it.close()
    elapsed = time.monotonic() - t0
    assert _extra_tids(before) == set()
    assert it.run.done()
    it.close()      # idempotent
    assert next(it, "end") == "end"
    assert elapsed < 5.0, elapsed       # the bench measures the real latency (ms)
    with pytest.raises(CancelledError):
        it.run.wait()


@pytest.mark.timeout(30)
def test_with_block_exit_cancels_and_joins(ws):
    tg, q = _endless(ws)
    before = _native_tids()
    with session.LocalSession(ws).iterate(tg, q) as it:
        next(it)
    assert it.run.done()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_exception_in_the_loop_body_cancels_and_joins(ws):
    tg, q = _endless(ws)
    before = _native_tids()
    with pytest.raises(ZeroDivisionError):
        for i, _ in enumerate(session.LocalSession(ws).iterate(tg, q)):
            if i == 3:
                1 / 0
    gc.collect()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_exception_in_a_with_body_wins_over_close(ws):
    tg, q = _endless(ws)
    with pytest.raises(KeyError):
        with session.LocalSession(ws).iterate(tg, q) as it:
            next(it)
            raise KeyError("body")
    assert it.run.done()


@pytest.mark.timeout(30)
def test_dropped_iterator_cancels_and_joins(ws):
    tg, q = _endless(ws)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, q)
    next(it)
    handle = it.run
    del it
    gc.collect()
    assert handle.done()
    assert _extra_tids(before) == set()
    with pytest.raises(CancelledError):
        handle.wait()


@pytest.fixture
def sigint_raises():
    """A process started in the background (CI) inherits SIGINT as ignored,
    and Python then installs no handler: make Ctrl-C raise as in a terminal."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.timeout(30)
def test_ctrl_c_in_the_loop_body_cancels_and_joins(ws, sigint_raises):
    tg, q = _endless(ws)
    before = _native_tids()
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(session.LocalSession(ws).iterate(tg, q)):
            if i == 5:
                signal.raise_signal(signal.SIGINT)
    gc.collect()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_ctrl_c_while_next_waits_cancels_and_joins(ws, sigint_raises):
    """A Python op of the job raises SIGINT and then waits for the run's
    cancellation; next() is blocked on the empty queue and must raise
    KeyboardInterrupt, the job stopped and joined."""
    fired = []

    def interrupt(inputs, outputs):
        if not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)   # handled by the main thread
        while True:     # until the run interrupts this op (KeyboardInterrupt)
            threading.Event().wait(0.01)

    def proc(rec):
        ops.Python(interrupt)([rec.id()], [])
        return _affine(rec)
    tg, q = _job(ws, 10, processor=proc, instances=1)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, q)
    with pytest.raises(KeyboardInterrupt):
        next(it)
    assert it.run.done()
    assert _extra_tids(before) == set()


def _waiting_plan(name):
    """A plan that creates queue `name` and then blocks (natively, so a
    cancel wakes it) on another, empty queue: `name` never gets a record."""
    init = core.Net(name + "_init")
    init.CreateBlobsQueue([], name, capacity=2, num_blobs=1, field_names=["v"])
    init.CreateBlobsQueue([], name + "_other", capacity=1, num_blobs=1)
    wait = core.Net(name + "_wait")
    wait.DequeueBlobs([name + "_other"], [name + "_out"], timeout_secs=0.0)
    plan = core.Plan(name + "_plan")
    plan.AddStep(core.execution_step(name + "_s0", init))
    plan.AddStep(core.execution_step(name + "_s1", wait))
    return plan


@pytest.mark.timeout(30)
def test_close_from_another_thread_while_next_waits(ws):
    """A training thread waits in next() (nothing ever comes); the main
    thread closes the iterator: the waiting next() raises CancelledError (or,
    if close() came first, the loop just ends), nothing crashes and every
    thread is joined."""
    before = _native_tids()
    it = session.LocalSession(ws).iterate(_waiting_plan("waitq"), "waitq")
    entered = threading.Event()
    outcome = []

    def loop():
        entered.set()
        try:
            for _ in it:
                pass
            outcome.append("ended")
        except CancelledError:
            outcome.append("cancelled")
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome.append(e)
    t = threading.Thread(target=loop)
    t.start()
    assert entered.wait(10)
    it.close()
    t.join(10)
    assert not t.is_alive()
    assert outcome in (["cancelled"], ["ended"]), outcome
    assert it.run.done()
    assert _extra_tids(before) - {t.native_id} == set()


@pytest.mark.timeout(30)
def test_close_interrupts_a_python_op_and_joins(ws):
    """close() while a Python op of the job runs user code: the op is
    interrupted (as when the iterator is dropped) and the job joined."""
    started = threading.Event()

    def spin(inputs, outputs):
        started.set()
        while True:         # pure Python: interruptible at any bytecode
            pass

    def proc(rec):
        ops.Python(spin)([rec.id()], [])
        return _affine(rec)
    tg, q = _job(ws, 10, processor=proc, instances=1)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, q)
    assert started.wait(10)
    it.close()
    assert it.run.done()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(60)
def test_interpreter_exit_with_a_live_iterator_does_not_hang(tmp_path):
    script = tmp_path / "live_iter.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from fastpipe import core, dataset, pipeline, schema, session, task, workspace
        ws = workspace.C.Workspace()
        ds = dataset.Dataset(schema.Struct(("x", schema.Scalar(np.int64))), name="d")
        init = core.Net("i")
        with core.NameScope("d"):
            ds.init_empty(init)
        ws.run(init)
        ws.blobs[str(ds.get_blobs()[0])].feed(np.arange(100000))
        with task.TaskGroup() as tg:
            q = pipeline.pipe(ds.reader(), num_runtime_threads=2, capacity=1)
        it = session.LocalSession(ws).iterate(tg, q)
        print(int(next(it)[0][0]) >= 0, flush=True)
        # exit with the job blocked on the full queue and the iterator alive
    """))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=50, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# ---- what a finished iterator or handle keeps --------------------------------------

@pytest.mark.timeout(30)
def test_finished_iterator_and_handle_keep_no_workspace_alive():
    w = workspace.C.Workspace()
    tg, q = _job(w, 30, batch=2)
    s = session.LocalSession(w)
    it = s.iterate(tg, q)
    items = list(it)
    handle = it.run
    assert handle.wait() is True
    ws_ref = weakref.ref(w)
    del w, s
    gc.collect()
    assert ws_ref() is None
    _check_items(items, 30)     # the items own their buffers


# ---- RunHandle -------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_start_returns_at_once_and_wait_reports(ws):
    go = threading.Event()

    def gate(inputs, outputs):
        go.wait(20)
    net = core.Net("gated")
    net.Python(gate)([], [])
    s = session.LocalSession(ws)
    run = s.start(net)
    assert isinstance(run, session.RunHandle)
    assert run.wait(timeout=0.01) is False and not run.done()
    go.set()
    assert run.wait() is True and run.done()
    assert run.wait() is True


@pytest.mark.timeout(30)
def test_run_handle_cancel_and_context_manager(ws):
    tg, q = _endless(ws)
    before = _native_tids()
    s = session.LocalSession(ws)
    run = s.start(tg)
    run.cancel()
    with pytest.raises(CancelledError):
        run.wait()
    with s.start(tg) as run2:
        assert run2.wait(timeout=0.01) is False     # blocked: nobody reads the queue
    assert run2.done()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_run_handle_outputs_are_fetchable_after_wait(ws):
    with core.NameScope("out"):
        net = core.Net("make_out")
        blob = net.ConstantFill([], "value", shape=[2], value=7.0)
    with task.TaskGroup() as tg:
        t = task.Task(step=net, outputs=[blob])
    run = session.LocalSession(ws).start(tg)
    assert run.wait() is True
    np.testing.assert_array_equal(t.outputs()[0].fetch(), [7.0, 7.0])


@pytest.mark.timeout(30)
def test_run_error_from_wait_and_from_run(ws):
    def boom(inputs, outputs):
        raise ValueError("boom")
    net = core.Net("boomnet")
    net.Python(boom)([], [])
    s = session.LocalSession(ws)
    with pytest.raises(RunError) as info:
        s.start(net).wait()
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RunError):
        s.run(net)


# --- review fixes --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_batch_timeout_hands_over_partial_batch_and_loses_nothing(ws):
    """num_records=k with a timeout: records already taken when the deadline
    passes come out as a short item (never swapped back and lost)."""
    from fastpipe.errors import IterTimeoutError
    go = threading.Event()

    def gate(inputs, outputs):
        if int(np.asarray(inputs[0].data).reshape(-1)[0]) >= 2:
            go.wait(20)         # records 2.. wait until the loop lets them go

    def proc(rec):
        ops.Python(gate)([rec.id()], [])
        return _affine(rec)
    tg, q = _job(ws, 10, processor=proc, instances=1, capacity=16)
    got = []
    with session.LocalSession(ws).iterate(tg, q, num_records=4, timeout=0.3) as it:
        first = next(it)
        got += first[0].tolist()
        assert 1 <= len(got) < 4
        with pytest.raises(IterTimeoutError):
            while len(got) < 2:
                got += next(it)[0].tolist()
            next(it)
        go.set()
        for ids, _ in it:
            got += ids.tolist()
    assert sorted(got) == list(range(10))


@pytest.mark.timeout(60)
def test_timeout_holds_when_the_queue_is_drained_but_the_job_runs_on(ws):
    """A second output queue nobody reads keeps the job running after the
    iterated queue is drained: next() honours its timeout and says why."""
    from fastpipe.errors import IterTimeoutError
    with task.TaskGroup() as tg:
        qa = pipe(_source(ws, 50, name="dr_a").reader(batch_size=5), capacity=100)
        pipe(_source(ws, 5000, name="dr_b").reader(batch_size=1), capacity=2)
    before = _native_tids()
    it = session.LocalSession(ws).iterate(tg, qa, timeout=0.5)
    n = 0
    with pytest.raises(IterTimeoutError, match="nobody"):
        for ids, _ in it:
            n += len(ids)
    assert n == 50
    it.close()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(60)
def test_a_second_run_of_a_running_job_on_one_workspace_is_refused(ws):
    """Two runs of one job would share its queues (records lost): refused
    until the first has finished."""
    from fastpipe.errors import WorkspaceError
    tg, q = _job(ws, 10000)
    s = session.LocalSession(ws)
    it = s.iterate(tg, q)
    next(it)
    with pytest.raises(WorkspaceError, match="already running"):
        s.iterate(tg, q)
    with pytest.raises(WorkspaceError, match="already running"):
        s.run(tg)
    it.close()
    assert sum(len(ids) for ids, _ in s.iterate(tg, q)) == 10000


@pytest.mark.timeout(60)
def test_queue_blob_cannot_be_freed_under_an_unresolved_iterator(ws):
    """The iterator holds the queue's blob until it finds the queue: the
    workspace refuses to free it meanwhile (it used to be read after free)."""
    from fastpipe.errors import WorkspaceError
    tg, q = _job(ws, 10)
    it = session.LocalSession(ws).iterate(tg, q)
    it.run.wait()
    with pytest.raises(WorkspaceError):
        ws._native.remove_blob(it.queue_name)
    assert sum(len(ids) for ids, _ in it) == 10
    ws._native.reset()          # allowed once the iterator let go


def test_run_wait_rejects_a_bad_timeout(ws):
    tg, q = _job(ws, 10)
    with session.LocalSession(ws).start(tg) as run:
        with pytest.raises(ArgumentError):
            run.wait("soon")
        with pytest.raises(ArgumentError):
            run.wait([1])
        assert run.wait(30)
