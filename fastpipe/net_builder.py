"""Scope-driven building of nets, loops and conditionals (Caffe2's
``caffe2.python.net_builder``).

A :class:`NetBuilder` is a thread-local context that collects an ordered
list of children -- nets, execution steps and child builders.  While a
builder is active, the module-level :data:`ops` object forwards any
operator call to the builder's *current net*, creating one when needed::

    from fastpipe.net_builder import NetBuilder, ops

    with NetBuilder() as nb:
        c = ops.Const(5)
        with ops.loop():
            ops.stop_if(ops.LE([c, ops.Const(0)]))
            ops.Add([c, ops.Const(-1)], [c])
    step = core.to_execution_step(nb)

A builder becomes an execution step with ``core.to_execution_step``; a
builder that acquired a stop blob (through ``ops.stop``/``ops.stop_if``)
becomes a *loop* that runs until that blob is true, checked after each of
its children.  Run-once builders (``If``, ``stop_guard``) therefore append
an unconditional ``stop()`` when they acquired a stop blob.

Threading: builders are per-thread contexts; building is not thread-safe
across threads sharing one builder.  Nothing here touches data.
"""

from . import context, core
from ._graph import registry as _graph_registry
from .errors import AttributeNotFoundError, GraphError, NotSupportedError

__all__ = ["NetBuilder", "Operations", "ops"]


def _new_net(name=None):
    """A new Net named ``<active builder>/<name>`` (or the builder's name)."""
    return core.Net(name if name else "")


class NetBuilder(context.Managed):
    """Collects nets, steps and child builders in order.

    Args:
        name: joined to the parent builder's name with ``/``.
        initial_scope: blobs available for reading and writing (kept for
            compatibility; only control-op builders use it in Caffe2).
        _stop_blob_required: exiting without a stop blob raises.
        _stop_blob: use this blob as the stop blob.
        _fullname: the full name, instead of ``parent/name``.
        _use_control_ops: not supported (If/While operators).
    """

    def __init__(self, name=None, initial_scope=None, _stop_blob_required=False,
                 _stop_blob=None, _fullname=None, _use_control_ops=False):
        if _fullname and name:
            raise GraphError("Cannot set both _fullname and name")
        if _use_control_ops:
            raise NotSupportedError(
                "NetBuilder(_use_control_ops=True) needs the If/While "
                "operators, which fastpipe does not provide")
        parent = NetBuilder.current(required=False)
        self.name = _fullname or "/".join(
            n for n in (parent.name if parent else None, name) if n)
        self._frozen = False
        self._current_net = None
        self._children = []
        self._init_lexical_scope = set(str(b) for b in (initial_scope or ()))
        self._stop_blob = _stop_blob
        self._stop_blob_required = _stop_blob_required
        self._use_control_ops = False

    # -- stop blob ------------------------------------------------------------

    def stop_blob(self):
        """The BlobReference of this builder's stop blob, created on demand.

        It is set to false in the current net (so each iteration starts
        with "not stopped"); if the current net is not the first child, a
        ``stop_blob_init`` net that also sets it false becomes the first
        child, so the blob exists before the step is compiled.
        """
        if self._stop_blob is None:
            net = self.current_net()
            self._stop_blob = core.BlobReference(net.NextName("stop_blob"), net=net)
            net.Const(False, blob_out=self._stop_blob)
            if self._current_net is not self._children[0]:
                init = core.Net("stop_blob_init")
                init.Const(False, blob_out=self._stop_blob)
                self._children.insert(0, init)
        return self._stop_blob

    def stop_if(self, blob):
        """stop = stop OR blob; then end the current net so the executor's
        stop check (after each net) runs right after it."""
        stop_blob = self.stop_blob()
        self.current_net().Or([stop_blob, blob], [stop_blob])
        self._current_net = None

    # -- children -------------------------------------------------------------

    def _assert_mutable(self):
        if self._frozen:
            raise GraphError("This NetBuilder (%s) has been built already."
                             % self.name)

    def add(self, child):
        """Append a child (Net, ExecutionStep or NetBuilder) and return it.

        A Net child becomes the current net; anything else ends the current
        net, so later ops go to a new net after the child.
        """
        self._assert_mutable()
        self._current_net = None
        self._children.append(child)
        if isinstance(child, core.Net):
            self._current_net = child
        return child

    def current_net(self, name=None):
        """The current net; a new one is created (and appended) when there
        is none or when ``name`` is given."""
        self._assert_mutable()
        if self._current_net is None or name is not None:
            self.add(_new_net(name))
        return self._current_net

    def freeze(self):
        for child in self._children:
            if hasattr(child, "freeze"):
                child.freeze()
        self._current_net = None
        self._frozen = True

    def get(self):
        """Freeze the builder and return its children."""
        self.freeze()
        return self._children

    def __exit__(self, etype, *args):
        super(NetBuilder, self).__exit__(etype, *args)
        self.freeze()
        if etype is not None:
            return
        if self._stop_blob_required and self._stop_blob is None:
            raise GraphError(
                "This NetBuilder (%s) requires a stop condition to be set "
                "with `stop` or `stop_if`" % self.name)

    def __str__(self):
        return self.name or "Un-named NetBuilder"

    def __repr__(self):
        return "NetBuilder(name=%r, children=%d)" % (self.name, len(self._children))


