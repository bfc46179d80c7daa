# Bounded blob queues, stats and timers.
#
# A queue is a ring of `capacity` records of `nblobs` tensors, owned by the
# queue (no workspace blobs).  Enqueue and dequeue *swap* tensors between the
# caller's blobs and a slot, so a record moves without copying bytes; a
# buffer that a numpy view still references is never written again, because
# writers always go through tensor_reshape (copy-on-shared).
#
# Locking: one mutex per queue protects the ring, the counters and the
# stats; `closed` is also read without the lock while spinning.  Two
# condition variables (not_empty, not_full) are signalled only when someone
# waits on them.  A waiter spins briefly before parking, because a
# cross-core wake-up costs ~40 us here while a spin handoff costs ~70 ns.

DEF SPIN_ROUNDS = 400


cdef cppclass Queue:
    fp_mutex mu             # protects everything below (closed: also read racily)
    fp_cond not_empty
    fp_cond not_full
    int64_t wait_readers
    int64_t wait_writers
    int64_t capacity
    int64_t nblobs
    Tensor* slots           # capacity * nblobs
    int64_t head            # records read (monotonic)
    int64_t tail            # records written (monotonic)
    int64_t closed          # atomic flag
    bint strict             # reject every write after close
    string name
    vector[string] fields
    # stats (Caffe2 keys under <name>/...), guarded by mu
    int64_t st_balance
    int64_t st_records
    int64_t st_bytes
    int64_t st_read_ns
    int64_t st_read_n
    int64_t st_write_ns
    int64_t st_write_n
    vector[int64_t] st_field_bytes


cdef void queue_destroy(void* p) noexcept nogil:
    cdef Queue* q = <Queue*>p
    cdef int64_t i
    live_queue_remove(q)
    for i in range(q.capacity * q.nblobs):
        tensor_clear(&q.slots[i])
    free(q.slots)
    fp_mutex_destroy(&q.mu)
    fp_cond_destroy(&q.not_empty)
    fp_cond_destroy(&q.not_full)
    del q


cdef Queue* queue_new(int64_t capacity, int64_t nblobs, bint strict) noexcept nogil:
    cdef Queue* q = new Queue()
    q.slots = <Tensor*>calloc(capacity * nblobs, sizeof(Tensor))
    if q.slots == NULL:
        del q
        return NULL
    fp_mutex_init(&q.mu)
    fp_cond_init(&q.not_empty)
    fp_cond_init(&q.not_full)
    q.wait_readers = 0
    q.wait_writers = 0
    q.capacity = capacity
    q.nblobs = nblobs
    q.head = 0
    q.tail = 0
    q.closed = 0
    q.strict = strict
    q.st_balance = q.st_records = q.st_bytes = 0
    q.st_read_ns = q.st_read_n = q.st_write_ns = q.st_write_n = 0
    q.st_field_bytes.resize(nblobs, 0)
    return q


cdef void queue_close(Queue* q) noexcept nogil:
    fp_lock(&q.mu)
    fp_store(&q.closed, 1)
    fp_broadcast(&q.not_empty)
    fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)


cdef void queue_close_obj(ObjHeader* h) noexcept nogil:
    if h != NULL and h.kind == OBJ_QUEUE:
        queue_close(<Queue*>h.impl)


cdef inline bint spin_until_ready(Queue* q, bint reading) noexcept nogil:
    """Spin (lock not held) until the queue looks ready for this side or
    closed.  Returns whether it looked ready."""
    cdef int k
    for k in range(SPIN_ROUNDS):
        if fp_load_relaxed(&q.closed):
            return True
        if reading:
            if fp_load_relaxed(&q.tail) != fp_load_relaxed(&q.head):
                return True
        else:
            if fp_load_relaxed(&q.tail) - fp_load_relaxed(&q.head) < q.capacity:
                return True
        fp_cpu_relax()
    return False


# Results of queue_write / queue_read.
cdef enum:
    Q_OK = 0
    Q_CLOSED = 1
    Q_TIMEOUT = 2


