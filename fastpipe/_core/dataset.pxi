# Dataset operators: a tree cursor over a flat list of fields.
#
# Fields are named like schema field names ("a", "b:lengths", "b:values").
# A field "P:lengths" (int32, 1-D) defines a domain: the rows of every field
# whose name starts with P belong to it, and row r of the lengths field says
# how many rows of that domain belong to row r of the lengths field's own
# domain.  Every field belongs to the domain of the longest matching
# lengths prefix, else to the root (domain 0).  Domain k + 1 is the domain of
# the k-th lengths field; a lengths field must come before the fields that
# depend on it, so a domain's parent always has a smaller index.
#
# A cursor (OBJ_CURSOR) holds one int64 offset per domain and a mutex.
# ReadNextBatch advances the offsets under the mutex and copies the slices
# after releasing it, so N instances reading one cursor only serialise on the
# (cheap) offset arithmetic and each record is read exactly once.  Input
# buffers are pinned (one reference each) for the copy, so an output that
# aliases an input never overwrites bytes still being read.  ReadRandomBatch
# keeps only offset 0 (its position in the index permutation), as Caffe2
# does; ComputeOffset takes the lock too (Caffe2 takes none).

from libc.stdint cimport INT64_MAX, uint32_t

cdef extern from *:
    """
    #include <algorithm>
    #include <numeric>
    #include <random>
    #include <vector>
    #include <new>
    #include <atomic>
    #include <chrono>

    // SortAndShuffle's index permutation, Caffe2's scheme with libstdc++:
    // (unstable) std::sort on the key, then std::shuffle of every full block
    // of batch*shuffle indices (except one ending exactly at the end) with a
    // fresh engine, then a shuffle of the order of the batches (a fresh
    // engine again), the tail kept last.  Each fresh engine is
    // std::default_random_engine(seed); Caffe2 default-constructs it, which
    // is seed 1, so seed 1 reproduces Caffe2 bit for bit.
    // Returns 0, or -1 when out of memory.
    static int fp_ds_sort_shuffle(int64_t* out, int64_t size,
                                  const int32_t* keys32, const int64_t* keys64,
                                  int64_t batch, int64_t shuffle,
                                  uint32_t seed) noexcept {
        try {
            std::vector<int64_t> idx(size);
            std::iota(idx.begin(), idx.end(), (int64_t)0);
            if (keys32) {
                std::sort(idx.begin(), idx.end(), [keys32](int64_t a, int64_t b) {
                    return keys32[a] < keys32[b];
                });
            } else if (keys64) {
                std::sort(idx.begin(), idx.end(), [keys64](int64_t a, int64_t b) {
                    return keys64[a] < keys64[b];
                });
            }
            int64_t block = batch * shuffle;
            if (block > 1) {
                int64_t off = 0;
                while (off + block < size) {
                    std::shuffle(idx.begin() + off, idx.begin() + off + block,
                                 std::default_random_engine(seed));
                    off += block;
                }
            }
            int64_t nb = size / batch;
            std::vector<int64_t> order(nb);
            std::iota(order.begin(), order.end(), (int64_t)0);
            std::shuffle(order.begin(), order.end(), std::default_random_engine(seed));
            for (int64_t i = 0; i < nb; i++) {
                std::copy(idx.begin() + order[i] * batch,
                          idx.begin() + (order[i] + 1) * batch, out);
                out += batch;
            }
            std::copy(idx.begin() + nb * batch, idx.end(), out);
            return 0;
        } catch (const std::bad_alloc&) {
            return -1;
        }
    }

    // A seed for an unseeded SortAndShuffle, in [1, 2^31 - 2] (the range in
    // which default_random_engine seeds are distinct): from the OS random
    // source, mixed with the clock and a counter in case random_device is
    // deterministic or fails.
    static uint32_t fp_ds_random_seed(uint64_t salt) noexcept {
        static std::atomic<uint64_t> calls{0};
        uint64_t x = salt ^ (calls.fetch_add(1) * 0x9E3779B97F4A7C15ULL) ^
            (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count();
        try {
            std::random_device rd;
            x ^= ((uint64_t)rd() << 32) ^ rd();
        } catch (...) {
        }
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ULL; x ^= x >> 27;   // splitmix finaliser
        return (uint32_t)(1 + x % 2147483646ULL);
    }
    """
    int fp_ds_sort_shuffle(int64_t* out, int64_t size, const int32_t* keys32,
                           const int64_t* keys64, int64_t batch, int64_t shuffle,
                           uint32_t seed) noexcept nogil
    uint32_t fp_ds_random_seed(uint64_t salt) noexcept nogil


# ---- the field tree ------------------------------------------------------------

cdef cppclass FieldTree:
    vector[string] names
    vector[int] domain          # per field: its domain (0 = root)
    vector[int] len_field       # per lengths field k (domain k + 1): its field index
    vector[int] parent          # per domain: parent domain (-1 for the root)
    int ndomains


cdef void split_name(const string& s, vector[string]* parts) noexcept nogil:
    """Split on ':' like Caffe2's getline-based split: a trailing empty piece
    is dropped ("a:" -> ["a"], "" -> [])."""
    cdef size_t start = 0, i
    parts.clear()
    for i in range(s.size()):
        if s[i] == b':':
            parts.push_back(s.substr(start, i - start))
            start = i + 1
    if start < s.size():
        parts.push_back(s.substr(start))


cdef int tree_build(FieldTree* t, const vector[string]& fields, string* err) noexcept nogil:
    """Fill t from field names.  -1 with err set when a field depends on a
    lengths field listed after it."""
    cdef vector[vector[string]] parts
    cdef vector[int] lens           # field ids of lengths fields, in order
    cdef size_t i, j, m, nf = fields.size()
    cdef size_t best_level
    cdef int best
    cdef bint match
    cdef vector[string]* lp
    cdef vector[string]* fp
    t.names = fields
    t.domain.assign(nf, 0)
    t.len_field.clear()
    t.parent.clear()
    parts.resize(nf)
    for i in range(nf):
        split_name(fields[i], &parts[i])
        if parts[i].size() and parts[i].back() == b"lengths":
            lens.push_back(<int>i)
    t.len_field = lens
    t.ndomains = <int>lens.size() + 1
    # longest matching lengths prefix (more than the bare "lengths")
    for i in range(nf):
        best_level = 1
        best = -1
        fp = &parts[i]
        for j in range(lens.size()):
            if <size_t>lens[j] == i:
                continue
            lp = &parts[lens[j]]
            if lp.size() <= best_level or fp.size() < lp.size() - 1:
                continue
            match = True
            for m in range(lp.size() - 1):
                if lp[0][m] != fp[0][m]:
                    match = False
                    break
            if match:
                best_level = lp.size()
                best = <int>j
        t.domain[i] = best + 1
        if best >= 0 and <size_t>lens[best] > i:
            err[0] = cstr(b"field ") + to_str(i) + cstr(b" ('") + fields[i] + \
                cstr(b"') depends on a lengths field defined after it: field ") + \
                to_str(lens[best]) + cstr(b" ('") + fields[lens[best]] + cstr(b"')")
            return -1
    t.parent.push_back(-1)
    for j in range(lens.size()):
        t.parent.push_back(t.domain[lens[j]])
    return 0


# ---- the cursor object -----------------------------------------------------------

