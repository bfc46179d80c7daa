"""Tasks, task groups and nodes (Caffe2's ``caffe2.python.task``).

A :class:`Task` is one execution step plus outputs, placed on a
:class:`Node`; a :class:`TaskGroup` holds tasks that run concurrently.  A
session turns a group into one plan: every node gets one task
(``tasks_by_node``) whose step is ``[node init, concurrent task steps, node
exit]``.

``Task(num_instances=N)`` records N on one step (``num_concurrent_instances``);
the runtime makes the N instances, each in its own child workspace.  Nothing
here is cloned per instance.

This module only describes; ``fastpipe._lower`` turns a group into the
plan a session runs (see its docstring for the describe -> lower -> bind ->
run stages).

Threading: the contexts (``Cluster``, ``Node``, ``TaskGroup``, ``Task``) are
per-thread stacks; build a group from one thread.
"""

from collections import OrderedDict

from . import context, core, net_builder
from ._graph import registry as _graph_registry
from .errors import ArgumentError, GraphError
from .schema import Field, from_blob_list

__all__ = ["Cluster", "Node", "WorkspaceType", "Task", "TaskGroup",
           "TaskOutput", "TaskOutputList", "SetupNets", "final_output",
           "get_setup_nets", "add_setup_steps"]


def _merge_node_kwargs(a, b):
    if a is None:
        return b
    if b is None:
        return a
    merged = dict(a)
    merged.update(b)
    return merged


class Cluster(context.DefaultManaged):
    """Records the names of the nodes used while it is active, in order.

    A default Cluster exists per thread; ``LocalSession`` compiles inside a
    fresh one.
    """

    def __init__(self):
        self._nodes = []
        self._node_kwargs = {}

    def add_node(self, node):
        name = str(node)
        if name not in self._nodes:
            self._nodes.append(name)
        self._node_kwargs[name] = _merge_node_kwargs(
            node.kwargs(), self._node_kwargs.get(name))

    def nodes(self):
        """The node names used in this cluster, in first-use order."""
        return self._nodes

    def node_kwargs(self):
        return self._node_kwargs

    def __repr__(self):
        return "Cluster(nodes={}, node_kwargs={})".format(self._nodes, self._node_kwargs)


class Node(context.DefaultManaged):
    """Tasks created while a Node is active run on that node.  Only the
    name matters; creating a Node registers it in the active Cluster.

    Example::

        with TaskGroup() as tg:
            with Node('reader'):
                Task(step=read_step)
    """

    def __init__(self, node="local", **kwargs):
        self._name = str(node)
        self._kwargs = kwargs
        Cluster.current().add_node(self)

    def __str__(self):
        return self._name

    def __repr__(self):
        return "Node(name={}, kwargs={})".format(self._name, self._kwargs)

    def kwargs(self):
        return self._kwargs


class WorkspaceType(object):
    """PRIVATE tasks run in a fresh child workspace per run; GLOBAL tasks
    run in the node's (session's) workspace, which outlives the run."""

    PRIVATE = "private"
    GLOBAL = "global"


def _collect_setup_objects(key, steps_or_nets):
    objs = []
    for obj in steps_or_nets:
        if hasattr(obj, "get_all_attributes"):
            objs.extend(obj.get_all_attributes(key))
        elif hasattr(obj, "get_attributes"):
            objs.extend(obj.get_attributes(key))
    return objs


def _extend_setup(result, target_list, what):
    if isinstance(result, (list, tuple)):
        target_list.extend(result)
    elif isinstance(result, (core.Net, core.ExecutionStep)):
        target_list.append(result)
    elif result is not None:
        raise ArgumentError("Unsupported type for %s: %s" % (what, type(result)))


