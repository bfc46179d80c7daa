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

DEF SPIN_ROUNDS = 64
DEF YIELD_ROUNDS = 16
DEF STATS_FLUSH = 256
cdef int64_t CLOSED_BIT = (<int64_t>1) << 62
cdef int64_t POS_MASK = CLOSED_BIT - 1


ctypedef struct QStats:
    # Per-op, unshared counters, added into the queue's atomics every
    # STATS_FLUSH records and when the op goes away, so the hot path does
    # no shared atomic adds for stats.
    void* queue             # the Queue these belong to (NULL: none yet)
    int64_t writes, reads, records, bytes, read_ns, read_n, write_ns, write_n
    int64_t pending
    int64_t rows            # rows moved (dim 0 of the record's first blob; 1 if 0-d)
    int64_t field_bytes[64]
    # -- observation binding (kept across flushes; see RunObs in runtime.pxi)
    RunObs* obs             # the run's, one reference held by the op's QOpState; NULL: none
    StageCtr* stage         # the op's stage counters in obs (NULL: not in a stage)
    Probe* probe            # the op's probe in obs (NULL: none)
    int64_t epoch           # obs.epoch at the last flush


ctypedef struct Slot:
    # Slots live inline in one cache-aligned block (stride: a multiple of
    # 64 bytes) so a record's sequence word and tensors share cache lines.
    int64_t seq             # Vyukov sequence: pos = free for the writer at pos, pos+1 = full
    FpSlotTags tags         # the record's provenance tags (runtime.pxi; zeros: none)
                            # the slot's nblobs tensors follow at byte 32 (slot_t)


cdef cppclass Queue:
    # -- read-mostly configuration
    int64_t capacity        # records the queue holds at most
    int64_t ring            # slots: max(capacity, 2) (the sequence scheme needs >= 2)
    int64_t nblobs
    bint strict             # reject every write after close
    string name
    vector[string] fields
    char* slot_mem          # ring slots of `stride` bytes each
    int64_t stride
    char pad0[64]
    # -- writer side (atomics)
    int64_t tail            # next write position (monotonic) | CLOSED_BIT once closed
    int64_t st_writes       # write attempts (for queue_balance)
    int64_t st_write_ns
    int64_t st_write_n
    char pad1[64]
    # -- reader side (atomics)
    int64_t head            # next read position (monotonic)
    int64_t st_reads        # read attempts (for queue_balance)
    int64_t st_records
    int64_t st_bytes
    int64_t st_read_ns
    int64_t st_read_n
    char pad2[64]
    # -- shared, rarely written
    int64_t cancelled_by    # atomic: id of the failed run whose cancel closed it (0: none)
    int64_t wait_readers    # atomic: parked readers
    int64_t wait_writers    # atomic: parked writers
    fp_mutex mu             # only for parking: protects nothing but the condvars' waits
    fp_cond not_empty
    fp_cond not_full
    vector[int64_t] st_field_bytes   # per column; updated with relaxed atomics


cdef void queue_destroy(void* p) noexcept nogil:
    cdef Queue* q = <Queue*>p
    cdef int64_t i, j
    live_queue_remove(q)
    for i in range(q.ring):
        fp_slot_tags_drop(&slot_at(q, i).tags)
        for j in range(q.nblobs):
            tensor_clear(&slot_t(slot_at(q, i))[j])
    free(q.slot_mem)
    fp_mutex_destroy(&q.mu)
    fp_cond_destroy(&q.not_empty)
    fp_cond_destroy(&q.not_full)
    del q


cdef Queue* queue_new(int64_t capacity, int64_t nblobs, bint strict) noexcept nogil:
    cdef Queue* q = new Queue()
    cdef int64_t i
    cdef int64_t ring = capacity if capacity >= 2 else 2
    cdef int64_t stride = (32 + nblobs * <int64_t>sizeof(Tensor) + 63) // 64 * 64
    q.slot_mem = <char*>fp_aligned_alloc(64, ring * stride)
    if q.slot_mem == NULL:
        del q
        return NULL
    memset(q.slot_mem, 0, ring * stride)
    q.stride = stride
    q.ring = ring
    for i in range(ring):
        slot_at(q, i).seq = i
    fp_mutex_init(&q.mu)
    fp_cond_init(&q.not_empty)
    fp_cond_init(&q.not_full)
    q.capacity = capacity
    q.nblobs = nblobs
    q.strict = strict
    q.tail = q.head = 0
    q.wait_readers = q.wait_writers = 0
    q.cancelled_by = 0
    q.st_writes = q.st_write_ns = q.st_write_n = 0
    q.st_reads = q.st_records = q.st_bytes = q.st_read_ns = q.st_read_n = 0
    q.st_field_bytes.resize(nblobs, 0)
    return q


