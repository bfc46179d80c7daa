# Workspaces, the run state, compiled ops and nets, and the step executor.
#
# Everything here runs without the GIL.  Descriptions (OpDesc, NetDesc,
# StepDesc) are built once per plan by the Python side and are read-only
# while a run executes; instances (OpInst, NetInst, CStep) bind a description
# to one workspace, so N runtime instances are N bindings of one description.

# Status codes crossing the native boundary (turned into exceptions in one
# place: _raise_status in api.pxi).
cdef enum:
    E_OK = 0
    E_RUNTIME = 1       # an operator failed           -> RunError
    E_PLAN = 2          # plan cannot be compiled       -> PlanError
    E_PYTHON = 3        # a Python op raised            -> RunError from exc
    E_INTERRUPT = 4     # Ctrl-C                        -> KeyboardInterrupt
    E_QUEUE_CLOSED = 5  # plain Enqueue/Dequeue on a closed queue
    E_MEMORY = 6        # allocation failed             -> MemoryError
    E_CANCELLED = 7     # Run.cancel() / a dropped Run  -> CancelledError
    E_ABORTED = 8       # the waiting thread raised (a signal handler): err_exc
                        # holds that exception, re-raised as itself


# ---- descriptions (immutable during a run) -----------------------------------

cdef cppclass ArgVal:
    bint present
    int64_t i
    double f
    string s
    char vkind            # 'value' args: b'f', b'i' or b's'
    vector[int64_t] ints
    vector[double] floats
    vector[string] strings


ctypedef int (*kernel_fn)(OpInst* op, RunCtx* ctx) noexcept nogil
ctypedef int (*op_init_fn)(OpInst* op, RunCtx* ctx) noexcept nogil
ctypedef void (*op_fini_fn)(OpInst* op) noexcept nogil


cdef cppclass OpDesc:
    kernel_fn run
    op_init_fn init
    op_fini_fn fini
    vector[string] inputs
    vector[string] outputs
    vector[ArgVal] args
    string type
    string label          # "Type 'name'" or "Type #k", for messages
    string net            # owning net's name
    PyObject* pyobj       # Python ops: (func, pass_ws, is_factory); kept alive by Program
    int64_t index         # position of the op in its net (errors name it)
    bint blocking         # may wait on a queue
    int64_t stage         # 1 + index of its stage in its Program's observe info; 0: none
    int64_t prof_idx      # 1 + index of its (net, op type) there; 0: none (api.pxi: _observe_info)


cdef cppclass NetDesc:
    string name
    vector[OpDesc*] ops


cdef cppclass StepDesc:
    string name
    vector[StepDesc*] substeps
    vector[NetDesc*] nets
    int64_t num_iter          # used when has_stop is false
    bint has_stop
    string stop_name
    bint only_once
    bint concurrent
    bint create_workspace
    int64_t num_instances
    int64_t run_every_ms
    NetDesc* report_net
    int64_t report_interval_ms


# ---- run state ----------------------------------------------------------------

# ---- observation: per-stage counters, blocked-op probes, profile ---------------
#
# A run's RunObs is shared by the run and by every queue op bound to it (each
# holds one reference: an op of a CreateNet'd net may outlive the run).  Ops
# count into their own unshared QStats (queue.pxi) and add them into these
# atomics every STATS_FLUSH records, when they wait, when the poller bumps
# `epoch`, and when they go away; a poller reads the atomics and never takes
# a lock a worker takes per record.

cdef cppclass StageCtr:
    # all atomics (relaxed adds by the op flushing, loads by the poller)
    int64_t batches_in      # queue records dequeued by the stage
    int64_t rows_in         # rows of them (dim 0 of the first blob)
    int64_t wait_in_ns      # time its reads waited for a record
    int64_t batches_out
    int64_t rows_out
    int64_t wait_out_ns     # time its writes waited for room
    int64_t live_in_ns      # summed lifetimes of its finished reading ops (bind to unbind)
    int64_t live_out_ns     # the same for its writing ops


cdef cppclass Probe:
    # One per bound queue op (and per RecordIterator): where it waits.
    # Written by its own thread only; `since` is read by the poller.
    int64_t since           # atomic: fp_now_ns() when it began waiting; 0: not waiting
    void* queue             # atomic-ish pointer store: the Queue it waits on (set before since)
    int64_t kind            # 0: reads, 1: writes
    int64_t stage           # OpDesc.stage (-1: none)
    int64_t instance
    int64_t bound_ns        # when the op was bound (its first record of the run)
    string op               # "Type 'name' in net 'n'"
    string step


cdef cppclass RunObs:
    int64_t refcnt          # atomic
    int64_t epoch           # atomic: bumped by a poller; ops flush at their next record
    fp_mutex lock           # protects probes (taken when an op binds or goes away, and by pollers)
    vector[Probe*] probes
    StageCtr* stages
    int64_t nstages
    bint profile
    int64_t* prof_ns        # per Program.profile_keys entry (atomics)
    int64_t* prof_n
    int64_t nprof
    int64_t start_ns
    int64_t end_ns          # atomic: when the driver finished (0: running)
    int64_t moves           # atomic: queue positions at the watchdog's last look
    int64_t stalled_since   # atomic: 0, or when the watchdog saw the last move before a stall


cdef RunObs* obs_new(int64_t nstages, int64_t nprof, bint profile) noexcept nogil:
    cdef RunObs* o = new RunObs()
    o.refcnt = 1
    o.epoch = 0
    fp_mutex_init(&o.lock)
    o.nstages = nstages
    o.stages = <StageCtr*>calloc(nstages if nstages > 0 else 1, sizeof(StageCtr))
    o.profile = profile
    o.nprof = nprof
    o.prof_ns = <int64_t*>calloc(nprof if nprof > 0 else 1, sizeof(int64_t))
    o.prof_n = <int64_t*>calloc(nprof if nprof > 0 else 1, sizeof(int64_t))
    o.start_ns = fp_now_ns()
    o.end_ns = 0
    o.moves = -1
    o.stalled_since = 0
    return o