cdef cppclass Cursor:
    FieldTree tree              # immutable after creation
    fp_mutex mu                 # protects offsets and last_run
    vector[int64_t] offsets     # one per domain; empty means "at start"
    int64_t last_run            # run id of the last ReadNextBatch (0: never read)
    int64_t resume_run          # the resumed run that restarted it at 0 (tracking)


cdef void cursor_destroy(void* p) noexcept nogil:
    cdef Cursor* c = <Cursor*>p
    fp_mutex_destroy(&c.mu)
    del c


# Save/Load (savedb.pxi): a cursor's state is its field names and offsets
# (u32 count + u32-length-prefixed names, u32 count + int64 offsets; an empty
# offset list is "at start").  A loaded cursor has never been read (last_run 0).
cdef void cursor_get_state(void* impl, string* out) noexcept nogil:
    cdef Cursor* c = <Cursor*>impl
    cdef vector[int64_t] offs
    cdef uint32_t n
    cdef size_t i
    fp_lock(&c.mu)
    offs = c.offsets
    fp_unlock(&c.mu)
    n = <uint32_t>c.tree.names.size()
    out.append(<const char*>&n, 4)
    for i in range(c.tree.names.size()):
        n = <uint32_t>c.tree.names[i].size()
        out.append(<const char*>&n, 4)
        out.append(c.tree.names[i])
    n = <uint32_t>offs.size()
    out.append(<const char*>&n, 4)
    if offs.size():
        out.append(<const char*>offs.data(), 8 * offs.size())


cdef int cursor_from_state(const char* p, size_t len, ObjHeader** out, string* err) noexcept nogil:
    """A new cursor object from cursor_get_state's bytes.  0, or -1 with err."""
    cdef vector[string] fields
    cdef uint32_t n, k, ln
    cdef size_t pos = 0
    cdef Cursor* c
    if len < 4:
        err[0] = cstr(b"too short")
        return -1
    memcpy(&n, p, 4)
    pos = 4
    for k in range(n):
        if len - pos < 4:
            err[0] = cstr(b"too short")
            return -1
        memcpy(&ln, p + pos, 4)
        pos += 4
        if len - pos < ln:
            err[0] = cstr(b"too short")
            return -1
        fields.push_back(string(p + pos, ln))
        pos += ln
    if len - pos < 4:
        err[0] = cstr(b"too short")
        return -1
    memcpy(&n, p + pos, 4)
    pos += 4
    if len - pos != <size_t>n * 8:
        err[0] = cstr(b"offset count does not match its length")
        return -1
    c = new Cursor()
    if tree_build(&c.tree, fields, err) != 0:
        del c
        return -1
    if n and n != <uint32_t>c.tree.ndomains:
        err[0] = cstr(b"offsets for ") + to_str(n) + cstr(b" domains, the fields have ") + \
            to_str(c.tree.ndomains)
        del c
        return -1
    c.offsets.resize(n)
    if n:
        memcpy(c.offsets.data(), p + pos, 8 * n)
    fp_mutex_init(&c.mu)
    c.last_run = 0
    out[0] = obj_new(OBJ_CURSOR, c, cursor_destroy)
    if out[0] == NULL:
        err[0] = cstr(b"out of memory")
        return -1
    return 0


cdef enum:   # argument positions (checked against the schemas on import)
    TC_FIELDS = 0                   # CreateTreeCursor, CheckDatasetConsistency
    RNB_BATCH_SIZE = 0              # ReadNextBatch
    RNB_ENFORCE_BATCH_SIZE = 1
    SAS_SORT_BY_FIELD_IDX = 0       # SortAndShuffle
    SAS_BATCH_SIZE = 1
    SAS_SHUFFLE_SIZE = 2
    SAS_SEED = 3
    RRB_BATCH_SIZE = 0              # ReadRandomBatch
    RRB_ENFORCE_BATCH_SIZE = 1
    RRB_LOOP_OVER = 2
kernel_args("CreateTreeCursor", fields=(TC_FIELDS, "strings"))
kernel_args("CheckDatasetConsistency", fields=(TC_FIELDS, "strings"))
kernel_args("ReadNextBatch", batch_size=(RNB_BATCH_SIZE, "int"),
            enforce_batch_size=(RNB_ENFORCE_BATCH_SIZE, "bool"))
kernel_args("SortAndShuffle", sort_by_field_idx=(SAS_SORT_BY_FIELD_IDX, "int"),
            batch_size=(SAS_BATCH_SIZE, "int"), shuffle_size=(SAS_SHUFFLE_SIZE, "int"),
            seed=(SAS_SEED, "int"))
kernel_args("ReadRandomBatch", batch_size=(RRB_BATCH_SIZE, "int"),
            enforce_batch_size=(RRB_ENFORCE_BATCH_SIZE, "bool"), loop_over=(RRB_LOOP_OVER, "bool"))