cdef inline bint is_closed(Queue* q) noexcept nogil:
    """Closed is the sticky bit in the tail word (see queue_close)."""
    return (fp_load_seq(&q.tail) & CLOSED_BIT) != 0


cdef inline Slot* slot_at(Queue* q, int64_t i) noexcept nogil:
    return <Slot*>(q.slot_mem + i * q.stride)


cdef inline Tensor* slot_t(Slot* s) noexcept nogil:
    return <Tensor*>((<char*>s) + 32)


cdef void queue_close(Queue* q) noexcept nogil:
    # The closed bit lives in `tail`, so "closed" and "claim a position" are
    # ordered by the same atomic: a writer's CAS from an unclosed tail fails
    # once close happened, and readers know exactly which writes were let in.
    fp_fetch_or(&q.tail, CLOSED_BIT)
    fp_lock(&q.mu)
    fp_broadcast(&q.not_empty)
    fp_broadcast(&q.not_full)
    fp_unlock(&q.mu)


cdef void queue_cancel_obj(ObjHeader* h, int64_t run_id) noexcept nogil:
    """Close a queue because run `run_id` failed.  The queue remembers it, so
    a later run that uses it gets a clear error instead of a closed queue
    that silently ends its readers (records would look lost)."""
    cdef Queue* q
    if h != NULL and h.kind == OBJ_REBATCH_QUEUE:
        rq_cancel_obj(h, run_id)        # rebatch.pxi
    elif h != NULL and h.kind == OBJ_QUEUE:
        q = <Queue*>h.impl
        if is_closed(q):
            return              # closed on purpose before the failure: nothing changes
        fp_cas(&q.cancelled_by, 0, run_id)
        queue_close(q)


cdef inline void wake(Queue* q, int64_t* waiters, fp_cond* cv) noexcept nogil:
    """After publishing a change (a seq_cst exchange of the slot sequence):
    wake parked threads of the other side.  The sleeper increments *waiters
    with a seq_cst RMW before re-checking (Dekker): either we see it, or it
    sees our change."""
    if fp_load_seq(waiters) > 0:
        fp_lock(&q.mu)
        fp_broadcast(cv)
        fp_unlock(&q.mu)


# Results of queue_write / queue_read.
cdef enum:
    Q_OK = 0
    Q_CLOSED = 1
    Q_TIMEOUT = 2
    Q_AGAIN = 3


cdef int try_write(Queue* q, Tensor** ts) noexcept nogil:
    """Lock-free (Vyukov) write of one record.  Q_AGAIN when full, Q_CLOSED
    when closed and the queue is strict."""
    cdef int64_t raw = fp_load_relaxed(&q.tail)
    cdef int64_t pos, seq, dif, j
    cdef Slot* s
    while True:
        if (raw & CLOSED_BIT) and q.strict:
            return Q_CLOSED
        pos = raw & POS_MASK
        if q.ring != q.capacity and pos - fp_load(&q.head) >= q.capacity:
            return Q_AGAIN              # capacity 1 on a 2-slot ring
        s = slot_at(q, pos % q.ring)
        seq = fp_load(&s.seq)
        dif = seq - pos
        if dif == 0:
            if fp_cas(&q.tail, raw, raw + 1):
                break
            raw = fp_load_relaxed(&q.tail)
        elif dif < 0:
            return Q_AGAIN
        else:
            raw = fp_load_relaxed(&q.tail)
    for j in range(q.nblobs):
        tensor_swap(&slot_t(s)[j], ts[j])
    if fp_tracking_active():
        fp_tags_to_slot(&s.tags)        # the writer's pending tags ride on the record
    fp_exchange(&s.seq, pos + 1)        # publish (seq_cst: pairs with wake())
    return Q_OK


