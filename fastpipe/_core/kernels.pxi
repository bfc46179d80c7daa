# Basic operator kernels.  Every kernel is `noexcept nogil`, returns 0 or -1
# after recording an error through op_fail*, and never touches a Python
# object (the Python op, in pyop.pxi, is the one exception).

ctypedef fused num_t:
    int32_t
    int64_t
    float
    double


cdef Tensor* in_t_fail(OpInst* op, RunCtx* ctx, size_t i) noexcept nogil:
    """Slow path of in_t: record why input i is not a usable tensor."""
    cdef Blob* b = op.ins[i]
    cdef string msg = cstr(b"input ")
    msg.append(to_str(i))
    msg.append(b" ('")
    msg.append(b.name)
    if b.obj != NULL:
        msg.append(b"') holds a ")
        msg.append(OBJ_NAMES[b.obj.kind])
        msg.append(b", expected a tensor")
    else:
        msg.append(b"') has no value yet (it is read before it is written)")
    op_fails(op, ctx, E_RUNTIME, msg)
    return NULL


cdef inline Tensor* in_t(OpInst* op, RunCtx* ctx, size_t i) noexcept nogil:
    """Input i as an initialized tensor, or NULL after recording an error.
    (No std::string on this path: error text is built in in_t_fail.)"""
    cdef Blob* b = op.ins[i]
    if b.obj != NULL or b.t.dtype == DT_UNDEFINED:
        return in_t_fail(op, ctx, i)
    return &b.t


cdef int fail_dtype(OpInst* op, RunCtx* ctx, size_t i, Tensor* t, const char* want) noexcept nogil:
    cdef string msg = cstr(b"input ")
    msg.append(to_str(i))
    msg.append(b" ('")
    msg.append(op.ins[i].name)
    msg.append(b"') has dtype ")
    msg.append(dtype_name(t.dtype))
    msg.append(b", expected ")
    msg.append(want)
    return op_fails(op, ctx, E_RUNTIME, msg)


cdef int reshape_fail(OpInst* op, RunCtx* ctx, int rc, int ndim, const int64_t* shape) noexcept nogil:
    """Turn a tensor_reshape status into an op error naming the shape."""
    cdef string msg
    cdef int i
    if rc == -1:
        return op_oom(op, ctx)
    if rc == -2:
        return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
    msg = cstr(b"shape [")
    for i in range(ndim if ndim <= MAX_DIMS else MAX_DIMS):
        if i:
            msg.append(b", ")
        msg.append(to_str(shape[i]))
    msg.append(b"] ")
    if rc == -3:
        msg.append(b"has a negative dimension")
    else:
        msg.append(b"is too large (more than 2^40 elements)")
    return op_fails(op, ctx, E_RUNTIME, msg)


cdef inline int out_like(OpInst* op, RunCtx* ctx, Tensor* out, int dtype, Tensor* like) noexcept nogil:
    cdef int rc = tensor_reshape(out, dtype, like.ndim, like.shape)
    if rc != 0:
        return reshape_fail(op, ctx, rc, like.ndim, like.shape)
    return 0


cdef inline int out_like_hold(OpInst* op, RunCtx* ctx, Tensor* out, int dtype, Tensor* like,
                              Buffer** old) noexcept nogil:
    """out_like for kernels whose output may be one of their inputs: `like`
    is a snapshot of an input; if out must reallocate, its previous buffer
    (possibly that input's) stays alive in *old until the caller releases it."""
    cdef int rc = tensor_reshape_hold(out, dtype, like.ndim, like.shape, old)
    if rc != 0:
        return reshape_fail(op, ctx, rc, like.ndim, like.shape)
    return 0


cdef inline int out_shape(OpInst* op, RunCtx* ctx, Tensor* out, int dtype, int ndim,
                          const int64_t* shape) noexcept nogil:
    cdef int rc = tensor_reshape(out, dtype, ndim, shape)
    if rc != 0:
        return reshape_fail(op, ctx, rc, ndim, shape)
    return 0


# ---- fills ----------------------------------------------------------------------

cdef int fill_value(Tensor* t, ArgVal* v) noexcept nogil:
    """Fill t (already shaped) with the value argument.  -1: bad field for dtype."""
    cdef int64_t i, n = t.size
    cdef double f = 0.0
    cdef int64_t iv = 0
    cdef void* p = tdata(t)
    if t.dtype == DT_STRING:
        if v.present and v.vkind != b's':
            return -1
        for i in range(n):
            if v.present:
                (<string*>p)[i] = v.s
            else:
                (<string*>p)[i].clear()
        return 0
    if v.present:
        if v.vkind == b's':
            return -1
        if t.dtype == DT_FLOAT or t.dtype == DT_DOUBLE:
            f = v.f if v.vkind == b'f' else <double>v.i
        else:
            if v.vkind == b'f':
                return -1
            iv = v.i
    if t.dtype == DT_FLOAT:
        for i in range(n): (<float*>p)[i] = <float>f
    elif t.dtype == DT_DOUBLE:
        for i in range(n): (<double*>p)[i] = f
    elif t.dtype == DT_INT32:
        for i in range(n): (<int32_t*>p)[i] = <int32_t>iv
    elif t.dtype == DT_INT64:
        for i in range(n): (<int64_t*>p)[i] = iv
    elif t.dtype == DT_BOOL:
        memset(p, 1 if iv else 0, n)
    elif t.dtype == DT_UINT8 or t.dtype == DT_BYTE:
        memset(p, <uint8_t>iv, n)
    elif t.dtype == DT_INT8:
        memset(p, <int8_t>iv, n)
    elif t.dtype == DT_INT16:
        for i in range(n): (<int16_t*>p)[i] = <int16_t>iv
    elif t.dtype == DT_UINT16:
        for i in range(n): (<uint16_t*>p)[i] = <uint16_t>iv
    else:
        return -2
    return 0


