"""The node actor: one per ``Node`` of a job, hosting a native workspace.

A ``NodeHost`` lives in a Ray actor process (``ray.remote`` is applied by
the session, so this module imports without Ray).  ``run`` takes a node's
part of a job (``_split.NodePlan``, pickled), adds the *bridge* steps of its
cross-node queues, lowers it once per job and runs it on the node's
workspace with fastpipe's own runtime -- native threads, runtime instances,
GLOBAL/PRIVATE workspaces exactly as under ``LocalSession`` -- and returns
the node's TaskOutput values, or the failure.

Bridges (all inside the node's own plan, so the native runtime cancels and
joins them like any task):

* **send** (the node writes queue Q, another node or the driver reads it):
  a loop ``SafeDequeueBlobs(Q) -> Python(send)`` drains the local copy of Q
  one record at a time; ``send`` groups records into batches of
  ``batch_size`` and puts each into the queue's :class:`Outbox`, which holds
  at most ``max_in_flight`` batches (a full outbox blocks the loop, so a
  slow consumer slows the producer).  The consumer fetches batches with
  ``pull`` (an actor call that returns the batch through Ray's object
  store); when Q is closed and drained the outbox reports end-of-stream.
* **recv** (the node reads Q): a loop ``Python(recv) -> SafeEnqueueBlobs(Q)``
  keeps at most ``max_in_flight`` ``pull`` calls outstanding to the
  producer's actor and feeds the records of each batch into the local copy
  of Q; after end-of-stream (every outstanding pull answered) the loop ends
  and the node's exit closes Q, so the node's readers drain and stop.  If
  the local Q is closed early (its readers finished), ``recv`` stops and
  asks the producer to close its copy, as a local queue would stop its
  writers.

Exactly once: each batch leaves the outbox in exactly one ``pull`` answer
(popped under the outbox lock), and the receiver feeds every answer it gets;
end-of-stream is answered only once the producer's Q is drained and the
outbox empty, and the receiver ends only after all its outstanding pulls
are answered.  Several consumer instances read the receiver's local Q,
which hands each record to one of them.

Threading: the actor is a threaded actor; ``run`` blocks one of its threads
while ``pull``/``cancel``/``ping`` run on others.  ``self._lock`` protects
``_runs`` and ``_jobs``; each Outbox has its own lock and condition.
"""

import copy
import io
import os
import threading
import time
import traceback
import weakref
from collections import deque

import numpy as np

from .. import _core, _pyop, core
from .. import proto as _proto
from ..errors import CancelledError, FastpipeError, RunError

__all__ = ["NodeHost", "EOS", "CANCELLED", "PeerLostError"]

EOS = "__fastpipe_eos__"
CANCELLED = "__fastpipe_cancelled__"
_SLICE_S = 0.05          # every blocking wait checks cancellation this often
LINGER_S = 0.005         # a pull takes a part-filled batch after it waited this long


class PeerLostError(FastpipeError, RuntimeError):
    """A bridge lost the node at the other end of its queue (that node died
    or failed first); the driver reports the other node's failure."""


class _Cancelled(FastpipeError, RuntimeError):
    """A bridge stopped because its run is being cancelled."""


