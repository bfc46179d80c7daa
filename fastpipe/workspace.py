"""Caffe2's ``workspace`` module: a module-level current workspace and the
object API ``workspace.C.Workspace``.

Blobs go in and out as numpy arrays (``FeedBlob`` copies in, ``FetchBlob``
copies out; string tensors come back as arrays of ``bytes``).  Nets and
plans run on native threads with the GIL released; ``run`` raises
:class:`fastpipe.errors.RunError` (a ``RuntimeError``) naming the operator,
net and step when something fails, and ``KeyboardInterrupt`` within a second
of Ctrl-C.

Threading: any number of Python threads may call ``run`` on one workspace
at the same time; each call is its own run.
"""

import threading

import numpy as np

from fastpipe import _core
from fastpipe.errors import ArgumentError, BlobError, WorkspaceError

__all__ = ["FeedBlob", "FetchBlob", "HasBlob", "Blobs", "CreateBlob",
           "CreateNet", "RunNet", "RunNetOnce", "RunPlan", "RunOperatorOnce",
           "ResetWorkspace", "SwitchWorkspace", "CurrentWorkspace",
           "Workspaces", "StringifyBlobName", "StringifyNetName", "C"]


def _name(x):
    """A blob name from a str, bytes or BlobReference."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    return str(x)


def _net_def(net):
    if hasattr(net, "Proto"):
        return net.Proto()
    return net


def _plan_def(obj):
    """A PlanDef from a Plan, PlanDef, ExecutionStep or step proto."""
    from fastpipe import core
    from fastpipe import proto
    if isinstance(obj, proto.PlanDef):
        return obj
    if isinstance(obj, core.Plan):
        return obj.Proto()
    if isinstance(obj, core.ExecutionStep):
        plan = core.Plan(obj.Name() or "plan")
        plan.AddStep(obj)
        return plan.Proto()
    raise ArgumentError("expected a Net, NetDef, OperatorDef, Plan, PlanDef or "
                        "ExecutionStep, got %s" % type(obj).__name__)


def _ops_net_def(ops, name):
    """A NetDef named ``name`` holding ``ops`` (each must be an OperatorDef)."""
    from fastpipe import proto
    ops = list(ops)
    for op in ops:
        if not isinstance(op, proto.OperatorDef):
            raise ArgumentError("%s: expected an OperatorDef, got %s"
                                % (name, type(op).__name__))
    net = proto.NetDef(name=name)
    net.op.extend(ops)
    return net


class _Blob(object):
    """``ws.blobs[name]``: fetch/feed one blob."""

    __slots__ = ("_ws", "_name")

    def __init__(self, ws, name):
        self._ws = ws
        self._name = name

    def fetch(self):
        return self._ws._native.fetch(self._name)

    def feed(self, value, device_option=None):
        return self._ws._native.feed(self._name, value)

    def is_tensor(self):
        return self._ws._native.blob_kind(self._name) == "tensor"

    def tensor(self):
        return self

    @property
    def data(self):
        return self.fetch()


class _Blobs(object):
    """``ws.blobs``: a read-only mapping of visible blob names to _Blob."""

    __slots__ = ("_ws",)

    def __init__(self, ws):
        self._ws = ws

    def __getitem__(self, name):
        name = _name(name)
        if not self._ws._native.has_blob(name):
            raise BlobError("blob %r does not exist" % name)
        return _Blob(self._ws, name)

    def __contains__(self, name):
        return self._ws._native.has_blob(_name(name))

    def __iter__(self):
        return iter(self._ws._native.blob_names())

    def __len__(self):
        return len(self._ws._native.blob_names())

    def keys(self):
        return self._ws._native.blob_names()

    def items(self):
        return [(n, _Blob(self._ws, n)) for n in self.keys()]


class Workspace(object):
    """Caffe2's ``C.Workspace([parent])``.

    ``run(net | step | plan)`` runs to completion; ``blobs[name].fetch()``
    and ``.feed(array)``; ``create_blob(name)``; ``create_net(net)``.
    A child workspace sees its parent's blobs; an op output whose name
    already exists in the parent writes through to it.
    """

    current = None  # set below to the module's current workspace

    def __init__(self, parent=None):
        if parent is not None and not isinstance(parent, Workspace):
            raise ArgumentError("parent must be a Workspace, got %s" % type(parent).__name__)
        self._native = _core.Workspace(parent._native if parent is not None else None)
        self._parent = parent

    @property
    def blobs(self):
        return _Blobs(self)

    @property
    def nets(self):
        return {n: n for n in self._native.net_names()}

    def create_blob(self, name):
        self._native.create_blob(_name(name))
        return _Blob(self, _name(name))

    def has_blob(self, name):
        return self._native.has_blob(_name(name))

    def fetch_blob(self, name):
        return self._native.fetch(_name(name))

    def feed_blob(self, name, value):
        return self._native.feed(_name(name), value)

    def create_net(self, net, overwrite=False):
        self._native.create_net(_net_def(net), overwrite)
        return True

    def run(self, obj, num_iter=1):
        """Run a Net or an OperatorDef ``num_iter`` times (as Caffe2 creates
        and runs a Net with ``num_iter``), or an ExecutionStep or a Plan
        once.  Returns True; raises the run's error."""
        from fastpipe import core
        from fastpipe import proto
        if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)):
            raise ArgumentError("Workspace.run: num_iter must be an int, got %r" % (num_iter,))
        if num_iter < 0:
            raise ArgumentError("Workspace.run: num_iter=%d must be >= 0" % num_iter)
        if isinstance(obj, (core.Net, proto.NetDef)):
            return self._run_net_once(_net_def(obj), int(num_iter))
        if isinstance(obj, proto.OperatorDef):
            # Caffe2's C workspace runs a single operator (_run_operator)
            return self._run_net_once(_ops_net_def([obj], "run_operator"), int(num_iter))
        if num_iter != 1:
            raise ArgumentError("Workspace.run: num_iter=%d applies to a Net; a plan or "
                                "execution step sets its own iterations" % num_iter)
        return self._native.run_program(_core.Program.from_plan(_plan_def(obj)))

    def _run_net_once(self, net_def, num_iter=1):
        prog = _core.Program.from_plan(_single_net_plan(net_def, num_iter))
        # One pass of a net with no blocking op cannot hang: run it on this
        # thread.  Repeated passes run on the driver, so Ctrl-C stays prompt.
        inline = num_iter == 1 and not prog.has_blocking
        return self._native.run_program(prog, inline=inline)

    def reset(self):
        self._native.reset()


