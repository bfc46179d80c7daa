# Buffers, tensors, blobs and native objects.
#
# A Tensor is a small struct (dtype, dims, size) pointing at a refcounted
# Buffer.  Writers always go through tensor_reshape(), which hands back a
# buffer owned by this tensor alone: when the current buffer is shared (a
# numpy view exported to Python holds a reference) a new one is allocated, so
# memory that Python still sees is never written or recycled.  Reusing a
# large-enough private buffer keeps steady-state loops allocation-free.
#
# A Blob holds either a Tensor or a refcounted native object (queue, counter,
# mutex, timer, cursor, stat registry).  The object pointer is guarded by a
# tiny spinlock so a reader can take a reference while another thread
# replaces the object (CreateBlobsQueue re-run).

from posix.mman cimport (mmap, munmap, mremap, madvise, PROT_READ, PROT_WRITE,
                         MAP_PRIVATE, MAP_ANONYMOUS, MAP_FAILED, MADV_HUGEPAGE)

from fastpipe.errors import ArgumentError, OutOfMemoryError

cdef extern from "<sys/mman.h>" nogil:
    enum: MREMAP_MAYMOVE    # Linux (g++ defines _GNU_SOURCE)

DEF MAX_DIMS = 8
# At most 2^40 elements (and so < 2^44 bytes): beyond that a shape is a bug,
# and products of dims cannot overflow int64.
cdef int64_t MAX_ELEMENTS = (<int64_t>1) << 40

# DataType codes (Caffe2's TensorProto.DataType).
cdef enum:
    DT_UNDEFINED = 0
    DT_FLOAT = 1
    DT_INT32 = 2
    DT_BYTE = 3
    DT_STRING = 4
    DT_BOOL = 5
    DT_UINT8 = 6
    DT_INT8 = 7
    DT_UINT16 = 8
    DT_INT16 = 9
    DT_INT64 = 10
    DT_FLOAT16 = 12
    DT_DOUBLE = 13

# Kinds of native objects a blob can hold.
cdef enum:
    OBJ_COUNTER = 1
    OBJ_MUTEX = 2
    OBJ_QUEUE = 3
    OBJ_TIMER = 4
    OBJ_CURSOR = 5
    OBJ_STATS = 6
    OBJ_TEXT_READER = 7     # textfile.pxi
    OBJ_REBATCH_QUEUE = 8   # rebatch.pxi
    OBJ_TEXT_WRITER = 9     # textwrite.pxi

cdef const char* OBJ_NAMES[10]
OBJ_NAMES[0] = b"tensor"
OBJ_NAMES[1] = b"counter"
OBJ_NAMES[2] = b"mutex"
OBJ_NAMES[3] = b"queue"
OBJ_NAMES[4] = b"timer"
OBJ_NAMES[5] = b"cursor"
OBJ_NAMES[6] = b"stat registry"
OBJ_NAMES[7] = b"text file reader"
OBJ_NAMES[8] = b"rebatching queue"
OBJ_NAMES[9] = b"text file writer"


cdef inline int64_t dtype_itemsize(int dt) noexcept nogil:
    if dt == DT_FLOAT or dt == DT_INT32:
        return 4
    if dt == DT_INT64 or dt == DT_DOUBLE:
        return 8
    if dt == DT_UINT16 or dt == DT_INT16 or dt == DT_FLOAT16:
        return 2
    if dt == DT_STRING:
        return sizeof(string)
    if dt == DT_UNDEFINED:
        return 0
    return 1


cdef const char* dtype_name(int dt) noexcept nogil:
    if dt == DT_FLOAT: return b"float32"
    if dt == DT_INT32: return b"int32"
    if dt == DT_BYTE: return b"byte"
    if dt == DT_STRING: return b"string"
    if dt == DT_BOOL: return b"bool"
    if dt == DT_UINT8: return b"uint8"
    if dt == DT_INT8: return b"int8"
    if dt == DT_UINT16: return b"uint16"
    if dt == DT_INT16: return b"int16"
    if dt == DT_INT64: return b"int64"
    if dt == DT_FLOAT16: return b"float16"
    if dt == DT_DOUBLE: return b"float64"
    return b"undefined"


# ---- Buffer ------------------------------------------------------------------

