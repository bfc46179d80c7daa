# Data ops: BooleanMask, Gather, Concat, Split, Reshape, Slice, ExpandDims,
# Squeeze, Transpose, Clip, UniformFill, GaussianFill -- Caffe2's semantics
# (caffe2/operators/{boolean_mask,gather,concat_split,reshape,slice,
# expand_squeeze_dims,transpose,clip,filler}_op*).
#
# Every kernel is `noexcept nogil` and reports a bad input through op_fail*
# (the one status -> exception table is in runtime.pxi / api.pxi).
#
# Aliasing: an op's output may be one of its inputs (Gather(x, i) -> x).
# Copying kernels therefore pin their inputs with tensor_snapshot() before
# shaping an output: a pinned buffer is not private, so tensor_reshape gives
# the output a fresh one and the input's bytes stay readable until the
# kernel drops its pin.  Elementwise Clip instead reuses its input's buffer
# in place when that buffer is private (out_like_hold), and reallocates when
# a numpy view (or a queue slot) still pins it.
#
# View ops (Reshape, ExpandDims, Squeeze) copy no bytes: the output takes a
# reference to the input's buffer with a new header (out_view).  Writers
# always go through tensor_reshape, which never writes a shared buffer, so
# the two tensors cannot see each other's later writes.

from libc.stdint cimport uint32_t
from libc.math cimport sqrt, log, cos, ceil, floor, nextafterf, nextafter, isnan

cdef extern from "<sys/random.h>" nogil:
    ssize_t getrandom(void* buf, size_t n, unsigned int flags)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    enum: CLOCK_MONOTONIC


ctypedef fused any_num_t:
    int8_t
    uint8_t
    int16_t
    uint16_t
    int32_t
    int64_t
    float
    double


ctypedef fused elem_t:     # element moves by width (Transpose)
    uint8_t
    uint16_t
    uint32_t
    uint64_t


# ---- helpers -------------------------------------------------------------------

cdef inline void copy_elems(void* dst, int64_t di, void* src, int64_t si, int64_t n,
                            int dt, int64_t isz) noexcept nogil:
    """Copy n elements src[si:si+n] -> dst[di:di+n] (memcpy; strings by value)."""
    cdef int64_t k
    cdef string* d
    cdef string* s
    if n <= 0:
        return
    if dt == DT_STRING:
        d = (<string*>dst) + di
        s = (<string*>src) + si
        for k in range(n):
            d[k] = s[k]
    else:
        memcpy(<char*>dst + di * isz, <char*>src + si * isz, <size_t>(n * isz))


cdef inline int64_t prod(const int64_t* shape, int lo, int hi) noexcept nogil:
    cdef int64_t p = 1
    cdef int i
    for i in range(lo, hi):
        p *= shape[i]
    return p


cdef inline bint is_index_dt(int dt) noexcept nogil:
    return dt == DT_INT32 or dt == DT_INT64


cdef inline int64_t load_index(void* p, int dt, int64_t i) noexcept nogil:
    if dt == DT_INT32:
        return (<int32_t*>p)[i]
    return (<int64_t*>p)[i]


cdef inline bint movable_dt(int dt) noexcept nogil:
    """Dtypes the copying ops move (every numeric dtype, bool, strings)."""
    return dt != DT_UNDEFINED


cdef int fail_in(OpInst* op, RunCtx* ctx, size_t i, const string& what) noexcept nogil:
    """An error about input i: "input i ('name') <what>"."""
    cdef string msg = cstr(b"input ")
    msg.append(to_str(i))
    msg.append(b" ('")
    msg.append(op.ins[i].name)
    msg.append(b"') ")
    msg.append(what)
    return op_fails(op, ctx, E_RUNTIME, msg)


cdef inline string shape_str(int ndim, const int64_t* shape) noexcept nogil:
    cdef string s = cstr(b"[")
    cdef int i
    for i in range(ndim):
        if i:
            s.append(b", ")
        s.append(to_str(shape[i]))
    s.append(b"]")
    return s


cdef int out_view(OpInst* op, RunCtx* ctx, Tensor* out, Tensor* src, int ndim,
                  const int64_t* shape) noexcept nogil:
    """Make out a view of src's buffer with this shape (same element count):
    out takes its own reference; the header changes under out's lock so a
    concurrent fetch sees the old or the new tensor.  src is a snapshot the
    caller keeps pinned.  out may be the blob src was taken from."""
    cdef Buffer* old
    cdef int i
    if ndim > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
    buf_incref(src.buf)
    tensor_lock(out)
    old = out.buf
    out.buf = src.buf
    out.dtype = src.dtype
    out.ndim = ndim
    for i in range(ndim):
        out.shape[i] = shape[i]
    out.size = src.size
    tensor_unlock(out)
    buf_decref(old)
    return 0


cdef int canonical_axis(OpInst* op, RunCtx* ctx, int64_t axis, int ndim, const char* argname,
                        int64_t* out) noexcept nogil:
    """Caffe2's canonical_axis_index: axis in [-ndim, ndim)."""
    if axis < -ndim or axis >= ndim:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"argument '") + cstr(argname) + cstr(b"'=") +
                        to_str(axis) + cstr(b" is out of range for ") + to_str(ndim) +
                        cstr(b" dimension(s)"))
    out[0] = axis + ndim if axis < 0 else axis
    return 0


cdef int sorted_unique(OpInst* op, RunCtx* ctx, vector[int64_t]* src, int64_t* dst,
                       int* n) noexcept nogil:
    """dims arguments: sorted, duplicates dropped (as Caffe2 does); each >= 0."""
    cdef int m = 0, i, j
    cdef int64_t v
    if src.size() > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"argument 'dims' has more than 8 entries")
    for i in range(<int>src.size()):
        v = src[0][i]
        j = m
        while j > 0 and dst[j - 1] > v:
            dst[j] = dst[j - 1]
            j -= 1
        dst[j] = v
        m += 1
    j = 0
    for i in range(m):
        if j == 0 or dst[j - 1] != dst[i]:
            dst[j] = dst[i]
            j += 1
    n[0] = j
    return 0


