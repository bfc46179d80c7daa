"""``RaySession``: a Session that runs each Node of a job in its own Ray actor.

How a job maps onto a Ray cluster (see ``docs/distributed.md``):

* ``compile`` splits the TaskGroup by node (``_split.split_task_group``):
  one plan per node, plus the **cross-node queues** (written on one node,
  read on another), found from the ops' inputs and the queues' creating
  ops.
* Each node name gets one ``NodeHost`` actor (``_node.py``) for the life of
  the session: a native workspace that persists across runs (so
  ``checkpoint.Job`` init/epoch/exit groups see the state they left, as on
  a LocalSession's workspace), running the node's plan on native threads.
* A cross-node queue becomes a local queue on each side plus bridge steps
  that move its records in batches through Ray's object store, with at most
  ``max_in_flight`` batches in flight.
* The driver supervises the run from one thread: it waits on every node's
  run with timeouts, pings the actors every ``health_interval_s`` and treats
  an actor that died or stopped answering for ``node_timeout_s`` as lost.
  The first failure cancels the job on every node; a node that does not
  stop within ``node_timeout_s`` is killed.  After a failure every actor of
  the session is killed (their workspaces are gone), and the next run starts
  fresh ones.  ``close()`` kills them all.
"""

import itertools
import threading
import time
import uuid
from collections import OrderedDict, deque
from typing import Optional

from .. import core
from .. import session as _session
from ..errors import ArgumentError, CancelledError, GraphError, IterTimeoutError, RunError
from . import _node
from ._split import split_task_group

import ray

__all__ = ["RaySession", "RayRunHandle", "RayRecordIterator", "NodeFailedError",
           "NodeLostError", "RayCompiledJob"]

_SLICE_S = 0.05
_JOBS_KEPT_PER_NODE = 8


class NodeFailedError(RunError):
    """A node of a RaySession job failed.  ``node``, ``task`` and ``cause``
    (the original exception's type name and message) name it; the original
    exception is ``__cause__`` when it could be carried to the driver."""

    def __init__(self, message="", node=None, task=None, cause=None, net=None, step=None):
        super().__init__(message, None, None, net, step, None)
        self.node = node
        self.task = task
        self.cause = cause

    def __reduce__(self):
        return (type(self), (str(self), self.node, self.task, self.cause, self.net, self.step))


class NodeLostError(NodeFailedError):
    """A node's actor died (killed, out of memory, machine lost) or stopped
    answering for ``node_timeout_s``."""


class RayCompiledJob(object):
    """A TaskGroup compiled for a RaySession (``CompiledRunnable.obj``): the
    split job and the pickled node payloads (built once).  Holds only
    description -- no actor, session or data."""

    _ids = itertools.count()

    def __init__(self, split, key=None):
        self.split = split
        self.output_list = split.output_list
        self.key = key or "job-%s-%d" % (uuid.uuid4().hex[:8], next(self._ids))
        self._payloads = {}
        self._lock = threading.Lock()       # protects _payloads and _driver_jobs
        self._driver_jobs = {}              # queue name -> RayCompiledJob (iterate)

    def nodes(self):
        return list(self.split.nodes)

    def payload(self, node):
        with self._lock:
            p = self._payloads.get(node)
            if p is None:
                nplan = self.split.nodes[node]
                p = _node.dumps_payload((nplan, nplan.python_functions()))
                self._payloads[node] = p
            return p

    def for_driver_queue(self, name):
        """This job with queue ``name`` also carried to the driver."""
        with self._lock:
            job = self._driver_jobs.get(name)
            if job is None:
                job = RayCompiledJob(self.split.with_driver_queue(name),
                                     key="%s+%s" % (self.key, name))
                self._driver_jobs[name] = job
            return job

    def __repr__(self):
        return "RayCompiledJob(nodes=%r, cross_queues=%r)" % (self.nodes(), self.split.queues)