cdef inline void obs_incref(RunObs* o) noexcept nogil:
    fp_fetch_add(&o.refcnt, 1)


cdef void obs_decref(RunObs* o) noexcept nogil:
    if o != NULL and fp_fetch_add(&o.refcnt, -1) == 1:
        free(o.stages)
        free(o.prof_ns)
        free(o.prof_n)
        fp_mutex_destroy(&o.lock)
        del o


cdef void obs_add_probe(RunObs* o, Probe* p) noexcept nogil:
    fp_lock(&o.lock)
    o.probes.push_back(p)
    fp_unlock(&o.lock)


cdef void obs_remove_probe(RunObs* o, Probe* p) noexcept nogil:
    cdef size_t i
    fp_lock(&o.lock)
    for i in range(o.probes.size()):
        if o.probes[i] == p:
            o.probes[i] = o.probes.back()
            o.probes.pop_back()
            break
    fp_unlock(&o.lock)
# ---- provenance tags (exact resume of iterate; see iterate.pxi) ----------------
#
# A record read by a resumable source carries the source-space ranges it came
# from, (source, start, end).  The tags travel with the thread: a reader op
# adds its range to the calling thread's pending tags (a thread-local list,
# NULL when nothing is pending: a run that does not track pays one load per
# enqueue), a dequeue adds the dequeued record's tags, an enqueue moves the
# pending tags onto the record (the slot's `tags` word).  A net iteration
# that enqueues nothing (a filter dropped the record) keeps its tags pending:
# they ride on that thread's next enqueue, or are handed to the run as
# "orphans" when the thread ends normally.  A run tracks only when it was
# started with an FpTrack (LocalSession.iterate hands one over through
# fp_track_set_next on the starting thread; rs_new takes it).

