"""Splitting a TaskGroup by node (no Ray here: pure description work).

``split_task_group(tg)`` groups the tasks by node exactly as Caffe2's
distributed sessions did (``TaskGroup.tasks_by_node()`` with no remapping),
gives each node its own plan and finds the **cross-node queues**: a blob
queue written (``SafeEnqueueBlobs``/``EnqueueBlobs``) on one node and read
(``SafeDequeueBlobs``/``DequeueBlobs``) on another.  The ops that create such
a queue (``CreateBlobsQueue``, wherever ``LOCAL_SETUP`` happened to put it --
the first node that uses the queue) are moved out of the node plans into a
per-node *bridge init* net that runs before anything else on both sides,
so each node has its own local copy of the queue; ``_node.py`` adds the
bridge steps that move records between the copies.

``Python`` ops refer to their function by a process-local token; the node
payload carries the functions themselves (pickled by Ray's cloudpickle) so
that the node actor can register them again under its own tokens.
"""

import copy
import re

from .. import _pyop, core
from .. import proto as _proto
from ..errors import GraphError, NotSupportedError
from ..task import Cluster

__all__ = ["NodePlan", "CrossQueue", "SplitJob", "split_task_group"]

_WRITE_OPS = ("SafeEnqueueBlobs", "EnqueueBlobs")
_READ_OPS = ("SafeDequeueBlobs", "DequeueBlobs")
_CREATE_OPS = ("CreateBlobsQueue",)
# queue kinds that cannot be split across nodes (their records are not
# plain blob tuples moved one by one)
_OTHER_QUEUE_CREATE = ("CreateRebatchingQueue",)


class CrossQueue(object):
    """A queue written on ``src`` and read on ``dst`` (a node name, or
    ``None`` for the driver: ``RaySession.iterate``)."""

    def __init__(self, name, src, dst, num_blobs, create_op):
        self.name = name
        self.src = src
        self.dst = dst
        self.num_blobs = num_blobs
        self.create_op = create_op      # a proto.OperatorDef (CreateBlobsQueue)

    def __repr__(self):
        return "CrossQueue(%r, %r -> %r, %d blobs)" % (self.name, self.src,
                                                      self.dst or "<driver>", self.num_blobs)


class NodePlan(object):
    """One node's part of a job: its plan (a PlanDef whose cross-node queue
    creations were moved to ``bridge_creates``), the names of its TaskOutput
    blobs and the names of its original tasks (for error messages)."""

    def __init__(self, node, plandef, output_names, task_names):
        self.node = node
        self.plandef = plandef
        self.output_names = output_names
        self.task_names = task_names
        self.bridge_creates = []        # OperatorDefs run first on this node
        self.sends = []                 # CrossQueues this node writes
        self.recvs = []                 # CrossQueues this node reads

    def python_functions(self):
        """{token (str): (func, pass_workspace)} of every Python op in the plan."""
        funcs = {}
        for net in self.plandef.network:
            for op in net.op:
                for arg in op.arg:
                    if arg.name == "token" and bytes(arg.s).startswith(b"python_op:"):
                        key = bytes(arg.s).decode("utf-8")
                        funcs[key] = _pyop.lookup(arg.s)
        return funcs

    def task_of(self, *names):
        """The original task whose name prefixes one of ``names`` (a failing
        net or step), else the node's only task, else None."""
        best = None
        for name in names:
            if not name:
                continue
            for t in self.task_names:
                # a net is named '<task>/...', '<task>:...' or '<task>_<n>' (made unique)
                if re.match(re.escape(t) + r"(_\d+)?([/:]|$)", name) and (
                        best is None or len(t) > len(best)):
                    best = t
        if best is None and len(self.task_names) == 1:
            best = self.task_names[0]
        return best


class SplitJob(object):
    """A TaskGroup split by node: ``nodes`` (NodePlan by node name, in order),
    ``queues`` (the CrossQueues), ``output_list`` (every node's
    TaskOutputs) and the queues each node creates (to add a driver
    consumer for ``iterate``)."""

    def __init__(self, nodes, queues, output_list, queue_usage):
        self.nodes = nodes
        self.queues = queues
        self.output_list = output_list
        self._usage = queue_usage        # name -> (writers, readers, create (node, net, idx))

    def with_driver_queue(self, name):
        """A copy of this split whose queue ``name`` is also carried to the
        driver (``iterate``).  It must be written on exactly one node and read
        by no other node."""
        usage = self._usage.get(name)
        if usage is None or not usage[0]:
            raise GraphError("iterate: no node of the job writes queue %r (is it a queue of "
                             "this job?)" % name)
        writers, readers, create = usage
        if len(writers) != 1:
            raise NotSupportedError("iterate: queue %r is written on nodes %s; RaySession "
                                    "streams a queue written on one node" % (name, sorted(writers)))
        others = set(readers) - set(writers)
        if others or readers:
            raise NotSupportedError("iterate: queue %r is also read on node(s) %s inside the "
                                    "job; iterate a queue nobody else reads"
                                    % (name, sorted(set(readers))))
        if create is None:
            raise GraphError("iterate: queue %r is not created by the job" % name)
        src = next(iter(writers))
        nodes = {}
        for node, np_ in self.nodes.items():
            c = NodePlan(node, copy.deepcopy(np_.plandef), np_.output_names, np_.task_names)
            c.bridge_creates = list(np_.bridge_creates)
            c.sends = list(np_.sends)
            c.recvs = list(np_.recvs)
            nodes[node] = c
        cnode, net_name, op_index = create
        create_op = _pop_op(nodes[cnode].plandef, net_name, op_index)
        cq = CrossQueue(name, src, None, _num_blobs(create_op, name), create_op)
        nodes[src].bridge_creates.append(create_op)
        nodes[src].sends.append(cq)
        split = SplitJob(nodes, self.queues + [cq], self.output_list, {})
        split.node_kwargs = getattr(self, "node_kwargs", {})
        return split


