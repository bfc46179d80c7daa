"""Sessions run Nets, ExecutionSteps, Plans, Tasks and TaskGroups
(Caffe2's ``caffe2.python.session``).

A session compiles a runnable once and runs the compiled form as often as
asked.  As in Caffe2 the compiled form is cached per runnable object and
session class, so edits made after the first compile are not seen, and
``Session.compile`` returns the same object for the same runnable.  The
cache lives on the runnable itself (attribute ``_fastpipe_compiled``), not
in a process-wide table: dropping a job drops its compiled form, and a
compiled form never refers to a session or a workspace, so a process that
builds a job per request stays flat in memory.  A runnable that cannot
carry an attribute (a plain list of nets) is compiled anew by every call.

:class:`LocalSession` is the embedded default: every node collapses onto
one, the group becomes a single plan (``fastpipe._lower``), and the plan
runs on the session's workspace on native threads.  ``run`` waits for the
job; ``start`` returns a :class:`RunHandle` at once; ``iterate`` starts the
job and returns a :class:`RecordIterator` over one of its queues, so a
Python training loop consumes records while the job runs.
"""

import threading
import weakref
from typing import Any, Optional, Tuple

from . import _core
from . import _lower
from . import proto as _proto
from .errors import ArgumentError, CancelledError, FastpipeError, GraphError, NotSupportedError

__all__ = ["CompiledRunnable", "Session", "LocalSession", "SessionGoneError",
           "RunHandle", "RecordIterator"]

#: The iterator ``LocalSession.iterate`` returns (native; see its docstring).
RecordIterator = _core.RecordIterator


class SessionGoneError(FastpipeError, ReferenceError):
    """A TaskOutput was fetched after the session that ran it and the
    session's workspace were dropped: the value is gone with them."""


class CompiledRunnable(object):
    """What ``Session.compile`` returns: the compiled object and the session
    class it was compiled for.  Pass it back to ``Session.run``.

    For :class:`LocalSession`, ``obj`` is a :class:`fastpipe._lower.CompiledJob`.
    """

    def __init__(self, obj, session_class):
        self.obj = obj
        self.session_class = session_class

    def __repr__(self):
        return "CompiledRunnable(obj=%r, session_class=%s)" % (
            self.obj, self.session_class.__name__)


# The compile cache: runnable._fastpipe_compiled = _CompileCache({session
# class: CompiledRunnable}).
_CACHE_ATTR = "_fastpipe_compiled"
# Held while compiling (and while reading or writing any runnable's cache):
# compiling a group mutates it (marks its setup objects used, memoises its
# grouping), so one group is never compiled by two threads at once.
_compile_lock = threading.RLock()


class _CompileCache(dict):
    """A runnable's compiled forms.  A pickled or deep-copied runnable gets
    an empty cache: the copy is another runnable (compiled on its own), and
    a compiled form (native program, locks) cannot be pickled."""

    __slots__ = ()

    def __reduce__(self):
        return (_CompileCache, ())


def _cached(runnable, session_class):
    cache = getattr(runnable, "__dict__", {}).get(_CACHE_ATTR)
    return None if cache is None else cache.get(session_class)


def _store(runnable, session_class, compiled):
    """Cache ``compiled`` on ``runnable`` (caller holds _compile_lock)."""
    attrs = getattr(runnable, "__dict__", None)
    if attrs is not None:       # else e.g. a list of nets: nowhere to keep it
        attrs.setdefault(_CACHE_ATTR, _CompileCache())[session_class] = compiled
    return compiled


