# The Python-facing side of the core: numpy conversion, workspaces, run
# handles (Run) and the run driver.  Lowering (PlanDef/NetDef -> Program) is
# in lower.pxi.  Arguments are checked here with the GIL held; native
# code runs in `with nogil:`; its status becomes an exception in one place
# (_raise_status).

import weakref as _weakref
import atexit as _atexit
import numpy as _np
from fastpipe.errors import (PlanError, RunError, QueueClosedError, BlobError,
                             CancelledError, WorkspaceError, ArgumentError,
                             OutOfMemoryError)


# ---- numpy conversion ---------------------------------------------------------

cdef int npy_type(int dt) noexcept:
    if dt == DT_FLOAT: return cnp.NPY_FLOAT32
    if dt == DT_DOUBLE: return cnp.NPY_FLOAT64
    if dt == DT_INT32: return cnp.NPY_INT32
    if dt == DT_INT64: return cnp.NPY_INT64
    if dt == DT_BOOL: return cnp.NPY_BOOL
    if dt == DT_UINT8 or dt == DT_BYTE: return cnp.NPY_UINT8
    if dt == DT_INT8: return cnp.NPY_INT8
    if dt == DT_INT16: return cnp.NPY_INT16
    if dt == DT_UINT16: return cnp.NPY_UINT16
    if dt == DT_FLOAT16: return cnp.NPY_FLOAT16
    return -1


_NP_TO_DT = {
    _np.dtype(_np.float32): DT_FLOAT, _np.dtype(_np.float64): DT_DOUBLE,
    _np.dtype(_np.int32): DT_INT32, _np.dtype(_np.int64): DT_INT64,
    _np.dtype(_np.bool_): DT_BOOL, _np.dtype(_np.uint8): DT_UINT8,
    _np.dtype(_np.int8): DT_INT8, _np.dtype(_np.int16): DT_INT16,
    _np.dtype(_np.uint16): DT_UINT16, _np.dtype(_np.float16): DT_FLOAT16,
}


cdef object tensor_to_numpy(Tensor* src):
    """A copy of src as a numpy array (strings: an object array of bytes),
    from a consistent, pinned snapshot (a run may be rewriting the blob)."""
    cdef Tensor snap
    tensor_snapshot(src, &snap)
    try:
        return _snapshot_to_numpy(&snap)
    finally:
        buf_decref(snap.buf)


cdef object _snapshot_to_numpy(Tensor* t):
    cdef int i
    cdef string* ss
    cdef bytes bo
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.dtype == DT_UNDEFINED:
        raise RunError("tensor has no value yet")
    if t.dtype == DT_STRING:
        out = _np.empty(shape, dtype=object)
        flat = out.reshape(-1)
        ss = <string*>t.buf.data
        for i in range(t.size):
            bo = ss[i]
            flat[i] = bo
        return out
    cdef cnp.ndarray arr = _np.empty(shape, dtype=_np.dtype(cnp.PyArray_TypeObjectFromType(npy_type(t.dtype))))
    if t.size:
        memcpy(cnp.PyArray_DATA(arr), t.buf.data, t.size * dtype_itemsize(t.dtype))
    return arr


cdef void feed_tensor(Blob* b, value) except *:
    """Copy a numpy-convertible value into the blob's tensor."""
    cdef int64_t dims[MAX_DIMS]
    cdef int i, dt
    cdef cnp.ndarray arr
    cdef string* ds
    cdef Tensor* t
    name = b.name.decode("utf-8", "replace")
    if isinstance(value, (str, bytes)):
        value = _np.array(value, dtype=object)
    arr = _np.asarray(value)
    if arr.ndim > MAX_DIMS:
        raise ArgumentError("blob %r: %d dims, at most %d are supported" % (name, arr.ndim, MAX_DIMS))
    kind = arr.dtype.kind
    if kind in "SUO":
        dt = DT_STRING
    else:
        dt = _NP_TO_DT.get(arr.dtype, -1)
        if dt < 0:
            raise ArgumentError("blob %r: numpy dtype %s is not supported (use float32/64, "
                                "int8/16/32/64, uint8/16, bool, float16 or strings)"
                                % (name, arr.dtype))
    for i in range(arr.ndim):
        dims[i] = arr.shape[i]
    t = blob_out(b)
    rc = tensor_reshape(t, dt, arr.ndim, dims)
    if rc == -4:
        raise ArgumentError("blob %r: shape %r is too large" % (name, tuple(_np.shape(value))))
    if rc != 0:
        raise OutOfMemoryError("feeding blob %r" % name)
    if dt == DT_STRING:
        ds = <string*>t.buf.data
        for i, x in enumerate(arr.reshape(-1)):
            if isinstance(x, str):
                x = x.encode("utf-8")
            elif not isinstance(x, bytes):
                raise ArgumentError("blob %r: string tensors hold str or bytes, got %s"
                                    % (name, type(x).__name__))
            ds[i] = <string>x
    else:
        arr = _np.ascontiguousarray(arr)
        if t.size:
            memcpy(t.buf.data, cnp.PyArray_DATA(arr), t.size * dtype_itemsize(dt))


# ---- runs ------------------------------------------------------------------------------

cdef cppclass QSnap:
    # one queue of a run as a poller saw it (Run.observe)
    string name
    int64_t capacity, depth, closed, records, read_ns, read_n, write_ns, write_n
    int64_t readers, writers        # bound ops reading / writing it (alive)


