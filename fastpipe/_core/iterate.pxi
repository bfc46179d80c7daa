# RecordIterator: a blob queue of a running job, read from Python.
#
# ``LocalSession.iterate`` pre-creates the queue's blob in the session
# workspace, makes a RecordIterator over that blob and then starts the job;
# the CreateBlobsQueue of the job's init net (in whatever child workspace)
# lands in that blob by the create-through-parent rule.  ``next()``:
#
# 1. first call: waits (GIL released, on the RunState's done_cv, which
#    rs_register_queue also signals) until the blob holds a queue of this run
#    -- one registered with the run, or any queue other than the one it held
#    before the start -- or until the run ended;
# 2. fast path, GIL held: a lock-free try_read into the iterator's own
#    tensors; the dequeued buffers are taken over by numpy arrays (no byte
#    copy) whose one base object per record owns the buffer references;
# 3. slow path (queue empty): queue_read without the GIL in 20 ms slices,
#    running signal handlers and checking the run between slices;
# 4. end (queue closed and drained, or the run finished and the queue is
#    empty, or the run failed/cancelled): joins the run (Run.wait) and raises
#    its error, else StopIteration.
#
# Threading: one RecordIterator is driven by one Python thread at a time
# (the GIL serialises its methods; its waits release the GIL but hold no
# lock of the iterator).  The RunState's lock protects its queue list,
# `done` and the wait on done_cv.

from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.object cimport PyObject_GetAttr
import operator as _operator
import keyword as _keyword
from fastpipe.errors import IterTimeoutError as _IterTimeoutError, NotSupportedError

cdef extern from "Python.h":
    ctypedef struct _PyTypeObj "PyTypeObject":
        PyObject* (*tp_alloc)(_PyTypeObj*, Py_ssize_t)

DEF IT_SLICE_NS = 20000000      # 20 ms: signal / run-state checks while blocked
DEF RESOLVE_SLICE_NS = 50000000

cdef enum:
    IT_NEW = 0          # made, run not attached yet
    IT_RESOLVE = 1      # run attached, queue not found yet
    IT_READ = 2         # reading the queue
    IT_END = 3          # finished (the run joined, or closed)
    IT_DRAIN = 4        # the queue is done; the run has not finished yet


DEF POOL_MAX = 64        # recycled buffers kept per field

# Exact resume (state() / iterate(state=...)): the iterator keeps, per
# source, the set of source positions its items carried (provenance tags,
# runtime.pxi).  Helpers over those sets; orphans and the first untagged
# enqueue come from the run's FpTrack under its mutex.
cdef extern from *:
    """
    static void fp_track_collect(FpTrack* t, std::vector<FpRanges>* d, std::string* untracked) {
        std::lock_guard<std::mutex> g(t->mu);
        for (const FpTag& x : t->orphans)
            if (x.src >= 0 && (size_t)x.src < d->size()) (*d)[x.src].add(x.start, x.end);
        t->orphans.clear();
        *untracked = t->untracked;
    }
    static void fp_ranges_export(const FpRanges* s, std::vector<int64_t>* out) {
        out->clear();
        for (const auto& kv : s->r) { out->push_back(kv.first); out->push_back(kv.second); }
    }
    /* This thread's pending tags (the records just read) join d. */
    static void fp_ranges_absorb(std::vector<FpRanges>* d) {
        FpTags* t = fp_tls_tags;
        if (!t || t->size() == 0) return;
        for (size_t i = 0; i < t->size(); i++) {
            const FpTag& x = t->at(i);
            if (x.src >= 0 && (size_t)x.src < d->size()) (*d)[x.src].add(x.start, x.end);
        }
        t->clear();
    }
    static FpTrack* fp_track_new() { return new FpTrack(); }
    static void fp_track_add_key(FpTrack* t, const std::string& k, int64_t src) { t->src_of[k] = src; }
    """
    void fp_track_collect(FpTrack* t, vector[FpRanges]* d, string* untracked) except +
    void fp_ranges_export(const FpRanges* s, vector[int64_t]* out) except +
    void fp_ranges_absorb(vector[FpRanges]* d) except +
    FpTrack* fp_track_new() except +
    void fp_track_add_key(FpTrack* t, const string& k, int64_t src) except +