# ---- BooleanMask -----------------------------------------------------------------

cdef int k_boolean_mask(OpInst* op, RunCtx* ctx) noexcept nogil:
    """masked = data[mask] along dim 0; optional output 1: int64 indices."""
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor* pm
    cdef Tensor X, M
    cdef int64_t shape[MAX_DIMS]
    cdef int64_t i, k, inner, isz, cnt = 0
    cdef uint8_t* m
    cdef int rc = 0
    cdef Tensor* out
    if px == NULL:
        return -1
    pm = in_t(op, ctx, 1)
    if pm == NULL:
        return -1
    if pm.dtype != DT_BOOL:
        return fail_dtype(op, ctx, 1, pm, b"bool")
    if pm.ndim != 1:
        return fail_in(op, ctx, 1, cstr(b"is ") + tensor_describe(pm) + cstr(b", expected a 1-D mask"))
    if px.ndim < 1:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) +
                       cstr(b", expected at least 1 dimension"))
    if px.shape[0] != pm.shape[0]:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"mask ") + tensor_describe(pm) +
                        cstr(b" does not match dim 0 of data ") + tensor_describe(px))
    tensor_snapshot(px, &X)
    tensor_snapshot(pm, &M)
    m = <uint8_t*>tdata(&M)
    for i in range(M.size):
        if m[i]:
            cnt += 1
    for k in range(X.ndim):
        shape[k] = X.shape[k]
    shape[0] = cnt
    inner = prod(X.shape, 1, X.ndim)
    isz = dtype_itemsize(X.dtype)
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, X.dtype, X.ndim, shape) != 0:
        rc = -1
    else:
        k = 0
        i = 0
        while i < M.size:
            # copy runs of consecutive true rows with one memcpy each
            if not m[i]:
                i += 1
                continue
            cnt = i
            while i < M.size and m[i]:
                i += 1
            copy_elems(tdata(out), k * inner, tdata(&X), cnt * inner, (i - cnt) * inner, X.dtype, isz)
            k += i - cnt
        if op.outs.size() > 1:
            out = blob_out(op.outs[1])
            shape[0] = k
            if out_shape(op, ctx, out, DT_INT64, 1, shape) != 0:
                rc = -1
            else:
                k = 0
                for i in range(M.size):
                    if m[i]:
                        (<int64_t*>tdata(out))[k] = i
                        k += 1
    buf_decref(X.buf)
    buf_decref(M.buf)
    return rc


# ---- Gather ----------------------------------------------------------------------

cdef enum:
    GA_AXIS = 0
    GA_WRAP_INDICES = 1
kernel_args("Gather", axis=(GA_AXIS, "int"), wrap_indices=(GA_WRAP_INDICES, "bool"))


cdef int k_gather(OpInst* op, RunCtx* ctx) noexcept nogil:
    """out = take(data, indices, axis): shape data[:axis] + indices + data[axis+1:].
    Caffe2: a negative index counts from the end when wrap_indices is set --
    by default only for axis 0; an empty indexed dim gives data's own
    (empty) shape."""
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor* pi
    cdef Tensor X, I
    cdef int64_t axis, pre, inner, dim, isz, p, j, idx, n
    cdef int64_t shape[MAX_DIMS + MAX_DIMS]
    cdef int ndim = 0, k
    cdef int rc = 0
    cdef Tensor* out
    cdef void* ip
    cdef bint wrap
    if px == NULL:
        return -1
    pi = in_t(op, ctx, 1)
    if pi == NULL:
        return -1
    if not is_index_dt(pi.dtype):
        return fail_dtype(op, ctx, 1, pi, b"int32 or int64 (indices)")
    if px.ndim < 1:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) +
                       cstr(b", expected at least 1 dimension"))
    if canonical_axis(op, ctx, op.d.args[GA_AXIS].i, px.ndim, b"axis", &axis) != 0:
        return -1
    if px.ndim - 1 + pi.ndim > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"the output would have more than 8 dimensions")
    wrap = (op.d.args[GA_WRAP_INDICES].i != 0 if op.d.args[GA_WRAP_INDICES].present
            else axis == 0)
    tensor_snapshot(px, &X)
    tensor_snapshot(pi, &I)
    if X.shape[axis] == 0:
        for k in range(X.ndim):
            shape[k] = X.shape[k]
        ndim = X.ndim
        out = blob_out(op.outs[0])
        rc = out_shape(op, ctx, out, X.dtype, ndim, shape)
        buf_decref(X.buf)
        buf_decref(I.buf)
        return rc
    for k in range(<int>axis):
        shape[ndim] = X.shape[k]
        ndim += 1
    for k in range(I.ndim):
        shape[ndim] = I.shape[k]
        ndim += 1
    for k in range(<int>axis + 1, X.ndim):
        shape[ndim] = X.shape[k]
        ndim += 1
    pre = prod(X.shape, 0, <int>axis)
    dim = X.shape[axis]
    inner = prod(X.shape, <int>axis + 1, X.ndim)
    isz = dtype_itemsize(X.dtype)
    n = I.size
    ip = tdata(&I)
    # every index is checked before the output is touched
    for j in range(n):
        idx = load_index(ip, I.dtype, j)
        if wrap and idx < 0:
            idx += dim
        if idx < 0 or idx >= dim:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"index ") + to_str(load_index(ip, I.dtype, j)) +
                          cstr(b" (element ") +
                          to_str(j) + cstr(b" of input 1 '") + op.ins[1].name +
                          cstr(b"') is out of range for dim ") + to_str(axis) + cstr(b" of data ") +
                          tensor_describe(&X))
            break
    if rc == 0:
        out = blob_out(op.outs[0])
        if out_shape(op, ctx, out, X.dtype, ndim, shape) != 0:
            rc = -1
        else:
            for p in range(pre):
                for j in range(n):
                    idx = load_index(ip, I.dtype, j)
                    if idx < 0:
                        idx += dim      # wrap (checked above)
                    copy_elems(tdata(out), (p * n + j) * inner, tdata(&X), (p * dim + idx) * inner,
                               inner, X.dtype, isz)
    buf_decref(X.buf)
    buf_decref(I.buf)
    return rc