cdef extern from *:
    """
    #include <vector>
    #include <map>
    #include <string>
    #include <unordered_map>
    #include <atomic>
    #include <mutex>
    #include <cstdint>
    #include <algorithm>
    struct FpTag { int64_t src, start, end; };
    /* A thread's pending tags: a few inline, more in a vector (records
       merged by num_records, sources zipped).  One per thread, reused: a
       steady tracking loop allocates nothing for tags. */
    struct FpTags {
        int n = 0;
        FpTag inl[3];
        std::vector<FpTag> more;
        size_t size() const { return (size_t)n + more.size(); }
        const FpTag& at(size_t i) const { return i < (size_t)n ? inl[i] : more[i - n]; }
        FpTag& back() { return more.empty() ? inl[n - 1] : more.back(); }
        void push(const FpTag& t) { if (n < 3 && more.empty()) inl[n++] = t; else more.push_back(t); }
        void clear() { n = 0; more.clear(); }
    };
    /* What a queue slot holds (24 bytes, so a slot header stays 32): one
       tag inline (len > 0: present), the rest (rare) in a heap vector. */
    struct FpSlotTags { std::vector<FpTag>* more; int64_t start; int32_t len, src; };
    static_assert(sizeof(FpSlotTags) == 24, "a queue slot header is 32 bytes");
    /* initial-exec: the pointer is read on every enqueue and dequeue of a
       tracking run without a __tls_get_addr call (8 bytes of static TLS);
       the buffer is freed by a thread_local owner when the thread exits. */
    static __thread FpTags* fp_tls_tags __attribute__((tls_model("initial-exec"))) = nullptr;
    struct FpTagsOwner { FpTags* p = nullptr; ~FpTagsOwner() { delete p; fp_tls_tags = nullptr; } };
    static thread_local FpTagsOwner fp_tags_owner;
    static FpTags* fp_tags_buf() {
        FpTags* t = fp_tls_tags;
        if (!t) { t = new FpTags(); fp_tags_owner.p = t; fp_tls_tags = t; }
        return t;
    }
    static std::atomic<int64_t> fp_tracking_runs{0};
    static inline int fp_tracking_active() noexcept {
        return fp_tracking_runs.load(std::memory_order_relaxed) != 0;
    }
    static inline int fp_tags_pending() noexcept {
        FpTags* t = fp_tls_tags; return t != nullptr && t->size() != 0;
    }
    static inline void fp_tags_clear() noexcept { if (fp_tls_tags) fp_tls_tags->clear(); }
    static int fp_tags_add(int64_t src, int64_t a, int64_t b) noexcept {
        if (b <= a || src < 0) return 0;
        try {
            FpTags* t = fp_tags_buf();
            if (t->size() && t->back().src == src && t->back().end == a) {
                t->back().end = b; return 0;
            }
            t->push(FpTag{src, a, b});
            return 0;
        } catch (...) { return -1; }
    }
    /* An enqueue: the thread's pending tags move onto the slot. */
    static inline void fp_tags_to_slot(FpSlotTags* s) noexcept {
        FpTags* t = fp_tls_tags;
        if (!t || t->size() == 0) return;       /* the slot's tags are clear */
        if (t->size() == 1 && t->inl[0].end - t->inl[0].start <= INT32_MAX
                && t->inl[0].src <= INT32_MAX) {
            s->start = t->inl[0].start;
            s->len = (int32_t)(t->inl[0].end - t->inl[0].start);
            s->src = (int32_t)t->inl[0].src;
            t->n = 0;
            return;
        }
        try {
            s->more = new std::vector<FpTag>();
            for (size_t i = 0; i < t->size(); i++) s->more->push_back(t->at(i));
        } catch (...) {}
        t->clear();
    }
    /* A queue goes away with tagged records in it: drop their tags. */
    static inline void fp_slot_tags_drop(FpSlotTags* s) noexcept {
        delete s->more;
        s->more = nullptr;
        s->len = 0;
    }
    /* A dequeue: the slot's tags join the thread's pending ones. */
    static inline void fp_tags_from_slot(FpSlotTags* s) noexcept {
        try {
            FpTags* t = fp_tags_buf();
            if (s->len > 0) { t->push(FpTag{s->src, s->start, s->start + s->len}); s->len = 0; }
            if (s->more) { for (const FpTag& x : *s->more) t->push(x); }
        } catch (...) {}
        delete s->more;
        s->more = nullptr;
    }
    /* Disjoint, non-adjacent ranges [a, b) above `low` (everything below
       low is in the set): what an iterator delivered, per source. */
    /* (a sorted vector, not a tree: it holds about as many ranges as
       records can be in flight, and adding one allocates nothing) */
    typedef std::pair<int64_t, int64_t> FpRange;
    struct FpRanges {
        int64_t low = 0;
        std::vector<FpRange> r;
        void add(int64_t a, int64_t b) {
            if (b <= low) return;
            if (a < low) a = low;
            if (a == low) {
                low = b;
                size_t k = 0;
                while (k < r.size() && r[k].first <= low) {
                    if (r[k].second > low) low = r[k].second;
                    k++;
                }
                if (k) r.erase(r.begin(), r.begin() + k);
                return;
            }
            /* the first range that ends at or after a: it and the ones after
               it that start at or before b merge with [a, b) */
            auto it = std::lower_bound(r.begin(), r.end(), a,
                [](const FpRange& p, int64_t v) { return p.second < v; });
            auto jt = it;
            while (jt != r.end() && jt->first <= b) {
                if (jt->first < a) a = jt->first;
                if (jt->second > b) b = jt->second;
                ++jt;
            }
            if (it == jt) r.insert(it, FpRange(a, b));
            else { *it = FpRange(a, b); r.erase(it + 1, jt); }
        }
    };
    /* A reader's cursor at pos: the first position >= pos not in s, and in
       *limit the start of the next range of s above it (INT64_MAX: none). */
    static int64_t fp_ranges_jump(const FpRanges* s, int64_t pos, int64_t* limit) noexcept {
        if (pos < s->low) pos = s->low;
        auto it = std::upper_bound(s->r.begin(), s->r.end(), pos,
            [](int64_t v, const FpRange& p) { return v < p.first; });
        if (it != s->r.begin()) {
            auto p = it - 1;
            if (p->second > pos) pos = p->second;
        }
        *limit = it == s->r.end() ? INT64_MAX : it->first;
        return pos;
    }
    /* What a tracking run shares with its iterator (refcounted: the run's
       RunState and the iterator each hold one reference). */
    struct FpTrack {
        std::atomic<int64_t> refcnt{1};
        std::unordered_map<std::string, int64_t> src_of;  // reader input 0 -> source id
        std::vector<FpRanges> skip;         // per source: delivered before (resume)
        bool resumed = false;               // a resumed run: cursors restart at 0
        std::mutex mu;                      // protects orphans and untracked
        std::vector<FpTag> orphans;         // tags of records no enqueue carried on
        std::string untracked;              // the first enqueue of an untagged record
    };
    static thread_local FpTrack* fp_next_track = nullptr;
    static inline void fp_track_decref(FpTrack* t) noexcept {
        if (t && t->refcnt.fetch_sub(1) == 1) delete t;
    }
    /* The next rs_new on this thread tracks with t (one reference is given). */
    static inline void fp_track_set_next(FpTrack* t) noexcept {
        if (fp_next_track) fp_track_decref(fp_next_track);
        if (t) t->refcnt.fetch_add(1);
        fp_next_track = t;
    }
    static inline FpTrack* fp_track_take_next() noexcept {
        FpTrack* t = fp_next_track; fp_next_track = nullptr;
        if (t) fp_tracking_runs.fetch_add(1);
        return t;
    }
    static inline void fp_track_run_done(FpTrack* t) noexcept {
        if (t) { fp_tracking_runs.fetch_sub(1); fp_track_decref(t); }
    }
    static inline int64_t fp_track_src(FpTrack* t, const std::string& name) noexcept {
        auto it = t->src_of.find(name);
        return it == t->src_of.end() ? -1 : it->second;
    }
    static inline const FpRanges* fp_track_skip(FpTrack* t, int64_t src) noexcept {
        if (!t->resumed || src < 0 || (size_t)src >= t->skip.size()) return nullptr;
        return &t->skip[src];
    }
    /* A thread ends normally: its pending tags belong to records nothing
       carried on (dropped by a filter): delivered-empty. */
    static void fp_track_thread_end(FpTrack* t, int ok) noexcept {
        FpTags* p = fp_tls_tags;
        if (!p || p->size() == 0) return;
        if (t && ok) {
            std::lock_guard<std::mutex> g(t->mu);
            try { for (size_t i = 0; i < p->size(); i++) t->orphans.push_back(p->at(i)); }
            catch (...) {}
        }
        p->clear();
    }
    static void fp_track_note_untracked(FpTrack* t, const std::string& msg) noexcept {
        std::lock_guard<std::mutex> g(t->mu);
        if (t->untracked.empty()) { try { t->untracked = msg; } catch (...) {} }
    }
    """
    ctypedef struct FpTag:
        int64_t src
        int64_t start
        int64_t end
    cppclass FpTags:
        pass
    ctypedef struct FpSlotTags:
        void* more
        int32_t len
    cppclass FpRanges:
        int64_t low
        void add(int64_t a, int64_t b) except +
    cppclass FpTrack:
        unordered_map[string, int64_t] src_of
        vector[FpRanges] skip
        bint resumed
        vector[FpTag] orphans
        string untracked
    bint fp_tracking_active() noexcept nogil
    bint fp_tags_pending() noexcept nogil
    void fp_tags_clear() noexcept nogil
    int fp_tags_add(int64_t src, int64_t a, int64_t b) noexcept nogil
    void fp_tags_to_slot(FpSlotTags* s) noexcept nogil
    void fp_tags_from_slot(FpSlotTags* s) noexcept nogil
    void fp_slot_tags_drop(FpSlotTags* s) noexcept nogil
    int64_t fp_ranges_jump(const FpRanges* s, int64_t pos, int64_t* limit) noexcept nogil
    void fp_track_decref(FpTrack* t) noexcept nogil
    void fp_track_set_next(FpTrack* t) noexcept nogil
    FpTrack* fp_track_take_next() noexcept nogil
    void fp_track_run_done(FpTrack* t) noexcept nogil
    int64_t fp_track_src(FpTrack* t, const string& name) noexcept nogil
    const FpRanges* fp_track_skip(FpTrack* t, int64_t src) noexcept nogil
    void fp_track_thread_end(FpTrack* t, bint ok) noexcept nogil
    void fp_track_note_untracked(FpTrack* t, const string& msg) noexcept nogil