class Session(object):
    """Runs TaskGroups (and anything that can be wrapped in one).

    A Net, ExecutionStep, Plan or Task is wrapped in a new TaskGroup, GLOBAL
    unless ``workspace_type`` says otherwise.  Tasks on one node share the
    node's workspace; PRIVATE tasks run in a child workspace created for
    each run.

    Threading: ``compile`` may be called from any thread (compiles are
    serialised by one lock); one session object should be driven by one
    thread at a time.

    Example::

        with LocalSession() as session:
            session.run(task_group)
    """

    def __init__(self):
        self._open = True

    def is_open(self):
        return self._open

    @classmethod
    def compile(cls, runnable, workspace_type=None, setup_net_list=None):
        """Compile ``runnable`` for this session class.

        Cached on the runnable object: the same runnable gives the same
        CompiledRunnable, and later edits to it are not seen.

        Raises:
            GraphError: ``runnable`` is a CompiledRunnable of another
                session class, or an empty Plan, or a TaskGroup of another
                workspace type.
        """
        if isinstance(runnable, CompiledRunnable):
            if runnable.session_class is not cls:
                raise GraphError(
                    "Runnable was compiled for a different session type. "
                    "Need: %s, got: %s" % (cls.__name__,
                                           runnable.session_class.__name__))
            return runnable
        with _compile_lock:
            compiled = _cached(runnable, cls)
            if compiled is not None:
                return compiled
            tg = _lower.as_task_group(runnable, workspace_type)
            with _proto.gc_paused():
                compiled = CompiledRunnable(cls._compile_task_group(tg, setup_net_list),
                                            session_class=cls)
            return _store(runnable, cls, compiled)

    def run(self, runnable, workspace_type=None, setup_net_list=None):
        """Compile (once) and run ``runnable``; returns when it finished.

        Args:
            runnable: a TaskGroup, Task, Plan, ExecutionStep, Net or a
                CompiledRunnable.
            workspace_type: a WorkspaceType for non-TaskGroup runnables.
            setup_net_list: unused by LocalSession.
        """
        if not self.is_open():
            raise GraphError("Session is closed.")
        if runnable is None:
            raise GraphError("Got a none runnable.")
        self._run_compiled(self.compile(runnable, workspace_type, setup_net_list).obj)

    def close(self):
        if self.is_open():
            self._do_close()
            self._open = False

    def fetch_output(self, output):
        raise NotSupportedError()

    def _run_compiled(self, task_group):
        raise NotSupportedError()

    @classmethod
    def _compile_task_group(cls, task_group, setup_net_list=None):
        return task_group

    def _do_close(self):
        pass

    def __enter__(self):
        if not self._open:
            raise GraphError("Session already closed.")
        return self

    def __exit__(self, ex_type, value, traceback):
        if ex_type is None:
            self.close()