def _num_blobs(op, name):
    for arg in op.arg:
        if arg.name == "num_blobs":
            return int(arg.i)
    raise GraphError("CreateBlobsQueue of %r has no num_blobs" % name)


def _pop_op(plandef, net_name, op_index):
    for net in plandef.network:
        if net.name == net_name:
            op = net.op[op_index]
            del net.op[op_index]
            return op
    raise GraphError("net %r not found while splitting the plan" % net_name)


def _scan(plandef):
    """(writes, reads, creates, other_creates) of one plan: queue name ->
    positions."""
    writes, reads, creates, others = set(), set(), {}, set()
    for net in plandef.network:
        for i, op in enumerate(net.op):
            if op.type in _WRITE_OPS and op.input:
                writes.add(op.input[0])
            elif op.type in _READ_OPS and op.input:
                reads.add(op.input[0])
            elif op.type in _CREATE_OPS and op.output:
                creates.setdefault(op.output[0], []).append((net.name, i))
            elif op.type in _OTHER_QUEUE_CREATE and op.output:
                others.add(op.output[0])
    return writes, reads, creates, others


def split_task_group(task_group):
    """Split ``task_group`` by node (see the module docstring).

    Raises:
        NotSupportedError: a queue read on more than one node, written on
            more than one node and read on another, or a rebatching queue
            that crosses nodes.
    """
    from ..task import TaskOutputList
    # Node(name, num_cpus=...) kwargs were recorded in the cluster active
    # while the job was built
    node_kwargs = dict(Cluster.current().node_kwargs())
    with _proto.gc_paused():
        with Cluster():
            try:
                grouped = task_group.tasks_by_node()
            except GraphError as e:
                raise GraphError(
                    "RaySession cannot split this TaskGroup by node: it was grouped for "
                    "another session already (a LocalSession maps every node onto one); "
                    "build the group again for RaySession (%s)" % e) from e
        by_node = {}
        for t in task_group.tasks():
            by_node.setdefault(t.node, []).append(t.name)
        nodes = {}
        outputs = []
        for task in grouped.tasks():
            plan = core.Plan("%s/plan" % task.node)
            plan.AddStep(task.get_step())
            # a private copy: moving the queue creations must not edit the
            # user's nets (shared with every other compile of them)
            plandef = copy.deepcopy(plan.Proto())
            names = [str(n) for n in task.output_list().names()]
            nodes[task.node] = NodePlan(task.node, plandef, names, by_node.get(task.node, []))
            outputs += task.outputs()

    usage = {}
    scans = {node: _scan(np_.plandef) for node, np_ in nodes.items()}
    for node, (writes, reads, creates, others) in scans.items():
        for q in writes:
            usage.setdefault(q, [set(), set(), None])[0].add(node)
        for q in reads:
            usage.setdefault(q, [set(), set(), None])[1].add(node)
        for q, where in creates.items():
            u = usage.setdefault(q, [set(), set(), None])
            if u[2] is None:
                u[2] = (node,) + where[0]
    queues = []
    pops = []
    for q, (writers, readers, create) in usage.items():
        remote_readers = set(readers) - set(writers)
        if not remote_readers:
            continue
        if any(q in scans[n][3] for n in scans):
            raise NotSupportedError("queue %r is a rebatching queue used on nodes %s and %s: "
                                    "RaySession carries blob queues (CreateBlobsQueue) between "
                                    "nodes" % (q, sorted(writers), sorted(readers)))
        if len(writers) != 1 or len(readers) != 1:
            raise NotSupportedError(
                "queue %r is written on node(s) %s and read on node(s) %s: RaySession carries "
                "a queue from one writing node to one reading node (put the instances of a "
                "stage on one node: num_runtime_threads)"
                % (q, sorted(writers), sorted(readers)))
        if create is None:
            raise GraphError("queue %r crosses from node %s to %s but no node creates it"
                             % (q, next(iter(writers)), next(iter(readers))))
        pops.append((q, next(iter(writers)), next(iter(readers)), create))
    # pop the create ops, highest index first within a net
    for q, src, dst, (cnode, net_name, idx) in sorted(pops, key=lambda p: -p[3][2]):
        op = _pop_op(nodes[cnode].plandef, net_name, idx)
        cq = CrossQueue(q, src, dst, _num_blobs(op, q), op)
        queues.append(cq)
        nodes[src].bridge_creates.append(op)
        nodes[src].sends.append(cq)
        nodes[dst].bridge_creates.append(op)
        nodes[dst].recvs.append(cq)
        for u in usage.values():   # later pops in the same net moved down by one
            c = u[2]
            if c is not None and c[0] == cnode and c[1] == net_name and c[2] > idx:
                u[2] = (c[0], c[1], c[2] - 1)
    for u in usage.values():
        u[2] = tuple(u[2]) if u[2] is not None else None
    split = SplitJob(nodes, queues, TaskOutputList(outputs),
                     {q: (u[0], u[1], u[2]) for q, u in usage.items()})
    split.node_kwargs = {n: dict(node_kwargs.get(n) or {}) for n in nodes}
    return split