cdef int try_read(Queue* q, Tensor** outs, QStats* st) noexcept nogil:
    """Lock-free read of one record.  Q_AGAIN when empty."""
    cdef int64_t pos = fp_load_relaxed(&q.head)
    cdef int64_t seq, dif, j, nb
    cdef Slot* s
    while True:
        s = slot_at(q, pos % q.ring)
        seq = fp_load(&s.seq)
        dif = seq - (pos + 1)
        if dif == 0:
            if fp_cas(&q.head, pos, pos + 1):
                break
            pos = fp_load_relaxed(&q.head)
        elif dif < 0:
            return Q_AGAIN
        else:
            pos = fp_load_relaxed(&q.head)
    for j in range(q.nblobs):
        nb = string_bytes(&slot_t(s)[j]) if slot_t(s)[j].dtype == DT_STRING else tensor_nbytes(&slot_t(s)[j])
        st.bytes += nb
        st.field_bytes[j] += nb
        tensor_swap(&slot_t(s)[j], outs[j])
    if s.tags.len != 0 or s.tags.more != NULL:
        fp_tags_from_slot(&s.tags)      # the reader's thread now carries them
    fp_exchange(&s.seq, pos + q.ring)   # release the slot (seq_cst: pairs with wake())
    return Q_OK


cdef inline bint looks_full(Queue* q) noexcept nogil:
    return (fp_load_seq(&q.tail) & POS_MASK) - fp_load_seq(&q.head) >= q.capacity


cdef inline bint looks_empty(Queue* q) noexcept nogil:
    """No position claimed beyond what readers claimed (a claimed but not
    yet published record counts as present: its writer is finishing)."""
    return (fp_load_seq(&q.tail) & POS_MASK) == fp_load_seq(&q.head)


cdef void qstats_flush(QStats* st) noexcept nogil:
    """Add an op's private counters into its queue's shared ones (and its
    stage's, when the op is bound to an observed run)."""
    cdef Queue* q = <Queue*>st.queue
    cdef int64_t j
    cdef RunObs* obs = st.obs
    cdef StageCtr* sc = st.stage
    cdef Probe* probe = st.probe
    if q == NULL:
        return
    if sc != NULL and probe != NULL:     # (bound together: qop_bind)
        if probe.kind == 0:
            fp_fetch_add_relaxed(&sc.batches_in, st.records)
            fp_fetch_add_relaxed(&sc.rows_in, st.rows)
            fp_fetch_add_relaxed(&sc.wait_in_ns, st.read_ns)
        else:
            fp_fetch_add_relaxed(&sc.batches_out, st.write_n)
            fp_fetch_add_relaxed(&sc.rows_out, st.rows)
            fp_fetch_add_relaxed(&sc.wait_out_ns, st.write_ns)
    fp_fetch_add_relaxed(&q.st_writes, st.writes)
    fp_fetch_add_relaxed(&q.st_reads, st.reads)
    fp_fetch_add_relaxed(&q.st_records, st.records)
    fp_fetch_add_relaxed(&q.st_bytes, st.bytes)
    fp_fetch_add_relaxed(&q.st_read_ns, st.read_ns)
    fp_fetch_add_relaxed(&q.st_read_n, st.read_n)
    fp_fetch_add_relaxed(&q.st_write_ns, st.write_ns)
    fp_fetch_add_relaxed(&q.st_write_n, st.write_n)
    for j in range(q.nblobs if q.nblobs < 64 else 64):
        if j < <int64_t>q.fields.size():
            fp_fetch_add_relaxed(&q.st_field_bytes[j], st.field_bytes[j])
    memset(st, 0, sizeof(QStats))
    st.queue = <void*>q
    st.obs = obs
    st.stage = sc
    st.probe = probe
    if obs != NULL:
        st.epoch = fp_load_relaxed(&obs.epoch)


cdef inline void qstats_use(QStats* st, Queue* q) noexcept nogil:
    if st.queue != <void*>q:
        qstats_flush(st)        # zeroes the counters (they are zero when queue is NULL)
        st.queue = <void*>q


cdef inline void qstats_tick(QStats* st) noexcept nogil:
    st.pending += 1
    # a poller (Run.stats) bumps obs.epoch: flush at the next record so it
    # sees fresh counts; one relaxed load of a read-mostly word per record
    if st.pending >= STATS_FLUSH or (st.obs != NULL and
                                     fp_load_relaxed(&st.obs.epoch) != st.epoch):
        qstats_flush(st)


cdef inline int64_t record_rows(Tensor** ts, int64_t nblobs) noexcept nogil:
    if nblobs < 1 or ts[0].ndim < 1:
        return 1
    return ts[0].shape[0]


cdef inline void probe_wait_begin(QStats* st, Queue* q, int64_t t0) noexcept nogil:
    """The op starts waiting on q (the watchdog and diagnose() read this)."""
    if st.probe != NULL:
        st.probe.queue = <void*>q
        fp_store(&st.probe.since, t0)


