"""Readable dumps and static checks of graphs (Caffe2's
``caffe2.python.net_printer``).

``to_string(obj)`` prints a Net, ExecutionStep, Plan, Task, TaskGroup or
Job as indented pseudo-Python::

    with Task(node=local, name=local/grouped_by_node, outputs=Output[x]):
        n = core.Net('n')
        n.ConstantFill([], ['x'], value=0)
        with parallel(num_instances=4):
            with loop():
                ...
                yield stop_if(status)

``analyze(obj)`` walks the same structure and raises on a blob read before
any op writes it, on a blob created by two concurrent substeps, and on a
task whose plan is too large.

Printing or analysing a TaskGroup calls ``tasks_by_node()`` on it (which is
memoised; see ``TaskGroup.tasks_by_node``).
"""

from contextlib import contextmanager
from copy import copy
from collections import defaultdict
from itertools import chain

from . import proto
from .checkpoint import Job
from .core import ExecutionStep, Net, Plan
from .errors import GraphError
from .task import Task, TaskGroup, TaskOutput, WorkspaceType

__all__ = ["to_string", "analyze", "debug_net", "Printer", "Analyzer", "Text",
           "print_task_group", "print_job", "print_task", "print_step",
           "print_net", "print_op"]


class Visitor(object):
    """Dispatch ``visitor(obj)`` to the function registered for obj's type
    (or its nearest registered base class)."""

    visitors = None

    @classmethod
    def register(cls, Type):
        if cls.visitors is None or "visitors" not in cls.__dict__:
            cls.visitors = {}
        if Type in cls.visitors:
            raise GraphError("{} already registered!".format(Type))

        def _register(func):
            cls.visitors[Type] = func
            return func
        return _register

    def __call__(self, obj, *args, **kwargs):
        if obj is None:
            return None
        visitors = type(self).visitors or {}
        for klass in type(obj).__mro__:
            func = visitors.get(klass)
            if func is not None:
                return func(self, obj, *args, **kwargs)
        raise TypeError("%s: unsupported object type: %s"
                        % (type(self).__name__, type(obj)))


# --- analyzer -----------------------------------------------------------------


class Analyzer(Visitor):
    PREFIXES_TO_IGNORE = {"distributed_ctx_init"}
    MAX_PLAN_CHARS = 2 ** 26

    def __init__(self):
        self.workspaces = defaultdict(lambda: defaultdict(lambda: 0))
        self.workspace_ctx = []

    @property
    def workspace(self):
        return self.workspace_ctx[-1]

    @contextmanager
    def set_workspace(self, node=None, ws=None, do_copy=False):
        if ws is None:
            ws = self.workspaces[str(node)] if node is not None else self.workspace
        if do_copy:
            ws = copy(ws)
        self.workspace_ctx.append(ws)
        try:
            yield ws
        finally:
            del self.workspace_ctx[-1]

    def define_blob(self, blob):
        self.workspace[blob] += 1

    def need_blob(self, blob):
        if any(blob.startswith(p) for p in Analyzer.PREFIXES_TO_IGNORE):
            return
        if blob not in self.workspace:
            raise GraphError("Blob undefined: %s" % blob)


@Analyzer.register(proto.OperatorDef)
def analyze_op(analyzer, op):
    for x in op.input:
        analyzer.need_blob(x)
    for x in op.output:
        analyzer.define_blob(x)


@Analyzer.register(Net)
def analyze_net(analyzer, net):
    for op in net.Proto().op:
        analyzer(op)


def _step_children(step):
    p = step.Proto()
    return list(step.Substeps()) + [step.get_net(n) for n in p.network]


@Analyzer.register(ExecutionStep)
def analyze_step(analyzer, step):
    p = step.Proto()
    all_new_blobs = set()
    with analyzer.set_workspace(do_copy=p.create_workspace):
        if p.report_net:
            with analyzer.set_workspace(do_copy=True):
                analyzer(step.get_net(p.report_net))
        for child in _step_children(step):
            with analyzer.set_workspace(do_copy=p.concurrent_substeps) as ws_in:
                analyzer(child)
                if p.should_stop_blob:
                    analyzer.need_blob(p.should_stop_blob)
            if p.concurrent_substeps:
                new_blobs = set(ws_in) - set(analyzer.workspace)
                clash = all_new_blobs & new_blobs
                if clash:
                    raise GraphError("Error: Blobs created by multiple parallel "
                                     "steps: %s" % ", ".join(sorted(clash)))
                all_new_blobs |= new_blobs
    for x in all_new_blobs:
        analyzer.define_blob(x)