def get_setup_nets(key, steps_or_nets, target):
    """Collect the init and exit nets/steps of the objects stored under
    attribute ``key`` in the nets of ``steps_or_nets``.

    Each object (not yet ``_setup_used``, and whose ``_setup_target`` is
    ``target`` if it has one) gets ``setup(init_net)`` and/or
    ``exit(exit_net)`` called; they may add ops to the shared scratch nets
    ``<key>/init`` / ``<key>/exit`` or return a Net, a step, a list of
    them, or None.  Non-empty scratch nets come first.

    Returns:
        ``(init_nets, exit_nets)``; exits are in discovery order (not
        reversed).
    """
    init_net = core.Net(key + "/init")
    exit_net = core.Net(key + "/exit")
    init_nets = []
    exit_nets = []
    for obj in _collect_setup_objects(key, steps_or_nets):
        if getattr(obj, "_setup_used", False):
            continue
        if hasattr(obj, "_setup_target") and obj._setup_target is not target:
            continue
        if hasattr(obj, "setup"):
            _extend_setup(obj.setup(init_net), init_nets, "setup")
            obj._setup_used = True
        if hasattr(obj, "exit"):
            _extend_setup(obj.exit(exit_net), exit_nets, "exit")
            obj._setup_used = True
    if len(init_net.Proto().op) > 0:
        init_nets.insert(0, init_net)
    if len(exit_net.Proto().op) > 0:
        exit_nets.insert(0, exit_net)
    return init_nets, exit_nets


def add_setup_steps(step, init_nets, exit_nets, name):
    """``name`` = [``name:init``, step, ``name:exit``], skipping empty parts;
    returns ``step`` itself when there is no init and no exit."""
    if not init_nets and not exit_nets:
        return step
    steps = []
    if init_nets:
        steps.append(core.execution_step("%s:init" % name, init_nets))
    steps.append(step)
    if exit_nets:
        steps.append(core.execution_step("%s:exit" % name, exit_nets))
    return core.execution_step(name, steps)


