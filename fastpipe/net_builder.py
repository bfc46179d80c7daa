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

With ``_use_control_ops=True`` (and inside ``ops.IfNet``/``ops.Elif``/
``ops.Else``/``ops.WhileNet``/``ops.Condition``, which imply it) a builder
instead merges its children into ONE net in which conditionals and loops
are the ``If``/``While``/``Do`` operators, as Caffe2's ``control_ops_util``
builds them: each branch or loop body runs in a ``Do`` child workspace that
sees only the outer blobs it reads or writes (the builder's *lexical
scope*: every blob named by the nets before it); blobs first made inside a
branch stay local to it.  Such nets run natively (``fastpipe/_core/control.pxi``).

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
        _use_control_ops: merge the children into one net, with
            ``ops.IfNet``/``ops.WhileNet`` as If/While/Do operators; stop
            blobs (``ops.stop``/``ops.loop``/``ops.If``) cannot be used.
    """

    def __init__(self, name=None, initial_scope=None, _stop_blob_required=False,
                 _stop_blob=None, _fullname=None, _use_control_ops=False):
        if _fullname and name:
            raise GraphError("Cannot set both _fullname and name")
        if _use_control_ops and (_stop_blob_required or _stop_blob is not None):
            raise GraphError("Stop blobs are not used with control operators")
        parent = NetBuilder.current(required=False)
        self.name = _fullname or "/".join(
            n for n in (parent.name if parent else None, name) if n)
        self._frozen = False
        self._current_net = None
        self._children = []
        self._init_lexical_scope = set(str(b) for b in (initial_scope or ()))
        # Caffe2's lexical scope, computed only when a control-op builder needs
        # it: the parent and its children so far (a list copy, no name sets).
        self._scope_parent = parent
        self._scope_siblings = list(parent._children) if parent is not None else ()
        self._outer_scope_cache = None
        self._stop_blob = _stop_blob
        self._stop_blob_required = _stop_blob_required
        self._use_control_ops = bool(_use_control_ops)
        if self._use_control_ops:
            self._outer_scope()     # snapshot now, as Caffe2 does at creation

    # -- lexical scope (control ops) -----------------------------------------------

    def _outer_scope(self):
        """Caffe2's ``_init_lexical_scope``: the blob names visible to this
        builder when it was created -- ``initial_scope``, the parent's scope
        and every name used by the parent's children before this one."""
        scope = self._outer_scope_cache
        if scope is None:
            scope = set(self._init_lexical_scope)
            parent = self._scope_parent
            if parent is not None:
                scope |= parent._outer_scope()
                scope |= _children_scope(self._scope_siblings)
            self._outer_scope_cache = scope
        return scope

    @property
    def _lexical_scope(self):
        """Blob names visible at this point of the builder: its outer scope
        plus every name its children use (an exited control-op builder
        contributes only its outer scope: its own blobs are local)."""
        return self._outer_scope() | _children_scope(self._children)

    def _reset_children(self):
        self._current_net = None
        self._children = []

    # -- stop blob ------------------------------------------------------------

    def stop_blob(self):
        """The BlobReference of this builder's stop blob, created on demand.

        It is set to false in the current net (so each iteration starts
        with "not stopped"); if the current net is not the first child, a
        ``stop_blob_init`` net that also sets it false becomes the first
        child, so the blob exists before the step is compiled.
        """
        if self._use_control_ops:
            raise GraphError("Stop blobs are not used with control operators "
                             "(builder %s)" % self.name)
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
        if self._use_control_ops:
            raise GraphError("Stop blobs are not used with control operators "
                             "(builder %s)" % self.name)
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
        if self._use_control_ops and not (
                isinstance(child, core.Net) or
                (isinstance(child, NetBuilder) and child._use_control_ops)):
            raise GraphError(
                "builder %s uses control operators: only nets and IfNet/WhileNet "
                "builders can be added to it, got %r (ops.loop, ops.If and "
                "ops.stop_guard need stop blobs)" % (self.name, child))
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
        if etype is None and self._use_control_ops and self._children:
            children = self._children
            self._reset_children()
            self._children = [_merge_nets(children, self._outer_scope())]
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
        """Like ``If``, but one net with an ``If`` operator (Caffe2's IfNet);
        ``ops.Elif(c)`` and ``ops.Else()`` may follow it."""
        return NetBuilder.current().add(_RunIfNet(cond, name=name))

    def Elif(self, cond, name=None):
        """An else-if branch of the IfNet (or Elif) just before it (beyond
        Caffe2, which has only ``Else``).  Nets between the two (computing
        ``cond``) run only when the earlier conditions were false, as in
        Python: they move into the else branch."""
        parent = NetBuilder.current()
        head, later = _last_if_net(parent, "Elif")
        tail = head._tail
        if tail._has_else:
            raise GraphError("Elif not allowed after an Else.")
        del parent._children[len(parent._children) - len(later):]
        parent._current_net = None
        branch = _RunIfNet(cond, name=name, _prev=tail, _prefix=later)
        head._tail = branch
        return branch

    def Else(self, name=None):
        """Else branch of the IfNet (or Elif) just before it."""
        return _RunElseNet(name=name)

    def WhileNet(self, name=None):
        """A builder for the ``While`` operator: its body is the loop net,
        after an ``ops.Condition()`` block computing the condition."""
        return NetBuilder.current().add(_RunWhileNet(name=name))

    def Condition(self, name=None):
        """The loop condition of the enclosing WhileNet: the last op's single
        output is the condition (a bool scalar), computed before the first
        and after every iteration."""
        if not isinstance(NetBuilder.current(), _RunWhileNet):
            raise GraphError("Use of Condition outside of WhileNet")
        return _RunWhileCondition(name=name)

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