cdef inline void probe_wait_end(QStats* st) noexcept nogil:
    if st.probe != NULL:
        fp_store(&st.probe.since, 0)


cdef inline bint backoff(int* round) noexcept nogil:
    """One step of spin-then-yield while waiting for the other side.
    Returns False once it is time to park."""
    cdef int k
    round[0] += 1
    if round[0] <= 1:
        for k in range(SPIN_ROUNDS):
            fp_cpu_relax()
        return True
    if round[0] <= 1 + YIELD_ROUNDS:
        fp_yield()      # with more threads than cores, let the peer run
        return True
    return False


cdef int queue_write(Queue* q, Tensor** ts, int64_t timeout_ns, QStats* st) noexcept nogil:
    """Blocking write of one record (its tensors are swapped into the slot).
    Q_CLOSED when the queue is closed and full (Caffe2), or closed at all
    with strict close; Q_TIMEOUT after timeout_ns > 0."""
    cdef int r
    cdef int rounds = 0
    cdef int64_t t0 = 0
    cdef int64_t deadline = 0
    cdef int64_t rows = record_rows(ts, q.nblobs)     # before the swap empties ts
    qstats_use(st, q)
    st.writes += 1
    while True:
        r = try_write(q, ts)
        if r != Q_AGAIN:
            break
        if is_closed(q):      # closed and full
            r = Q_CLOSED
            break
        if t0 == 0:
            t0 = fp_now_ns()
            if timeout_ns > 0:
                deadline = t0 + timeout_ns
            probe_wait_begin(st, q, t0)
        if backoff(&rounds):
            continue
        if rounds == 2 + YIELD_ROUNDS:
            qstats_flush(st)    # about to park (a futex anyway): let pollers see the counts
        # park until a reader makes room, the queue closes, or the deadline
        fp_lock(&q.mu)
        fp_fetch_add(&q.wait_writers, 1)
        if looks_full(q) and not is_closed(q):
            if deadline:
                if fp_wait_until(&q.not_full, &q.mu, deadline) and looks_full(q) \
                        and not is_closed(q):
                    fp_fetch_add(&q.wait_writers, -1)
                    fp_unlock(&q.mu)
                    r = Q_TIMEOUT
                    break
            else:
                fp_wait(&q.not_full, &q.mu)
        fp_fetch_add(&q.wait_writers, -1)
        fp_unlock(&q.mu)
        rounds = 0
    if t0:
        probe_wait_end(st)
    if r == Q_OK:
        st.write_n += 1
        st.rows += rows
        if t0:
            st.write_ns += fp_now_ns() - t0
        wake(q, &q.wait_readers, &q.not_empty)
    qstats_tick(st)
    return r


cdef inline bint reader_done(Queue* q) noexcept nogil:
    """Closed and every claimed position read: nothing more can arrive that
    a reader is owed (the closed bit and the positions are one word)."""
    cdef int64_t raw = fp_load_seq(&q.tail)
    return (raw & CLOSED_BIT) != 0 and (raw & POS_MASK) == fp_load_seq(&q.head)


cdef int queue_read(Queue* q, Tensor** outs, int64_t timeout_ns, QStats* st) noexcept nogil:
    """Blocking read of one record into outs[0..nblobs) (swaps).  Readers
    drain what remains after close, then get Q_CLOSED."""
    cdef int r
    cdef int rounds = 0
    cdef int64_t t0 = 0
    cdef int64_t deadline = 0
    qstats_use(st, q)
    st.reads += 1
    while True:
        r = try_read(q, outs, st)
        if r == Q_OK:
            break
        if reader_done(q):
            r = Q_CLOSED
            break
        if t0 == 0:
            t0 = fp_now_ns()
            if timeout_ns > 0:
                deadline = t0 + timeout_ns
            probe_wait_begin(st, q, t0)
        if backoff(&rounds):
            continue
        if rounds == 2 + YIELD_ROUNDS:
            qstats_flush(st)    # about to park (a futex anyway): let pollers see the counts
        if deadline and fp_now_ns() >= deadline:
            r = Q_TIMEOUT
            break
        fp_lock(&q.mu)
        fp_fetch_add(&q.wait_readers, 1)
        # closed with a writer still in flight: that writer wakes us when done
        if looks_empty(q) and not reader_done(q):
            if deadline:
                fp_wait_until(&q.not_empty, &q.mu, deadline)
            else:
                fp_wait(&q.not_empty, &q.mu)
        fp_fetch_add(&q.wait_readers, -1)
        fp_unlock(&q.mu)
        rounds = 0
    if t0:
        probe_wait_end(st)
    if r == Q_OK:
        st.records += 1
        st.read_n += 1
        st.rows += record_rows(outs, q.nblobs)
        if t0:
            st.read_ns += fp_now_ns() - t0
    qstats_tick(st)
    wake(q, &q.wait_writers, &q.not_full)
    return r