class LocalSession(Session):
    """Runs everything in one process on one workspace, with native threads.

    Tasks of all nodes are remapped to the active node and run
    concurrently.  Outputs are pre-created in the session workspace, so
    values written from child workspaces (PRIVATE tasks, runtime instances)
    survive the run and can be fetched.

    Args:
        ws: the workspace to run on; default: the current module-level
            workspace (``workspace.C.Workspace.current``).
        stall_timeout: seconds; when no record moves in any queue of a run
            for that long, the stall watchdog logs who waits on what
            (logger ``fastpipe``) and ``diagnose()`` returns that report.
            None (default): no watchdog.  A loop over ``iterate()`` that
            does not call ``next()`` while its queue is full is not a stall.
        on_stall: ``"log"`` (default) or ``"raise"``: also cancel the run,
            so that ``wait()`` / ``next()`` raise ``StallError`` carrying
            the report (``.report``).
        profile: time every op of every run (``RunHandle.profile()``).
    """

    def __init__(self, ws=None, stall_timeout=None, on_stall="log", profile=False):
        Session.__init__(self)
        if ws is None:
            from . import workspace
            ws = workspace.C.Workspace.current
        self._ws = ws
        if stall_timeout is not None and (isinstance(stall_timeout, bool) or
                                          not isinstance(stall_timeout, (int, float))
                                          or not stall_timeout > 0):
            raise ArgumentError("LocalSession: stall_timeout=%r must be a number of seconds "
                                "> 0, or None" % (stall_timeout,))
        if on_stall not in ("log", "raise"):
            raise ArgumentError("LocalSession: on_stall=%r must be 'log' or 'raise'"
                                % (on_stall,))
        self._stall_timeout = stall_timeout
        self._on_stall = on_stall
        self._profile = bool(profile)

    @classmethod
    def _compile_task_group(cls, task_group, setup_net_list=None):
        # the native program is lowered from the plan once, at the first run,
        # and reused by every later run (every epoch of a JobRunner)
        return _lower.lower_task_group(task_group)

    def _run_compiled(self, compiled):
        self._start_compiled(compiled).wait()

    def _start_compiled(self, compiled, progress=False, profile=None, iterated=None):
        from . import observe
        options = {"profile": self._profile if profile is None else bool(profile)}
        box = []        # a weak reference to the native Run, for the watchdog (no cycle)
        if self._stall_timeout is not None:
            options["stall_timeout"] = float(self._stall_timeout)
            options["stall_callback"] = observe.make_stall_handler(
                lambda: box[0]() if box else None, iterated, self._on_stall)
        native = compiled.start(self._ws, _WorkspaceFetch(self._ws), **options)
        box.append(weakref.ref(native))
        handle = RunHandle(native, compiled.output_list, iterated)
        if progress:
            handle._progress = observe.progress(
                handle, force=progress == "force" or not isinstance(progress, (bool, str)),
                stream=progress if not isinstance(progress, (bool, str)) else None).start()
        return handle

    def _check_runnable(self, runnable):
        if not self.is_open():
            raise GraphError("Session is closed.")
        if runnable is None:
            raise GraphError("Got a none runnable.")

    def start(self, runnable, workspace_type=None, progress=False,
              profile=None) -> "RunHandle":
        """Compile (once) and start ``runnable`` on native threads; returns
        its :class:`RunHandle` at once.  ``run(r)`` is ``start(r).wait()``.

        ``progress=True`` shows a one-line progress display on stderr when it
        is a terminal (``"force"``, or a stream, to write it anyway); it
        ends with the run.  ``profile`` overrides the session's.

        Example::

            with LocalSession(ws) as s:
                with s.start(tg) as run:     # exit: cancel if unfinished, join
                    ...                      # the job runs meanwhile
                    run.wait()
        """
        self._check_runnable(runnable)
        return self._start_compiled(self.compile(runnable, workspace_type).obj,
                                    progress, profile)

    def iterate(self, runnable, queue, num_records: int = 1,
                timeout: Optional[float] = None, progress=False,
                profile=None, state: Optional[dict] = None) -> "RecordIterator":
        """Start ``runnable`` and iterate the records it writes into ``queue``
        while it runs.

        Args:
            runnable: a TaskGroup (or anything ``run`` takes).
            queue: a ``queue_util.Queue`` (what ``pipeline.pipe`` returns), a
                ``QueueWrapper``, or a blob queue's ``BlobReference`` / name.
                The job creates it (its init nets) or uses it.  A rebatching
                queue's blob (``CreateRebatchingQueue``) works too: each item
                is then what ``DequeueRebatchingQueue(num_elements=
                num_records)`` returns (up to ``num_records`` records
                stacked along a new dim 0).
            num_records: records per item, concatenated along dim 0 as
                SafeDequeueBlobs does (the last item may hold fewer).
            timeout: seconds one ``next()`` may wait; then it raises
                ``IterTimeoutError`` and the job keeps running.
            progress, profile: as for :meth:`start`.
            state: what ``it.state()`` of an earlier iterator over the same
                job returned (a dict; it survives ``json`` and a new
                process): the run skips every record that iterator had
                delivered, so across the runs each record is delivered
                exactly once (see "Resuming a run" in docs/guide.md).

        Returns:
            A :class:`RecordIterator`: yields every record until the job has
            finished and the queue is drained; items are tuples of numpy
            arrays in the queue's field order (fields also by name, e.g.
            ``rec.x`` or ``rec["x"]``, when the queue has field names).  A
            failure in the job raises its ``RunError`` from ``next()``.
            ``break`` + ``close()``, leaving a ``with`` block, an exception
            or Ctrl-C in the loop and dropping the iterator all cancel the
            job and join its threads.

        Threading: the job runs on native threads with the GIL released;
        ``next()`` holds the GIL only to take a waiting record and wrap it
        (no copy).  Drive one iterator from one thread.

        Exact resume: ``it.state()`` (at any point: before the first record,
        mid-stream, after the end) is a small JSON-serialisable dict of the
        source positions the items handed out so far came from (every
        record carries its source range natively through queues and
        stages).  ``iterate(runnable, queue, state=saved)`` -- in this or a
        new process, with other instance counts, queue capacities or
        downstream batch sizes -- re-reads only the rest: records that were
        in queues or inside a stage when ``state()`` was taken come again,
        delivered ones do not.  Resumable sources: Dataset readers
        (``reader()``, ``epoch_reader()``, ``random_reader()`` over a seeded
        ``SortAndShuffle``), ``sources.ArrayReader``/``NpyReader``,
        ``text_file_reader.TextFileReader``; a shuffle needs its seed.  ``state()`` raises ``NotSupportedError`` naming the
        source or stage for what cannot be resumed exactly: an unseeded
        shuffle, an ``IterableReader``, ``ReadRandomBatch(loop_over=True)``,
        a Python op, a counter or other reader fastpipe does not know, a
        stage that splits one item into several (a rebatching queue);
        ``iterate(..., state=...)`` raises at once for what it can see
        before the start.

        Example::

            with LocalSession(ws) as s:
                for ids, y in s.iterate(tg, q):
                    train_step(ids, y)
        """
        self._check_runnable(runnable)
        name, fields = _queue_blob(queue)
        compiled = self.compile(runnable).obj
        # before the start: pre-create the queue's blob in the session
        # workspace (the job's CreateBlobsQueue lands there) and remember what
        # it holds now (a queue of an earlier run is not this run's)
        it = _core._make_iterator(self._ws._native, name, num_records, timeout, fields)
        _resume_setup(it, compiled, state)
        try:
            handle = self._start_compiled(compiled, progress, profile, iterated=name)
        finally:
            _core._track_disarm()       # a start that failed leaves nothing armed
        it._attach(handle._run, handle)
        return it

    def _fetch_output(self, output):
        return self._ws.blobs[str(output)].fetch()



