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
from collections import OrderedDict, defaultdict
from itertools import chain

from . import proto
from .checkpoint import Job
from .core import ExecutionStep, Net, Plan
from .errors import ArgumentError, FastpipeError, GraphError
from .task import Task, TaskGroup, TaskOutput, WorkspaceType

__all__ = ["to_string", "to_dot", "render", "GraphvizNotFoundError", "RenderError",
           "analyze", "debug_net", "Printer", "Analyzer", "Text",
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
        raise ArgumentError("%s: unsupported object type: %s"
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


# --- pictures (Graphviz DOT) --------------------------------------------------
#
# to_dot works from the description only: the nets' ops and the steps' fields
# (and, for queues a TaskGroup has not set up yet, the Queue objects its
# readers and writers registered under TaskGroup.LOCAL_SETUP).  It never calls
# tasks_by_node() -- that is memoised per node mapping, and a session maps
# every node onto its own, so drawing a group must not fix a mapping first.

class GraphvizNotFoundError(FastpipeError, FileNotFoundError):
    """``render`` needs the Graphviz ``dot`` program and it is not on PATH."""


class RenderError(FastpipeError, RuntimeError):
    """The Graphviz ``dot`` program failed on the DOT text it was given."""


_ENQUEUE_OPS = {"SafeEnqueueBlobs", "EnqueueBlobs"}
_DEQUEUE_OPS = {"SafeDequeueBlobs", "DequeueBlobs"}
_CURSOR_READ_OPS = {"ReadNextBatch", "ReadArrayBatch", "ReadSegmentBatch", "ReadRandomBatch"}
_APPEND_OPS = {"Append", "AtomicAppend"}   # a Dataset writer
# Ops a pipe adds around its stage (timers, status resets, queue and cursor
# plumbing, drop checks): not listed as the stage's own work.
_PLUMBING_OPS = (_ENQUEUE_OPS | _DEQUEUE_OPS | _CURSOR_READ_OPS | {
    "WeightedSampleDequeueBlobs", "CreateBlobsQueue", "CloseBlobsQueue",
    "CreateTreeCursor", "ResetCursor", "TimerBegin", "TimerEnd", "ConstantFill",
    "EpochPermutation", "Python", "PythonStage", "Or", "Not", "Copy", "IsEmpty",
    "CreateMutex", "CheckDatasetConsistency"} | _APPEND_OPS)
_MAX_OP_TYPES_SHOWN = 4

_RENDER_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
_GRAPHVIZ_HINT = ("install Graphviz: `apt-get install graphviz` (the Debian/Ubuntu "
                  "package 'graphviz'; other systems: https://graphviz.org/download/)")


def _dot_str(text):
    """``text`` as a quoted DOT string that renders literally: backslashes
    and quotes are escaped (a label would read ``\\n``, ``\\N``, ``\\G``
    as escapes), ``&`` too (Graphviz decodes ``&amp;``-style entities in
    every label), and line breaks become DOT's ``\\n``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = str(text).replace("&", "&amp;")
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return '"%s"' % text


def _dot_label(lines):
    """A multi-line label: each line escaped, joined by DOT line breaks."""
    return _dot_str("\n".join(str(x) for x in lines))


def _arg(op, name, default=None):
    for a in op.arg:
        if a.name == name:
            if a.HasField("i"):
                return a.i
            if a.HasField("f"):
                return a.f
            if a.HasField("s"):
                s = a.s
                return s.decode("utf-8", "replace") if isinstance(s, bytes) else s
    return default


def _net_ops(net_def):
    """The ops of a NetDef, and of the nets held in their arguments."""
    for op in net_def.op:
        yield op
        for a in op.arg:
            if a.HasField("n"):
                yield from _net_ops(a.n)


def _step_ops(step):
    """Every op a step runs: its nets', its report net's and its substeps'."""
    p = step.Proto()
    names = list(p.network) + ([p.report_net] if p.report_net else [])
    for name in names:
        yield from _net_ops(step.get_net(name).Proto())
    for sub in step.Substeps():
        yield from _step_ops(sub)


def _step_instances(step):
    """Runtime instances of the deepest instanced path under ``step``: the
    product of ``num_concurrent_instances`` along it."""
    p = step.Proto()
    own = p.num_concurrent_instances if p.num_concurrent_instances > 1 else 1
    below = max([_step_instances(s) for s in step.Substeps()] or [1])
    return own * below


def _step_fanout(step):
    """The widest set of concurrent substeps under ``step`` (1 if none)."""
    p = step.Proto()
    subs = step.Substeps()
    own = len(subs) if p.concurrent_substeps and len(subs) > 1 else 1
    return max([own] + [_step_fanout(s) for s in subs])


class _Unit(object):
    """One box: a task (or, in a Plan, a step) and what its ops touch."""

    def __init__(self, name, step, node, instances=None, ops=None):
        self.name = name
        self.node = node
        self.instances = instances or (_step_instances(step) if step is not None else 1)
        self.fanout = _step_fanout(step) if step is not None else 1
        self.writes = []          # queue blob names, in first-use order
        self.reads = []
        self.creates = {}         # queue blob -> capacity (None if unknown)
        self.sources = {}         # cursor blob -> (op type, batch size)
        self.python_stages = []
        self.sinks = []           # datasets appended to (by their fields' prefix)
        self.op_types = []
        for op in (_step_ops(step) if ops is None else ops):
            self._see(op)

    def _see(self, op):
        t = op.type
        if t in _ENQUEUE_OPS and op.input:
            _add(self.writes, op.input[0])
        elif t in _DEQUEUE_OPS and op.input:
            _add(self.reads, op.input[0])
        elif t == "WeightedSampleDequeueBlobs":
            for q in op.input:
                _add(self.reads, q)
        elif t == "CreateBlobsQueue" and op.output:
            self.creates[str(op.output[0])] = _arg(op, "capacity")
        elif t in _CURSOR_READ_OPS and op.input:
            # the op's name is the reader's (sources name it, for errors);
            # else a Dataset's reader: its fields' common prefix
            name = op.name or (_blob_prefix(op.input[1:]) if t == "ReadNextBatch" else None)
            self.sources.setdefault(str(op.input[0]), (t, _arg(op, "batch_size"), name))
        elif t in _APPEND_OPS and op.output:
            _add(self.sinks, _blob_prefix(op.output))
        elif t == "PythonStage":
            _add(self.python_stages, _arg(op, "stage") or "python")
        if t not in _PLUMBING_OPS:
            _add(self.op_types, t)

    def label(self):
        lines = ["%s × %d" % (self.name, self.instances)]
        if self.fanout > 1:
            lines.append("%d concurrent substeps" % self.fanout)
        if self.python_stages:
            lines.append("Python stage: " + ", ".join(self.python_stages))
        if self.op_types:
            shown = self.op_types[:_MAX_OP_TYPES_SHOWN]
            more = len(self.op_types) - len(shown)
            lines.append("native: " + ", ".join(shown) + (", +%d" % more if more else ""))
        return _dot_label(lines)


def _blob_prefix(blobs):
    """The common ``/``-separated prefix of some blob names (a Dataset's
    name for its field blobs), or the first name if they share none."""
    names = [str(b) for b in blobs]
    if not names:
        return None
    parts = [n.split("/") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(names) == 1 and len(parts[0]) > 1:
        common = parts[0][:-1]
    return "/".join(common) or names[0]


def _add(items, x):
    x = str(x)
    if x not in items:
        items.append(x)


def _strip_node(name, node):
    prefix = "%s/" % node
    return name[len(prefix):] if node and name.startswith(prefix) else name


def _has_fanout(step):
    return _step_fanout(step) > 1


def _step_units(step, node):
    """A Plan's step as boxes: concurrent substeps each become boxes (so a
    plan made from a TaskGroup shows its tasks); the sequential setup
    around them ([init, body, exit]) is not drawn unless it reads or
    writes a queue or a cursor, but its queues are still found."""
    p = step.Proto()
    subs = step.Substeps()
    name = step.Name()
    setup = [s for s in subs if s.Name() in (name + ":init", name + ":exit")]
    bodies = [s for s in subs if s not in setup]
    if (setup and len(bodies) == 1 and bodies[0].Name().startswith(name + "/")
            and not p.network and not p.concurrent_substeps
            and p.num_concurrent_instances <= 1):
        # a node's setup around its one task ([node:init, node/task,
        # node:exit], as TaskGroup.tasks_by_node builds it): draw the task
        boxes, hidden = _step_units(bodies[0], node)
        return boxes, hidden + [_Unit(s.Name(), s, node) for s in setup]
    if not subs or p.num_concurrent_instances > 1 or not _has_fanout(step):
        return [_Unit(name, step, node)], []
    if p.concurrent_substeps and len(subs) > 1:
        pairs = [_step_units(s, node) for s in subs]
        return [u for b, _ in pairs for u in b], [u for _, h in pairs for u in h]
    boxes, hidden = [], []
    for name in list(p.network) + ([p.report_net] if p.report_net else []):
        hidden.append(_Unit("%s/%s" % (step.Name(), name), None, node,
                            ops=list(_net_ops(step.get_net(name).Proto()))))
    for s in subs:
        b, h = _step_units(s, node) if _has_fanout(s) else ([], [_Unit(s.Name(), s, node)])
        boxes += b
        hidden += h
    keep = [u for u in hidden if u.reads or u.writes or u.sources]
    return boxes + keep, [u for u in hidden if u not in keep]


class _DotGraph(object):
    """Builds the DOT text: clusters for groups and nodes, boxes for units,
    queues and sources, then edges."""

    def __init__(self):
        self.lines = []
        self.edges = []
        self._ids = 0
        self.queues = {}    # (node, blob) -> node id
        self.capacity = {}  # (node, blob) -> capacity, from every unit seen
        self.sources = {}   # (node, cursor) -> node id
        self.indent = 1

    def new_id(self, prefix):
        self._ids += 1
        return "%s%d" % (prefix, self._ids)

    def add(self, text):
        self.lines.append("  " * self.indent + text)

    @contextmanager
    def cluster(self, label, style):
        self.add("subgraph %s {" % _dot_str("cluster_" + self.new_id("c")))
        self.indent += 1
        self.add("label=%s; %s;" % (_dot_str(label), style))
        try:
            yield
        finally:
            self.indent -= 1
            self.add("}")

    def draw_units(self, boxes, hidden=()):
        """Boxes in the current cluster, plus the queues and sources they
        use that no earlier cluster declared."""
        for u in list(boxes) + list(hidden):
            for blob, cap in u.creates.items():
                if cap is not None or (u.node, blob) not in self.capacity:
                    self.capacity[(u.node, blob)] = cap
        if not boxes:
            self.add('%s [label="(no tasks)", shape=plaintext];' % self.new_id("e"))
        for u in boxes:
            uid = self.new_id("t")
            self.add("%s [label=%s, shape=box, style=\"rounded,filled\", "
                     "fillcolor=\"#dbe8f6\"];" % (uid, u.label()))
            for cursor, (op_type, batch, reader) in u.sources.items():
                sid = self._source(u.node, cursor, op_type, batch, reader)
                self.edges.append((sid, uid, ""))
            for blob in u.writes:
                self.edges.append((uid, self._queue(u.node, blob), ""))
            for dataset in u.sinks:
                self.edges.append((uid, self._sink(u.node, dataset), ""))
            for blob in u.reads:
                self.edges.append((self._queue(u.node, blob), uid, ""))
        for u in hidden:   # declare the queues setup creates, in this cluster
            for blob in u.creates:
                self._queue(u.node, blob)

    def _queue(self, node, blob):
        key = (node, blob)
        if key not in self.queues:
            qid = self.queues[key] = self.new_id("q")
            cap = self.capacity.get(key)
            cap_text = "capacity %s" % cap if cap is not None else "capacity ? (not created here)"
            self.add("%s [label=%s, shape=box, style=filled, fillcolor=\"#fdf2c6\"];"
                     % (qid, _dot_label(["queue " + blob, cap_text])))
        return self.queues[key]

    def _source(self, node, cursor, op_type, batch, reader=None):
        key = (node, cursor)
        if key not in self.sources:
            sid = self.sources[key] = self.new_id("s")
            name = reader or (cursor[:-len("/cursor")] if cursor.endswith("/cursor")
                              else cursor)
            lines = ["source " + name, op_type + (", batch %s" % batch if batch else "")]
            self.add("%s [label=%s, shape=cylinder, style=filled, fillcolor=\"#dff2df\"];"
                     % (sid, _dot_label(lines)))
        return self.sources[key]

    def _sink(self, node, dataset):
        key = (node, "sink", dataset)
        if key not in self.sources:
            sid = self.sources[key] = self.new_id("d")
            self.add("%s [label=%s, shape=cylinder, style=filled, fillcolor=\"#f3e0ef\"];"
                     % (sid, _dot_label(["dataset " + dataset, "written (Append)"])))
        return self.sources[key]

    def text(self, title):
        out = ["digraph %s {" % _dot_str(title),
               "  rankdir=LR; compound=true; fontname=\"Helvetica\";",
               "  node [fontname=\"Helvetica\"]; edge [fontname=\"Helvetica\"];"]
        out += self.lines
        seen = set()
        for a, b, label in self.edges:
            if (a, b) in seen:
                continue
            seen.add((a, b))
            out.append("  %s -> %s;" % (a, b))
        out.append("}")
        return "\n".join(out) + "\n"


_NODE_STYLE = 'style="dashed"; color="#7a7a7a"'
_GROUP_STYLE = 'style="rounded"; color="#3a6ea5"'


def _group_tasks(tg):
    """The tasks of ``tg`` without marking it used (``tasks()`` would)."""
    return list(tg._tasks) + list(tg._tasks_to_add)


def _draw_tasks(g, tasks):
    by_node = OrderedDict()
    for t in tasks:
        by_node.setdefault(t.node, []).append(t)
    if not by_node:
        g.draw_units([])
    for node, node_tasks in by_node.items():
        units = []
        for t in node_tasks:
            step = t.get_step()
            u = _Unit(_strip_node(t.name, node), step, node,
                      instances=t.num_instances() or None)
            for obj in step.get_all_attributes(TaskGroup.LOCAL_SETUP):
                blob = getattr(obj, "queue", None)
                cap = getattr(obj, "capacity", None)
                if callable(blob) and isinstance(cap, int):
                    u.creates.setdefault(str(blob()), cap)
            units.append(u)
        with g.cluster("node %s" % node, _NODE_STYLE):
            g.draw_units(units)


def _draw(g, obj):
    if isinstance(obj, Job):
        for label, group in (("init_group", obj.init_group),
                             ("epoch_group", obj.epoch_group),
                             ("download_group", obj.download_group),
                             ("exit_group", obj.exit_group)):
            with g.cluster("Job %s" % label, _GROUP_STYLE):
                _draw(g, group)
    elif isinstance(obj, TaskGroup):
        _draw_tasks(g, _group_tasks(obj))
    elif isinstance(obj, Task):
        _draw_tasks(g, [obj])
    elif isinstance(obj, Plan):
        with g.cluster("Plan %s" % obj.Proto().name, _GROUP_STYLE):
            boxes, hidden = [], []
            for step in obj.Steps():
                b, h = _step_units(step, None)
                boxes += b
                hidden += h
            g.draw_units(boxes, hidden)
    elif isinstance(obj, ExecutionStep):
        boxes, hidden = _step_units(obj, None)
        g.draw_units(boxes, hidden)
    elif isinstance(getattr(getattr(obj, "obj", obj), "plan", None), Plan):
        # a compiled group (Session.compile's CompiledRunnable, or the
        # CompiledJob in it; Job.compile's groups): draw its plan
        _draw(g, getattr(obj, "obj", obj).plan)
    else:
        raise ArgumentError(
            "to_dot: cannot draw a %s; expected a checkpoint.Job, task.TaskGroup, "
            "task.Task, core.Plan or core.ExecutionStep" % type(obj).__name__)


def to_dot(obj, title="fastpipe"):
    """A Job, TaskGroup, Task, Plan or ExecutionStep as Graphviz DOT text.

    Job groups and nodes are clusters; each task (each pipe) is a box
    labelled with its stage name and instance count (``normalise × 4``),
    with its Python stages and native op types; queues are boxes labelled
    with their blob name and capacity, with edges writer -> queue ->
    reader; cursor readers (datasets, array readers) are sources and
    Dataset writers (``Append``/``AtomicAppend``) sinks.  Works
    from the description only -- nothing runs, and the group is not
    grouped by node or marked used.

    Example::

        with TaskGroup() as tg:
            q = pipe(reader, processor=decode, num_runtime_threads=4)
            pipe(q, writer)
        open("job.dot", "w").write(net_printer.to_dot(tg))
    """
    g = _DotGraph()
    with proto.gc_paused():
        _draw(g, obj)
    return g.text(title)


def render(obj, path, timeout=60.0):
    """Draw ``obj`` (anything :func:`to_dot` takes) into ``path``: SVG, PNG
    or PDF by the path's suffix, made by the Graphviz ``dot`` program
    (``.dot``/``.gv`` write the DOT text itself).

    Raises:
        GraphvizNotFoundError: ``dot`` is not on PATH (``apt-get install
            graphviz``).
        ArgumentError: an unsupported suffix.
        RenderError: ``dot`` failed.
    """
    import os
    import shutil
    import subprocess

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".dot", ".gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_dot(obj))
        return path
    fmt = _RENDER_FORMATS.get(suffix)
    if fmt is None:
        raise ArgumentError("render: cannot tell the format of %r from its suffix %r; "
                            "use one of %s" % (path, suffix, ", ".join(
                                sorted(list(_RENDER_FORMATS) + [".dot", ".gv"]))))
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFoundError(
            "render(%r): the Graphviz 'dot' program is not on PATH; %s"
            % (path, _GRAPHVIZ_HINT))
    text = to_dot(obj)
    try:
        done = subprocess.run([dot, "-T" + fmt, "-o", path], input=text.encode("utf-8"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError("render(%r): dot took longer than %s s" % (path, timeout)) from None
    if done.returncode != 0:
        raise RenderError("render(%r): dot -T%s exited with %d: %s"
                          % (path, fmt, done.returncode,
                             done.stderr.decode("utf-8", "replace").strip()))
    return path