cdef cppclass PlanRun:
    RunState* rs
    WS* ws
    vector[StepDesc*] steps
    NetInst* net            # run_net: the CreateNet'd net (one reference)
    int64_t num_iter
    fp_thread th
    # stall watchdog (stall_ns > 0): a native thread started and joined by
    # the driver; calls stall_cb (borrowed: the Run keeps it) with the GIL
    int64_t stall_ns
    PyObject* stall_cb
    bint wd_stop            # under rs.lock
    fp_thread wd_th
    vector[QSnap] final_qs  # the run's queues at teardown (they are released then)
    bint have_final


cdef void queue_snaps(RunState* rs, vector[QSnap]* out) noexcept nogil:
    """Every plain queue the run touched, read without stopping anyone
    (atomics; rs.lock and obs.lock are never taken per record)."""
    cdef size_t i, j
    cdef Queue* q
    cdef QSnap sn
    cdef int64_t tail, head
    cdef Probe* p
    cdef vector[void*] seen         # a queue is registered once per op using it
    cdef bint dup
    fp_lock(&rs.lock)
    for i in range(rs.queues.size()):
        if rs.queues[i].kind != OBJ_QUEUE:
            continue
        q = <Queue*>rs.queues[i].impl
        dup = False
        for j in range(seen.size()):
            if seen[j] == <void*>q:
                dup = True
                break
        if dup:
            continue
        seen.push_back(<void*>q)
        sn.name = q.name
        sn.capacity = q.capacity
        tail = fp_load(&q.tail)
        head = fp_load(&q.head)
        sn.closed = 1 if (tail & CLOSED_BIT) else 0
        sn.depth = (tail & POS_MASK) - head
        if sn.depth < 0:
            sn.depth = 0
        if sn.depth > q.capacity:
            sn.depth = q.capacity
        sn.records = fp_load_relaxed(&q.st_records)
        sn.read_ns = fp_load_relaxed(&q.st_read_ns)
        sn.read_n = fp_load_relaxed(&q.st_read_n)
        sn.write_ns = fp_load_relaxed(&q.st_write_ns)
        sn.write_n = fp_load_relaxed(&q.st_write_n)
        sn.readers = 0
        sn.writers = 0
        if rs.obs != NULL:
            fp_lock(&rs.obs.lock)
            for j in range(rs.obs.probes.size()):
                p = rs.obs.probes[j]
                if p.queue == <void*>q:
                    if p.kind == 0:
                        sn.readers += 1
                    else:
                        sn.writers += 1
            fp_unlock(&rs.obs.lock)
        out.push_back(sn)
    fp_unlock(&rs.lock)


cdef int64_t queue_moves(RunState* rs, int64_t* nq) noexcept nogil:
    """Sum of every run queue's read and write positions (caller holds rs.lock)."""
    cdef size_t i
    cdef Queue* q
    cdef int64_t s = 0
    nq[0] = 0
    for i in range(rs.queues.size()):
        if rs.queues[i].kind != OBJ_QUEUE:
            continue
        q = <Queue*>rs.queues[i].impl
        s += (fp_load(&q.tail) & POS_MASK) + fp_load(&q.head)
        nq[0] += 1
    return s


cdef void* watchdog_main(void* arg) noexcept nogil:
    """Stall watchdog: when no queue of the run moves for stall_ns, note it
    in obs.stalled_since and call stall_cb once (again after the next move
    and stall).  Ends when the driver sets wd_stop."""
    cdef PlanRun* pr = <PlanRun*>arg
    cdef RunState* rs = pr.rs
    cdef int64_t poll = pr.stall_ns // 4
    cdef int64_t last = -1, last_move, now, moves, nq
    cdef bint fired = False
    if poll > 100000000:
        poll = 100000000
    if poll < 1000000:
        poll = 1000000
    last_move = fp_now_ns()
    fp_lock(&rs.lock)
    while not pr.wd_stop:
        fp_wait_until(&rs.done_cv, &rs.lock, fp_now_ns() + poll)
        if pr.wd_stop or fp_load(&rs.cancelled):
            break
        moves = queue_moves(rs, &nq)
        now = fp_now_ns()
        if moves != last or nq == 0:
            last = moves
            last_move = now
            if fired:
                fired = False
                fp_store(&rs.obs.stalled_since, 0)
            continue
        if fired or now - last_move < pr.stall_ns:
            continue
        fired = True
        fp_store(&rs.obs.stalled_since, last_move)
        fp_unlock(&rs.lock)
        if pr.stall_cb != NULL:
            with gil:
                try:
                    (<object>pr.stall_cb)()
                except BaseException:
                    _log_stall_callback_failure()
        fp_lock(&rs.lock)
    fp_unlock(&rs.lock)
    return NULL


cdef void _log_stall_callback_failure() noexcept:
    try:
        import logging
        logging.getLogger("fastpipe").exception("fastpipe: the stall watchdog's handler failed")
    except BaseException:
        pass


cdef void rs_finish(RunState* rs) noexcept nogil:
    fp_lock(&rs.lock)
    rs.done = True
    fp_broadcast(&rs.done_cv)
    fp_unlock(&rs.lock)


cdef void plan_body(PlanRun* pr) noexcept nogil:
    cdef RunCtx ctx
    cdef CStep* cs
    cdef size_t i
    cdef int64_t k
    ctx.rs = pr.rs
    ctx.step = NULL
    ctx.instance = -1
    if pr.net != NULL:
        for k in range(pr.num_iter):
            if rs_cancelled(&ctx) or net_run(pr.net, &ctx) != 0:
                break
        return
    for i in range(pr.steps.size()):
        cs = step_compile(pr.steps[i], pr.ws, &ctx, False)
        if cs == NULL:
            break
        if exec_step(cs, &ctx) != 0:
            cstep_free(cs)
            break
        cstep_free(cs)


