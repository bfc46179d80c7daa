# The lowering stage: describe -> **lower** -> bind -> run.
#
# Consumes the graph layer's descriptions -- a PlanDef (nets plus a tree of
# ExecutionSteps) or a list of NetDefs, as fastpipe.core / fastpipe.proto
# build them -- and produces a Program: native, immutable descriptions
# (NetDesc of OpDesc, StepDesc trees; runtime.pxi) with every op's kernel
# resolved from the kernel table below and its arguments parsed once against
# its schema (fastpipe._opschema).  Everything about a plan that can be
# checked without data is checked here, with the GIL held, and reported as
# PlanError / OperatorDefError naming the step, net or op.
#
# Lowering never loops over runtime instances: a step with
# num_concurrent_instances=N is one StepDesc holding N.  Binding (runtime.pxi:
# net_compile / step_compile, blob names -> Blob*) happens per run on the
# run's threads; running is runtime.pxi's executor, started from api.pxi
# (Workspace.start_program -> Run).

import numpy as _np
np_integer = _np.integer
from fastpipe import _opschema
from fastpipe.proto import gc_paused as _gc_paused
from fastpipe import _pyop
from fastpipe.errors import PlanError, OperatorDefError


# ---- kernel table ---------------------------------------------------------------

ctypedef struct KernelEntry:
    kernel_fn run
    op_init_fn init
    op_fini_fn fini
    bint blocking

cdef vector[KernelEntry] g_kernels
_KERNEL_INDEX = {}


cdef void reg(str name, kernel_fn run, op_init_fn init=NULL, op_fini_fn fini=NULL,
              bint blocking=False):
    cdef KernelEntry e
    e.run = run
    e.init = init
    e.fini = fini
    e.blocking = blocking
    _KERNEL_INDEX[name] = g_kernels.size()
    g_kernels.push_back(e)


def registered_kernels():
    """Operator types that have a native kernel."""
    return sorted(_KERNEL_INDEX)


# ---- lowering: PlanDef / NetDef -> native descriptions ---------------------------------

cdef void fill_arg(ArgVal* a, spec, value):
    kind = spec.kind
    if value is None:
        value = spec.default
        if value is None:
            a.present = False
            return
    a.present = True
    if kind in ("int", "bool", "dtype"):
        a.i = int(value)
    elif kind == "float":
        a.f = float(value)
    elif kind == "str":
        a.s = value.encode("utf-8")
    elif kind == "ints":
        for x in value:
            a.ints.push_back(int(x))
    elif kind == "floats":
        for x in value:
            a.floats.push_back(float(x))
    elif kind == "strings":
        for x in value:
            a.strings.push_back(x.encode("utf-8") if isinstance(x, str) else bytes(x))
    else:  # value: (field, v)
        field, v = value
        a.vkind = ord(field)
        if field == "f":
            a.f = v
        elif field == "i":
            a.i = v
        else:
            a.s = v.encode("utf-8")


from libcpp.string cimport to_string

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef inline string _utf8(object s) except *:
    """A str's UTF-8 bytes as a std::string, without a bytes object (the
    UTF-8 form of an ASCII str is its own buffer)."""
    cdef Py_ssize_t n
    cdef const char* p
    if type(s) is not str:
        s = str(s)
    p = PyUnicode_AsUTF8AndSize(s, &n)
    return string(p, n)


