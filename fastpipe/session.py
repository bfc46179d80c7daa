"""Sessions run Nets, ExecutionSteps, Plans, Tasks and TaskGroups
(Caffe2's ``caffe2.python.session``).

A session compiles a runnable once (the result is cached per runnable
object for the life of the process, so edits made after the first run are
not seen) and runs the compiled form as often as asked.

:class:`LocalSession` is the embedded default: every node collapses onto
one, the group becomes a single plan, and the plan runs on the session's
workspace on native threads.
"""

import threading
import weakref

from . import core
from . import proto as _proto
from .errors import GraphError
from .task import Cluster, Task, TaskGroup, WorkspaceType

__all__ = ["CompiledRunnable", "Session", "LocalSession"]


class CompiledRunnable(object):
    """What ``Session.compile`` returns: the compiled object and the session
    class it was compiled for."""

    def __init__(self, obj, session_class):
        self.obj = obj
        self.session_class = session_class


class Session(object):
    """Runs TaskGroups (and anything that can be wrapped in one).

    A Net, ExecutionStep, Plan or Task is wrapped in a new TaskGroup, GLOBAL
    unless ``workspace_type`` says otherwise.  Tasks on one node share the
    node's workspace; PRIVATE tasks run in a child workspace created for
    each run.

    Threading: ``compile`` may be called from any thread (the cache has a
    lock); one session object should be driven by one thread at a time.

    Example::

        with LocalSession() as session:
            session.run(task_group)
    """

    # (session class, id(runnable)) -> (weak ref to runnable, CompiledRunnable).
    # An entry goes when its runnable dies (the ref's callback, before the id
    # can be reused): a compiled runnable's outputs point at the session, and
    # so at its workspace and data, which must not outlive the job.
    _compiled_cache = {}
    _compiled_cache_lock = threading.Lock()

    def __init__(self):
        self._open = True

    def is_open(self):
        return self._open

    @classmethod
    def compile(cls, runnable, workspace_type=None, setup_net_list=None):
        """Compile ``runnable`` for this session class (cached by identity)."""
        if isinstance(runnable, CompiledRunnable):
            if runnable.session_class is not cls:
                raise GraphError(
                    "Runnable was compiled for a different session type. "
                    "Need: %s, got: %s" % (cls.__name__,
                                           runnable.session_class.__name__))
            return runnable
        key = (cls, id(runnable))
        with Session._compiled_cache_lock:
            hit = Session._compiled_cache.get(key)
        if hit is not None and hit[0]() is runnable:
            return hit[1]

        if isinstance(runnable, TaskGroup):
            if workspace_type:
                if runnable.workspace_type():
                    if runnable.workspace_type() != workspace_type:
                        raise GraphError("Require %s but already have %s" % (
                            workspace_type, runnable.workspace_type()))
                else:
                    runnable._workspace_type = workspace_type
            tg = runnable
        else:
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
        with _proto.gc_paused():
            compiled = CompiledRunnable(cls._compile_task_group(tg, setup_net_list),
                                        session_class=cls)
        with Session._compiled_cache_lock:
            Session._compiled_cache[key] = (weakref.ref(
                runnable, lambda _, k=key: Session._compiled_cache.pop(k, None)), compiled)
        return compiled

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
        raise NotImplementedError()

    def _run_compiled(self, task_group):
        raise NotImplementedError()

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
    """

    def __init__(self, ws=None):
        Session.__init__(self)
        if ws is None:
            from . import workspace
            ws = workspace.C.Workspace.current
        self._ws = ws

    @classmethod
    def _compile_task_group(cls, task_group, setup_net_list=None):
        with Cluster():
            task = task_group.to_task()
        plan = core.Plan("task_group_plan")
        plan.AddStep(task.get_step())
        # The native program is lowered from the plan once, at the first run,
        # and reused by every later run (every epoch of a JobRunner).
        return (plan, task.output_list(), task.workspace_type(), [None])

    def _run_compiled(self, compiled):
        plan, output_list, _workspace_type, program = compiled
        # The plan runs on the session workspace whatever the group's type
        # (as in Caffe2, where the PRIVATE check never matched): isolation
        # comes from per-task create_workspace.  Outputs must exist here so
        # that writes from child workspaces land in this one.
        outputs = []
        for name in output_list.names():
            self._ws.create_blob(str(name))
            outputs.append(core.BlobReference(str(name)))
        output_list.set_values(outputs, _fetch_func=self._fetch_output)
        if program[0] is None:
            from . import _core
            with _proto.gc_paused():
                program[0] = _core.Program.from_plan(plan.Proto())
        self._ws._native.run_program(program[0])

    def _fetch_output(self, output):
        return self._ws.blobs[str(output)].fetch()
