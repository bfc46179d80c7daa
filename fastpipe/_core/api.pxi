# The Python-facing side of the core: numpy conversion, the kernel table,
# lowering of PlanDef/NetDef into native descriptions (Program), workspaces
# and the run driver.  Arguments are checked here with the GIL held; native
# code runs in `with nogil:`; its status becomes an exception in one place
# (_raise_status).

import weakref as _weakref
import numpy as _np
np_integer = _np.integer
from fastpipe import _opschema
from fastpipe.proto import gc_paused as _gc_paused
from fastpipe import _pyop
from fastpipe.errors import PlanError, RunError, QueueClosedError, BlobError, OperatorDefError


# ---- numpy conversion ---------------------------------------------------------

cdef int npy_type(int dt) noexcept:
    if dt == DT_FLOAT: return cnp.NPY_FLOAT32
    if dt == DT_DOUBLE: return cnp.NPY_FLOAT64
    if dt == DT_INT32: return cnp.NPY_INT32
    if dt == DT_INT64: return cnp.NPY_INT64
    if dt == DT_BOOL: return cnp.NPY_BOOL
    if dt == DT_UINT8 or dt == DT_BYTE: return cnp.NPY_UINT8
    if dt == DT_INT8: return cnp.NPY_INT8
    if dt == DT_INT16: return cnp.NPY_INT16
    if dt == DT_UINT16: return cnp.NPY_UINT16
    if dt == DT_FLOAT16: return cnp.NPY_FLOAT16
    return -1


_NP_TO_DT = {
    _np.dtype(_np.float32): DT_FLOAT, _np.dtype(_np.float64): DT_DOUBLE,
    _np.dtype(_np.int32): DT_INT32, _np.dtype(_np.int64): DT_INT64,
    _np.dtype(_np.bool_): DT_BOOL, _np.dtype(_np.uint8): DT_UINT8,
    _np.dtype(_np.int8): DT_INT8, _np.dtype(_np.int16): DT_INT16,
    _np.dtype(_np.uint16): DT_UINT16, _np.dtype(_np.float16): DT_FLOAT16,
}


cdef object tensor_to_numpy(Tensor* src):
    """A copy of src as a numpy array (strings: an object array of bytes),
    from a consistent, pinned snapshot (a run may be rewriting the blob)."""
    cdef Tensor snap
    tensor_snapshot(src, &snap)
    try:
        return _snapshot_to_numpy(&snap)
    finally:
        buf_decref(snap.buf)


cdef object _snapshot_to_numpy(Tensor* t):
    cdef int i
    cdef string* ss
    cdef bytes bo
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.dtype == DT_UNDEFINED:
        raise RunError("tensor has no value yet")
    if t.dtype == DT_STRING:
        out = _np.empty(shape, dtype=object)
        flat = out.reshape(-1)
        ss = <string*>t.buf.data
        for i in range(t.size):
            bo = ss[i]
            flat[i] = bo
        return out
    cdef cnp.ndarray arr = _np.empty(shape, dtype=_np.dtype(cnp.PyArray_TypeObjectFromType(npy_type(t.dtype))))
    if t.size:
        memcpy(cnp.PyArray_DATA(arr), t.buf.data, t.size * dtype_itemsize(t.dtype))
    return arr


