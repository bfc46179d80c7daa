# Rebatching queues (Caffe2's RebatchingQueue, caffe2/queue/rebatching_queue.cc).
#
# A bounded ring of `capacity` records of `nblobs` tensors.  Unlike the blob
# queue this one must copy bytes: EnqueueRebatchingQueue with enqueue_batch
# splits each input along dim 0 into one record per row, and
# DequeueRebatchingQueue concatenates up to num_elements records along a new
# dim 0.  The copies (memcpy per row; element-wise for strings) happen in the
# op's own scratch tensors outside the lock; under the lock records only
# *swap* between the scratch and the ring, so buffers circulate and a steady
# loop does not allocate.
#
# Semantics (Caffe2):
# - enqueue blocks while full; once closed it fails (a batch cut by close
#   keeps the rows already enqueued and fails, as in Caffe2);
# - dequeue blocks until it has num_elements records or the queue is closed;
#   after close it returns what remains (a partial batch), and fails once
#   closed and empty;
# - records in one dequeue must agree in dtype and shape.
#
# Locking: `mu` protects everything below it in RebatchQueue except
# `cancelled_by` (an atomic, also read without the lock).  The condition
# variables are signalled only when the waiter counts say someone waits.
# A failed run closes every queue it registered (rs_register_queue ->
# queue_cancel_obj -> rq_cancel_obj), which wakes every waiter.


cdef cppclass RebatchQueue:
    int64_t capacity        # records held at most (>= 1)
    int64_t nblobs          # tensors per record
    string name
    Tensor* ring            # capacity * nblobs tensors; record at position p is ring[(p % capacity) * nblobs]
    int64_t cancelled_by    # atomic: id of the failed run whose cancel closed it (0: none)
    fp_mutex mu             # protects wpos, rpos, closed, the ring's tensors, the waiter counts
    int64_t wpos            # records written (monotonic)
    int64_t rpos            # records read (monotonic)
    bint closed
    int64_t wait_readers
    int64_t wait_writers
    fp_cond not_empty       # waited on by readers (rpos == wpos)
    fp_cond not_full        # waited on by writers (wpos - rpos == capacity)


cdef void rq_destroy(void* p) noexcept nogil:
    cdef RebatchQueue* q = <RebatchQueue*>p
    cdef int64_t i
    for i in range(q.capacity * q.nblobs):
        tensor_clear(&q.ring[i])
    free(q.ring)
    fp_mutex_destroy(&q.mu)
    fp_cond_destroy(&q.not_empty)
    fp_cond_destroy(&q.not_full)
    del q


cdef RebatchQueue* rq_new(int64_t capacity, int64_t nblobs) noexcept nogil:
    cdef RebatchQueue* q = new RebatchQueue()
    q.ring = <Tensor*>calloc(capacity * nblobs, sizeof(Tensor))
    if q.ring == NULL:
        del q
        return NULL
    q.capacity = capacity
    q.nblobs = nblobs
    q.wpos = q.rpos = 0
    q.closed = False
    q.wait_readers = q.wait_writers = 0
    q.cancelled_by = 0
    fp_mutex_init(&q.mu)
    fp_cond_init(&q.not_empty)
    fp_cond_init(&q.not_full)
    return q


cdef void rq_close(RebatchQueue* q) noexcept nogil:
    fp_lock(&q.mu)
    q.closed = True
    fp_broadcast(&q.not_empty)
    fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)


cdef void rq_cancel_obj(ObjHeader* h, int64_t run_id) noexcept nogil:
    """Close a rebatching queue because run `run_id` failed (called from
    queue_cancel_obj).  A queue closed on purpose before the failure keeps
    no mark: it was closed anyway."""
    cdef RebatchQueue* q = <RebatchQueue*>h.impl
    fp_lock(&q.mu)
    if not q.closed:
        fp_cas(&q.cancelled_by, 0, run_id)
        q.closed = True
        fp_broadcast(&q.not_empty)
        fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)


