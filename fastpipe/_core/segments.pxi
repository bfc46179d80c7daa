# ReadSegmentBatch: the read op of sources.NpyReader -- flat fields, each held
# in S segments (one per shard file, every field cut at the same rows), read
# through one cursor offset over the concatenation, without concatenating.
#
# Inputs: cursor, [indices (int64 [N]) when permuted], then the segments field
# by field (field f's segment s is input first + f * S + s).  segment_rows
# (an argument, from the shards' .npy headers) fixes every segment's length,
# so the op finds the segments of a batch by a binary search over prefix sums
# and pins (snapshots) only the segments a batch touches: a job over
# thousands of tiny shards costs the same per batch as one over one shard.
#
# Copies:
#   * a batch inside one segment is *borrowed*: the output is a slice buffer
#     (buf_new_slice) pointing into the segment's bytes -- for a memory-mapped
#     .npy, straight into the page cache -- and holding one reference to the
#     segment's buffer (which holds the mapping).  No byte is copied.  A slice
#     is never written (buf_private() is false), so a writer of that blob,
#     and a numpy view of it, get their own memory.
#   * a batch that spans a segment boundary is *assembled* (one memcpy per
#     piece into a private output buffer), and a permuted batch is *gathered*
#     row by row: those copies are inherent.
# Each read of a batch adds 1 to "<counters>/borrowed_batches",
# "/assembled_batches" or "/gathered_batches" in the stat registry (when the
# counters argument is given), so tests and users can see which happened.
#
# The offset advances under the cursor's mutex (the same Cursor as
# ReadArrayBatch: offset 0 is the record position), slices are made after it
# is released, so N instances serialise only on the offset arithmetic and
# read every record exactly once per epoch.

cdef enum:   # argument positions (checked against the schemas on import)
    RSB_BATCH_SIZE = 0
    RSB_ENFORCE_BATCH_SIZE = 1
    RSB_RECORD = 2
    RSB_PERMUTED = 3
    RSB_SEGMENT_ROWS = 4
    RSB_COUNTERS = 5
kernel_args("ReadSegmentBatch", batch_size=(RSB_BATCH_SIZE, "int"),
            enforce_batch_size=(RSB_ENFORCE_BATCH_SIZE, "bool"),
            record=(RSB_RECORD, "bool"), permuted=(RSB_PERMUTED, "bool"),
            segment_rows=(RSB_SEGMENT_ROWS, "ints"), counters=(RSB_COUNTERS, "str"))


cdef Buffer* buf_new_slice(Buffer* parent, char* data, int64_t nbytes) noexcept nogil:
    """A numeric buffer over nbytes at data, which lies inside parent's
    bytes; it takes one reference to parent (dropped by its last
    buf_decref).  NULL when out of memory."""
    cdef Buffer* b = <Buffer*>fp_aligned_alloc(64, 64)
    if b == NULL:
        return NULL
    b.refcnt = 1
    b.is_str = False
    b.data = <void*>data
    b.capacity = nbytes
    b.maplen = 0
    b.owner = NULL
    buf_incref(parent)
    b.parent = parent
    return b


cdef cppclass SegState:
    vector[int64_t] starts      # S + 1 prefix sums of segment_rows (set at init)
    vector[Tensor] pins         # per segment: a pinned snapshot for the field being read
    vector[int] pinned          # which entries of pins hold a reference
    Tensor idx                  # the pinned permutation (permuted reads)
    int64_t* n_borrowed         # stat registry slots, or NULL (no counters)
    int64_t* n_assembled
    int64_t* n_gathered
    int64_t trk_run             # provenance tracking (iterate state): cached source id
    int64_t trk_src


cdef int seg_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef SegState* st
    cdef vector[int64_t]* rows = &op.d.args[RSB_SEGMENT_ROWS].ints
    cdef size_t s
    cdef string pre = op.d.args[RSB_COUNTERS].s if op.d.args[RSB_COUNTERS].present else string()
    if rows.size() == 0:
        return op_fail(op, ctx, E_RUNTIME, b"segment_rows is empty (give each segment's rows)")
    st = new SegState()
    st.starts.push_back(0)
    for s in range(rows.size()):
        if rows[0][s] < 0:
            del st
            return op_fails(op, ctx, E_RUNTIME, cstr(b"segment_rows[") + to_str(s) + cstr(b"]=") +
                            to_str(rows[0][s]) + cstr(b" must be >= 0"))
        st.starts.push_back(st.starts.back() + rows[0][s])
    st.pins.resize(rows.size())
    for s in range(rows.size()):
        tensor_init(&st.pins[s])
    tensor_init(&st.idx)
    st.trk_run = 0
    st.trk_src = -1
    if pre.size():
        st.n_borrowed = stat_slot(pre + cstr(b"/borrowed_batches"))
        st.n_assembled = stat_slot(pre + cstr(b"/assembled_batches"))
        st.n_gathered = stat_slot(pre + cstr(b"/gathered_batches"))
    else:
        st.n_borrowed = st.n_assembled = st.n_gathered = NULL
    op.state = <void*>st
    return 0