cdef enum:   # ConstantFill argument positions (checked against the schema on import)
    CF_SHAPE = 0
    CF_EXTRA_SHAPE = 1
    CF_INPUT_AS_SHAPE = 2
    CF_VALUE = 3
    CF_DTYPE = 4
kernel_args("ConstantFill", shape=(CF_SHAPE, "ints"), extra_shape=(CF_EXTRA_SHAPE, "ints"),
            input_as_shape=(CF_INPUT_AS_SHAPE, "bool"), value=(CF_VALUE, "value"),
            dtype=(CF_DTYPE, "dtype"))


cdef int k_constant_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef int64_t shape[MAX_DIMS]
    cdef int ndim = 0
    cdef size_t k
    cdef int64_t j
    cdef int dtype
    cdef Tensor* x
    cdef Tensor* out
    cdef int rc
    if a[0][CF_DTYPE].present:
        dtype = <int>a[0][CF_DTYPE].i
    elif a[0][CF_VALUE].present:
        dtype = DT_FLOAT if a[0][CF_VALUE].vkind == b'f' else (DT_INT64 if a[0][CF_VALUE].vkind == b'i' else DT_STRING)
    else:
        dtype = DT_FLOAT
    if dtype == DT_UNDEFINED or dtype == DT_FLOAT16:
        return op_fail(op, ctx, E_RUNTIME, b"unsupported dtype for ConstantFill")
    if op.ins.size():
        x = in_t(op, ctx, 0)
        if x == NULL:
            return -1
        if a[0][CF_INPUT_AS_SHAPE].i:
            if x.dtype != DT_INT64 or x.ndim != 1:
                return fail_dtype(op, ctx, 0, x, b"int64 1-D (input_as_shape)")
            if x.size + <int64_t>a[0][CF_EXTRA_SHAPE].ints.size() > MAX_DIMS:
                return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
            for j in range(x.size):
                shape[ndim] = (<int64_t*>tdata(x))[j]
                ndim += 1
        else:
            if x.ndim + <int64_t>a[0][CF_EXTRA_SHAPE].ints.size() > MAX_DIMS:
                return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
            for j in range(x.ndim):
                shape[ndim] = x.shape[j]
                ndim += 1
        for k in range(a[0][CF_EXTRA_SHAPE].ints.size()):
            shape[ndim] = a[0][CF_EXTRA_SHAPE].ints[k]
            ndim += 1
    else:
        if a[0][CF_SHAPE].ints.size() > MAX_DIMS:
            return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
        for k in range(a[0][CF_SHAPE].ints.size()):
            shape[ndim] = a[0][CF_SHAPE].ints[k]
            ndim += 1
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, dtype, ndim, shape) != 0:
        return -1
    rc = fill_value(out, &a[0][CF_VALUE])
    if rc == -1:
        return op_fail(op, ctx, E_RUNTIME,
                       b"argument 'value' has the wrong field for the dtype "
                       b"(e.g. a float value with an integer dtype)")
    if rc == -2:
        return op_fail(op, ctx, E_RUNTIME, b"unsupported dtype for ConstantFill")
    return 0


cdef enum:   # GivenTensor*Fill argument positions
    GF_SHAPE = 0
    GF_VALUES = 1
for _t, _k in (("GivenTensorFill", "floats"), ("GivenTensorDoubleFill", "floats"),
               ("GivenTensorIntFill", "ints"), ("GivenTensorInt64Fill", "ints"),
               ("GivenTensorBoolFill", "ints"), ("GivenTensorStringFill", "strings")):
    kernel_args(_t, shape=(GF_SHAPE, "ints"), values=(GF_VALUES, _k))


cdef int given_fill(OpInst* op, RunCtx* ctx, int dtype) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef int64_t shape[MAX_DIMS]
    cdef size_t k, n
    cdef void* p
    cdef Tensor* out
    if a[0][GF_SHAPE].ints.size() > MAX_DIMS:
        return op_fail(op, ctx, E_RUNTIME, b"too many dimensions (at most 8)")
    for k in range(a[0][GF_SHAPE].ints.size()):
        shape[k] = a[0][GF_SHAPE].ints[k]
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, dtype, <int>a[0][GF_SHAPE].ints.size(), shape) != 0:
        return -1
    p = tdata(out)
    if dtype == DT_FLOAT:
        for k in range(a[0][GF_VALUES].floats.size()): (<float*>p)[k] = <float>a[0][GF_VALUES].floats[k]
    elif dtype == DT_DOUBLE:
        for k in range(a[0][GF_VALUES].floats.size()): (<double*>p)[k] = a[0][GF_VALUES].floats[k]
    elif dtype == DT_INT32:
        for k in range(a[0][GF_VALUES].ints.size()): (<int32_t*>p)[k] = <int32_t>a[0][GF_VALUES].ints[k]
    elif dtype == DT_INT64:
        for k in range(a[0][GF_VALUES].ints.size()): (<int64_t*>p)[k] = a[0][GF_VALUES].ints[k]
    elif dtype == DT_BOOL:
        for k in range(a[0][GF_VALUES].ints.size()): (<uint8_t*>p)[k] = 1 if a[0][GF_VALUES].ints[k] else 0
    elif dtype == DT_STRING:
        for k in range(a[0][GF_VALUES].strings.size()): (<string*>p)[k] = a[0][GF_VALUES].strings[k]
    return 0


