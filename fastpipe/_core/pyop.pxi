# The Python operator and Print: the only kernels that take the GIL.
#
# User code runs in one trampoline (python_call) that catches BaseException
# into the run's first-error slot; run() re-raises it with the original as
# __cause__.


# ---- a Python thread state per native thread ------------------------------------------
#
# `with gil` on a thread Python does not know creates a thread state and
# deletes it again when the block ends: a fresh frame stack is mapped and
# unmapped each time (a page fault, and a TLB shootdown across cores), several
# microseconds per Python call -- and thread-local data (threading.local, numpy
# error state) never survives from one record to the next.  So the first GIL
# kernel that runs on a native thread gives the thread one thread state,
# released by a pthread key destructor when the thread exits.  Threads that
# Python made (the main thread, threading.Thread) have their own and are left
# alone.  Every native thread the runtime starts is joined before its run
# returns (with the GIL released), so each destructor runs before that and
# before interpreter exit (_stop_live_runs).

cdef extern from *:
    """
    #include <pthread.h>
    static pthread_key_t fp_py_tstate_key;
    static pthread_once_t fp_py_tstate_once = PTHREAD_ONCE_INIT;

    static void fp_py_tstate_release(void* p) {
        /* thread exit: take the GIL on the kept state, clear it and delete
           it (which releases the GIL).  Not PyGILState_Release: glibc has
           already cleared Python's own key for this thread by now. */
        PyEval_RestoreThread((PyThreadState*)p);
        PyThreadState_Clear((PyThreadState*)p);
        PyThreadState_DeleteCurrent();
    }

    static void fp_py_tstate_key_init(void) {
        pthread_key_create(&fp_py_tstate_key, fp_py_tstate_release);
    }

    /* Without the GIL.  Give this thread a lasting thread state unless it has
       one (a Python thread, or an earlier call). */
    static void fp_py_keep_thread_state(void) {
        PyThreadState* ts;
        if (PyGILState_GetThisThreadState() != NULL)
            return;
        pthread_once(&fp_py_tstate_once, fp_py_tstate_key_init);
        (void)PyGILState_Ensure();
        ts = PyEval_SaveThread();   /* GIL released; ts stays this thread's */
        pthread_setspecific(fp_py_tstate_key, ts);
    }
    """
    void fp_py_keep_thread_state() nogil


cdef class _BufRef:
    """Keeps a native buffer alive while a numpy array views it."""
    cdef Buffer* buf

    def __dealloc__(self):
        buf_decref(self.buf)


cdef object tensor_view(Tensor* t):
    """A numpy view of t's buffer (strings: a copy as an array of bytes).
    The view holds a buffer reference, so the runtime never recycles memory
    that Python still sees: the next native write reallocates instead."""
    cdef cnp.npy_intp dims[MAX_DIMS]
    cdef int i
    cdef _BufRef ref
    cdef cnp.ndarray arr
    cdef Tensor snap
    if t.dtype == DT_UNDEFINED:
        raise RunError("tensor has no value yet (call reshape() or feed() first)")
    if t.dtype == DT_STRING:
        return tensor_to_numpy(t)
    ref = _BufRef.__new__(_BufRef)
    tensor_snapshot(t, &snap)
    ref.buf = snap.buf          # the view owns the pinned reference
    for i in range(snap.ndim):
        dims[i] = snap.shape[i]
    arr = cnp.PyArray_SimpleNewFromData(snap.ndim, dims, npy_type(snap.dtype), snap.buf.data)
    if buf_borrowed(snap.buf):     # a user's array or a slice of one: never written
        cnp.PyArray_CLEARFLAGS(arr, cnp.NPY_ARRAY_WRITEABLE)
    Py_INCREF(ref)
    cnp.PyArray_SetBaseObject(arr, ref)
    return arr