ctypedef struct Buffer:
    int64_t refcnt      # atomic
    void* data
    int64_t capacity    # bytes (numeric) or element count (strings)
    bint is_str
    # > 0: data is its own anonymous mapping of maplen bytes (a growable
    # buffer, see buf_new_mapped); 0: data follows the header in one block.
    int64_t maplen
    # Borrowed buffers (buf_new_borrowed): data is memory of this Python
    # object (a numpy array), held by one strong reference that the last
    # buf_decref drops.  NULL for buffers the core allocated.  A borrowed
    # buffer is never written: buf_private() is false for it, so every
    # writer (tensor_reshape, AtomicAppend growth) allocates its own.
    PyObject* owner
    # Slice buffers (segments.pxi, buf_new_slice): data lies inside parent's
    # bytes, and the slice holds one reference to parent, dropped with the
    # slice's last reference.  Never written (buf_private() is false).
    Buffer* parent


# Growable buffers (AtomicAppend's outputs) from this size on are their own
# mappings, grown with mremap: the kernel moves page-table entries instead of
# copying bytes, pages already touched stay, and only the new tail faults in
# (in 2 MiB pages where THP allows: lengths are whole 2 MiB units and the
# mapping is madvise(MADV_HUGEPAGE)).  Going around malloc also keeps the rate
# flat across jobs: glibc raises its mmap threshold whenever a big mmapped
# chunk is freed (up to 32 MiB), so after one job later buffers of that size
# would come from the brk heap, where each growth is a fresh chunk plus a copy
# and trimmed pages fault in again.
cdef int64_t BUF_MAP_MIN = 1 << 20
cdef int64_t BUF_MAP_UNIT = 2 << 20


cdef Buffer* buf_new(int64_t n, bint is_str) noexcept nogil:
    """n = bytes, or strings for a string buffer.  NULL when out of memory.

    Header and bytes are one cache-aligned allocation rounded up to whole
    lines: the header sits in its own line and no two buffers share one.
    Records in flight through a queue are many small buffers written on one
    core and read on another; packed back to back by malloc they would
    false-share lines, and whether they did depended on allocation order."""
    cdef int64_t body = (n + 63) // 64 * 64 if n > 0 else 64
    cdef Buffer* b
    if is_str:
        b = <Buffer*>fp_aligned_alloc(64, 64)
    else:
        b = <Buffer*>fp_aligned_alloc(64, 64 + body)
    if b == NULL:
        return NULL
    b.refcnt = 1
    b.is_str = is_str
    b.capacity = n
    b.maplen = 0
    b.owner = NULL
    b.parent = NULL
    if is_str:
        b.data = <void*>fp_str_array_new(n)
        if b.data == NULL:
            free(b)
            return NULL
    else:
        b.data = <void*>((<char*>b) + 64)
        b.capacity = body
    return b


cdef inline void buf_incref(Buffer* b) noexcept nogil:
    if b != NULL:
        fp_fetch_add(&b.refcnt, 1)


cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030D0000
    #define fp_py_finalizing() Py_IsFinalizing()
    #else
    #define fp_py_finalizing() _Py_IsFinalizing()
    #endif
    """
    bint fp_py_finalizing() nogil


cdef void buf_drop_owner(Buffer* b) noexcept nogil:
    """Release a borrowed buffer's Python owner: the last reference may go
    on any thread (a runtime instance, a queue consumer, the workspace's
    teardown), so the GIL is taken here -- the only place a buffer touches
    Python, and only for borrowed buffers.  Callers never hold a native lock
    (ws_clear, tensor_clear and the read ops release after unlocking), so a
    thread that holds the GIL and waits for such a lock cannot deadlock with
    this.  While the interpreter is finalising, taking the GIL from a native
    thread would block forever: the reference is leaked instead (the process
    is exiting; the array's memory goes with it)."""
    cdef PyObject* o = b.owner
    b.owner = NULL
    if o == NULL or fp_py_finalizing():
        return
    with gil:
        Py_DECREF(<object>o)


cdef inline void buf_decref(Buffer* b) noexcept nogil:
    if b != NULL and fp_fetch_add(&b.refcnt, -1) == 1:
        if b.owner != NULL:
            buf_drop_owner(b)
        elif b.parent != NULL:
            buf_decref(b.parent)
        elif b.is_str:
            fp_str_array_delete(<string*>b.data)
        elif b.maplen:
            munmap(b.data, <size_t>b.maplen)
        free(b)


cdef inline bint buf_private(Buffer* b) noexcept nogil:
    """True when b may be written or recycled by its one holder: a single
    reference and memory the core owns (not borrowed from Python)."""
    return fp_load(&b.refcnt) == 1 and b.owner == NULL and b.parent == NULL


cdef inline bint buf_borrowed(Buffer* b) noexcept nogil:
    """True for memory the core must never write whoever holds it: a
    Python object's (buf_new_borrowed) or a slice of another buffer."""
    return b.owner != NULL or b.parent != NULL


cdef Buffer* buf_new_borrowed(void* data, int64_t nbytes, object owner) except NULL:
    """A numeric buffer over ``nbytes`` bytes at ``data``, memory that
    ``owner`` (a numpy array) keeps alive: the buffer takes a strong
    reference to it (so the GIL is held here) and drops it when its last
    reference goes (buf_drop_owner).  The core never writes such a buffer."""
    cdef Buffer* b = <Buffer*>fp_aligned_alloc(64, 64)
    if b == NULL:
        raise OutOfMemoryError("borrowing a buffer")
    b.refcnt = 1
    b.is_str = False
    b.data = data
    b.capacity = nbytes
    b.maplen = 0
    b.parent = NULL
    Py_INCREF(owner)
    b.owner = <PyObject*>owner
    return b


cdef inline int64_t map_len(int64_t n) noexcept nogil:
    return (n + BUF_MAP_UNIT - 1) // BUF_MAP_UNIT * BUF_MAP_UNIT


cdef Buffer* buf_new_mapped(int64_t n) noexcept nogil:
    """A numeric buffer of at least n bytes that buf_grow can grow in place:
    the header is a small block, the bytes an anonymous mapping (whole
    BUF_MAP_UNITs, transparent huge pages requested).  NULL when out of
    memory."""
    cdef int64_t ln = map_len(n if n > 0 else 1)
    cdef Buffer* b = <Buffer*>fp_aligned_alloc(64, 64)
    cdef void* p
    if b == NULL:
        return NULL
    p = mmap(NULL, <size_t>ln, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        free(b)
        return NULL
    madvise(p, <size_t>ln, MADV_HUGEPAGE)   # advice only: without THP it fails harmlessly
    b.refcnt = 1
    b.is_str = False
    b.data = p
    b.capacity = ln
    b.maplen = ln
    b.owner = NULL
    b.parent = NULL
    return b


cdef int buf_grow(Buffer* b, int64_t n) noexcept nogil:
    """Grow a mapped buffer (b.maplen > 0) to at least n bytes, keeping its
    bytes: mremap may move the mapping (b.data changes) but never copies.
    The caller holds the only reference -- and the owning tensor's lock, so
    no fetch can pin the buffer while it moves.  0, or -1 when out of
    memory (b is then unchanged)."""
    cdef int64_t ln = map_len(n)
    cdef void* p
    if ln <= b.maplen:
        return 0
    p = mremap(b.data, <size_t>b.maplen, <size_t>ln, MREMAP_MAYMOVE)
    if p == MAP_FAILED:
        return -1
    madvise(p, <size_t>ln, MADV_HUGEPAGE)
    b.data = p
    b.maplen = ln
    b.capacity = ln
    return 0


# ---- Tensor ------------------------------------------------------------------

ctypedef struct Tensor:
    int dtype               # DT_UNDEFINED: never written
    int ndim
    int64_t shape[MAX_DIMS]
    int64_t size
    Buffer* buf
    # Owner's spinlock (a blob's), or NULL.  Writers that change the header or
    # the buffer hold it, and so does a fetch while it snapshots the header
    # and pins the buffer.  It stays with its place: swaps and clears keep it.
    int64_t* lockp


cdef inline void tensor_lock(Tensor* t) noexcept nogil:
    if t.lockp != NULL:
        while not fp_cas(t.lockp, 0, 1):
            fp_cpu_relax()


cdef inline void tensor_unlock(Tensor* t) noexcept nogil:
    if t.lockp != NULL:
        fp_store(t.lockp, 0)


cdef inline void tensor_init(Tensor* t) noexcept nogil:
    memset(t, 0, sizeof(Tensor))


cdef inline void tensor_clear(Tensor* t) noexcept nogil:
    cdef int64_t* lp = t.lockp
    cdef Buffer* b
    tensor_lock(t)
    b = t.buf
    memset(t, 0, sizeof(Tensor))
    t.lockp = lp
    tensor_unlock(t)
    buf_decref(b)


cdef inline void tensor_snapshot(Tensor* t, Tensor* out) noexcept nogil:
    """A consistent copy of t's header whose buffer is pinned (one reference
    the caller releases), safe while another thread reshapes t."""
    tensor_lock(t)
    out[0] = t[0]
    buf_incref(out.buf)
    tensor_unlock(t)
    out.lockp = NULL


cdef inline void* tdata(Tensor* t) noexcept nogil:
    return t.buf.data if t.buf != NULL else NULL


cdef inline int64_t tensor_nbytes(Tensor* t) noexcept nogil:
    return t.size * dtype_itemsize(t.dtype)


cdef int tensor_reshape_hold(Tensor* t, int dtype, int ndim, const int64_t* shape,
                             Buffer** old) noexcept nogil:
    """Make t a tensor of this dtype and shape backed by a private buffer.

    Keeps the current buffer (and its bytes) when it is private, of the same
    kind and large enough -- so an op whose output is also its input works
    in place.  When a new buffer is needed, the previous one is handed to
    the caller in *old (to release with buf_decref once it has read its
    inputs) instead of being freed.  Returns 0, or -1 when out of memory,
    -2 for too many dims, -3 for a negative dim."""
    cdef int64_t size = 1
    cdef int i
    cdef Buffer* cur = t.buf
    old[0] = NULL
    # Fast path: same dtype and dims, private buffer -> nothing to do.
    if cur != NULL and t.dtype == dtype and t.ndim == ndim and buf_private(cur):
        i = 0
        while i < ndim and t.shape[i] == shape[i]:
            i += 1
        if i == ndim:
            return 0
    if ndim > MAX_DIMS or ndim < 0:
        return -2
    for i in range(ndim):
        if shape[i] < 0:
            return -3
        if fp_mul_overflow(size, shape[i], &size) or size > MAX_ELEMENTS:
            return -4
    cdef bint is_str = dtype == DT_STRING
    cdef int64_t need = size if is_str else size * dtype_itemsize(dtype)
    cdef Buffer* b = t.buf
    if b == NULL or b.is_str != is_str or b.capacity < need or not buf_private(b):
        b = buf_new(need, is_str)
        if b == NULL:
            return -1
    else:
        b = NULL
    # the header (and buffer) change under the owner's lock: a concurrent
    # fetch sees the old or the new tensor, never a mix
    tensor_lock(t)
    if b != NULL:
        old[0] = t.buf
        t.buf = b
    t.dtype = dtype
    t.ndim = ndim
    for i in range(ndim):
        t.shape[i] = shape[i]
    t.size = size
    tensor_unlock(t)
    return 0


cdef int tensor_reshape(Tensor* t, int dtype, int ndim, const int64_t* shape) noexcept nogil:
    """tensor_reshape_hold for writers that do not read t's old content."""
    cdef Buffer* old
    cdef int rc = tensor_reshape_hold(t, dtype, ndim, shape, &old)
    buf_decref(old)
    return rc


cdef inline int tensor_scalar(Tensor* t, int dtype) noexcept nogil:
    return tensor_reshape(t, dtype, 0, NULL)


cdef int tensor_copy(Tensor* dst, Tensor* src) noexcept nogil:
    """Deep copy src into dst (dst may be src: then nothing happens)."""
    cdef int64_t i
    cdef string* ss
    cdef string* ds
    cdef Buffer* keep
    if dst == src:
        return 0
    if src.dtype == DT_UNDEFINED:
        tensor_clear(dst)
        return 0
    keep = src.buf
    buf_incref(keep)  # src and dst could share a buffer
    if tensor_reshape(dst, src.dtype, src.ndim, src.shape) != 0:
        buf_decref(keep)
        return -1
    if src.dtype == DT_STRING:
        ss = <string*>keep.data
        ds = <string*>dst.buf.data
        for i in range(src.size):
            ds[i] = ss[i]
    elif src.size > 0:
        memcpy(dst.buf.data, keep.data, src.size * dtype_itemsize(src.dtype))
    buf_decref(keep)
    return 0


cdef inline void tensor_swap(Tensor* a, Tensor* b) noexcept nogil:
    """Exchange two tensors' contents (the places keep their locks).  Not
    locked: a queue op swapping a blob while Python fetches that very blob
    is a race, as in Caffe2 -- see the threading contract in README."""
    cdef Tensor tmp = a[0]
    cdef int64_t* la = a.lockp
    cdef int64_t* lb = b.lockp
    a[0] = b[0]
    b[0] = tmp
    a.lockp = la
    b.lockp = lb


cdef string tensor_describe(Tensor* t) noexcept nogil:
    cdef string s = string(dtype_name(t.dtype))
    cdef int i
    cdef char tmp[32]
    s.append(b"[")
    for i in range(t.ndim):
        if i:
            s.append(b", ")
        snprintf(tmp, 32, b"%lld", <long long>t.shape[i])
        s.append(<const char*>tmp)
    s.append(b"]")
    return s


# ---- native objects ----------------------------------------------------------

ctypedef void (*obj_destroy_fn)(void* impl) noexcept nogil

ctypedef struct ObjHeader:
    int64_t refcnt       # atomic
    int kind
    void* impl
    obj_destroy_fn destroy


cdef ObjHeader* obj_new(int kind, void* impl, obj_destroy_fn destroy) noexcept nogil:
    cdef ObjHeader* h = <ObjHeader*>malloc(sizeof(ObjHeader))
    if h == NULL:
        destroy(impl)
        return NULL
    h.refcnt = 1
    h.kind = kind
    h.impl = impl
    h.destroy = destroy
    return h


cdef inline void obj_incref(ObjHeader* h) noexcept nogil:
    if h != NULL:
        fp_fetch_add(&h.refcnt, 1)


cdef inline void obj_decref(ObjHeader* h) noexcept nogil:
    if h != NULL and fp_fetch_add(&h.refcnt, -1) == 1:
        h.destroy(h.impl)
        free(h)


# ---- Blob --------------------------------------------------------------------

cdef cppclass Blob:
    Tensor t
    ObjHeader* obj      # guarded by objlock; NULL when the blob holds a tensor
    int64_t objlock     # spinlock (0 free, 1 held) guarding obj
    int64_t tlock       # spinlock guarding t's header/buffer changes (t.lockp)
    string name


cdef inline void blob_lock(Blob* b) noexcept nogil:
    while not fp_cas(&b.objlock, 0, 1):
        fp_cpu_relax()


cdef inline void blob_unlock(Blob* b) noexcept nogil:
    fp_store(&b.objlock, 0)


cdef Blob* blob_new(const string& name) noexcept nogil:
    cdef Blob* b = new Blob()
    tensor_init(&b.t)
    b.obj = NULL
    b.objlock = 0
    b.t.lockp = &b.tlock
    b.tlock = 0
    b.name = name
    return b


cdef void blob_free(Blob* b) noexcept nogil:
    tensor_clear(&b.t)
    obj_decref(b.obj)
    del b


cdef ObjHeader* blob_get_obj(Blob* b) noexcept nogil:
    """A new reference to the blob's object, or NULL."""
    cdef ObjHeader* h
    blob_lock(b)
    h = b.obj
    obj_incref(h)
    blob_unlock(b)
    return h


cdef void blob_set_obj(Blob* b, ObjHeader* h) noexcept nogil:
    """Store h (steals the reference) in b, dropping any tensor or object."""
    cdef ObjHeader* old
    blob_lock(b)
    old = b.obj
    b.obj = h
    blob_unlock(b)
    tensor_clear(&b.t)
    obj_decref(old)


cdef inline Tensor* blob_out(Blob* b) noexcept nogil:
    """The blob's tensor, for writing (drops an object it held, as Caffe2's
    GetMutable does on a type change)."""
    if b.obj != NULL:
        blob_set_obj(b, NULL)
    return &b.t


cdef inline string cstr(const char* s) noexcept nogil:
    return string(s)


cdef inline string to_str(int64_t v) noexcept nogil:
    cdef char tmp[32]
    snprintf(tmp, 32, b"%lld", <long long>v)
    return string(<const char*>tmp)


# ---- kernel argument tables ------------------------------------------------------
#
# A kernel reads its parsed arguments by position (op.d.args[k]), and the
# positions are the order of the op's ArgSpecs in _opschema.py.  Kernels never
# write a bare number: each op has a `cdef enum` of named positions next to its
# kernel, and declares them here with the field it reads, e.g.
#     kernel_args("Scale", scale=(SCALE_SCALE, "float"))
# register.pxi checks every table against the schemas when the module is
# imported, so reordering, renaming or adding an ArgSpec without updating the
# kernel fails loudly at import instead of silently reading the wrong slot.

# op type -> {argument name: (position, schema kind)}
_KERNEL_ARGS = {}


def kernel_args(op_type, **args):
    """Declare the named argument positions a kernel reads (see above)."""
    if op_type in _KERNEL_ARGS:
        raise ArgumentError("kernel argument table of %r declared twice" % (op_type,))
    _KERNEL_ARGS[op_type] = dict(args)