cdef int k_given_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_FLOAT)
cdef int k_given_double_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_DOUBLE)
cdef int k_given_int_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_INT32)
cdef int k_given_int64_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_INT64)
cdef int k_given_bool_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_BOOL)
cdef int k_given_string_fill(OpInst* op, RunCtx* ctx) noexcept nogil:
    return given_fill(op, ctx, DT_STRING)


# ---- copy / logic ----------------------------------------------------------------

cdef int k_copy(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* x = in_t(op, ctx, 0)
    if x == NULL:
        return -1
    if tensor_copy(blob_out(op.outs[0]), x) != 0:
        return op_oom(op, ctx)
    return 0


cdef int k_not(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* x = in_t(op, ctx, 0)
    cdef Tensor xs
    cdef int64_t i
    if x == NULL:
        return -1
    if x.dtype != DT_BOOL:
        return fail_dtype(op, ctx, 0, x, b"bool")
    cdef Buffer* old
    xs = x[0]                # snapshot: the output may be the input
    cdef Tensor* out = blob_out(op.outs[0])
    if out_like_hold(op, ctx, out, DT_BOOL, &xs, &old) != 0:
        return -1
    cdef uint8_t* a = <uint8_t*>xs.buf.data
    cdef uint8_t* o = <uint8_t*>tdata(out)
    for i in range(xs.size):
        o[i] = 0 if a[i] else 1
    buf_decref(old)
    return 0


cdef enum:   # argument positions of the broadcasting binary ops (_bcast_args)
    BC_BROADCAST = 0
    BC_AXIS = 1
for _t in ("And", "Or", "Xor", "LT", "LE", "GT", "GE", "EQ", "NE", "Add", "Sub", "Mul", "Div"):
    kernel_args(_t, broadcast=(BC_BROADCAST, "bool"), axis=(BC_AXIS, "int"))


cdef int bcast_plan(OpInst* op, RunCtx* ctx, Tensor* A, Tensor* B,
                    int64_t* pre, int64_t* n, int64_t* post) noexcept nogil:
    """Caffe2's legacy broadcast: B's element for A's flat index i is
    (i / post) % n.  args: broadcast, axis."""
    cdef bint bc = op.d.args[BC_BROADCAST].present and op.d.args[BC_BROADCAST].i != 0
    cdef bint has_axis = op.d.args[BC_AXIS].present and op.d.args[BC_AXIS].i >= 0
    cdef int64_t axis, k
    cdef int bnd = B.ndim
    cdef string msg
    if not bc:
        if A.ndim != B.ndim:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"Dimension mismatch ") + tensor_describe(A) +
                            cstr(b" vs ") + tensor_describe(B) + cstr(b" - did you forget to set broadcast=1?"))
        for k in range(A.ndim):
            if A.shape[k] != B.shape[k]:
                return op_fails(op, ctx, E_RUNTIME, cstr(b"Dimension mismatch ") + tensor_describe(A) +
                                cstr(b" vs ") + tensor_describe(B) + cstr(b" - did you forget to set broadcast=1?"))
        pre[0] = 1
        n[0] = A.size
        post[0] = 1
        return 0
    if B.size == 1 and not has_axis:
        pre[0] = A.size
        n[0] = 1
        post[0] = 1
        return 0
    # drop B's trailing 1-dims, as Caffe2 does
    while bnd > 0 and B.shape[bnd - 1] == 1 and (not has_axis):
        bnd -= 1
    axis = op.d.args[BC_AXIS].i if has_axis else A.ndim - bnd
    if axis < 0 or axis + bnd > A.ndim:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot broadcast ") + tensor_describe(B) +
                        cstr(b" over ") + tensor_describe(A) + cstr(b" at axis ") + to_str(axis))
    for k in range(bnd):
        if A.shape[axis + k] != B.shape[k]:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot broadcast ") + tensor_describe(B) +
                            cstr(b" over ") + tensor_describe(A) + cstr(b" at axis ") + to_str(axis))
    pre[0] = 1
    for k in range(axis):
        pre[0] *= A.shape[k]
    n[0] = 1
    for k in range(bnd):
        n[0] *= B.shape[k]
    post[0] = 1
    for k in range(axis + bnd, A.ndim):
        post[0] *= A.shape[k]
    return 0


# binary op codes
cdef enum:
    BIN_ADD = 0
    BIN_SUB = 1
    BIN_MUL = 2
    BIN_DIV = 3
    BIN_LT = 4
    BIN_LE = 5
    BIN_GT = 6
    BIN_GE = 7
    BIN_EQ = 8
    BIN_NE = 9
    BIN_AND = 10
    BIN_OR = 11
    BIN_XOR = 12