class TaskGroup(context.Managed):
    """Tasks that run concurrently, possibly on several nodes.

    Tasks on one node share the node's workspace (PRIVATE tasks through a
    child workspace, so they share only what exists in the node workspace
    -- queues, ``local_init`` blobs, outputs).  The group finishes when its
    last task does.

    Example::

        with TaskGroup() as tg:
            Task(step=s1)
            with Node('n2'):
                Task(step=s2)
        LocalSession().run(tg)
    """

    LOCAL_SETUP = net_builder.LOCAL_SETUP

    def __init__(self, workspace_type=None):
        self._plan_cache = None
        self._tasks = []
        self._already_used = False
        self._prev_active = None
        self._tasks_to_add = []
        self._report_nets = {}
        self._report_steps = []
        self._workspace_type = workspace_type
        self._tasks_by_node = None
        self._remote_nets = []

    def add_remote_net(self, net):
        self._remote_nets.append(net)

    def remote_nets(self):
        return self._remote_nets

    def add(self, task):
        """Add ``task``: it takes the group's workspace type (or PRIVATE),
        its step is assembled and it can no longer change."""
        if self._already_used:
            raise GraphError("Cannot add Task to an already used TaskGroup.")
        if (self._workspace_type is not None and task._workspace_type is not None
                and self._workspace_type != task._workspace_type):
            raise GraphError(
                "Task %s has workspace type %r but its TaskGroup has %r"
                % (task.name, task._workspace_type, self._workspace_type))
        if task._workspace_type is None:
            task._workspace_type = self._workspace_type or WorkspaceType.PRIVATE
        if self._workspace_type is None:
            self._workspace_type = task._workspace_type
        task._notify_used()
        self._tasks.append(task)

    def tasks(self):
        """Flush pending tasks and return all of them; the group is then
        used and accepts no more tasks."""
        for task in self._tasks_to_add:
            self.add(task)
        self._tasks_to_add = []
        self._already_used = True
        return self._tasks

    def num_registered_tasks(self):
        return len(self._tasks_to_add) + len(self._tasks)

    def used_nodes(self):
        used = []
        for task in self._tasks + self._tasks_to_add:
            if task.node not in used:
                used.append(task.node)
        return used

    def report_step(self, step=None, node=None, interval_ms=1000):
        """Run ``step`` every ``interval_ms`` on ``node`` while the group
        runs there, and once more after its last task finished."""
        step = core.to_execution_step(step)
        step.RunEveryMillis(interval_ms)
        self._report_steps.append((str(node or Node.current(node)), step))

    def report_net(self, net=None, node=None, report_interval=5):
        """Deprecated: use report_step."""
        node = str(node or Node.current(node))
        if net is not None and node in self._report_nets:
            raise GraphError("A report net is already set for node %s" % node)
        if node not in self._report_nets:
            self._report_nets[node] = (
                net if net else core.Net("%s/reporter" % node), report_interval)
        return self._report_nets[node][0]

    def tasks_by_node(self, node_remap=None):
        """A new TaskGroup with one task per (remapped) node, named
        ``<node>/grouped_by_node``.  Memoised: calling again with a different
        node mapping raises."""
        node_map = {}
        for task in self.tasks():
            node_map[task.node] = node_remap(task.node) if node_remap else task.node
        if self._tasks_by_node is not None:
            grouped, prev_node_map = self._tasks_by_node
            if prev_node_map != node_map:
                raise GraphError(
                    "Cannot call tasks_by_node multiple times with different "
                    "node mappings (%r, then %r)." % (prev_node_map, node_map))
            return grouped

        for node, (net, interval) in self._report_nets.items():
            self.report_step(net, node=node, interval_ms=interval * 1000)
        self._report_nets = {}

        tasks_by_node = OrderedDict()
        for task in self.tasks():
            tasks_by_node.setdefault(node_map[task.node], []).append(task)
        report_steps_by_node = {}
        for original_node, step in self._report_steps:
            report_steps_by_node.setdefault(
                node_map.get(original_node, original_node), []).append(step)

        grouped_by_node = TaskGroup()
        for node, tasks in tasks_by_node.items():
            report_steps = report_steps_by_node.get(node, [])
            node_inits, node_exits = get_setup_nets(
                TaskGroup.LOCAL_SETUP,
                [t.get_step() for t in tasks] + report_steps, self)
            steps = list(report_steps)
            outputs = []
            grouped_workspace_type = WorkspaceType.PRIVATE
            for task in tasks:
                step = task.get_step()
                step.SetCreateWorkspace(
                    task.workspace_type() == WorkspaceType.PRIVATE)
                steps.append(step)
                outputs += task.outputs()
                if task.workspace_type() == WorkspaceType.GLOBAL:
                    grouped_workspace_type = WorkspaceType.GLOBAL
            if not steps:
                steps.append(core.execution_step("empty", []))
            if len(steps) == 1:
                step = steps[0]
            else:
                step = core.execution_step(
                    "%s:body" % node, steps, concurrent_substeps=True)
            step = add_setup_steps(step, node_inits, node_exits, node)
            Task(node=node, step=step, outputs=outputs, name="grouped_by_node",
                 group=grouped_by_node, workspace_type=grouped_workspace_type)
        self._tasks_by_node = (grouped_by_node, node_map)
        return grouped_by_node

    def to_task(self, node=None):
        """Map every node to ``node`` (default: the active Node) and return
        the single resulting task."""
        node = node if isinstance(node, str) else str(Node.current(node))
        tasks = self.tasks_by_node(lambda x: node).tasks()
        if not tasks:
            return Task()
        return tasks[0]

    def workspace_type(self):
        return self._workspace_type

    def __repr__(self):
        return "TaskGroup(tasks={}, workspace_type={}, remote_nets={})".format(
            self._tasks + self._tasks_to_add, self._workspace_type,
            self._remote_nets)


class TaskOutput(object):
    """The output of a task: a blob, a list of blobs, or a record.

    After a session ran the task, ``get()`` returns the session-side
    references and ``fetch()`` the values (numpy arrays, or a record of
    them).  An output does not keep the session that ran it alive: a
    LocalSession's outputs read its workspace through a weak reference, and
    ``fetch()`` raises ``fastpipe.session.SessionGoneError`` once the session
    and its workspace are gone.  Each run re-binds the outputs to the
    session that ran last.
    """

    def __init__(self, names):
        self._schema = None
        if isinstance(names, Field):
            self._schema = names
            names = self._schema.field_blobs()
        self._is_scalar = type(names) not in (tuple, list)
        if self._is_scalar:
            names = [names]
        self.names = names
        self._values = None
        self._fetch_func = None

    def set(self, values, _fetch_func=None):
        if len(values) != len(self.names):
            raise GraphError("TaskOutput.set: %d values for %d names"
                             % (len(values), len(self.names)))
        self._values = values
        self._fetch_func = _fetch_func

    def get(self):
        if self._values is None:
            raise GraphError("Output value not set yet.")
        if self._is_scalar:
            return self._values[0]
        if self._schema:
            return from_blob_list(self._schema, self._values)
        return self._values

    def fetch(self):
        if self._fetch_func is None:
            raise GraphError("Cannot fetch value for this output.")
        fetched = [self._fetch_func(v) for v in self._values]
        if self._is_scalar:
            return fetched[0]
        if self._schema:
            return from_blob_list(self._schema, fetched)
        return fetched

    def __repr__(self):
        return "TaskOutput(names={}, values={})".format(self.names, self._values)