@cython.final
cdef class _BufPool:
    """Buffers of records whose arrays all died, per field, handed back to
    the queue's slots by the iterator: the producer's next record reuses
    them (tensor_reshape keeps a private buffer that is large enough), so a
    steady loop neither allocates on the producer nor frees on the
    consumer.  Only buffers nobody else references are recycled.

    Shared by an iterator and the base objects of its items (they may
    outlive it).  `lock` (a spinlock: held for a push or a pop) protects
    the stacks; any thread holding the GIL may push (an array's death)."""
    cdef int64_t lock
    cdef int nf
    cdef Buffer** bufs      # nf * POOL_MAX
    cdef int* dts           # nf * POOL_MAX: the dtype each buffer held
    cdef int* counts        # nf

    cdef int init(self, int nf) except -1:
        self.nf = nf
        self.bufs = <Buffer**>calloc(nf * POOL_MAX, sizeof(Buffer*))
        self.dts = <int*>calloc(nf * POOL_MAX, sizeof(int))
        self.counts = <int*>calloc(nf, sizeof(int))
        if self.bufs == NULL or self.dts == NULL or self.counts == NULL:
            raise OutOfMemoryError("RecordIterator: out of memory")
        return 0

    cdef inline void put(self, int j, Buffer* b, int dt) noexcept nogil:
        """Take b (the caller's only reference) for field j, or free it."""
        cdef bint kept = False
        while not fp_cas(&self.lock, 0, 1):
            fp_cpu_relax()
        if self.counts[j] < POOL_MAX:
            self.bufs[j * POOL_MAX + self.counts[j]] = b
            self.dts[j * POOL_MAX + self.counts[j]] = dt
            self.counts[j] += 1
            kept = True
        fp_store(&self.lock, 0)
        if not kept:
            buf_decref(b)

    cdef inline void refill(self, Tensor* t, int j) noexcept nogil:
        """Give the empty tensor t a recycled buffer of field j, if any (a
        1-d header over the whole buffer: the writer reshapes it)."""
        cdef Buffer* b = NULL
        cdef int dt = 0, c
        if self.counts[j] == 0:         # racy peek: at worst a miss
            return
        while not fp_cas(&self.lock, 0, 1):
            fp_cpu_relax()
        c = self.counts[j]
        if c > 0:
            b = self.bufs[j * POOL_MAX + c - 1]
            dt = self.dts[j * POOL_MAX + c - 1]
            self.counts[j] = c - 1
        fp_store(&self.lock, 0)
        if b != NULL:
            t.buf = b
            t.dtype = dt
            t.ndim = 1
            t.shape[0] = b.capacity // dtype_itemsize(dt)
            t.size = t.shape[0]

    def __dealloc__(self):
        cdef int j, i
        if self.counts != NULL:
            for j in range(self.nf):
                for i in range(self.counts[j]):
                    buf_decref(self.bufs[j * POOL_MAX + i])
        free(self.bufs)
        free(self.dts)
        free(self.counts)


@cython.freelist(64)
@cython.final
cdef class _RecordBufs:
    """The base object of a record's arrays: owns the native buffers taken
    out of the queue (one reference each; bufs[j] is field j's, NULL for a
    string field), freed -- or recycled into the iterator's pool -- with the
    last array."""
    cdef Buffer* small[4]
    cdef int small_dt[4]
    cdef Buffer** bufs
    cdef int* dts
    cdef int n
    cdef PyObject* pool     # a _BufPool (one reference) or NULL; not a GC edge

    cdef inline int init(self, int n, object pool) except -1:
        self.n = n
        if n <= 4:
            self.bufs = self.small
            self.dts = self.small_dt
            memset(self.small, 0, sizeof(self.small))
        else:
            self.bufs = <Buffer**>calloc(n, sizeof(Buffer*))
            self.dts = <int*>calloc(n, sizeof(int))
            if self.bufs == NULL or self.dts == NULL:
                raise OutOfMemoryError("RecordIterator: out of memory")
        if pool is not None:
            Py_INCREF(pool)
            self.pool = <PyObject*>pool
        else:
            self.pool = NULL
        return 0

    def __dealloc__(self):
        cdef int i
        cdef Buffer* b
        for i in range(self.n):
            b = self.bufs[i]
            if b == NULL:
                continue
            if self.pool != NULL and b.maplen == 0 and not b.is_str and buf_private(b):
                (<_BufPool>self.pool).put(i, b, self.dts[i])
            else:
                buf_decref(b)
        if self.pool != NULL:
            Py_DECREF(<object>self.pool)
            self.pool = NULL
        if self.bufs != self.small and self.bufs != NULL:
            free(self.bufs)
            free(self.dts)
        self.bufs = NULL
        self.n = 0


# ---- record types ---------------------------------------------------------------

_RECORD_TYPES = {}      # field-name tuple -> tuple subclass (only descriptions: names)


def _record_getitem_factory(fields):
    index = {f: i for i, f in enumerate(fields)}
    tuple_getitem = tuple.__getitem__

    def __getitem__(self, key):
        if key.__class__ is str:
            i = index.get(key)
            if i is None:
                raise BlobError("record has no field %r (fields: %s)"
                                % (key, ", ".join(fields)))
            return tuple_getitem(self, i)
        return tuple_getitem(self, key)
    return __getitem__


def record_type(fields):
    """The tuple subclass of records with these field names (cached: one
    class per name tuple).  Fields are items in order, attributes (names that
    are identifiers) and ``rec["name"]``."""
    fields = tuple(str(f) for f in fields)
    cls = _RECORD_TYPES.get(fields)
    if cls is not None:
        return cls
    ns = {"__slots__": (), "_fields": fields, "__module__": "fastpipe.session",
          "__getitem__": _record_getitem_factory(fields),
          "__doc__": "A record of fields %s (a tuple; fields also by name)." % (fields,)}

    def __repr__(self):
        return "Record(%s)" % ", ".join("%s=%r" % (f, v) for f, v in zip(fields, self))

    def __reduce__(self):
        return (_make_record, (fields, tuple(self)))
    ns["__repr__"] = __repr__
    ns["__reduce__"] = __reduce__
    for i, f in enumerate(fields):
        if f.isidentifier() and not _keyword.iskeyword(f) and not f.startswith("__") \
                and f not in ns:
            ns[f] = property(_operator.itemgetter(i), doc="field %r" % f)
    cls = type("Record", (tuple,), ns)
    _RECORD_TYPES[fields] = cls
    return cls


def _make_record(fields, values):
    return record_type(fields)(values)


# ---- helpers ----------------------------------------------------------------------

cdef extern from "numpy/arrayobject.h":
    object _np_new_from_descr "PyArray_NewFromDescr" (
        _PyTypeObj* subtype, cnp.dtype descr, int nd, cnp.npy_intp* dims, cnp.npy_intp* strides,
        void* data, int flags, PyObject* obj)

# numpy dtype descriptors by fastpipe dtype code (one reference each, for
# the life of the module): next() builds arrays without a dtype lookup.
cdef PyObject* _it_descr[32]