cdef class TensorRef:
    """A tensor handed to a Python operator: ``.data`` is a numpy view,
    ``.feed(array)`` replaces the content, ``.reshape(shape)`` resizes.
    Valid only while its operator exists."""
    cdef Blob* blob
    cdef bint valid

    @property
    def data(self):
        self._check()
        return tensor_view(&self.blob.t)

    @property
    def shape(self):
        self._check()
        return tuple(self.blob.t.shape[i] for i in range(self.blob.t.ndim))

    @property
    def _dtype(self):
        self._check()
        return self.blob.t.dtype

    def reshape(self, shape):
        self._check()
        cdef int64_t dims[MAX_DIMS]
        shape = [int(x) for x in shape]
        if len(shape) > MAX_DIMS or any(x < 0 for x in shape):
            raise ArgumentError("bad shape %r for blob %r" % (shape, self.blob.name.decode()))
        for i, d in enumerate(shape):
            dims[i] = d
        dt = self.blob.t.dtype if self.blob.t.dtype != DT_UNDEFINED else DT_FLOAT
        rc = tensor_reshape(blob_out(self.blob), dt, len(shape), dims)
        if rc == -4:
            raise ArgumentError("blob %r: shape %r is too large" % (self.blob.name.decode(), shape))
        if rc != 0:
            raise OutOfMemoryError("reshape of blob %r" % self.blob.name.decode())

    def feed(self, value):
        self._check()
        feed_tensor(self.blob, value)
        return True

    def _check(self):
        if not self.valid:
            raise RunError("this tensor belongs to a Python operator that no longer exists")


cdef class _PyOpState:
    cdef object func
    cdef list inputs
    cdef list outputs
    cdef bint pass_ws
    cdef WorkspaceView view     # pass_ws: the op's workspace, valid during a call


cdef object make_tensor_ref(Blob* b):
    cdef TensorRef r = TensorRef.__new__(TensorRef)
    r.blob = b
    r.valid = True
    return r


cdef int pyop_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef size_t i
    cdef string msg
    fp_py_keep_thread_state()
    with gil:
        try:
            entry = <object>op.d.pyobj
            func, pass_ws = entry
            if isinstance(func, tuple):
                factory, args, kwargs = func
                func = factory(*(args or ()), **(kwargs or {}))
            st = _PyOpState()
            st.func = func
            st.pass_ws = pass_ws
            st.inputs = [make_tensor_ref(op.ins[i]) for i in range(op.ins.size())]
            st.outputs = [make_tensor_ref(op.outs[i]) for i in range(op.outs.size())]
            if pass_ws:
                st.view = WorkspaceView.__new__(WorkspaceView)
                st.view.ws = op.ws
                st.view.valid = False
            Py_INCREF(st)
            op.state = <void*>st
            return 0
        except BaseException as e:
            python_fail(op, ctx, e, "creating the Python op")
            return -1


cdef void pyop_fini(OpInst* op) noexcept nogil:
    if op.state == NULL:
        return
    with gil:
        st = <_PyOpState>op.state
        for r in st.inputs:
            (<TensorRef>r).valid = False
        for r in st.outputs:
            (<TensorRef>r).valid = False
        Py_DECREF(st)
    op.state = NULL


cdef str _describe_exc(object exc):
    """'Type: message', even for exceptions whose __str__ raises."""
    try:
        text = str(exc)
    except BaseException:
        try:
            text = repr(exc)
        except BaseException:
            text = "<unprintable %s object>" % type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text)


cdef void python_fail(OpInst* op, RunCtx* ctx, object exc, str what) noexcept:
    """Record exc as the run's first error (called with the GIL).  Never
    raises: a failure while describing exc still fails the run."""
    cdef string where = op_where(op, ctx)
    cdef string msg
    cdef RunState* rs = ctx.rs
    cdef bint first = False
    try:
        text = "%s: %s raised %s" % (where.decode("utf-8", "replace"), what,
                                     _describe_exc(exc))
        msg = text.encode("utf-8", "replace")
    except BaseException:
        msg = where
        msg.append(b": a Python exception was raised")
    # The GIL stays held until the run is cancelled, so a thread of the run
    # waiting for the GIL (woken by this one's code, say) sees the cancel
    # before it runs any more Python.  Lock order GIL -> rs.lock -> queue
    # locks, as in Run.done(): no holder of those native locks waits for the
    # GIL.
    first = rs_record(rs, E_PYTHON, msg, op.d, ctx)
    if first:
        Py_INCREF(exc)
        rs.err_exc = <PyObject*>exc
    rs_cancel(rs)