class RaySession(_session.Session):
    """Runs TaskGroups, Tasks, Plans and ``checkpoint.Job`` epochs with each
    ``Node`` in its own Ray actor.

    Args:
        address: the Ray cluster (``ray.init(address=...)``); None uses the
            running one in this process or starts a local one.
        node_timeout_s: the failure bound: a node actor that does not answer
            a health check (or a pull) for this long is lost, and a node that
            does not stop this long after a cancel is killed.  A failure is
            raised on the driver within about twice this.
        max_in_flight: batches of one cross-node queue in flight at once
            (outbox + outstanding pulls each hold at most this many).
        batch_size: records per batch moved between nodes (a part-filled
            batch leaves once a pull has waited 5 ms for it).
        num_cpus: CPUs each node actor asks for (``Node(name, num_cpus=x)``
            overrides per node).  Default 0: runtime instances are native
            threads inside the actor, and Ray's CPU accounting would refuse
            a 3-node job on a 2-CPU machine.
        health_interval_s: how often the driver pings each node actor.
        actor_options: extra ``ray.remote`` options for the node actors.

    Threading: drive one session from one thread.  ``run``/``start``/
    ``iterate`` of one session are serialised (one job at a time: the nodes'
    workspaces are shared by every run of the session, as a LocalSession's
    workspace is).

    Example::

        with RaySession() as s:
            s.run(task_group)
            for ids, x in s.iterate(tg2, q):
                ...
    """

    def __init__(self, address=None, node_timeout_s=10.0, max_in_flight=4, batch_size=64,
                 num_cpus=0, health_interval_s=0.5, actor_options=None):
        _session.Session.__init__(self)
        for name, v in (("node_timeout_s", node_timeout_s),
                        ("health_interval_s", health_interval_s)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ArgumentError("RaySession: %s=%r must be a number of seconds > 0"
                                    % (name, v))
        for name, v in (("max_in_flight", max_in_flight), ("batch_size", batch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ArgumentError("RaySession: %s=%r must be an int >= 1" % (name, v))
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, configure_logging=False)
            self._started_ray = True
        self.node_timeout_s = float(node_timeout_s)
        self.health_interval_s = float(health_interval_s)
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.num_cpus = num_cpus
        self._actor_options = dict(actor_options or {})
        self._actors = {}           # node name -> actor handle
        self._loaded = {}           # node name -> set of job keys it has
        self._lock = threading.Lock()   # protects _actors, _loaded, _current
        self._current = None        # the RayRunHandle running now
        #: stats of the last finished run: {node: {"send": {queue: ...}, "recv": ...}}
        self.last_stats = {}

    # -- compile

    @classmethod
    def _compile_task_group(cls, task_group, setup_net_list=None):
        return RayCompiledJob(split_task_group(task_group))

    # -- actors

    def _actor(self, node, node_kwargs):
        with self._lock:
            a = self._actors.get(node)
            if a is not None:
                return a
            opts = {"num_cpus": node_kwargs.get("num_cpus", self.num_cpus),
                    "max_concurrency": 64, "max_restarts": 0}
            opts.update(self._actor_options)
            a = ray.remote(_node.NodeHost).options(**opts).remote(node)
            self._actors[node] = a
            self._loaded[node] = OrderedDict()
            return a

    def actors(self):
        """{node name: actor handle} of the session's live node actors."""
        with self._lock:
            return dict(self._actors)

    def _kill_actors(self):
        with self._lock:
            actors, self._actors, self._loaded = self._actors, {}, {}
        _kill_confirmed(actors.values(), self.node_timeout_s)

    def _do_close(self):
        cur = self._current
        if cur is not None and not cur.done():
            cur.cancel()
            try:
                cur.wait()
            except Exception:
                pass
        self._kill_actors()
        if self._started_ray:
            ray.shutdown()

    def __exit__(self, ex_type, value, traceback):
        self.close()        # also on an exception: actors must not outlive the session

    # -- running

    def _check_runnable(self, runnable):
        if not self.is_open():
            raise GraphError("Session is closed.")
        if runnable is None:
            raise GraphError("Got a none runnable.")

    def _run_compiled(self, compiled):
        self._start_compiled(compiled).wait()

    def _start_compiled(self, compiled):
        with self._lock:
            cur = self._current
            if cur is not None and not cur.done():
                raise GraphError("RaySession: a job is already running on this session "
                                 "(its nodes' workspaces are shared): wait() for its run handle, or "
                                 "close() the iterator of an earlier iterate() (a loop left with "
                                 "break keeps its job running until then)")
        node_kwargs = _node_kwargs(compiled)
        actors = {n: self._actor(n, node_kwargs.get(n, {})) for n in compiled.nodes()}
        handle = RayRunHandle(self, compiled, actors)
        handle._start()
        with self._lock:
            self._current = handle
        return handle

    def start(self, runnable, workspace_type=None) -> "RayRunHandle":
        """Compile (once) and start ``runnable`` on the cluster; returns its
        :class:`RayRunHandle` at once (``run(r)`` is ``start(r).wait()``)."""
        self._check_runnable(runnable)
        return self._start_compiled(self.compile(runnable, workspace_type).obj)

    def iterate(self, runnable, queue, num_records: int = 1,
                timeout: Optional[float] = None) -> "RayRecordIterator":
        """Start ``runnable`` and stream the records written into ``queue``
        (on whichever node writes it) to this process, in batches through
        Ray's object store.  Items are tuples (records with field names when
        the queue has them) of numpy arrays -- read-only views of the object
        store, not copies.  Like ``LocalSession.iterate``: a failure raises
        from ``next()``; ``close()``, ``break`` + ``close()``, an exception or
        Ctrl-C cancel the job.  Only ``num_records=1`` is supported."""
        self._check_runnable(runnable)
        if num_records != 1:
            raise ArgumentError("RaySession.iterate: num_records=%r; only 1 is supported "
                                "(batch in the job instead)" % (num_records,))
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ArgumentError("iterate: timeout=%r must be >= 0 seconds" % (timeout,))
        name, fields = _session._queue_blob(queue)
        compiled = self.compile(runnable).obj.for_driver_queue(name)
        handle = self._start_compiled(compiled)
        src = next(q.src for q in compiled.split.queues if q.name == name and q.dst is None)
        return RayRecordIterator(handle, handle._actors[src], name, fields, timeout)

    def fetch_output(self, output):
        return output.fetch()


def _node_kwargs(compiled):
    return dict(getattr(compiled.split, "node_kwargs", {}) or {})


class RayRunHandle(_session.JoinOnExit):
    """A job started by ``RaySession.start`` (same methods as
    ``session.RunHandle``): ``wait(timeout=None)`` returns True once every
    node finished (raising the job's error -- ``NodeFailedError`` /
    ``NodeLostError`` naming node, task and cause, ``CancelledError`` after
    ``cancel()``), False if ``timeout`` passed first; Ctrl-C while waiting
    cancels the job on every node and raises KeyboardInterrupt.
    ``cancel()`` does not wait; ``done()`` does not block; ``outputs`` is the
    job's TaskOutputList (fetchable after a successful ``wait()``).

    Threading: every method may be called from any thread; one supervisor
    thread per running job (joined when the job ends) does the waiting."""

    def __init__(self, session, compiled, actors):
        self._session = session
        self._compiled = compiled
        self._actors = actors
        self._run_id = uuid.uuid4().hex
        self._lock = threading.Lock()   # protects the fields below
        self._cancel_requested = False
        self._failures = []             # failure dicts, in arrival order
        self._results = {}
        self._error = None
        self._done = threading.Event()
        self._thread = None
        self._final_stats = {}

    @property
    def outputs(self):
        return self._compiled.output_list

    def _start(self):
        s = self._session
        refs = {}
        key = self._compiled.key
        for node, actor in self._actors.items():
            loaded = s._loaded.setdefault(node, OrderedDict())
            payload = None if key in loaded else self._compiled.payload(node)
            refs[node] = actor.run.remote(self._run_id, key, payload,
                                          self._actors, s.max_in_flight, s.batch_size,
                                          s.node_timeout_s)
            loaded[key] = True
            loaded.move_to_end(key)
            # an actor keeps the last few jobs it ran (lowered programs and the
            # data their functions hold), not every job of a long session
            while len(loaded) > _JOBS_KEPT_PER_NODE:
                old, _ = loaded.popitem(last=False)
                actor.forget.remote(old)
        values = {}
        self._values = values
        names = [str(n) for n in self._compiled.output_list.names()]
        handle = self

        def fetch(ref):
            if not handle._done.is_set() or handle._error is not None:
                raise GraphError("output %r of a RaySession job: the job has not finished "
                                 "successfully" % str(ref))
            return values[str(ref)]
        self._compiled.output_list.set_values([core.BlobReference(n) for n in names],
                                              _fetch_func=fetch)
        self._thread = threading.Thread(target=self._supervise, args=(refs,),
                                        name="fastpipe-ray-supervisor")
        self._thread.start()

    # -- the supervisor thread

    def _supervise(self, refs):
        s = self._session
        timeout = s.node_timeout_s
        pending = {ref: node for node, ref in refs.items()}
        pings = {}                      # node -> (ref, issued at)
        last_ping = time.monotonic()
        failing_since = None
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_SLICE_S)
                if ready:
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in ready:
                    node = pending.pop(ref)
                    pings.pop(node, None)
                    try:
                        res = ray.get(ref, timeout=timeout)
                    except ray.exceptions.GetTimeoutError:
                        res = _lost(node, "its result could not be fetched within %.3g s"
                                    % timeout)
                    except ray.exceptions.RayActorError as e:
                        res = _lost(node, "its actor died (%s)" % _first_line(e))
                    except Exception as e:
                        res = _lost(node, "%s: %s" % (type(e).__name__, _first_line(e)))
                    self._results[node] = res
                    if not res["ok"]:
                        with self._lock:
                            self._failures.append(res)
                # health checks (a dead actor's ray.get can hang: ray#47204)
                now = time.monotonic()
                live = set(pending.values())
                for node, (pref, t0) in list(pings.items()):
                    if node not in live:
                        pings.pop(node)
                        continue
                    done, _ = ray.wait([pref], timeout=0)
                    if done:
                        pings.pop(node)
                        try:
                            ray.get(pref, timeout=timeout)
                        except Exception as e:
                            self._node_lost(pending, node, "its actor died (%s)"
                                            % _first_line(e))
                    elif now - t0 > timeout:
                        pings.pop(node)
                        self._node_lost(pending, node, "it did not answer a health check "
                                        "within %.3g s" % timeout)
                if now - last_ping >= s.health_interval_s:
                    last_ping = now
                    for node in set(pending.values()):
                        if node not in pings:
                            pings[node] = (self._actors[node].ping.remote(), now)
                with self._lock:
                    stop = bool(self._failures) or self._cancel_requested
                if stop and failing_since is None:
                    failing_since = time.monotonic()
                    for node in set(pending.values()):
                        try:
                            self._actors[node].cancel.remote(self._run_id)
                        except Exception:
                            pass
                if failing_since is not None and pending and \
                        time.monotonic() - failing_since > timeout:
                    for ref, node in list(pending.items()):
                        self._node_lost(pending, node, "it did not stop within %.3g s of "
                                        "the cancel" % timeout, secondary=True)
        except BaseException as e:      # never leave the job running unsupervised
            with self._lock:
                self._failures.append(_lost("<driver>", "the supervisor failed: %r" % (e,)))
            for node in set(pending.values()):
                self._kill(node)
        finally:
            self._finish()

    def _node_lost(self, pending, node, why, secondary=False):
        for ref, n in list(pending.items()):
            if n == node:
                pending.pop(ref)
        self._kill(node)
        res = _lost(node, why)
        res["secondary"] = secondary
        self._results[node] = res
        with self._lock:
            self._failures.append(res)

    def _kill(self, node):
        try:
            ray.kill(self._actors[node], no_restart=True)
        except Exception:
            pass

    def _finish(self):
        with self._lock:
            failures = list(self._failures)
            cancelled = self._cancel_requested
        self._final_stats = {n: r.get("stats", {}) for n, r in self._results.items() if r.get("ok")}
        self._session.last_stats = self._final_stats
        if failures or cancelled:
            # the nodes' workspaces may be half-way through anything: drop them
            self._session._kill_actors()
            primary = [f for f in failures if not f.get("secondary")]
            if primary:
                self._error = _make_error(primary[0], self._compiled)
            elif cancelled:
                self._error = CancelledError("the RaySession job was cancelled")
            else:
                self._error = _make_error(failures[0], self._compiled)
        else:
            for r in self._results.values():
                self._values.update(r.get("outputs", {}))
        self._done.set()

    # -- the RunHandle API

    def wait(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        try:
            while not self._done.is_set():
                left = _SLICE_S if deadline is None else min(_SLICE_S, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._done.wait(left)
        except BaseException:
            # Ctrl-C (or another exception) while waiting: cancel the cluster job
            self.cancel()
            self._join(self._session.node_timeout_s * 3)
            raise
        self._join(None)
        if self._error is not None:
            raise self._error
        return True

    def _join(self, timeout):
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def stats(self, timeout: float = 5.0) -> dict:
        """Live stats of every node, read without stopping the job:
        ``{"nodes": {node: stats}}`` where each node's stats are what
        ``RunHandle.stats()`` gives for its part of the job (stages and
        queues by name, JSON-serialisable) plus ``"bridges"`` (records and
        batches sent / received per cross-node queue); a node that is not
        running (finished, or not started) is None -- after the end, the
        final bridge counts are in ``RaySession.last_stats``."""
        import ray
        refs = {n: a.observe.remote(self._run_id) for n, a in self._actors.items()}
        out = {}
        for n, ref in refs.items():
            try:
                out[n] = ray.get(ref, timeout=timeout)
            except Exception as e:      # a dead or busy actor: say so, never hang
                out[n] = {"error": "%s: %s" % (type(e).__name__, e)}
        return {"nodes": out}

    def diagnose(self, timeout: float = 5.0) -> dict:
        """Per running node, fastpipe's bottleneck verdict over its stages
        (``str`` of ``RunHandle.diagnose()``'s verdict, one line)."""
        from ..observe import bottleneck
        res = {}
        for n, st in self.stats(timeout)["nodes"].items():
            if st is None or "error" in st:
                res[n] = "not running" if st is None else st["error"]
            else:
                res[n] = str(bottleneck(st))
        return res

    def cancel(self) -> None:
        with self._lock:
            if not self._done.is_set():
                self._cancel_requested = True

    def done(self) -> bool:
        return self._done.is_set()

    def failed(self):
        """The first failure seen so far (a dict), or None."""
        with self._lock:
            return self._failures[0] if self._failures else None

    def __repr__(self):
        return "<RayRunHandle %s>" % ("done" if self.done() else "running")


def _kill_confirmed(actors, timeout):
    """Kill ``actors`` and return once each is dead (ray.kill only requests
    it: a call sent right after may still be served), or ``timeout`` passed."""
    actors = list(actors)
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:
            pass
    deadline = time.monotonic() + timeout
    for a in actors:
        while time.monotonic() < deadline:
            try:
                ray.get(a.ping.remote(), timeout=max(0.01, deadline - time.monotonic()))
            except ray.exceptions.RayActorError:
                break                   # dead
            except Exception:
                break                   # no answer within the bound: nothing more to do
            try:
                ray.kill(a, no_restart=True)    # still served a call: ask again
            except Exception:
                pass


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _lost(node, why):
    return {"ok": False, "lost": True, "node": node, "task": None, "net": None, "step": None,
            "message": "node %r was lost: %s" % (node, why), "type": "NodeLostError",
            "cause_type": None, "cause_message": why, "cause": None, "secondary": False}


def _make_error(f, compiled):
    node = f["node"]
    nplan = compiled.split.nodes.get(node)
    task = f.get("task")
    if f.get("lost"):
        tasks = ", ".join(nplan.task_names) if nplan is not None else "?"
        err = NodeLostError("%s (tasks: %s)" % (f["message"], tasks), node=node, task=None,
                            cause=f.get("cause_message"))
        return err
    cause = None
    if f.get("cause") is not None:
        try:
            from ray import cloudpickle
            cause = cloudpickle.loads(f["cause"])
        except Exception:
            cause = None
    what = f.get("cause_type") or f.get("type")
    msg = "node %r, task %r failed: %s" % (node, task, f.get("message"))
    if f.get("cause_message") and f.get("cause_message") not in msg:
        msg += " (caused by %s: %s)" % (what, f.get("cause_message"))
    err = NodeFailedError(msg, node=node, task=task,
                          cause="%s: %s" % (what, f.get("cause_message")),
                          net=f.get("net"), step=f.get("step"))
    if cause is not None and cause is not err:
        err.__cause__ = cause
    return err


class RayRecordIterator(object):
    """Iterates the records a RaySession job writes into one of its queues.

    See ``RaySession.iterate``.  Keeps at most ``max_in_flight`` pulls
    outstanding to the producing node; a failure on any node raises the
    job's error from ``next()``.  Drive one iterator from one thread."""

    def __init__(self, handle, actor, queue, fields, timeout):
        self.run = handle
        self._actor = actor
        self._queue = queue
        self._fields = tuple(fields) if fields else None
        self._rec = None
        if self._fields:
            from .._core import record_type
            self._rec = record_type(self._fields)
        self._timeout = timeout
        self._outstanding = deque()
        self._current = deque()
        self._eos = False
        self._acked = 0
        self._closed = False
        self.max_outstanding = 0

    @property
    def fields(self):
        return self._fields

    def stats(self, timeout: float = 5.0) -> dict:
        """Live stats of every node (``RayRunHandle.stats``)."""
        return self.run.stats(timeout)

    def diagnose(self, timeout: float = 5.0) -> dict:
        """Per node, the bottleneck verdict (``RayRunHandle.diagnose``)."""
        return self.run.diagnose(timeout)

    def cancel(self) -> None:
        """Cancel the job on every node (``close()`` also joins it)."""
        self.run.cancel()

    def __iter__(self):
        return self

    def __next__(self):
        if self._closed:
            raise StopIteration
        try:
            return self._next()
        except (StopIteration, IterTimeoutError):
            raise
        except BaseException:
            self._abort()
            raise

    def _next(self):
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        k = self.run._session.max_in_flight
        while not self._current:
            if self._eos and not self._outstanding:
                self._closed = True
                self.run.wait()
                raise StopIteration
            while not self._eos and len(self._outstanding) < k:
                self._outstanding.append(
                    self._actor.pull.remote(self.run._run_id, self._queue, self._acked))
                self.max_outstanding = max(self.max_outstanding, len(self._outstanding))
            res = self._get(self._outstanding[0], deadline)
            self._outstanding.popleft()
            if res is None:
                continue
            if isinstance(res, str):
                if res == _node.EOS:
                    self._eos = True
                    continue
                self._closed = True
                self.run.wait()         # the producer was cancelled: the job's error
                raise CancelledError("the RaySession job was cancelled")
            self._current.extend(res)
            self._acked += 1
        rec = self._current.popleft()
        return self._rec(rec) if self._rec is not None else tuple(rec)

    def _get(self, ref, deadline):
        while True:
            if self.run.failed() is not None or (self.run.done() and
                                                 self.run._error is not None):
                self._closed = True
                self.run.wait()         # raises the job's error
            try:
                return ray.get(ref, timeout=_SLICE_S * 4)
            except ray.exceptions.GetTimeoutError:
                if deadline is not None and time.monotonic() > deadline:
                    raise IterTimeoutError(
                        "iterate: no record of queue %r within %.3g s; the job keeps running "
                        "(close() the iterator to stop it)" % (self._queue, self._timeout))
            except ray.exceptions.RayActorError:
                self._closed = True
                self.run.wait()         # the supervisor reports the lost node
                raise

    def _abort(self):
        self._closed = True
        if not self.run.done():
            self.run.cancel()
        try:
            self.run._join(self.run._session.node_timeout_s * 3)
        except BaseException:
            pass

    def close(self):
        """Cancel the job unless it finished and wait for every node."""
        if self._closed and self.run.done():
            try:
                self.run.wait()
            except CancelledError:
                pass
            return
        self._closed = True
        if not self.run.done():
            self.run.cancel()
        try:
            self.run.wait()
        except CancelledError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                pass
        return False

    def __del__(self):
        try:
            if not self._closed or not self.run.done():
                self.run.cancel()
        except Exception:
            pass