cdef void seg_unpin(SegState* st) noexcept nogil:
    cdef size_t k
    for k in range(st.pinned.size()):
        buf_decref(st.pins[st.pinned[k]].buf)
        st.pins[st.pinned[k]].buf = NULL
    st.pinned.clear()


cdef void seg_fini(OpInst* op) noexcept nogil:
    cdef SegState* st = <SegState*>op.state
    if st == NULL:
        return
    seg_unpin(st)
    buf_decref(st.idx.buf)
    del st
    op.state = NULL


cdef inline int64_t seg_of(SegState* st, int64_t r, int64_t hint) noexcept nogil:
    """The segment holding record r (0 <= r < N): hint when it does, else a
    binary search (empty segments are never returned)."""
    cdef int64_t lo = 0, hi = <int64_t>st.starts.size() - 1, mid
    if 0 <= hint < hi and st.starts[hint] <= r < st.starts[hint + 1]:
        return hint
    # largest s with starts[s] <= r, and starts[s + 1] > r
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if st.starts[mid] <= r:
            lo = mid
        else:
            hi = mid
    return lo


cdef Tensor* seg_pin(OpInst* op, RunCtx* ctx, SegState* st, size_t first, size_t f,
                     int64_t s, Tensor* ref) noexcept nogil:
    """Field f's segment s, pinned (once per read); checked against its
    segment_rows entry and, when ref is given, against ref's dtype and row
    shape.  NULL after recording an error."""
    cdef size_t S = st.pins.size()
    cdef size_t i = first + f * S + <size_t>s
    cdef Tensor* x
    cdef Tensor* p = &st.pins[s]
    cdef int q
    if p.buf == NULL:
        x = in_t(op, ctx, i)
        if x == NULL:
            return NULL
        tensor_snapshot(x, p)
        if p.buf == NULL:
            op_fails(op, ctx, E_RUNTIME, cstr(b"input ") + to_str(i) + cstr(b" ('") +
                     op.ins[i].name + cstr(b"') has no buffer"))
            return NULL
        st.pinned.push_back(<int>s)
    if p.ndim < 1 or p.shape[0] != st.starts[s + 1] - st.starts[s]:
        op_fails(op, ctx, E_RUNTIME, cstr(b"field ") + to_str(f) + cstr(b" segment ") + to_str(s) +
                 cstr(b" (input ") + to_str(i) + cstr(b" '") + op.ins[i].name + cstr(b"') is ") +
                 tensor_describe(p) + cstr(b" but segment_rows says ") +
                 to_str(st.starts[s + 1] - st.starts[s]) + cstr(b" rows"))
        return NULL
    if ref != NULL and ref != p:
        q = 1 if ref.dtype == p.dtype and ref.ndim == p.ndim else 0
        while q and q < p.ndim:
            if ref.shape[q] != p.shape[q]:
                q = 0
                break
            q += 1
        if not q:
            op_fails(op, ctx, E_RUNTIME, cstr(b"field ") + to_str(f) + cstr(b" segment ") +
                     to_str(s) + cstr(b" ('") + op.ins[i].name + cstr(b"') is ") +
                     tensor_describe(p) + cstr(b" but an earlier segment is ") +
                     tensor_describe(ref) + cstr(b": segments of a field need one dtype and row shape"))
            return NULL
    return p