cdef int rq_push(RebatchQueue* q, Tensor* recs, int64_t rows) noexcept nogil:
    """Move rows records (recs[r * nblobs + j]) into the ring, blocking while
    full.  Q_CLOSED when the queue is (or becomes) closed: the records moved
    before that stay in the queue (Caffe2).  Swaps: recs gets the ring's old
    tensors back (buffers to reuse)."""
    cdef int64_t idx = 0, j, n = q.nblobs
    cdef Tensor* slot
    fp_lock(&q.mu)
    while idx < rows:
        while not q.closed and q.wpos - q.rpos >= q.capacity:
            q.wait_writers += 1
            fp_wait(&q.not_full, &q.mu)
            q.wait_writers -= 1
        if q.closed:
            fp_unlock(&q.mu)
            return Q_CLOSED
        while idx < rows and q.wpos - q.rpos < q.capacity:
            slot = q.ring + (q.wpos % q.capacity) * n
            for j in range(n):
                tensor_swap(&slot[j], &recs[idx * n + j])
            q.wpos += 1
            idx += 1
        if q.wait_readers > 0:
            fp_broadcast(&q.not_empty)
    fp_unlock(&q.mu)
    return Q_OK


cdef int64_t rq_pop(RebatchQueue* q, Tensor* recs, int64_t want) noexcept nogil:
    """Move up to `want` records out of the ring into recs, blocking until
    there are `want` or the queue is closed.  Returns how many (0: closed and
    empty)."""
    cdef int64_t got = 0, j, n = q.nblobs
    cdef Tensor* slot
    fp_lock(&q.mu)
    while got < want:
        while q.rpos == q.wpos and not q.closed:
            q.wait_readers += 1
            fp_wait(&q.not_empty, &q.mu)
            q.wait_readers -= 1
        if q.rpos == q.wpos:
            break                   # closed and drained
        while got < want and q.rpos < q.wpos:
            slot = q.ring + (q.rpos % q.capacity) * n
            for j in range(n):
                tensor_swap(&recs[got * n + j], &slot[j])
            q.rpos += 1
            got += 1
        if q.wait_writers > 0:
            fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)
    return got


cdef int64_t rq_pop_until(RebatchQueue* q, Tensor* recs, int64_t want, int64_t until_ns,
                          bint* drained) noexcept nogil:
    """rq_pop for a RecordIterator: gives up at until_ns (monotonic ns) with
    what it has.  *drained: the queue is closed and empty."""
    cdef int64_t got = 0, j, n = q.nblobs
    cdef Tensor* slot
    cdef bint timed_out = False
    drained[0] = False
    fp_lock(&q.mu)
    while got < want:
        while q.rpos == q.wpos and not q.closed and not timed_out:
            q.wait_readers += 1
            timed_out = fp_wait_until(&q.not_empty, &q.mu, until_ns)
            q.wait_readers -= 1
        if q.rpos == q.wpos:
            drained[0] = q.closed
            break
        while got < want and q.rpos < q.wpos:
            slot = q.ring + (q.rpos % q.capacity) * n
            for j in range(n):
                tensor_swap(&recs[got * n + j], &slot[j])
            q.rpos += 1
            got += 1
        if q.wait_writers > 0:
            fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)
    return got


# ---- ops -----------------------------------------------------------------------

cdef enum:
    CRQ_CAPACITY = 0            # CreateRebatchingQueue
    CRQ_NUM_BLOBS = 1
    ERQ_ENQUEUE_BATCH = 0       # EnqueueRebatchingQueue
    DRQ_NUM_ELEMENTS = 0        # DequeueRebatchingQueue
kernel_args("CreateRebatchingQueue", capacity=(CRQ_CAPACITY, "int"),
            num_blobs=(CRQ_NUM_BLOBS, "int"))
kernel_args("EnqueueRebatchingQueue", enqueue_batch=(ERQ_ENQUEUE_BATCH, "bool"))
kernel_args("DequeueRebatchingQueue", num_elements=(DRQ_NUM_ELEMENTS, "int"))


ctypedef struct RqOpState:
    Tensor* scratch             # records being built (enqueue) or gathered (dequeue)
    int64_t nscratch            # tensors in scratch


cdef int rq_op_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    op.state = calloc(1, sizeof(RqOpState))
    if op.state == NULL:
        return op_oom(op, ctx)
    return 0


cdef void rq_op_fini(OpInst* op) noexcept nogil:
    cdef RqOpState* s = <RqOpState*>op.state
    cdef int64_t i
    if s == NULL:
        return
    for i in range(s.nscratch):
        tensor_clear(&s.scratch[i])
    free(s.scratch)
    free(s)
    op.state = NULL


cdef Tensor* rq_scratch(RqOpState* s, int64_t n) noexcept nogil:
    """At least n scratch tensors (grown zeroed; existing ones keep their buffers)."""
    cdef Tensor* p
    if n > s.nscratch:
        p = <Tensor*>realloc(s.scratch, n * sizeof(Tensor))
        if p == NULL:
            return NULL
        memset(&p[s.nscratch], 0, (n - s.nscratch) * sizeof(Tensor))
        s.scratch = p
        s.nscratch = n
    return s.scratch