cdef void* plan_main(void* arg) noexcept nogil:
    cdef PlanRun* pr = <PlanRun*>arg
    cdef bint wd = False
    if pr.stall_ns > 0 and pr.rs.obs != NULL:
        pr.wd_stop = False
        wd = fp_thread_start(&pr.wd_th, watchdog_main, pr) == 0
    plan_body(pr)
    if pr.rs.obs != NULL:
        fp_store(&pr.rs.obs.end_ns, fp_now_ns())
    if wd:
        fp_lock(&pr.rs.lock)
        pr.wd_stop = True
        fp_broadcast(&pr.rs.done_cv)
        fp_unlock(&pr.rs.lock)
        fp_thread_join(&pr.wd_th)
    rs_finish(pr.rs)
    return NULL


cdef void ws_drop_run_nets(WS* ws, int64_t run_id) noexcept nogil:
    """Remove the nets a finished run instantiated in ws (their descriptions
    belong to the run's Program)."""
    cdef vector[NetInst*] dead
    fp_lock(&ws.lock)
    it = ws.nets.begin()
    while it != ws.nets.end():
        if deref(it).second.run_id == run_id:
            dead.push_back(deref(it).second)
            it = ws.nets.erase(it)
        else:
            inc(it)
    fp_unlock(&ws.lock)
    for n in dead:
        net_decref(n)


cdef object _raise_status(RunState* rs, object info=None):
    """The one place where a native status becomes a Python exception.
    ``info`` (the Program's _observe_info) names the stage of the failing op."""
    code = rs.err_code
    if code == E_OK:
        return
    msg = rs.err_msg.decode("utf-8", "replace")
    if code == E_INTERRUPT:
        raise KeyboardInterrupt()
    if code == E_ABORTED and rs.err_exc != NULL:
        # the exception that ended Run.wait() (a signal handler's, a
        # StallError of the watchdog), as itself
        raise <object>rs.err_exc
    if code == E_PLAN:
        raise PlanError(msg)
    if code == E_MEMORY:
        raise OutOfMemoryError(msg)
    op_type = rs.err_op_type.decode("utf-8", "replace") if rs.err_has_op else None
    op_index = rs.err_op_index if rs.err_has_op else None
    net = rs.err_net.decode("utf-8", "replace") if rs.err_has_op else None
    step = rs.err_step.decode("utf-8", "replace") if rs.err_has_step else None
    instance = rs.err_instance if rs.err_instance >= 0 else None
    stage = None
    if info is not None and 0 < rs.err_stage <= len(info["stages"]):
        st = info["stages"][rs.err_stage - 1]
        parent = info["stages"][st["parent"]]["name"] if st["parent"] >= 0 else None
        stage = st["name"]
        if parent and stage.startswith(parent + "/"):
            stage = stage[len(parent) + 1:]      # as stats() and to_dot name it
    if code == E_CANCELLED:
        raise CancelledError(msg, op_type, op_index, net, step, instance, stage)
    if code == E_QUEUE_CLOSED:
        raise QueueClosedError(msg, op_type, op_index, net, step, instance, stage)
    if code == E_PYTHON and rs.err_exc != NULL:
        cause = <object>rs.err_exc
        raise RunError(msg, op_type, op_index, net, step, instance, stage) from cause
    raise RunError(msg, op_type, op_index, net, step, instance, stage)


cdef void _interrupt_python_ops(RunState* rs):
    """Raise KeyboardInterrupt in every thread running a Python op of rs
    (with the GIL held; they pick it up at their next bytecode)."""
    cdef vector[long] tids
    cdef size_t i
    fp_lock(&rs.lock)
    tids = rs.py_threads
    fp_unlock(&rs.lock)
    for i in range(tids.size()):
        PyThreadState_SetAsyncExc(tids[i], <PyObject*>KeyboardInterrupt)


# Runs whose driver thread may still be running (weak): cancelled and joined
# at interpreter exit, so a forgotten Run never keeps the process alive or
# runs native threads into a finalising interpreter.
_live_runs = _weakref.WeakSet()


def _stop_live_runs():
    for r in list(_live_runs):
        (<Run>r)._stop(True)


_atexit.register(_stop_live_runs)