cdef int queue_write(Queue* q, Blob** blobs, int64_t n) noexcept nogil:
    """Blocking write of one record: swaps blobs[j]'s tensor into the slot.
    Q_CLOSED when the queue is closed and full (Caffe2), or closed at all
    with strict close.  The caller checked n == q.nblobs and that every blob
    holds a tensor."""
    cdef int64_t j, base
    cdef int64_t t0 = 0
    fp_lock(&q.mu)
    q.st_balance += 1
    if q.tail - q.head >= q.capacity and not q.closed:
        t0 = fp_now_ns()
        fp_unlock(&q.mu)
        spin_until_ready(q, False)
        fp_lock(&q.mu)
        while q.tail - q.head >= q.capacity and not q.closed:
            q.wait_writers += 1
            fp_wait(&q.not_full, &q.mu)
            q.wait_writers -= 1
    if q.closed and (q.strict or q.tail - q.head >= q.capacity):
        fp_unlock(&q.mu)
        return Q_CLOSED
    base = (q.tail % q.capacity) * q.nblobs
    for j in range(n):
        tensor_swap(&q.slots[base + j], &blobs[j].t)
    fp_store(&q.tail, q.tail + 1)
    q.st_write_n += 1
    if t0:
        q.st_write_ns += fp_now_ns() - t0
    if q.wait_readers:
        fp_signal(&q.not_empty)
    fp_unlock(&q.mu)
    return Q_OK


cdef int queue_read(Queue* q, Tensor* outs, int64_t n, int64_t max_records,
                    int64_t timeout_ns, int64_t* got) noexcept nogil:
    """Blocking read of up to max_records records (at least one unless the
    queue is closed and empty or the wait times out).  Record k's tensor j is
    swapped into outs[k * n + j].  Readers drain what remains after close."""
    cdef int64_t j, k, base, avail, take
    cdef int64_t t0 = 0
    cdef int64_t deadline = 0
    cdef int rc = Q_OK
    got[0] = 0
    fp_lock(&q.mu)
    q.st_balance -= 1
    while True:
        avail = q.tail - q.head
        if avail > 0:
            take = avail if avail < max_records - got[0] else max_records - got[0]
            for k in range(take):
                base = (q.head % q.capacity) * q.nblobs
                for j in range(n):
                    if q.slots[base + j].dtype == DT_STRING:
                        q.st_field_bytes[j] += string_bytes(&q.slots[base + j])
                        q.st_bytes += string_bytes(&q.slots[base + j])
                    else:
                        q.st_field_bytes[j] += tensor_nbytes(&q.slots[base + j])
                        q.st_bytes += tensor_nbytes(&q.slots[base + j])
                    tensor_swap(&q.slots[base + j], &outs[(got[0] + k) * n + j])
                fp_store(&q.head, q.head + 1)
            got[0] += take
            q.st_records += take
            if q.wait_writers:
                if take > 1:
                    fp_broadcast(&q.not_full)
                else:
                    fp_signal(&q.not_full)
            if got[0] >= max_records:
                break
            continue
        if q.closed:
            break
        if got[0] > 0 and max_records > 1:
            pass  # a batch waits for more records until full or closed
        if deadline == 0 and timeout_ns > 0:
            deadline = fp_now_ns() + timeout_ns
        if t0 == 0:
            t0 = fp_now_ns()
        fp_unlock(&q.mu)
        spin_until_ready(q, True)
        fp_lock(&q.mu)
        if q.tail != q.head or q.closed:
            continue
        q.wait_readers += 1
        if timeout_ns > 0:
            if fp_wait_until(&q.not_empty, &q.mu, deadline) and q.tail == q.head and not q.closed:
                q.wait_readers -= 1
                rc = Q_TIMEOUT
                break
        else:
            fp_wait(&q.not_empty, &q.mu)
        q.wait_readers -= 1
    if got[0] > 0:
        q.st_read_n += 1
        if t0:
            q.st_read_ns += fp_now_ns() - t0
        rc = Q_OK
    elif rc == Q_OK:
        rc = Q_CLOSED
    fp_unlock(&q.mu)
    return rc


cdef int64_t string_bytes(Tensor* t) noexcept nogil:
    cdef int64_t i, s = 0
    cdef string* p = <string*>tdata(t)
    for i in range(t.size):
        s += p[i].size()
    return s