@Analyzer.register(Plan)
def analyze_plan(analyzer, plan):
    with analyzer.set_workspace(node="plan:%s" % plan):
        for step in plan.Steps():
            analyzer(step)


@Analyzer.register(Task)
def analyze_task(analyzer, task):
    step = task.get_step()
    plan = Plan(task.node)
    plan.AddStep(step)
    size = len(str(plan.Proto()))
    if size >= Analyzer.MAX_PLAN_CHARS:
        raise GraphError("Serialized tasks must be smaller than 64Mb, but task "
                         "%s has %d bytes." % (task.name, size))
    is_private = task.workspace_type() != WorkspaceType.GLOBAL
    with analyzer.set_workspace(do_copy=is_private):
        analyzer(step)


@Analyzer.register(TaskGroup)
def analyze_task_group(analyzer, tg):
    for task in tg.tasks_by_node().tasks():
        with analyzer.set_workspace(node=task.node):
            analyzer(task)


@Analyzer.register(Job)
def analyze_job(analyzer, job):
    analyzer(job.init_group)
    analyzer(job.epoch_group)


def analyze(obj):
    """Check a Job, TaskGroup, Task, Plan, step or net statically: no blob
    is read before it is defined, and no blob is created by two concurrent
    substeps.  Raises GraphError (an AssertionError) on the first problem."""
    analyzer = Analyzer()
    with analyzer.set_workspace(node="<root>"):
        analyzer(obj)


# --- printer ------------------------------------------------------------------


class Text(object):
    """Indented lines; ``context(header)`` opens a ``with header:`` block
    (``pass`` if it stays empty)."""

    def __init__(self):
        self._indent = 0
        self._lines_in_context = [0]
        self.lines = []

    @contextmanager
    def context(self, text):
        if text is not None:
            self.add("with %s:" % text)
            self._indent += 4
            self._lines_in_context.append(0)
        try:
            yield
        finally:
            if text is not None:
                if self._lines_in_context[-1] == 0:
                    self.add("pass")
                self._indent -= 4
                del self._lines_in_context[-1]

    def add(self, text):
        self._lines_in_context[-1] += 1
        self.lines.append((" " * self._indent) + text)

    def __str__(self):
        return "\n".join(self.lines)


class Printer(Visitor, Text):
    def __init__(self, factor_prefixes=False, c2_syntax=True):
        Text.__init__(self)
        self.factor_prefixes = factor_prefixes
        self.c2_syntax = c2_syntax
        self.c2_net_name = None


def _sanitize_str(s):
    if isinstance(s, bytes):
        s = s.decode("ascii", errors="ignore")
    else:
        s = str(s)
    if len(s) < 64:
        return "'%s'" % s
    return "'%s'" % s[:64] + "...<+len=%d>" % (len(s) - 64)


def _arg_val(arg):
    if arg.HasField("f"):
        return str(arg.f)
    if arg.HasField("i"):
        return str(arg.i)
    if arg.HasField("s"):
        return _sanitize_str(arg.s)
    if arg.floats:
        return str(list(arg.floats))
    if arg.ints:
        return str(list(arg.ints))
    if arg.strings:
        return str([_sanitize_str(s) for s in arg.strings])
    return "[]"


def commonprefix(m):
    """The longest common prefix of a list of strings."""
    if not m:
        return ""
    s1, s2 = min(m), max(m)
    for i, c in enumerate(s1):
        if c != s2[i]:
            return s1[:i]
    return s1


def format_value(val):
    if isinstance(val, list):
        return "[%s]" % ", ".join("'%s'" % str(v) for v in val)
    return str(val)