cdef int out_slice(OpInst* op, RunCtx* ctx, Tensor* out, Tensor* src, int64_t row0,
                   int nd, const int64_t* shape, int64_t size, int64_t nbytes) noexcept nogil:
    """Make out a view of src's bytes from row row0 on (src is pinned).
    The slice buffer out holds is reused when it slices the same buffer and
    nothing else holds it (checked under out's lock, where a fetch would
    take its reference), so a steady read allocates nothing."""
    cdef int64_t rowb = 1
    cdef int q
    cdef char* data
    cdef Buffer* b
    cdef Buffer* old = NULL
    cdef Buffer* nb = NULL
    for q in range(1, src.ndim):
        rowb *= src.shape[q]
    rowb *= dtype_itemsize(src.dtype)
    data = <char*>src.buf.data + row0 * rowb
    tensor_lock(out)
    b = out.buf
    if b != NULL and b.parent == src.buf and fp_load(&b.refcnt) == 1:
        b.data = <void*>data
        b.capacity = nbytes
    else:
        tensor_unlock(out)
        nb = buf_new_slice(src.buf, data, nbytes)
        if nb == NULL:
            return op_oom(op, ctx)
        tensor_lock(out)
        old = out.buf
        out.buf = nb
    out.dtype = src.dtype
    out.ndim = nd
    for q in range(nd):
        out.shape[q] = shape[q]
    out.size = size
    tensor_unlock(out)
    buf_decref(old)
    return 0