class Outbox(object):
    """The batches of one outgoing queue waiting for a ``pull``.

    ``lock`` protects every field; ``cond`` is signalled on every change."""

    def __init__(self, max_in_flight):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.batches = deque()
        self.max_in_flight = max_in_flight
        # The batch being filled.  A pull that finds no full batch takes it
        # once it has waited LINGER_S, so a producer that writes a few
        # records and then waits (for its consumer, or on a slow source)
        # is never left holding them.
        self.open = []
        self.open_since = 0.0
        self.finished = False           # the local queue is drained and closed
        self.cancelled = False
        self.consumer_closed = False    # the consumer's copy was closed early
        self.eos_given = False          # a pull has been answered with EOS
        self.put_batches = 0
        self.put_records = 0
        self.acked = 0                  # batches the consumer reported fed
        self.max_outbox = 0
        self.max_in_flight_seen = 0     # max(put - acked) at a put

    def _seal(self):
        """Move the open batch into the ready batches (lock held)."""
        batch, self.open = self.open, []
        self.batches.append(batch)
        self.put_batches += 1
        self.put_records += len(batch)
        self.max_outbox = max(self.max_outbox, len(self.batches))
        self.max_in_flight_seen = max(self.max_in_flight_seen,
                                      self.put_batches - self.acked)
        self.cond.notify_all()

    def add(self, record, batch_size):
        """Add one record to the open batch; a full batch waits (cancellably)
        for room among the ready ones.  False if the consumer closed its
        copy (the record is dropped, as a closed queue drops)."""
        with self.cond:
            if self.cancelled:
                raise _Cancelled("queue bridge cancelled")
            if self.consumer_closed:
                return False
            if not self.open:
                self.open_since = time.monotonic()
                self.cond.notify_all()      # a waiting pull starts its linger clock
            self.open.append(record)
            if len(self.open) < batch_size:
                return True
            while (len(self.batches) >= self.max_in_flight and not self.cancelled
                   and not self.consumer_closed):
                self.cond.wait(_SLICE_S)
            if self.cancelled:
                raise _Cancelled("queue bridge cancelled")
            if self.consumer_closed:
                return False
            if self.open:                   # (a pull may have taken it meanwhile)
                self._seal()
            return True

    def finish(self):
        with self.cond:
            if self.open:
                self._seal()
            self.finished = True
            self.cond.notify_all()

    def cancel(self):
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def close_by_consumer(self):
        with self.cond:
            self.consumer_closed = True
            self.batches.clear()
            self.open = []
            self.cond.notify_all()

    def take(self, acked, deadline):
        """The next batch, EOS, CANCELLED, or None when ``deadline`` passed."""
        with self.cond:
            self.acked = max(self.acked, acked)
            while True:
                if self.cancelled:
                    return CANCELLED
                if not self.batches and self.open and \
                        time.monotonic() - self.open_since >= LINGER_S:
                    self._seal()
                if self.batches:
                    batch = self.batches.popleft()
                    self.cond.notify_all()
                    return batch
                if self.finished or self.consumer_closed:
                    self.eos_given = True
                    self.cond.notify_all()
                    return EOS
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    return None
                if self.open:
                    left = min(left, self.open_since + LINGER_S - now)
                self.cond.wait(max(min(left, _SLICE_S), 0.0005))

    def wait_delivered(self, cancelled):
        """Block until every batch and the end-of-stream were handed to the
        consumer (or the run is cancelled, or the consumer closed its copy)."""
        with self.cond:
            while not (self.cancelled or self.consumer_closed or
                       (self.finished and not self.batches and not self.open and self.eos_given)):
                if cancelled.is_set():
                    raise _Cancelled("queue bridge cancelled")
                self.cond.wait(_SLICE_S)

    def stats(self):
        with self.lock:
            return {"batches": self.put_batches, "records": self.put_records,
                    "max_outbox": self.max_outbox, "max_in_flight": self.max_in_flight_seen}


class _RunState(object):
    """One run of a job on this node: its outboxes, peers and cancel flag."""

    def __init__(self, run_id, peers, max_in_flight, batch_size, pull_timeout_s):
        self.run_id = run_id
        self.peers = peers                      # node name -> actor handle
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.pull_timeout_s = pull_timeout_s
        self.cancelled = threading.Event()
        self.outboxes = {}                      # queue name -> Outbox
        self.recv_stats = {}                    # queue name -> dict
        self.run = None                         # the native Run once started