# ---- Concat / Split --------------------------------------------------------------

cdef enum:
    CC_AXIS = 0
    CC_ORDER = 1
    CC_ADD_AXIS = 2
kernel_args("Concat", axis=(CC_AXIS, "int"), order=(CC_ORDER, "str"),
            add_axis=(CC_ADD_AXIS, "bool"))

cdef enum:
    SP_AXIS = 0
    SP_SPLIT = 1
    SP_ORDER = 2
    SP_ADD_AXIS = 3
kernel_args("Split", axis=(SP_AXIS, "int"), split=(SP_SPLIT, "ints"), order=(SP_ORDER, "str"),
            add_axis=(SP_ADD_AXIS, "bool"))


cdef inline int64_t order_axis(ArgVal* axis, ArgVal* order) noexcept nogil:
    """Caffe2: an explicit 'axis' wins; else 'order' NCHW -> 1, NHWC -> 3."""
    if axis.present:
        return axis.i
    if order.present and order.s == b"NHWC":
        return 3
    return 1


cdef int k_concat(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef size_t n = op.ins.size(), q
    cdef bint add = op.d.args[CC_ADD_AXIS].present and op.d.args[CC_ADD_AXIS].i != 0
    cdef Tensor* x0 = in_t(op, ctx, 0)
    cdef Tensor* x
    cdef Tensor snap
    cdef vector[Tensor] held
    cdef int64_t axis, pre, p, isz, off, total_chunk
    cdef int64_t shape[MAX_DIMS]
    cdef vector[int64_t] chunk
    cdef int k, ndim, rc = 0
    cdef Tensor* out
    if x0 == NULL:
        return -1
    ndim = x0.ndim + (1 if add else 0)
    if ndim < 1:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(x0) +
                       cstr(b", expected at least 1 dimension (or add_axis=1)"))
    if canonical_axis(op, ctx, order_axis(&op.d.args[CC_AXIS], &op.d.args[CC_ORDER]), ndim,
                      b"axis", &axis) != 0:
        return -1
    if ndim > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
    for q in range(n):
        x = in_t(op, ctx, q)
        if x == NULL:
            rc = -1
            break
        if x.dtype != x0.dtype or x.ndim != x0.ndim:
            rc = fail_in(op, ctx, q, cstr(b"is ") + tensor_describe(x) +
                         cstr(b", expected the dtype and rank of input 0 ") + tensor_describe(x0))
            break
        for k in range(x.ndim):
            if x.shape[k] != x0.shape[k] and (add or k != axis):
                rc = fail_in(op, ctx, q, cstr(b"is ") + tensor_describe(x) +
                             cstr(b", which does not match input 0 ") + tensor_describe(x0) +
                             (cstr(b" (add_axis=1 needs equal shapes)") if add else
                              cstr(b" outside axis ") + to_str(axis)))
                break
        if rc:
            break
        tensor_snapshot(x, &snap)
        held.push_back(snap)
    if rc == 0:
        isz = dtype_itemsize(x0.dtype)
        pre = prod(held[0].shape, 0, <int>axis)
        total_chunk = 0
        for q in range(n):
            # elements of input q per outer index
            chunk.push_back(prod(held[q].shape, <int>axis, held[q].ndim))
            total_chunk += chunk[q]
        if add:
            for k in range(<int>axis):
                shape[k] = held[0].shape[k]
            shape[axis] = <int64_t>n
            for k in range(<int>axis, held[0].ndim):
                shape[k + 1] = held[0].shape[k]
        else:
            for k in range(ndim):
                shape[k] = held[0].shape[k]
            shape[axis] = 0
            for q in range(n):
                shape[axis] += held[q].shape[axis]
        out = blob_out(op.outs[0])
        if out_shape(op, ctx, out, held[0].dtype, ndim, shape) != 0:
            rc = -1
        else:
            for p in range(pre):
                off = p * total_chunk
                for q in range(n):
                    copy_elems(tdata(out), off, tdata(&held[q]), p * chunk[q], chunk[q],
                               held[q].dtype, isz)
                    off += chunk[q]
            if op.outs.size() > 1:
                out = blob_out(op.outs[1])
                shape[0] = <int64_t>n
                if out_shape(op, ctx, out, DT_INT32, 1, shape) != 0:
                    rc = -1
                else:
                    for q in range(n):
                        (<int32_t*>tdata(out))[q] = 1 if add else <int32_t>held[q].shape[axis]
    for q in range(held.size()):
        buf_decref(held[q].buf)
    return rc