# ---- control operators (Caffe2's control_ops_util and its builders) -----------


def _children_scope(children):
    names = set()
    for child in children:
        if isinstance(child, core.Net):
            names |= child.UsedBlobNames()
        elif isinstance(child, NetBuilder) and child._use_control_ops:
            names |= child._outer_scope() if child._frozen else child._lexical_scope
    return names


def _merge_nets(nets_or_builders, outer_blob_names):
    """Caffe2's ``NetBuilder.merge_nets``: append every child (nets, exited
    control-op builders) to the first net; its external outputs keep only
    the outer names."""
    net = None
    for n in nets_or_builders:
        if isinstance(n, NetBuilder):
            if not n._use_control_ops:
                raise GraphError("Merging of NetBuilder supported only for control ops")
            nets = n.get()
            if len(nets) != 1 or not isinstance(nets[0], core.Net):
                raise GraphError("Invalid control op net builder %s" % n.name)
            cur = nets[0]
        elif isinstance(n, core.Net):
            cur = n
        else:
            raise GraphError("cannot merge %r into a control-op net" % (n,))
        if net is not None:
            net.AppendNet(cur)
        else:
            net = cur
    if net is not None:
        proto = net.Proto()
        proto.external_output[:] = [o for o in proto.external_output
                                    if o in outer_blob_names]
    return net


def _external_blob_names(net, lexical_scope):
    """Caffe2's ``get_external_blob_names``: the outer blobs ``net`` reads
    (read before written; each must be in the scope) and writes (in the
    scope).  Sorted lists (Caffe2 iterates sets, in no fixed order)."""
    proto = net.Proto()
    ssa, _ = core.get_ssa(proto)
    inputs = core.get_undefined_blobs(ssa)
    for name in sorted(inputs):
        if str(name) not in lexical_scope:
            raise GraphError("Input blob %s is undefined (net %s reads it before "
                             "any op writes it, and no blob of that name is "
                             "visible outside)" % (name, proto.name))
    outputs = set()
    for op in proto.op:
        for o in op.output:
            if o in lexical_scope:
                outputs.add(o)
    return sorted(str(b) for b in inputs), sorted(outputs)


def _add_do(parent_net, do_net, ws_suffix, body, inputs, outputs, **extra):
    """Append to ``do_net`` a Do op running ``body`` in a child workspace
    bound to the outer ``inputs`` and ``outputs`` (Caffe2's layout: inner
    names equal outer names, indices into inputs + outputs); returns the
    workspace blob (made by a CreateScope the caller adds)."""
    ordered = inputs + outputs
    outer = sorted(set(ordered))
    ws_blob = parent_net.NextScopedBlob(parent_net.Name() + ws_suffix)
    ins = [core.BlobReference(b, net=None) for b in inputs] + [ws_blob]
    outs = [core.BlobReference(b, net=None) for b in outputs] + [ws_blob]
    do_net.Do(ins, outs, net=body.Proto(), inner_blobs=outer,
              outer_blobs_idx=[ordered.index(b) for b in outer], **extra)
    do_net.AddExternalOutput(*outs)
    return ws_blob