class NodeHost(object):
    """What a node actor holds: a native workspace and the node's jobs.

    Made by ``RaySession`` as ``ray.remote(NodeHost).options(...)``."""

    def __init__(self, node):
        self.node = node
        self.ws = _core.Workspace()
        self._lock = threading.Lock()           # protects _runs, _jobs, _outboxes
        self._jobs = {}                         # job key -> (Program, NodePlan)
        self._runs = {}                         # run id -> _RunState
        self._outboxes = {}                     # (run id, queue) -> Outbox (made on first use)
        self._ended = {}                        # (run id, queue) -> EOS/CANCELLED of ended runs

    # -- control

    def ping(self):
        return os.getpid()

    def thread_count(self):
        """Native threads of this process (fastpipe joins its own after each run)."""
        return len(os.listdir("/proc/self/task"))

    def stacks(self):
        """Every thread's Python stack in this actor (a diagnostic)."""
        import faulthandler
        import tempfile
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            text = f.read()
        with self._lock:
            boxes = {"%s/%s" % k: b.stats() for k, b in self._outboxes.items()}
            recv = {r: dict(rs.recv_stats) for r, rs in self._runs.items()}
        return {"stacks": text, "outboxes": boxes, "recv": recv}

    def observe(self, run_id):
        """Live stats of this node's part of run ``run_id`` (fastpipe.observe
        stats of its native run, plus its bridges), or None when that run is
        not running here (not started yet, or finished)."""
        from ..observe import Observer
        with self._lock:
            rs = self._runs.get(run_id)
        run = getattr(rs, "run", None) if rs is not None else None
        if run is None:
            return None
        obs = getattr(rs, "observer", None)
        if obs is None:
            obs = rs.observer = Observer(run)
        out = obs.stats()
        out["bridges"] = {"send": {q: b.stats() for q, b in rs.outboxes.items()},
                          "recv": {q: dict(v) for q, v in rs.recv_stats.items()}}
        return out

    def loaded_jobs(self):
        with self._lock:
            return len(self._jobs)

    def forget(self, job_key):
        """Drop a loaded job (the driver keeps the last few loaded per node)."""
        with self._lock:
            self._jobs.pop(job_key, None)
        return True

    def cancel(self, run_id):
        with self._lock:
            rs = self._runs.get(run_id)
            boxes = [b for (r, _), b in self._outboxes.items() if r == run_id]
        for b in boxes:
            b.cancel()
        if rs is not None:
            rs.cancelled.set()
            if rs.run is not None:
                rs.run.cancel()
        return True

    def _outbox(self, run_id, queue, max_in_flight=None):
        with self._lock:
            box = self._outboxes.get((run_id, queue))
            if box is None:
                box = Outbox(max_in_flight or 1)
                self._outboxes[(run_id, queue)] = box
            elif max_in_flight is not None:
                box.max_in_flight = max_in_flight
            return box

    def pull(self, run_id, queue, acked, wait_s=1.0):
        """The next batch of outgoing ``queue`` (a list of record tuples), EOS,
        CANCELLED, or None if nothing came within ``wait_s`` (ask again)."""
        with self._lock:
            ended = self._ended.get((run_id, queue))
        if ended is not None:
            return ended
        return self._outbox(run_id, queue).take(acked, time.monotonic() + wait_s)

    def close_queue(self, run_id, queue):
        """The consumer's copy of ``queue`` was closed early: close ours (its
        writers stop, as with a local queue) and drop what is waiting."""
        self._outbox(run_id, queue).close_by_consumer()
        net = core.Net("bridge/close/%s/%s" % (queue, run_id))
        net.CloseBlobsQueue([queue], 0)
        net = net.Proto()
        try:
            self.ws.create_net(net, overwrite=True)
            self.ws.run_net(net.name)
        except FastpipeError:
            pass        # the queue is gone already (the run ended)
        return True

    # -- running a node's part of a job

    def run(self, run_id, job_key, payload, peers, max_in_flight, batch_size,
            pull_timeout_s):
        """Run this node's plan; returns ``{"ok": True, "outputs": {...},
        "stats": {...}}`` or ``{"ok": False, ...}`` describing the failure."""
        rs = _RunState(run_id, peers, max_in_flight, batch_size, pull_timeout_s)
        with self._lock:
            self._runs[run_id] = rs
        try:
            prog, nplan = self._program(job_key, payload)
            for q in nplan.sends:
                rs.outboxes[q.name] = self._outbox(run_id, q.name, max_in_flight)
            self._active = rs
            for name in nplan.output_names:
                self.ws.create_blob(name)
            if rs.cancelled.is_set():
                raise CancelledError("the run was cancelled before it started")
            rs.run = self.ws.start_program(prog)
            if rs.cancelled.is_set():
                rs.run.cancel()
            rs.run.wait()
            # the node is done once its consumers have every batch (a run
            # that ended with batches still in an outbox would lose them)
            for b in rs.outboxes.values():
                b.wait_delivered(rs.cancelled)
            outputs = {name: self.ws.fetch(name) for name in nplan.output_names}
            stats = {"send": {q: b.stats() for q, b in rs.outboxes.items()},
                     "recv": dict(rs.recv_stats)}
            return {"ok": True, "outputs": outputs, "stats": stats}
        except BaseException as e:     # reported to the driver, never raised here
            for b in rs.outboxes.values():
                b.cancel()
            return _describe_failure(self.node, e, rs, locals().get("nplan"))
        finally:
            with self._lock:
                self._runs.pop(run_id, None)
                for key in [k for k in self._outboxes if k[0] == run_id]:
                    box = self._outboxes.pop(key)
                    # later pulls of this run (the consumer keeps several
                    # outstanding) are answered from the tombstone
                    self._ended[key] = box.cancelled and CANCELLED or EOS
                while len(self._ended) > 4096:
                    self._ended.pop(next(iter(self._ended)))

    def _program(self, job_key, payload):
        with self._lock:
            cached = self._jobs.get(job_key)
        if cached is not None:
            return cached
        if payload is None:
            raise RunError("node %r: job %r is not loaded (the driver sent no plan)"
                           % (self.node, job_key))
        objects = []
        try:
            nplan, funcs = loads_payload(payload, objects)
        except Exception as e:
            raise RunError("node %r could not load its part of the job (unpickling its plan "
                           "and Python functions raised %s: %s); functions must be importable "
                           "on the cluster, or registered with "
                           "ray.cloudpickle.register_pickle_by_value(module)"
                           % (self.node, type(e).__name__, e)) from e
        keep = _rebind_python_ops(nplan.plandef, funcs) + objects
        plandef = self._with_bridges(nplan)
        prog = _core.Program.from_plan(plandef)
        entry = (prog, nplan)
        with self._lock:
            self._jobs[job_key] = entry
        nplan._tokens = keep        # the re-registered functions live with the job
        return entry

    def _with_bridges(self, nplan):
        """The node's PlanDef with the bridge init, steps and exit added:
        ``[bridge init (creates the cross-node queues), concurrent(node's
        step, bridge steps), bridge exit (closes the received queues)]``."""
        if not nplan.bridge_creates and not nplan.sends and not nplan.recvs:
            return nplan.plandef
        init = core.Net("bridge/%s/init" % self.node)
        seen = set()
        for op in nplan.bridge_creates:
            if op.output[0] in seen:
                continue
            seen.add(op.output[0])
            init.Proto().op.append(copy_op(op))
        exit_net = core.Net("bridge/%s/exit" % self.node)
        steps = [self._send_step(q) for q in nplan.sends]
        steps += [self._recv_step(q, exit_net) for q in nplan.recvs]
        bplan = core.Plan("bridge/%s" % self.node)
        bplan.AddStep(core.execution_step("bridge/%s:init" % self.node, [init]))
        bplan.AddStep(core.execution_step("bridge/%s:body" % self.node, steps,
                                          concurrent_substeps=True))
        if exit_net.Proto().op:
            bplan.AddStep(core.execution_step("bridge/%s:exit" % self.node, [exit_net]))
        bp = bplan.Proto()
        plan = _proto.PlanDef()
        plan.name = nplan.plandef.name
        have = set()
        for net in list(nplan.plandef.network) + list(bp.network):
            if net.name not in have:
                have.add(net.name)
                plan.network.append(net)
        bsteps = list(bp.execution_step)
        outer = _proto.ExecutionStep()
        outer.name = "%s:bridged" % self.node
        outer.concurrent_substeps = True
        outer.substep.append(nplan.plandef.execution_step[0])
        outer.substep.append(bsteps[1])
        root = _proto.ExecutionStep()
        root.name = "%s:with_bridges" % self.node
        root.substep.append(bsteps[0])
        root.substep.append(outer)
        for extra in bsteps[2:]:
            root.substep.append(extra)
        plan.execution_step.append(root)
        return plan

    def _send_step(self, q):
        net = core.Net("bridge/send/%s" % q.name)
        data = ["bridge/send/%s/d%d" % (q.name, i) for i in range(q.num_blobs)]
        status = "bridge/send/%s/status" % q.name
        stop = "bridge/send/%s/stop" % q.name
        net.SafeDequeueBlobs([q.name], data + [status])
        net.Python((_make_sender, (self, q.name), {}))(data + [status], [stop])
        return core.execution_step("bridge/send/%s" % q.name, [net], should_stop_blob=stop)

    def _recv_step(self, q, exit_net):
        recv = core.Net("bridge/recv/%s" % q.name)
        enq = core.Net("bridge/recv/%s/enqueue" % q.name)
        data = ["bridge/recv/%s/d%d" % (q.name, i) for i in range(q.num_blobs)]
        status = "bridge/recv/%s/status" % q.name
        recv.Python((_make_receiver, (self, q), {}))([], data + [status])
        enq.SafeEnqueueBlobs([q.name] + data, data + [status])
        done = core.Net("bridge/recv/%s/done" % q.name)
        done.Python((_make_recv_done, (self, q), {}))([status], [])
        # closed here, not at the node's exit: the node's readers of the queue
        # end when it is closed and drained, and the node's step ends after them
        done.CloseBlobsQueue([q.name], 0)
        loop = core.execution_step("bridge/recv/%s/loop" % q.name, [recv, enq],
                                   should_stop_blob=status)
        return core.execution_step("bridge/recv/%s" % q.name, [loop, done])