cdef inline num_t arith1(num_t x, num_t y, int code) noexcept nogil:
    if code == BIN_ADD:
        return x + y
    if code == BIN_SUB:
        return x - y
    if code == BIN_MUL:
        return x * y
    return x / y


cdef inline uint8_t cmp1(num_t x, num_t y, int code) noexcept nogil:
    if code == BIN_LT: return x < y
    if code == BIN_LE: return x <= y
    if code == BIN_GT: return x > y
    if code == BIN_GE: return x >= y
    if code == BIN_EQ: return x == y
    return x != y


cdef void arith_loop(num_t* a, num_t* b, num_t* o, int64_t pre, int64_t n,
                     int64_t post, int code) noexcept nogil:
    cdef int64_t i, j, k, idx = 0
    cdef num_t s
    if pre == 1 and post == 1:
        # same shape: one tight loop per op so the compiler vectorises it
        if code == BIN_ADD:
            for i in range(n): o[i] = a[i] + b[i]
        elif code == BIN_SUB:
            for i in range(n): o[i] = a[i] - b[i]
        elif code == BIN_MUL:
            for i in range(n): o[i] = a[i] * b[i]
        else:
            for i in range(n): o[i] = a[i] / b[i]
        return
    if n == 1:
        s = b[0]
        if code == BIN_ADD:
            for i in range(pre * post): o[i] = a[i] + s
        elif code == BIN_SUB:
            for i in range(pre * post): o[i] = a[i] - s
        elif code == BIN_MUL:
            for i in range(pre * post): o[i] = a[i] * s
        else:
            for i in range(pre * post): o[i] = a[i] / s
        return
    for i in range(pre):
        for j in range(n):
            s = b[j]
            for k in range(post):
                o[idx] = arith1(a[idx], s, code)
                idx += 1


cdef void cmp_loop(num_t* a, num_t* b, uint8_t* o, int64_t pre, int64_t n,
                   int64_t post, int code) noexcept nogil:
    cdef int64_t i, j, k, idx = 0
    for i in range(pre):
        for j in range(n):
            for k in range(post):
                o[idx] = cmp1(a[idx], b[j], code)
                idx += 1


cdef void logic_loop(uint8_t* a, uint8_t* b, uint8_t* o, int64_t pre, int64_t n,
                     int64_t post, int code) noexcept nogil:
    cdef int64_t i, j, k, idx = 0
    cdef uint8_t x, y
    if o == a and (code == BIN_OR or code == BIN_AND):
        # In place (e.g. Or(flag, stop) -> flag, run by every instance on one
        # shared flag): only write what changes, so an instance that has
        # nothing to add never overwrites another instance's true with false.
        for i in range(pre):
            for j in range(n):
                y = b[j] != 0
                for k in range(post):
                    if code == BIN_OR:
                        if y and not o[idx]:
                            o[idx] = 1
                    elif not y and o[idx]:
                        o[idx] = 0
                    idx += 1
        return
    for i in range(pre):
        for j in range(n):
            y = b[j] != 0
            for k in range(post):
                x = a[idx] != 0
                if code == BIN_AND:
                    o[idx] = x & y
                elif code == BIN_OR:
                    o[idx] = x | y
                elif code == BIN_XOR:
                    o[idx] = x ^ y
                elif code == BIN_EQ:
                    o[idx] = x == y
                else:
                    o[idx] = x != y
                idx += 1


cdef bint has_zero(void* p, int dtype, int64_t n) noexcept nogil:
    cdef int64_t i
    if dtype == DT_INT32:
        for i in range(n):
            if (<int32_t*>p)[i] == 0:
                return True
    elif dtype == DT_INT64:
        for i in range(n):
            if (<int64_t*>p)[i] == 0:
                return True
    return False