cdef int64_t g_run_ids = 0


cdef cppclass RunState:
    int64_t cancelled       # atomic, sticky
    int64_t run_id
    fp_mutex lock           # protects err_*, queues, done
    fp_cond done_cv         # signalled when the driver thread finishes and when a
                            # queue is registered (RecordIterator waits for its queue)
    bint done
    int err_code
    string err_msg
    # Where the first error happened (err_has_op / err_has_step say which
    # parts are known); RunError exposes them as attributes.
    bint err_has_op
    string err_op_type
    int64_t err_op_index
    string err_net
    bint err_has_step
    string err_step
    int64_t err_instance    # -1: not in a runtime instance
    int64_t err_stage       # OpDesc.stage of the failing op (0: none known)
    PyObject* err_exc       # owned; set with the GIL by the Python kernel
    vector[ObjHeader*] queues   # queues touched by this run (owned refs)
    vector[long] py_threads  # threads inside a Python op right now
    # Warnings noted by kernels (rs_warn), each message once; Python emits
    # them as FastpipeWarning when the run ends (run_warnings in dataset.pxi).
    vector[string] warnings
    RunObs* obs             # one reference, set before the driver starts; NULL: not observed
    FpTrack* track          # provenance tracking (NULL: this run does not track)


ctypedef struct RunCtx:
    RunState* rs
    const string* step      # innermost step being executed (for messages)
    int64_t instance        # runtime instance index (-1 outside instances)
    int64_t num_instances   # instances of that step (read only when instance >= 0)


cdef RunState* rs_new() noexcept nogil:
    cdef RunState* rs = new RunState()
    rs.cancelled = 0
    rs.run_id = fp_fetch_add(&g_run_ids, 1) + 1
    fp_mutex_init(&rs.lock)
    fp_cond_init(&rs.done_cv)
    rs.done = False
    rs.err_code = E_OK
    rs.err_exc = NULL
    rs.err_has_op = False
    rs.err_op_index = -1
    rs.err_has_step = False
    rs.err_instance = -1
    rs.err_stage = 0
    rs.obs = NULL
    rs.track = fp_track_take_next()     # set by LocalSession.iterate on this thread
    return rs


cdef void rs_release_queues(RunState* rs) noexcept nogil:
    """Drop the run's references to the queues it touched (once the run has
    finished: nothing can cancel them any more)."""
    cdef vector[ObjHeader*] qs
    cdef size_t i
    fp_lock(&rs.lock)
    qs.swap(rs.queues)
    fp_unlock(&rs.lock)
    for i in range(qs.size()):
        obj_decref(qs[i])


cdef void rs_free(RunState* rs) noexcept nogil:
    cdef size_t i
    for i in range(rs.queues.size()):
        obj_decref(rs.queues[i])
    if rs.err_exc != NULL:
        with gil:
            Py_DECREF(<object>rs.err_exc)
    obs_decref(rs.obs)
    fp_track_run_done(rs.track)
    fp_mutex_destroy(&rs.lock)
    fp_cond_destroy(&rs.done_cv)
    del rs




cdef void rs_cancel(RunState* rs) noexcept nogil:
    """Trip the run's sticky cancel flag and close every queue it touched,
    which wakes every blocked read and write."""
    cdef vector[ObjHeader*] qs
    cdef size_t i
    if fp_exchange(&rs.cancelled, 1) != 0:
        return
    fp_lock(&rs.lock)
    qs = rs.queues
    fp_unlock(&rs.lock)
    for i in range(qs.size()):
        queue_cancel_obj(qs[i], rs.run_id)


cdef void rs_register_queue(RunState* rs, ObjHeader* q) noexcept nogil:
    cdef bint close_now
    obj_incref(q)
    fp_lock(&rs.lock)
    rs.queues.push_back(q)
    # a RecordIterator waits on done_cv for its queue to appear (iterate.pxi)
    fp_broadcast(&rs.done_cv)
    fp_unlock(&rs.lock)
    # A run cancelled before this queue was registered must still close it.
    if fp_load(&rs.cancelled):
        queue_cancel_obj(q, rs.run_id)


cdef void rs_warn(RunState* rs, const string& msg) noexcept nogil:
    """Note a warning for the run (a kernel, any thread; duplicates dropped)."""
    cdef size_t i
    fp_lock(&rs.lock)
    for i in range(rs.warnings.size()):
        if rs.warnings[i] == msg:
            fp_unlock(&rs.lock)
            return
    rs.warnings.push_back(msg)
    fp_unlock(&rs.lock)


cdef void rs_py_enter(RunState* rs, long tid) noexcept nogil:
    fp_lock(&rs.lock)
    rs.py_threads.push_back(tid)
    fp_unlock(&rs.lock)


cdef void rs_py_exit(RunState* rs, long tid) noexcept nogil:
    cdef size_t i
    fp_lock(&rs.lock)
    for i in range(rs.py_threads.size()):
        if rs.py_threads[i] == tid:
            rs.py_threads[i] = rs.py_threads.back()
            rs.py_threads.pop_back()
            break
    fp_unlock(&rs.lock)