@cython.no_gc_clear     # __dealloc__ needs owner and prog (they outlive the threads)
@cython.final
cdef class Run:
    """A plan (or a created net) running on a native driver thread.

    Made by ``Workspace.start_program(prog)`` / ``start_net(name, n)``,
    which return at once.  ``wait(timeout=None)`` waits without the GIL in
    50 ms slices, running signal handlers between them: it returns True
    when the run has finished (after joining every thread and freeing the
    nets the run created), False when ``timeout`` (seconds) elapsed first,
    and raises the run's error when it failed -- the same error on every
    later call.  Any exception raised while waiting (Ctrl-C, or whatever a
    signal handler raises) cancels the run, joins its threads and then
    propagates.  ``cancel()`` stops the run like a failure (non-blocking);
    ``wait()`` then raises CancelledError unless another error came first.
    Dropping an unfinished Run cancels and joins it.

    Threading: every method may be called from any Python thread; several
    threads may wait at once.  While it runs, a Run keeps its Workspace and
    Program alive; once finished and waited it releases them."""
    cdef PlanRun* pr
    cdef fp_mutex lock          # serialises teardown (join + release) with cancel()
    cdef bint started           # the driver thread exists (pr.th is joinable)
    cdef bint joined            # teardown done (written under lock)
    cdef int64_t* active        # the owning Workspace's run counter
    cdef Workspace owner        # None once torn down
    cdef Program prog           # None once torn down (or for run_net)
    cdef object stall_cb        # the watchdog's handler (PlanRun.stall_cb borrows it)
    cdef readonly object observe_info   # the Program's stages and profile keys (_observe_info)
    cdef object __weakref__

    def __cinit__(self):
        fp_mutex_init(&self.lock)
        self.pr = NULL
        self.started = False
        self.joined = False
        self.active = NULL

    def __init__(self):
        raise ArgumentError("a Run is made by Workspace.start_program() or start_net()")

    cdef _start(self, Workspace owner, Program prog, NetInst* net, int64_t num_iter,
                bint profile=False, double stall_timeout=0.0, object stall_callback=None):
        """Take ownership of net's reference (if any) and start the driver."""
        cdef PlanRun* pr = new PlanRun()
        cdef int rc
        pr.rs = rs_new()
        pr.stall_ns = 0
        pr.stall_cb = NULL
        pr.have_final = False
        info = _observe_info(prog) if prog is not None else _EMPTY_OBSERVE_INFO
        self.observe_info = info
        pr.rs.obs = obs_new(len(info["stages"]), len(info["profile_keys"]), profile)
        if stall_timeout > 0:
            pr.stall_ns = <int64_t>(min(stall_timeout, 1e9) * 1e9)
            if pr.stall_ns < 1:
                pr.stall_ns = 1
            self.stall_cb = stall_callback
            if stall_callback is not None:
                pr.stall_cb = <PyObject*>stall_callback
        pr.ws = owner.ws
        pr.net = net
        pr.num_iter = num_iter
        if prog is not None:
            pr.steps = prog.steps
        self.pr = pr
        self.owner = owner
        self.prog = prog
        self.active = &owner.active
        fp_fetch_add(self.active, 1)
        with nogil:
            rc = fp_thread_start(&pr.th, plan_main, pr)
        if rc != 0:
            with nogil:
                rs_fail(pr.rs, E_RUNTIME, b"could not start the run's driver thread")
                rs_finish(pr.rs)
            self._teardown()
            raise RunError("could not start the run's driver thread (errno %d)" % rc)
        self.started = True
        _live_runs.add(self)

    cdef _teardown(self):
        """Join the driver (it has finished or been cancelled) and release
        what the run holds, exactly once.  The RunState stays until
        __dealloc__ so that wait() can raise its error again."""
        cdef PlanRun* pr = self.pr
        with nogil:
            fp_lock(&self.lock)
            if not self.joined:
                if self.started:
                    fp_thread_join(&pr.th)
                if pr.net != NULL:
                    net_decref(pr.net)
                    pr.net = NULL
                else:
                    ws_drop_run_nets(pr.ws, pr.rs.run_id)
                # the ops have flushed their counts: keep the queues' last view
                queue_snaps(pr.rs, &pr.final_qs)
                pr.have_final = True
                rs_release_queues(pr.rs)
                fp_fetch_add(self.active, -1)
                self.joined = True
            fp_unlock(&self.lock)
        # The nets that used the Program's descriptions are gone: release it
        # and the workspace (idempotent; another waiter may do it too).
        self.owner = None
        self.prog = None
        _live_runs.discard(self)

    cdef _stop(self, bint interrupt_python):
        """Cancel (unless finished) and tear down; never raises the run's error."""
        if self.pr == NULL or self.joined:
            return
        with nogil:
            fp_lock(&self.lock)
            if not self.joined:
                rs_cancel_unfinished(self.pr.rs, E_CANCELLED, b"the run was cancelled")
            fp_unlock(&self.lock)
        if interrupt_python:
            _interrupt_python_ops(self.pr.rs)
        self._teardown()

    cdef _abort(self, object exc):
        """exc ended wait(): make it the run's first error (unless it has
        one), stop the run everywhere and join it."""
        cdef RunState* rs = self.pr.rs
        cdef bint ki = isinstance(exc, KeyboardInterrupt)
        cdef bint first
        cdef int code = E_INTERRUPT if ki else E_ABORTED
        cdef string msg = b"interrupted"
        if not ki:
            msg = _describe_exc(exc).encode("utf-8", "replace")
        with nogil:
            fp_lock(&self.lock)
            if not self.joined:
                first = rs_record(rs, code, msg, NULL, NULL)
                if first and not ki:
                    with gil:
                        Py_INCREF(exc)
                        rs.err_exc = <PyObject*>exc
                rs_cancel(rs)
            fp_unlock(&self.lock)
        # User code inside Python ops sees no queue closing: interrupt it
        # (Ctrl-C semantics), so that the join below cannot hang on it.
        _interrupt_python_ops(rs)
        self._teardown()

    def wait(self, timeout=None):
        """Wait for the run to finish: True when it has (raising its error
        if it failed), False if ``timeout`` seconds elapsed first."""
        cdef RunState* rs
        cdef int64_t deadline = -1
        cdef int64_t slice_end
        cdef bint done = False
        if self.pr == NULL:
            raise RunError("this Run was never started")
        rs = self.pr.rs
        if timeout is not None:
            try:
                t = float(timeout)
            except (TypeError, ValueError):
                raise ArgumentError("Run.wait: timeout=%r is not a number of seconds"
                                    % (timeout,))
            if t != t:
                raise ArgumentError("Run.wait: timeout=%r is not a number" % (timeout,))
            deadline = fp_now_ns() + <int64_t>(max(0.0, min(t, 1e9)) * 1e9)
        while True:
            with nogil:
                fp_lock(&rs.lock)
                if not rs.done:
                    slice_end = fp_now_ns() + 50000000
                    if deadline >= 0 and deadline < slice_end:
                        slice_end = deadline
                    fp_wait_until(&rs.done_cv, &rs.lock, slice_end)
                done = rs.done
                fp_unlock(&rs.lock)
            if done:
                break
            try:
                PyErr_CheckSignals()
            except BaseException as e:
                self._abort(e)
                raise
            if deadline >= 0 and fp_now_ns() >= deadline:
                return False
        self._teardown()
        _raise_status(rs, self.observe_info)
        _emit_run_warnings(self)    # dataset.pxi: warnings noted by kernels, once
        return True

    def cancel(self):
        """Stop the run like a failure (CancelledError) unless it has
        finished or failed already.  Does not wait: call wait() to join."""
        if self.pr == NULL:
            return
        with nogil:
            fp_lock(&self.lock)
            if not self.joined:
                rs_cancel_unfinished(self.pr.rs, E_CANCELLED, b"the run was cancelled")
            fp_unlock(&self.lock)

    def _fail_with(self, exc):
        """Fail the run with ``exc`` (raised as itself by wait() and by an
        iterator's next()) unless it has an error already; cancel it
        everywhere.  Does not wait.  The stall watchdog's on_stall="raise"."""
        cdef RunState* rs
        cdef bint first = False
        cdef string msg
        if self.pr == NULL:
            return False
        rs = self.pr.rs
        msg = _describe_exc(exc).encode("utf-8", "replace")
        with nogil:
            first = rs_record(rs, E_ABORTED, msg, NULL, NULL)
        if first:
            Py_INCREF(exc)
            rs.err_exc = <PyObject*>exc
        with nogil:
            rs_cancel(rs)
        _interrupt_python_ops(rs)
        return first

    def observe(self):
        """A raw snapshot of the run's native counters (fastpipe.observe
        turns it into stats): read without stopping or locking the workers."""
        cdef RunState* rs
        cdef RunObs* o
        cdef vector[QSnap] qs
        cdef vector[Probe] probes
        cdef vector[string] pq_names
        cdef vector[int64_t] pq_depth
        cdef vector[int64_t] pq_cap
        cdef Queue* q
        cdef size_t i
        cdef int64_t k, now, end
        cdef StageCtr* sc
        if self.pr == NULL:
            raise RunError("this Run was never started")
        rs = self.pr.rs
        o = rs.obs
        with nogil:
            fp_fetch_add(&o.epoch, 1)       # ops flush at their next record
            if self.pr.have_final:
                qs = self.pr.final_qs
            else:
                queue_snaps(rs, &qs)
            fp_lock(&o.lock)
            for i in range(o.probes.size()):
                probes.push_back(o.probes[i][0])
                q = <Queue*>o.probes[i].queue
                if q != NULL:
                    pq_names.push_back(q.name)
                    pq_cap.push_back(q.capacity)
                    k = (fp_load(&q.tail) & POS_MASK) - fp_load(&q.head)
                    pq_depth.push_back(k if k > 0 else 0)
                else:
                    pq_names.push_back(string())
                    pq_cap.push_back(0)
                    pq_depth.push_back(0)
            fp_unlock(&o.lock)
            now = fp_now_ns()
            end = fp_load(&o.end_ns)
        stages = []
        for k in range(o.nstages):
            sc = &o.stages[k]
            stages.append((fp_load_relaxed(&sc.batches_in), fp_load_relaxed(&sc.rows_in),
                           fp_load_relaxed(&sc.wait_in_ns), fp_load_relaxed(&sc.batches_out),
                           fp_load_relaxed(&sc.rows_out), fp_load_relaxed(&sc.wait_out_ns),
                           fp_load_relaxed(&sc.live_in_ns), fp_load_relaxed(&sc.live_out_ns)))
        queues = [dict(name=qs[i].name.decode("utf-8", "replace"), capacity=qs[i].capacity,
                       depth=qs[i].depth, closed=bool(qs[i].closed), records=qs[i].records,
                       read_ns=qs[i].read_ns, read_n=qs[i].read_n, write_ns=qs[i].write_ns,
                       write_n=qs[i].write_n, readers=qs[i].readers, writers=qs[i].writers)
                  for i in range(qs.size())]
        blocked = []
        for i in range(probes.size()):
            blocked.append(dict(
                since_ns=probes[i].since, waiting=probes[i].since != 0,
                bound_ns=probes[i].bound_ns,
                kind="read" if probes[i].kind == 0 else "write",
                stage=probes[i].stage, instance=probes[i].instance,
                op=probes[i].op.decode("utf-8", "replace"),
                step=probes[i].step.decode("utf-8", "replace"),
                queue=pq_names[i].decode("utf-8", "replace"),
                depth=pq_depth[i], capacity=pq_cap[i]))
        prof = [(fp_load_relaxed(&o.prof_ns[k]), fp_load_relaxed(&o.prof_n[k]))
                for k in range(o.nprof)] if o.profile else None
        # and again after reading: an op flushes at its next record, so the
        # next poll sees every record moved after this one (the first bump
        # may have been answered before the read above)
        fp_fetch_add(&o.epoch, 1)
        stalled = fp_load(&o.stalled_since)
        return dict(now_ns=now, start_ns=o.start_ns, end_ns=end, stages=stages,
                    queues=queues, probes=blocked, profile=prof,
                    stalled_since_ns=stalled if stalled else None)

    def done(self):
        """True once the run has finished (successfully or not); non-blocking."""
        cdef bint d
        if self.pr == NULL:
            return False
        fp_lock(&self.pr.rs.lock)
        d = self.pr.rs.done
        fp_unlock(&self.pr.rs.lock)
        return d

    def __dealloc__(self):
        if self.pr == NULL:
            fp_mutex_destroy(&self.lock)
            return
        if not self.joined:
            # Never free state under a live thread: cancel, then join.
            self._stop(True)
        rs_free(self.pr.rs)
        del self.pr
        self.pr = NULL
        fp_mutex_destroy(&self.lock)


