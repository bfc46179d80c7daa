# The Python operator and Print: the only kernels that take the GIL.
#
# User code runs in one trampoline (python_call) that catches BaseException
# into the run's first-error slot; run() re-raises it with the original as
# __cause__.


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
    with nogil:
        first = rs_record(rs, E_PYTHON, msg, op.d, ctx)
    if first:
        Py_INCREF(exc)
        rs.err_exc = <PyObject*>exc
    with nogil:
        rs_cancel(rs)


cdef int k_python(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef int rc = 0
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
    with gil:
        rc = print_write(op, ctx, t, ps)
    return rc