cdef void feed_tensor(Blob* b, value) except *:
    """Copy a numpy-convertible value into the blob's tensor."""
    cdef int64_t dims[MAX_DIMS]
    cdef int i, dt
    cdef cnp.ndarray arr
    cdef string* ds
    cdef Tensor* t
    name = b.name.decode("utf-8", "replace")
    if isinstance(value, (str, bytes)):
        value = _np.array(value, dtype=object)
    arr = _np.asarray(value)
    if arr.ndim > MAX_DIMS:
        raise ValueError("blob %r: %d dims, at most %d are supported" % (name, arr.ndim, MAX_DIMS))
    kind = arr.dtype.kind
    if kind in "SUO":
        dt = DT_STRING
    else:
        dt = _NP_TO_DT.get(arr.dtype, -1)
        if dt < 0:
            raise TypeError("blob %r: numpy dtype %s is not supported (use float32/64, "
                            "int8/16/32/64, uint8/16, bool, float16 or strings)"
                            % (name, arr.dtype))
    for i in range(arr.ndim):
        dims[i] = arr.shape[i]
    t = blob_out(b)
    rc = tensor_reshape(t, dt, arr.ndim, dims)
    if rc == -4:
        raise ValueError("blob %r: shape %r is too large" % (name, tuple(_np.shape(value))))
    if rc != 0:
        raise MemoryError("feeding blob %r" % name)
    if dt == DT_STRING:
        ds = <string*>t.buf.data
        for i, x in enumerate(arr.reshape(-1)):
            if isinstance(x, str):
                x = x.encode("utf-8")
            elif not isinstance(x, bytes):
                raise TypeError("blob %r: string tensors hold str or bytes, got %s"
                                % (name, type(x).__name__))
            ds[i] = <string>x
    else:
        arr = _np.ascontiguousarray(arr)
        if t.size:
            memcpy(t.buf.data, cnp.PyArray_DATA(arr), t.size * dtype_itemsize(dt))


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
    cdef vector[StepDesc*] steps        # top-level steps, in order
    cdef vector[StepDesc*] all_steps    # every StepDesc, for freeing
    cdef vector[OpDesc*] templates      # one per distinct parsed op, for freeing
    cdef dict template_index            # id(parse_args result) -> (result, index)
    cdef dict arity_index               # (type, #in, #out) of arg-less ops -> index
    cdef list keep                      # Python objects OpDescs point to
    cdef dict net_index
    cdef readonly str name
    cdef readonly bint has_blocking     # some op may wait on a queue

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
        cdef OpDesc* d = new OpDesc()
        d.run = e.run
        d.init = e.init
        d.fini = e.fini
        d.blocking = e.blocking
        d.pyobj = <PyObject*>pyobj if pyobj is not None else NULL
        d.type = _utf8(od.type)
        d.args.resize(len(schema.args))
        for k, (spec, value) in enumerate(zip(schema.args, values)):
            fill_arg(&d.args[k], spec, value)
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
        for field in ("num_iter", "num_concurrent_instances", "run_every_ms",
                      "report_interval"):
            value = getattr(sd, field)
            if not isinstance(value, (int, np_integer)) or isinstance(value, bool):
                raise PlanError("step %r: %s must be an int, got %r" % (name, field, value))
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


# ---- runs ------------------------------------------------------------------------------

cdef cppclass PlanRun:
    RunState* rs
    WS* ws
    vector[StepDesc*] steps
    NetInst* net
    int64_t num_iter
    fp_thread th


cdef void rs_finish(RunState* rs) noexcept nogil:
    fp_lock(&rs.lock)
    rs.done = True
    fp_broadcast(&rs.done_cv)
    fp_unlock(&rs.lock)


cdef void plan_body(PlanRun* pr) noexcept nogil:
    cdef RunCtx ctx
    cdef CStep* cs
    cdef size_t i
    cdef int64_t k
    ctx.rs = pr.rs
    ctx.step = NULL
    ctx.instance = -1
    if pr.net != NULL:
        for k in range(pr.num_iter):
            if rs_cancelled(&ctx) or net_run(pr.net, &ctx) != 0:
                break
        return
    for i in range(pr.steps.size()):
        cs = step_compile(pr.steps[i], pr.ws, &ctx, False)
        if cs == NULL:
            break
        if exec_step(cs, &ctx) != 0:
            cstep_free(cs)
            break
        cstep_free(cs)


cdef void* plan_main(void* arg) noexcept nogil:
    cdef PlanRun* pr = <PlanRun*>arg
    plan_body(pr)
    rs_finish(pr.rs)
    return NULL


cdef void ws_drop_run_nets(WS* ws, int64_t run_id) noexcept nogil:
    """Remove the nets a finished run instantiated in ws (their descriptions
    belong to the run's Program)."""
    cdef vector[NetInst*] dead
    fp_lock(&ws.lock)
    it = ws.nets.begin()
    while it != ws.nets.end():
        if deref(it).second.run_id == run_id:
            dead.push_back(deref(it).second)
            it = ws.nets.erase(it)
        else:
            inc(it)
    fp_unlock(&ws.lock)
    for n in dead:
        net_decref(n)


cdef object _raise_status(RunState* rs):
    """The one place where a native status becomes a Python exception."""
    code = rs.err_code
    msg = rs.err_msg.decode("utf-8", "replace")
    if code == E_OK:
        return
    if code == E_INTERRUPT:
        raise KeyboardInterrupt()
    if code == E_PLAN:
        raise PlanError(msg)
    if code == E_MEMORY:
        raise MemoryError(msg)
    if code == E_QUEUE_CLOSED:
        raise QueueClosedError(msg)
    if code == E_PYTHON and rs.err_exc != NULL:
        cause = <object>rs.err_exc
        raise RunError(msg) from cause
    raise RunError(msg)


cdef void _interrupt_python_ops(RunState* rs):
    """Raise KeyboardInterrupt in every thread running a Python op of rs
    (with the GIL held; they pick it up at their next bytecode)."""
    cdef vector[long] tids
    cdef size_t i
    fp_lock(&rs.lock)
    tids = rs.py_threads
    fp_unlock(&rs.lock)
    for i in range(tids.size()):
        PyThreadState_SetAsyncExc(tids[i], <PyObject*>KeyboardInterrupt)