# ---- blob access shared by Workspace and WorkspaceView -------------------------------

cdef bint _ws_has_blob(WS* ws, name) except -1:
    cdef string s = _bname(name)
    return ws_find(ws, s) != NULL


cdef list _ws_blob_names(WS* w, bint local_only):
    seen = []
    seenset = set()
    while w != NULL:
        fp_lock(&w.lock)
        try:
            names = [kv.first.decode("utf-8", "replace") for kv in w.blobs]
        finally:
            fp_unlock(&w.lock)
        for n in sorted(names):
            if n not in seenset:
                seenset.add(n)
                seen.append(n)
        if local_only:
            break
        w = w.parent
    return seen


cdef _ws_feed(WS* ws, name, value):
    cdef string s = _bname(name)
    cdef Blob* b
    with nogil:
        b = ws_create(ws, s)
    feed_tensor(b, value)
    return True


cdef Blob* _ws_get(WS* ws, name) except NULL:
    cdef string s = _bname(name)
    cdef Blob* b = ws_find(ws, s)
    if b == NULL:
        raise BlobError("blob %r does not exist in this workspace" % str(name))
    return b


cdef object _ws_fetch(WS* ws, name):
    cdef Blob* b = _ws_get(ws, name)
    if b.obj != NULL:
        return _ObjHandle.wrap(b)
    if b.t.dtype == DT_UNDEFINED:
        raise BlobError("blob %r exists but has no value yet" % str(name))
    return tensor_to_numpy(&b.t)