cdef int64_t string_bytes(Tensor* t) noexcept nogil:
    cdef int64_t i, s = 0
    cdef string* p = <string*>tdata(t)
    for i in range(t.size):
        s += p[i].size()
    return s


# ---- queue ops -------------------------------------------------------------------

cdef enum:   # CreateBlobsQueue argument positions (checked against the schema on import)
    CQ_CAPACITY = 0
    CQ_NUM_BLOBS = 1
    CQ_ENFORCE_UNIQUE_NAME = 2     # not read: one process-wide name space is not kept
    CQ_FIELD_NAMES = 3
    CQ_STRICT_CLOSE = 4
kernel_args("CreateBlobsQueue", capacity=(CQ_CAPACITY, "int"), num_blobs=(CQ_NUM_BLOBS, "int"),
            enforce_unique_name=(CQ_ENFORCE_UNIQUE_NAME, "bool"),
            field_names=(CQ_FIELD_NAMES, "strings"), strict_close=(CQ_STRICT_CLOSE, "bool"))


cdef int k_create_queue(OpInst* op, RunCtx* ctx) noexcept nogil:
    # args: capacity, num_blobs, enforce_unique_name, field_names, strict_close
    cdef vector[ArgVal]* a = &op.d.args
    cdef Queue* q = queue_new(a[0][CQ_CAPACITY].i, a[0][CQ_NUM_BLOBS].i,
                           a[0][CQ_STRICT_CLOSE].present and a[0][CQ_STRICT_CLOSE].i != 0)
    if q == NULL:
        return op_oom(op, ctx)
    q.name = op.d.outputs[0]
    q.fields = a[0][CQ_FIELD_NAMES].strings
    live_queue_add(q)
    cdef ObjHeader* h = obj_new(OBJ_QUEUE, q, queue_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef Queue* op_queue(OpInst* op, RunCtx* ctx, size_t i) noexcept nogil:
    """Input i as a queue, registered with this run so that a failure
    anywhere closes it (waking every waiter)."""
    cdef ObjHeader* old = op.objs[i]
    cdef QOpState* s
    cdef ObjHeader* h
    cdef int64_t by
    if old != NULL and op.ins[i].obj != old and op.d.init == qop_init:
        # The blob holds another queue now (CreateBlobsQueue ran again) and
        # op_obj is about to drop the op's reference to the old one, maybe
        # its last: hand the op's counters to the old queue while it lives.
        s = <QOpState*>op.state
        if s != NULL and s.st.queue == old.impl:
            qop_unbind(s)
            qstats_flush(&s.st)
            s.st.queue = NULL
    h = op_obj(op, ctx, i, OBJ_QUEUE)
    if h == NULL:
        return NULL
    if op.obj_run[i] != ctx.rs.run_id:
        by = fp_load(&(<Queue*>h.impl).cancelled_by)
        if by != 0 and by != ctx.rs.run_id:
            op_fails(op, ctx, E_RUNTIME, cstr(b"queue '") + (<Queue*>h.impl).name +
                     cstr(b"' was closed when an earlier run failed; create it again "
                          b"(CreateBlobsQueue) before using it in a new run"))
            return NULL
        rs_register_queue(ctx.rs, h)
        op.obj_run[i] = ctx.rs.run_id
        if op.d.init == qop_init:
            qop_bind(op, ctx, <Queue*>h.impl)
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


DEF MAX_REC_BLOBS = 64


ctypedef struct QOpState:
    QStats st
    Tensor* scratch         # SafeDequeueBlobs num_records > 1: R * n tensors
    int64_t nscratch
    uint64_t rng            # WeightedSampleDequeueBlobs
    Probe* probe            # while bound to an observed run (new'd: it holds strings)


cdef enum:
    DQ_TIMEOUT_SECS = 0             # DequeueBlobs
    SDQ_NUM_RECORDS = 0             # SafeDequeueBlobs
    WDQ_WEIGHTS = 0                 # WeightedSampleDequeueBlobs
    WDQ_TABLE_IDX_BLOB = 1
kernel_args("DequeueBlobs", timeout_secs=(DQ_TIMEOUT_SECS, "float"))
kernel_args("SafeDequeueBlobs", num_records=(SDQ_NUM_RECORDS, "int"))
kernel_args("WeightedSampleDequeueBlobs", weights=(WDQ_WEIGHTS, "floats"),
            table_idx_blob=(WDQ_TABLE_IDX_BLOB, "int"))


cdef int qop_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef QOpState* s = <QOpState*>calloc(1, sizeof(QOpState))
    cdef int64_t recs = 1
    if s == NULL:
        return op_oom(op, ctx)
    if op.d.type == b"SafeDequeueBlobs":
        recs = op.d.args[SDQ_NUM_RECORDS].i if op.d.args[SDQ_NUM_RECORDS].present else 1
        if recs > 1:
            s.nscratch = recs * (<int64_t>op.outs.size() - 1)
            s.scratch = <Tensor*>calloc(s.nscratch, sizeof(Tensor))
            if s.scratch == NULL:
                free(s)
                return op_oom(op, ctx)
    s.rng = (<uint64_t>fp_now_ns()) ^ (<uint64_t><size_t>op * 0x9E3779B97F4A7C15ULL) | 1
    op.state = s
    return 0


cdef void qop_fini(OpInst* op) noexcept nogil:
    cdef QOpState* s = <QOpState*>op.state
    cdef int64_t i
    if s == NULL:
        return
    qstats_flush(&s.st)      # the op still holds its queue (op.objs)
    qop_unbind(s)
    for i in range(s.nscratch):
        tensor_clear(&s.scratch[i])
    free(s.scratch)
    free(s)
    op.state = NULL


cdef void qop_unbind(QOpState* s) noexcept nogil:
    cdef StageCtr* sc = s.st.stage
    if s.st.obs != NULL:
        qstats_flush(&s.st)
        if sc != NULL:
            fp_fetch_add_relaxed(&sc.live_in_ns if s.probe.kind == 0 else &sc.live_out_ns,
                                 fp_now_ns() - s.probe.bound_ns)
        obs_remove_probe(s.st.obs, s.probe)
        obs_decref(s.st.obs)
    s.st.obs = NULL
    s.st.stage = NULL
    s.st.probe = NULL
    if s.probe != NULL:
        del s.probe
        s.probe = NULL


cdef void qop_bind(OpInst* op, RunCtx* ctx, Queue* q) noexcept nogil:
    """Bind a queue op to its run's observation (once per op per run, at
    its first use in the run; an op of a CreateNet'd net is rebound by each
    run that uses it)."""
    cdef QOpState* s = <QOpState*>op.state
    cdef RunObs* o = ctx.rs.obs
    if s == NULL or s.st.obs == o:
        return
    qop_unbind(s)
    if o == NULL:
        return
    s.probe = new Probe()
    s.probe.since = 0
    s.probe.queue = <void*>q
    s.probe.kind = 0 if op.d.type.find(b"Dequeue") != <size_t>-1 else 1
    s.probe.stage = op.d.stage - 1
    s.probe.instance = ctx.instance
    s.probe.bound_ns = fp_now_ns()
    s.probe.op = op_where(op, ctx)
    if ctx.step != NULL:
        s.probe.step = ctx.step[0]
    obs_incref(o)
    s.st.obs = o
    s.st.probe = s.probe
    s.st.stage = &o.stages[op.d.stage - 1] if 0 < op.d.stage <= o.nstages else NULL
    s.st.epoch = fp_load_relaxed(&o.epoch)
    obs_add_probe(o, s.probe)


cdef inline QStats* qst(OpInst* op) noexcept nogil:
    return &(<QOpState*>op.state).st


cdef int enqueue_inputs(OpInst* op, RunCtx* ctx, Queue* q, size_t n) noexcept nogil:
    cdef Tensor* ts[MAX_REC_BLOBS]
    cdef size_t j
    if n > MAX_REC_BLOBS:
        return op_fail(op, ctx, E_RUNTIME, b"a record has more than 64 blobs")
    for j in range(n):
        ts[j] = &op.ins[1 + j].t
    return queue_write(q, ts, 0, qst(op))


cdef void track_untagged(OpInst* op, RunCtx* ctx, const string& qname) noexcept nogil:
    """A tracking run enqueues a record that carries no provenance tag: it
    came from a source fastpipe cannot resume, or it is the second piece of
    a split record.  Noted once; the iterator's state() refuses with it."""
    fp_track_note_untracked(ctx.rs.track, op_where(op, ctx) + cstr(b" enqueued into queue '") +
                            qname + cstr(b"' a record that no resumable source read (a reader "
                            b"fastpipe cannot resume, e.g. a Python op, or a stage that splits "
                            b"one item into several queue items)"))


cdef int k_enqueue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.ins.size() - 1
    cdef int r
    if q == NULL or check_record(op, ctx, q, 1, n) != 0:
        return -1
    if ctx.rs.track != NULL and not fp_tags_pending():
        track_untagged(op, ctx, q.name)
    r = enqueue_inputs(op, ctx, q, n)
    if r == -1:
        return -1
    if r != Q_OK:
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
    if ctx.rs.track != NULL and not fp_tags_pending():
        track_untagged(op, ctx, q.name)
    r = enqueue_inputs(op, ctx, q, n)
    if r == -1:
        return -1
    return scalar_out_bool(op, ctx, op.outs.size() - 1, r != Q_OK)


cdef int check_outputs(OpInst* op, RunCtx* ctx, Queue* q, size_t n) noexcept nogil:
    if <int64_t>n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"queue '") + q.name + cstr(b"' holds ") +
                        to_str(q.nblobs) + cstr(b" blobs per record, but the op has ") +
                        to_str(n) + cstr(b" data outputs"))
    if n > MAX_REC_BLOBS:
        return op_fail(op, ctx, E_RUNTIME, b"a record has more than 64 blobs")
    return 0