cdef int k_create_tree_cursor(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Cursor* c = new Cursor()
    cdef string err
    cdef ObjHeader* h
    if tree_build(&c.tree, op.d.args[TC_FIELDS].strings, &err) != 0:
        del c
        return op_fails(op, ctx, E_RUNTIME, err)
    fp_mutex_init(&c.mu)
    c.last_run = 0
    c.resume_run = 0
    h = obj_new(OBJ_CURSOR, c, cursor_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef inline Cursor* op_cursor(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_CURSOR)
    if h == NULL:
        return NULL
    return <Cursor*>h.impl


cdef int k_reset_cursor(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Cursor* c = op_cursor(op, ctx)
    if c == NULL:
        return -1
    fp_lock(&c.mu)
    c.offsets.clear()
    fp_unlock(&c.mu)
    return 0


# ---- per-op scratch (reused across runs: steady-state reads do not allocate) -----

cdef cppclass DsState:
    vector[Tensor] ins          # snapshots of the field inputs (one buffer ref each)
    vector[int64_t] limits      # per domain: rows available (INT64_MAX: no field)
    vector[int64_t] limit_field # per domain: a field that sets the limit (-1: none)
    vector[int64_t] start       # per domain: offset before the advance
    vector[int64_t] sizes       # per domain: rows taken
    vector[int64_t] ends        # per domain: offset after the advance
    FieldTree tree              # CheckDatasetConsistency: parsed at init
    int64_t trk_run             # provenance tracking: run whose source id is cached
    int64_t trk_src             # that source id (-1: untracked)


cdef int ds_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef DsState* st = new DsState()
    st.trk_run = 0
    st.trk_src = -1
    op.state = <void*>st
    return 0


cdef inline const FpRanges* ds_resume_start(Cursor* c, RunCtx* ctx, int64_t src) noexcept nogil:
    """In a resumed run (iterate(state=...)): the source's delivered set; the
    first read of the run restarts the cursor at the first record (the set
    says what to skip).  The caller holds c.mu."""
    cdef const FpRanges* sk
    if src < 0:
        return NULL
    sk = fp_track_skip(ctx.rs.track, src)
    if sk != NULL and c.resume_run != ctx.rs.run_id:
        c.offsets.clear()
        c.resume_run = ctx.rs.run_id
    return sk


cdef int ds_check_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef DsState* st = new DsState()
    cdef string err
    if tree_build(&st.tree, op.d.args[TC_FIELDS].strings, &err) != 0:
        del st      # the compiler does not call fini after a failed init
        return op_fails(op, ctx, E_RUNTIME, err)
    op.state = <void*>st
    return 0


cdef void ds_release(DsState* st) noexcept nogil:
    cdef size_t i
    for i in range(st.ins.size()):
        buf_decref(st.ins[i].buf)
        st.ins[i].buf = NULL
    st.ins.clear()


cdef void ds_fini(OpInst* op) noexcept nogil:
    cdef DsState* st = <DsState*>op.state
    if st == NULL:
        return
    ds_release(st)
    del st
    op.state = NULL


cdef string field_desc(FieldTree* t, size_t i) noexcept nogil:
    return cstr(b"field ") + to_str(i) + cstr(b" ('") + t.names[i] + cstr(b"')")


cdef string domain_desc(FieldTree* t, int d) noexcept nogil:
    if d == 0:
        return cstr(b"the root domain")
    return cstr(b"the domain of ") + field_desc(t, t.len_field[d - 1])


cdef int snapshot_fields(OpInst* op, RunCtx* ctx, DsState* st, FieldTree* t,
                         size_t first, bint same_dim0) noexcept nogil:
    """Take a reference to every field input (inputs first .. first+F-1) and
    compute per-domain limits: the smallest dim0 of the domain's fields, or
    with same_dim0 (CheckDatasetConsistency) require equal dim0s.  Checks
    ndim >= 1 everywhere and int32 1-D lengths.  The caller releases st."""
    cdef size_t i, nf = t.names.size()
    cdef Tensor* x
    cdef Tensor snap
    cdef int d
    cdef int64_t rows
    ds_release(st)
    st.limits.assign(t.ndomains, INT64_MAX)
    st.limit_field.assign(t.ndomains, -1)
    for i in range(nf):
        x = in_t(op, ctx, first + i)
        if x == NULL:
            return -1
        tensor_snapshot(x, &snap)
        st.ins.push_back(snap)
    for i in range(nf):
        x = &st.ins[i]
        if x.ndim < 1:
            return op_fails(op, ctx, E_RUNTIME, field_desc(t, i) + cstr(b" (blob '") +
                            op.ins[first + i].name + cstr(b"') is ") + tensor_describe(x) +
                            cstr(b"; dataset fields need at least 1 dim"))
        d = t.domain[i]
        rows = x.shape[0]
        if same_dim0 and st.limit_field[d] >= 0 and rows != st.limits[d]:
            return op_fails(op, ctx, E_RUNTIME,
                            cstr(b"Inconsistent sizes for fields belonging to same domain: ") +
                            field_desc(t, i) + cstr(b" has ") + to_str(rows) + cstr(b" rows but ") +
                            field_desc(t, st.limit_field[d]) + cstr(b" has ") + to_str(st.limits[d]) +
                            cstr(b" (both in ") + domain_desc(t, d) + cstr(b")"))
        if st.limit_field[d] < 0 or rows < st.limits[d]:
            st.limits[d] = rows
            st.limit_field[d] = <int64_t>i
    for d in range(1, t.ndomains):
        i = <size_t>t.len_field[d - 1]
        x = &st.ins[i]
        if x.dtype != DT_INT32 or x.ndim != 1:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"lengths ") + field_desc(t, i) +
                            cstr(b" (blob '") + op.ins[first + i].name + cstr(b"') is ") +
                            tensor_describe(x) + cstr(b", expected int32 1-D"))
    return 0


# Results of ds_advance.
cdef enum:
    ADV_OK = 0
    ADV_PAST_END = 1        # root offset beyond the data (the data shrank)
    ADV_INCONSISTENT = 2    # a child domain would pass its end
    ADV_NEGATIVE = 3        # a negative length


cdef int ds_advance(FieldTree* t, DsState* st, int64_t num, int* bad_domain,
                    int64_t* bad_value) noexcept nogil:
    """From offsets st.start, take up to num root records: fills st.sizes and
    st.ends.  Lengths are read from st.ins (checked int32 1-D; a parent's rows
    are within its lengths field because the lengths field is one of the
    parent domain's fields, so it bounds the parent's limit)."""
    cdef int d, p
    cdef int64_t total, k, off, lim
    cdef int32_t* lens
    cdef int32_t v
    lim = st.limits[0]
    off = st.start[0]
    if off > lim or off < 0:
        bad_domain[0] = 0
        bad_value[0] = off
        return ADV_PAST_END
    st.sizes[0] = lim - off if lim - off < num else num
    st.ends[0] = off + st.sizes[0]
    for d in range(1, t.ndomains):
        p = t.parent[d]
        lens = <int32_t*>tdata(&st.ins[t.len_field[d - 1]])
        total = 0
        for k in range(st.start[p], st.start[p] + st.sizes[p]):
            v = lens[k]
            if v < 0:
                bad_domain[0] = d
                bad_value[0] = k
                return ADV_NEGATIVE
            total += v
        off = st.start[d]
        if off < 0 or total > st.limits[d] - off:
            bad_domain[0] = d
            bad_value[0] = total
            return ADV_INCONSISTENT
        st.sizes[d] = total
        st.ends[d] = off + total
    return ADV_OK


cdef int advance_fail(OpInst* op, RunCtx* ctx, FieldTree* t, DsState* st, int rc,
                      int d, int64_t v) noexcept nogil:
    cdef size_t lf
    if rc == ADV_PAST_END:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"Tried to advance past end of cursor: offset ") +
                        to_str(v) + cstr(b" but the root domain has ") + to_str(st.limits[0]) +
                        cstr(b" rows (did the data shrink?)"))
    lf = <size_t>t.len_field[d - 1]
    if rc == ADV_NEGATIVE:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"negative length ") +
                        to_str((<int32_t*>tdata(&st.ins[lf]))[v]) + cstr(b" at row ") + to_str(v) +
                        cstr(b" of lengths ") + field_desc(t, lf))
    if st.limit_field[d] < 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"Inconsistent field length: lengths ") +
                        field_desc(t, lf) + cstr(b" overflow"))
    return op_fails(op, ctx, E_RUNTIME, cstr(b"Inconsistent field length: tried to advance past the "
                    b"end of ") + domain_desc(t, d) + cstr(b": from offset ") + to_str(st.start[d]) +
                    cstr(b" the lengths sum to ") + to_str(v) + cstr(b" but ") +
                    field_desc(t, st.limit_field[d]) + cstr(b" has ") + to_str(st.limits[d]) +
                    cstr(b" rows"))


cdef int copy_rows(OpInst* op, RunCtx* ctx, size_t out_i, Tensor* x, int64_t row0,
                   int64_t nrows) noexcept nogil:
    """outs[out_i] = x[row0 : row0 + nrows] (checked by the caller)."""
    cdef int64_t shape[MAX_DIMS]
    cdef int64_t inner = 1, k, n
    cdef int j
    cdef Tensor* out
    cdef string* src
    cdef string* dst
    for j in range(1, x.ndim):
        shape[j] = x.shape[j]
        inner *= x.shape[j]
    shape[0] = nrows
    out = blob_out(op.outs[out_i])
    if out_shape(op, ctx, out, x.dtype, x.ndim, shape) != 0:
        return -1
    n = nrows * inner
    if n == 0:
        return 0
    if x.dtype == DT_STRING:
        src = <string*>x.buf.data + row0 * inner
        dst = <string*>tdata(out)
        for k in range(n):
            dst[k] = src[k]
    else:
        memcpy(tdata(out), <char*>x.buf.data + row0 * inner * dtype_itemsize(x.dtype),
               n * dtype_itemsize(x.dtype))
    return 0