cdef int k_split(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef size_t m = op.outs.size(), q
    cdef bint add = op.d.args[SP_ADD_AXIS].present and op.d.args[SP_ADD_AXIS].i != 0
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor* ps
    cdef Tensor X
    cdef vector[int64_t] sizes
    cdef vector[int64_t]* arg = &op.d.args[SP_SPLIT].ints
    cdef int64_t axis, dim, total = 0, pre, inner, isz, p, off
    cdef int64_t shape[MAX_DIMS]
    cdef int k, ondim, rc = 0
    cdef Tensor* out
    if px == NULL:
        return -1
    if px.ndim < 1:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) +
                       cstr(b", expected at least 1 dimension"))
    if canonical_axis(op, ctx, order_axis(&op.d.args[SP_AXIS], &op.d.args[SP_ORDER]), px.ndim,
                      b"axis", &axis) != 0:
        return -1
    dim = px.shape[axis]
    if op.ins.size() > 1:
        ps = in_t(op, ctx, 1)
        if ps == NULL:
            return -1
        if not is_index_dt(ps.dtype) or ps.ndim != 1:
            return fail_dtype(op, ctx, 1, ps, b"a 1-D int32 or int64 tensor (split sizes)")
        if ps.size != <int64_t>m:
            return fail_in(op, ctx, 1, cstr(b"has ") + to_str(ps.size) + cstr(b" split sizes for ") +
                           to_str(m) + cstr(b" outputs"))
        for q in range(m):
            sizes.push_back(load_index(tdata(ps), ps.dtype, q))
    elif arg.size():
        if arg.size() != m:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"argument 'split' has ") + to_str(arg.size()) +
                            cstr(b" sizes for ") + to_str(m) + cstr(b" outputs"))
        for q in range(m):
            sizes.push_back(arg[0][q])
    else:
        if dim % <int64_t>m != 0:
            return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) + cstr(b": dim ") +
                           to_str(axis) + cstr(b" (") + to_str(dim) +
                           cstr(b") does not split evenly into ") + to_str(m) + cstr(b" outputs"))
        for q in range(m):
            sizes.push_back(dim // <int64_t>m)
    for q in range(m):
        if sizes[q] < 0 or (add and sizes[q] != 1):
            return op_fails(op, ctx, E_RUNTIME, cstr(b"split size ") + to_str(sizes[q]) +
                            cstr(b" of output ") + to_str(q) +
                            (cstr(b" must be 1 with add_axis=1") if add else cstr(b" is negative")))
        total += sizes[q]
    if total != dim:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"split sizes add up to ") + to_str(total) +
                        cstr(b" but dim ") + to_str(axis) + cstr(b" of input 0 ") +
                        tensor_describe(px) + cstr(b" is ") + to_str(dim))
    tensor_snapshot(px, &X)
    pre = prod(X.shape, 0, <int>axis)
    inner = prod(X.shape, <int>axis + 1, X.ndim)
    isz = dtype_itemsize(X.dtype)
    off = 0     # rows of the axis before output q
    for q in range(m):
        ondim = 0
        for k in range(X.ndim):
            if k == axis:
                if add:
                    continue
                shape[ondim] = sizes[q]
            else:
                shape[ondim] = X.shape[k]
            ondim += 1
        out = blob_out(op.outs[q])
        if out_shape(op, ctx, out, X.dtype, ondim, shape) != 0:
            rc = -1
            break
        for p in range(pre):
            copy_elems(tdata(out), p * sizes[q] * inner, tdata(&X), (p * dim + off) * inner,
                       sizes[q] * inner, X.dtype, isz)
        off += sizes[q]
    buf_decref(X.buf)
    return rc


# ---- Reshape / ExpandDims / Squeeze (views: no bytes copied) ---------------------

cdef enum:
    RS_SHAPE = 0
kernel_args("Reshape", shape=(RS_SHAPE, "ints"))


cdef int k_reshape(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor* ps
    cdef Tensor X
    cdef int64_t want[MAX_DIMS]
    cdef int64_t oldshape[MAX_DIMS]
    cdef int n = 0, k, unknown = -1, oldnd, rc = 0
    cdef int64_t size = 1, v
    cdef Tensor* out
    cdef vector[int64_t]* arg = &op.d.args[RS_SHAPE].ints
    if px == NULL:
        return -1
    if op.ins.size() > 1:
        ps = in_t(op, ctx, 1)
        if ps == NULL:
            return -1
        if not is_index_dt(ps.dtype) or ps.ndim != 1:
            return fail_dtype(op, ctx, 1, ps, b"a 1-D int32 or int64 tensor (new shape)")
        if ps.size > MAX_DIMS:
            return fail_in(op, ctx, 1, cstr(b"has ") + to_str(ps.size) +
                           cstr(b" dims (at most 8)"))
        n = <int>ps.size
        for k in range(n):
            want[k] = load_index(tdata(ps), ps.dtype, k)
    else:
        if arg.size() > MAX_DIMS:
            return op_fail(op, ctx, E_RUNTIME, b"argument 'shape' has more than 8 dims")
        n = <int>arg.size()
        for k in range(n):
            want[k] = arg[0][k]
    tensor_snapshot(px, &X)
    for k in range(n):
        v = want[k]
        if v == 0:
            if k >= X.ndim:
                rc = op_fails(op, ctx, E_RUNTIME, cstr(b"new shape ") + shape_str(n, want) +
                              cstr(b" has a 0 (copy the input's dim) at position ") + to_str(k) +
                              cstr(b", beyond the input's ") + to_str(X.ndim) + cstr(b" dims ") +
                              tensor_describe(&X))
                break
            want[k] = X.shape[k]
        elif v == -1:
            if unknown >= 0:
                rc = op_fails(op, ctx, E_RUNTIME, cstr(b"new shape ") + shape_str(n, want) +
                              cstr(b" has more than one -1"))
                break
            unknown = k
            continue
        elif v < -1:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"new shape ") + shape_str(n, want) +
                          cstr(b" has a negative dim other than -1"))
            break
        size *= want[k]
    if rc == 0:
        if unknown >= 0:
            if size == 0 or X.size % size != 0:
                if X.size == 0 and size == 0:
                    want[unknown] = 0       # Caffe2: -1 of an empty tensor is 0
                else:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"cannot reshape ") + tensor_describe(&X) +
                                  cstr(b" into ") + shape_str(n, want) + cstr(b": ") +
                                  to_str(X.size) + cstr(b" elements are not a multiple of ") +
                                  to_str(size))
            else:
                want[unknown] = X.size // size
        elif size != X.size:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"cannot reshape ") + tensor_describe(&X) +
                          cstr(b" (") + to_str(X.size) + cstr(b" elements) into ") + shape_str(n, want))
    if rc == 0:
        oldnd = X.ndim
        for k in range(oldnd):
            oldshape[k] = X.shape[k]
        rc = out_view(op, ctx, blob_out(op.outs[0]), &X, n, want)
        if rc == 0 and op.outs.size() > 1:
            out = blob_out(op.outs[1])
            want[0] = oldnd
            if out_shape(op, ctx, out, DT_INT64, 1, want) != 0:
                rc = -1
            else:
                for k in range(oldnd):
                    (<int64_t*>tdata(out))[k] = oldshape[k]
    buf_decref(X.buf)
    return rc