cdef _init_it_descrs():
    cdef int dt
    for dt in range(32):
        _it_descr[dt] = NULL
        if dt == DT_STRING or dt == DT_UNDEFINED:
            continue
        nt = npy_type(dt)
        if nt >= 0:
            d = _np.dtype(cnp.PyArray_TypeObjectFromType(nt))
            Py_INCREF(d)
            _it_descr[dt] = <PyObject*>d


_init_it_descrs()

cdef bint _rs_has_queue(RunState* rs, ObjHeader* h) noexcept nogil:
    """h is registered with rs (caller holds rs.lock)."""
    cdef size_t i
    for i in range(rs.queues.size()):
        if rs.queues[i] == h:
            return True
    return False


cdef object _take_array(Tensor* t, _RecordBufs base, int j):
    """A numpy array over t's buffer; the buffer reference moves to base and t
    becomes empty (the iterator's own tensor: no lock).  Strings: an object
    array (copy)."""
    cdef cnp.ndarray arr
    cdef Buffer* b = t.buf
    if t.dtype == DT_STRING or b == NULL:
        out = _snapshot_to_numpy(t)
        tensor_clear(t)
        return out
    cdef PyObject* descr = _it_descr[t.dtype] if 0 <= t.dtype < 32 else NULL
    if descr == NULL:
        arr = cnp.PyArray_SimpleNewFromData(t.ndim, <cnp.npy_intp*>t.shape, npy_type(t.dtype),
                                            b.data)
    else:
        Py_INCREF(<object>descr)        # PyArray_NewFromDescr steals it
        arr = <cnp.ndarray>_np_new_from_descr(<_PyTypeObj*>cnp.ndarray, <cnp.dtype>descr, t.ndim,
                                              <cnp.npy_intp*>t.shape, NULL, b.data,
                                              cnp.NPY_ARRAY_CARRAY, NULL)
    base.bufs[j] = b
    base.dts[j] = t.dtype
    Py_INCREF(base)
    cnp.PyArray_SetBaseObject(arr, base)
    if not buf_private(b):
        # someone else holds this buffer too, or it is borrowed memory of a
        # Python object (a source's array read in place): never let Python
        # write into it
        cnp.PyArray_CLEARFLAGS(arr, cnp.NPY_ARRAY_WRITEABLE)
    memset(t, 0, sizeof(Tensor))
    return arr