def _single_net_plan(net_def, num_iter=1):
    from fastpipe import proto
    plan = proto.PlanDef(name=net_def.name or "net")
    plan.network.extend([net_def])
    step = plan.execution_step.add()
    step.name = net_def.name or "net"
    step.network.append(net_def.name)
    if num_iter != 1:
        step.num_iter = num_iter
    return plan


class _C(object):
    """Namespace standing in for caffe2's ``workspace.C`` module."""

    Workspace = Workspace


C = _C()

_lock = threading.Lock()  # protects _workspaces and _current_name
_workspaces = {"default": Workspace()}
_current_name = "default"


def _ws():
    return _workspaces[_current_name]


def _sync_current():
    Workspace.current = _workspaces[_current_name]


_sync_current()


def SwitchWorkspace(name, create_if_missing=False):
    global _current_name
    name = _name(name)
    with _lock:
        if name not in _workspaces:
            if not create_if_missing:
                raise WorkspaceError("workspace %r does not exist (pass create_if_missing=True)"
                                     % name)
            _workspaces[name] = Workspace()
        _current_name = name
        _sync_current()
    return True


def CurrentWorkspace():
    return _current_name


def Workspaces():
    return sorted(_workspaces)


def ResetWorkspace(root_folder=None):
    """Drop every blob and net of the current workspace."""
    _ws().reset()
    return True


def FeedBlob(name, arr, device_option=None):
    return _ws()._native.feed(_name(name), arr)


def FetchBlob(name):
    return _ws()._native.fetch(_name(name))


def FetchBlobs(names):
    return [FetchBlob(n) for n in names]


def HasBlob(name):
    return _ws()._native.has_blob(_name(name))


def CreateBlob(name):
    _ws()._native.create_blob(_name(name))
    return True


def Blobs():
    return _ws()._native.blob_names()


def RemoveBlob(name):
    return _ws()._native.remove_blob(_name(name))


def CreateNet(net, overwrite=False, input_blobs=None):
    for b in input_blobs or ():
        CreateBlob(b)
    return _ws().create_net(net, overwrite)


def Nets():
    return _ws()._native.net_names()


def RunNet(name, num_iter=1, allow_fail=False):
    """Run a net created with CreateNet (by name or Net object)."""
    if hasattr(name, "Proto"):
        name = name.Proto().name
    return _ws()._native.run_net(_name(name), int(num_iter))


def RunNetOnce(net):
    return _ws()._run_net_once(_net_def(net))


def RunOperatorOnce(op):
    """Run one OperatorDef in the current workspace."""
    return _ws()._run_net_once(_ops_net_def([op], "run_operator_once"))


def RunOperatorsOnce(ops):
    """Run OperatorDefs in order, in the current workspace."""
    return _ws()._run_net_once(_ops_net_def(ops, "run_operators_once"))


def RunPlan(plan_or_step):
    return _ws().run(plan_or_step)


def StringifyBlobName(name):
    return _name(name)


def StringifyNetName(name):
    if hasattr(name, "Proto"):
        return name.Proto().name
    return _name(name)


def GetNameScope():
    from fastpipe import core
    return core.ScopedName("")