cdef object drive(PlanRun* pr, bint inline_ok):
    """Run pr to completion.  Inline (on this thread, GIL released) when
    nothing can block; otherwise on a native driver thread while this thread
    waits in 50 ms slices and checks for signals, so Ctrl-C works."""
    cdef RunState* rs = pr.rs
    cdef bint done = False
    cdef bint interrupted = False
    cdef int rc
    if inline_ok:
        with nogil:
            plan_body(pr)
        return
    with nogil:
        rc = fp_thread_start(&pr.th, plan_main, pr)
    if rc != 0:
        raise RuntimeError("could not start the run's driver thread (errno %d)" % rc)
    while True:
        with nogil:
            fp_lock(&rs.lock)
            if not rs.done:
                fp_wait_until(&rs.done_cv, &rs.lock, fp_now_ns() + 50000000)
            done = rs.done
            fp_unlock(&rs.lock)
        if done:
            break
        try:
            PyErr_CheckSignals()
        except KeyboardInterrupt:
            interrupted = True
            with nogil:
                rs_fail(rs, E_INTERRUPT, b"interrupted")
        if interrupted:
            _interrupt_python_ops(rs)
    with nogil:
        fp_thread_join(&pr.th)
    if interrupted:
        raise KeyboardInterrupt()


cdef class Workspace:
    """A native workspace: name -> blob, with an optional parent whose blobs
    are visible (Caffe2's create-through-parent rule applies).  Safe to use
    from several Python threads; several runs may use it at once."""
    cdef WS* ws
    cdef readonly Workspace parent
    cdef dict programs          # CreateNet'd net name -> Program owning its description
    cdef int64_t active         # runs in progress (guarded by the GIL)
    cdef object children        # live child workspaces (weak): they hold Blob* into this one
    cdef object __weakref__

    def __cinit__(self, Workspace parent=None):
        self.ws = ws_new(parent.ws if parent is not None else NULL)
        self.parent = parent
        self.programs = {}
        self.active = 0
        self.children = _weakref.WeakSet()
        if parent is not None:
            parent.children.add(self)

    cdef _check_can_free(self, str what):
        """Freeing blobs under a live child or a run would leave their
        compiled ops pointing at freed memory: refuse instead."""
        if self.active:
            raise RuntimeError("cannot %s while a run uses the workspace" % what)
        if len(self.children):
            raise RuntimeError("cannot %s while %d child workspace(s) of it exist "
                               "(they may hold its blobs)" % (what, len(self.children)))

    def __dealloc__(self):
        if self.ws != NULL:
            with nogil:
                ws_free(self.ws)

    # -- blobs
    def has_blob(self, name):
        cdef string s = _bname(name)
        return ws_find(self.ws, s) != NULL

    def blob_names(self, local_only=False):
        cdef WS* w = self.ws
        seen = []
        seenset = set()
        while w != NULL:
            fp_lock(&w.lock)
            try:
                names = [kv.first.decode("utf-8", "replace") for kv in w.blobs]
            finally:
                fp_unlock(&w.lock)
            for n in sorted(names):
                if n not in seenset:
                    seenset.add(n)
                    seen.append(n)
            if local_only:
                break
            w = w.parent
        return seen

    def create_blob(self, name):
        cdef string s = _bname(name)
        with nogil:
            ws_create(self.ws, s)
        return True

    def feed(self, name, value):
        cdef string s = _bname(name)
        cdef Blob* b
        with nogil:
            b = ws_create(self.ws, s)
        feed_tensor(b, value)
        return True

    cdef Blob* _get(self, name) except NULL:
        cdef string s = _bname(name)
        cdef Blob* b = ws_find(self.ws, s)
        if b == NULL:
            raise BlobError("blob %r does not exist in this workspace" % str(name))
        return b

    def fetch(self, name):
        cdef Blob* b = self._get(name)
        if b.obj != NULL:
            return _ObjHandle.wrap(b)
        if b.t.dtype == DT_UNDEFINED:
            raise BlobError("blob %r exists but has no value yet" % str(name))
        return tensor_to_numpy(&b.t)

    def blob_kind(self, name):
        """'tensor', 'empty', or the native object kind ('queue', 'counter'...)."""
        cdef Blob* b = self._get(name)
        if b.obj != NULL:
            return OBJ_NAMES[b.obj.kind].decode()
        return "tensor" if b.t.dtype != DT_UNDEFINED else "empty"

    def remove_blob(self, name):
        cdef string s = _bname(name)
        cdef Blob* b = NULL
        cdef size_t i, j
        self._check_can_free("remove blob %r" % str(name))
        fp_lock(&self.ws.lock)
        it = self.ws.blobs.find(s)
        if it != self.ws.blobs.end():
            b = deref(it).second
        for kv in self.ws.nets:
            for i in range(kv.second.ops.size()):
                for j in range(kv.second.ops[i].ins.size()):
                    if kv.second.ops[i].ins[j] == b and b != NULL:
                        fp_unlock(&self.ws.lock)
                        raise RuntimeError("cannot remove blob %r: net %r uses it"
                                           % (str(name), kv.second.d.name.decode()))
                for j in range(kv.second.ops[i].outs.size()):
                    if kv.second.ops[i].outs[j] == b and b != NULL:
                        fp_unlock(&self.ws.lock)
                        raise RuntimeError("cannot remove blob %r: net %r uses it"
                                           % (str(name), kv.second.d.name.decode()))
        b = NULL
        it = self.ws.blobs.find(s)
        if it != self.ws.blobs.end():
            b = deref(it).second
            self.ws.blobs.erase(it)
        fp_unlock(&self.ws.lock)
        if b == NULL:
            return False
        blob_free(b)
        return True

    def reset(self):
        self._check_can_free("reset the workspace")
        with nogil:
            ws_clear(self.ws)
        self.programs.clear()

    # -- nets
    def create_net(self, net_def, overwrite=False):
        cdef Program p = Program.from_nets([net_def])
        cdef RunState* rs
        cdef RunCtx ctx
        cdef NetInst* n
        cdef NetInst* old = NULL
        cdef string s = net_key(net_def.name.encode("utf-8"), 0)
        if not overwrite and net_def.name in self.programs:
            raise RuntimeError("I respectfully refuse to overwrite an existing net of the "
                               "same name %r, unless you explicitly specify overwrite=True."
                               % net_def.name)
        rs = rs_new()
        ctx.rs = rs
        ctx.step = NULL
        ctx.instance = -1
        with nogil:
            n = net_compile(p.nets[0], self.ws, &ctx)
        if n == NULL:
            try:
                _raise_status(rs)
            finally:
                rs_free(rs)
        rs_free(rs)
        n.run_id = 0
        n.shared = True     # RunNet may be called from several Python threads
        fp_lock(&self.ws.lock)
        it = self.ws.nets.find(s)
        if it != self.ws.nets.end():
            old = deref(it).second
        self.ws.nets[s] = n
        fp_unlock(&self.ws.lock)
        net_decref(old)
        self.programs[net_def.name] = p
        return True

    def has_net(self, name):
        return name in self.programs

    def net_names(self):
        return sorted(self.programs)

    def run_net(self, name, num_iter=1):
        cdef string s = net_key(str(name).encode("utf-8"), 0)
        cdef NetInst* n = NULL
        cdef PlanRun* pr
        cdef bint inline_ok = True
        cdef size_t i
        fp_lock(&self.ws.lock)
        it = self.ws.nets.find(s)
        if it != self.ws.nets.end() and deref(it).second.run_id == 0:
            n = deref(it).second
            fp_fetch_add(&n.refcnt, 1)
        fp_unlock(&self.ws.lock)
        if n == NULL:
            raise RuntimeError("net %r does not exist in this workspace (call CreateNet first)"
                               % str(name))
        for i in range(n.ops.size()):
            if n.ops[i].d.blocking:
                inline_ok = False
        pr = new PlanRun()
        pr.rs = rs_new()
        pr.ws = self.ws
        pr.net = n
        pr.num_iter = num_iter
        self.active += 1
        try:
            drive(pr, inline_ok)
            _raise_status(pr.rs)
        finally:
            self.active -= 1
            net_decref(n)
            rs_free(pr.rs)
            del pr
        return True

    def run_program(self, Program prog, bint inline=False):
        """Run every top-level step of prog, in order (on this thread when
        `inline`, for plans that cannot block)."""
        cdef PlanRun* pr = new PlanRun()
        cdef size_t i
        pr.rs = rs_new()
        pr.ws = self.ws
        pr.net = NULL
        pr.steps = prog.steps
        self.active += 1
        try:
            drive(pr, inline)
            _raise_status(pr.rs)
        finally:
            self.active -= 1
            with nogil:
                ws_drop_run_nets(pr.ws, pr.rs.run_id)
            rs_free(pr.rs)
            del pr
        return True


cdef inline string _bname(name) except *:
    if isinstance(name, bytes):
        return name
    return str(name).encode("utf-8")


cdef class _ObjHandle:
    """What FetchBlob returns for a blob that holds a native object."""
    cdef ObjHeader* h
    cdef readonly str kind

    @staticmethod
    cdef _ObjHandle wrap(Blob* b):
        cdef _ObjHandle o = _ObjHandle.__new__(_ObjHandle)
        o.h = blob_get_obj(b)
        o.kind = OBJ_NAMES[o.h.kind].decode() if o.h != NULL else "none"
        return o

    def __dealloc__(self):
        obj_decref(self.h)

    def __repr__(self):
        return "<fastpipe native %s>" % self.kind