cdef int binary_op(OpInst* op, RunCtx* ctx, int code) noexcept nogil:
    cdef Tensor* pa = in_t(op, ctx, 0)
    cdef Tensor* pb
    cdef int64_t pre, n, post
    cdef int odt, adt
    cdef int rc = 0
    cdef void* ad
    cdef void* bd
    cdef void* od
    cdef Buffer* old = NULL
    if pa == NULL:
        return -1
    pb = in_t(op, ctx, 1)
    if pb == NULL:
        return -1
    adt = pa.dtype
    if adt != pb.dtype:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"inputs have different dtypes: ") +
                        tensor_describe(pa) + cstr(b" and ") + tensor_describe(pb))
    if code >= BIN_AND:
        if adt != DT_BOOL:
            return fail_dtype(op, ctx, 0, pa, b"bool")
    elif code >= BIN_LT:
        if not (adt == DT_INT32 or adt == DT_INT64 or adt == DT_FLOAT or
                adt == DT_DOUBLE or (adt == DT_BOOL and (code == BIN_EQ or code == BIN_NE))):
            return fail_dtype(op, ctx, 0, pa, b"int32, int64, float32 or float64")
    else:
        if not (adt == DT_INT32 or adt == DT_INT64 or adt == DT_FLOAT or adt == DT_DOUBLE):
            return fail_dtype(op, ctx, 0, pa, b"int32, int64, float32 or float64")
    if bcast_plan(op, ctx, pa, pb, &pre, &n, &post) != 0:
        return -1
    if code == BIN_DIV and has_zero(tdata(pb), pb.dtype, pb.size):
        return op_fail(op, ctx, E_RUNTIME, b"integer division by zero")
    # Capture the inputs' data before shaping the output, which may be one
    # of them.  Elementwise loops read index i before writing it, so a
    # reused buffer is safe; a reallocated one stays alive in `old`.
    ad = pa.buf.data
    bd = pb.buf.data
    odt = adt if code < BIN_LT else DT_BOOL
    cdef Tensor* out = blob_out(op.outs[0])
    if out == pb and out != pa and (pb.size != pa.size or code >= BIN_LT):
        # writing B in place while broadcasting it (or changing dtype): keep
        # B's buffer and give the output a new one
        old = pb.buf
        buf_incref(old)
        rc = out_like(op, ctx, out, odt, pa)
    elif out_like_hold(op, ctx, out, odt, pa, &old) != 0:
        rc = -1
    if rc != 0:
        buf_decref(old)
        return rc
    od = tdata(out)
    if code < BIN_LT:
        if adt == DT_INT32:
            arith_loop(<int32_t*>ad, <int32_t*>bd, <int32_t*>od, pre, n, post, code)
        elif adt == DT_INT64:
            arith_loop(<int64_t*>ad, <int64_t*>bd, <int64_t*>od, pre, n, post, code)
        elif adt == DT_FLOAT:
            arith_loop(<float*>ad, <float*>bd, <float*>od, pre, n, post, code)
        else:
            arith_loop(<double*>ad, <double*>bd, <double*>od, pre, n, post, code)
    elif code < BIN_AND and adt != DT_BOOL:
        if adt == DT_INT32:
            cmp_loop(<int32_t*>ad, <int32_t*>bd, <uint8_t*>od, pre, n, post, code)
        elif adt == DT_INT64:
            cmp_loop(<int64_t*>ad, <int64_t*>bd, <uint8_t*>od, pre, n, post, code)
        elif adt == DT_FLOAT:
            cmp_loop(<float*>ad, <float*>bd, <uint8_t*>od, pre, n, post, code)
        else:
            cmp_loop(<double*>ad, <double*>bd, <uint8_t*>od, pre, n, post, code)
    else:
        logic_loop(<uint8_t*>ad, <uint8_t*>bd, <uint8_t*>od, pre, n, post, code)
    buf_decref(old)
    return 0


cdef int k_add(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_ADD)
cdef int k_sub(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_SUB)
cdef int k_mul(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_MUL)
cdef int k_div(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_DIV)
cdef int k_lt(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_LT)
cdef int k_le(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_LE)
cdef int k_gt(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_GT)
cdef int k_ge(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_GE)
cdef int k_eq(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_EQ)
cdef int k_ne(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_NE)
cdef int k_and(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_AND)
cdef int k_or(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_OR)
cdef int k_xor(OpInst* op, RunCtx* ctx) noexcept nogil: return binary_op(op, ctx, BIN_XOR)


cdef void sum_into(num_t* o, num_t* x, int64_t n) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        o[i] += x[i]


cdef int k_sum(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef size_t k, m = op.ins.size()
    cdef Tensor* x0 = in_t(op, ctx, 0)
    cdef Tensor* x
    cdef Tensor snap
    cdef vector[Tensor] held
    cdef int rc = 0
    cdef int j
    cdef Tensor* out
    if x0 == NULL:
        return -1
    if not (x0.dtype == DT_INT32 or x0.dtype == DT_INT64 or x0.dtype == DT_FLOAT or x0.dtype == DT_DOUBLE):
        return fail_dtype(op, ctx, 0, x0, b"int32, int64, float32 or float64")
    for k in range(m):
        x = in_t(op, ctx, k)
        if x == NULL:
            rc = -1
            break
        if x.dtype != x0.dtype or x.ndim != x0.ndim:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"input ") + to_str(k) + cstr(b" is ") + tensor_describe(x) +
                          cstr(b", expected the same dims and dtype as input 0 ") + tensor_describe(x0))
            break
        for j in range(x.ndim):
            if x.shape[j] != x0.shape[j]:
                rc = op_fails(op, ctx, E_RUNTIME, cstr(b"input ") + to_str(k) + cstr(b" is ") + tensor_describe(x) +
                              cstr(b", expected the same dims as input 0 ") + tensor_describe(x0))
                break
        if rc:
            break
        tensor_snapshot(x, &snap)
        held.push_back(snap)
    if rc == 0:
        out = blob_out(op.outs[0])
        # first input into a fresh accumulation: copy input 0, then add the rest
        if tensor_copy(out, &held[0]) != 0:
            rc = op_oom(op, ctx)
        else:
            for k in range(1, held.size()):
                if x0.dtype == DT_INT32:
                    sum_into(<int32_t*>tdata(out), <int32_t*>held[k].buf.data, out.size)
                elif x0.dtype == DT_INT64:
                    sum_into(<int64_t*>tdata(out), <int64_t*>held[k].buf.data, out.size)
                elif x0.dtype == DT_FLOAT:
                    sum_into(<float*>tdata(out), <float*>held[k].buf.data, out.size)
                else:
                    sum_into(<double*>tdata(out), <double*>held[k].buf.data, out.size)
    for k in range(held.size()):
        buf_decref(held[k].buf)
    return rc


cdef enum:
    SCALE_SCALE = 0
kernel_args("Scale", scale=(SCALE_SCALE, "float"))