def _queue_blob(queue) -> Tuple[str, Optional[Tuple[str, ...]]]:
    """(blob name, field names or None) of what ``iterate`` was given."""
    from . import core, queue_util
    if isinstance(queue, queue_util.QueueWrapper):
        schema = getattr(queue, "_schema", None)
        fields = tuple(schema.field_names()) if schema is not None else None
        return str(queue.queue()), fields
    if isinstance(queue, (core.BlobReference, str)):
        return str(queue), None
    raise ArgumentError("iterate: queue must be a queue_util.Queue, a QueueWrapper, or a "
                        "queue blob's BlobReference or name; got %s"
                        % type(queue).__name__)


class JoinOnExit(object):
    """A run handle as a context manager: exit cancels an unfinished job and
    joins it (its CancelledError suppressed; another error is raised unless
    the block is already leaving with one).  Needs done/cancel/wait."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.done():
            self.cancel()
        try:
            self.wait()
        except CancelledError:
            pass
        except Exception:
            if exc_type is None:
                raise
        return False


class RunHandle(JoinOnExit):
    """A job started by ``LocalSession.start`` (or the one a RecordIterator
    reads from).  It runs on native threads; this handle only waits for it
    or stops it.

    ``wait(timeout=None)`` returns True once the job has finished (every
    thread joined; TaskOutputs are fetchable) and raises the job's error
    (``RunError``; ``CancelledError`` after ``cancel()``) -- the same error
    on every later call; False when ``timeout`` seconds passed first.
    Ctrl-C while waiting cancels the job, joins it and raises
    KeyboardInterrupt.  ``cancel()`` stops the job like a failure and does
    not wait.  As a context manager, exit cancels an unfinished job and
    joins it (CancelledError suppressed).  A finished handle keeps no
    workspace or data alive.

    Threading: every method may be called from any thread.

    Example::

        run = session.start(tg)
        ...
        run.wait()
    """

    __slots__ = ("_run", "_outputs", "_obs", "_progress", "__weakref__")

    def __init__(self, native_run, outputs=None, iterated=None):
        from .observe import Observer
        self._run = native_run
        self._outputs = outputs
        self._obs = Observer(native_run, iterated)
        self._progress = None

    @property
    def outputs(self) -> Any:
        """The job's ``TaskOutputList`` (fetch them after ``wait()``)."""
        return self._outputs

    def wait(self, timeout: Optional[float] = None) -> bool:
        try:
            done = self._run.wait(timeout)
        except BaseException:
            self._stop_progress()
            raise
        if done:
            self._stop_progress()
        return done

    def stats(self) -> dict:
        """Live stats of the job, per stage and per queue, as plain
        JSON-serialisable data (see :mod:`fastpipe.observe`); read without
        stopping the job.  Exact once it has finished."""
        return self._obs.stats()

    def diagnose(self):
        """The stage that limits the job (a :class:`fastpipe.observe.Verdict`
        whose ``str()`` is one line), or, after the stall watchdog fired,
        the :class:`~fastpipe.observe.StallReport` of who waits on what."""
        return self._obs.diagnose()

    def profile(self):
        """Time per op type per net (``profile=True`` runs; else None):
        a list of ``{net, op_type, calls, total_s, mean_us}``, largest first."""
        return self._obs.stats()["profile"]

    def _stop_progress(self):
        p = self._progress
        if p is not None:
            self._progress = None
            p.stop()

    def cancel(self) -> None:
        self._run.cancel()

    def done(self) -> bool:
        return self._run.done()

    def __repr__(self):
        return "<RunHandle %s>" % ("done" if self._run.done() else "running")