cdef int check_field_count(OpInst* op, RunCtx* ctx, Cursor* c, size_t nin) noexcept nogil:
    if nin != c.tree.names.size():
        return op_fails(op, ctx, E_RUNTIME, cstr(b"the cursor ('") + op.ins[0].name +
                        cstr(b"') has ") + to_str(c.tree.names.size()) + cstr(b" fields but the op has ") +
                        to_str(nin) + cstr(b" field inputs"))
    return 0


# ---- ReadNextBatch ------------------------------------------------------------------

cdef int k_read_next_batch(OpInst* op, RunCtx* ctx) noexcept nogil:
    # args: batch_size, enforce_batch_size
    cdef Cursor* c = op_cursor(op, ctx)
    cdef DsState* st = <DsState*>op.state
    cdef FieldTree* t
    cdef int64_t batch = op.d.args[RNB_BATCH_SIZE].i
    cdef bint enforce = op.d.args[RNB_ENFORCE_BATCH_SIZE].i != 0
    cdef size_t i, nf
    cdef int d, rc, bad_d = 0
    cdef int64_t bad_v = 0, have = 0
    cdef bint stale
    cdef int64_t src = track_src(op, ctx, &st.trk_run, &st.trk_src)
    cdef const FpRanges* sk = NULL
    cdef int64_t jpos, lim = INT64_MAX, want = batch, tag0 = 0
    if c == NULL:
        return -1
    t = &c.tree
    nf = t.names.size()
    if check_field_count(op, ctx, c, op.ins.size() - 1) != 0:
        return -1
    if op.outs.size() != nf:
        return op_fail(op, ctx, E_RUNTIME, b"expects one output per field input")
    if batch < 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"batch_size=") + to_str(batch) + cstr(b" must be >= 1"))
    if snapshot_fields(op, ctx, st, t, 1, False) != 0:
        ds_release(st)
        return -1
    st.start.resize(t.ndomains)
    st.sizes.resize(t.ndomains)
    st.ends.resize(t.ndomains)
    # Advance under the lock; nothing is copied while it is held.
    fp_lock(&c.mu)
    sk = ds_resume_start(c, ctx, src)
    # The first read of a run that finds the cursor already at the end of
    # non-empty data (a cursor made once, e.g. in a user's init net, and
    # read to the end by an earlier run) reads nothing: note it, so the
    # run ends with a FastpipeWarning instead of silently zero batches.
    stale = (sk == NULL and c.last_run != ctx.rs.run_id and c.last_run != 0 and
             c.offsets.size() == <size_t>t.ndomains and st.limits[0] > 0 and
             c.offsets[0] >= st.limits[0])
    c.last_run = ctx.rs.run_id
    if c.offsets.empty():
        c.offsets.assign(t.ndomains, 0)
    if c.offsets.size() != <size_t>t.ndomains:
        have = c.offsets.size()
        rc = -1
    else:
        for d in range(t.ndomains):
            st.start[d] = c.offsets[d]
        rc = ADV_OK
        if sk != NULL:
            # resumed: step over the records delivered before (no copy)
            jpos = fp_ranges_jump(sk, st.start[0], &lim)
            if jpos > st.limits[0]:
                jpos = st.limits[0]
            if jpos > st.start[0]:
                rc = ds_advance(t, st, jpos - st.start[0], &bad_d, &bad_v)
                if rc == ADV_OK:
                    for d in range(t.ndomains):
                        st.start[d] = st.ends[d]
            if lim - st.start[0] < want:
                want = lim - st.start[0]
        if rc == ADV_OK:
            rc = ds_advance(t, st, want, &bad_d, &bad_v)
        if rc == ADV_OK:
            for d in range(t.ndomains):
                c.offsets[d] = st.ends[d]
    fp_unlock(&c.mu)
    if stale:
        rs_warn(ctx.rs, op_where(op, ctx) + cstr(b": the cursor '") + op.ins[0].name +
                cstr(b"' was already at the end of its ") + to_str(st.limits[0]) +
                cstr(b" records when this run first read it, so this run read nothing "
                     b"(a Dataset.reader() cursor is made once and reads the data once; "
                     b"use Dataset.epoch_reader() to start every run afresh, or reset "
                     b"the cursor with ResetCursor)"))
    if rc == -1:
        ds_release(st)
        return op_fails(op, ctx, E_RUNTIME, cstr(b"the cursor ('") + op.ins[0].name + cstr(b"') holds ") +
                        to_str(have) + cstr(b" offsets for ") + to_str(t.ndomains) +
                        cstr(b" domains (it was used by ReadRandomBatch; reset it with ResetCursor)"))
    if rc != ADV_OK:
        advance_fail(op, ctx, t, st, rc, bad_d, bad_v)
        ds_release(st)
        return -1
    tag0 = st.start[0]
    if src >= 0:
        fp_tags_add(src, tag0, tag0 + st.sizes[0])
    if enforce and st.sizes[0] < batch and (sk == NULL or st.ends[0] >= st.limits[0]):
        # a short tail is consumed but returned empty: the end-of-data signal
        # (a batch cut short by a resume's skip is returned as it is)
        for d in range(t.ndomains):
            st.sizes[d] = 0
    rc = 0
    for i in range(nf):
        d = t.domain[i]
        if copy_rows(op, ctx, i, &st.ins[i], st.start[d], st.sizes[d]) != 0:
            rc = -1
            break
    ds_release(st)
    return rc


# ---- ComputeOffset -------------------------------------------------------------------

cdef int k_compute_offset(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Cursor* c = op_cursor(op, ctx)
    cdef DsState* st = <DsState*>op.state
    cdef FieldTree* t
    cdef int d, D, rc = ADV_OK, bad_d = 0
    cdef int64_t k, n, bad_v = 0
    cdef int64_t shape[2]
    cdef Tensor* out
    cdef int64_t* o
    if c == NULL:
        return -1
    t = &c.tree
    if check_field_count(op, ctx, c, op.ins.size() - 1) != 0:
        return -1
    if t.names.size() == 0:
        return op_fail(op, ctx, E_RUNTIME, b"the cursor has no fields")
    if snapshot_fields(op, ctx, st, t, 1, False) != 0:
        ds_release(st)
        return -1
    D = t.ndomains
    n = st.limits[0]
    st.start.assign(D, 0)
    st.sizes.resize(D)
    st.ends.resize(D)
    shape[0] = n + 1
    shape[1] = D
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_INT64, 2, shape) != 0:
        ds_release(st)
        return -1
    o = <int64_t*>tdata(out)
    # Row k = the offsets after k records, from the start of the data.  The
    # lock makes this safe against concurrent readers of the cursor (Caffe2
    # takes none); the cursor is left at the start.
    fp_lock(&c.mu)
    for k in range(n + 1):
        for d in range(D):
            o[k * D + d] = st.start[d]
        if k == n:
            break
        rc = ds_advance(t, st, 1, &bad_d, &bad_v)
        if rc != ADV_OK:
            break
        for d in range(D):
            st.start[d] = st.ends[d]
    if rc == ADV_OK:
        c.offsets.assign(D, 0)
    fp_unlock(&c.mu)
    if rc != ADV_OK:
        advance_fail(op, ctx, t, st, rc, bad_d, bad_v)
        ds_release(st)
        return -1
    ds_release(st)
    return 0