cdef str _ws_blob_kind(WS* ws, name):
    cdef Blob* b = _ws_get(ws, name)
    if b.obj != NULL:
        return OBJ_NAMES[b.obj.kind].decode()
    return "tensor" if b.t.dtype != DT_UNDEFINED else "empty"


@cython.final
cdef class WorkspaceView:
    """The workspace a ``Python`` op with ``pass_workspace=True`` runs in,
    handed to its function as the third argument.  Borrowed: it does not own
    the workspace (for a runtime instance, the instance's child workspace)
    and is valid only during that call; afterwards every method raises
    WorkspaceError.  Offers the blob access of ``workspace.C.Workspace``:
    ``blobs[name].fetch()/.feed(v)``, ``fetch_blob``/``feed_blob``,
    ``FetchBlob``/``FeedBlob``, ``has_blob``, ``create_blob``, ``blob_names``.
    Use it only from the thread running the op."""
    cdef WS* ws
    cdef bint valid

    def __init__(self):
        raise ArgumentError("a WorkspaceView is made by the Python operator")

    cdef WS* _w(self) except NULL:
        if not self.valid or self.ws == NULL:
            raise WorkspaceError("this workspace view belongs to a Python op call that "
                                 "has returned (it is valid only during the call)")
        return self.ws

    @property
    def _native(self):      # what fastpipe.workspace's blob mapping calls
        return self

    @property
    def blobs(self):
        from fastpipe.workspace import _Blobs
        self._w()
        return _Blobs(self)

    def has_blob(self, name):
        return _ws_has_blob(self._w(), _bname_str(name))

    def blob_names(self, local_only=False):
        return _ws_blob_names(self._w(), local_only)

    def create_blob(self, name):
        cdef WS* w = self._w()
        cdef string s = _bname(_bname_str(name))
        with nogil:
            ws_create(w, s)
        return True

    def feed(self, name, value):
        return _ws_feed(self._w(), _bname_str(name), value)

    def fetch(self, name):
        return _ws_fetch(self._w(), _bname_str(name))

    def blob_kind(self, name):
        return _ws_blob_kind(self._w(), _bname_str(name))

    def fetch_blob(self, name):
        return self.fetch(name)

    def feed_blob(self, name, value, device_option=None):
        return self.feed(name, value)

    FetchBlob = fetch_blob
    FeedBlob = feed_blob
    HasBlob = has_blob
    CreateBlob = create_blob
    Blobs = blob_names

    def __repr__(self):
        return "<fastpipe WorkspaceView%s>" % ("" if self.valid else " (expired)")