def _add_if_op(if_net, cond_blob, lexical_scope, then_net, else_net=None):
    """Caffe2's ``control_ops_util.add_if_op``: append to ``if_net`` the
    CreateScope ops and an If op whose then (else) net is a Do running
    ``then_net`` (``else_net``) over the outer blobs it uses."""
    then_in, then_out = _external_blob_names(then_net, lexical_scope)
    else_in, else_out = ([], [])
    if else_net is not None:
        else_in, else_out = _external_blob_names(else_net, lexical_scope)
    if_inputs = [cond_blob] + [core.BlobReference(b, net=None)
                               for b in sorted(set(then_in) | set(else_in))]
    if_outputs = [core.BlobReference(b, net=None)
                  for b in sorted(set(then_out) | set(else_out))]
    do_then_net = core.Net("do_then_net")
    then_ws = _add_do(if_net, do_then_net, "/workspace_if_then", then_net,
                      then_in, then_out)
    if_inputs.append(then_ws)
    if_outputs.append(then_ws)
    if_args = {"then_net": do_then_net.Proto()}
    else_ws = None
    if else_net is not None:
        do_else_net = core.Net("do_else_net")
        else_ws = _add_do(if_net, do_else_net, "/workspace_if_else", else_net,
                          else_in, else_out)
        if_inputs.append(else_ws)
        if_outputs.append(else_ws)
        if_args["else_net"] = do_else_net.Proto()
    if_net.CreateScope([], [then_ws])
    if else_ws is not None:
        if_net.CreateScope([], [else_ws])
    if_net.If(if_inputs, if_outputs, **if_args)
    if_net.AddExternalOutput(*if_outputs)


def _add_while_op(while_net, cond_blob, lexical_scope, loop_body_net,
                  condition_body_net=None):
    """Caffe2's ``control_ops_util.add_while_op``: a While op whose loop net
    (and condition net) is a Do over the outer blobs it uses.  Outputs of
    the loop are inputs too (the loop may not run at all)."""
    body_in, body_out = _external_blob_names(loop_body_net, lexical_scope)
    body_in = sorted(set(body_in) | set(body_out))
    while_inputs = [cond_blob] + [core.BlobReference(b, net=None) for b in body_in]
    while_outputs = [core.BlobReference(b, net=None) for b in body_out]
    do_loop_body_net = core.Net("do_loop_body_net")
    body_ws = _add_do(while_net, do_loop_body_net, "/workspace_loop_body",
                      loop_body_net, body_in, body_out, copy_external_blobs=True)
    while_inputs.append(body_ws)
    while_outputs.append(body_ws)
    while_args = {"loop_net": do_loop_body_net.Proto()}
    cond_ws = None
    if condition_body_net is not None:
        cond_in, cond_out = _external_blob_names(condition_body_net, lexical_scope)
        if not any(str(cond_blob) in op.output
                   for op in condition_body_net.Proto().op):
            raise GraphError("Condition net does not write into condition blob %s"
                             % cond_blob)
        if str(cond_blob) not in cond_out:
            cond_out = sorted(set(cond_out) | {str(cond_blob)})
        condition_net = core.Net("do_loop_condition_net")
        cond_ws = _add_do(while_net, condition_net, "/workspace_loop_cond",
                          condition_body_net, cond_in, cond_out)
        while_args["cond_net"] = condition_net.Proto()
        while_inputs += [core.BlobReference(b, net=None) for b in cond_in
                         if b not in body_in] + [cond_ws]
        while_outputs += [core.BlobReference(b, net=None) for b in cond_out
                          if b not in body_out] + [cond_ws]
        if str(cond_blob) not in lexical_scope:
            while_net.ConstantFill([], cond_blob, dtype=core.DataType.BOOL, value=False)
    while_net.CreateScope([], [body_ws])
    if cond_ws is not None:
        while_net.CreateScope([], [cond_ws])
    while_net.While(while_inputs, while_outputs, **while_args)
    while_net.AddExternalOutput(*while_outputs)


def _exit_building(builder, build):
    """Run ``build()`` at a control builder's exit; if it raises, leave the
    builder's context first (so the enclosing builders stay usable)."""
    try:
        build()
    except BaseException as exc:
        NetBuilder.__exit__(builder, type(exc), exc, exc.__traceback__)
        raise


def _last_if_net(parent, what):
    """The IfNet builder an Elif/Else attaches to: the last IfNet child of
    ``parent``, followed by nothing but nets (``later``)."""
    children = parent._children
    for i in range(len(children) - 1, -1, -1):
        child = children[i]
        if isinstance(child, _RunIfNet):
            later = children[i + 1:]
            if what == "Else" and later:
                break
            return child, later
        if not isinstance(child, core.Net):
            break
    raise GraphError("Invalid use of %s builder: it must immediately follow an "
                     "IfNet (or Elif) in the same builder" % what)