cdef int k_read_segment_batch(OpInst* op, RunCtx* ctx) noexcept nogil:
    # outputs: stop (bool scalar), one per field
    cdef Cursor* c = op_cursor(op, ctx)
    cdef SegState* st = <SegState*>op.state
    cdef int64_t batch = op.d.args[RSB_BATCH_SIZE].i
    cdef bint enforce = op.d.args[RSB_ENFORCE_BATCH_SIZE].i != 0
    cdef bint record = op.d.args[RSB_RECORD].i != 0
    cdef bint permuted = op.d.args[RSB_PERMUTED].i != 0
    cdef size_t first = 2 if permuted else 1
    cdef size_t S, nf, f
    cdef int64_t n, pos, take, j, r, s, s0, s1, hint, inner, isz, rowb, lo, hi, k, size
    cdef int64_t shape[MAX_DIMS]
    cdef int nd, q, rc = 0, kind = 0        # kind: 1 borrowed, 2 assembled, 3 gathered
    cdef Tensor* x
    cdef Tensor* ref
    cdef Tensor* out
    cdef Tensor* pidx
    cdef int64_t* ix = NULL
    cdef int64_t tsrc = track_src(op, ctx, &st.trk_run, &st.trk_src)
    cdef const FpRanges* sk = NULL
    cdef int64_t lim = INT64_MAX, tag0, tag1
    if c == NULL:
        return -1
    S = st.pins.size()
    n = st.starts[S]
    if op.ins.size() < first + S or (op.ins.size() - first) % S != 0 or \
            op.outs.size() != (op.ins.size() - first) // S + 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"expects inputs (cursor, [indices], ") + to_str(S) +
                        cstr(b" segments per field...) and outputs (stop, one per field)"))
    nf = (op.ins.size() - first) // S
    if permuted:
        pidx = in_t(op, ctx, 1)
        if pidx == NULL:
            return -1
        if pidx.dtype != DT_INT64 or pidx.ndim != 1:
            return fail_dtype(op, ctx, 1, pidx, b"int64 1-D (record indices)")
        tensor_snapshot(pidx, &st.idx)
        if st.idx.size != n:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"the indices ('") + op.ins[1].name +
                          cstr(b"') hold ") + to_str(st.idx.size) + cstr(b" entries for ") +
                          to_str(n) + cstr(b" records"))
            buf_decref(st.idx.buf)
            st.idx.buf = NULL
            return rc
        ix = <int64_t*>st.idx.buf.data
    fp_lock(&c.mu)
    sk = ds_resume_start(c, ctx, tsrc)
    if c.offsets.empty():
        c.offsets.push_back(0)
    pos = c.offsets[0]
    if sk != NULL and pos < n:
        pos = fp_ranges_jump(sk, pos, &lim)     # resumed: skip what was delivered
    if pos > n:
        pos = n
    take = n - pos if n - pos < batch else batch
    if lim - pos < take:
        take = lim - pos    # up to the next delivered range (a shorter batch)
    tag0 = pos
    tag1 = pos + take
    if enforce and take < batch and lim >= n:
        tag1 = n
        take = 0            # a short tail is consumed and not returned
        pos = n
    c.offsets[0] = pos + take
    fp_unlock(&c.mu)
    if tsrc >= 0:
        fp_tags_add(tsrc, tag0, tag1)
    if scalar_out_bool(op, ctx, 0, take == 0) != 0:
        rc = -1
    elif take == 0 and record:
        pass                # the step stops on the flag; outputs keep their last record
    else:
        s0 = s1 = 0
        if ix == NULL and take > 0:
            s0 = seg_of(st, pos, -1)
            s1 = seg_of(st, pos + take - 1, s0)
        for f in range(nf):
            out = blob_out(op.outs[f + 1])
            if take == 0:
                # an empty batch shaped like the field (its first segment)
                ref = seg_pin(op, ctx, st, first, f, 0, NULL)
                if ref == NULL:
                    rc = -1
                    break
                shape[0] = 0
                for q in range(1, ref.ndim):
                    shape[q] = ref.shape[q]
                if out_shape(op, ctx, out, ref.dtype, ref.ndim, shape) != 0:
                    rc = -1
                    break
                seg_unpin(st)
                continue
            if ix != NULL:
                r = ix[pos]
                if r < 0 or r >= n:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"index ") + to_str(r) +
                                  cstr(b" at position ") + to_str(pos) + cstr(b" of '") +
                                  op.ins[1].name + cstr(b"' is out of range for ") +
                                  to_str(n) + cstr(b" records"))
                    break
                s0 = seg_of(st, r, -1)
            ref = seg_pin(op, ctx, st, first, f, s0, NULL)
            if ref == NULL:
                rc = -1
                break
            isz = dtype_itemsize(ref.dtype)
            inner = 1
            for q in range(1, ref.ndim):
                inner *= ref.shape[q]
            rowb = inner * isz
            if record:
                nd = ref.ndim - 1
                for q in range(nd):
                    shape[q] = ref.shape[q + 1]
            else:
                nd = ref.ndim
                shape[0] = take
                for q in range(1, nd):
                    shape[q] = ref.shape[q]
            size = take * inner
            if ix == NULL and s0 == s1 and ref.dtype != DT_STRING:
                kind = 1
                if out_slice(op, ctx, out, ref, pos - st.starts[s0], nd, shape, size,
                             size * isz) != 0:
                    rc = -1
                    break
                seg_unpin(st)
                continue
            kind = 2 if ix == NULL else 3
            if out_shape(op, ctx, out, ref.dtype, nd, shape) != 0:
                rc = -1
                break
            if ix == NULL:
                # assemble: one piece per segment the batch touches
                k = 0
                for s in range(s0, s1 + 1):
                    lo = pos if pos > st.starts[s] else st.starts[s]
                    hi = pos + take if pos + take < st.starts[s + 1] else st.starts[s + 1]
                    if hi <= lo:
                        continue
                    x = seg_pin(op, ctx, st, first, f, s, ref)
                    if x == NULL:
                        rc = -1
                        break
                    if rowb:
                        copy_elems(tdata(out), k * inner, x.buf.data, (lo - st.starts[s]) * inner, (hi - lo) * inner,
                                   ref.dtype, isz)
                    k += hi - lo
            else:
                hint = -1
                for j in range(take):
                    r = ix[pos + j]
                    if r < 0 or r >= n:
                        rc = op_fails(op, ctx, E_RUNTIME, cstr(b"index ") + to_str(r) +
                                      cstr(b" at position ") + to_str(pos + j) + cstr(b" of '") +
                                      op.ins[1].name + cstr(b"' is out of range for ") +
                                      to_str(n) + cstr(b" records"))
                        break
                    s = seg_of(st, r, hint)
                    hint = s
                    x = seg_pin(op, ctx, st, first, f, s, ref)
                    if x == NULL:
                        rc = -1
                        break
                    if rowb:
                        copy_elems(tdata(out), j * inner, x.buf.data, (r - st.starts[s]) * inner,
                                   inner, ref.dtype, isz)
            seg_unpin(st)
            if rc != 0:
                break
    seg_unpin(st)
    if ix != NULL:
        buf_decref(st.idx.buf)
        st.idx.buf = NULL
    if rc == 0 and kind:
        if kind == 1 and st.n_borrowed != NULL:
            fp_fetch_add(st.n_borrowed, 1)
        elif kind == 2 and st.n_assembled != NULL:
            fp_fetch_add(st.n_assembled, 1)
        elif kind == 3 and st.n_gathered != NULL:
            fp_fetch_add(st.n_gathered, 1)
    return rc


reg("ReadSegmentBatch", k_read_segment_batch, seg_init, seg_fini)

# dataset.pxi ran the check before this file registered its kernel: run it
# again so ReadSegmentBatch's table is held to its schema too.
check_kernel_args(_opschema.REGISTRY, _KERNEL_ARGS, _KERNEL_INDEX)