# ---- queue ops -------------------------------------------------------------------

cdef int k_create_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    # args: capacity, num_blobs, enforce_unique_name, field_names, strict_close
    cdef vector[ArgVal]* a = &op.d.args
    cdef Queue* q = queue_new(a[0][0].i, a[0][1].i, a[0][4].present and a[0][4].i != 0)
    if q == NULL:
        return op_oom(op, ctx)
    q.name = op.d.outputs[0]
    q.fields = a[0][3].strings
    live_queue_add(q)
    cdef ObjHeader* h = obj_new(OBJ_QUEUE, q, queue_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef Queue* op_queue(OpInst* op, RunCtx* ctx, size_t i) noexcept nogil:
    """Input i as a queue, registered with this run so that a failure
    anywhere closes it (waking every waiter)."""
    cdef ObjHeader* h = op_obj(op, ctx, i, OBJ_QUEUE)
    if h == NULL:
        return NULL
    if op.obj_run[i] != ctx.rs.run_id:
        rs_register_queue(ctx.rs, h)
        op.obj_run[i] = ctx.rs.run_id
    return <Queue*>h.impl


cdef int check_record(OpInst* op, RunCtx* ctx, Queue* q, size_t first, size_t n) noexcept nogil:
    """Inputs first..first+n-1 form one record for q."""
    cdef size_t j
    cdef Blob* b
    if <int64_t>n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"queue '") + q.name + cstr(b"' holds ") +
                        to_str(q.nblobs) + cstr(b" blobs per record, got ") + to_str(n))
    for j in range(n):
        b = op.ins[first + j]
        if b.obj != NULL:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"blob '") + b.name +
                            cstr(b"' holds a ") + cstr(OBJ_NAMES[b.obj.kind]) +
                            cstr(b"; only tensors can be enqueued"))
        if b.t.dtype == DT_UNDEFINED:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"blob '") + b.name +
                            cstr(b"' has no value yet; only written tensors can be enqueued"))
    return 0


cdef int k_enqueue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.ins.size() - 1
    if q == NULL or check_record(op, ctx, q, 1, n) != 0:
        return -1
    if queue_write(q, &op.ins[1], n) != Q_OK:
        if rs_cancelled(ctx):
            return -1
        return op_fails(op, ctx, E_QUEUE_CLOSED, cstr(b"queue '") + q.name +
                        cstr(b"' is closed; the record was not enqueued"))
    return 0


cdef int k_safe_enqueue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.ins.size() - 1
    cdef int r
    if q == NULL or check_record(op, ctx, q, 1, n) != 0:
        return -1
    r = queue_write(q, &op.ins[1], n)
    return scalar_out_bool(op, ctx, op.outs.size() - 1, r != Q_OK)


cdef int check_outputs(OpInst* op, RunCtx* ctx, Queue* q, size_t n) noexcept nogil:
    if <int64_t>n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"queue '") + q.name + cstr(b"' holds ") +
                        to_str(q.nblobs) + cstr(b" blobs per record, but the op has ") +
                        to_str(n) + cstr(b" data outputs"))
    return 0


cdef int read_into_outputs(OpInst* op, RunCtx* ctx, Queue* q, size_t n, int64_t timeout_ns,
                           int* result) noexcept nogil:
    """One record straight into the op's output blobs (a swap)."""
    cdef int64_t got
    cdef Tensor* tmp = <Tensor*>op.state
    cdef size_t j
    # Outputs are distinct blobs; move them into scratch so one swap each
    # lands the record, then move back.
    for j in range(n):
        tensor_swap(&tmp[j], blob_out(op.outs[j]))
    result[0] = queue_read(q, tmp, n, 1, timeout_ns, &got)
    for j in range(n):
        tensor_swap(&tmp[j], &op.outs[j].t)
    return 0


cdef int scratch_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    # Scratch tensors: num_records * data outputs (SafeDequeueBlobs), or data
    # outputs (DequeueBlobs, WeightedSampleDequeueBlobs).
    cdef int64_t per = op.outs.size()
    cdef int64_t recs = 1
    if op.d.type == b"SafeDequeueBlobs":
        per -= 1
        recs = op.d.args[0].i if op.d.args[0].present else 1
    elif op.d.type == b"WeightedSampleDequeueBlobs":
        per -= 1
    op.state = calloc(per * recs + 1, sizeof(Tensor))
    if op.state == NULL:
        return op_oom(op, ctx)
    return 0