cdef class Program:
    """A plan (or a set of nets) lowered to native descriptions, once.

    Compile cost grows with the size of the description, never with
    instance counts: a step with num_concurrent_instances=N is one
    StepDesc holding the integer N.

    Ops with equal content (type, arity and arguments; the same for every
    clone of a net) share one parsed template: lowering such an op is a
    copy of the template plus its names."""
    cdef vector[NetDesc*] nets
    cdef vector[NetDesc*] subnets       # control ops' subnets (NetDef arguments), for freeing
    cdef vector[StepDesc*] steps        # top-level steps, in order
    cdef vector[StepDesc*] all_steps    # every StepDesc, for freeing
    cdef vector[OpDesc*] templates      # one per distinct parsed op, for freeing
    cdef dict template_index            # id(parse_args result) -> (result, index)
    cdef dict arity_index               # (type, #in, #out) of arg-less ops -> index
    cdef list keep                      # Python objects OpDescs point to
    cdef dict net_index
    cdef readonly str name
    cdef readonly bint has_blocking     # some op may wait on a queue
    cdef object __weakref__

    def __cinit__(self):
        self.keep = []
        self.net_index = {}
        self.template_index = {}
        self.arity_index = {}
        self.name = ""

    def __dealloc__(self):
        cdef size_t i, j
        for i in range(self.nets.size()):
            for j in range(self.nets[i].ops.size()):
                del self.nets[i].ops[j]
            del self.nets[i]
        for i in range(self.subnets.size()):
            for j in range(self.subnets[i].ops.size()):
                del self.subnets[i].ops[j]
            del self.subnets[i]
        for i in range(self.all_steps.size()):
            del self.all_steps[i]
        for i in range(self.templates.size()):
            del self.templates[i]

    @staticmethod
    def from_plan(plan_def):
        cdef Program p = Program()
        p.name = plan_def.name
        # no garbage cycles are made here; see fastpipe.proto.gc_paused
        with _gc_paused():
            for nd in plan_def.network:
                if nd.name in p.net_index:
                    raise PlanError("plan %r: two nets are named %r" % (plan_def.name, nd.name))
                p._add_net(nd)
            for sd in plan_def.execution_step:
                p.steps.push_back(p._lower_step(sd, plan_def.name))
        return p

    @staticmethod
    def from_nets(net_defs):
        cdef Program p = Program()
        for nd in net_defs:
            if nd.name in p.net_index:
                raise PlanError("two nets are named %r" % nd.name)
            p._add_net(nd)
        return p

    def net_names(self):
        return list(self.net_index)

    cdef NetDesc* _add_net(self, nd) except NULL:
        cdef NetDesc* d = new NetDesc()
        cdef int k = 0
        self.net_index[nd.name] = self.nets.size()
        self.nets.push_back(d)
        net_name = nd.name
        d.name = _utf8(net_name)
        for od in nd.op:
            d.ops.push_back(self._lower_op(od, net_name, d.name, k))
            k += 1
        return d

    cdef NetDesc* _lower_subnet(self, nd, str path) except NULL:
        """A control op's NetDef argument as a child NetDesc, lowered by the
        same path as a top-level net (kernels, arguments, Python ops, nested
        control ops).  It is not one of the plan's nets: no step can name it
        and its instances belong to the op that binds it (control.pxi).
        ``path`` names it in messages: ``<net>/<op>.<argument>/<subnet>``."""
        cdef NetDesc* d = new NetDesc()
        cdef int k = 0
        self.subnets.push_back(d)
        d.name = _utf8(path)
        for od in nd.op:
            d.ops.push_back(self._lower_op(od, path, d.name, k))
            k += 1
        return d

    cdef Py_ssize_t _template(self, od, parsed, str net_name) except -1:
        """The index of the shared description of ops whose parse_args
        result is ``parsed``: kernel, type, parsed arguments."""
        entry = self.template_index.get(id(parsed))
        if entry is not None:
            return entry[1]
        schema, values = parsed
        kidx = _KERNEL_INDEX.get(od.type)
        if kidx is None:
            raise OperatorDefError("%s in net %r: operator type has no native kernel"
                                   % (od.type, net_name))
        cdef KernelEntry e = g_kernels[kidx]
        pyobj = None
        if od.type == "Python":
            token = values[schema.arg_index["token"]]
            try:
                func, pass_ws = _pyop.lookup(token)
            except KeyError:
                raise OperatorDefError("Python op in net %r: no function is registered "
                                       "under token %r" % (net_name, token))
            pyobj = (func, pass_ws)
            self.keep.append(pyobj)
        cdef NetDesc* sub
        cdef size_t j
        cdef OpDesc* d = new OpDesc()
        d.run = e.run
        d.init = e.init
        d.fini = e.fini
        d.blocking = e.blocking
        d.pyobj = <PyObject*>pyobj if pyobj is not None else NULL
        d.index = -1            # set per op by _lower_op
        d.type = _utf8(od.type)
        d.args.resize(len(schema.args))
        for k, (spec, value) in enumerate(zip(schema.args, values)):
            if spec.kind == "net":
                # a subnet: the slot holds its NetDesc (owned by this Program)
                d.args[k].present = value is not None
                if value is not None:
                    label = "%s %r" % (od.type, od.name) if od.name else od.type
                    try:
                        sub = self._lower_subnet(
                            value, "%s/%s.%s/%s" % (net_name, label, spec.name,
                                                    value.name or spec.name))
                    except BaseException:
                        del d
                        raise
                    d.args[k].i = <int64_t><size_t>sub
                    # an op whose subnet may wait on a queue may wait too
                    for j in range(sub.ops.size()):
                        if sub.ops[j].blocking:
                            d.blocking = True
                continue
            try:
                fill_arg(&d.args[k], spec, value)
            except OverflowError:
                del d
                raise OperatorDefError("%s in net %r: argument %s=%r is out of range for a "
                                       "64-bit value" % (od.type, net_name, spec.name, value))
        self.template_index[id(parsed)] = (parsed, self.templates.size())
        self.templates.push_back(d)
        return self.templates.size() - 1

    cdef OpDesc* _lower_op(self, od, str net_name, const string& net_b, int index) except NULL:
        cdef Py_ssize_t ti
        cdef dict fields = getattr(od, "__dict__", None)
        if fields is not None:
            ins = fields.get("input", ())
            outs = fields.get("output", ())
            op_type = fields.get("type", "")
        else:
            ins = od.input
            outs = od.output
            op_type = od.type
        if fields is not None and not fields.get("arg"):
            # no arguments: the template depends on type and arity only
            key = (op_type, len(ins), len(outs))
            idx = self.arity_index.get(key)
            if idx is not None:
                ti = idx
            else:
                ti = self._template(od, _opschema.parse_args(od, net_name), net_name)
                if _opschema.arity_only(op_type):
                    self.arity_index[key] = ti
        else:
            ti = self._template(od, _opschema.parse_args(od, net_name), net_name)
        cdef OpDesc* t = self.templates[ti]
        cdef OpDesc* d = new OpDesc()
        d[0] = t[0]
        if d.blocking:
            self.has_blocking = True
        op_name = fields.get("name") if fields is not None else od.name
        if op_name:
            d.label = _utf8("%s %r" % (op_type, op_name))
        else:
            d.label = d.type
            d.label.append(b" #")
            d.label.append(to_string(<long long>index))
        d.net = net_b
        d.index = index
        d.inputs.reserve(len(ins))
        for x in ins:
            d.inputs.push_back(_utf8(x))
        d.outputs.reserve(len(outs))
        for x in outs:
            d.outputs.push_back(_utf8(x))
        return d

    cdef NetDesc* _net(self, str name, str step_name) except NULL:
        idx = self.net_index.get(name)
        if idx is None:
            raise PlanError("step %r uses undefined net %r (nets of the plan: %s)"
                            % (step_name, name, ", ".join(sorted(self.net_index)) or "none"))
        return self.nets[idx]

    cdef StepDesc* _lower_step(self, sd, str plan_name) except NULL:
        name = sd.name or "step"
        # Types first: the checks below compare these fields with ints.
        for field in ("num_iter", "num_concurrent_instances", "run_every_ms",
                      "report_interval"):
            value = getattr(sd, field)
            if not isinstance(value, (int, np_integer)) or isinstance(value, bool):
                raise PlanError("step %r: %s must be an int, got %r" % (name, field, value))
        if sd.substep and sd.network:
            raise PlanError("step %r: a step can either have substeps or networks "
                            "but not both" % name)
        if sd.HasField("num_iter") and sd.should_stop_blob:
            raise PlanError("step %r: num_iter and should_stop_blob cannot both be set" % name)
        if sd.HasField("only_once") and not sd.should_stop_blob:
            raise PlanError("step %r: only_once without should_stop_blob is not supported" % name)
        if sd.num_concurrent_instances < 0:
            raise PlanError("step %r: num_concurrent_instances=%d must be >= 1"
                            % (name, sd.num_concurrent_instances))
        if sd.run_every_ms < 0:
            raise PlanError("step %r: run_every_ms=%d must be >= 0" % (name, sd.run_every_ms))
        if sd.report_net and sd.report_interval <= 0:
            raise PlanError("step %r: report_net %r needs report_interval > 0"
                            % (name, sd.report_net))
        if sd.num_concurrent_instances > 1:
            if not sd.substep:
                raise PlanError("step %r: num_concurrent_instances=%d needs substeps"
                                % (name, sd.num_concurrent_instances))
            for sub in sd.substep:
                if not sub.create_workspace:
                    raise PlanError(
                        "step %r: num_concurrent_instances=%d over substep %r without "
                        "create_workspace would run one net on %d threads; set "
                        "create_workspace on the substep"
                        % (name, sd.num_concurrent_instances, sub.name or "step",
                           sd.num_concurrent_instances))
        if sd.HasField("num_concurrent_instances") and sd.num_concurrent_instances < 1:
            raise PlanError("step %r: num_concurrent_instances=%d must be >= 1"
                            % (name, sd.num_concurrent_instances))
        cdef StepDesc* d = new StepDesc()
        self.all_steps.push_back(d)
        d.name = name.encode("utf-8")
        d.num_iter = sd.num_iter if sd.HasField("num_iter") else 1
        d.has_stop = bool(sd.should_stop_blob)
        d.stop_name = sd.should_stop_blob.encode("utf-8")
        d.only_once = sd.only_once
        d.concurrent = sd.concurrent_substeps
        d.create_workspace = sd.create_workspace
        d.num_instances = sd.num_concurrent_instances
        d.run_every_ms = sd.run_every_ms
        d.report_net = NULL
        d.report_interval_ms = 0
        if sd.report_net:
            d.report_net = self._net(sd.report_net, name)
            d.report_interval_ms = sd.report_interval * 1000
        for net_name in sd.network:
            d.nets.push_back(self._net(net_name, name))
        for sub in sd.substep:
            d.substeps.push_back(self._lower_step(sub, plan_name))
        return d