cdef enum:
    ED_DIMS = 0
kernel_args("ExpandDims", dims=(ED_DIMS, "ints"))
kernel_args("Squeeze", dims=(ED_DIMS, "ints"))


cdef int k_expand_dims(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef int64_t dims[MAX_DIMS]
    cdef int64_t shape[MAX_DIMS]
    cdef int nd, k, j, ndim, rc
    if px == NULL:
        return -1
    if sorted_unique(op, ctx, &op.d.args[ED_DIMS].ints, dims, &nd) != 0:
        return -1
    if nd == 0:
        return op_fail(op, ctx, E_RUNTIME, b"argument 'dims' is required")
    if dims[nd - 1] + 1 - nd > px.ndim:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) + cstr(b": dims ") +
                       shape_str(nd, dims) + cstr(b" need at least ") + to_str(dims[nd - 1] + 1 - nd) +
                       cstr(b" input dimensions"))
    if px.ndim + nd > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"the output would have more than 8 dimensions")
    tensor_snapshot(px, &X)
    ndim = X.ndim
    for k in range(ndim):
        shape[k] = X.shape[k]
    for k in range(nd):
        # insert a 1 at dims[k] (dims ascending: earlier inserts are final)
        j = ndim
        while j > dims[k]:
            shape[j] = shape[j - 1]
            j -= 1
        shape[dims[k]] = 1
        ndim += 1
    rc = out_view(op, ctx, blob_out(op.outs[0]), &X, ndim, shape)
    buf_decref(X.buf)
    return rc


cdef int k_squeeze(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef int64_t dims[MAX_DIMS]
    cdef int64_t shape[MAX_DIMS]
    cdef int nd, k, j = 0, ndim = 0, rc
    if px == NULL:
        return -1
    if sorted_unique(op, ctx, &op.d.args[ED_DIMS].ints, dims, &nd) != 0:
        return -1
    if nd and dims[nd - 1] >= px.ndim:
        return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) + cstr(b": it needs at least ") +
                       to_str(dims[nd - 1] + 1) + cstr(b" dimensions for dims ") + shape_str(nd, dims))
    for k in range(px.ndim):
        if j < nd and dims[j] == k:
            if px.shape[k] != 1:
                return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) + cstr(b": dimension ") +
                               to_str(k) + cstr(b" must be 1 to squeeze it, not ") + to_str(px.shape[k]))
            j += 1
            continue
        shape[ndim] = px.shape[k]
        ndim += 1
    tensor_snapshot(px, &X)
    rc = out_view(op, ctx, blob_out(op.outs[0]), &X, ndim, shape)
    buf_decref(X.buf)
    return rc


# ---- Slice -----------------------------------------------------------------------

cdef enum:
    SL_STARTS = 0
    SL_ENDS = 1
kernel_args("Slice", starts=(SL_STARTS, "ints"), ends=(SL_ENDS, "ints"))


cdef int k_slice(OpInst* op, RunCtx* ctx) noexcept nogil:
    """Caffe2's Slice: per dim i < len(starts), [start, end) where a negative
    index counts from the end plus one (end=-1: through the last element);
    indices past the end are clamped.  Several dims may be sliced (Caffe2's
    CPU kernel slices one; this is a superset)."""
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor* pst
    cdef Tensor* pen
    cdef Tensor X
    cdef int64_t st[MAX_DIMS]
    cdef int64_t en[MAX_DIMS]
    cdef int64_t shape[MAX_DIMS]
    cdef int64_t stride[MAX_DIMS]
    cdef int64_t idx[MAX_DIMS]
    cdef int64_t ns, k, d, s, e, last, chunk, nrows, r, src, dst, isz
    cdef int rc = 0
    cdef Tensor* out
    if px == NULL:
        return -1
    if op.ins.size() == 3:
        pst = in_t(op, ctx, 1)
        if pst == NULL:
            return -1
        pen = in_t(op, ctx, 2)
        if pen == NULL:
            return -1
        if not is_index_dt(pst.dtype) or pst.ndim != 1:
            return fail_dtype(op, ctx, 1, pst, b"a 1-D int32 or int64 tensor (starts)")
        if not is_index_dt(pen.dtype) or pen.ndim != 1:
            return fail_dtype(op, ctx, 2, pen, b"a 1-D int32 or int64 tensor (ends)")
        if pst.size != pen.size:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"starts ") + tensor_describe(pst) +
                            cstr(b" and ends ") + tensor_describe(pen) + cstr(b" differ in length"))
        ns = pst.size
        if ns > px.ndim:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"starts has ") + to_str(ns) +
                            cstr(b" entries for data ") + tensor_describe(px))
        for k in range(ns):
            st[k] = load_index(tdata(pst), pst.dtype, k)
            en[k] = load_index(tdata(pen), pen.dtype, k)
    else:
        ns = <int64_t>op.d.args[SL_STARTS].ints.size()
        if ns != <int64_t>op.d.args[SL_ENDS].ints.size():
            return op_fail(op, ctx, E_RUNTIME, b"arguments 'starts' and 'ends' differ in length")
        if ns > px.ndim:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"argument 'starts' has ") + to_str(ns) +
                            cstr(b" entries for data ") + tensor_describe(px))
        for k in range(ns):
            st[k] = op.d.args[SL_STARTS].ints[k]
            en[k] = op.d.args[SL_ENDS].ints[k]
    for k in range(ns, px.ndim):
        st[k] = 0
        en[k] = px.shape[k]
    last = -1   # the last dim actually narrowed
    for k in range(px.ndim):
        d = px.shape[k]
        if d == 0:
            st[k] = 0       # Caffe2: an empty dim stays empty, whatever the indices
            shape[k] = 0
            continue
        s = st[k]
        e = en[k]
        if s < 0:
            s = d + 1 + s
        if e < 0:
            e = d + 1 + e
        if s > d:
            s = d
        if e > d:
            e = d
        if s < 0 or e < 0 or e < s:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"start ") + to_str(st[k]) + cstr(b" / end ") +
                            to_str(en[k]) + cstr(b" of dim ") + to_str(k) +
                            cstr(b" are out of range for data ") + tensor_describe(px) +
                            cstr(b" (they resolve to [") + to_str(s) + cstr(b", ") + to_str(e) +
                            cstr(b"))"))
        st[k] = s
        shape[k] = e - s
        if s != 0 or e != d:
            last = k
    tensor_snapshot(px, &X)
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, X.dtype, X.ndim, shape) != 0:
        rc = -1
    elif out.size > 0:
        isz = dtype_itemsize(X.dtype)
        if last < 0:
            copy_elems(tdata(out), 0, tdata(&X), 0, X.size, X.dtype, isz)
        else:
            # rows: the dims before `last`; each row is one contiguous chunk
            stride[X.ndim - 1] = 1
            for k in range(X.ndim - 2, -1, -1):
                stride[k] = stride[k + 1] * X.shape[k + 1]
            chunk = shape[last] * stride[last]
            nrows = prod(shape, 0, <int>last)
            for k in range(last):
                idx[k] = 0
            dst = 0
            for r in range(nrows):
                src = st[last] * stride[last]
                for k in range(last):
                    src += (st[k] + idx[k]) * stride[k]
                copy_elems(tdata(out), dst, tdata(&X), src, chunk, X.dtype, isz)
                dst += chunk
                k = last - 1
                while k >= 0:
                    idx[k] += 1
                    if idx[k] < shape[k]:
                        break
                    idx[k] = 0
                    k -= 1
    buf_decref(X.buf)
    return rc