def factor_prefix(vals, do_it):
    vals = [format_value(v) for v in vals]
    prefix = commonprefix(vals) if len(vals) > 1 and do_it else ""
    joined = ", ".join(v[len(prefix):] for v in vals)
    return "%s[%s]" % (prefix, joined) if prefix else joined


def call(op, inputs=None, outputs=None, factor_prefixes=False):
    """``op(a, b, k=v)``, or ``outs = op(...)`` when outputs are given."""
    if not inputs:
        args = ""
    else:
        positional = [a for a in inputs if not isinstance(a, tuple)]
        keywords = [a for a in inputs if isinstance(a, tuple)]
        args = ", ".join(x for x in chain(
            [factor_prefix(positional, factor_prefixes)],
            ("%s=%s" % kv for kv in keywords)) if x)
    text = "%s(%s)" % (op, args)
    return text if not outputs else "%s = %s" % (
        factor_prefix(outputs, factor_prefixes), text)


def format_device_option(dev_opt):
    if not dev_opt or not (dev_opt.device_type or dev_opt.device_id
                           or dev_opt.node_name):
        return None
    return call("DeviceOption", [dev_opt.device_type, dev_opt.device_id,
                                 "'%s'" % dev_opt.node_name])


@Printer.register(proto.OperatorDef)
def print_op(text, op):
    args = [(a.name, _arg_val(a)) for a in op.arg]
    dev = format_device_option(op.device_option) if op.HasField("device_option") else None
    if dev:
        args.append(("device_option", dev))
    if text.c2_net_name:
        text.add(call(text.c2_net_name + "." + op.type,
                      [list(op.input), list(op.output)] + args))
    else:
        text.add(call(op.type, list(op.input) + args, op.output,
                      factor_prefixes=text.factor_prefixes))
    for arg in op.arg:
        if arg.HasField("n"):
            with text.context("arg: %s" % arg.name):
                text(arg.n)


def _fmt_names(names):
    """format_value(list(names)) for a list of blob names."""
    if not names:
        return "[]"
    try:
        return "['%s']" % "', '".join(names)
    except TypeError:
        return "['%s']" % "', '".join([str(v) for v in names])


def _c2_op_line(net_name, op):
    """The line print_op writes in c2 syntax, after ``<net_name>.``, or
    None when the op needs the general path (a device option or a
    net-valued argument)."""
    d = op.__dict__
    if "device_option" in d:
        return None
    head = "%s(%s, %s" % (op.type, _fmt_names(op.input), _fmt_names(op.output))
    args = d.get("arg")
    if not args:
        return head + ")"
    parts = [head]
    for a in args:
        if "n" in a.__dict__:
            return None
        parts.append("%s=%s" % (a.name, _arg_val(a)))
    return ", ".join(parts) + ")"


@Printer.register(proto.NetDef)
def print_net_def(text, net_def):
    if not text.c2_syntax:
        text.add("# net: %s" % net_def.name)
        for op in net_def.op:
            text(op)
        return
    name = net_def.name
    text.add(call("core.Net", ["'%s'" % name], [name]))
    text.c2_net_name = name
    # One line per op, formatted directly (the same text as print_op).
    if type(text).visitors.get(proto.OperatorDef) is print_op:
        head = " " * text._indent + name + "."
        lines = text.lines
        # The lines of a run of ops are joined into one item of text.lines
        # (str(text) joins with "\n" too): one string per net instead of
        # one per op to keep alive until the end.
        chunk = []
        append = chunk.append
        join = "', '".join
        fast = 0
        for op in net_def.op:
            d = op.__dict__
            if len(d) <= 4 and "arg" not in d and "device_option" not in d:
                # the common case, inlined: no arguments, no device option
                ins = d.get("input")
                outs = d.get("output")
                if ins and outs:
                    try:
                        # an f-string: no argument tuple, no format parsing
                        append(f"{head}{d.get('type', '')}"
                               f"(['{join(ins)}'], ['{join(outs)}'])")
                        fast += 1
                        continue
                    except TypeError:   # a name that is not a str
                        pass
            line = _c2_op_line(name, op)
            if line is None:
                if chunk:
                    lines.append("\n".join(chunk))
                    chunk.clear()
                text._lines_in_context[-1] += fast
                fast = 0
                text(op)
            else:
                fast += 1
                append(head + line)
        if chunk:
            lines.append("\n".join(chunk))
        text._lines_in_context[-1] += fast
    else:
        for op in net_def.op:
            text(op)
    text.c2_net_name = None