def final_output(blob_or_record):
    """Add an output to the active Task; with no active Task, create a
    step-less Task (in the active TaskGroup) that returns it."""
    cur_task = Task.current(required=False) or Task()
    return cur_task.add_output(blob_or_record)


class TaskOutputList(object):
    """The outputs of one task, set together from a flat list of values."""

    def __init__(self, outputs=None):
        self.outputs = outputs or []

    def names(self):
        names = []
        for o in self.outputs:
            names += o.names
        return names

    def set_values(self, values, _fetch_func=None):
        offset = 0
        for o in self.outputs:
            num = len(o.names)
            o.set(values[offset:offset + num], _fetch_func)
            offset += num
        if offset != len(values):
            raise GraphError("Wrong number of output values: %d for %d names"
                             % (len(values), offset))

    def __repr__(self):
        return "TaskOutputList(outputs={})".format(self.outputs)


class Task(context.Managed):
    """One execution step plus outputs, placed on a node.

    Used as a context, a Task opens a NetBuilder named after the task; on a
    clean exit the builder becomes the task's step.  ``num_instances=N``
    runs N concurrent instances at run time, each in its own child
    workspace; the description is built once::

        with Node('trainer'), Task(name='my_task', num_instances=2):
            with ops.task_init():
                total = ops.Const(0)
            with ops.task_instance_init():
                local = ops.Const(0)
            with ops.loop(100):
                ops.Add([local, ops.Const(1)], [local])

    Instances share only blobs that exist above their workspace (task init
    blobs, queues, outputs).
    """

    TASK_SETUP = net_builder.TASK_SETUP
    TASK_INSTANCE_SETUP = net_builder.TASK_INSTANCE_SETUP
    REPORT_STEP = net_builder.REPORT_STEP
    _global_names_used = set()

    @staticmethod
    def _get_next_name(node, group, name):
        basename = str(node) + "/" + str(name)
        names_used = (Task._global_names_used if group is None
                      else set(t.name for t in group._tasks_to_add))
        cur_name = basename
        i = 0
        while cur_name in names_used:
            i += 1
            cur_name = "%s:%d" % (basename, i)
        return cur_name

    def __init__(self, step=None, outputs=None, workspace_type=None, group=None,
                 node=None, name=None, num_instances=None):
        if not name and isinstance(step, core.ExecutionStep):
            name = step.Proto().name
        if not name:
            name = "task"
        self.node = str(Node.current(None if node is None else Node(node)))
        self.group = TaskGroup.current(group, required=False)
        self.name = Task._get_next_name(self.node, self.group, name)
        if self.group is not None:
            self.group._tasks_to_add.append(self)
        self._already_used = False
        self._step = None
        self._step_with_setup = None
        self._outputs = []
        self._net_builder = None
        if step is not None:
            self.set_step(step)
        if outputs is not None:
            self.add_outputs(outputs)
        self._pipeline = None
        self._is_pipeline_context = False
        self._workspace_type = workspace_type
        self._report_net = None
        if num_instances is not None and (
                not isinstance(num_instances, int) or isinstance(num_instances, bool)
                or num_instances < 1):
            raise GraphError("Task %s: num_instances=%r must be an int >= 1"
                             % (self.name, num_instances))
        self._num_instances = num_instances

    def __enter__(self):
        self._assert_not_used()
        if self._step is not None:
            raise GraphError("This Task already has an execution step.")
        super(Task, self).__enter__()
        # temporarily remove from the pending list to keep the order right
        if self.group is not None:
            self.group._tasks_to_add.remove(self)
        self._net_builder = net_builder.NetBuilder(_fullname=self.name)
        self._net_builder.__enter__()
        return self

    def __exit__(self, etype, value, traceback):
        builder, self._net_builder = self._net_builder, None
        try:
            builder.__exit__(etype, value, traceback)
        finally:
            super(Task, self).__exit__(etype, value, traceback)
            if self.group is not None:
                self.group._tasks_to_add.append(self)
        if etype is None:
            self.set_step(builder)

    def workspace_type(self):
        return self._workspace_type

    def num_instances(self):
        return self._num_instances

    def _assert_not_used(self):
        if self._already_used:
            raise GraphError("Cannot modify task %s since it has already been used."
                             % self.name)

    def add_output(self, output):
        """Add one output (blob, record or TaskOutput); returns the TaskOutput."""
        self._assert_not_used()
        if not isinstance(output, TaskOutput):
            output = TaskOutput(output)
        self._outputs.append(output)
        return output

    def add_outputs(self, outputs):
        self._assert_not_used()
        if type(outputs) not in (list, tuple):
            return self.add_output(outputs)
        return [self.add_output(o) for o in outputs]

    def set_step(self, step):
        self._assert_not_used()
        self._step = core.to_execution_step(step)

    def get_step(self):
        """The task's full step (memoised):
        ``<task>`` = [``:init``, ``%s:parallel``/instance step, ``:exit``]."""
        if self._step_with_setup is not None:
            return self._step_with_setup
        if self._step is None:
            self._step_with_setup = core.execution_step(self.name, [])
            return self._step_with_setup

        report_steps = [s for s in self._step.get_all_attributes(Task.REPORT_STEP)
                        if not getattr(s, "_report_step_used", False)]
        for step in report_steps:
            step._report_step_used = True
            if not step.Proto().run_every_ms:
                step.RunEveryMillis(1000)
        task_init_nets, task_exit_nets = get_setup_nets(
            Task.TASK_SETUP, [self._step] + report_steps, self)
        instance_init_nets, instance_exit_nets = get_setup_nets(
            Task.TASK_INSTANCE_SETUP, [self._step] + report_steps, self)
        if not self._outputs:
            output_net = core.Net("%s:output" % self.name)
            self.add_output(output_net.ConstantFill(
                [], 1, dtype=core.DataType.INT32, value=0))
            task_exit_nets.append(output_net)

        body = self._step if not report_steps else core.execution_step(
            "%s:body" % self.name, report_steps + [self._step])
        with_instance_setup = add_setup_steps(
            body, instance_init_nets, instance_exit_nets, self.name + ":instance")
        if self._num_instances and self._num_instances > 1:
            with_instance_setup.SetCreateWorkspace(True)
            # the name is literally '%s:parallel', as in Caffe2
            with_instance_setup = core.execution_step(
                "%s:parallel", [with_instance_setup],
                num_concurrent_instances=self._num_instances)
        self._step_with_setup = add_setup_steps(
            with_instance_setup, task_init_nets, task_exit_nets, self.name)
        return self._step_with_setup

    def output_list(self):
        return TaskOutputList(self._outputs)

    def outputs(self):
        return self._outputs

    def _notify_used(self):
        self.get_step()
        self._already_used = True

    def __repr__(self):
        return "Task(name={}, node={}, outputs={})".format(
            self.name, self.node, self._outputs)


class SetupNets(object):
    """Fixed init/exit nets attached to a net under ``Task.TASK_SETUP`` or
    ``TaskGroup.LOCAL_SETUP``; they run once per Task/TaskGroup run::

        net.add_attribute(Task.TASK_SETUP, SetupNets([init_net], [exit_net]))
    """

    def __init__(self, init_nets=None, exit_nets=None):
        self.init_nets = init_nets
        self.exit_nets = exit_nets

    def setup(self, init_net):
        return self.init_nets

    def exit(self, exit_net):
        return self.exit_nets

    def __repr__(self):
        return "SetupNets(init_nets={}, exit_nets={})".format(
            self.init_nets, self.exit_nets)


# net_builder (below this module) finds the active TaskGroup through the
# graph registry.
_graph_registry.register_task_group_class(TaskGroup)