class _WorkspaceFetch(object):
    """The fetch function a LocalSession run gives its TaskOutputs.

    It reads the output blob from the session's workspace through a weak
    reference, so a TaskOutput (kept by its task, hence by every cached
    compiled form) never keeps the session, the workspace or their data
    alive.  Fetching works while the workspace is alive (the session may
    be gone: the values live in the workspace); after both are gone it
    raises SessionGoneError."""

    __slots__ = ("_ws_ref",)

    def __init__(self, ws):
        self._ws_ref = weakref.ref(ws)

    def __call__(self, output):
        ws = self._ws_ref()
        if ws is None:
            raise SessionGoneError(
                "cannot fetch task output %r: the LocalSession that ran it and "
                "its workspace are gone (fetch outputs before dropping them)"
                % str(output))
        return ws.blobs[str(output)].fetch()


# ---- exact resume of iterate (provenance tags: fastpipe/_core/runtime.pxi) --------

#: reader ops whose input 0 (cursor / reader) is a resumable source, by op type
_RESUMABLE_READS = ("ReadNextBatch", "ReadRandomBatch", "ReadArrayBatch", "ReadSegmentBatch",
                    "TextFileReaderRead")
_STATE_VERSION = 1


def _op_arg(op, name, default=None):
    for a in op.arg:
        if a.name == name:
            return a
    return default


def _op_label(op):
    return "%s %r" % (op.type, op.name) if op.name else op.type


def _python_fn(op):
    """The function of a ``Python`` op (None when its token is gone)."""
    from . import _pyop
    tok = _op_arg(op, "token")
    if tok is None:
        return None
    try:
        return _pyop.lookup(tok.s)[0]
    except Exception:
        return None