cdef int k_scale(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef double s = op.d.args[SCALE_SCALE].f if op.d.args[SCALE_SCALE].present else 1.0
    cdef int64_t i
    if px == NULL:
        return -1
    if px.dtype != DT_FLOAT and px.dtype != DT_DOUBLE:
        return fail_dtype(op, ctx, 0, px, b"float32 or float64")
    cdef Buffer* old
    X = px[0]
    cdef Tensor* out = blob_out(op.outs[0])
    if out_like_hold(op, ctx, out, X.dtype, &X, &old) != 0:
        return -1
    if X.dtype == DT_FLOAT:
        for i in range(X.size):
            (<float*>tdata(out))[i] = <float>(s * (<float*>X.buf.data)[i])
    else:
        for i in range(X.size):
            (<double*>tdata(out))[i] = s * (<double*>X.buf.data)[i]
    buf_decref(old)
    return 0


cdef inline bint is_float_dt(int dt) noexcept nogil:
    return dt == DT_FLOAT or dt == DT_DOUBLE


cdef inline double load_f(void* p, int dt, int64_t i) noexcept nogil:
    if dt == DT_FLOAT: return (<float*>p)[i]
    if dt == DT_DOUBLE: return (<double*>p)[i]
    return <double>load_i(p, dt, i)


cdef inline int64_t load_i(void* p, int dt, int64_t i) noexcept nogil:
    if dt == DT_INT32: return (<int32_t*>p)[i]
    if dt == DT_INT64: return (<int64_t*>p)[i]
    if dt == DT_BOOL or dt == DT_UINT8 or dt == DT_BYTE: return (<uint8_t*>p)[i]
    if dt == DT_INT8: return (<int8_t*>p)[i]
    if dt == DT_INT16: return (<int16_t*>p)[i]
    if dt == DT_UINT16: return (<uint16_t*>p)[i]
    if dt == DT_FLOAT: return <int64_t>(<float*>p)[i]
    if dt == DT_DOUBLE: return <int64_t>(<double*>p)[i]
    return 0


cdef inline bint cast_ok(int dt) noexcept nogil:
    return (dt == DT_FLOAT or dt == DT_DOUBLE or dt == DT_INT32 or dt == DT_INT64 or
            dt == DT_BOOL or dt == DT_UINT8 or dt == DT_INT8 or dt == DT_INT16 or
            dt == DT_UINT16)


cdef enum:
    CAST_TO = 0
    CAST_FROM_TYPE = 1      # not read: Caffe2 ignores it too
kernel_args("Cast", to=(CAST_TO, "dtype"), from_type=(CAST_FROM_TYPE, "dtype"))


cdef int k_cast(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* px = in_t(op, ctx, 0)
    cdef Tensor X
    cdef int to = <int>op.d.args[CAST_TO].i
    cdef int64_t i
    cdef void* o
    cdef double f
    cdef int64_t v
    if px == NULL:
        return -1
    if not cast_ok(px.dtype):
        return fail_dtype(op, ctx, 0, px, b"a numeric or bool type (Cast does not convert strings or float16)")
    if not cast_ok(to):
        return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot cast to ") + string(dtype_name(to)))
    X = px[0]
    buf_incref(X.buf)
    cdef Tensor* out = blob_out(op.outs[0])
    if out_like(op, ctx, out, to, &X) != 0:
        buf_decref(X.buf)
        return -1
    o = tdata(out)
    for i in range(X.size):
        if to == DT_FLOAT:
            (<float*>o)[i] = <float>load_f(X.buf.data, X.dtype, i)
        elif to == DT_DOUBLE:
            (<double*>o)[i] = load_f(X.buf.data, X.dtype, i)
        elif to == DT_BOOL:
            if is_float_dt(X.dtype):
                (<uint8_t*>o)[i] = load_f(X.buf.data, X.dtype, i) != 0
            else:
                (<uint8_t*>o)[i] = load_i(X.buf.data, X.dtype, i) != 0
        else:
            v = load_i(X.buf.data, X.dtype, i)
            if to == DT_INT32: (<int32_t*>o)[i] = <int32_t>v
            elif to == DT_INT64: (<int64_t*>o)[i] = v
            elif to == DT_UINT8: (<uint8_t*>o)[i] = <uint8_t>v
            elif to == DT_INT8: (<int8_t*>o)[i] = <int8_t>v
            elif to == DT_INT16: (<int16_t*>o)[i] = <int16_t>v
            else: (<uint16_t*>o)[i] = <uint16_t>v
    buf_decref(X.buf)
    return 0


cdef int k_is_empty(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* x = in_t(op, ctx, 0)
    cdef int64_t sz
    if x == NULL:
        return -1
    sz = x.size
    cdef Tensor* out = blob_out(op.outs[0])
    if tensor_scalar(out, DT_BOOL) != 0:
        return op_oom(op, ctx)
    (<uint8_t*>tdata(out))[0] = sz == 0
    return 0


# ---- counters ---------------------------------------------------------------------

ctypedef struct Counter:
    int64_t count       # atomic


cdef void counter_destroy(void* p) noexcept nogil:
    free(p)


# Save/Load (savedb.pxi): a counter's state is its count.
cdef int64_t counter_get_state(void* impl) noexcept nogil:
    return fp_load(&(<Counter*>impl).count)


cdef ObjHeader* counter_from_state(int64_t count) noexcept nogil:
    """A new counter object holding count; NULL when out of memory."""
    cdef Counter* c = <Counter*>malloc(sizeof(Counter))
    if c == NULL:
        return NULL
    c.count = count
    return obj_new(OBJ_COUNTER, c, counter_destroy)


cdef ObjHeader* op_obj_slow(OpInst* op, RunCtx* ctx, size_t i, int kind) noexcept nogil:
    cdef Blob* b = op.ins[i]
    cdef ObjHeader* h = blob_get_obj(b)
    cdef string msg
    if h == NULL or h.kind != kind:
        msg = cstr(b"input ")
        msg.append(to_str(i))
        msg.append(b" ('")
        msg.append(b.name)
        msg.append(b"') is not a ")
        msg.append(OBJ_NAMES[kind])
        if h != NULL:
            msg.append(b" (it holds a ")
            msg.append(OBJ_NAMES[h.kind])
            msg.append(b")")
        elif b.t.dtype != DT_UNDEFINED:
            msg.append(b" (it holds a tensor ")
            msg.append(tensor_describe(&b.t))
            msg.append(b")")
        else:
            msg.append(b" (it was never created)")
        obj_decref(h)
        op_fails(op, ctx, E_RUNTIME, msg)
        return NULL
    obj_decref(op.objs[i])
    op.objs[i] = h
    return h


cdef inline ObjHeader* op_obj(OpInst* op, RunCtx* ctx, size_t i, int kind) noexcept nogil:
    """The native object held by input i, cached in the op (one reference)
    while the blob keeps holding the same object.  NULL after an error."""
    cdef ObjHeader* h = op.ins[i].obj
    if h != NULL and h == op.objs[i]:
        return h
    return op_obj_slow(op, ctx, i, kind)


cdef enum:   # CreateCounter / ResetCounter
    CTR_INIT_COUNT = 0
kernel_args("CreateCounter", init_count=(CTR_INIT_COUNT, "int"))
kernel_args("ResetCounter", init_count=(CTR_INIT_COUNT, "int"))


cdef int k_create_counter(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Counter* c = <Counter*>malloc(sizeof(Counter))
    if c == NULL:
        return op_oom(op, ctx)
    c.count = op.d.args[CTR_INIT_COUNT].i if op.d.args[CTR_INIT_COUNT].present else 0
    cdef ObjHeader* h = obj_new(OBJ_COUNTER, c, counter_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef inline int scalar_out_i64(OpInst* op, RunCtx* ctx, size_t k, int64_t v) noexcept nogil:
    cdef Tensor* out = blob_out(op.outs[k])
    if tensor_scalar(out, DT_INT64) != 0:
        return op_oom(op, ctx)
    (<int64_t*>tdata(out))[0] = v
    return 0


cdef inline int scalar_out_bool(OpInst* op, RunCtx* ctx, size_t k, bint v) noexcept nogil:
    cdef Tensor* out = blob_out(op.outs[k])
    cdef Buffer* b = out.buf
    # fast path: already a private bool scalar
    if b != NULL and out.dtype == DT_BOOL and out.ndim == 0 and buf_private(b):
        (<uint8_t*>b.data)[0] = v
        return 0
    if tensor_scalar(out, DT_BOOL) != 0:
        return op_oom(op, ctx)
    (<uint8_t*>tdata(out))[0] = v
    return 0


cdef int k_reset_counter(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_COUNTER)
    if h == NULL:
        return -1
    cdef int64_t prev = fp_exchange(&(<Counter*>h.impl).count,
                                    op.d.args[CTR_INIT_COUNT].i
                                    if op.d.args[CTR_INIT_COUNT].present else 0)
    if op.outs.size():
        return scalar_out_i64(op, ctx, 0, prev)
    return 0


cdef int k_count_down(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_COUNTER)
    if h == NULL:
        return -1
    cdef int64_t prev = fp_fetch_add(&(<Counter*>h.impl).count, -1)
    return scalar_out_bool(op, ctx, 0, prev <= 0)


cdef int k_count_up(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_COUNTER)
    if h == NULL:
        return -1
    return scalar_out_i64(op, ctx, 0, fp_fetch_add(&(<Counter*>h.impl).count, 1))


cdef int k_check_counter_done(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_COUNTER)
    if h == NULL:
        return -1
    return scalar_out_bool(op, ctx, 0, fp_load(&(<Counter*>h.impl).count) <= 0)


cdef int k_retrieve_count(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_COUNTER)
    if h == NULL:
        return -1
    return scalar_out_i64(op, ctx, 0, fp_load(&(<Counter*>h.impl).count))


# ---- mutex and AtomicAppend ------------------------------------------------------------

ctypedef struct Mutex:
    fp_mutex m


cdef void mutex_destroy(void* p) noexcept nogil:
    fp_mutex_destroy(&(<Mutex*>p).m)
    free(p)


cdef int k_create_mutex(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Mutex* m = <Mutex*>malloc(sizeof(Mutex))
    if m == NULL:
        return op_oom(op, ctx)
    fp_mutex_init(&m.m)
    cdef ObjHeader* h = obj_new(OBJ_MUTEX, m, mutex_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


# AtomicAppend's growth path: True (default) grows big outputs in place with
# mremap (buf_new_mapped / buf_grow); False is the previous path (a new
# malloc'd buffer and a copy on every growth), kept so that benchmarks can put
# the two side by side in one run.  Set only while no run is in progress.
cdef bint g_append_mapped = True


def _append_growth(mode=None):
    """Private: the AtomicAppend growth path, 'mapped' or 'copy' (the old
    one); with a mode, select it (only while nothing runs) and return the
    previous one."""
    global g_append_mapped
    prev = "mapped" if g_append_mapped else "copy"
    if mode is not None:
        if mode not in ("mapped", "copy"):
            raise ArgumentError("_append_growth: mode must be 'mapped' or 'copy', not %r" % (mode,))
        g_append_mapped = mode == "mapped"
    return prev


cdef int tensor_append(Tensor* a, Tensor* b) noexcept nogil:
    """Append b to a along dim 0.  Shapes were checked by the caller.
    -1 when out of memory (a is then unchanged).

    Capacity grows by 40% (Caffe2's Extend) when it must.  A numeric buffer
    of BUF_MAP_MIN bytes or more becomes a mapping and from then on grows in
    place (buf_grow: no copy, touched pages stay).  A buffer that someone
    else still references (a numpy view, a queue slot) is never grown or
    written: a new one gets a copy, as in tensor_reshape."""
    cdef int64_t isz = dtype_itemsize(a.dtype)
    cdef int64_t old = a.size
    cdef int64_t need = a.size + b.size
    cdef int64_t cap, i
    cdef Buffer* nb
    cdef Buffer* cur = a.buf
    cdef bint is_str = a.dtype == DT_STRING
    cdef int64_t need_units = need if is_str else need * isz
    cdef Buffer* prev = NULL
    cdef bint private = cur != NULL and buf_private(cur)
    cdef bint grown = False
    cdef int rc = 0
    cdef string* os
    cdef string* ns
    if cur == NULL or cur.capacity < need_units or not private:
        cap = need_units + need_units * 2 // 5 + (1 if is_str else isz)
        if private and cur.maplen:
            # under the tensor's lock: a fetch pins (increfs) only under it,
            # so the buffer stays unshared while it moves
            tensor_lock(a)
            if fp_load(&cur.refcnt) == 1:
                rc = buf_grow(cur, cap)
                grown = True
            tensor_unlock(a)
            if rc != 0:
                return -1
        if not grown:
            if not is_str and g_append_mapped and cap >= BUF_MAP_MIN:
                nb = buf_new_mapped(cap)
            else:
                nb = buf_new(cap, is_str)
            if nb == NULL:
                return -1
            if is_str:
                os = <string*>cur.data
                ns = <string*>nb.data
                if private:
                    for i in range(old):
                        ns[i].swap(os[i])       # ours alone: move, don't copy
                else:
                    for i in range(old):
                        ns[i] = os[i]
            elif old:
                memcpy(nb.data, cur.data, old * isz)
            tensor_lock(a)
            prev = a.buf
            a.buf = nb
            tensor_unlock(a)
            buf_decref(prev)
    if is_str:
        for i in range(b.size):
            (<string*>a.buf.data)[old + i] = (<string*>b.buf.data)[i]
    elif b.size:
        memcpy(<char*>a.buf.data + old * isz, b.buf.data, b.size * isz)
    tensor_lock(a)
    a.shape[0] += b.shape[0]
    a.size = need
    tensor_unlock(a)
    return 0


cdef int k_atomic_append(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_MUTEX)
    cdef size_t k = op.outs.size(), i
    cdef Tensor* a
    cdef Tensor* b
    cdef int j, rc = 0
    if h == NULL:
        return -1
    fp_lock(&(<Mutex*>h.impl).m)
    for i in range(k):
        a = &op.ins[1 + i].t
        b = in_t(op, ctx, 1 + k + i)
        if b == NULL:
            rc = -1
            break
        if op.ins[1 + i].obj != NULL:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"input '") + op.ins[1 + i].name + cstr(b"' is not a tensor"))
            break
        if b.ndim < 1:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"input '") + op.ins[1 + k + i].name +
                          cstr(b"' must have at least 1 dim to append"))
            break
        if a.dtype != DT_UNDEFINED and not (a.size == 0 and a.ndim > 0 and a.shape[0] == 0):
            if a.dtype != b.dtype or a.ndim != b.ndim:
                rc = op_fails(op, ctx, E_RUNTIME, cstr(b"cannot append ") + tensor_describe(b) + cstr(b" to ") +
                              tensor_describe(a) + cstr(b" ('") + op.ins[1 + i].name + cstr(b"')"))
                break
            for j in range(1, a.ndim):
                if a.shape[j] != b.shape[j]:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"cannot append ") + tensor_describe(b) +
                                  cstr(b" to ") + tensor_describe(a) + cstr(b" ('") + op.ins[1 + i].name + cstr(b"')"))
                    break
            if rc:
                break
    if rc == 0:
        for i in range(k):
            a = &op.ins[1 + i].t
            b = &op.ins[1 + k + i].t
            if a.dtype == DT_UNDEFINED or (a.size == 0 and a.ndim > 0 and a.shape[0] == 0):
                # Caffe2: appending to an empty tensor copies B (any dtype)
                if tensor_copy(a, b) != 0:
                    rc = op_oom(op, ctx)
                    break
            elif tensor_append(a, b) != 0:
                rc = op_oom(op, ctx)
                break
    fp_unlock(&(<Mutex*>h.impl).m)
    return rc