# ---- SortAndShuffle ------------------------------------------------------------------

# Output blob names of SortAndShuffle runs without a seed (the last run of
# each name wins): a reader through such an order cannot be resumed exactly,
# even when the order was made outside the job (LocalSession.iterate asks).
cdef fp_mutex g_unseeded_lock      # protects g_unseeded_orders
fp_mutex_init(&g_unseeded_lock)
cdef unordered_map[string, int64_t] g_unseeded_orders


def _unseeded_order(name):
    """True when blob `name` was last written by a SortAndShuffle without a seed."""
    cdef string k = _bname(name)
    cdef bint r
    fp_lock(&g_unseeded_lock)
    r = g_unseeded_orders.count(k) != 0
    fp_unlock(&g_unseeded_lock)
    return r


cdef int k_sort_and_shuffle(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Cursor* c = op_cursor(op, ctx)
    cdef FieldTree* t
    cdef int64_t sidx = op.d.args[SAS_SORT_BY_FIELD_IDX].i
    cdef int64_t batch = op.d.args[SAS_BATCH_SIZE].i
    cdef int64_t shuffle = op.d.args[SAS_SHUFFLE_SIZE].i
    cdef int64_t size
    cdef Tensor* key
    cdef Tensor K
    cdef Tensor* out
    cdef size_t nf
    cdef int rc
    cdef const int32_t* k32 = NULL
    cdef const int64_t* k64 = NULL
    cdef uint32_t seed
    if c == NULL:
        return -1
    t = &c.tree
    nf = t.names.size()
    if check_field_count(op, ctx, c, op.ins.size() - 1) != 0:
        return -1
    if nf == 0:
        return op_fail(op, ctx, E_RUNTIME, b"the cursor has no fields")
    if sidx < -1 or sidx >= <int64_t>nf:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"sort_by_field_idx=") + to_str(sidx) +
                        cstr(b" must be -1 (no sort) or a field index < ") + to_str(nf))
    if batch < 1 or shuffle < 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"batch_size=") + to_str(batch) +
                        cstr(b" and shuffle_size=") + to_str(shuffle) + cstr(b" must be >= 1"))
    key = in_t(op, ctx, <size_t>(sidx if sidx >= 0 else 0) + 1)
    if key == NULL:
        return -1
    if key.ndim < 1:
        return op_fails(op, ctx, E_RUNTIME, field_desc(t, sidx if sidx >= 0 else 0) +
                        cstr(b" is ") + tensor_describe(key) + cstr(b"; dataset fields need at least 1 dim"))
    size = key.shape[0]
    if sidx >= 0:
        if t.domain[sidx] != 0:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot sort by ") + field_desc(t, sidx) +
                            cstr(b": it is not in the root domain"))
        if key.dtype != DT_INT32 and key.dtype != DT_INT64:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot sort by ") + field_desc(t, sidx) +
                            cstr(b": it is ") + tensor_describe(key) + cstr(b", expected int32 or int64"))
        if key.size != size:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot sort by ") + field_desc(t, sidx) +
                            cstr(b": it is ") + tensor_describe(key) + cstr(b", expected 1 value per row"))
    # adjust shuffle_size when a shuffle block is larger than the data (Caffe2)
    if shuffle > size // batch:
        shuffle = size // batch
    K = key[0]
    buf_incref(K.buf)       # the output may be the key blob
    if sidx >= 0:
        if K.dtype == DT_INT32:
            k32 = <int32_t*>K.buf.data
        else:
            k64 = <int64_t*>K.buf.data
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_INT64, 1, &size) != 0:
        buf_decref(K.buf)
        return -1
    # seed given (the schema checked its range): that permutation, every time;
    # not given: a fresh random seed on every run, so that processes (and runs)
    # do not all read in one order
    fp_lock(&g_unseeded_lock)
    if op.d.args[SAS_SEED].present:
        g_unseeded_orders.erase(op.d.outputs[0])
    else:
        g_unseeded_orders[op.d.outputs[0]] = 1
    fp_unlock(&g_unseeded_lock)
    if op.d.args[SAS_SEED].present:
        seed = <uint32_t>op.d.args[SAS_SEED].i
    else:
        seed = fp_ds_random_seed(<uint64_t><size_t>op)
    rc = fp_ds_sort_shuffle(<int64_t*>tdata(out), size, k32, k64, batch, shuffle, seed)
    buf_decref(K.buf)
    if rc != 0:
        return op_oom(op, ctx)
    return 0


# ---- ReadRandomBatch ------------------------------------------------------------------