cdef RebatchQueue* rq_op_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    """Input 0 as a rebatching queue, registered with this run so that a
    failure anywhere closes it (waking every waiter)."""
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_REBATCH_QUEUE)
    cdef int64_t by
    if h == NULL:
        return NULL
    if op.obj_run[0] != ctx.rs.run_id:
        by = fp_load(&(<RebatchQueue*>h.impl).cancelled_by)
        if by != 0 and by != ctx.rs.run_id:
            op_fails(op, ctx, E_RUNTIME, cstr(b"rebatching queue '") +
                     (<RebatchQueue*>h.impl).name +
                     cstr(b"' was closed when an earlier run failed; create it again "
                          b"(CreateRebatchingQueue) before using it in a new run"))
            return NULL
        rs_register_queue(ctx.rs, h)
        op.obj_run[0] = ctx.rs.run_id
    return <RebatchQueue*>h.impl


cdef int k_create_rebatching_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef int64_t cap = a[0][CRQ_CAPACITY].i if a[0][CRQ_CAPACITY].present else 1
    cdef int64_t nb = a[0][CRQ_NUM_BLOBS].i if a[0][CRQ_NUM_BLOBS].present else 1
    cdef RebatchQueue* q
    cdef ObjHeader* h
    if cap < 1 or nb < 1:       # the schema rejects these at build time
        return op_fail(op, ctx, E_RUNTIME, b"capacity and num_blobs must be >= 1")
    q = rq_new(cap, nb)
    if q == NULL:
        return op_oom(op, ctx)
    q.name = op.d.outputs[0]
    h = obj_new(OBJ_REBATCH_QUEUE, q, rq_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef int rq_copy_row(Tensor* dst, Tensor* src, int64_t row, int64_t inner) noexcept nogil:
    """dst = row `row` of src (src.shape[1:]); inner = elements per row."""
    cdef int64_t i
    cdef string* ss
    cdef string* ds
    if tensor_reshape(dst, src.dtype, src.ndim - 1, &src.shape[1]) != 0:
        return -1
    if src.dtype == DT_STRING:
        ss = (<string*>tdata(src)) + row * inner
        ds = <string*>tdata(dst)
        for i in range(inner):
            ds[i] = ss[i]
    elif inner > 0:
        memcpy(tdata(dst), <char*>tdata(src) + row * inner * dtype_itemsize(src.dtype),
               inner * dtype_itemsize(src.dtype))
    return 0


cdef int k_enqueue_rebatching_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef RebatchQueue* q = rq_op_queue(op, ctx)
    cdef int64_t n = <int64_t>op.ins.size() - 1
    cdef bint batch = op.d.args[ERQ_ENQUEUE_BATCH].present and op.d.args[ERQ_ENQUEUE_BATCH].i != 0
    cdef int64_t rows = 1, r, j, inner
    cdef Tensor* t
    cdef Tensor* first = NULL
    cdef Tensor* recs
    cdef int rc
    if q == NULL:
        return -1
    if n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"rebatching queue '") + q.name +
                        cstr(b"' holds ") + to_str(q.nblobs) +
                        cstr(b" blobs per record, but the op has ") + to_str(n) +
                        cstr(b" data inputs"))
    if ctx.rs.track != NULL:
        # provenance tags (runtime.pxi) do not follow rows split off a batch
        fp_track_note_untracked(ctx.rs.track, op_where(op, ctx) + cstr(b" enqueues into "
                                b"rebatching queue '") + q.name + cstr(b"', which splits and "
                                b"regroups records: exact resume cannot follow them"))
        fp_tags_clear()
    for j in range(n):
        t = in_t(op, ctx, 1 + j)
        if t == NULL:
            return -1
        if batch:
            if t.ndim < 1:
                return op_fails(op, ctx, E_RUNTIME, cstr(b"input ") + to_str(1 + j) +
                                cstr(b" ('") + op.ins[1 + j].name + cstr(b"') is ") +
                                tensor_describe(t) +
                                cstr(b"; enqueue_batch splits inputs along dim 0, so each "
                                     b"needs at least 1 dim"))
            if first == NULL:
                first = t
                rows = t.shape[0]
            elif t.shape[0] != rows:
                return op_fails(op, ctx, E_RUNTIME, cstr(b"with enqueue_batch every input "
                                b"must have the same dim 0: input 1 ('") + op.ins[1].name +
                                cstr(b"') is ") + tensor_describe(first) + cstr(b" but input ") +
                                to_str(1 + j) + cstr(b" ('") + op.ins[1 + j].name +
                                cstr(b"') is ") + tensor_describe(t))
    recs = rq_scratch(<RqOpState*>op.state, rows * n)
    if recs == NULL and rows * n > 0:
        return op_oom(op, ctx)
    for j in range(n):
        t = &op.ins[1 + j].t
        if batch:
            inner = t.size // rows if rows > 0 else 0
            for r in range(rows):
                if rq_copy_row(&recs[r * n + j], t, r, inner) != 0:
                    return op_oom(op, ctx)
        elif tensor_copy(&recs[j], t) != 0:
            return op_oom(op, ctx)
    if rows == 0:
        return 0
    rc = rq_push(q, recs, rows)
    if rc == Q_OK:
        return 0
    if rs_cancelled(ctx):
        return -1
    return op_fails(op, ctx, E_QUEUE_CLOSED, cstr(b"rebatching queue '") + q.name +
                    cstr(b"' is closed; the record was not enqueued"))


