"""Execution steps and plans."""

import threading
from collections import OrderedDict

from .. import proto as _proto
from ..errors import ArgumentError, GraphError
from . import registry as _registry
from .blob import BlobReference
from .net import Net, _unique_name
from .scope import ScopedName


# ---------------------------------------------------------------------------
# Execution steps and plans


def get_net_name(netlike):
    if isinstance(netlike, Net):
        return netlike._net.name
    if isinstance(netlike, _proto.NetDef):
        return netlike.name
    return netlike


def output_to_list(op_output):
    """One BlobReference or an iterable of them, as a list."""
    if isinstance(op_output, BlobReference):
        return [op_output]
    if isinstance(op_output, (list, tuple)):
        return list(op_output)
    raise GraphError("expected a BlobReference, list or tuple, got %r" % (op_output,))


def _add_net_to_dict(net_dict, net):
    name = get_net_name(net)
    if name in net_dict:
        existing = net_dict[name]
        if existing is not None and existing is not net:
            raise GraphError("Different nets with same name: %s" % name)
        return False
    net_dict[name] = net if isinstance(net, Net) else None
    return True


class ExecutionStep(object):
    """Control structure over nets or substeps (never both).

    Holds an ExecutionStep proto plus an ordered name -> Net map for the
    whole subtree.  Once the step has been added to another step or a plan
    it is *used*: its proto was copied at that moment, and setters raise
    :class:`fastpipe.errors.GraphError`.
    """

    _step_names_used = set()
    _step_name_next_idx = {}
    _names_lock = threading.Lock()  # protects the two tables above

    @staticmethod
    def _get_next_step_name(basename):
        with ExecutionStep._names_lock:
            return _unique_name(basename, ExecutionStep._step_names_used,
                                ExecutionStep._step_name_next_idx)

    def __init__(self, name, nets=None, num_iter=None):
        self._step = _proto.ExecutionStep()
        self._step.name = name or ExecutionStep._get_next_step_name("step")
        self._net_dict = OrderedDict()
        self._is_used = False
        self._substeps = []
        if nets is not None:
            if isinstance(nets, (Net, _proto.NetDef, str)):
                nets = [nets]
            network = self._step.network
            for net in nets:
                if _add_net_to_dict(self._net_dict, net):
                    network.append(get_net_name(net))
        if num_iter is not None:
            self._step.num_iter = num_iter

    def get_net(self, name):
        return self._net_dict[name]

    def Name(self):
        return self._step.name

    def __str__(self):
        return self._step.name

    def __repr__(self):
        return "ExecutionStep(%r)" % self._step.name

    def _assert_can_mutate(self):
        if self._is_used:
            raise GraphError("Cannot mutate step %r: it has already been added "
                             "to a plan/step." % self._step.name)

    def _notify_is_used(self):
        self._is_used = True

    def IsUsed(self):
        return self._is_used

    def Proto(self):
        return self._step

    def HasNets(self):
        return len(self._step.network) > 0

    def HasSubsteps(self):
        return len(self._step.substep) > 0

    def Nets(self):
        return list(self._net_dict.values())

    def Substeps(self):
        return self._substeps

    def SetIter(self, num_iter):
        self._assert_can_mutate()
        self._step.num_iter = num_iter

    def SetCreateWorkspace(self, create_workspace):
        self._assert_can_mutate()
        self._step.create_workspace = bool(create_workspace)

    def SetNumConcurrentInstances(self, num_concurrent_instances):
        self._assert_can_mutate()
        self._step.num_concurrent_instances = num_concurrent_instances

    def SetOnlyOnce(self, only_once):
        self._assert_can_mutate()
        self._step.only_once = bool(only_once)

    def SetShouldStopBlob(self, should_stop_blob):
        if not isinstance(should_stop_blob, (BlobReference, str)):
            raise GraphError("expects BlobReference here, got %s"
                             % type(should_stop_blob).__name__)
        self._assert_can_mutate()
        self._step.should_stop_blob = str(should_stop_blob)

    def RunEveryMillis(self, interval):
        """Make this step a reporter: it runs every ``interval`` ms while its
        siblings run, plus once after they finish.  (As in Caffe2 this
        setter is not blocked on a used step, but a used step's proto was
        already copied, so it has no effect there.)"""
        self._step.run_every_ms = interval

    def SetReportNet(self, report_net, report_interval):
        """Deprecated: use RunEveryMillis."""
        self._assert_can_mutate()
        _add_net_to_dict(self._net_dict, report_net)
        self._step.report_net = get_net_name(report_net)
        self._step.report_interval = report_interval

    def AddSubstep(self, substep):
        """Append a copy of ``substep``'s proto as it is now; marks it used.
        An empty step (no nets, no substeps) is silently dropped."""
        self._assert_can_mutate()
        if self.HasNets():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        if isinstance(substep, ExecutionStep):
            substep._notify_is_used()
            if not substep.HasNets() and not substep.HasSubsteps():
                return self
            for name, net in substep._net_dict.items():
                if net is None:  # known only by name
                    self._net_dict.setdefault(name, None)
                else:
                    _add_net_to_dict(self._net_dict, net)
            self._substeps.append(substep)
            proto = substep._step
        elif isinstance(substep, _proto.ExecutionStep):
            proto = substep
        else:
            raise GraphError("AddSubstep expects an ExecutionStep, got %r" % (substep,))
        self._step.substep.append(proto._copy())
        return self

    def SetConcurrentSubsteps(self, concurrent_substeps):
        self._assert_can_mutate()
        if self.HasNets():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        self._step.concurrent_substeps = bool(concurrent_substeps)

    def AddNet(self, net):
        """Append ``net`` (the same net may appear, and run, several times)."""
        self._assert_can_mutate()
        if self.HasSubsteps():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        if not isinstance(net, Net):
            raise GraphError("AddNet expects a Net, got %r" % (net,))
        _add_net_to_dict(self._net_dict, net)
        self._step.network.append(net._net.name)
        return self

    def get_all_attributes(self, name):
        """Attributes ``name`` of every net in the subtree, in first-use order."""
        return [attr for net in self._net_dict.values() if net is not None
                for attr in net.get_attributes(name)]

    @classmethod
    def create_from_proto(cls, step_proto, net_obj_dict, net_proto_dict):
        """Rebuild an ExecutionStep (and Nets) from protos."""
        if bool(step_proto.network) == bool(step_proto.substep):
            raise GraphError("step %r must have either nets or substeps"
                             % step_proto.name)
        items = []
        if step_proto.substep:
            for sub in step_proto.substep:
                items.append(cls.create_from_proto(sub, net_obj_dict, net_proto_dict))
        else:
            for net_name in step_proto.network:
                if net_name not in net_obj_dict:
                    if net_name not in net_proto_dict:
                        raise GraphError("step %r uses unknown net %r"
                                         % (step_proto.name, net_name))
                    net_obj_dict[net_name] = Net(net_proto_dict[net_name])
                items.append(net_obj_dict[net_name])
        has = step_proto.HasField
        return execution_step(
            step_proto.name, items,
            num_iter=step_proto.num_iter if has("num_iter") else None,
            concurrent_substeps=(step_proto.concurrent_substeps
                                 if has("concurrent_substeps") else None),
            should_stop_blob=(BlobReference(step_proto.should_stop_blob)
                              if has("should_stop_blob") else None),
            only_once=step_proto.only_once if has("only_once") else None,
            num_concurrent_instances=(step_proto.num_concurrent_instances
                                      if has("num_concurrent_instances") else None),
            create_workspace=(step_proto.create_workspace
                              if has("create_workspace") else False),
            run_every_ms=step_proto.run_every_ms if has("run_every_ms") else None)