class _RunIfNet(NetBuilder):
    """One net with an If operator (Caffe2's ``_RunIfNet``).  An ``Elif``
    is an _RunIfNet too, not added to the parent: when it (or an Else after
    it) exits, it becomes the else branch of the branch before it
    (``_prev``), which is rebuilt, up to the IfNet that heads the chain."""

    def __init__(self, cond_blob, name=None, _prev=None, _prefix=()):
        if cond_blob is None:
            raise GraphError("Conditional blob is not specified for an If net")
        # an Elif also sees the blobs its condition nets (_prefix) name
        NetBuilder.__init__(self, name=name, _use_control_ops=True,
                            initial_scope=_children_scope(_prefix))
        self._cond_blob = cond_blob
        self._then_net = None
        self._else_net = None
        self._has_else = False
        self._prev = _prev
        self._prefix = list(_prefix)
        self._tail = self       # the head's last Elif (where Else/Elif attach)

    def __exit__(self, etype, *args):
        if etype is None:
            _exit_building(self, self._build)
        NetBuilder.__exit__(self, etype, *args)

    def _build(self):
        then_nets = self._children
        self._reset_children()
        self._then_net = _merge_nets(then_nets, self._outer_scope())
        if self._then_net is None:
            self._then_net = core.Net("empty_then_net")
        self._rebuild()

    def _rebuild(self):
        suffix = "/if_else_net" if self._else_net is not None else "/if_net"
        if_net = core.Net(self.name + suffix)
        _add_if_op(if_net, self._cond_blob, self._outer_scope(),
                   self._then_net, self._else_net)
        self._current_net = if_net
        self._children = [if_net]
        prev = self._prev
        if prev is not None:
            # this Elif (its condition nets, then its If) is prev's else branch
            else_net = _merge_nets([core.Net(self.name + "/elif_net")] +
                                   self._prefix + [if_net], prev._outer_scope())
            prev._else_net = else_net
            prev._rebuild()


class _RunElseNet(NetBuilder):
    """The else branch of the IfNet (or its last Elif) just before it."""

    def __init__(self, name=None):
        parent = NetBuilder.current(required=False)
        if parent is None:
            raise GraphError("Invalid use of Else builder: no active NetBuilder")
        head, _ = _last_if_net(parent, "Else")
        tail = head._tail
        if tail._has_else:
            raise GraphError("Else not allowed after an Else.")
        NetBuilder.__init__(self, name=name, _use_control_ops=True)
        tail._has_else = True
        self._if_builder = tail

    def __exit__(self, etype, *args):
        if etype is None:
            _exit_building(self, self._build)
        NetBuilder.__exit__(self, etype, *args)

    def _build(self):
        else_nets = self._children
        self._reset_children()
        else_net = _merge_nets(else_nets, self._outer_scope())
        if else_net is not None:
            self._if_builder._else_net = else_net
            self._if_builder._rebuild()


class _RunWhileNet(NetBuilder):
    """One net with a While operator (Caffe2's ``_RunWhileNet``)."""

    def __init__(self, name=None):
        NetBuilder.__init__(self, name=name, _use_control_ops=True)
        self._cond_builder = None

    def __exit__(self, etype, *args):
        if etype is None:
            _exit_building(self, self._build)
        NetBuilder.__exit__(self, etype, *args)

    def _build(self):
        if self._cond_builder is None:
            raise GraphError("Condition builder must be specified in While op "
                             "(ops.Condition() inside ops.WhileNet())")
        loop_body = self._children
        self._reset_children()
        body = _merge_nets(loop_body, self._outer_scope())
        if body is None:
            body = core.Net("empty_loop_body_net")
        while_net = core.Net(self.name + "/while_net")
        _add_while_op(while_net, self._cond_builder._cond_blob,
                      self._outer_scope(), body, self._cond_builder._cond_net)
        self._current_net = while_net
        self._children = [while_net]


class _RunWhileCondition(NetBuilder):
    """The loop condition of a WhileNet: the last op must have one output, a
    bool scalar; no other blob made here is visible outside."""

    def __init__(self, name=None):
        parent = NetBuilder.current(required=False)
        if not isinstance(parent, _RunWhileNet):
            raise GraphError("Invalid use of loop condition builder")
        if parent._cond_builder is not None:
            raise GraphError("Multiple loop condition builders specified")
        if parent._children:
            raise GraphError("Condition definition must be specified before the "
                             "loop's body")
        NetBuilder.__init__(self, name=name, _use_control_ops=True)
        parent._cond_builder = self
        self._cond_blob = None
        self._cond_net = None

    def __exit__(self, etype, *args):
        if etype is None:
            _exit_building(self, self._build)
        NetBuilder.__exit__(self, etype, *args)

    def _build(self):
        body = self._children
        self._reset_children()
        self._cond_net = _merge_nets(body, self._outer_scope())
        if self._cond_net is None or not self._cond_net.Proto().op:
            raise GraphError("Invalid loop condition: ops.Condition() needs at "
                             "least one op")
        last_op = self._cond_net.Proto().op[-1]
        if len(last_op.output) != 1:
            raise GraphError("Invalid condition net: its last op (%s) must have "
                             "exactly one output, the condition" % last_op.type)
        self._cond_blob = core.BlobReference(last_op.output[0], net=None)
        self._current_net = self._cond_net
        self._children = [self._cond_net]