cdef class Workspace:
    """A native workspace: name -> blob, with an optional parent whose blobs
    are visible (Caffe2's create-through-parent rule applies).  Safe to use
    from several Python threads; several runs may use it at once."""
    cdef WS* ws
    cdef readonly Workspace parent
    cdef dict programs          # CreateNet'd net name -> Program owning its description
    cdef int64_t active         # atomic: runs in progress
    cdef object children        # live child workspaces (weak): they hold Blob* into this one
    cdef object __weakref__

    def __cinit__(self, Workspace parent=None):
        self.ws = ws_new(parent.ws if parent is not None else NULL)
        self.parent = parent
        self.programs = {}
        self.active = 0
        self.children = _weakref.WeakSet()
        if parent is not None:
            parent.children.add(self)

    cdef _check_can_free(self, str what):
        """Freeing blobs under a live child or a run would leave their
        compiled ops pointing at freed memory: refuse instead."""
        if fp_load(&self.active):
            raise WorkspaceError("cannot %s while a run uses the workspace" % what)
        if len(self.children):
            raise WorkspaceError("cannot %s while %d child workspace(s) of it exist "
                                 "(they may hold its blobs)" % (what, len(self.children)))

    def __dealloc__(self):
        if self.ws != NULL:
            with nogil:
                ws_free(self.ws)

    # -- blobs
    def has_blob(self, name):
        return _ws_has_blob(self.ws, name)

    def blob_names(self, local_only=False):
        return _ws_blob_names(self.ws, local_only)

    def create_blob(self, name):
        cdef string s = _bname(name)
        with nogil:
            ws_create(self.ws, s)
        return True

    def feed(self, name, value):
        return _ws_feed(self.ws, name, value)

    cdef Blob* _get(self, name) except NULL:
        return _ws_get(self.ws, name)

    def fetch(self, name):
        return _ws_fetch(self.ws, name)

    def blob_kind(self, name):
        """'tensor', 'empty', or the native object kind ('queue', 'counter'...)."""
        return _ws_blob_kind(self.ws, name)

    def remove_blob(self, name):
        cdef string s = _bname(name)
        cdef Blob* b = NULL
        cdef size_t i, j
        self._check_can_free("remove blob %r" % str(name))
        fp_lock(&self.ws.lock)
        it = self.ws.blobs.find(s)
        if it != self.ws.blobs.end():
            b = deref(it).second
        for kv in self.ws.nets:
            for i in range(kv.second.ops.size()):
                for j in range(kv.second.ops[i].ins.size()):
                    if kv.second.ops[i].ins[j] == b and b != NULL:
                        fp_unlock(&self.ws.lock)
                        raise WorkspaceError("cannot remove blob %r: net %r uses it"
                                             % (str(name), kv.second.d.name.decode()))
                for j in range(kv.second.ops[i].outs.size()):
                    if kv.second.ops[i].outs[j] == b and b != NULL:
                        fp_unlock(&self.ws.lock)
                        raise WorkspaceError("cannot remove blob %r: net %r uses it"
                                             % (str(name), kv.second.d.name.decode()))
        b = NULL
        it = self.ws.blobs.find(s)
        if it != self.ws.blobs.end():
            b = deref(it).second
            self.ws.blobs.erase(it)
        fp_unlock(&self.ws.lock)
        if b == NULL:
            return False
        blob_free(b)
        return True

    def reset(self):
        self._check_can_free("reset the workspace")
        with nogil:
            ws_clear(self.ws)
        self.programs.clear()

    # -- nets
    def create_net(self, net_def, overwrite=False):
        cdef Program p = Program.from_nets([net_def])
        cdef RunState* rs
        cdef RunCtx ctx
        cdef NetInst* n
        cdef NetInst* old = NULL
        cdef string s = net_key(net_def.name.encode("utf-8"), 0)
        if not overwrite and net_def.name in self.programs:
            raise WorkspaceError("I respectfully refuse to overwrite an existing net of the "
                                 "same name %r, unless you explicitly specify overwrite=True."
                                 % net_def.name)
        rs = rs_new()
        ctx.rs = rs
        ctx.step = NULL
        ctx.instance = -1
        try:
            with nogil:
                n = net_compile(p.nets[0], self.ws, &ctx)
            if n == NULL:
                _raise_status(rs)
                # every failing path records its error; never return a NULL net
                raise RunError("net %r could not be compiled" % net_def.name)
        finally:
            rs_free(rs)     # the one free, whatever happened above
        n.run_id = 0
        n.shared = True     # RunNet may be called from several Python threads
        fp_lock(&self.ws.lock)
        it = self.ws.nets.find(s)
        if it != self.ws.nets.end():
            old = deref(it).second
        self.ws.nets[s] = n
        fp_unlock(&self.ws.lock)
        net_decref(old)
        self.programs[net_def.name] = p
        return True

    def has_net(self, name):
        return name in self.programs

    def net_names(self):
        return sorted(self.programs)

    cdef NetInst* _created_net(self, name, bint* blocking) except NULL:
        """A new reference to the CreateNet'd net `name`."""
        cdef string s = net_key(str(name).encode("utf-8"), 0)
        cdef NetInst* n = NULL
        cdef size_t i
        fp_lock(&self.ws.lock)
        it = self.ws.nets.find(s)
        if it != self.ws.nets.end() and deref(it).second.run_id == 0:
            n = deref(it).second
            fp_fetch_add(&n.refcnt, 1)
        fp_unlock(&self.ws.lock)
        if n == NULL:
            raise WorkspaceError("net %r does not exist in this workspace (call CreateNet "
                                 "first)" % str(name))
        blocking[0] = False
        for i in range(n.ops.size()):
            if n.ops[i].d.blocking:
                blocking[0] = True
        return n

    def start_net(self, name, num_iter=1):
        """Start `num_iter` runs of the created net `name` on a native
        thread; returns its Run at once."""
        cdef bint blocking
        cdef int64_t k = _num_iter(num_iter)
        cdef NetInst* n = self._created_net(name, &blocking)
        cdef Run r = Run.__new__(Run)
        r._start(self, None, n, k)
        return r

    def run_net(self, name, num_iter=1):
        cdef bint blocking
        cdef int64_t k = _num_iter(num_iter)
        cdef NetInst* n = self._created_net(name, &blocking)
        cdef Run r
        cdef PlanRun pr
        if blocking:
            r = Run.__new__(Run)
            r._start(self, None, n, k)      # takes n's reference
            return r.wait()
        # Nothing can block: run on this thread with the GIL released.
        pr.rs = rs_new()
        pr.ws = self.ws
        pr.net = n
        pr.num_iter = k
        fp_fetch_add(&self.active, 1)
        try:
            with nogil:
                plan_body(&pr)
            _raise_status(pr.rs)
        finally:
            fp_fetch_add(&self.active, -1)
            net_decref(n)
            rs_free(pr.rs)
        return True

    def start_program(self, Program prog not None, bint profile=False,
                      stall_timeout=None, stall_callback=None):
        """Start every top-level step of prog, in order, on a native driver
        thread; returns its Run at once (see Run).  ``profile`` times every
        op (Run.observe()["profile"]); ``stall_timeout`` (seconds) starts the
        stall watchdog, which calls ``stall_callback()`` (any thread, GIL
        held) when no queue of the run moved for that long."""
        cdef Run r = Run.__new__(Run)
        cdef double st = 0.0
        if stall_timeout is not None:
            try:
                st = float(stall_timeout)
            except (TypeError, ValueError):
                raise ArgumentError("start_program: stall_timeout=%r is not a number of "
                                    "seconds" % (stall_timeout,))
            if not st > 0:
                raise ArgumentError("start_program: stall_timeout=%r must be > 0 seconds"
                                    % (stall_timeout,))
        if stall_callback is not None and not callable(stall_callback):
            raise ArgumentError("start_program: stall_callback=%r is not callable"
                                % (stall_callback,))
        r._start(self, prog, NULL, 0, profile, st, stall_callback)
        return r

    def run_program(self, Program prog not None, bint inline=False):
        """Run every top-level step of prog, in order, to completion:
        ``start_program(prog).wait()``, or on this thread when `inline`
        (only for plans that cannot block and end on their own)."""
        cdef PlanRun pr
        if not inline:
            return self.start_program(prog).wait()
        pr.rs = rs_new()
        pr.ws = self.ws
        pr.net = NULL
        pr.steps = prog.steps
        fp_fetch_add(&self.active, 1)
        try:
            with nogil:
                plan_body(&pr)
            _raise_status(pr.rs)
        finally:
            fp_fetch_add(&self.active, -1)
            with nogil:
                ws_drop_run_nets(pr.ws, pr.rs.run_id)
            rs_free(pr.rs)
        return True