cdef int read_into_outputs(OpInst* op, Queue* q, size_t n, int64_t timeout_ns) noexcept nogil:
    """One record swapped straight into the op's first n output blobs
    (left untouched -- stale, as in Caffe2 -- when nothing was read)."""
    cdef Tensor* outs[MAX_REC_BLOBS]
    cdef size_t j
    for j in range(n):
        outs[j] = blob_out(op.outs[j])
    return queue_read(q, outs, timeout_ns, qst(op))


cdef int k_dequeue(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Queue* q = op_queue(op, ctx, 0)
    cdef size_t n = op.outs.size()
    cdef double tmo = op.d.args[DQ_TIMEOUT_SECS].f if op.d.args[DQ_TIMEOUT_SECS].present else 0.0
    cdef int r
    if q == NULL or check_outputs(op, ctx, q, n) != 0:
        return -1
    if tmo > 1e9:
        tmo = 0.0           # beyond ~31 years: wait forever (and no int64 overflow)
    r = read_into_outputs(op, q, n, <int64_t>(tmo * 1e9))
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
    cdef int64_t R = op.d.args[SDQ_NUM_RECORDS].i if op.d.args[SDQ_NUM_RECORDS].present else 1
    cdef int64_t got = 0
    cdef size_t j
    cdef int r
    cdef Tensor* ptrs[MAX_REC_BLOBS]
    cdef Tensor* scratch = (<QOpState*>op.state).scratch
    if q == NULL or check_outputs(op, ctx, q, n) != 0:
        return -1
    if R == 1:
        r = read_into_outputs(op, q, n, 0)
        return scalar_out_bool(op, ctx, n, r != Q_OK)
    while got < R:
        for j in range(n):
            ptrs[j] = &scratch[got * n + j]
        if queue_read(q, ptrs, 0, qst(op)) != Q_OK:
            break
        got += 1
    if got == 0:
        return scalar_out_bool(op, ctx, n, True)
    if concat_records(op, ctx, q, scratch, got, n) != 0:
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
    # args: weights, table_idx_blob.  outputs: d1..dn, status last.  With
    # table_idx_blob = t >= 0 the chosen queue's index is written to output t
    # as int32[1], in one of two forms, told apart by the picked queue's
    # record width k:
    #   n == k      Caffe2's form: every data output takes a column of the
    #               record, then output t is overwritten with the index;
    #   n == k + 1  output t is not a data output: the record goes to the
    #               other n - 1 outputs (so a 1-blob queue reads into
    #               [d, idx, status] with t = 1, or [idx, d, status] with t = 0).
    cdef size_t m = op.ins.size()
    cdef size_t nout = op.outs.size() - 1
    cdef int64_t tidx = op.d.args[WDQ_TABLE_IDX_BLOB].i if op.d.args[WDQ_TABLE_IDX_BLOB].present else -1
    cdef size_t n
    cdef bint skip_idx
    cdef double total = 0.0, r, acc
    cdef size_t i, j, pick = 0
    cdef int res
    cdef Queue* q
    cdef Tensor* outs[MAX_REC_BLOBS]
    cdef Tensor* out
    cdef int64_t one = 1
    if tidx >= <int64_t>nout:   # the schema rejects this at build time
        return op_fail(op, ctx, E_RUNTIME, b"table_idx_blob is out of range")
    for i in range(m):
        total += op.d.args[WDQ_WEIGHTS].floats[i] if op.d.args[WDQ_WEIGHTS].floats.size() else 1.0
    r = (xorshift(&(<QOpState*>op.state).rng) >> 11) * (1.0 / 9007199254740992.0) * total
    acc = 0.0
    pick = m - 1
    for i in range(m):
        acc += op.d.args[WDQ_WEIGHTS].floats[i] if op.d.args[WDQ_WEIGHTS].floats.size() else 1.0
        if r < acc:
            pick = i
            break
    q = op_queue(op, ctx, pick)
    if q == NULL:
        return -1
    skip_idx = tidx >= 0 and <int64_t>nout == q.nblobs + 1
    n = nout - 1 if skip_idx else nout
    if tidx >= 0 and <int64_t>n != q.nblobs:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"queue '") + q.name + cstr(b"' holds ") +
                        to_str(q.nblobs) + cstr(b" blobs per record; with table_idx_blob=") +
                        to_str(tidx) + cstr(b" the op needs ") + to_str(q.nblobs) +
                        cstr(b" data outputs (the index overwrites one, as in Caffe2) or ") +
                        to_str(q.nblobs + 1) + cstr(b" (the index as an extra output), plus "
                        b"status, but it has ") + to_str(nout))
    if check_outputs(op, ctx, q, n) != 0:
        return -1
    j = 0
    for i in range(nout):
        if skip_idx and <int64_t>i == tidx:
            continue
        outs[j] = blob_out(op.outs[i])
        j += 1
    res = queue_read(q, outs, 0, qst(op))
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