cdef int k_read_random_batch(OpInst* op, RunCtx* ctx) noexcept nogil:
    # inputs: cursor, indices (int64), offsets (int64 [N+1, D]), fields...
    # args: batch_size, enforce_batch_size, loop_over
    cdef Cursor* c = op_cursor(op, ctx)
    cdef DsState* st = <DsState*>op.state
    cdef FieldTree* t
    cdef int64_t batch = op.d.args[RRB_BATCH_SIZE].i
    cdef bint enforce = op.d.args[RRB_ENFORCE_BATCH_SIZE].i != 0
    cdef bint loop_over = op.d.args[RRB_LOOP_OVER].i != 0
    cdef Tensor* pidx
    cdef Tensor* poff
    cdef Tensor IDX, OFF
    cdef int64_t nidx, pos, end, j, r, b0, b1, rows, nrec, D, inner, isz, k
    cdef int64_t shape[MAX_DIMS]
    cdef int64_t* ix
    cdef int64_t* M
    cdef size_t i, nf
    cdef int d, q, rc = 0
    cdef Tensor* x
    cdef Tensor* out
    cdef string* ss
    cdef string* ds
    cdef int64_t src = track_src(op, ctx, &st.trk_run, &st.trk_src)
    cdef const FpRanges* sk = NULL
    cdef int64_t lim = INT64_MAX, want = batch, tag0 = 0
    if c == NULL:
        return -1
    t = &c.tree
    nf = t.names.size()
    if op.ins.size() < 3 or check_field_count(op, ctx, c, op.ins.size() - 3) != 0:
        return -1
    if op.outs.size() != nf:
        return op_fail(op, ctx, E_RUNTIME, b"expects one output per field input")
    if batch < 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"batch_size=") + to_str(batch) + cstr(b" must be >= 1"))
    pidx = in_t(op, ctx, 1)
    if pidx == NULL:
        return -1
    if pidx.dtype != DT_INT64:
        return fail_dtype(op, ctx, 1, pidx, b"int64 (record indices)")
    poff = in_t(op, ctx, 2)
    if poff == NULL:
        return -1
    D = t.ndomains
    if poff.dtype != DT_INT64 or poff.ndim != 2 or poff.shape[1] != D or poff.shape[0] < 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"input 2 ('") + op.ins[2].name + cstr(b"') is ") +
                        tensor_describe(poff) + cstr(b", expected int64 [records + 1, ") + to_str(D) +
                        cstr(b"] offsets from ComputeOffset"))
    IDX = pidx[0]
    OFF = poff[0]
    buf_incref(IDX.buf)
    buf_incref(OFF.buf)
    if snapshot_fields(op, ctx, st, t, 3, False) != 0:
        rc = -1
    else:
        nidx = IDX.size
        nrec = OFF.shape[0] - 1
        ix = <int64_t*>IDX.buf.data
        M = <int64_t*>OFF.buf.data
        # Position under the lock (the cursor's first offset); the copy is
        # done outside it.
        fp_lock(&c.mu)
        sk = ds_resume_start(c, ctx, src)
        # Caffe2 keeps only the first offset: a ReadNextBatch on this cursor
        # then fails (instead of reading misaligned nested slices) until a
        # ResetCursor.
        if c.offsets.empty():
            c.offsets.push_back(0)
        c.offsets.resize(1)
        pos = c.offsets[0]
        if sk != NULL and 0 <= pos < nidx:
            # resumed: step over positions delivered before; a batch ends
            # where the next delivered range starts (it may be shorter)
            pos = fp_ranges_jump(sk, pos, &lim)
            if pos > nidx:
                pos = nidx
            if lim - pos < want:
                want = lim - pos
        tag0 = pos
        if enforce and pos + batch > nidx and (sk == NULL or lim >= nidx):
            pos = nidx
        if loop_over and pos >= nidx:
            c.offsets[0] = 0
            pos = 0
            tag0 = 0
        c.offsets[0] = pos + want
        fp_unlock(&c.mu)
        batch = want
        if pos < 0:
            pos = nidx
        end = pos + batch if batch < nidx - pos else nidx
        if end < pos:
            end = pos
        if src >= 0 and 0 <= tag0:
            # consumed: [tag0, end), including an enforce-dropped tail
            fp_tags_add(src, tag0, end)
        # validate every picked record once
        for j in range(pos, end):
            r = ix[j]
            if r < 0 or r >= nrec:
                rc = op_fails(op, ctx, E_RUNTIME, cstr(b"Out of bound when trying to get elem from "
                              b"offsetsmat: index ") + to_str(r) + cstr(b" at position ") + to_str(j) +
                              cstr(b" of '") + op.ins[1].name + cstr(b"' but the offsets ('") +
                              op.ins[2].name + cstr(b"') cover ") + to_str(nrec) + cstr(b" records"))
                break
            for q in range(D):
                b0 = M[r * D + q]
                b1 = M[(r + 1) * D + q]
                if b0 < 0 or b1 < b0 or b1 > st.limits[q]:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"offsets ('") + op.ins[2].name +
                                  cstr(b"') of record ") + to_str(r) + cstr(b" give rows [") + to_str(b0) +
                                  cstr(b", ") + to_str(b1) + cstr(b") in ") + domain_desc(t, q) +
                                  cstr(b", which has ") + to_str(st.limits[q]) + cstr(b" rows"))
                    break
            if rc:
                break
        if rc == 0:
            for i in range(nf):
                x = &st.ins[i]
                d = t.domain[i]
                rows = 0
                for j in range(pos, end):
                    r = ix[j]
                    rows += M[(r + 1) * D + d] - M[r * D + d]
                inner = 1
                for q in range(1, x.ndim):
                    shape[q] = x.shape[q]
                    inner *= x.shape[q]
                shape[0] = rows
                out = blob_out(op.outs[i])
                if out_shape(op, ctx, out, x.dtype, x.ndim, shape) != 0:
                    rc = -1
                    break
                if rows * inner == 0:
                    continue
                isz = dtype_itemsize(x.dtype)
                k = 0
                for j in range(pos, end):
                    r = ix[j]
                    b0 = M[r * D + d]
                    b1 = M[(r + 1) * D + d]
                    if b1 == b0:
                        continue
                    if x.dtype == DT_STRING:
                        ss = <string*>x.buf.data + b0 * inner
                        ds = <string*>tdata(out) + k * inner
                        for q in range((b1 - b0) * inner):
                            ds[q] = ss[q]
                    else:
                        memcpy(<char*>tdata(out) + k * inner * isz,
                               <char*>x.buf.data + b0 * inner * isz, (b1 - b0) * inner * isz)
                    k += b1 - b0
    ds_release(st)
    buf_decref(IDX.buf)
    buf_decref(OFF.buf)
    return rc


# ---- CheckDatasetConsistency ------------------------------------------------------------