def copy_op(op):
    return copy.deepcopy(op)


def _rebind_python_ops(plandef, funcs):
    """Register ``funcs`` (old token -> (func, pass_workspace)) in this
    process and point the plan's Python ops at the new tokens."""
    new = {old: _pyop.register(func, pass_workspace) for old, (func, pass_workspace)
           in funcs.items()}
    for net in plandef.network:
        for op in net.op:
            for arg in op.arg:
                if arg.name == "token" and bytes(arg.s).startswith(b"python_op:"):
                    key = bytes(arg.s).decode("utf-8")
                    if key in new:
                        arg.s = new[key]
    return list(new.values())


# -- bridge ops (factories: called once per run, in the node actor) ------------


def _make_sender(host, queue):
    rs = host._active
    box = rs.outboxes[queue]
    batch_size = rs.batch_size

    def send(inputs, outputs):
        done = bool(inputs[-1].data)
        closed = False
        if rs.cancelled.is_set():
            raise _Cancelled("queue bridge cancelled")
        if not done:
            closed = not box.add(tuple(np.asarray(t.data) for t in inputs[:-1]), batch_size)
        elif not rs.cancelled.is_set():
            box.finish()
        outputs[0].feed(np.array(done or closed or box.consumer_closed))
    return send


def _make_receiver(host, q):
    import ray
    rs = host._active
    producer = rs.peers.get(q.src)
    stats = {"records": 0, "batches": 0, "max_outstanding": 0}
    rs.recv_stats[q.name] = stats
    outstanding = deque()
    current = deque()
    state = {"eos": False, "acked": 0}

    def fetch_one():
        ref = outstanding[0]
        deadline = time.monotonic() + rs.pull_timeout_s
        while True:
            if rs.cancelled.is_set():
                raise _Cancelled("queue bridge cancelled")
            try:
                res = ray.get(ref, timeout=_SLICE_S * 4)
                break
            except ray.exceptions.GetTimeoutError:
                if time.monotonic() > deadline:
                    raise PeerLostError(
                        "node %r (the producer of queue %r) did not answer within %.3g s"
                        % (q.src, q.name, rs.pull_timeout_s))
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                raise PeerLostError("node %r (the producer of queue %r) is gone: %s"
                                    % (q.src, q.name, type(e).__name__))
        outstanding.popleft()
        return res

    def recv(inputs, outputs):
        while not current:
            if state["eos"] and not outstanding:
                outputs[-1].feed(np.array(True))
                stats["eos_done"] = True
                return
            while not state["eos"] and len(outstanding) < rs.max_in_flight:
                outstanding.append(producer.pull.remote(rs.run_id, q.name, state["acked"]))
                stats["max_outstanding"] = max(stats["max_outstanding"], len(outstanding))
            res = fetch_one()
            if res is None:
                continue            # the producer had nothing yet; the pull is re-issued
            if isinstance(res, str):
                if res == EOS:
                    state["eos"] = True
                    continue
                raise PeerLostError("node %r (the producer of queue %r) was cancelled"
                                    % (q.src, q.name))
            stats["batches"] += 1
            current.extend(res)
            current.append(None)        # marks the end of this batch (an ack)
        rec = current.popleft()
        if rec is None:
            state["acked"] += 1
            return recv(inputs, outputs)
        for out, arr in zip(outputs, rec):
            out.feed(arr)
        outputs[-1].feed(np.array(False))
        stats["records"] += 1
    return recv