# ---- Transpose -------------------------------------------------------------------

cdef enum:
    TR_AXES = 0
kernel_args("Transpose", axes=(TR_AXES, "ints"))


cdef void transpose_loop(elem_t* o, elem_t* x, int nd, const int64_t* oshape,
                         const int64_t* sstride) noexcept nogil:
    """o (row-major, oshape) = x read with source strides sstride per output dim."""
    cdef int64_t idx[MAX_DIMS]
    cdef int64_t rows = 1, r, j, src, inner = oshape[nd - 1], s_in = sstride[nd - 1]
    cdef int k
    cdef elem_t* op = o
    for k in range(nd - 1):
        rows *= oshape[k]
        idx[k] = 0
    for r in range(rows):
        src = 0
        for k in range(nd - 1):
            src += idx[k] * sstride[k]
        for j in range(inner):
            op[j] = x[src + j * s_in]
        op += inner
        k = nd - 2
        while k >= 0:
            idx[k] += 1
            if idx[k] < oshape[k]:
                break
            idx[k] = 0
            k -= 1


cdef int k_transpose(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef vector[int64_t]* axes = &op.d.args[TR_AXES].ints
    cdef int64_t perm[MAX_DIMS]
    cdef int64_t shape[MAX_DIMS]
    cdef int64_t istride[MAX_DIMS]
    cdef int64_t sstride[MAX_DIMS]
    cdef int nd, k, rc = 0
    cdef int64_t isz
    cdef bint seen[MAX_DIMS]
    cdef Tensor* out
    cdef void* o
    cdef void* x
    if px == NULL:
        return -1
    nd = px.ndim
    if px.dtype == DT_STRING:
        return fail_dtype(op, ctx, 0, px, b"a numeric or bool type (Transpose does not move strings)")
    if axes.size():
        if <int>axes.size() != nd:
            return fail_in(op, ctx, 0, cstr(b"is ") + tensor_describe(px) + cstr(b": argument 'axes' has ") +
                           to_str(axes.size()) + cstr(b" entries, expected one per dimension"))
        for k in range(nd):
            seen[k] = False
        for k in range(nd):
            perm[k] = axes[0][k]
            if perm[k] < 0 or perm[k] >= nd or seen[perm[k]]:
                return op_fail(op, ctx, E_RUNTIME, b"argument 'axes' is not a permutation of the dimensions")
            seen[perm[k]] = True
    else:
        for k in range(nd):
            perm[k] = nd - 1 - k
    tensor_snapshot(px, &X)
    if nd > 0:
        istride[nd - 1] = 1
        for k in range(nd - 2, -1, -1):
            istride[k] = istride[k + 1] * X.shape[k + 1]
    for k in range(nd):
        shape[k] = X.shape[perm[k]]
        sstride[k] = istride[perm[k]]
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, X.dtype, nd, shape) != 0:
        rc = -1
    elif X.size > 0:
        isz = dtype_itemsize(X.dtype)
        o = tdata(out)
        x = tdata(&X)
        if nd <= 1:
            memcpy(o, x, <size_t>(X.size * isz))
        elif isz == 1:
            transpose_loop(<uint8_t*>o, <uint8_t*>x, nd, shape, sstride)
        elif isz == 2:
            transpose_loop(<uint16_t*>o, <uint16_t*>x, nd, shape, sstride)
        elif isz == 4:
            transpose_loop(<uint32_t*>o, <uint32_t*>x, nd, shape, sstride)
        else:
            transpose_loop(<uint64_t*>o, <uint64_t*>x, nd, shape, sstride)
    buf_decref(X.buf)
    return rc


# ---- Clip ------------------------------------------------------------------------