cdef int k_check_dataset_consistency(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef DsState* st = <DsState*>op.state
    cdef FieldTree* t = &st.tree
    cdef int d, rc, bad_d = 0
    cdef int64_t bad_v = 0
    cdef size_t lf
    if op.ins.size() != t.names.size():
        return op_fails(op, ctx, E_RUNTIME, cstr(b"Invalid number of fields. Expected ") +
                        to_str(t.names.size()) + cstr(b", got ") + to_str(op.ins.size()))
    if snapshot_fields(op, ctx, st, t, 0, True) != 0:
        ds_release(st)
        return -1
    st.start.assign(t.ndomains, 0)
    st.sizes.resize(t.ndomains)
    st.ends.resize(t.ndomains)
    rc = ds_advance(t, st, st.limits[0], &bad_d, &bad_v)
    if rc != ADV_OK:
        advance_fail(op, ctx, t, st, rc, bad_d, bad_v)
        ds_release(st)
        return -1
    for d in range(1, t.ndomains):
        # a domain without fields has nothing its lengths could disagree with
        if st.limit_field[d] >= 0 and st.ends[d] != st.limits[d]:
            lf = <size_t>t.len_field[d - 1]
            op_fails(op, ctx, E_RUNTIME, cstr(b"Inconsistent field length: lengths ") +
                     field_desc(t, lf) + cstr(b" sum to ") + to_str(st.ends[d]) + cstr(b" but ") +
                     field_desc(t, st.limit_field[d]) + cstr(b" has ") + to_str(st.limits[d]) +
                     cstr(b" rows"))
            ds_release(st)
            return -1
    ds_release(st)
    return 0


# ---- TrimDataset --------------------------------------------------------------------
#
# Caffe2's TrimDatasetOp: keep the largest multiple of multiple_of top-level
# records (the root domain's size is the smallest dim 0 of its fields) and cut
# every field to the offset its domain reaches after those records, so nested
# (lengths) domains stay consistent.  In place (outputs are the inputs): only
# the tensor headers shrink -- no byte is copied or written, so a buffer other
# holders see (a fetched array, a reader's snapshot) is untouched, as with
# Caffe2's ShrinkTo.  The field tree is parsed once, at init (ds_check_init).

cdef enum:
    TD_FIELDS = 0                   # TrimDataset (ds_check_init reads TC_FIELDS = 0)
    TD_MULTIPLE_OF = 1
kernel_args("TrimDataset", fields=(TD_FIELDS, "strings"),
            multiple_of=(TD_MULTIPLE_OF, "int"))


cdef int k_trim_dataset(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef DsState* st = <DsState*>op.state
    cdef FieldTree* t = &st.tree
    cdef int64_t mult = op.d.args[TD_MULTIPLE_OF].i if op.d.args[TD_MULTIPLE_OF].present else 1
    cdef int64_t keep, rows, inner
    cdef int rc, bad_d = 0, j
    cdef int64_t bad_v = 0
    cdef size_t i, nf = t.names.size()
    cdef Tensor* x
    cdef Tensor* snap
    cdef bint changed
    if op.ins.size() != nf:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"Invalid number of fields. Expected ") +
                        to_str(nf) + cstr(b", got ") + to_str(op.ins.size()))
    if snapshot_fields(op, ctx, st, t, 0, False) != 0:
        ds_release(st)
        return -1
    keep = (st.limits[0] // mult) * mult
    if keep == st.limits[0]:
        # already a multiple: nothing changes (Caffe2 returns here too, even
        # when some root field has extra rows)
        ds_release(st)
        return 0
    st.start.assign(t.ndomains, 0)
    st.sizes.resize(t.ndomains)
    st.ends.resize(t.ndomains)
    rc = ds_advance(t, st, keep, &bad_d, &bad_v)
    if rc != ADV_OK:
        advance_fail(op, ctx, t, st, rc, bad_d, bad_v)
        ds_release(st)
        return -1
    for i in range(nf):
        rows = st.ends[t.domain[i]]
        snap = &st.ins[i]
        x = &op.outs[i].t
        inner = 1
        tensor_lock(x)
        # the header the snapshot saw, unless another writer replaced it since
        changed = x.buf != snap.buf or x.ndim != snap.ndim or x.dtype != snap.dtype
        if not changed:
            for j in range(1, x.ndim):
                inner *= x.shape[j]
            if rows < x.shape[0]:
                x.shape[0] = rows
                x.size = rows * inner
        tensor_unlock(x)
        if changed:
            op_fails(op, ctx, E_RUNTIME, field_desc(t, i) + cstr(b" (blob '") + op.ins[i].name +
                     cstr(b"') was rewritten by another op while TrimDataset trimmed it"))
            ds_release(st)
            return -1
    ds_release(st)
    return 0


# ---- sources: epoch permutations and array reads (fastpipe.sources) -----------------
#
# EpochPermutation turns a key (seed, epoch) into a uniform permutation of
# 0..N-1: mt19937_64 seeded through std::seed_seq with the key's four 32-bit
# halves, then Fisher-Yates with rejection sampling.  Both are specified
# exactly by the C++ standard (no implementation-defined distribution), so a
# key gives the same permutation in every process and build.
#
# ReadArrayBatch is the read op of sources.ArrayReader: flat fields (no
# lengths domains) sharing one cursor offset, optionally through an index
# permutation, with the stop flag as its first output (no IsEmpty after it)
# and, with record=True, single records without the batch dimension.  The
# offset advances under the cursor's mutex; rows are copied after it is
# released, so N instances serialise only on the offset arithmetic and read
# every record exactly once per epoch.

cdef extern from *:
    """
    #include <random>
    #include <cstdint>
    static int fp_epoch_permutation(int64_t* out, int64_t n, uint64_t seed,
                                    uint64_t epoch) noexcept {
        try {
            std::seed_seq sq{(uint32_t)seed, (uint32_t)(seed >> 32),
                             (uint32_t)epoch, (uint32_t)(epoch >> 32)};
            std::mt19937_64 eng(sq);
            for (int64_t i = 0; i < n; i++) out[i] = i;
            for (int64_t i = n - 1; i > 0; i--) {
                uint64_t bound = (uint64_t)i + 1;
                uint64_t threshold = (0 - bound) % bound;   // 2^64 mod bound
                uint64_t r;
                do { r = eng(); } while (r < threshold);
                int64_t j = (int64_t)(r % bound);
                int64_t tmp = out[i]; out[i] = out[j]; out[j] = tmp;
            }
            return 0;
        } catch (...) {
            return -1;
        }
    }
    """
    int fp_epoch_permutation(int64_t* out, int64_t n, uint64_t seed,
                             uint64_t epoch) noexcept nogil


cdef enum:   # argument positions (checked against the schemas on import)
    RAB_BATCH_SIZE = 0              # ReadArrayBatch
    RAB_ENFORCE_BATCH_SIZE = 1
    RAB_RECORD = 2
    RAB_PERMUTED = 3
kernel_args("ReadArrayBatch", batch_size=(RAB_BATCH_SIZE, "int"),
            enforce_batch_size=(RAB_ENFORCE_BATCH_SIZE, "bool"),
            record=(RAB_RECORD, "bool"), permuted=(RAB_PERMUTED, "bool"))


cdef int k_epoch_permutation(OpInst* op, RunCtx* ctx) noexcept nogil:
    # inputs: key int64 [2] = (seed, epoch), rows (any tensor: N = its dim 0)
    cdef Tensor* key = in_t(op, ctx, 0)
    cdef Tensor* rows
    cdef Tensor* out
    cdef int64_t n
    cdef int64_t* kv
    if key == NULL:
        return -1
    if key.dtype != DT_INT64 or key.size != 2:
        return fail_dtype(op, ctx, 0, key, b"int64 [2] (seed, epoch)")
    rows = in_t(op, ctx, 1)
    if rows == NULL:
        return -1
    if rows.ndim < 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"input 1 ('") + op.ins[1].name + cstr(b"') is ") +
                        tensor_describe(rows) + cstr(b"; it needs at least 1 dim (its rows are permuted)"))
    n = rows.shape[0]
    kv = <int64_t*>tdata(key)
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_INT64, 1, &n) != 0:
        return -1
    if fp_epoch_permutation(<int64_t*>tdata(out), n, <uint64_t>kv[0], <uint64_t>kv[1]) != 0:
        return op_oom(op, ctx)
    return 0