cdef void scratch_fini(OpInst* op) noexcept nogil:
    cdef int64_t per = op.outs.size()
    cdef int64_t recs = 1, i
    if op.state == NULL:
        return
    if op.d.type == b"SafeDequeueBlobs":
        per -= 1
        recs = op.d.args[0].i if op.d.args[0].present else 1
    elif op.d.type == b"WeightedSampleDequeueBlobs":
        per -= 1
    for i in range(per * recs):
        tensor_clear(&(<Tensor*>op.state)[i])
    free(op.state)
    op.state = NULL


cdef int k_dequeue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.outs.size()
    cdef double tmo = op.d.args[0].f if op.d.args[0].present else 0.0
    cdef int r
    if q == NULL or check_outputs(op, ctx, q, n) != 0:
        return -1
    read_into_outputs(op, ctx, q, n, <int64_t>(tmo * 1e9), &r)
    if r == Q_OK:
        return 0
    if rs_cancelled(ctx):
        return -1
    if r == Q_TIMEOUT:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"DequeueBlobs timed out in ") +
                        to_str(<int64_t>(tmo * 1000)) + cstr(b" ms on queue '") + q.name + cstr(b"'"))
    return op_fails(op, ctx, E_QUEUE_CLOSED, cstr(b"queue '") + q.name +
                    cstr(b"' is closed and empty"))


cdef int concat_records(OpInst* op, RunCtx* ctx, Queue* q, Tensor* recs, int64_t got,
                        size_t n) noexcept nogil:
    """outputs[j] = records 0..got-1 of column j concatenated on dim 0, after
    checking that every record has the same dtype and inner dims."""
    cdef size_t j
    cdef int64_t k, d, rows, isz, off, i
    cdef Tensor* first
    cdef Tensor* r
    cdef Tensor* out
    cdef int64_t shape[MAX_DIMS]
    for j in range(n):
        first = &recs[j]
        if first.ndim < 1:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"record 0 of queue '") + q.name +
                            cstr(b"' has a 0-d tensor at column ") + to_str(j) +
                            cstr(b"; batching (num_records > 1) needs at least 1 dim"))
        rows = 0
        for k in range(got):
            r = &recs[k * n + j]
            if r.dtype != first.dtype or r.ndim != first.ndim:
                return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot batch records of queue '") + q.name +
                                cstr(b"': column ") + to_str(j) + cstr(b" is ") + tensor_describe(r) +
                                cstr(b" in record ") + to_str(k) + cstr(b" but ") +
                                tensor_describe(first) + cstr(b" in record 0"))
            for d in range(1, r.ndim):
                if r.shape[d] != first.shape[d]:
                    return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot batch records of queue '") +
                                    q.name + cstr(b"': column ") + to_str(j) + cstr(b" is ") +
                                    tensor_describe(r) + cstr(b" in record ") + to_str(k) +
                                    cstr(b" but ") + tensor_describe(first) + cstr(b" in record 0"))
            rows += r.shape[0]
        shape[0] = rows
        for d in range(1, first.ndim):
            shape[d] = first.shape[d]
        out = blob_out(op.outs[j])
        if out_shape(op, ctx, out, first.dtype, first.ndim, shape) != 0:
            return -1
        isz = dtype_itemsize(first.dtype)
        off = 0
        for k in range(got):
            r = &recs[k * n + j]
            if r.dtype == DT_STRING:
                for i in range(r.size):
                    (<string*>tdata(out))[off + i] = (<string*>tdata(r))[i]
            elif r.size:
                memcpy(<char*>tdata(out) + off * isz, tdata(r), r.size * isz)
            off += r.size
    return 0