class Operations(object):
    """Operations available inside an active NetBuilder (see :data:`ops`).

    Any attribute that is not one of the methods below is forwarded to the
    active builder's current net, so ``ops.Copy(a, b)``, ``ops.Const(1)``,
    ``ops.NextScopedBlob('x')`` and ``ops.Python(f)`` all work.  With no
    active builder such attributes raise AttributeNotFoundError (so ``hasattr`` is
    false).
    """

    def net(self, net=None, name=None):
        """Add ``net`` to the active builder and return it; without ``net``,
        return the current net (a new one named ``name`` if given)."""
        if name is not None and net is not None:
            raise GraphError("Cannot provide both `net` and `name`.")
        if net is not None:
            NetBuilder.current().add(net)
            return net
        return NetBuilder.current().current_net(name=name)

    def __getattr__(self, op_type):
        if op_type.startswith("__"):
            raise AttributeNotFoundError(op_type)
        if NetBuilder.current(required=False) is None:
            raise AttributeNotFoundError("No active NetBuilder (looking up %r)." % op_type)
        return getattr(self.net(), op_type)

    def task_group(self):
        raise NotSupportedError(
            "ops.task_group() is not supported (it is broken in Caffe2 too)")

    def stop(self):
        """Stop the current execution step (after the current net)."""
        return self.stop_if(self.Const(True))

    def stop_if(self, blob):
        """Stop the current execution step if the bool blob is true."""
        return NetBuilder.current().stop_if(blob)

    def loop(self, iters=None, name=None):
        """A child builder run in a loop.  With ``iters`` (an int or a blob)
        it stops after that many iterations; otherwise it must call
        ``ops.stop``/``ops.stop_if``.  ``.iter()`` gives the counter blob."""
        return NetBuilder.current().add(_Loop(iters, name=name))

    def stop_guard(self, has_stopped_blob=None, name=None):
        """A child builder run once; ``.has_stopped()`` is a bool blob that
        tells whether it was halted early with ``stop``/``stop_if``."""
        return NetBuilder.current().add(
            _StopGuard(has_stopped_blob=has_stopped_blob, name=name))

    def If(self, cond, name=None):
        """A child builder run once iff ``cond`` is true.  ``.Elif(c)`` and
        ``.Else()`` on the result must follow immediately."""
        return NetBuilder.current().add(_RunIf(cond, name=name))

    def IfNet(self, cond, name=None):
        raise NotSupportedError("ops.IfNet needs the If operator (not provided)")

    def Else(self, name=None):
        raise NotSupportedError(
            "ops.Else() belongs to IfNet (not provided); use ops.If(c).Else()")

    def WhileNet(self, name=None):
        raise NotSupportedError("ops.WhileNet needs the While operator (not provided)")

    def Condition(self, name=None):
        raise NotSupportedError("ops.Condition belongs to WhileNet (not provided)")

    def _setup(self, key, kind, name=None):
        setup = _SetupBuilder(kind, name)
        self.net().add_attribute(key, setup)
        return setup

    def task_init(self):
        """Ops run once per Task run, before all its instances start."""
        return self._setup(TASK_SETUP, _SetupBuilder.INIT)

    def task_exit(self):
        """Ops run once per Task run, after all its instances finished."""
        return self._setup(TASK_SETUP, _SetupBuilder.EXIT)

    def task_instance_init(self):
        """Ops run once per task instance, in its workspace, after task init."""
        return self._setup(TASK_INSTANCE_SETUP, _SetupBuilder.INIT)

    def task_instance_exit(self):
        """Ops run once per task instance, in its workspace, at its end."""
        return self._setup(TASK_INSTANCE_SETUP, _SetupBuilder.EXIT)

    def local_init(self):
        """Ops run once per node per TaskGroup run, before any task."""
        return self._setup(LOCAL_SETUP, _SetupBuilder.INIT)

    def local_exit(self, name=None):
        """Ops run once per node per TaskGroup run, after every task."""
        return self._setup(LOCAL_SETUP, _SetupBuilder.EXIT, name)

    def task_reporter(self, interval_ms=1000, name=None):
        """Ops run every ``interval_ms`` in each task instance while it runs,
        and once more at its end."""
        return _ReporterBuilder(interval_ms, net=self.net(), name=name)

    def local_reporter(self, interval_ms=1000, name=None):
        """Ops run every ``interval_ms`` on the node while any task of the
        active TaskGroup runs, and once more at the end."""
        return _ReporterBuilder(interval_ms, name=name)