cdef int k_python(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef int rc = 0
    fp_py_keep_thread_state()
    with gil:
        st = <_PyOpState>op.state
        # While user code runs, Ctrl-C can reach it: the run's driver raises
        # KeyboardInterrupt asynchronously in every thread listed here.
        tid = PyThread_get_thread_ident()
        rs_py_enter(ctx.rs, tid)
        try:
            if rs_cancelled(ctx):
                rc = -1
            elif st.pass_ws:
                st.view.valid = True
                try:
                    st.func(st.inputs, st.outputs, st.view)
                finally:
                    st.view.valid = False
            else:
                st.func(st.inputs, st.outputs)
        except BaseException as e:
            python_fail(op, ctx, e, "the Python function")
            rc = -1
        finally:
            rs_py_exit(ctx.rs, tid)
    return rc


# ---- Print -----------------------------------------------------------------------
#
# Caffe2's PrintOp/TensorPrinter: `limit` elements at most (0: 1000), printed on
# the 1st, (n+1)th, (2n+1)th... run of the op instance (`every_n`), to stdout or
# (`to_file`) to <cwd>/<input blob>.log, truncated when the op instance is
# created, one line per printed run.  Runs that print nothing never take the
# GIL.

cdef enum:
    PRINT_TO_FILE = 0
    PRINT_LIMIT = 1
    PRINT_EVERY_N = 2

DEF PRINT_DEFAULT_LIMIT = 1000


cdef cppclass PrintState:
    # Touched only by the thread running the op: an op instance runs on one
    # thread at a time (net_run refuses a shared net that is already running).
    int64_t runs        # runs of this op instance so far
    int64_t limit       # elements per line (> 0)
    int64_t every_n     # >= 1 (the schema rejects less)
    PyObject* file      # to_file: the open log file (owned, GIL to touch), else NULL


cdef int print_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef PrintState* ps = new PrintState()
    ps.runs = 0
    ps.limit = op.d.args[PRINT_LIMIT].i if op.d.args[PRINT_LIMIT].present else 0
    if ps.limit <= 0:
        ps.limit = PRINT_DEFAULT_LIMIT
    ps.every_n = op.d.args[PRINT_EVERY_N].i if op.d.args[PRINT_EVERY_N].present else 1
    if ps.every_n < 1:
        ps.every_n = 1
    ps.file = NULL
    if op.d.args[PRINT_TO_FILE].present and op.d.args[PRINT_TO_FILE].i:
        with gil:
            try:
                path = op.d.inputs[0].decode("utf-8", "replace") + ".log"
                f = open(path, "w")     # truncated at creation, as Caffe2 does
                Py_INCREF(f)
                ps.file = <PyObject*>f
            except BaseException as e:
                python_fail(op, ctx, e, "opening the log file of to_file=True")
                del ps
                return -1
    op.state = <void*>ps
    return 0


cdef void print_fini(OpInst* op) noexcept nogil:
    cdef PrintState* ps = <PrintState*>op.state
    if ps == NULL:
        return
    if ps.file != NULL:
        with gil:
            f = <object>ps.file
            try:
                f.close()
            except BaseException:
                pass        # a failed close of a log file must not fail a teardown
            Py_DECREF(f)
        ps.file = NULL
    del ps
    op.state = NULL


cdef int print_write(OpInst* op, RunCtx* ctx, Tensor* t, PrintState* ps) noexcept:
    """Print one line (called with the GIL held).  0, or -1 after recording
    the error."""
    try:
        flat = tensor_view(t).reshape(-1)[:ps.limit]   # no copy (strings: a copy)
        line = "%s: %s" % (op.ins[0].name.decode("utf-8", "replace"),
                           ",".join([str(x) for x in flat]))
        flat = None
        if ps.file != NULL:
            f = <object>ps.file
            f.write(line + "\n")
            f.flush()
        else:
            print(line)
        return 0
    except BaseException as e:
        python_fail(op, ctx, e, "printing")
        return -1


cdef int k_print(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef PrintState* ps = <PrintState*>op.state
    cdef Tensor* t = in_t(op, ctx, 0)
    cdef int rc
    if t == NULL:
        return -1
    ps.runs += 1
    if (ps.runs - 1) % ps.every_n != 0:
        return 0
    fp_py_keep_thread_state()
    with gil:
        rc = print_write(op, ctx, t, ps)
    return rc


# ---- PythonStage: the per-record stage of pipeline.PythonProcessor ----------------------
#
# One GIL acquisition per record: with the GIL held the kernel builds numpy
# views of the inputs (no copy; each pins its buffer, so the runtime never
# writes under a view), calls fn(*views), checks the result and sizes the
# outputs; then, without the GIL, it copies the result's bytes into the
# outputs and sets `keep`.  The result arrays stay referenced by the op until
# its next call (or its end), so their memory is valid during that copy.  A
# result array that is exactly an input's view (a field passed through)
# shares the input's buffer instead of being copied.

cdef enum:
    PS_TOKEN = 0
    PS_FIELDS = 1
    PS_STAGE = 2
    PS_INSTANCE = 3
    PS_NUM_INSTANCES = 4


ctypedef struct StageCopy:
    void* dst
    const void* src
    int64_t nbytes


cdef class _StageState:
    """The Python half of one PythonStage op instance (so one per runtime
    instance).  Touched with the GIL by one thread at a time: the one that
    compiles the op (init), runs it, or frees it."""
    cdef object fn
    cdef str stage              # the stage's name, for messages
    cdef tuple fields           # output field names
    cdef int64_t instance
    cdef int64_t num_instances
    cdef int64_t count          # records this op instance was called on
    cdef list pending           # result arrays whose bytes are copied without the GIL


cdef cppclass StageNative:
    PyObject* py                # the _StageState (owned reference)
    vector[StageCopy] copies    # filled with the GIL, done without it


class _StageBadResult(Exception):
    """Internal: fn returned something the stage cannot write (message only)."""


cdef str _stage_pos(_StageState st, int64_t k):
    return "record #%d read by instance %d (counting from 0)" % (k, st.instance)


cdef int stage_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef StageNative* sn
    cdef int64_t inst, n
    cdef size_t i
    if ctx.instance >= 0:
        inst = ctx.instance
        n = ctx.num_instances
    elif op.d.args[PS_NUM_INSTANCES].i >= 1:     # a static copy (pipe num_threads=N)
        inst = op.d.args[PS_INSTANCE].i
        n = op.d.args[PS_NUM_INSTANCES].i
    else:
        inst = 0
        n = 1
    fp_py_keep_thread_state()
    with gil:
        st = _StageState()
        st.stage = op.d.args[PS_STAGE].s.decode("utf-8", "replace") or "PythonStage"
        st.fields = tuple([op.d.args[PS_FIELDS].strings[i].decode("utf-8", "replace")
                           for i in range(op.d.args[PS_FIELDS].strings.size())])
        st.instance = inst
        st.num_instances = n
        st.count = 0
        st.pending = None
        tid = PyThread_get_thread_ident()
        rs_py_enter(ctx.rs, tid)    # a slow factory can be interrupted (Ctrl-C)
        try:
            try:
                entry, _ = _pyop.lookup(op.d.args[PS_TOKEN].s.decode("utf-8", "replace"))
            except KeyError as e:
                python_fail(op, ctx, e, "looking up the function of Python stage %r"
                            % st.stage)
                return -1
            if isinstance(entry, tuple):
                try:
                    fn = entry[0](inst, n)
                except BaseException as e:
                    python_fail(op, ctx, e, "the factory of Python stage %r (called for "
                                "instance %d of %d)" % (st.stage, inst, n))
                    return -1
                if not callable(fn):
                    python_fail(op, ctx, TypeError(
                        "factory(%d, %d) returned %r, which is not callable"
                        % (inst, n, type(fn).__name__)),
                        "the factory of Python stage %r" % st.stage)
                    return -1
            else:
                fn = entry
            st.fn = fn
        finally:
            rs_py_exit(ctx.rs, tid)
        sn = new StageNative()
        Py_INCREF(st)
        sn.py = <PyObject*>st
        op.state = <void*>sn
    return 0


cdef void stage_fini(OpInst* op) noexcept nogil:
    cdef StageNative* sn = <StageNative*>op.state
    if sn == NULL:
        return
    with gil:
        Py_DECREF(<object>sn.py)
    del sn
    op.state = NULL


cdef inline void tensor_adopt(Tensor* t, int dtype, int ndim, const int64_t* shape,
                              int64_t size, Buffer* b) noexcept nogil:
    """Make t a tensor of this header over buffer b (a new reference, stolen)."""
    cdef Buffer* old
    cdef int i
    tensor_lock(t)
    old = t.buf
    t.buf = b
    t.dtype = dtype
    t.ndim = ndim
    for i in range(ndim):
        t.shape[i] = shape[i]
    t.size = size
    tensor_unlock(t)
    buf_decref(old)


cdef object stage_view(Tensor* t):
    """An argument of the stage's function: tensor_view, read-only when
    something besides the blob and this view holds the buffer (another
    blob that shares it, a view Python kept, a source that aliases user
    memory): writing into it would change their data."""
    arr = tensor_view(t)
    base = cnp.PyArray_BASE(<cnp.ndarray>arr)
    if base != NULL and type(<object>base) is _BufRef and \
            fp_load(&(<_BufRef><object>base).buf.refcnt) > 2:
        cnp.PyArray_CLEARFLAGS(<cnp.ndarray>arr, cnp.NPY_ARRAY_WRITEABLE)
    return arr


cdef int stage_dtype(cnp.ndarray arr) noexcept:
    """The DT_ code of a numeric array in native byte order, else -1 (by kind
    and size: int64 is one type whether numpy calls it long or longlong)."""
    cdef char kind = (<cnp.dtype>cnp.PyArray_DESCR(arr)).kind
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(arr)
    if size > 1 and not cnp.PyArray_ISNOTSWAPPED(arr):
        return -1
    if kind == b"f":
        return DT_FLOAT if size == 4 else DT_DOUBLE if size == 8 else \
            DT_FLOAT16 if size == 2 else -1
    if kind == b"i":
        return DT_INT64 if size == 8 else DT_INT32 if size == 4 else \
            DT_INT16 if size == 2 else DT_INT8 if size == 1 else -1
    if kind == b"u":
        return DT_UINT8 if size == 1 else DT_UINT16 if size == 2 else -1
    if kind == b"b":
        return DT_BOOL
    return -1


cdef object stage_output(OpInst* op, _StageState st, StageNative* sn, Py_ssize_t j,
                         object value):
    """Size output j for `value` and queue the copy of its bytes (or share an
    input's buffer).  Returns the array whose memory the copy reads (the
    caller keeps it alive); raises _StageBadResult for a value it cannot
    write, ArgumentError/OutOfMemoryError from feeding strings."""
    cdef cnp.ndarray arr
    cdef int64_t dims[MAX_DIMS]
    cdef int i, dt, rc, ndim
    cdef int64_t nbytes
    cdef Tensor* t
    cdef Buffer* b
    cdef PyObject* base
    cdef StageCopy c
    if cnp.PyArray_Check(value):
        arr = <cnp.ndarray>value
    elif isinstance(value, _np.generic):
        arr = _np.asarray(value)
    else:
        raise _StageBadResult("returned %s for output field %r: expected a numpy array"
                              % (type(value).__name__, st.fields[j]))
    ndim = cnp.PyArray_NDIM(arr)
    dt = stage_dtype(arr)
    if dt < 0:
        kind = arr.dtype.kind
        if kind == "O":
            raise _StageBadResult("returned an object array (dtype object) for output field "
                                  "%r: return arrays of numbers, bools or strings"
                                  % (st.fields[j],))
        if kind in "SU" and ndim <= MAX_DIMS:
            feed_tensor(op.outs[j], arr)        # a string tensor: converted with the GIL
            return None
        if kind not in "SU":
            raise _StageBadResult("returned dtype %s for output field %r, which is not "
                                  "supported (float16/32/64, int8/16/32/64, uint8/16, bool or "
                                  "strings)" % (arr.dtype, st.fields[j]))
    if ndim > MAX_DIMS:
        raise _StageBadResult("returned a %d-d array for output field %r: at most %d "
                              "dimensions are supported" % (ndim, st.fields[j], MAX_DIMS))
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        arr = _np.ascontiguousarray(arr)
    for i in range(ndim):
        dims[i] = cnp.PyArray_DIM(arr, i)
    nbytes = cnp.PyArray_NBYTES(arr)
    t = blob_out(op.outs[j])
    base = cnp.PyArray_BASE(arr)
    if base != NULL and type(<object>base) is _BufRef:
        b = (<_BufRef>base).buf
        if b != NULL and b.data == cnp.PyArray_DATA(arr) and not b.is_str \
                and nbytes <= b.capacity:
            buf_incref(b)           # an input passed through: share its buffer
            tensor_adopt(t, dt, ndim, dims, cnp.PyArray_SIZE(arr), b)
            return None
    rc = tensor_reshape(t, dt, ndim, dims)
    if rc == -1:
        raise OutOfMemoryError("output field %r of Python stage %r (%d bytes)"
                               % (st.fields[j], st.stage, nbytes))
    if rc != 0:
        raise _StageBadResult("returned shape %r for output field %r, which is too large"
                              % ((<object>arr).shape, st.fields[j]))
    if nbytes:
        c.dst = t.buf.data
        c.src = cnp.PyArray_DATA(arr)
        c.nbytes = nbytes
        sn.copies.push_back(c)
    return arr


cdef int stage_call(OpInst* op, RunCtx* ctx, StageNative* sn) noexcept:
    """The GIL half of one record (called with the GIL held): 1 = write the
    queued copies and keep the record, 0 = drop it (fn returned None), -1 =
    failed (recorded in the run's error slot)."""
    cdef _StageState st = <_StageState>sn.py
    cdef Py_ssize_t nin = op.ins.size()
    cdef Py_ssize_t nout = op.outs.size() - 1
    cdef Py_ssize_t i
    cdef int64_t k = st.count
    cdef string msg
    st.count += 1
    st.pending = None       # the last call's copies are done
    if rs_cancelled(ctx):
        return -1
    tid = PyThread_get_thread_ident()
    rs_py_enter(ctx.rs, tid)    # Ctrl-C reaches the user's code (see k_python)
    try:
        try:
            views = [stage_view(&op.ins[i].t) for i in range(nin)]
            result = st.fn(*views)
            del views
        except BaseException as e:
            python_fail(op, ctx, e, "Python stage %r on %s" % (st.stage, _stage_pos(st, k)))
            return -1
    finally:
        rs_py_exit(ctx.rs, tid)
    if result is None:
        return 0
    try:
        fields = st.fields
        if isinstance(result, (tuple, list)):
            if len(result) != nout:
                raise _StageBadResult(
                    "returned a %s of %d item(s) for %d output field(s) (%s)%s"
                    % (type(result).__name__, len(result), nout, ", ".join(fields),
                       "; name the outputs with PythonProcessor(outputs=...)"
                       if len(result) else ""))
            items = result
        elif isinstance(result, dict):
            missing = [f for f in fields if f not in result]
            if missing:
                raise _StageBadResult("returned a dict without output field(s) %s (its keys: "
                                      "%s)" % (", ".join(map(repr, missing)),
                                               ", ".join(map(repr, result)) or "none"))
            if len(result) != nout:
                extra = [key for key in result if key not in fields]
                raise _StageBadResult("returned a dict with unknown field(s) %s (the output "
                                      "fields: %s)" % (", ".join(map(repr, extra)),
                                                       ", ".join(fields)))
            items = [result[f] for f in fields]
        else:
            if nout != 1:
                raise _StageBadResult(
                    "returned one %s for %d output fields (%s): return a tuple, or a dict "
                    "by field name, or name one output with PythonProcessor(outputs=...)"
                    % (type(result).__name__, nout, ", ".join(fields)))
            items = (result,)
        keep = []
        for i in range(nout):
            arr = stage_output(op, st, sn, i, items[i])
            if arr is not None:
                keep.append(arr)
        st.pending = keep
        return 1
    except _StageBadResult as e:
        sn.copies.clear()
        text = "Python stage %r on %s %s" % (st.stage, _stage_pos(st, k), e.args[0])
        msg = text.encode("utf-8", "replace")
        op_fails(op, ctx, E_RUNTIME, msg)      # with the GIL, as python_fail
        return -1
    except BaseException as e:
        sn.copies.clear()
        python_fail(op, ctx, e, "writing the result of Python stage %r on %s"
                    % (st.stage, _stage_pos(st, k)))
        return -1


cdef int k_python_stage(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef StageNative* sn = <StageNative*>op.state
    cdef size_t i
    cdef int rc
    cdef Tensor* keep
    for i in range(op.ins.size()):
        if in_t(op, ctx, i) == NULL:
            return -1
    sn.copies.clear()
    fp_py_keep_thread_state()
    with gil:
        rc = stage_call(op, ctx, sn)
    if rc < 0:
        return -1
    # the result's bytes, without the GIL (other instances run Python meanwhile)
    for i in range(sn.copies.size()):
        memcpy(sn.copies[i].dst, sn.copies[i].src, <size_t>sn.copies[i].nbytes)
    sn.copies.clear()
    keep = blob_out(op.outs[op.outs.size() - 1])
    if tensor_scalar(keep, DT_BOOL) != 0:
        return op_oom(op, ctx)
    (<uint8_t*>keep.buf.data)[0] = 1 if rc == 1 else 0
    return 0