cdef int k_safe_dequeue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.outs.size() - 1
    cdef int64_t R = op.d.args[0].i if op.d.args[0].present else 1
    cdef int64_t got = 0
    cdef int r
    if q == NULL or check_outputs(op, ctx, q, n) != 0:
        return -1
    if R == 1:
        read_into_outputs(op, ctx, q, n, 0, &r)
        return scalar_out_bool(op, ctx, n, r != Q_OK)
    r = queue_read(q, <Tensor*>op.state, n, R, 0, &got)
    if got == 0:
        return scalar_out_bool(op, ctx, n, True)
    if concat_records(op, ctx, q, <Tensor*>op.state, got, n) != 0:
        return -1
    return scalar_out_bool(op, ctx, n, False)


cdef int k_close_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    if q == NULL:
        return -1
    queue_close(q)
    return 0


cdef inline uint64_t xorshift(uint64_t* s) noexcept nogil:
    cdef uint64_t x = s[0]
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    s[0] = x
    return x


cdef int k_weighted_dequeue(OpInst* op, RunCtx* ctx) noexcept nogil:
    # args: weights, table_idx_blob.  outputs: d1..dn (with the table index
    # at position table_idx_blob when >= 0), status last.
    cdef size_t m = op.ins.size()
    cdef size_t nout = op.outs.size() - 1
    cdef int64_t tidx = op.d.args[1].i if op.d.args[1].present else -1
    cdef size_t n = nout - (1 if tidx >= 0 else 0)
    cdef double total = 0.0, r, acc
    cdef size_t i, j, pick = 0
    cdef int64_t got
    cdef int res
    cdef Queue* q
    cdef Tensor* tmp = <Tensor*>op.state
    cdef uint64_t seed
    cdef Tensor* out
    cdef int64_t one = 1
    if tidx >= <int64_t>nout:
        return op_fail(op, ctx, E_RUNTIME, b"table_idx_blob is out of range")
    for i in range(m):
        total += op.d.args[0].floats[i] if op.d.args[0].floats.size() else 1.0
    seed = <uint64_t>fp_now_ns() ^ (<uint64_t><size_t>op << 1)
    r = (xorshift(&seed) >> 11) * (1.0 / 9007199254740992.0) * total
    acc = 0.0
    pick = m - 1
    for i in range(m):
        acc += op.d.args[0].floats[i] if op.d.args[0].floats.size() else 1.0
        if r < acc:
            pick = i
            break
    q = op_queue(op, ctx, pick)
    if q == NULL or check_outputs(op, ctx, q, n) != 0:
        return -1
    # move the data outputs into scratch, read, move back
    j = 0
    for i in range(nout):
        if <int64_t>i == tidx:
            continue
        tensor_swap(&tmp[j], blob_out(op.outs[i]))
        j += 1
    res = queue_read(q, tmp, n, 1, 0, &got)
    j = 0
    for i in range(nout):
        if <int64_t>i == tidx:
            continue
        tensor_swap(&tmp[j], &op.outs[i].t)
        j += 1
    if tidx >= 0 and res == Q_OK:
        out = blob_out(op.outs[tidx])
        if tensor_reshape(out, DT_INT32, 1, &one) != 0:
            return op_oom(op, ctx)
        (<int32_t*>tdata(out))[0] = <int32_t>pick
    return scalar_out_bool(op, ctx, nout, res != Q_OK)


# ---- stat registry ------------------------------------------------------------------
#
# Process-global map key -> int64 counter (never removed; equal keys share a
# counter, so instances aggregate).  Queue stats live in the queue (updated
# under its mutex, no extra atomics on the hot path) and are added in at
# export; a destroyed queue flushes them into the registry.

cdef fp_mutex g_stats_lock          # protects g_stats and g_live_queues
fp_mutex_init(&g_stats_lock)
cdef unordered_map[string, int64_t*] g_stats
cdef vector[Queue*] g_live_queues


cdef int64_t* stat_slot(const string& key) noexcept nogil:
    cdef int64_t* p
    fp_lock(&g_stats_lock)
    it = g_stats.find(key)
    if it != g_stats.end():
        p = deref(it).second
    else:
        p = <int64_t*>calloc(1, sizeof(int64_t))
        g_stats[key] = p
    fp_unlock(&g_stats_lock)
    return p


cdef void live_queue_add(Queue* q) noexcept nogil:
    fp_lock(&g_stats_lock)
    g_live_queues.push_back(q)
    fp_unlock(&g_stats_lock)