def _resume_sources(compiled):
    """The job's sources in plan order (the same in every process for the
    same job, whatever the instance counts): [(keys, meta, array_state)],
    and the reasons exact resume is refused."""
    plan = compiled.plan.Proto()
    ops = [op for net in plan.network for op in net.op]
    producer = {}
    for op in ops:
        for o in op.output:
            producer.setdefault(o, op)
    sources, index, refusals = [], {}, []
    for op in ops:
        if op.type == "Python":
            fn = _python_fn(op)
            name = getattr(fn, "_fastpipe_iterable", None)
            if name is not None:
                refusals.append(
                    "cannot resume: IterableReader %r reads a Python iterable, which fastpipe "
                    "cannot seek (use sources.ArrayReader / NpyReader, a Dataset or a "
                    "TextFileReader for an exact resume)" % name)
            continue
        if op.type not in _RESUMABLE_READS or not op.input:
            continue
        key = op.input[0]
        if key in index:
            continue            # another read op (instance, pipe) of the same source
        where = "%s (source %d, cursor %r)" % (_op_label(op), len(sources), key)
        meta = {"kind": op.type}
        array_state = None
        permuted = op.type == "ReadRandomBatch" or (
            op.type in ("ReadArrayBatch", "ReadSegmentBatch") and _op_arg(op, "permuted") is not None
            and _op_arg(op, "permuted").i)
        if op.type == "ReadRandomBatch":
            lo = _op_arg(op, "loop_over")
            if lo is not None and lo.i:
                refusals.append("cannot resume: %s reads with loop_over=True (its positions "
                                "wrap around: no exact resume)" % where)
        if permuted and len(op.input) > 1:
            p = producer.get(op.input[1])
            if p is not None and p.type == "SortAndShuffle":
                seed = _op_arg(p, "seed")
                if seed is None:
                    refusals.append("cannot resume: %s reads through %s without a seed (a new "
                                    "run shuffles differently; give SortAndShuffle a seed)"
                                    % (where, _op_label(p)))
                else:
                    meta["seed"] = int(seed.i)
            elif p is not None and p.type == "EpochPermutation":
                kp = producer.get(p.input[0]) if p.input else None
                ref = getattr(_python_fn(kp), "_fastpipe_array_state", None) \
                    if kp is not None and kp.type == "Python" else None
                array_state = ref() if ref is not None else None
                if array_state is None:
                    refusals.append("cannot resume: %s reads through a permutation whose "
                                    "epoch key fastpipe does not know" % where)
                elif not array_state.seeded:
                    refusals.append("cannot resume: %s shuffles without a seed (a new process "
                                    "draws another permutation; give the reader seed=...)"
                                    % where)
                else:
                    meta["seed"] = int(array_state.seed)
            elif p is not None:
                refusals.append("cannot resume: %s reads in the order of %r, made by %s, which "
                                "fastpipe cannot reproduce" % (where, op.input[1], _op_label(p)))
            elif p is None and _core._unseeded_order(op.input[1]):
                refusals.append("cannot resume: %s reads in the order of %r, made by a "
                                "SortAndShuffle without a seed (a new run shuffles "
                                "differently; give SortAndShuffle a seed)" % (where, op.input[1]))
        index[key] = len(sources)
        sources.append(([key], meta, array_state))
    return sources, refusals


def _resume_setup(it, compiled, state):
    """Arm provenance tracking for the run about to start: the iterator's
    sources, the positions to skip (``state``), the shuffled readers' epochs
    pinned to the resumed run's."""
    sources, refusals = _resume_sources(compiled)
    if state is not None:
        if refusals:
            raise NotSupportedError(refusals[0])
        saved = _check_state(state, sources)
    else:
        saved = [None] * len(sources)
    keys, skip, meta = [], [], []
    for (ks, m, array_state), sv in zip(sources, saved):
        m = dict(m)
        if array_state is not None:
            epoch = sv["epoch"] if sv is not None else array_state.epoch
            array_state.pin(epoch)
            m["epoch"] = int(epoch)
        keys.append(ks)
        meta.append(m)
        skip.append(None if sv is None else (sv["low"], sv["ranges"]))
    it._track(keys, skip, meta, refusals)


def _check_state(state, sources):
    """The saved sources of ``state`` (validated against this job's)."""
    def bad(why):
        return ArgumentError("iterate: state does not fit this job: %s" % why)
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION \
            or not isinstance(state.get("sources"), list):
        raise bad("expected a dict from RecordIterator.state() (version %d), got %r"
                  % (_STATE_VERSION, state if not isinstance(state, dict) else
                     {k: state[k] for k in list(state)[:3]}))
    saved = state["sources"]
    if len(saved) != len(sources):
        raise bad("it has %d sources, the job has %d" % (len(saved), len(sources)))
    out = []
    for i, (sv, (_, meta, _)) in enumerate(zip(saved, sources)):
        if not isinstance(sv, dict) or sv.get("kind") != meta["kind"]:
            raise bad("source %d is a %s here but %r in the state"
                      % (i, meta["kind"], sv.get("kind") if isinstance(sv, dict) else sv))
        if sv.get("seed") != meta.get("seed"):
            raise bad("source %d (%s) is seeded with %r here but %r in the state"
                      % (i, meta["kind"], meta.get("seed"), sv.get("seed")))
        try:
            low = int(sv["low"])
            ranges = [(int(a), int(b)) for a, b in sv["ranges"]]
            epoch = int(sv.get("epoch", 0))
        except (KeyError, TypeError, ValueError):
            raise bad("source %d: 'low' and 'ranges' must be ints and [start, end] pairs" % i)
        if low < 0 or any(a < 0 or b < a for a, b in ranges):
            raise bad("source %d: negative or reversed ranges" % i)
        out.append({"low": low, "ranges": ranges, "epoch": epoch})
    return out