cdef int k_read_array_batch(OpInst* op, RunCtx* ctx) noexcept nogil:
    # inputs: cursor, [indices (int64 [N]) when permuted], fields...
    # outputs: stop (bool scalar), one per field
    cdef Cursor* c = op_cursor(op, ctx)
    cdef DsState* st = <DsState*>op.state
    cdef int64_t batch = op.d.args[RAB_BATCH_SIZE].i
    cdef bint enforce = op.d.args[RAB_ENFORCE_BATCH_SIZE].i != 0
    cdef bint record = op.d.args[RAB_RECORD].i != 0
    cdef bint permuted = op.d.args[RAB_PERMUTED].i != 0
    cdef size_t first = 2 if permuted else 1
    cdef size_t nf, i
    cdef int64_t n = -1, pos, take, j, r, inner, isz, rowb
    cdef int64_t shape[MAX_DIMS]
    cdef int nd, q, rc = 0
    cdef Tensor* x
    cdef Tensor snap
    cdef Tensor* out
    cdef int64_t* ix = NULL
    cdef char* src
    cdef char* dst
    cdef string* ss
    cdef string* ds
    cdef int64_t tsrc = track_src(op, ctx, &st.trk_run, &st.trk_src)
    cdef const FpRanges* sk = NULL
    cdef int64_t lim = INT64_MAX, tag0, tag1
    if c == NULL:
        return -1
    if op.ins.size() < first or op.outs.size() != op.ins.size() - first + 1:
        return op_fail(op, ctx, E_RUNTIME, b"expects inputs (cursor, [indices], fields...) "
                       b"and outputs (stop, one per field)")
    nf = op.ins.size() - first
    ds_release(st)
    # st.ins[k] is input k + 1 (the indices, if permuted, then the fields)
    for i in range(1, op.ins.size()):
        x = in_t(op, ctx, i)
        if x == NULL:
            ds_release(st)
            return -1
        tensor_snapshot(x, &snap)   # pinned: the copy below reads it unlocked
        st.ins.push_back(snap)
    for i in range(1, op.ins.size()):
        x = &st.ins[i - 1]
        if i == 1 and permuted:
            if x.dtype != DT_INT64 or x.ndim != 1:
                rc = fail_dtype(op, ctx, 1, x, b"int64 1-D (record indices)")
                break
            ix = <int64_t*>x.buf.data
            continue
        if x.ndim < 1:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"field input ") + to_str(i) + cstr(b" ('") +
                          op.ins[i].name + cstr(b"') is ") + tensor_describe(x) +
                          cstr(b"; array fields need at least 1 dim (the records)"))
            break
        if n >= 0 and x.shape[0] != n:
            rc = op_fails(op, ctx, E_RUNTIME, cstr(b"field input ") + to_str(i) + cstr(b" ('") +
                          op.ins[i].name + cstr(b"') has ") + to_str(x.shape[0]) +
                          cstr(b" rows but the first field has ") + to_str(n))
            break
        n = x.shape[0]
    if rc == 0 and permuted and st.ins[0].size != n:
        rc = op_fails(op, ctx, E_RUNTIME, cstr(b"the indices ('") + op.ins[1].name + cstr(b"') hold ") +
                      to_str(st.ins[0].size) + cstr(b" entries for ") + to_str(n) + cstr(b" records"))
    if rc != 0:
        ds_release(st)
        return -1
    if n < 0:
        n = 0
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
        ds_release(st)
        return -1
    if take == 0 and record:
        ds_release(st)      # the step stops on the flag; outputs keep their last record
        return 0
    for i in range(nf):
        x = &st.ins[i + first - 1]
        isz = dtype_itemsize(x.dtype)
        inner = 1
        for q in range(1, x.ndim):
            inner *= x.shape[q]
        rowb = inner * isz
        if record:
            nd = x.ndim - 1
            for q in range(nd):
                shape[q] = x.shape[q + 1]
        else:
            nd = x.ndim
            shape[0] = take
            for q in range(1, nd):
                shape[q] = x.shape[q]
        out = blob_out(op.outs[i + 1])
        if out_shape(op, ctx, out, x.dtype, nd, shape) != 0:
            rc = -1
            break
        if take == 0 or rowb == 0:
            continue
        if x.dtype == DT_STRING:
            # std::string elements (isz is sizeof(string)): assign, never memcpy
            ss = <string*>x.buf.data
            ds = <string*>tdata(out)
            for j in range(take):
                r = ix[pos + j] if ix != NULL else pos + j
                if r < 0 or r >= n:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"index ") + to_str(r) + cstr(b" at position ") +
                                  to_str(pos + j) + cstr(b" of '") + op.ins[1].name +
                                  cstr(b"' is out of range for ") + to_str(n) + cstr(b" records"))
                    break
                for q in range(inner):
                    ds[j * inner + q] = ss[r * inner + q]
            if rc != 0:
                break
            continue
        src = <char*>x.buf.data
        dst = <char*>tdata(out)
        if ix == NULL:
            memcpy(dst, src + pos * rowb, take * rowb)
        else:
            for j in range(take):
                r = ix[pos + j]
                if r < 0 or r >= n:
                    rc = op_fails(op, ctx, E_RUNTIME, cstr(b"index ") + to_str(r) + cstr(b" at position ") +
                                  to_str(pos + j) + cstr(b" of '") + op.ins[1].name +
                                  cstr(b"' is out of range for ") + to_str(n) + cstr(b" records"))
                    break
                memcpy(dst + j * rowb, src + r * rowb, rowb)
            if rc != 0:
                break
    ds_release(st)
    return rc


# ---- Python-side helpers of fastpipe.sources and the run warnings ---------------------

def _borrow_array(TensorRef ref, arr):
    """Make the tensor of ``ref`` (an output of a Python op) view ``arr``'s
    memory without copying: its buffer holds a reference to ``arr`` and is
    never written by the core (a writer of that blob gets a new buffer).
    ``arr`` must be a C-contiguous numeric array in native byte order (the
    caller, fastpipe.sources, makes one copy of any other array)."""
    cdef cnp.ndarray a = arr
    cdef Tensor* t
    cdef Buffer* nb
    cdef Buffer* old
    cdef int i
    cdef int64_t size = 1
    ref._check()
    name = ref.blob.name.decode("utf-8", "replace")
    dt = _NP_TO_DT.get(a.dtype, -1)
    if dt < 0 or dt == DT_STRING:
        raise ArgumentError("blob %r: cannot borrow a %s array (numeric dtypes only)" % (name, a.dtype))
    if not a.flags.c_contiguous or not a.dtype.isnative:
        raise ArgumentError("blob %r: a borrowed array must be C-contiguous in native byte order" % name)
    if a.ndim > MAX_DIMS:
        raise ArgumentError("blob %r: %d dims, at most %d are supported" % (name, a.ndim, MAX_DIMS))
    for i in range(a.ndim):
        size *= a.shape[i]
    nb = buf_new_borrowed(cnp.PyArray_DATA(a), a.nbytes, a)
    t = blob_out(ref.blob)
    # the header changes under the owner's lock (a fetch sees old or new)
    tensor_lock(t)
    old = t.buf
    t.buf = nb
    t.dtype = dt
    t.ndim = a.ndim
    for i in range(a.ndim):
        t.shape[i] = a.shape[i]
    t.size = size
    tensor_unlock(t)
    buf_decref(old)


def _take_run_warnings(Run run):
    """The warnings the run's kernels noted (rs_warn), each returned once:
    the list is emptied.  Called when a run has finished."""
    cdef vector[string] w
    if run.pr == NULL:
        return []
    with nogil:
        fp_lock(&run.pr.rs.lock)
        w.swap(run.pr.rs.warnings)
        fp_unlock(&run.pr.rs.lock)
    return [m.decode("utf-8", "replace") for m in w]


def _emit_run_warnings(Run run):
    """Emit the run's noted warnings as fastpipe.errors.FastpipeWarning (the
    hook Run.wait calls once a run has finished)."""
    msgs = _take_run_warnings(run)
    if msgs:
        import warnings
        from fastpipe.errors import FastpipeWarning
        for m in msgs:
            warnings.warn(m, FastpipeWarning, stacklevel=3)


reg("CreateTreeCursor", k_create_tree_cursor)
reg("ResetCursor", k_reset_cursor)
reg("ReadNextBatch", k_read_next_batch, ds_init, ds_fini)
reg("ComputeOffset", k_compute_offset, ds_init, ds_fini)
reg("SortAndShuffle", k_sort_and_shuffle)
reg("ReadRandomBatch", k_read_random_batch, ds_init, ds_fini)
reg("CheckDatasetConsistency", k_check_dataset_consistency, ds_check_init, ds_fini)
reg("TrimDataset", k_trim_dataset, ds_check_init, ds_fini)
reg("EpochPermutation", k_epoch_permutation)
reg("ReadArrayBatch", k_read_array_batch, ds_init, ds_fini)


# Last include of _core.pyx: every kernel and its argument table is
# registered now, so hold the tables to the schemas (register.pxi).
check_kernel_args(_opschema.REGISTRY, _KERNEL_ARGS, _KERNEL_INDEX)