ops = Operations()

# The attribute keys the task layer reads setup blocks and reporters from
# (``TASK_SETUP`` etc. are these strings; they live here so that this
# module does not import ``task``, which imports it).
TASK_SETUP = "task_setup"
TASK_INSTANCE_SETUP = "task_instance_setup"
REPORT_STEP = "report_step"
LOCAL_SETUP = "local_setup"

# core (fastpipe._graph) sits below this module: it finds the active
# builder through its registry.
_graph_registry.register_builder_class(NetBuilder)


class _ReporterBuilder(NetBuilder):
    def __init__(self, interval_ms, net=None, name=None):
        NetBuilder.__init__(self, name)
        self._net = net
        self.interval_ms = interval_ms

    def __exit__(self, etype, *args):
        if etype is None:
            step = core.to_execution_step(self)
            step.RunEveryMillis(self.interval_ms)
            if self._net is not None:
                self._net.add_attribute(REPORT_STEP, step)
            else:
                _graph_registry.task_group_class().current().report_step(step, interval_ms=self.interval_ms)
        NetBuilder.__exit__(self, etype, *args)


class _SetupBuilder(NetBuilder):
    """A detached builder stored as a net attribute; the task layer turns it
    into an init or exit step (see ``task.get_setup_nets``)."""

    INIT = "init"
    EXIT = "exit"

    def __init__(self, type, name=None):
        NetBuilder.__init__(self, name)
        self.type = type

    def setup(self, net):
        if self.type == _SetupBuilder.INIT:
            return core.to_execution_step(self)
        return None

    def exit(self, net):
        if self.type == _SetupBuilder.EXIT:
            return core.to_execution_step(self)
        return None