cdef void queue_stats_take(Queue* q, vector[pair[string, int64_t]]* out, bint reset) noexcept nogil:
    """Append q's stats (q.mu held by the caller)."""
    cdef size_t j
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_balance"), q.st_balance))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_records"), q.st_records))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_bytes"), q.st_bytes))
    for j in range(q.fields.size()):
        out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_bytes/") + q.fields[j],
                                            q.st_field_bytes[j]))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/read_time_ns/sum"), q.st_read_ns))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/read_time_ns/count"), q.st_read_n))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/write_time_ns/sum"), q.st_write_ns))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/write_time_ns/count"), q.st_write_n))
    if reset:
        q.st_balance = q.st_records = q.st_bytes = 0
        q.st_read_ns = q.st_read_n = q.st_write_ns = q.st_write_n = 0
        for j in range(q.st_field_bytes.size()):
            q.st_field_bytes[j] = 0


cdef void live_queue_remove(Queue* q) noexcept nogil:
    cdef vector[pair[string, int64_t]] kv
    cdef size_t i
    fp_lock(&g_stats_lock)
    for i in range(g_live_queues.size()):
        if g_live_queues[i] == q:
            g_live_queues[i] = g_live_queues.back()
            g_live_queues.pop_back()
            break
    fp_unlock(&g_stats_lock)
    fp_lock(&q.mu)
    queue_stats_take(q, &kv, True)
    fp_unlock(&q.mu)
    for i in range(kv.size()):
        if kv[i].second:
            fp_fetch_add(stat_slot(kv[i].first), kv[i].second)


cdef vector[pair[string, int64_t]] stats_snapshot(bint reset) noexcept nogil:
    """Every stat: registry counters plus live queues' counters, summed by key."""
    cdef vector[pair[string, int64_t]] out
    cdef vector[pair[string, int64_t]] qs
    cdef unordered_map[string, int64_t] acc
    cdef size_t i
    fp_lock(&g_stats_lock)
    for kv in g_stats:
        if reset:
            acc[kv.first] += fp_exchange(kv.second, 0)
        else:
            acc[kv.first] += fp_load(kv.second)
    for i in range(g_live_queues.size()):
        fp_lock(&g_live_queues[i].mu)
        queue_stats_take(g_live_queues[i], &qs, reset)
        fp_unlock(&g_live_queues[i].mu)
    fp_unlock(&g_stats_lock)
    for i in range(qs.size()):
        acc[qs[i].first] += qs[i].second
    for kv2 in acc:
        out.push_back(pair[string, int64_t](kv2.first, kv2.second))
    return out


def stats_export(bint reset=False):
    """All stats as {key: int} (Caffe2 key names).  With reset, counters are
    zeroed atomically as they are read: no count is lost."""
    cdef vector[pair[string, int64_t]] snap
    with nogil:
        snap = stats_snapshot(reset)
    return {kv.first.decode("utf-8", "replace"): kv.second for kv in snap}


cdef int k_stat_export(OpInst* op, RunCtx* ctx) noexcept nogil:
    # outputs: keys (string [n]), values (int64 [n]), timestamps (int64 [n])
    cdef bint reset = op.d.args[0].i != 0 if op.d.args[0].present else True
    cdef vector[pair[string, int64_t]] snap = stats_snapshot(reset)
    cdef int64_t n = snap.size()
    cdef int64_t i, now = fp_now_ns()
    cdef Tensor* keys = blob_out(op.outs[0])
    cdef Tensor* vals = blob_out(op.outs[1])
    cdef Tensor* ts = blob_out(op.outs[2])
    if (tensor_reshape(keys, DT_STRING, 1, &n) != 0 or tensor_reshape(vals, DT_INT64, 1, &n) != 0
            or tensor_reshape(ts, DT_INT64, 1, &n) != 0):
        return op_oom(op, ctx)
    for i in range(n):
        (<string*>tdata(keys))[i] = snap[i].first
        (<int64_t*>tdata(vals))[i] = snap[i].second
        (<int64_t*>tdata(ts))[i] = now
    return 0