def _make_recv_done(host, q):
    rs = host._active

    def done(inputs, outputs):
        stats = rs.recv_stats.get(q.name, {})
        # the loop ended before end-of-stream: our copy of the queue was closed
        # (its readers finished); stop the producer like a local queue would
        if not rs.cancelled.is_set() and stats is not None and not stats.get("eos_done"):
            producer = rs.peers.get(q.src)
            if producer is not None:
                producer.close_queue.remote(rs.run_id, q.name)
    return done


def _describe_failure(node, exc, rs, nplan):
    """The failure report of a node run (picklable)."""
    if isinstance(exc, RunError):
        cause = exc.__cause__
    else:
        cause = exc
    secondary = isinstance(cause, (PeerLostError, _Cancelled)) or (
        isinstance(exc, CancelledError) and rs.cancelled.is_set())
    net = getattr(exc, "net", None)
    step = getattr(exc, "step", None)
    task = nplan.task_of(net, step) if nplan is not None else None
    if net and net.startswith("bridge/"):
        task = "bridge of queue %s" % net.split("/", 2)[-1]
    try:
        from ray import cloudpickle
        cause_blob = cloudpickle.dumps(cause) if cause is not None else None
    except Exception:
        cause_blob = None
    return {"ok": False, "node": node, "task": task, "net": net, "step": step,
            "message": str(exc), "type": type(exc).__name__,
            "cause_type": type(cause).__name__ if cause is not None else None,
            "cause_message": str(cause) if cause is not None else None,
            "cause": cause_blob, "secondary": bool(secondary),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


# -- shipping a node's plan to its actor -----------------------------------------
#
# A node's Python ops are closures over fastpipe's own sources and user
# code.  Two kinds of object in them do not pickle as they are: locks (a
# fresh one is the right thing in another process) and weak references
# (sources hold their state weakly so a finished job frees its data).  A
# weak reference is shipped as its referent; the actor keeps the referent
# alive for as long as the job is loaded (``_keep``) and hands the op a
# new weak reference to it.

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_loading = threading.local()        # .keep: the list of the payload being loaded


def _revive_lock(kind):
    return threading.RLock() if kind == "rlock" else threading.Lock()


def _revive_weakref(obj):
    keep = getattr(_loading, "keep", None)
    if keep is not None:
        keep.append(obj)
    return weakref.ref(obj)


def dumps_payload(obj):
    """Pickle a node payload (Ray's cloudpickle plus locks and weakrefs)."""
    from ray import cloudpickle
    import copyreg

    def reduce_ref(r):
        obj = r()
        if obj is None:
            return (_dead_ref, ())
        return (_revive_weakref, (obj,))
    table = dict(copyreg.dispatch_table)
    table.update(getattr(cloudpickle.CloudPickler, "dispatch_table", {}) or {})
    table[_LOCK_TYPES[0]] = lambda lk: (_revive_lock, ("lock",))
    table[_LOCK_TYPES[1]] = lambda lk: (_revive_lock, ("rlock",))
    table[weakref.ReferenceType] = reduce_ref

    class _Pickler(cloudpickle.CloudPickler):
        dispatch_table = table
    buf = io.BytesIO()
    p = _Pickler(buf, protocol=5)
    p.dump(obj)
    return buf.getvalue()


class _Dead(object):
    pass


def _dead_ref():
    return weakref.ref(_Dead())        # dead at once, as the original was


def loads_payload(data, keep):
    from ray import cloudpickle
    _loading.keep = keep
    try:
        return cloudpickle.loads(data)
    finally:
        _loading.keep = None