def add_nets_in_order(step, net_list, _seen=None):
    """Append to ``net_list`` the names of nets used by ``step``, in order of
    first use (substeps first, then own nets, then the report net)."""
    if _seen is None:
        _seen = set(net_list)   # membership in O(1): plans hold 10^4 nets
    proto = step.Proto()
    for sub in step.Substeps():
        add_nets_in_order(sub, net_list, _seen)
    for name in proto.network:
        if name not in _seen:
            _seen.add(name)
            net_list.append(name)
    if proto.report_net and proto.report_net not in _seen:
        _seen.add(proto.report_net)
        net_list.append(proto.report_net)


class Plan(object):
    """A PlanDef: top-level steps plus a copy of every NetDef they use.

    ``AddStep`` copies the step proto and the NetDefs at that moment; later
    edits to the nets are not seen by the plan.
    """

    def __init__(self, name_or_step):
        self._plan = _proto.PlanDef()
        self._net_dict = OrderedDict()
        self._steps = []
        if isinstance(name_or_step, ExecutionStep):
            self._plan.name = name_or_step.Name()
            self.AddStep(name_or_step)
        elif isinstance(name_or_step, str):
            self._plan.name = name_or_step
        else:
            raise ArgumentError("name_or_step must be a string or ExecutionStep")

    def __str__(self):
        return self._plan.name

    def Name(self):
        return self._plan.name

    def Proto(self):
        return self._plan

    def AddNets(self, nets):
        for net in nets:
            if _add_net_to_dict(self._net_dict, net):
                if not isinstance(net, Net):
                    raise GraphError("Plan.AddNets expects Nets, got %r" % (net,))
                self._plan.network.append(net._net._copy())

    def Nets(self):
        return list(self._net_dict.values())

    def AddStep(self, step):
        """Append a copy of ``step`` (empty steps are ignored) and copies of
        the nets it uses, in order of first use."""
        if not isinstance(step, ExecutionStep):
            raise GraphError("Plan.AddStep expects an ExecutionStep, got %r" % (step,))
        step._notify_is_used()
        if not step.HasNets() and not step.HasSubsteps():
            return
        with _proto.gc_paused():
            self._plan.execution_step.append(step._step._copy())
            self._steps.append(step)
            names = []
            add_nets_in_order(step, names)
            self.AddNets([step.get_net(n) for n in names])

    def Steps(self):
        return self._steps

    def get_all_attributes(self, name):
        return [attr for net in self._net_dict.values()
                for attr in net.get_attributes(name)]

    @classmethod
    def create_from_proto(cls, plan_proto):
        plan = Plan(plan_proto.name)
        net_obj_dict = {}
        net_proto_dict = {}
        for net_proto in plan_proto.network:
            if net_proto.name in net_proto_dict:
                raise GraphError("duplicate net %r in plan" % net_proto.name)
            net_proto_dict[net_proto.name] = net_proto
        for step_proto in plan_proto.execution_step:
            plan.AddStep(ExecutionStep.create_from_proto(
                step_proto, net_obj_dict, net_proto_dict))
        return plan