cdef int k_stat_update(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Tensor* keys = in_t(op, ctx, 0)
    cdef Tensor* vals
    cdef int64_t i
    if keys == NULL:
        return -1
    vals = in_t(op, ctx, 1)
    if vals == NULL:
        return -1
    if keys.dtype != DT_STRING:
        return fail_dtype(op, ctx, 0, keys, b"string")
    if vals.dtype != DT_INT64:
        return fail_dtype(op, ctx, 1, vals, b"int64")
    if keys.size != vals.size:
        return op_fail(op, ctx, E_RUNTIME, b"keys and values have different sizes")
    for i in range(keys.size):
        fp_fetch_add(stat_slot((<string*>tdata(keys))[i]), (<int64_t*>tdata(vals))[i])
    return 0


cdef int k_stat_create(OpInst* op, RunCtx* ctx) noexcept nogil:
    # One process-global registry: the handle is a counter-less marker.
    cdef Counter* c = <Counter*>calloc(1, sizeof(Counter))
    if c == NULL:
        return op_oom(op, ctx)
    cdef ObjHeader* h = obj_new(OBJ_STATS, c, counter_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


# ---- timers ----------------------------------------------------------------------
#
# The timer lives in the TimerBegin op (state) and is published into the
# output blob as a refcounted object; TimerEnd/TimerGet read it from there.
# Monotonic clock.  Stats: <counter_name>/time_ns/{sum,count}.

ctypedef struct Timer:
    int64_t start
    int64_t running
    int64_t* sum
    int64_t* count


cdef void timer_destroy(void* p) noexcept nogil:
    free(p)


cdef int timer_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Timer* t = <Timer*>calloc(1, sizeof(Timer))
    cdef string name
    if t == NULL:
        return op_oom(op, ctx)
    name = op.d.args[0].s if op.d.args[0].present and op.d.args[0].s.size() else op.d.outputs[0]
    t.sum = stat_slot(name + cstr(b"/time_ns/sum"))
    t.count = stat_slot(name + cstr(b"/time_ns/count"))
    op.state = <void*>obj_new(OBJ_TIMER, t, timer_destroy)
    if op.state == NULL:
        return op_oom(op, ctx)
    return 0


cdef void timer_fini(OpInst* op) noexcept nogil:
    obj_decref(<ObjHeader*>op.state)
    op.state = NULL


cdef int k_timer_begin(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = <ObjHeader*>op.state
    cdef Timer* t = <Timer*>h.impl
    if op.outs[0].obj != h:
        obj_incref(h)
        blob_set_obj(op.outs[0], h)
    if t.running:
        return op_fail(op, ctx, E_RUNTIME, b"Called TimerBegin on an already running timer.")
    t.running = 1
    t.start = fp_now_ns()
    return 0


cdef int k_timer_end(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TIMER)
    cdef Timer* t
    if h == NULL:
        return -1
    t = <Timer*>h.impl
    if not t.running:
        return op_fail(op, ctx, E_RUNTIME, b"Called TimerEnd on a stopped timer.")
    fp_fetch_add_relaxed(t.sum, fp_now_ns() - t.start)
    fp_fetch_add_relaxed(t.count, 1)
    t.running = 0
    return 0


cdef int k_timer_get_and_end(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TIMER)
    cdef Timer* t
    cdef int64_t el
    cdef Tensor* out
    cdef int64_t one = 1
    if h == NULL:
        return -1
    t = <Timer*>h.impl
    if not t.running:
        return op_fail(op, ctx, E_RUNTIME, b"Called TimerGetAndEnd on a stopped timer.")
    el = fp_now_ns() - t.start
    fp_fetch_add_relaxed(t.sum, el)
    fp_fetch_add_relaxed(t.count, 1)
    t.running = 0
    out = blob_out(op.outs[0])
    if tensor_reshape(out, DT_INT64, 1, &one) != 0:
        return op_oom(op, ctx)
    (<int64_t*>tdata(out))[0] = el
    return 0


cdef int k_timer_get(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TIMER)
    cdef Timer* t
    if h == NULL:
        return -1
    t = <Timer*>h.impl
    if not t.running:
        return op_fail(op, ctx, E_RUNTIME, b"Called TimerGet on a stopped timer.")
    return scalar_out_i64(op, ctx, 0, fp_now_ns() - t.start)