# ---- observation info of a Program (stages, profile keys), once per Program ----------

_EMPTY_OBSERVE_INFO = {"stages": [], "profile_keys": []}
_observe_infos = _weakref.WeakKeyDictionary()


cdef _observe_info(Program p):
    """The stages of p -- a step named N with an N:init or N:exit substep,
    the shape Task.get_step builds -- each {name, parent, instances, reads,
    writes}, and the (net, op type) pairs of its ops; marks every OpDesc
    with its stage and profile index (the descriptions are shared by every
    run of p, so this runs once, before p's first run starts)."""
    info = _observe_infos.get(p)
    if info is not None:
        return info
    cdef size_t i, j
    cdef OpDesc* od
    stages = []
    keys = []
    kidx = {}
    for i in range(p.nets.size()):
        net = p.nets[i].name.decode("utf-8", "replace")
        for j in range(p.nets[i].ops.size()):
            od = p.nets[i].ops[j]
            key = (net, od.type.decode("utf-8", "replace"))
            k = kidx.get(key)
            if k is None:
                k = kidx[key] = len(keys)
                keys.append(key)
            od.prof_idx = k + 1
            od.stage = 0
    for i in range(p.steps.size()):
        _observe_walk(p.steps[i], -1, stages)
    info = {"stages": stages, "profile_keys": keys}
    _observe_infos[p] = info
    return info


cdef _observe_walk(StepDesc* d, Py_ssize_t stage, list stages):
    cdef size_t i, j, k
    cdef OpDesc* od
    name = d.name.decode("utf-8", "replace")
    subs = set(d.substeps[i].name.decode("utf-8", "replace") for i in range(d.substeps.size()))
    if ((name + ":init" in subs or name + ":exit" in subs)
            and not (stage >= 0 and name == stages[stage]["name"] + ":instance")):
        # (a task's per-instance setup step, "<task>:instance", is the task's)
        stages.append({"name": name, "parent": stage, "instances": 1,
                       "reads": [], "writes": [], "op_types": []})
        stage = len(stages) - 1
    if stage >= 0 and d.num_instances > 1:
        st = stages[stage]
        st["instances"] = max(st["instances"], <long long>d.num_instances)
    for i in range(d.nets.size()):
        if stage < 0:
            continue
        st = stages[stage]
        for j in range(d.nets[i].ops.size()):
            od = d.nets[i].ops[j]
            if od.stage != 0:
                continue
            od.stage = stage + 1
            ot = od.type.decode("utf-8", "replace")
            if ot not in st["op_types"]:
                st["op_types"].append(ot)
            if od.init == qop_init and od.inputs.size():
                if od.type.find(b"Dequeue") != <size_t>-1:
                    for k in range(od.inputs.size()):
                        qn = od.inputs[k].decode("utf-8", "replace")
                        if qn not in st["reads"]:
                            st["reads"].append(qn)
                else:
                    qn = od.inputs[0].decode("utf-8", "replace")
                    if qn not in st["writes"]:
                        st["writes"].append(qn)
    for i in range(d.substeps.size()):
        _observe_walk(d.substeps[i], stage, stages)


cdef int64_t _num_iter(value) except -1:
    if isinstance(value, bool) or not isinstance(value, (int, _np.integer)):
        raise ArgumentError("num_iter must be an int, got %r" % (value,))
    if value < 0:
        raise ArgumentError("num_iter=%d must be >= 0" % value)
    return value


cdef inline str _bname_str(name):
    if isinstance(name, bytes):
        return name.decode("utf-8")
    return str(name)


cdef inline string _bname(name) except *:
    if isinstance(name, bytes):
        return name
    return str(name).encode("utf-8")


cdef class _ObjHandle:
    """What FetchBlob returns for a blob that holds a native object."""
    cdef ObjHeader* h
    cdef readonly str kind

    @staticmethod
    cdef _ObjHandle wrap(Blob* b):
        cdef _ObjHandle o = _ObjHandle.__new__(_ObjHandle)
        o.h = blob_get_obj(b)
        o.kind = OBJ_NAMES[o.h.kind].decode() if o.h != NULL else "none"
        return o

    def __dealloc__(self):
        obj_decref(self.h)

    def __repr__(self):
        return "<fastpipe native %s>" % self.kind