cdef bint rs_record(RunState* rs, int code, const string& msg, OpDesc* op,
                    RunCtx* ctx) noexcept nogil:
    """Record (code, msg) and where it happened (op and ctx may be NULL) as
    the run's first error, unless it has one.  True if this was the first.
    Does not cancel."""
    cdef bint first = False
    fp_lock(&rs.lock)
    if rs.err_code == E_OK:
        first = True
        rs.err_code = code
        rs.err_msg = msg
        if op != NULL:
            rs.err_has_op = True
            rs.err_op_type = op.type
            rs.err_op_index = op.index
            rs.err_net = op.net
            rs.err_stage = op.stage
        if ctx != NULL and ctx.step != NULL:
            rs.err_has_step = True
            rs.err_step = ctx.step[0]
        if ctx != NULL:
            rs.err_instance = ctx.instance
    fp_unlock(&rs.lock)
    return first


cdef int rs_fail_at(RunState* rs, int code, const string& msg, OpDesc* op,
                    RunCtx* ctx) noexcept nogil:
    """Record the first error of the run with its op context and cancel
    the run.  Returns -1."""
    rs_record(rs, code, msg, op, ctx)
    rs_cancel(rs)
    return -1


cdef int rs_fail(RunState* rs, int code, const string& msg) noexcept nogil:
    """Record the first error of the run (no op context) and cancel it.
    Returns -1."""
    return rs_fail_at(rs, code, msg, NULL, NULL)


cdef bint rs_cancel_unfinished(RunState* rs, int code, const string& msg) noexcept nogil:
    """Run.cancel(): fail the run with code unless it has finished or failed
    already (a finished run stays successful).  True if it was cancelled now."""
    cdef bint now = False
    fp_lock(&rs.lock)
    if not rs.done and rs.err_code == E_OK:
        rs.err_code = code
        rs.err_msg = msg
        now = True
    fp_unlock(&rs.lock)
    if now:
        rs_cancel(rs)
    return now


cdef inline bint rs_cancelled(RunCtx* ctx) noexcept nogil:
    return fp_load_relaxed(&ctx.rs.cancelled) != 0


cdef inline int64_t track_src(OpInst* op, RunCtx* ctx, int64_t* run, int64_t* src) noexcept nogil:
    """The source id of reader op `op` (keyed by its input 0: the cursor or
    reader blob) in a tracking run, else -1; cached in *run / *src."""
    if ctx.rs == NULL or ctx.rs.track == NULL:
        return -1
    if run[0] != ctx.rs.run_id:
        src[0] = fp_track_src(ctx.rs.track, op.d.inputs[0])
        run[0] = ctx.rs.run_id
    return src[0]


