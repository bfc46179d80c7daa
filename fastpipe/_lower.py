"""Lowering: the one place where a described job becomes a runnable one.

A job goes through four stages, each in one place:

1. **describe** -- the graph layer builds a description and touches no
   data: ``core`` (nets, ops, steps, plans), ``schema`` (records),
   ``net_builder``, the readers/writers of ``dataio``/``dataset``/
   ``queue_util``, ``task`` (Node, Task, TaskGroup, TaskOutput),
   ``pipeline`` (``pipe``) and ``checkpoint`` (Job).
2. **lower** -- this module turns a runnable (Net, ExecutionStep, Plan,
   Task or TaskGroup) into a :class:`CompiledJob`: every node of the group
   collapses onto one task, whose step becomes one ``Plan``; the job owns
   that plan, the task's outputs and, built lazily at its first run, the
   native ``Program`` -- ``_core.Program.from_plan(plan.Proto())``, which
   resolves every operator to its kernel and parses its arguments against
   its schema (``_opschema``) once.  That native half is
   ``fastpipe/_core/lower.pxi`` (``Program``; in ``api.pxi`` before the
   move to its own file).
3. **bind** -- at each run the native runtime compiles the program's nets
   into the session's workspace: blob names become ``Blob*`` slots
   (``fastpipe/_core/runtime.pxi``, ``net_compile``), in a child workspace
   per PRIVATE task and per runtime instance.
4. **run** -- the native executor runs the bound steps on native threads
   with the GIL released (``runtime.pxi``; ``Workspace.run_program`` in
   ``api.pxi`` drives it and turns its status into one exception).

A ``CompiledJob`` holds only description: its plan, its outputs and the
native program.  It never refers to a session or a workspace, so caching
it (``Session.compile`` keeps it on the runnable) keeps no data alive; the
workspace is passed in at each :meth:`CompiledJob.run`.

Threading: lowering may run on any thread; one ``CompiledJob`` may be run
from several threads (the native program is built once, under a lock).
"""

import threading
import weakref

from . import core
from . import proto as _proto
from .errors import GraphError, WorkspaceError
from .task import Cluster, Task, TaskGroup, WorkspaceType

__all__ = ["CompiledJob", "as_task_group", "lower_task_group"]


class CompiledJob(object):
    """A TaskGroup lowered for a LocalSession: what ``LocalSession.compile``
    puts in ``CompiledRunnable.obj``.

    Attributes:
        plan: the ``core.Plan`` of the group (one top-level step).
        output_list: the ``TaskOutputList`` of the group's outputs; they are
            bound to a workspace at each run.
        workspace_type: the WorkspaceType of the grouped task.

    The native program is lowered from ``plan`` once, at the first run, and
    reused by every later run (every epoch of a JobRunner), on any
    workspace.  Edits made to the plan after that are not seen.
    """

    def __init__(self, plan, output_list, workspace_type):
        self.plan = plan
        self.output_list = output_list
        self.workspace_type = workspace_type
        self._program = None
        self._program_lock = threading.Lock()  # protects the first build of _program
        # native workspace -> weakref to this job's latest Run on it: two runs
        # of one job on one workspace would share its queues (records lost)
        self._live = weakref.WeakKeyDictionary()
        self._live_lock = threading.Lock()     # protects _live

    def native_program(self):
        """The native ``_core.Program`` of the plan, lowered on first use."""
        program = self._program
        if program is None:
            from . import _core
            with self._program_lock:
                program = self._program
                if program is None:
                    with _proto.gc_paused():
                        program = _core.Program.from_plan(self.plan.Proto())
                    self._program = program
        return program

    def bind_outputs(self, ws, fetch_func):
        """Create every output blob in ``ws`` and point the TaskOutputs at
        them, fetching through ``fetch_func(blob_reference)``.

        Outputs must exist in the workspace the plan runs on, so that values
        written from child workspaces (PRIVATE tasks, runtime instances)
        land in it and survive the run."""
        outputs = []
        for name in self.output_list.names():
            ws.create_blob(str(name))
            outputs.append(core.BlobReference(str(name)))
        self.output_list.set_values(outputs, _fetch_func=fetch_func)

    def start(self, ws, fetch_func, **run_options):
        """Bind the outputs to ``ws`` and start the plan on it on native
        threads; returns the native ``_core.Run`` at once.

        The plan runs on ``ws`` whatever the group's workspace type (as in
        Caffe2, where the PRIVATE check never matched): isolation comes from
        the per-task ``create_workspace`` flag of each step."""
        program = self.native_program()
        native = ws._native
        with self._live_lock:
            ref = self._live.get(native)
            prev = ref() if ref is not None else None
            if prev is not None and not prev.done():
                raise WorkspaceError(
                    "job %r is already running on this workspace: two runs of one job "
                    "would share its queues and lose records; wait() for the previous run "
                    "or close() its iterator first" % self.plan.Proto().name)
            self.bind_outputs(ws, fetch_func)
            run = native.start_program(program, **run_options)  # profile, stall_*
            self._live[native] = weakref.ref(run)
        return run

    def run(self, ws, fetch_func):
        """``start(ws, fetch_func).wait()``: returns when the run finished
        (raises the run's error otherwise)."""
        self.start(ws, fetch_func).wait()

    def __repr__(self):
        return "CompiledJob(plan=%r, outputs=%d, workspace_type=%r, lowered=%s)" % (
            self.plan.Proto().name, len(self.output_list.names()),
            self.workspace_type, self._program is not None)


def as_task_group(runnable, workspace_type=None):
    """The TaskGroup a session runs for ``runnable``.

    A TaskGroup is returned as is (taking ``workspace_type`` if it has none;
    a different one raises).  A Task, ExecutionStep, Plan, Net or list of
    nets/steps is wrapped in a new group, GLOBAL unless ``workspace_type``
    says otherwise."""
    if isinstance(runnable, TaskGroup):
        if workspace_type:
            if runnable.workspace_type():
                if runnable.workspace_type() != workspace_type:
                    raise GraphError("Require %s but already have %s" % (
                        workspace_type, runnable.workspace_type()))
            else:
                runnable._workspace_type = workspace_type
        return runnable
    if workspace_type is None:
        workspace_type = WorkspaceType.GLOBAL
    tg = TaskGroup(workspace_type=workspace_type)
    if isinstance(runnable, Task):
        tg.add(runnable)
    elif isinstance(runnable, core.ExecutionStep):
        tg.add(Task(step=runnable))
    elif isinstance(runnable, core.Plan):
        steps = runnable.Steps()
        if not steps:
            raise GraphError("Cannot run an empty Plan %s" % runnable)
        tg.add(Task(step=steps[0] if len(steps) == 1 else list(steps)))
    else:
        tg.add(Task(step=core.execution_step("runnable", runnable)))
    return tg


def lower_task_group(task_group):
    """Lower ``task_group`` to a :class:`CompiledJob`: every node is mapped
    onto the active one (in a fresh Cluster) and the resulting task's step
    becomes the plan.  The native program is not built yet."""
    with _proto.gc_paused():
        with Cluster():
            task = task_group.to_task()
        plan = core.Plan("task_group_plan")
        plan.AddStep(task.get_step())
    return CompiledJob(plan, task.output_list(), task.workspace_type())