class _RunOnce(NetBuilder):
    """A builder that runs its children once, even if it has a stop blob."""

    def __init__(self, name=None, _fullname=None):
        NetBuilder.__init__(self, name, _fullname=_fullname)

    def __exit__(self, etype, *args):
        if etype is None and self._stop_blob is not None:
            ops.stop()
        NetBuilder.__exit__(self, etype, *args)


class _StopGuard(_RunOnce):
    def __init__(self, has_stopped_blob=None, name=None):
        _RunOnce.__init__(self, name)
        self._stopped = has_stopped_blob
        self._ran = False

    def __enter__(self):
        r = _RunOnce.__enter__(self)
        self._stopped = ops.Const(True, blob_out=self._stopped)
        return r

    def __exit__(self, etype, *args):
        if etype is None:
            self._ran = True
            ops.Const(False, blob_out=self._stopped)
        _RunOnce.__exit__(self, etype, *args)

    def has_stopped(self):
        """A bool blob, true after this builder ran iff it halted early."""
        if not self._ran:
            raise GraphError("stop_guard: context not used yet.")
        return self._stopped


class _Loop(NetBuilder):
    def __init__(self, iters=None, name=None):
        # the counter and bound are created in the *parent*'s current net,
        # so they are reset every time the parent runs
        NetBuilder.__init__(self, name, _stop_blob_required=True)
        self._iter = None
        if iters is not None:
            self._inc = ops.Const(1)
            self._iter = ops.Const(0)
            self._num_iters = (iters if isinstance(iters, core.BlobReference)
                               else ops.Const(iters))
        else:
            self._num_iters = None

    def iter(self):
        """The iteration counter blob (int64 scalar)."""
        if self._num_iters is None:
            raise GraphError("This loop does not have a number of iterations.")
        return self._iter

    def __enter__(self):
        builder = NetBuilder.__enter__(self)
        if self._num_iters is not None:
            ops.stop_if(ops.GE([self._iter, self._num_iters]))
        return builder

    def __exit__(self, etype, *args):
        if etype is None and self._num_iters is not None:
            self.current_net().Add([self._iter, self._inc], [self._iter])
        NetBuilder.__exit__(self, etype, *args)


class _RunIf(_RunOnce):
    def __init__(self, cond_blob=None, name=None, _already_ran=None, _fullname=None):
        _RunOnce.__init__(self, name, _fullname=_fullname)
        if cond_blob is None and _already_ran is None:
            raise GraphError("If: a condition blob is required")
        self._is_else = cond_blob is None
        if _already_ran is None:
            self._else_blob = ops.Not(cond_blob)
            self._already_ran = ops.Const(False)
        else:
            self._already_ran = _already_ran
            self._else_blob = _already_ran if cond_blob is None else (
                ops.Or([_already_ran, ops.Not(cond_blob)]))

    def __enter__(self):
        r = _RunOnce.__enter__(self)
        ops.stop_if(self._else_blob)
        ops.Const(True, blob_out=self._already_ran)
        return r

    def _sibling(self, cond, name):
        parent = NetBuilder.current()
        # only nets (e.g. computing the next condition) may come in between
        later = None
        for i in range(len(parent._children) - 1, -1, -1):
            if parent._children[i] is self:
                later = parent._children[i + 1:]
                break
        if later is None or not all(isinstance(c, core.Net) for c in later):
            raise GraphError("Elif/Else must immediately follow its If/Elif "
                             "in the same builder")
        if name is None:
            branch = _RunIf(cond, _already_ran=self._already_ran,
                            _fullname=self.name)
        else:
            branch = _RunIf(cond, name=name, _already_ran=self._already_ran)
        return parent.add(branch)

    def Elif(self, cond, name=None):
        if self._is_else:
            raise GraphError("Elif not allowed after an Else.")
        return self._sibling(cond, name)

    def Else(self, name=None):
        if self._is_else:
            raise GraphError("Else not allowed after an Else.")
        return self._sibling(None, name)