@Printer.register(Net)
def print_net(text, net):
    text(net.Proto())


def _get_step_context(step):
    """(header, print each child under its own step()/workspace() header)."""
    p = step.Proto()
    if p.should_stop_blob:
        return call("loop"), False
    if p.num_iter and p.num_iter != 1:
        return call("loop", [p.num_iter]), False
    if p.num_concurrent_instances > 1:
        return (call("parallel", [("num_instances", p.num_concurrent_instances)]),
                len(step.Substeps()) > 1)
    if p.concurrent_substeps and len(step.Substeps()) > 1:
        return call("parallel"), True
    if p.report_net:
        return call("run_once"), False
    return None, False


@Printer.register(ExecutionStep)
def print_step(text, step):
    p = step.Proto()
    step_ctx, do_substep = _get_step_context(step)
    with text.context(step_ctx):
        if p.report_net:
            with text.context(call("report_net", [p.report_interval])):
                text(step.get_net(p.report_net))
        for child in _step_children(step):
            sub = child.Proto() if isinstance(child, ExecutionStep) else None
            if sub is not None and sub.run_every_ms:
                child_ctx = call("reporter", [str(child),
                                              ("interval_ms", sub.run_every_ms)])
            elif do_substep:
                title = ("workspace" if sub is not None and sub.create_workspace
                         else "step")
                child_ctx = call(title, [str(child)])
            else:
                child_ctx = None
            with text.context(child_ctx):
                text(child)
                if p.should_stop_blob:
                    text.add(call("yield stop_if", [p.should_stop_blob]))


@Printer.register(Plan)
def print_plan(text, plan):
    with text.context(call("Plan", ["'%s'" % plan])):
        for step in plan.Steps():
            text(step)


def _print_task_output(x):
    if not isinstance(x, TaskOutput):
        raise GraphError("expected a TaskOutput, got %r" % type(x).__name__)
    return "Output[" + ", ".join(str(n) for n in x.names) + "]"


@Printer.register(Task)
def print_task(text, task):
    outs = ", ".join(_print_task_output(o) for o in task.outputs())
    header = call("Task", [("node", task.node), ("name", task.name),
                           ("outputs", outs)])
    with text.context(header):
        text(task.get_step())


@Printer.register(TaskGroup)
def print_task_group(text, tg, header=None):
    with text.context(header or call("TaskGroup")):
        for task in tg.tasks_by_node().tasks():
            text(task)


@Printer.register(Job)
def print_job(text, job):
    text(job.init_group, "Job.current().init_group")
    text(job.epoch_group, "Job.current().epoch_group")
    with text.context("Job.current().stop_signals"):
        for out in job.stop_signals:
            text.add(_print_task_output(out))
    text(job.download_group, "Job.current().download_group")
    text(job.exit_group, "Job.current().exit_group")


def to_string(obj, factor_prefixes=False, c2_syntax=True):
    """A Net, ExecutionStep, Plan, Task, TaskGroup or Job as indented
    pseudo-Python.  ``c2_syntax=False`` prints ``out = Op(in, arg=v)``
    lines under ``# net: name`` comments."""
    printer = Printer(factor_prefixes=factor_prefixes, c2_syntax=c2_syntax)
    with proto.gc_paused():
        printer(obj)
        return str(printer)


def debug_net(net):
    """A copy of ``net`` that prints each operator (as ``to_string`` shows
    it) right before running it.  For debugging."""
    if not isinstance(net, Net):
        raise GraphError("debug_net expects a core.Net, got %r" % type(net).__name__)
    out = Net(str(net))
    for op in net.Proto().op:
        text = Printer(c2_syntax=False)
        text(op)
        out.LogInfo(str(text))
        out.extend_ops([op])
    return out