cdef int k_dequeue_rebatching_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef RebatchQueue* q = rq_op_queue(op, ctx)
    cdef int64_t n = <int64_t>op.outs.size()
    cdef int64_t want = (op.d.args[DRQ_NUM_ELEMENTS].i
                         if op.d.args[DRQ_NUM_ELEMENTS].present else 1)
    cdef int64_t got, j, k, d, isz, i, per
    cdef Tensor* recs
    cdef Tensor* first
    cdef Tensor* r
    cdef Tensor* out
    cdef string* ss
    cdef string* ds
    cdef char* dst
    cdef int64_t shape[MAX_DIMS]
    if q == NULL:
        return -1
    if n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"rebatching queue '") + q.name +
                        cstr(b"' holds ") + to_str(q.nblobs) +
                        cstr(b" blobs per record, but the op has ") + to_str(n) + cstr(b" outputs"))
    if want < 1:                # the schema rejects this at build time
        return op_fail(op, ctx, E_RUNTIME, b"num_elements must be >= 1")
    recs = rq_scratch(<RqOpState*>op.state, want * n)
    if recs == NULL:
        return op_oom(op, ctx)
    got = rq_pop(q, recs, want)
    if rs_cancelled(ctx):
        return -1
    if got == 0:
        return op_fails(op, ctx, E_QUEUE_CLOSED, cstr(b"rebatching queue '") + q.name +
                        cstr(b"' is closed and empty"))
    for j in range(n):
        first = &recs[j]
        for k in range(1, got):
            r = &recs[k * n + j]
            if r.dtype != first.dtype or r.ndim != first.ndim:
                return rq_mismatch(op, ctx, q, j, k, r, first)
            for d in range(r.ndim):
                if r.shape[d] != first.shape[d]:
                    return rq_mismatch(op, ctx, q, j, k, r, first)
        if first.ndim + 1 > MAX_DIMS:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"rebatching queue '") + q.name +
                            cstr(b"': column ") + to_str(j) + cstr(b" is ") +
                            tensor_describe(first) +
                            cstr(b"; a batch of it would have more than 8 dims"))
        shape[0] = got
        for d in range(first.ndim):
            shape[d + 1] = first.shape[d]
        out = blob_out(op.outs[j])
        if out_shape(op, ctx, out, first.dtype, first.ndim + 1, shape) != 0:
            return -1
        per = first.size
        if first.dtype == DT_STRING:
            ds = <string*>tdata(out)
            for k in range(got):
                ss = <string*>tdata(&recs[k * n + j])
                for i in range(per):
                    ds[k * per + i] = ss[i]
        elif per > 0:
            isz = dtype_itemsize(first.dtype) * per
            dst = <char*>tdata(out)
            for k in range(got):
                memcpy(dst + k * isz, tdata(&recs[k * n + j]), isz)
    return 0


cdef int rq_mismatch(OpInst* op, RunCtx* ctx, RebatchQueue* q, int64_t j, int64_t k,
                     Tensor* r, Tensor* first) noexcept nogil:
    return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot batch records of rebatching queue '") +
                    q.name + cstr(b"': column ") + to_str(j) + cstr(b" is ") +
                    tensor_describe(r) + cstr(b" in record ") + to_str(k) + cstr(b" but ") +
                    tensor_describe(first) + cstr(b" in record 0 of the same dequeue"))


cdef int k_close_rebatching_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef RebatchQueue* q = rq_op_queue(op, ctx)
    if q == NULL:
        return -1
    rq_close(q)
    return 0