cdef inline int64_t take(int64_t* p, bint reset) noexcept nogil:
    return fp_exchange(p, 0) if reset else fp_load(p)


cdef void queue_stats_take(Queue* q, vector[pair[string, int64_t]]* out, bint reset) noexcept nogil:
    """Append q's stats (Caffe2 keys).  queue_balance counts attempts:
    writes attempted minus reads attempted."""
    cdef size_t j
    cdef int64_t w = take(&q.st_writes, reset)
    cdef int64_t r = take(&q.st_reads, reset)
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_balance"), w - r))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_records"), take(&q.st_records, reset)))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_bytes"), take(&q.st_bytes, reset)))
    for j in range(q.fields.size()):
        out.push_back(pair[string, int64_t](q.name + cstr(b"/queue_dequeued_bytes/") + q.fields[j],
                                            take(&q.st_field_bytes[j], reset)))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/read_time_ns/sum"), take(&q.st_read_ns, reset)))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/read_time_ns/count"), take(&q.st_read_n, reset)))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/write_time_ns/sum"), take(&q.st_write_ns, reset)))
    out.push_back(pair[string, int64_t](q.name + cstr(b"/write_time_ns/count"), take(&q.st_write_n, reset)))


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
    queue_stats_take(q, &kv, True)
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
        queue_stats_take(g_live_queues[i], &qs, reset)
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


cdef enum:
    SE_RESET = 0
kernel_args("StatRegistryExport", reset=(SE_RESET, "bool"))


cdef int k_stat_export(OpInst* op, RunCtx* ctx) noexcept nogil:
    # outputs: keys (string [n]), values (int64 [n]), timestamps (int64 [n])
    cdef bint reset = op.d.args[SE_RESET].i != 0 if op.d.args[SE_RESET].present else True
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


cdef enum:
    TB_COUNTER_NAME = 0
kernel_args("TimerBegin", counter_name=(TB_COUNTER_NAME, "str"))


cdef int timer_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Timer* t = <Timer*>calloc(1, sizeof(Timer))
    cdef string name
    if t == NULL:
        return op_oom(op, ctx)
    name = (op.d.args[TB_COUNTER_NAME].s
            if op.d.args[TB_COUNTER_NAME].present and op.d.args[TB_COUNTER_NAME].s.size()
            else op.d.outputs[0])
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