cdef enum:
    CL_MIN = 0
    CL_MAX = 1
kernel_args("Clip", min=(CL_MIN, "float"), max=(CL_MAX, "float"))


cdef void clip_loop(any_num_t* x, any_num_t* o, int64_t n, bint has_lo, any_num_t lo,
                    bint has_hi, any_num_t hi) noexcept nogil:
    """o = min(max(x, lo), hi) -- Caffe2's order; x may be o (read before write)."""
    cdef int64_t i
    cdef any_num_t v
    for i in range(n):
        v = x[i]
        if has_lo and v < lo:
            v = lo
        if has_hi and v > hi:
            v = hi
        o[i] = v


cdef inline double int_bound(double b, bint lower, double tmin, double tmax) noexcept nogil:
    """A float bound as the integer bound with the same effect on an integer
    type of range [tmin, tmax]: ceil for a lower bound, floor for an upper."""
    b = ceil(b) if lower else floor(b)
    if b < tmin:
        return tmin
    if b > tmax:
        return tmax
    return b


cdef int k_clip(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef Buffer* old
    cdef bint hl = op.d.args[CL_MIN].present
    cdef bint hh = op.d.args[CL_MAX].present
    cdef double lo = op.d.args[CL_MIN].f if hl else 0.0
    cdef double hi = op.d.args[CL_MAX].f if hh else 0.0
    cdef double tmin = 0.0, tmax = 0.0
    cdef int dt
    cdef void* x
    cdef void* o
    cdef Tensor* out
    if px == NULL:
        return -1
    dt = px.dtype
    if dt == DT_STRING or dt == DT_BOOL or dt == DT_FLOAT16 or dt == DT_UNDEFINED:
        return fail_dtype(op, ctx, 0, px, b"a numeric type (int8..int64, uint8, uint16, float32, float64)")
    if (hl and isnan(lo)) or (hh and isnan(hi)):
        return op_fail(op, ctx, E_RUNTIME, b"arguments 'min' and 'max' must not be NaN")
    X = px[0]       # header only: elementwise, the output may reuse this buffer
    out = blob_out(op.outs[0])
    if out_like_hold(op, ctx, out, dt, &X, &old) != 0:
        return -1
    x = X.buf.data if X.buf != NULL else NULL
    o = tdata(out)
    if dt == DT_FLOAT:
        clip_loop(<float*>x, <float*>o, X.size, hl, <float>lo, hh, <float>hi)
    elif dt == DT_DOUBLE:
        clip_loop(<double*>x, <double*>o, X.size, hl, lo, hh, hi)
    else:
        if dt == DT_INT8: tmin, tmax = -128.0, 127.0
        elif dt == DT_UINT8 or dt == DT_BYTE: tmin, tmax = 0.0, 255.0
        elif dt == DT_INT16: tmin, tmax = -32768.0, 32767.0
        elif dt == DT_UINT16: tmin, tmax = 0.0, 65535.0
        elif dt == DT_INT32: tmin, tmax = -2147483648.0, 2147483647.0
        else: tmin, tmax = -9223372036854775808.0, 9223372036854774784.0
        if hl:
            lo = int_bound(lo, True, tmin, tmax)
        if hh:
            hi = int_bound(hi, False, tmin, tmax)
        if dt == DT_INT8:
            clip_loop(<int8_t*>x, <int8_t*>o, X.size, hl, <int8_t>lo, hh, <int8_t>hi)
        elif dt == DT_UINT8 or dt == DT_BYTE:
            clip_loop(<uint8_t*>x, <uint8_t*>o, X.size, hl, <uint8_t>lo, hh, <uint8_t>hi)
        elif dt == DT_INT16:
            clip_loop(<int16_t*>x, <int16_t*>o, X.size, hl, <int16_t>lo, hh, <int16_t>hi)
        elif dt == DT_UINT16:
            clip_loop(<uint16_t*>x, <uint16_t*>o, X.size, hl, <uint16_t>lo, hh, <uint16_t>hi)
        elif dt == DT_INT32:
            clip_loop(<int32_t*>x, <int32_t*>o, X.size, hl, <int32_t>lo, hh, <int32_t>hi)
        else:
            clip_loop(<int64_t*>x, <int64_t*>o, X.size, hl, <int64_t>lo, hh, <int64_t>hi)
    buf_decref(old)
    return 0


# ---- UniformFill / GaussianFill ---------------------------------------------------
#
# Each op instance owns a xoshiro256** generator, seeded when the op is bound
# (once per run and runtime instance): from splitmix64(seed) when 'seed' is
# given -- the same stream in every run and every process -- else from
# getrandom().  A seeded op run in a loop gives a fixed sequence, as a Caffe2
# op with device_option.random_seed does.

cdef enum:
    RF_SHAPE = 0
    RF_EXTRA_SHAPE = 1
    RF_INPUT_AS_SHAPE = 2
    RF_A = 3            # min / mean
    RF_B = 4            # max / std
    RF_SEED = 5
kernel_args("UniformFill", shape=(RF_SHAPE, "ints"), extra_shape=(RF_EXTRA_SHAPE, "ints"),
            input_as_shape=(RF_INPUT_AS_SHAPE, "bool"), min=(RF_A, "float"), max=(RF_B, "float"),
            seed=(RF_SEED, "int"))
kernel_args("GaussianFill", shape=(RF_SHAPE, "ints"), extra_shape=(RF_EXTRA_SHAPE, "ints"),
            input_as_shape=(RF_INPUT_AS_SHAPE, "bool"), mean=(RF_A, "float"), std=(RF_B, "float"),
            seed=(RF_SEED, "int"))

ctypedef struct Rng:
    uint64_t s[4]

cdef int64_t g_rng_salt = 0     # atomic: distinct fallback seeds within a process


cdef inline uint64_t splitmix64(uint64_t* x) noexcept nogil:
    cdef uint64_t z
    x[0] += <uint64_t>0x9E3779B97F4A7C15
    z = x[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t rng_next(Rng* r) noexcept nogil:
    cdef uint64_t res = rotl(r.s[1] * 5, 7) * 9
    cdef uint64_t t = r.s[1] << 17
    r.s[2] ^= r.s[0]
    r.s[3] ^= r.s[1]
    r.s[1] ^= r.s[2]
    r.s[0] ^= r.s[3]
    r.s[2] ^= t
    r.s[3] = rotl(r.s[3], 45)
    return res


cdef inline double rng_unit(Rng* r) noexcept nogil:
    """Uniform in [0, 1) with 53 random bits."""
    return <double>(rng_next(r) >> 11) * (1.0 / 9007199254740992.0)


cdef int rng_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Rng* r = <Rng*>malloc(sizeof(Rng))
    cdef uint64_t x
    cdef timespec ts
    cdef int k
    if r == NULL:
        return op_oom(op, ctx)
    if op.d.args[RF_SEED].present:
        x = <uint64_t>op.d.args[RF_SEED].i
    elif getrandom(&x, sizeof(x), 0) != <ssize_t>sizeof(x):
        clock_gettime(CLOCK_MONOTONIC, &ts)
        x = (<uint64_t>ts.tv_sec * <uint64_t>1000000000 + <uint64_t>ts.tv_nsec) ^ \
            (<uint64_t>fp_fetch_add(&g_rng_salt, 1) << 32) ^ <uint64_t><size_t>r
    for k in range(4):
        r.s[k] = splitmix64(&x)
    op.state = <void*>r
    return 0


cdef void rng_fini(OpInst* op) noexcept nogil:
    free(op.state)
    op.state = NULL


cdef int random_fill_shape(OpInst* op, RunCtx* ctx, int64_t* shape, int* ndim) noexcept nogil:
    """The output shape of a filler (ConstantFill's rules)."""
    cdef vector[ArgVal]* a = &op.d.args
    cdef Tensor* x
    cdef int64_t j
    cdef size_t k
    cdef int n = 0
    cdef size_t extra = a[0][RF_EXTRA_SHAPE].ints.size()
    if op.ins.size():
        x = in_t(op, ctx, 0)
        if x == NULL:
            return -1
        if a[0][RF_INPUT_AS_SHAPE].i:
            if not is_index_dt(x.dtype) or x.ndim != 1:
                return fail_dtype(op, ctx, 0, x, b"a 1-D int32 or int64 tensor (input_as_shape)")
            if x.size + <int64_t>extra > MAX_DIMS:
                return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
            for j in range(x.size):
                shape[n] = load_index(tdata(x), x.dtype, j)
                n += 1
        else:
            if x.ndim + <int64_t>extra > MAX_DIMS:
                return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
            for j in range(x.ndim):
                shape[n] = x.shape[j]
                n += 1
        for k in range(extra):
            shape[n] = a[0][RF_EXTRA_SHAPE].ints[k]
            n += 1
    else:
        if a[0][RF_SHAPE].ints.size() > MAX_DIMS:
            return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
        for k in range(a[0][RF_SHAPE].ints.size()):
            shape[n] = a[0][RF_SHAPE].ints[k]
            n += 1
    ndim[0] = n
    return 0


cdef int k_uniform_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef int64_t shape[MAX_DIMS]
    cdef int ndim, i64
    cdef int64_t i
    cdef float lo = <float>op.d.args[RF_A].f
    cdef float hi = <float>op.d.args[RF_B].f
    cdef float v
    cdef float* o
    cdef Rng* r = <Rng*>op.state
    cdef Tensor* out
    cdef Tensor* b
    cdef size_t q
    if random_fill_shape(op, ctx, shape, &ndim) != 0:
        return -1
    if op.ins.size() == 3:
        # Caffe2: bounds from float scalar inputs 1 and 2; min > max gives an
        # output whose dim 0 is 0
        for q in range(1, 3):
            b = in_t(op, ctx, q)
            if b == NULL:
                return -1
            if b.dtype != DT_FLOAT or b.size != 1:
                return fail_in(op, ctx, q, cstr(b"is ") + tensor_describe(b) +
                               cstr(b", expected a float32 scalar (the ") +
                               cstr(b"min" if q == 1 else b"max") + cstr(b" bound)"))
        lo = (<float*>tdata(&op.ins[1].t))[0]
        hi = (<float*>tdata(&op.ins[2].t))[0]
        if lo > hi and ndim > 0:
            shape[0] = 0
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_FLOAT, ndim, shape) != 0:
        return -1
    o = <float*>tdata(out)
    for i in range(out.size):
        v = <float>(lo + (<double>hi - lo) * rng_unit(r))
        if v >= hi and hi > lo:
            v = nextafterf(hi, lo)      # [min, max): rounding to float must not reach max
        o[i] = v
    return 0


cdef int k_gaussian_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef int64_t shape[MAX_DIMS]
    cdef int ndim
    cdef int64_t i
    cdef double mean = op.d.args[RF_A].f
    cdef double std = op.d.args[RF_B].f
    cdef double u1, u2, rad
    cdef float* o
    cdef Rng* r = <Rng*>op.state
    cdef Tensor* out
    if random_fill_shape(op, ctx, shape, &ndim) != 0:
        return -1
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_FLOAT, ndim, shape) != 0:
        return -1
    o = <float*>tdata(out)
    i = 0
    while i < out.size:
        # Box-Muller: two normals from two uniforms (u1 in (0, 1])
        u1 = 1.0 - rng_unit(r)
        u2 = rng_unit(r)
        rad = sqrt(-2.0 * log(u1))
        o[i] = <float>(mean + std * rad * cos(6.283185307179586 * u2))
        if i + 1 < out.size:
            o[i + 1] = <float>(mean + std * rad * cos(6.283185307179586 * u2 - 1.5707963267948966))
        i += 2
    return 0