def to_execution_step(step_or_nets, default_name=None):
    """A step as is; a NetBuilder as a step named after it with its children
    (and its stop blob as ``should_stop_blob``); otherwise
    ``execution_step(default_name, step_or_nets)``."""
    if isinstance(step_or_nets, ExecutionStep):
        return step_or_nets
    stop_blob = None
    if not default_name and hasattr(step_or_nets, "name"):
        default_name = step_or_nets.name
    nb_cls = _registry.builder_class()
    if nb_cls is not None and isinstance(step_or_nets, nb_cls):
        stop_blob = step_or_nets._stop_blob
        step_or_nets = step_or_nets.get()
    return execution_step(default_name, step_or_nets, should_stop_blob=stop_blob)


def execution_step(default_name, steps_or_nets, num_iter=None, report_net=None,
                   report_interval=None, concurrent_substeps=None,
                   should_stop_blob=None, only_once=None,
                   num_concurrent_instances=None, create_workspace=False,
                   run_every_ms=None):
    """Build an ExecutionStep.

    ``steps_or_nets`` may be None/empty, a Net, an ExecutionStep (it becomes
    the only substep), a list of Nets (the step's nets) or a mixed list
    (each item goes through :func:`to_execution_step` and becomes a
    substep).  Without ``should_stop_blob`` and ``num_iter`` the step runs
    once (``num_iter=1``); giving both raises GraphError.
    """
    if should_stop_blob is not None and num_iter is not None:
        raise GraphError("Cannot set both should_stop_blob and num_iter.")
    if should_stop_blob is None and num_iter is None:
        num_iter = 1
    step = ExecutionStep(default_name)
    if should_stop_blob is not None:
        step.SetShouldStopBlob(should_stop_blob)
    if num_iter is not None:
        step.SetIter(num_iter)
    if only_once is not None:
        step.SetOnlyOnce(only_once)
    if concurrent_substeps is not None:
        step.SetConcurrentSubsteps(concurrent_substeps)
    if report_net is not None:
        if report_interval is None:
            raise GraphError("report_net needs report_interval")
        step.SetReportNet(report_net, report_interval)
    if num_concurrent_instances is not None:
        step.SetNumConcurrentInstances(num_concurrent_instances)
    if create_workspace:
        step.SetCreateWorkspace(True)
    if run_every_ms:
        step.RunEveryMillis(run_every_ms)

    if isinstance(steps_or_nets, ExecutionStep):
        step.AddSubstep(steps_or_nets)
    elif isinstance(steps_or_nets, Net):
        step.AddNet(steps_or_nets)
    elif isinstance(steps_or_nets, list):
        if all(isinstance(x, Net) for x in steps_or_nets):
            for x in steps_or_nets:
                step.AddNet(x)
        else:
            for x in steps_or_nets:
                step.AddSubstep(to_execution_step(x))
    elif steps_or_nets:
        raise ArgumentError(
            "steps_or_nets must be a step, a net, or a list of nets or steps.")
    return step


def scoped_execution_step(name, *args, **kwargs):
    """execution_step() with the step name under the current NameScope."""
    default_name = ScopedName(name) if name else name
    return execution_step(default_name, *args, **kwargs)