@cython.no_gc_clear     # __dealloc__ needs nrun (cancel + join)
@cython.final
cdef class RecordIterator:
    """Iterates the records a running job writes into one of its queues.

    Made by ``LocalSession.iterate(runnable, queue, num_records=1,
    timeout=None)`` (see there); the job runs on native threads meanwhile.
    Items are tuples in the queue's field order -- a tuple subclass with
    attribute and ``["name"]`` access when the queue has field names -- of
    numpy arrays that own the buffers moved out of the queue (no copy;
    writable, valid forever).  Iteration ends when the job has finished and
    the queue is drained; a failure anywhere in the job raises the job's
    RunError from ``next()`` (after joining it), with the original exception
    as ``__cause__``.

    ``close()`` (also ``with`` exit and dropping the iterator) cancels the
    job and joins every thread.  Ctrl-C while ``next()`` waits cancels the
    job, joins it and raises KeyboardInterrupt.  With ``timeout`` (seconds),
    a ``next()`` that waits longer raises IterTimeoutError and leaves the
    job running.

    Threading: drive one iterator from one Python thread at a time (a
    second thread's ``next()`` while one waits raises ArgumentError).  Any
    thread may call ``cancel()`` or ``close()``: a ``next()`` waiting in
    another thread then raises CancelledError.
    """
    cdef Run nrun
    cdef RunState* rs
    cdef Workspace nws          # keeps `blob` alive until the queue is resolved
    cdef Blob* blob             # the queue's blob in the session workspace
    cdef ObjHeader* old_h       # what the blob held before the start (one ref)
    cdef ObjHeader* qh          # the queue (one ref) once resolved
    cdef Queue* q
    cdef RebatchQueue* rq       # instead of q: iterating a rebatching queue
    cdef int64_t nblobs
    cdef int64_t k              # records per item
    cdef Tensor* outs           # k * nblobs tensors of the iterator (no locks)
    cdef Tensor* ptrs[MAX_REC_BLOBS]
    cdef int64_t timeout_ns     # per next(); -1: none
    cdef int64_t wake_mark      # wake parked writers once the fill is <= this
    cdef int phase              # IT_* (named `phase`: `state` is the resume method)
    cdef bint busy              # a next() is in its slow path (GIL released at times)
    cdef QStats st
    cdef object rec_type        # None: plain tuples
    cdef _BufPool pool          # recycled buffers of dead items (see _BufPool)
    cdef object _fields
    cdef str qname
    cdef readonly object run    # the RunHandle
    cdef FpTrack* trk           # provenance tracking of the run (one ref), or NULL
    cdef vector[FpRanges]* dlv  # per source: positions delivered (items returned)
    cdef object _src_meta       # per source: its JSON description (session.py)
    cdef object _refusals       # why this run cannot be resumed exactly (strs)
    cdef object __weakref__

    def __cinit__(self):
        self.phase = IT_NEW
        self.busy = False
        self.rs = NULL
        self.blob = NULL
        self.old_h = NULL
        self.qh = NULL
        self.q = NULL
        self.rq = NULL
        self.outs = NULL
        self.nblobs = 0
        memset(&self.st, 0, sizeof(QStats))
        self.trk = NULL
        self.dlv = NULL

    def __init__(self):
        raise ArgumentError("a RecordIterator is made by LocalSession.iterate()")

    @property
    def fields(self):
        """The queue's field names (a tuple), or None when it has none."""
        return self._fields

    @property
    def queue_name(self):
        return self.qname

    def _attach(self, Run nrun not None, handle):
        """Bind the started run (LocalSession.iterate, right after the start)."""
        if self.phase != IT_NEW:
            raise ArgumentError("RecordIterator is attached already")
        self.nrun = nrun
        self.rs = nrun.pr.rs
        self.run = handle
        self.phase = IT_RESOLVE

    # -- teardown

    cdef void _release(self):
        """Drop the queue, the tensors and the workspace (the job is joined or
        being cancelled).  Idempotent."""
        cdef int64_t i
        if self.qh != NULL:
            qstats_flush(&self.st)
            self.st.queue = NULL
            obj_decref(self.qh)
            self.qh = NULL
            self.q = NULL
            self.rq = NULL
        if self.old_h != NULL:
            obj_decref(self.old_h)
            self.old_h = NULL
        if self.outs != NULL:
            for i in range(self.k * self.nblobs):
                tensor_clear(&self.outs[i])
            free(self.outs)
            self.outs = NULL
        self._drop_blob()
        self.pool = None        # items alive may still hold it

    cdef void _drop_blob(self):
        """Let go of the queue's blob and of the workspace pin that keeps it
        from being freed (see _make_iterator)."""
        if self.nws is not None and self.blob != NULL:
            self.nws.active -= 1
        self.blob = NULL
        self.nws = None

    cdef object _end(self, int64_t deadline):
        """The queue is done (or the run failed): join the run, raise its
        error, else StopIteration.  Past ``deadline`` (>= 0) with the run
        still going (another task blocked: an output queue nobody reads?)
        raise IterTimeoutError; a later next() waits again."""
        cdef int64_t left
        cdef bint finished
        self.phase = IT_DRAIN
        self._release()
        try:
            if deadline >= 0:
                left = deadline - fp_now_ns()
                finished = self.nrun.wait(left / 1e9 if left > 0 else 0.0)
            else:
                finished = self.nrun.wait()
        except BaseException:
            self.phase = IT_END     # the job's error is raised once
            raise
        if not finished:
            raise _IterTimeoutError(
                    "queue %r is drained and closed, but the job is still running after "
                    "%.3g s: another of its tasks is blocked (an output queue nobody "
                    "reads?); the job keeps running (close() the iterator to stop it)"
                % (self.qname, self.timeout_ns / 1e9))
        self.phase = IT_END
        raise StopIteration

    cdef _abort(self, exc):
        """An exception (Ctrl-C, a signal handler's) interrupted a wait in
        next(): stop the run everywhere and join it; the caller re-raises."""
        self.phase = IT_END
        self._release()
        self.nrun._abort(exc)

    def cancel(self):
        """Stop the job like a failure (non-blocking); the next ``next()``
        joins it and raises CancelledError (unless another error came first)."""
        if self.nrun is not None:
            self.nrun.cancel()

    def stats(self):
        """The job's live stats (``RunHandle.stats``; fastpipe.observe)."""
        return self.run.stats()

    def diagnose(self):
        """The job's bottleneck verdict or stall report (``RunHandle.diagnose``)."""
        return self.run.diagnose()

    def close(self):
        """Cancel the job unless it finished, join every thread and release
        the queue.  Idempotent; the cancellation's CancelledError is
        suppressed (a job error that came first is raised)."""
        if self.nrun is None:
            self.phase = IT_END
            self._release()
            return
        if self.busy:
            # another thread waits in next(): stop the job (which wakes it; it
            # releases the queue and raises CancelledError there) and join
            self.nrun._stop(True)
            return
        already = self.phase == IT_END
        self.phase = IT_END
        self._release()
        # cancel, interrupt Python ops (as dropping the iterator does) and join
        self.nrun._stop(True)
        try:
            self.nrun.wait()
        except CancelledError:
            pass
        except BaseException:
            if not already:
                raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                pass        # the loop body's exception wins
        return False

    def __dealloc__(self):
        if self.nrun is not None and self.phase != IT_END:
            self.nrun._stop(True)   # cancel and join; never raises the job's error
        self._release()
        fp_track_decref(self.trk)   # the run holds its own reference
        self.trk = NULL
        del self.dlv
        self.dlv = NULL

    # -- exact resume

    def _track(self, keys, skip, meta, refusals):
        """Track provenance in the run about to start (LocalSession.iterate,
        just before the start, on the starting thread): ``keys[i]`` are the
        input-0 blob names of source i's reader ops, ``skip[i]`` ``(low,
        [[a, b], ...])`` delivered before (resume) or None, ``meta[i]`` its
        description in state(), ``refusals`` the reasons state() refuses."""
        cdef size_t i
        cdef FpTrack* t
        if self.trk != NULL:
            raise ArgumentError("RecordIterator: tracking is set up already")
        t = fp_track_new()
        self.trk = t
        self.dlv = new vector[FpRanges](len(keys))
        for i, ks in enumerate(keys):
            for k in ks:
                fp_track_add_key(t, _bname(k), <int64_t>i)
        t.skip.resize(len(keys))
        for i, sk in enumerate(skip):
            if sk is None:
                continue
            t.resumed = True
            low, ranges = sk
            t.skip[i].add(0, low)
            self.dlv[0][i].add(0, low)
            for a, b in ranges:
                t.skip[i].add(a, b)
                self.dlv[0][i].add(a, b)
        self._src_meta = list(meta)
        self._refusals = list(refusals)
        fp_tags_clear()                     # nothing of another run on this thread
        fp_track_set_next(t)

    cdef inline void _absorb(self):
        """The tags of the records just read (this thread's pending tags)
        join the delivered set: call only when the item is handed over."""
        if self.dlv != NULL:
            fp_ranges_absorb(self.dlv)
        else:
            fp_tags_clear()

    def state(self):
        """A small JSON-serialisable dict saying which records this iterator
        (and the runs it resumes) has delivered; ``LocalSession.iterate(...,
        state=s)`` resumes from it (see there).  Safe at any point: before
        the first record, while iterating, after the end.

        Raises NotSupportedError when the job cannot be resumed exactly (the
        message names the source or stage)."""
        cdef string untracked
        cdef vector[int64_t] flat
        cdef size_t i, j
        if self.trk == NULL:
            raise NotSupportedError("RecordIterator over queue %r: this iterator does not "
                                    "track what it delivered (made without LocalSession."
                                    "iterate)" % self.qname)
        if self._refusals:
            raise NotSupportedError(self._refusals[0])
        fp_track_collect(self.trk, self.dlv, &untracked)
        if untracked.size():
            raise NotSupportedError("cannot resume: " + untracked.decode("utf-8", "replace"))
        sources = []
        for i in range(self.dlv.size()):
            fp_ranges_export(&self.dlv[0][i], &flat)
            d = dict(self._src_meta[i])
            d["low"] = int(self.dlv[0][i].low)
            d["ranges"] = [[int(flat[j]), int(flat[j + 1])] for j in range(0, flat.size(), 2)]
            sources.append(d)
        return {"version": 1, "queue": self.qname, "sources": sources}

    def __iter__(self):
        return self

    # -- resolving the queue

    cdef int _resolve(self) except -1:
        """Wait until the blob holds this run's queue (see the file comment)
        or the run ended.  Returns 1 (resolved) or 0 (ended without a queue)."""
        cdef RunState* rs = self.rs
        cdef ObjHeader* h = NULL
        cdef bint ok = False, done = False, registered = False
        cdef int64_t deadline = -1, slice_end, i
        cdef Blob* b = self.blob
        if self.timeout_ns >= 0:
            deadline = fp_now_ns() + self.timeout_ns
        while True:
            with nogil:
                fp_lock(&rs.lock)
                while True:
                    # the blob is read under rs.lock: a queue registered after
                    # this check broadcasts done_cv after we wait (no lost wake-up)
                    h = blob_get_obj(b)
                    registered = h != NULL and _rs_has_queue(rs, h)
                    ok = h != NULL and (h.kind == OBJ_QUEUE or h.kind == OBJ_REBATCH_QUEUE) \
                        and (registered or h != self.old_h)
                    done = rs.done
                    if ok or done:
                        break
                    obj_decref(h)
                    h = NULL
                    slice_end = fp_now_ns() + RESOLVE_SLICE_NS
                    if deadline >= 0 and deadline < slice_end:
                        slice_end = deadline
                    if fp_wait_until(&rs.done_cv, &rs.lock, slice_end):
                        break       # slice over: check signals and the deadline
                fp_unlock(&rs.lock)
            if not ok and done and h != NULL and (h.kind == OBJ_QUEUE or
                                                  h.kind == OBJ_REBATCH_QUEUE):
                ok = True       # the run ended; the blob holds a queue it did not register
            if ok:
                break
            obj_decref(h)
            h = NULL
            if done:
                return 0
            try:
                PyErr_CheckSignals()
            except BaseException as e:
                self._abort(e)
                raise
            if deadline >= 0 and fp_now_ns() >= deadline:
                raise _IterTimeoutError(
                    "RecordIterator: queue %r was not created within %.3g s (the job keeps "
                    "running)" % (self.qname, self.timeout_ns / 1e9))
        if not registered:
            # make sure the run's failure or cancellation closes it
            rs_register_queue(rs, h)
        self.qh = h
        if h.kind == OBJ_REBATCH_QUEUE:
            return self._resolved_rq(h)
        self.q = <Queue*>h.impl
        self.nblobs = self.q.nblobs
        self.wake_mark = self.q.capacity - max(1, self.q.capacity // 4)
        if self.nblobs > MAX_REC_BLOBS:
            raise ArgumentError("queue %r holds %d blobs per record, at most %d can be iterated"
                                % (self.qname, self.nblobs, MAX_REC_BLOBS))
        self.outs = <Tensor*>calloc(self.k * self.nblobs if self.nblobs else 1, sizeof(Tensor))
        if self.outs == NULL:
            raise OutOfMemoryError("RecordIterator over queue %r" % self.qname)
        for i in range(self.nblobs):
            self.ptrs[i] = &self.outs[i]
        qstats_use(&self.st, self.q)
        self.pool = _BufPool.__new__(_BufPool)
        self.pool.init(<int>self.nblobs)
        obj_decref(self.old_h)
        self.old_h = NULL
        self._drop_blob()       # the queue is ours now; the blob is not needed
        self._set_fields()
        return 1

    cdef int _resolved_rq(self, ObjHeader* h) except -1:
        """The blob holds a rebatching queue: items are what
        DequeueRebatchingQueue(num_elements=num_records) returns (up to k
        records stacked along a new dim 0)."""
        self.rq = <RebatchQueue*>h.impl
        self.nblobs = self.rq.nblobs
        if self.nblobs > MAX_REC_BLOBS:
            raise ArgumentError("rebatching queue %r holds %d blobs per record, at most %d "
                                "can be iterated" % (self.qname, self.nblobs, MAX_REC_BLOBS))
        self.outs = <Tensor*>calloc(self.k * self.nblobs if self.nblobs else 1, sizeof(Tensor))
        if self.outs == NULL:
            raise OutOfMemoryError("RecordIterator over rebatching queue %r" % self.qname)
        obj_decref(self.old_h)
        self.old_h = NULL
        self._drop_blob()
        self._set_fields()
        return 1

    cdef object _next_rq(self, int64_t deadline):
        """Up to k records of the rebatching queue, stacked along a new dim 0."""
        cdef int64_t got = 0, r, n = self.nblobs, slice_end, now
        cdef bint drained = False, done
        cdef RunState* rs = self.rs
        while got < self.k:
            if fp_load_relaxed(&rs.cancelled):
                break
            now = fp_now_ns()
            if deadline >= 0 and now >= deadline:
                if got:
                    break           # hand over the records already taken
                raise _IterTimeoutError(
                    "RecordIterator: no record from rebatching queue %r within %.3g s (the "
                    "job keeps running)" % (self.qname, self.timeout_ns / 1e9))
            slice_end = now + IT_SLICE_NS
            if deadline >= 0 and deadline < slice_end:
                slice_end = deadline
            with nogil:
                r = rq_pop_until(self.rq, &self.outs[got * n], self.k - got, slice_end,
                                 &drained)
            got += r
            if got == self.k or drained:
                break
            if r:
                continue
            fp_lock(&rs.lock)
            done = rs.done
            fp_unlock(&rs.lock)
            if done:                # the run ended without closing it: take what is left
                with nogil:
                    got += rq_pop_until(self.rq, &self.outs[got * n], self.k - got, 0,
                                        &drained)
                break
            try:
                PyErr_CheckSignals()
            except BaseException as e:
                self._abort(e)
                raise
        fp_tags_clear()                 # rebatched records carry no tags to keep
        if got == 0 or fp_load_relaxed(&rs.cancelled):
            for r in range(got * n):
                tensor_clear(&self.outs[r])
            return self._end(deadline)
        return self._stack(got)

    cdef object _stack(self, int64_t got):
        cdef int64_t n = self.nblobs, j, kk, d, isz
        cdef Tensor* first
        cdef Tensor* r
        cdef Tensor out
        cdef _RecordBufs base = _RecordBufs.__new__(_RecordBufs)
        base.init(n, None)
        arrays = []
        try:
            for j in range(n):
                first = &self.outs[j]
                for kk in range(1, got):
                    r = &self.outs[kk * n + j]
                    bad = r.dtype != first.dtype or r.ndim != first.ndim
                    for d in range(r.ndim):
                        if not bad and r.shape[d] != first.shape[d]:
                            bad = True
                    if bad:
                        raise RunError("RecordIterator over rebatching queue %r: cannot stack "
                                       "records: column %d is %s in record %d but %s in "
                                       "record 0" % (self.qname, j, tensor_describe(r).decode(),
                                                     kk, tensor_describe(first).decode()))
                if first.ndim + 1 > MAX_DIMS:
                    raise RunError("RecordIterator over rebatching queue %r: column %d is %s; "
                                   "a batch of it would have more than 8 dims"
                                   % (self.qname, j, tensor_describe(first).decode()))
                if first.dtype == DT_STRING:
                    arrays.append(_np.stack([_snapshot_to_numpy(&self.outs[kk * n + j])
                                             for kk in range(got)]))
                    continue
                memset(&out, 0, sizeof(Tensor))
                out.shape[0] = got
                for d in range(first.ndim):
                    out.shape[d + 1] = first.shape[d]
                if tensor_reshape(&out, first.dtype, first.ndim + 1, out.shape) != 0:
                    raise OutOfMemoryError("RecordIterator over rebatching queue %r" % self.qname)
                isz = first.size * dtype_itemsize(first.dtype)
                for kk in range(got):
                    if isz:
                        memcpy(<char*>tdata(&out) + kk * isz, tdata(&self.outs[kk * n + j]), isz)
                arrays.append(_take_array(&out, base, j))
        except BaseException:
            self.phase = IT_END
            self._release()
            self.nrun._stop(True)
            raise
        finally:
            if self.outs != NULL:
                for kk in range(got * n):
                    tensor_clear(&self.outs[kk])
        if self.rec_type is None:
            return tuple(arrays)
        return self.rec_type(arrays)

    cdef _set_fields(self):
        cdef size_t i
        names = None
        if self.q != NULL and self.q.fields.size() == <size_t>self.nblobs and self.nblobs > 0:
            names = tuple(self.q.fields[i].decode("utf-8", "replace")
                          for i in range(self.q.fields.size()))
        elif self._fields is not None and len(self._fields) == self.nblobs:
            names = self._fields
        self._fields = names
        self.rec_type = record_type(names) if names else None

    # -- reading

    cdef inline object _item(self, Tensor* ts):
        """The item for one record in ts[0..nblobs): a tuple (subclass) of
        arrays taking over the tensors' buffers."""
        cdef int64_t j, n = self.nblobs
        cdef _RecordBufs base = _RecordBufs.__new__(_RecordBufs)
        cdef object tup
        cdef object arr
        cdef PyObject* p
        base.init(n, self.pool)
        if self.rec_type is None:
            tup = PyTuple_New(n)
        else:
            p = (<_PyTypeObj*>self.rec_type).tp_alloc(<_PyTypeObj*>self.rec_type, n)
            if p == NULL:
                raise OutOfMemoryError("RecordIterator: out of memory")
            tup = <object>p
            Py_DECREF(tup)      # <object>p took a new reference; tp_alloc's is the one we keep
        for j in range(n):
            arr = _take_array(&ts[j], base, j)
            Py_INCREF(arr)
            PyTuple_SET_ITEM(tup, j, arr)
        return tup

    cdef inline void _prime(self, Tensor* ts) noexcept:
        """Give the empty tensors of ts recycled buffers: the read swaps them
        into the slot, whence the producer's next record reuses them."""
        cdef int j
        if is_closed(self.q):
            return      # the last records: buffers left in a drained queue's slots would stay
        for j in range(self.nblobs):
            if ts[j].buf == NULL:
                self.pool.refill(&ts[j], j)

    cdef inline void _after_read(self) noexcept nogil:
        """Bookkeeping after a fast-path read.  Writers parked on the full
        queue are woken by the read that makes room in it, again once it has
        drained to 3/4 of its capacity, and at least every 32 reads -- not
        after every read: each wake is a futex
        syscall on this (the Python) thread, ~1-2 us, while the queue still
        holds a quarter of its capacity of records to read meanwhile.  A
        parked writer is always woken eventually: as long as this iterator
        reads, the fill drops to the mark."""
        cdef Queue* q = self.q
        cdef int64_t fill
        self.st.reads += 1
        self.st.records += 1
        qstats_tick(&self.st)
        if fp_load_seq(&q.wait_writers) > 0:
            fill = (fp_load_seq(&q.tail) & POS_MASK) - fp_load_seq(&q.head)
            if fill >= q.capacity - 1 or fill <= self.wake_mark or (self.st.reads & 31) == 0:
                wake(q, &q.wait_writers, &q.not_full)

    cdef int _read_one(self, Tensor** ptrs, int64_t deadline) except -1:
        """Blocking read of one record into ptrs.  1: read; 0: nothing more
        (queue closed and drained, run finished with the queue empty, or the
        run failed).  Raises IterTimeoutError past deadline (>= 0), or what a
        signal handler raised (the run then is stopped and joined)."""
        cdef Queue* q = self.q
        cdef RunState* rs = self.rs
        cdef int r
        cdef bint done
        cdef int64_t slice_ns, now
        while True:
            if fp_load_relaxed(&rs.cancelled):
                return 0
            slice_ns = IT_SLICE_NS
            if deadline >= 0:
                now = fp_now_ns()
                if now >= deadline:
                    raise _IterTimeoutError(
                        "RecordIterator: no record from queue %r within %.3g s (the job keeps "
                        "running)" % (self.qname, self.timeout_ns / 1e9))
                if deadline - now < slice_ns:
                    slice_ns = deadline - now
                if slice_ns < 1:
                    slice_ns = 1
            with nogil:
                r = queue_read(q, ptrs, slice_ns, &self.st)
            if r == Q_OK:
                return 1
            if r == Q_CLOSED:
                return 0
            # a slice ended: has the run finished (then nothing more comes)?
            fp_lock(&rs.lock)
            done = rs.done
            fp_unlock(&rs.lock)
            if done:
                if try_read(q, ptrs, &self.st) == Q_OK:
                    self._after_read()
                    return 1
                return 0
            try:
                PyErr_CheckSignals()
            except BaseException as e:
                self._abort(e)
                raise

    def __next__(self):
        cdef int64_t deadline = -1
        if self.busy:
            raise ArgumentError("RecordIterator over queue %r: next() is already waiting in "
                                "another thread (drive one iterator from one thread)"
                                % self.qname)
        # `busy` keeps other threads' next() and close() off the iterator's
        # tensors while this one uses them: the slow path releases the GIL,
        # and building an item allocates (a GC pass may run other threads)
        self.busy = True
        try:
            if self.phase == IT_READ:
                # fast path: a record is waiting, the run is healthy
                if self.k == 1 and self.q != NULL and not fp_load_relaxed(&self.rs.cancelled):
                    self._prime(self.outs)
                    if try_read(self.q, self.ptrs, &self.st) == Q_OK:
                        self._after_read()
                        if self.trk != NULL:
                            self._absorb()
                        return self._item(self.outs)
            return self._next_slow()
        finally:
            self.busy = False

    cdef object _next_slow(self):
        cdef int64_t deadline = -1
        if self.phase == IT_READ:
            pass
        elif self.phase == IT_RESOLVE:
            if not self._resolve():
                self.phase = IT_END
                self._release()
                self.nrun.wait()        # the run's error, if it failed
                raise BlobError("queue blob %r holds no queue: the job finished without "
                                "creating it (is it a queue of this job?)" % self.qname)
            self.phase = IT_READ
        elif self.phase == IT_END:
            raise StopIteration
        elif self.phase != IT_DRAIN:
            raise ArgumentError("RecordIterator was never started")
        if self.timeout_ns >= 0:
            deadline = fp_now_ns() + self.timeout_ns
        if self.phase == IT_DRAIN:
            return self._end(deadline)
        if self.rq != NULL:
            return self._next_rq(deadline)
        if self.k == 1:
            self._prime(self.outs)
            if not self._read_one(self.ptrs, deadline):
                return self._end(deadline)
            if self.trk != NULL:
                self._absorb()
            return self._item(self.outs)
        return self._next_batch(deadline)

    cdef object _next_batch(self, int64_t deadline):
        """Up to k records concatenated along dim 0 (SafeDequeueBlobs)."""
        cdef int64_t got = 0, j, n = self.nblobs
        cdef Tensor* ptrs[MAX_REC_BLOBS]
        while got < self.k:
            for j in range(n):
                ptrs[j] = &self.outs[got * n + j]
            self._prime(&self.outs[got * n])
            if got == 0 or not fp_load_relaxed(&self.rs.cancelled):
                if try_read(self.q, ptrs, &self.st) == Q_OK:
                    self._after_read()
                    got += 1
                    continue
            try:
                more = self._read_one(ptrs, deadline)
            except _IterTimeoutError:
                if got == 0:
                    raise
                break       # hand over the records already taken (never drop them)
            if not more:
                break
            got += 1
        if got == 0 or fp_load_relaxed(&self.rs.cancelled):
            fp_tags_clear()                 # not handed over: not delivered
            return self._end(deadline)
        if self.trk != NULL:
            self._absorb()                  # the k records' tags, as one item
        return self._concat(got)

    cdef object _concat(self, int64_t got):
        cdef int64_t n = self.nblobs, j, kk, d, rows, isz, off
        cdef Tensor* first
        cdef Tensor* r
        cdef Tensor out
        cdef _RecordBufs base = _RecordBufs.__new__(_RecordBufs)
        cdef object tup
        cdef PyObject* p
        base.init(n, self.pool)
        arrays = []
        try:
            for j in range(n):
                first = &self.outs[j]
                if first.ndim < 1:
                    raise RunError("RecordIterator over queue %r: record 0 has a 0-d tensor at "
                                   "column %d; num_records > 1 needs at least 1 dim"
                                   % (self.qname, j))
                rows = 0
                for kk in range(got):
                    r = &self.outs[kk * n + j]
                    bad = r.dtype != first.dtype or r.ndim != first.ndim
                    for d in range(1, r.ndim):
                        if not bad and r.shape[d] != first.shape[d]:
                            bad = True
                    if bad:
                        raise RunError("RecordIterator over queue %r: cannot batch records: "
                                       "column %d is %s in record %d but %s in record 0"
                                       % (self.qname, j, tensor_describe(r).decode(), kk,
                                          tensor_describe(first).decode()))
                    rows += r.shape[0]
                if first.dtype == DT_STRING:
                    arrays.append(_np.concatenate(
                        [_snapshot_to_numpy(&self.outs[kk * n + j]) for kk in range(got)]))
                    continue
                memset(&out, 0, sizeof(Tensor))
                out.shape[0] = rows
                for d in range(1, first.ndim):
                    out.shape[d] = first.shape[d]
                if tensor_reshape(&out, first.dtype, first.ndim, out.shape) != 0:
                    raise OutOfMemoryError("RecordIterator over queue %r: batching %d records"
                                           % (self.qname, got))
                isz = dtype_itemsize(first.dtype)
                off = 0
                for kk in range(got):
                    r = &self.outs[kk * n + j]
                    if r.size:
                        memcpy(<char*>tdata(&out) + off * isz, tdata(r), r.size * isz)
                    off += r.size
                arrays.append(_take_array(&out, base, j))
        except BaseException:
            self.phase = IT_END
            self._release()
            self.nrun._stop(True)
            raise
        finally:
            if self.outs != NULL:
                # the records' buffers are ours alone: recycle them
                for kk in range(got * n):
                    r = &self.outs[kk]
                    if r.buf != NULL and not r.buf.is_str and r.buf.maplen == 0 \
                            and buf_private(r.buf) and self.pool is not None:
                        self.pool.put(<int>(kk % n), r.buf, r.dtype)
                        memset(r, 0, sizeof(Tensor))
                    else:
                        tensor_clear(r)
        if self.rec_type is None:
            return tuple(arrays)
        p = (<_PyTypeObj*>self.rec_type).tp_alloc(<_PyTypeObj*>self.rec_type, n)
        if p == NULL:
            raise OutOfMemoryError("RecordIterator: out of memory")
        tup = <object>p
        Py_DECREF(tup)
        for j in range(n):
            arr = arrays[j]
            Py_INCREF(arr)
            PyTuple_SET_ITEM(tup, j, arr)
        return tup


def _make_iterator(Workspace ws not None, name, num_records, timeout, fields):
    """A RecordIterator over the queue blob `name` of ws (LocalSession.iterate;
    call before starting the job): pre-creates the blob and remembers what
    it holds now, so a queue left by an earlier run is not taken for this
    run's."""
    cdef RecordIterator it = RecordIterator.__new__(RecordIterator)
    cdef string s = _bname(name)
    if isinstance(num_records, bool) or not isinstance(num_records, (int, _np.integer)):
        raise ArgumentError("iterate: num_records must be an int, got %r" % (num_records,))
    if num_records < 1:
        raise ArgumentError("iterate: num_records=%d must be >= 1" % num_records)
    if timeout is None:
        it.timeout_ns = -1
    else:
        try:
            t = float(timeout)
        except (TypeError, ValueError):
            raise ArgumentError("iterate: timeout=%r is not a number of seconds" % (timeout,))
        if not (t >= 0):
            raise ArgumentError("iterate: timeout=%r must be >= 0 seconds" % (timeout,))
        it.timeout_ns = <int64_t>(min(t, 1e9) * 1e9)
    it.k = num_records
    it.qname = str(name)
    it._fields = tuple(fields) if fields is not None else None
    with nogil:
        it.blob = ws_create(ws.ws, s)
    it.nws = ws
    # the raw Blob* must not be freed under us (Workspace.reset/remove_blob
    # refuse while `active`): count the iterator as a user until it lets go
    ws.active += 1
    it.old_h = blob_get_obj(it.blob)
    return it


def _track_disarm():
    """Forget a tracking handed to the next run of this thread and not taken
    (LocalSession.iterate, after the start)."""
    fp_track_set_next(NULL)