cdef string op_where(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef string s = op.d.label
    s.append(b" in net '")
    s.append(op.d.net)
    s.append(b"'")
    if ctx.step != NULL and ctx.step.size():
        s.append(b" (step '")
        s.append(ctx.step[0])
        s.append(b"'")
        if ctx.instance >= 0:
            s.append(b", instance ")
            s.append(to_str(ctx.instance))
        s.append(b")")
    return s


cdef int op_fail(OpInst* op, RunCtx* ctx, int code, const char* msg) noexcept nogil:
    cdef string s = op_where(op, ctx)
    s.append(b": ")
    s.append(msg)
    return rs_fail_at(ctx.rs, code, s, op.d, ctx)


cdef int op_fails(OpInst* op, RunCtx* ctx, int code, const string& msg) noexcept nogil:
    cdef string s = op_where(op, ctx)
    s.append(b": ")
    s.append(msg)
    return rs_fail_at(ctx.rs, code, s, op.d, ctx)


cdef int op_oom(OpInst* op, RunCtx* ctx) noexcept nogil:
    return op_fail(op, ctx, E_MEMORY, b"out of memory")


# ---- workspace ------------------------------------------------------------------

cdef cppclass WS:
    WS* parent
    fp_mutex lock                       # protects blobs and nets
    unordered_map[string, Blob*] blobs
    unordered_map[string, NetInst*] nets


cdef WS* ws_new(WS* parent) noexcept nogil:
    cdef WS* ws = new WS()
    ws.parent = parent
    fp_mutex_init(&ws.lock)
    return ws


cdef void ws_clear(WS* ws) noexcept nogil:
    """Free every net and blob of ws (not its parent's)."""
    cdef unordered_map[string, NetInst*] nets
    cdef unordered_map[string, Blob*] blobs
    fp_lock(&ws.lock)
    nets.swap(ws.nets)
    blobs.swap(ws.blobs)
    fp_unlock(&ws.lock)
    for kv in nets:
        net_decref(kv.second)
    for kv2 in blobs:
        blob_free(kv2.second)


cdef void ws_free(WS* ws) noexcept nogil:
    ws_clear(ws)
    fp_mutex_destroy(&ws.lock)
    del ws


cdef Blob* ws_find_local(WS* ws, const string& name) noexcept nogil:
    cdef Blob* b = NULL
    fp_lock(&ws.lock)
    it = ws.blobs.find(name)
    if it != ws.blobs.end():
        b = deref(it).second
    fp_unlock(&ws.lock)
    return b


cdef Blob* ws_find(WS* ws, const string& name) noexcept nogil:
    """Look name up in ws, then its parents.  NULL if nowhere."""
    cdef Blob* b
    while ws != NULL:
        b = ws_find_local(ws, name)
        if b != NULL:
            return b
        ws = ws.parent
    return NULL


cdef Blob* ws_create(WS* ws, const string& name) noexcept nogil:
    """Caffe2's CreateBlob: the visible blob if the name resolves anywhere up
    the chain, otherwise a new blob in ws."""
    cdef Blob* b = ws_find(ws, name)
    if b != NULL:
        return b
    fp_lock(&ws.lock)
    it = ws.blobs.find(name)
    if it != ws.blobs.end():
        b = deref(it).second
    else:
        b = blob_new(name)
        ws.blobs[name] = b
    fp_unlock(&ws.lock)
    return b


# ---- compiled ops and nets ------------------------------------------------------

cdef cppclass OpInst:
    OpDesc* d
    vector[Blob*] ins
    vector[Blob*] outs
    void* state
    WS* ws
    vector[ObjHeader*] objs     # per input: cached native object (one ref each)
    vector[int64_t] obj_run     # per input: run id the object was registered with


cdef cppclass NetInst:
    NetDesc* d
    vector[OpInst*] ops
    int64_t refcnt      # atomic: the workspace map and each CStep hold one
    int64_t running     # atomic: 1 while a thread runs this net (checked when shared)
    bint shared         # more than one step holds this net: it could run concurrently
    int64_t run_id      # the run that created it (0: CreateNet)
    WS* ws


cdef void net_free(NetInst* n) noexcept nogil:
    cdef size_t i, j
    cdef OpInst* op
    for i in range(n.ops.size()):
        op = n.ops[i]
        if op.d.fini != NULL:
            op.d.fini(op)
        for j in range(op.objs.size()):
            obj_decref(op.objs[j])
        del op
    del n


cdef void net_decref(NetInst* n) noexcept nogil:
    if n != NULL and fp_fetch_add(&n.refcnt, -1) == 1:
        net_free(n)


cdef NetInst* net_compile(NetDesc* nd, WS* ws, RunCtx* ctx) noexcept nogil:
    """Bind every op of nd to blobs of ws.  Inputs must exist (as in Caffe2,
    outputs of earlier ops count); outputs are created.  NULL on error."""
    cdef NetInst* n = new NetInst()
    cdef OpInst* op
    cdef OpDesc* od
    cdef Blob* b
    cdef size_t i, j
    cdef string msg
    n.d = nd
    n.refcnt = 1
    n.running = 0
    n.shared = False
    n.run_id = ctx.rs.run_id if ctx.rs != NULL else 0
    n.ws = ws
    for i in range(nd.ops.size()):
        od = nd.ops[i]
        op = new OpInst()
        op.d = od
        op.state = NULL
        op.ws = ws
        for j in range(od.inputs.size()):
            b = ws_find(ws, od.inputs[j])
            if b == NULL:
                del op
                net_free(n)
                msg = od.label
                msg.append(b" in net '")
                msg.append(nd.name)
                msg.append(b"': input blob '")
                msg.append(od.inputs[j])
                msg.append(b"' does not exist (it is read before any net writes it)")
                rs_fail_at(ctx.rs, E_PLAN, msg, od, ctx)
                return NULL
            op.ins.push_back(b)
            op.objs.push_back(NULL)
            op.obj_run.push_back(0)
        for j in range(od.outputs.size()):
            op.outs.push_back(ws_create(ws, od.outputs[j]))
        if od.init != NULL and od.init(op, ctx) != 0:
            del op
            net_free(n)
            return NULL
        n.ops.push_back(op)
    return n


cdef int net_busy(NetInst* n, RunCtx* ctx) noexcept nogil:
    cdef string msg = cstr(b"net '")
    msg.append(n.d.name)
    msg.append(b"' is already running in another thread of the same workspace "
               b"(two concurrent steps use one net; give each its own net or "
               b"create_workspace)")
    return rs_fail(ctx.rs, E_PLAN, msg)


cdef int net_run_profiled(NetInst* n, RunCtx* ctx, RunObs* o) noexcept nogil:
    """net_run timing each op into the run's profile (profile=True only)."""
    cdef size_t i
    cdef OpInst* op
    cdef int rc = 0
    cdef int64_t t0, t1
    if n.shared and fp_exchange(&n.running, 1) != 0:
        return net_busy(n, ctx)
    t0 = fp_now_ns()
    for i in range(n.ops.size()):
        op = n.ops[i]
        rc = op.d.run(op, ctx)
        t1 = fp_now_ns()
        if op.d.prof_idx > 0 and op.d.prof_idx <= o.nprof:
            fp_fetch_add_relaxed(&o.prof_ns[op.d.prof_idx - 1], t1 - t0)
            fp_fetch_add_relaxed(&o.prof_n[op.d.prof_idx - 1], 1)
        t0 = t1
        if rc != 0:
            break
    if n.shared:
        fp_store(&n.running, 0)
    return rc


cdef int net_run(NetInst* n, RunCtx* ctx) noexcept nogil:
    cdef size_t i
    cdef size_t nops = n.ops.size()
    cdef OpInst* op
    cdef int rc = 0
    if ctx.rs != NULL and ctx.rs.obs != NULL and ctx.rs.obs.profile:
        return net_run_profiled(n, ctx, ctx.rs.obs)
    if not n.shared:
        # Only this net's one step runs it, on one thread at a time.
        for i in range(nops):
            op = n.ops[i]
            rc = op.d.run(op, ctx)
            if rc != 0:
                return rc
        return 0
    if fp_exchange(&n.running, 1) != 0:
        return net_busy(n, ctx)
    for i in range(nops):
        op = n.ops[i]
        rc = op.d.run(op, ctx)
        if rc != 0:
            break
    fp_store(&n.running, 0)
    return rc


cdef string net_key(const string& name, int64_t run_id) noexcept nogil:
    """Workspace net-map key: a run's nets never replace another run's (their
    descriptions belong to different Programs); CreateNet'd nets use run 0."""
    cdef string k = name
    k.push_back(0)
    k.append(to_str(run_id))
    return k


cdef NetInst* ws_get_net(WS* ws, NetDesc* nd, RunCtx* ctx) noexcept nogil:
    """The instance of nd in ws for this run, created on first use in the run
    and shared by every step of the run that names it.  New reference."""
    cdef NetInst* n = NULL
    cdef NetInst* fresh
    cdef string key = net_key(nd.name, ctx.rs.run_id)
    fp_lock(&ws.lock)
    it = ws.nets.find(key)
    if it != ws.nets.end():
        n = deref(it).second
        fp_fetch_add(&n.refcnt, 1)
        n.shared = True         # a second step uses it (set before any thread starts)
    fp_unlock(&ws.lock)
    if n != NULL:
        return n
    fresh = net_compile(nd, ws, ctx)
    if fresh == NULL:
        return NULL
    fp_lock(&ws.lock)
    it = ws.nets.find(key)
    if it != ws.nets.end():
        n = deref(it).second      # another thread of this run won the race
        n.shared = True
    else:
        ws.nets[key] = fresh
        n = fresh
        fresh = NULL
    fp_fetch_add(&n.refcnt, 1)
    fp_unlock(&ws.lock)
    if fresh != NULL:
        net_decref(fresh)
    return n


# ---- compiled steps ------------------------------------------------------------

cdef cppclass CStep:
    StepDesc* d
    WS* ws
    bint lazy                   # create_workspace: compiled at each execution
    vector[NetInst*] nets
    vector[CStep*] subs         # recurring substeps
    vector[CStep*] reporters    # run_every_ms substeps
    NetInst* report_net
    Blob* stop


cdef void cstep_free(CStep* cs) noexcept nogil:
    cdef size_t i
    if cs == NULL:
        return
    for i in range(cs.nets.size()):
        net_decref(cs.nets[i])
    for i in range(cs.subs.size()):
        cstep_free(cs.subs[i])
    for i in range(cs.reporters.size()):
        cstep_free(cs.reporters[i])
    net_decref(cs.report_net)
    del cs


cdef CStep* step_compile(StepDesc* d, WS* ws, RunCtx* ctx, bint here) noexcept nogil:
    """Compile d into ws.  A create_workspace step is left lazy unless `here`
    (the executor compiles it into a fresh child at each execution)."""
    cdef CStep* cs = new CStep()
    cdef CStep* sub
    cdef NetInst* n
    cdef size_t i
    cdef string msg
    cs.d = d
    cs.ws = ws
    cs.lazy = d.create_workspace and not here
    cs.report_net = NULL
    cs.stop = NULL
    if cs.lazy:
        return cs
    for i in range(d.substeps.size()):
        sub = step_compile(d.substeps[i], ws, ctx, False)
        if sub == NULL:
            cstep_free(cs)
            return NULL
        if d.substeps[i].run_every_ms > 0:
            cs.reporters.push_back(sub)
        else:
            cs.subs.push_back(sub)
    for i in range(d.nets.size()):
        n = ws_get_net(ws, d.nets[i], ctx)
        if n == NULL:
            cstep_free(cs)
            return NULL
        cs.nets.push_back(n)
    if d.report_net != NULL:
        cs.report_net = ws_get_net(ws, d.report_net, ctx)
        if cs.report_net == NULL:
            cstep_free(cs)
            return NULL
    if d.has_stop:
        cs.stop = ws_find(ws, d.stop_name)
        if cs.stop == NULL:
            msg = cstr(b"step '")
            msg.append(d.name)
            msg.append(b"': should_stop_blob '")
            msg.append(d.stop_name)
            msg.append(b"' does not exist when the step is compiled (create it in an "
                       b"earlier net of the step or before the run)")
            rs_fail(ctx.rs, E_PLAN, msg)
            cstep_free(cs)
            return NULL
    return cs


cdef int read_stop_fail(CStep* cs, RunCtx* ctx) noexcept nogil:
    cdef Blob* b = cs.stop
    cdef string msg = cstr(b"step '")
    msg.append(cs.d.name)
    msg.append(b"': should_stop_blob '")
    msg.append(cs.d.stop_name)
    msg.append(b"' expects a scalar boolean, got ")
    if b.obj != NULL:
        msg.append(OBJ_NAMES[b.obj.kind])
    else:
        msg.append(tensor_describe(&b.t))
    return rs_fail_at(ctx.rs, E_RUNTIME, msg, NULL, ctx)     # step and instance known, no op


cdef inline int read_stop(CStep* cs, RunCtx* ctx, bint* out) noexcept nogil:
    """out = value of the step's stop blob (missing/unset reads as false)."""
    cdef Blob* b = cs.stop
    out[0] = False
    if b == NULL:
        return 0
    if b.t.dtype == DT_BOOL and b.t.size == 1 and b.obj == NULL:
        out[0] = (<uint8_t*>b.t.buf.data)[0] != 0
        return 0
    if b.obj != NULL or b.t.dtype != DT_UNDEFINED:
        return read_stop_fail(cs, ctx)
    return 0


cdef inline bint step_own(StepDesc* d, int64_t i) noexcept nogil:
    if d.has_stop:
        return i == 0 if d.only_once else True
    return i < d.num_iter


# -- reporters: one thread per action; first run one interval after start,
#    then every interval, plus one final run after the step's body ends.

cdef cppclass Reporter:
    CStep* step          # either a substep...
    NetInst* net         # ...or a report net
    RunCtx ctx
    int64_t interval_ns
    fp_mutex lock        # protects done
    fp_cond cv
    bint done
    fp_thread th
    int rc


cdef int reporter_action(Reporter* r) noexcept nogil:
    if r.step != NULL:
        return exec_step(r.step, &r.ctx)
    return net_run(r.net, &r.ctx)


cdef void* reporter_main(void* arg) noexcept nogil:
    cdef Reporter* r = <Reporter*>arg
    cdef bint last
    cdef int64_t deadline, now, slice_end
    while True:
        deadline = fp_now_ns() + r.interval_ns
        fp_lock(&r.lock)
        while not r.done and not rs_cancelled(&r.ctx):
            now = fp_now_ns()
            if now >= deadline:
                break
            # Slices of at most 50 ms so a cancelled run is seen promptly.
            slice_end = deadline if deadline - now < 50000000 else now + 50000000
            fp_wait_until(&r.cv, &r.lock, slice_end)
        last = r.done
        fp_unlock(&r.lock)
        if rs_cancelled(&r.ctx) and not last:
            break
        if reporter_action(r) != 0:
            r.rc = -1
            break
        if last:
            break
    return NULL


cdef int reporters_start(CStep* cs, RunCtx* ctx, vector[Reporter*]* out) noexcept nogil:
    cdef size_t i
    cdef Reporter* r
    cdef size_t n = cs.reporters.size() + (1 if cs.report_net != NULL else 0)
    for i in range(n):
        r = new Reporter()
        r.ctx = ctx[0]
        r.done = False
        r.rc = 0
        fp_mutex_init(&r.lock)
        fp_cond_init(&r.cv)
        if i < cs.reporters.size():
            r.step = cs.reporters[i]
            r.net = NULL
            r.ctx.step = &r.step.d.name
            r.interval_ns = cs.reporters[i].d.run_every_ms * 1000000
        else:
            r.step = NULL
            r.net = cs.report_net
            r.interval_ns = cs.d.report_interval_ms * 1000000
        if fp_thread_start(&r.th, reporter_main, r) != 0:
            fp_mutex_destroy(&r.lock)
            fp_cond_destroy(&r.cv)
            del r
            return rs_fail(ctx.rs, E_RUNTIME, b"could not start a reporter thread")
        out.push_back(r)
    return 0


cdef int reporters_stop(vector[Reporter*]* rs) noexcept nogil:
    cdef size_t i
    cdef Reporter* r
    cdef int rc = 0
    for i in range(rs.size()):
        r = rs[0][i]
        fp_lock(&r.lock)
        r.done = True
        fp_signal(&r.cv)
        fp_unlock(&r.lock)
    for i in range(rs.size()):
        r = rs[0][i]
        fp_thread_join(&r.th)
        if r.rc != 0:
            rc = -1
        fp_mutex_destroy(&r.lock)
        fp_cond_destroy(&r.cv)
        del r
    rs.clear()
    return rc


# -- concurrent substeps / instances

ctypedef struct Worker:
    CStep* step
    RunCtx ctx
    int rc
    fp_thread th


cdef void* worker_main(void* arg) noexcept nogil:
    cdef Worker* w = <Worker*>arg
    if rs_cancelled(&w.ctx):
        w.rc = -1
    else:
        w.rc = exec_step(w.step, &w.ctx)
    if fp_tags_pending():
        fp_track_thread_end(w.ctx.rs.track, w.rc == 0 and not rs_cancelled(&w.ctx))
    return NULL


cdef int run_concurrent(CStep* cs, RunCtx* ctx) noexcept nogil:
    """One iteration: S x max(1, N) threads, thread k runs substep k mod S."""
    cdef size_t S = cs.subs.size()
    cdef int64_t N = cs.d.num_instances if cs.d.num_instances > 1 else 1
    cdef size_t T = S * <size_t>N
    cdef size_t k, started = 0
    cdef int rc = 0
    cdef Worker* ws = <Worker*>calloc(T, sizeof(Worker))
    if ws == NULL:
        return rs_fail(ctx.rs, E_MEMORY, b"out of memory starting step threads")
    for k in range(T):
        ws[k].step = cs.subs[k % S]
        ws[k].ctx = ctx[0]
        ws[k].ctx.step = &ws[k].step.d.name
        if cs.d.num_instances > 1:
            ws[k].ctx.instance = <int64_t>(k // S)
            ws[k].ctx.num_instances = N
        ws[k].rc = 0
        if fp_thread_start(&ws[k].th, worker_main, &ws[k]) != 0:
            rc = rs_fail(ctx.rs, E_RUNTIME, b"could not start a step thread")
            break
        started += 1
    for k in range(started):
        fp_thread_join(&ws[k].th)
        if ws[k].rc != 0:
            rc = -1
    free(ws)
    return rc


cdef int exec_body(CStep* cs, RunCtx* ctx) noexcept nogil:
    cdef StepDesc* d = cs.d
    cdef int64_t i = 0
    cdef size_t j
    cdef bint stop = False
    cdef bint conc = (d.concurrent and cs.subs.size() > 1) or d.num_instances > 1
    if cs.nets.size():
        while step_own(d, i):
            if rs_cancelled(ctx):
                return -1
            for j in range(cs.nets.size()):
                if net_run(cs.nets[j], ctx) != 0:
                    return -1
                if cs.stop != NULL:
                    if read_stop(cs, ctx, &stop) != 0:
                        return -1
                    if stop:
                        return 0
            i += 1
    elif cs.subs.size():
        while step_own(d, i):
            if rs_cancelled(ctx):
                return -1
            if conc:
                if run_concurrent(cs, ctx) != 0:
                    return -1
                if cs.stop != NULL:
                    if read_stop(cs, ctx, &stop) != 0:
                        return -1
                    if stop:
                        return 0
            else:
                for j in range(cs.subs.size()):
                    if exec_step(cs.subs[j], ctx) != 0:
                        return -1
                    if cs.stop != NULL:
                        if read_stop(cs, ctx, &stop) != 0:
                            return -1
                        if stop:
                            return 0
            i += 1
    # A step with neither nets nor recurring substeps does nothing (Caffe2
    # busy-spun forever on such a step when it had a stop blob).
    return 0


cdef int exec_compiled(CStep* cs, RunCtx* ctx) noexcept nogil:
    cdef vector[Reporter*] reps
    cdef int rc
    cdef const string* saved = ctx.step
    ctx.step = &cs.d.name
    if cs.reporters.size() or cs.report_net != NULL:
        if reporters_start(cs, ctx, &reps) != 0:
            reporters_stop(&reps)
            ctx.step = saved
            return -1
    rc = exec_body(cs, ctx)
    if reps.size():
        if reporters_stop(&reps) != 0:
            rc = -1
    ctx.step = saved
    return rc


cdef int exec_step(CStep* cs, RunCtx* ctx) noexcept nogil:
    cdef WS* child
    cdef CStep* inner
    cdef int rc
    if not cs.lazy:
        return exec_compiled(cs, ctx)
    # create_workspace: a fresh child workspace, compiled and freed per execution
    child = ws_new(cs.ws)
    inner = step_compile(cs.d, child, ctx, True)
    if inner == NULL:
        rc = -1
    else:
        rc = exec_compiled(inner, ctx)
        cstep_free(inner)
    ws_free(child)
    return rc
