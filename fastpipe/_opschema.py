"""Operator schemas: one per operator type.

A schema states the operator's arity, its typed arguments with defaults and
a docstring.  The graph layer validates every operator against it when the
operator is added to a net (``net.OpType(...)``), and the lowering step
(``fastpipe/_core/lower.pxi``) validates again and turns the arguments into the
fixed, ordered slots the native kernel reads.  A schema never touches data.

Argument kinds:

* ``int``, ``bool``   -- read from ``Argument.i`` (Python bools are stored there)
* ``float``           -- read from ``Argument.f`` (an int in ``i`` is accepted)
* ``str``             -- read from ``Argument.s``
* ``ints``, ``floats``, ``strings`` -- the repeated fields
* ``dtype``           -- a DataType: an int in ``i`` or a case-insensitive name in ``s``
* ``value``           -- any scalar (ConstantFill's ``value``: f, i or s)
* ``net``             -- a NetDef in ``Argument.n`` (the control ops' subnets); the
  lowering step lowers it to a child net description
"""

from .errors import ArgumentError, NotSupportedError, OperatorDefError

INF = 1 << 30

# Caffe2 DataType codes (caffe2.proto TensorProto.DataType).
UNDEFINED, FLOAT, INT32, BYTE, STRING, BOOL, UINT8, INT8, UINT16, INT16, \
    INT64, FLOAT16, DOUBLE = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13

DTYPE_NAMES = {
    "UNDEFINED": UNDEFINED, "FLOAT": FLOAT, "INT32": INT32, "BYTE": BYTE,
    "STRING": STRING, "BOOL": BOOL, "UINT8": UINT8, "INT8": INT8,
    "UINT16": UINT16, "INT16": INT16, "INT64": INT64, "FLOAT16": FLOAT16,
    "DOUBLE": DOUBLE,
}

_KINDS = ("int", "bool", "float", "str", "ints", "floats", "strings",
          "dtype", "value", "net")


class ArgSpec(object):
    __slots__ = ("name", "kind", "default", "doc")

    def __init__(self, name, kind, default=None, doc=""):
        if kind not in _KINDS:
            raise ArgumentError("unknown argument kind %r" % kind)
        self.name = name
        self.kind = kind
        self.default = default
        self.doc = doc


class OpSchema(object):
    """Arity, arguments and doc of one operator type.

    ``inputs``/``outputs`` are ``(min, max)``; ``check`` is an optional
    callable ``check(op_def, args) -> str or None`` for rules that tie
    arguments and arity together (it returns an error message).
    """

    __slots__ = ("type", "inputs", "outputs", "args", "doc", "check",
                 "arg_index", "ignored")

    def __init__(self, type, inputs, outputs, args=(), doc="", check=None,
                 ignored=()):
        self.type = type
        self.inputs = inputs
        self.outputs = outputs
        self.args = tuple(args)
        self.doc = doc
        self.check = check
        self.arg_index = {a.name: i for i, a in enumerate(self.args)}
        # argument names Caffe2 code passes that mean nothing here: accepted
        # (once each) and dropped, so they reach neither the kernel's slots
        # nor its argument table
        self.ignored = frozenset(ignored)


REGISTRY = {}


def register(type, inputs, outputs, args=(), doc="", check=None, ignored=()):
    if isinstance(inputs, int):
        inputs = (inputs, inputs)
    if isinstance(outputs, int):
        outputs = (outputs, outputs)
    REGISTRY[type] = OpSchema(type, inputs, outputs, args, doc, check, ignored)


def get(op_type):
    return REGISTRY.get(op_type)


def is_operator(op_type):
    return op_type in REGISTRY


def _where(op_def, net_name):
    name = " %r" % op_def.name if op_def.name else ""
    net = " in net %r" % net_name if net_name else ""
    return "%s%s%s" % (op_def.type, name, net)


def arg_value(arg, spec, where):
    """Decode one Argument proto according to its spec (raises OperatorDefError)."""
    kind = spec.kind
    has = arg.HasField

    def bad(expected):
        got = [f for f in ("f", "i", "s") if has(f)] + \
              [f for f in ("floats", "ints", "strings") if getattr(arg, f)]
        return OperatorDefError(
            "%s: argument %r expects %s, got %s" %
            (where, spec.name, expected, ", ".join(got) or "no value"))

    if kind in ("int", "bool"):
        if has("i"):
            return bool(arg.i) if kind == "bool" else int(arg.i)
        if has("f") and float(arg.f).is_integer() and kind == "int":
            return int(arg.f)
        raise bad("an int" if kind == "int" else "a bool")
    if kind == "float":
        if has("f"):
            return float(arg.f)
        if has("i"):
            return float(arg.i)
        raise bad("a float")
    if kind == "str":
        if has("s"):
            s = arg.s
            return s.decode("utf-8") if isinstance(s, bytes) else str(s)
        raise bad("a string")
    if kind == "ints":
        if has("i") or has("f") or has("s") or arg.floats or arg.strings:
            if not (arg.floats and all(float(x).is_integer() for x in arg.floats)):
                raise bad("a list of ints")
            return [int(x) for x in arg.floats]
        return [int(x) for x in arg.ints]
    if kind == "floats":
        if has("i") or has("f") or has("s") or arg.strings:
            raise bad("a list of floats")
        return [float(x) for x in (arg.floats or arg.ints)]
    if kind == "strings":
        if has("i") or has("f") or has("s") or arg.ints or arg.floats:
            raise bad("a list of strings")
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s)
                for s in arg.strings]
    if kind == "dtype":
        if has("i"):
            code = int(arg.i)
            if code not in DTYPE_NAMES.values():
                raise OperatorDefError("%s: argument %r: unknown data type %d"
                                       % (where, spec.name, code))
            return code
        if has("s"):
            s = arg.s.decode() if isinstance(arg.s, bytes) else str(arg.s)
            code = DTYPE_NAMES.get(s.upper())
            if code is None:
                raise OperatorDefError("%s: argument %r: unknown data type %r"
                                       % (where, spec.name, s))
            return code
        raise bad("a data type")
    if kind == "net":
        if has("n"):
            return arg.n
        raise bad("a NetDef")
    # 'value': keep the field it came in
    if has("f"):
        return ("f", float(arg.f))
    if has("i"):
        return ("i", int(arg.i))
    if has("s"):
        s = arg.s
        return ("s", s.decode("utf-8") if isinstance(s, bytes) else str(s))
    raise bad("a scalar value")


# (type, #inputs, #outputs, argument content[, inputs, outputs]) -> the
# (schema, values) parse_args returned.  Ops built from one template (a net
# cloned per node, N copies of a pipe) share their arguments, so most ops
# are parsed once.  Bounded; cleared when full.
_PARSE_CACHE = {}
_PARSE_CACHE_MAX = 8192
_MAX_CACHED_LIST = 256   # longer repeated arguments (tensor values) are not cached


def _args_key(args):
    """A hashable key of the argument protos' content, or None (net-valued
    or very long arguments are not cached)."""
    key = []
    for arg in args:
        items = []
        for k, v in arg.__dict__.items():
            if type(v) is list:
                if len(v) > _MAX_CACHED_LIST:
                    return None
                v = tuple(v)
            elif k == "n" or k == "nets":
                return None
            elif k == "s" and type(v) is not bytes:
                v = bytes(v)    # a Python op's _pyop.Token: the key must not keep it alive
            items.append((k, v))
        key.append(tuple(items))
    return tuple(key)


def parse_args(op_def, net_name=None):
    """Validate ``op_def`` against its schema.

    Returns ``(schema, values)`` where ``values`` is a list in schema order,
    ``None`` marking an argument that was not given (the kernel uses the
    default).  ``values`` may be shared between calls: do not modify it.
    Raises :class:`OperatorDefError` (a ``ValueError``) naming the
    operator, net and argument on any problem.

    Results are memoised by the op's content (type, arity, arguments, and
    the input/output names when the schema's check reads them); errors are
    not, so every bad op raises with its own name and net.
    """
    op_type = op_def.type
    schema = REGISTRY.get(op_type)
    if schema is None:
        return _parse_args(op_def, net_name)
    fields = getattr(op_def, "__dict__", None)
    # (reading op_def.arg would store an empty list in an op that has none)
    args = fields.get("arg") if fields is not None else op_def.arg
    if args:
        akey = _args_key(args)
        if akey is None:
            return _parse_args(op_def, net_name)
    else:
        akey = ()
    if schema.check is None or schema.check in _ARG_ONLY_CHECKS:
        key = (op_type, len(op_def.input), len(op_def.output), akey)
    else:
        key = (op_type, tuple(op_def.input), tuple(op_def.output), akey)
    hit = _PARSE_CACHE.get(key)
    if hit is not None and hit[0] is schema:
        return hit
    result = _parse_args(op_def, net_name)
    if len(_PARSE_CACHE) >= _PARSE_CACHE_MAX:
        _PARSE_CACHE.clear()
    _PARSE_CACHE[key] = result
    return result


def arity_only(op_type):
    """True when parse_args of an argument-less op of this type depends on
    nothing but its type and arity (so its result can be shared)."""
    schema = REGISTRY.get(op_type)
    return schema is not None and (schema.check is None or
                                   schema.check in _ARG_ONLY_CHECKS)


def _parse_args(op_def, net_name):
    where = _where(op_def, net_name)
    schema = REGISTRY.get(op_def.type)
    if schema is None:
        raise OperatorDefError("%s: unknown operator type %r" % (where, op_def.type))
    nin, nout = len(op_def.input), len(op_def.output)
    lo, hi = schema.inputs
    if not lo <= nin <= hi:
        raise OperatorDefError("%s: takes %s inputs, got %d" %
                               (where, _range(lo, hi), nin))
    lo, hi = schema.outputs
    if not lo <= nout <= hi:
        raise OperatorDefError("%s: takes %s outputs, got %d" %
                               (where, _range(lo, hi), nout))
    values = [None] * len(schema.args)
    seen = set()
    fields = getattr(op_def, "__dict__", None)
    for arg in (fields.get("arg") or () if fields is not None else op_def.arg):
        idx = schema.arg_index.get(arg.name)
        if idx is None and arg.name not in schema.ignored:
            raise OperatorDefError(
                "%s: unknown argument %r (accepted: %s)" %
                (where, arg.name, ", ".join(a.name for a in schema.args) or "none"))
        if arg.name in seen:
            raise OperatorDefError("%s: argument %r given twice" % (where, arg.name))
        seen.add(arg.name)
        if idx is not None:
            values[idx] = arg_value(arg, schema.args[idx], where)
    if schema.check is not None:
        full = {a.name: (v if v is not None else a.default)
                for a, v in zip(schema.args, values)}
        msg = schema.check(op_def, full)
        if msg:
            raise OperatorDefError("%s: %s" % (where, msg))
    return schema, values


def _range(lo, hi):
    if lo == hi:
        return "exactly %d" % lo
    if hi >= INF:
        return "at least %d" % lo
    return "%d to %d" % (lo, hi)


A = ArgSpec


def _bcast_args():
    return [A("broadcast", "bool", False, "legacy Caffe2 broadcast of B over A"),
            A("axis", "int", -1, "anchor B's dims at this axis of A")]


def _arg_names(op):
    """Names of the arguments given to ``op`` (without storing an empty
    ``arg`` list in an op that has none, as reading ``op.arg`` would)."""
    fields = getattr(op, "__dict__", None)
    args = fields.get("arg") if fields is not None else op.arg
    return {x.name for x in args} if args else set()


def _check_bcast(op, a):
    if not a["broadcast"] and "axis" in _arg_names(op):
        return "argument 'axis' requires broadcast=1"
    return None


# --- fills ----------------------------------------------------------------


def _check_constant_fill(op, a):
    given = _arg_names(op)
    if op.input:
        if "shape" in given:
            return "cannot set argument 'shape' when an input is given"
    else:
        if "extra_shape" in given:
            return "argument 'extra_shape' needs an input"
        if a["input_as_shape"]:
            return "argument 'input_as_shape' needs an input"
    if any(x < 0 for x in (a["shape"] or []) + (a["extra_shape"] or [])):
        return "shape dims must be >= 0"
    return None


# Caffe2's fills take 'run_once'; every fastpipe fill writes its output each
# time it runs, which is what a net run once sees.
_FILL_IGNORED = ("run_once",)

register("ConstantFill", (0, 1), 1, [
    A("shape", "ints", []), A("extra_shape", "ints", []),
    A("input_as_shape", "bool", False), A("value", "value", None),
    A("dtype", "dtype", None)],
    "Fill a tensor with one value. Shape from 'shape' (missing/empty: 0-d) "
    "or from the input. dtype defaults to FLOAT, or is inferred from value. "
    "'run_once' (Caffe2's fill flag) is accepted and ignored.",
    _check_constant_fill, ignored=_FILL_IGNORED)


def _check_given(op, a):
    if any(x < 0 for x in a["shape"]):
        return "shape dims must be >= 0"
    n = 1
    for d in a["shape"]:
        n *= d
    if n != len(a["values"] or []):
        return ("shape %s has %d elements but %d values were given"
                % (list(a["shape"]), n, len(a["values"] or [])))
    return None


for _t, _k in (("GivenTensorFill", "floats"), ("GivenTensorDoubleFill", "floats"),
               ("GivenTensorIntFill", "ints"), ("GivenTensorInt64Fill", "ints"),
               ("GivenTensorBoolFill", "ints"), ("GivenTensorStringFill", "strings")):
    register(_t, 0, 1, [A("shape", "ints", []), A("values", _k, [])],
             "Fill a tensor with the given values (row-major). 'run_once' is "
             "accepted and ignored.", _check_given, ignored=_FILL_IGNORED)

# --- basic ------------------------------------------------------------------

register("Copy", 1, 1, doc="Y = deep copy of X (same dims and dtype).")
register("Not", 1, 1, doc="Element-wise logical not of a bool tensor.")
for _t in ("And", "Or", "Xor"):
    register(_t, 2, 1, _bcast_args(), "Element-wise logical %s of bools." % _t.lower(),
             _check_bcast)
for _t in ("LT", "LE", "GT", "GE", "EQ", "NE"):
    register(_t, 2, 1, _bcast_args(), "Element-wise comparison; bool output.",
             _check_bcast)
for _t in ("Add", "Sub", "Mul", "Div"):
    register(_t, 2, 1, _bcast_args(),
             "Element-wise arithmetic (int32, int64, float, double).", _check_bcast)
register("Sum", (1, INF), 1, doc="Element-wise sum of inputs with equal dims.")
register("Scale", 1, 1, [A("scale", "float", 1.0)], "Y = scale * X (float types).")
register("Cast", 1, 1, [A("to", "dtype", None), A("from_type", "dtype", None)],
         "Element-wise static_cast to 'to'.",
         lambda op, a: None if a["to"] is not None else "argument 'to' is required")
register("IsEmpty", 1, 1, doc="Bool scalar: X has no elements.")
def _check_print(op, a):
    if a["every_n"] < 1:
        return "every_n=%d must be >= 1" % a["every_n"]
    if a["limit"] < 0:
        return "limit=%d must be >= 0 (0: the default of 1000 elements)" % a["limit"]
    return None


register("Print", 1, 0, [A("to_file", "bool", False), A("limit", "int", 0),
                         A("every_n", "int", 1)],
         "Print a tensor to stdout (to_file: to <root folder>/<blob>.log); at most "
         "'limit' elements (0: 1000), on the 1st, (n+1)th, (2n+1)th... run.",
         _check_print)

# --- counters, mutex, append ------------------------------------------------


def _check_counter(op, a):
    if a.get("init_count", 0) < 0:
        return "init_count=%d must be >= 0" % a["init_count"]
    return None


register("CreateCounter", 0, 1, [A("init_count", "int", 0)],
         "Create an atomic int64 counter.", _check_counter)
register("ResetCounter", 1, (0, 1), [A("init_count", "int", 0)],
         "Set the counter; optional output: previous value.", _check_counter)
register("CountDown", 1, 1, doc="Decrement; output bool: count was <= 0.")
register("CountUp", 1, 1, doc="Increment; output int64: previous value.")
register("CheckCounterDone", 1, 1, doc="Output bool: count <= 0.")
register("RetrieveCount", 1, 1, doc="Output int64: current count.")
register("CreateMutex", 0, 1, doc="Create a mutex blob.")


def _check_atomic_append(op, a):
    n = len(op.input) - 1
    if n % 2 or n // 2 != len(op.output):
        return "expects inputs (mutex, A1..Ak, B1..Bk) and outputs A1..Ak"
    k = n // 2
    for i in range(k):
        if op.input[1 + i] != op.output[i]:
            return "output %d must be the same blob as input %d" % (i, 1 + i)
    return None


register("AtomicAppend", (3, INF), (1, INF), check=_check_atomic_append,
         doc="Under the mutex, append each B_i to A_i along dim 0.")


def _check_python(op, a):
    if not a["token"]:
        return "argument 'token' is required"
    return None


register("Python", (0, INF), (0, INF),
         [A("token", "str", ""), A("grad_input_indices", "ints", []),
          A("grad_output_indices", "ints", [])],
         "Call a Python function f(inputs, outputs) (takes the GIL).", _check_python)


def _check_python_stage(op, a):
    if not a["token"]:
        return "argument 'token' is required"
    fields = a["fields"]
    if len(fields) != len(op.output) - 1:
        return ("%d output field name(s) %r for %d output blob(s): the outputs are the "
                "fields plus a last bool 'keep' blob" % (len(fields), list(fields),
                                                        len(op.output)))
    if len(set(fields)) != len(fields):
        return "output field names %r are not unique" % (list(fields),)
    inst, n = a["instance"], a["num_instances"]
    if (inst < 0) != (n < 1):
        return ("instance=%d and num_instances=%d: give both (a static copy) or "
                "neither (the runtime instance)" % (inst, n))
    if n >= 1 and not 0 <= inst < n:
        return "instance=%d must be in [0, num_instances=%d)" % (inst, n)
    return None


register("PythonStage", (1, INF), (2, INF),
         [A("token", "str", "", "the stage's function or factory (fastpipe._pyop)"),
          A("fields", "strings", [], "output field names, one per output but the last"),
          A("stage", "str", "", "the stage's name, for messages"),
          A("instance", "int", -1, "static copy index (-1: the runtime instance)"),
          A("num_instances", "int", 0, "static copy count (0: the runtime's)")],
         "A per-record Python stage (pipeline.PythonProcessor): calls fn(*input arrays) "
         "with the GIL held for the call only and writes its result into the outputs "
         "(the fields, then a bool 'keep': false when fn returned None).  A factory "
         "token is called as factory(instance, num_instances) once per op instance.",
         _check_python_stage)

# --- queues -----------------------------------------------------------------


def _check_create_queue(op, a):
    if a["capacity"] < 1:
        return "capacity=%d must be >= 1" % a["capacity"]
    if a["num_blobs"] < 1:
        return "num_blobs=%d must be >= 1" % a["num_blobs"]
    if a["num_blobs"] > 64:
        return "num_blobs=%d: a record has at most 64 blobs" % a["num_blobs"]
    if a["field_names"] and len(a["field_names"]) != a["num_blobs"]:
        return ("field_names has %d names but num_blobs=%d"
                % (len(a["field_names"]), a["num_blobs"]))
    return None


register("CreateBlobsQueue", 0, 1, [
    A("capacity", "int", 1), A("num_blobs", "int", 1),
    A("enforce_unique_name", "bool", False), A("field_names", "strings", []),
    A("strict_close", "bool", False,
      "fastpipe: reject every write after close (status true / op failure)")],
    "Create a bounded blob queue.", _check_create_queue)


def _check_enqueue(op, a):
    if len(op.input) - 1 != len(op.output):
        return "expects outputs d1..dn equal to inputs d1..dn"
    for i, o in enumerate(op.output):
        if op.input[1 + i] != o:
            return "output %d must be the same blob as input %d (in-place)" % (i, 1 + i)
    return None


register("EnqueueBlobs", (2, INF), (1, INF), check=_check_enqueue,
         doc="Blocking write; fails if the queue is closed and full.")
register("DequeueBlobs", 1, (1, INF), [A("timeout_secs", "float", 0.0)],
         "Blocking read; fails when closed and empty or on timeout.",
         lambda op, a: "timeout_secs must be >= 0" if a["timeout_secs"] < 0 else None)
register("CloseBlobsQueue", 1, 0, doc="Close the queue and wake every waiter.")


def _check_safe_enqueue(op, a):
    if len(op.output) != len(op.input):
        return "expects outputs d1..dn, status for inputs queue, d1..dn"
    for i, o in enumerate(op.output[:-1]):
        if op.input[1 + i] != o:
            return "output %d must be the same blob as input %d (in-place)" % (i, 1 + i)
    return None


register("SafeEnqueueBlobs", (2, INF), (2, INF), check=_check_safe_enqueue,
         doc="Blocking write; status output is true iff the write failed.")
register("SafeDequeueBlobs", 1, (2, INF), [A("num_records", "int", 1)],
         "Blocking read of up to num_records records, concatenated on dim 0; "
         "status true iff closed and empty.",
         lambda op, a: ("num_records=%d must be >= 1" % a["num_records"]
                        if a["num_records"] < 1 else None))


def _check_weighted(op, a):
    t = a["table_idx_blob"]
    if t >= len(op.output) - 1:
        # Caffe2: CAFFE_ENFORCE_LT(table_idx_blob_, OutputSize() - 1)
        return ("table_idx_blob=%d must name one of the %d outputs before the status "
                "(< %d), or be -1" % (t, len(op.output) - 1, len(op.output) - 1))
    w = a["weights"]
    if w and len(w) != len(op.input):
        return "weights has %d values for %d queues" % (len(w), len(op.input))
    if w and (any(x < 0 for x in w) or sum(w) <= 0):
        return "weights must be >= 0 with a positive sum"
    return None


register("WeightedSampleDequeueBlobs", (1, INF), (2, INF),
         [A("weights", "floats", []), A("table_idx_blob", "int", -1)],
         "Pick a queue by weight and read one record from it. With "
         "table_idx_blob=t the picked queue's index goes to output t as int32[1]: "
         "it overwrites that record column when the op has as many data outputs "
         "as the queue has blobs (Caffe2), or is an extra output when it has one more.",
         _check_weighted)

# --- rebatching queues (rebatch.pxi) -------------------------------------------

def _check_create_rebatching(op, a):
    if a["capacity"] < 1:
        return "capacity=%d must be >= 1" % a["capacity"]
    if a["num_blobs"] < 1:
        return "num_blobs=%d must be >= 1" % a["num_blobs"]
    return None


register("CreateRebatchingQueue", 0, 1, [A("capacity", "int", 1), A("num_blobs", "int", 1)],
         "Create a bounded queue of records that re-batches: enqueue can split a "
         "batch into records, dequeue concatenates records on a new dim 0.",
         _check_create_rebatching)
register("EnqueueRebatchingQueue", (2, INF), 0, [A("enqueue_batch", "bool", False)],
         "Blocking write of inputs d1..dn (copied) as one record, or with "
         "enqueue_batch as one record per row of dim 0 (every input must agree "
         "on dim 0); fails once the queue is closed.")
register("DequeueRebatchingQueue", 1, (1, INF), [A("num_elements", "int", 1)],
         "Blocking read of num_elements records (fewer once the queue is closed), "
         "concatenated along a new dim 0; fails when closed and empty.",
         lambda op, a: ("num_elements=%d must be >= 1" % a["num_elements"]
                        if a["num_elements"] < 1 else None))
register("CloseRebatchingQueue", 1, 0,
         doc="Close the rebatching queue: writes fail, reads drain, waiters wake.")

# --- timers and stats -------------------------------------------------------

register("TimerBegin", 0, 1, [A("counter_name", "str", "")],
         "Start a timer; stats go to <counter_name>/time_ns.")
register("TimerEnd", 1, 0, doc="Stop the timer and add its time to the stats.")
register("TimerGetAndEnd", 1, 1, doc="Elapsed ns (int64 [1]), then stop.")
register("TimerGet", 1, 1, doc="Elapsed ns (int64 0-d).")
# fastpipe has one process-wide stat registry: a separate registry handle
# would be silently ignored, so the forms that pass one are rejected.
_ONE_REGISTRY = ("separate stat registries are not supported; omit the registry "
                 "handle to use the process-wide registry (fastpipe.stats)")
register("StatRegistryCreate", 0, 1, doc="Not supported (one process-wide registry).",
         check=lambda op, a: _ONE_REGISTRY)
register("StatRegistryExport", 0, 3, [A("reset", "bool", True)],
         "Export keys, values and a timestamp from the process-wide registry.")
register("StatRegistryUpdate", 2, 0,
         doc="Add values to keys in the process-wide registry.")

# --- dataset ----------------------------------------------------------------

register("CreateTreeCursor", 0, 1, [A("fields", "strings", [])],
         "Create a cursor over a dataset with the given field names.")
register("ResetCursor", 1, 0, doc="Rewind the cursor.")


def _check_read_next(op, a):
    if len(op.input) - 1 != len(op.output):
        return "expects one output per field input"
    if a["batch_size"] < 1:
        return "batch_size=%d must be >= 1" % a["batch_size"]
    return None


register("ReadNextBatch", (1, INF), (0, INF),
         [A("batch_size", "int", 1), A("enforce_batch_size", "bool", False)],
         "Read the next batch of records atomically.", _check_read_next)
register("ComputeOffset", (1, INF), 1, doc="Offsets of every record; resets the cursor.")
SEED_MAX = 2147483646    # default_random_engine seeds are distinct in [1, 2^31 - 2]


def _check_sort_and_shuffle(op, a):
    seed = a["seed"]
    if seed is not None and not 1 <= seed <= SEED_MAX:
        return "seed=%d must be in [1, %d] (or not given: a random seed per run)" % (seed, SEED_MAX)
    return None


register("SortAndShuffle", (1, INF), 1,
         [A("sort_by_field_idx", "int", 1), A("batch_size", "int", 1),
          A("shuffle_size", "int", 1),
          A("seed", "int", None,
            "fastpipe: shuffle with this seed (the same permutation every time; "
            "1 is Caffe2's fixed permutation); not given: a random seed per run")],
         "Indices of records, sorted by a field's lengths and shuffled in blocks.",
         _check_sort_and_shuffle)


def _check_read_random(op, a):
    if len(op.input) - 3 != len(op.output):
        return "expects inputs (cursor, indices, offsets, fields...) and one output per field"
    if a["batch_size"] < 1:
        return "batch_size=%d must be >= 1" % a["batch_size"]
    return None


register("ReadRandomBatch", (3, INF), (0, INF),
         [A("batch_size", "int", 1), A("enforce_batch_size", "bool", False),
          A("loop_over", "bool", False)],
         "Read a batch following an index permutation.", _check_read_random)
register("CheckDatasetConsistency", (1, INF), 0, [A("fields", "strings", [])],
         "Check that the fields form a consistent dataset.",
         lambda op, a: (None if len(a["fields"]) == len(op.input) else
                        "fields has %d names for %d inputs"
                        % (len(a["fields"]), len(op.input))))


def _check_trim_dataset(op, a):
    if len(a["fields"]) != len(op.input):
        return "fields has %d names for %d inputs" % (len(a["fields"]), len(op.input))
    if len(op.output) != len(op.input):
        return "expects one output per field input (in place), got %d" % len(op.output)
    for i, (x, y) in enumerate(zip(op.input, op.output)):
        if x != y:
            return ("output %d ('%s') must be the same blob as input %d ('%s'): "
                    "TrimDataset trims in place" % (i, y, i, x))
    if a["multiple_of"] < 1:
        return "multiple_of=%d must be >= 1" % a["multiple_of"]
    return None


register("TrimDataset", (1, INF), (1, INF),
         [A("fields", "strings", []), A("multiple_of", "int", 1)],
         "Trim the dataset in place to the largest number of top-level records that "
         "is a multiple of 'multiple_of'; nested (lengths) fields are cut where the "
         "kept records end.", _check_trim_dataset)



# fastpipe.sources (private ops of ArrayReader and Dataset.epoch_reader).
register("EpochPermutation", 2, 1,
         doc="fastpipe: a uniform permutation of the rows of input 1 (int64 [N]) drawn "
             "from input 0, an int64 [2] key (seed, epoch): mt19937_64 over std::seed_seq "
             "and Fisher-Yates, the same in every process.")


def _check_read_array(op, a):
    first = 2 if a["permuted"] else 1
    if len(op.input) < first or len(op.output) != len(op.input) - first + 1:
        return ("expects inputs (cursor, %sfields...) and outputs (stop, one per field)"
                % ("indices, " if a["permuted"] else ""))
    if a["batch_size"] < 1:
        return "batch_size=%d must be >= 1" % a["batch_size"]
    if a["record"] and a["batch_size"] != 1:
        return "record=True reads single records: batch_size=%d must be 1" % a["batch_size"]
    return None


register("ReadArrayBatch", (1, INF), (1, INF),
         [A("batch_size", "int", 1), A("enforce_batch_size", "bool", False),
          A("record", "bool", False,
            "one record without the batch dimension (batch_size must be 1)"),
          A("permuted", "bool", False,
            "input 1 is an int64 permutation of the records to read through")],
         "fastpipe: read the next batch of flat array fields through a shared cursor "
         "(fastpipe.sources.ArrayReader); output 0 is the stop flag.", _check_read_array)

def _check_read_segments(op, a):
    first = 2 if a["permuted"] else 1
    nseg = len(a["segment_rows"])
    if nseg < 1:
        return "segment_rows is empty: give the rows of every segment"
    if any(r < 0 for r in a["segment_rows"]):
        return "segment_rows=%r: every entry must be >= 0" % (list(a["segment_rows"]),)
    nin = len(op.input) - first
    if nin < nseg or nin % nseg or len(op.output) != nin // nseg + 1:
        return ("expects inputs (cursor, %s%d segments per field...) and outputs (stop, one per "
                "field), got %d inputs and %d outputs"
                % ("indices, " if a["permuted"] else "", nseg, len(op.input), len(op.output)))
    if a["batch_size"] < 1:
        return "batch_size=%d must be >= 1" % a["batch_size"]
    if a["record"] and a["batch_size"] != 1:
        return "record=True reads single records: batch_size=%d must be 1" % a["batch_size"]
    return None


register("ReadSegmentBatch", (2, INF), (1, INF),
         [A("batch_size", "int", 1), A("enforce_batch_size", "bool", False),
          A("record", "bool", False,
            "one record without the batch dimension (batch_size must be 1)"),
          A("permuted", "bool", False,
            "input 1 is an int64 permutation of the records to read through"),
          A("segment_rows", "ints", [], "the rows of every segment, in order"),
          A("counters", "str", None,
            "stat key prefix: <counters>/{borrowed,assembled,gathered}_batches count reads")],
         "fastpipe: read the next batch of flat fields held in segments (one per shard) "
         "through a shared cursor (fastpipe.sources.NpyReader); a batch inside a segment "
         "borrows its bytes, one across segments is assembled; output 0 is the stop flag.",
         _check_read_segments)


# --- data ops (fastpipe/_core/dataops.pxi) -----------------------------------


def _check_order(op, a):
    if "axis" in _arg_names(op) and "order" in _arg_names(op):
        return "give 'axis' or 'order', not both"
    if a["order"] not in ("NCHW", "NHWC"):
        return "order=%r must be 'NCHW' or 'NHWC'" % (a["order"],)
    return None


register("BooleanMask", 2, (1, 2), doc=(
    "Rows of data (dim 0) where the 1-D bool mask is true; optional output 1: their "
    "int64 indices. Any dtype, strings included."))
register("Gather", 2, 1, [A("axis", "int", 0, "the dimension of data the indices select"),
                          A("wrap_indices", "bool", None, "a negative index counts from the "
                            "end (not given: only for axis 0, as in Caffe2)")],
         "out = data taken at int32/int64 indices along 'axis': shape "
         "data[:axis] + indices.shape + data[axis+1:] (data's shape when that dim is "
         "empty). An index outside [-dim, dim) (without wrapping: [0, dim)) is an error. "
         "Any dtype, strings included.")
register("Concat", (1, INF), (1, 2),
         [A("axis", "int", None, "the dimension to join along (negative: from the end); "
            "not given: from 'order'"),
          A("order", "str", "NCHW", "without 'axis': NCHW joins dim 1, NHWC dim 3"),
          A("add_axis", "bool", False, "stack along a new dimension at 'axis' instead")],
         "Join the inputs along 'axis' (equal dtype, equal dims elsewhere); optional "
         "output 1 (split_info): int32 sizes of each input along the axis. Any dtype.",
         lambda op, a: _check_order(op, a))


def _check_split(op, a):
    if a["split"] and len(op.input) > 1:
        return "give the split sizes as argument 'split' or as input 1, not both"
    if a["split"] and len(a["split"]) != len(op.output):
        return ("argument 'split' has %d sizes for %d outputs"
                % (len(a["split"]), len(op.output)))
    if any(x < 0 for x in a["split"]):
        return "split sizes must be >= 0"
    return _check_order(op, a)


register("Split", (1, 2), (1, INF),
         [A("axis", "int", None, "the dimension to split (negative: from the end); "
            "not given: from 'order'"),
          A("split", "ints", [], "sizes along the axis, one per output (or input 1); "
            "none: equal parts"),
          A("order", "str", "NCHW", "without 'axis': NCHW splits dim 1, NHWC dim 3"),
          A("add_axis", "bool", False, "drop the axis from the outputs (sizes must be 1)")],
         "Split the input along 'axis' into the outputs. Any dtype.", _check_split)


def _check_reshape(op, a):
    given = "shape" in _arg_names(op)
    if given and len(op.input) > 1:
        return ("give the new shape as argument 'shape' or as input 1, not both")
    if not given and len(op.input) < 2:
        return "the new shape is required: argument 'shape' or input 1"
    if any(x < -1 for x in a["shape"] or []):
        return "shape %s: dims must be >= -1" % (list(a["shape"]),)
    if sum(1 for x in a["shape"] or [] if x == -1) > 1:
        return "shape %s has more than one -1" % (list(a["shape"]),)
    return None


register("Reshape", (1, 2), (1, 2), [A("shape", "ints", None,
                                       "new dims; 0 copies the input's dim, one -1 is inferred")],
         "A view of the data with a new shape (no bytes copied; in place when output 0 is "
         "the input); optional output 1: the old shape (int64).", _check_reshape)


def _check_slice(op, a):
    given = _arg_names(op) & {"starts", "ends"}
    if len(op.input) == 3:
        if given:
            return "give starts/ends as arguments or as inputs 1 and 2, not both"
    elif len(op.input) == 1:
        if given != {"starts", "ends"}:
            return "arguments 'starts' and 'ends' are required (or inputs 1 and 2)"
        if len(a["starts"]) != len(a["ends"]):
            return ("starts %s and ends %s differ in length"
                    % (list(a["starts"]), list(a["ends"])))
    else:
        return "takes 1 input (with starts/ends arguments) or 3 (data, starts, ends)"
    return None


register("Slice", (1, 3), 1,
         [A("starts", "ints", None, "start per leading dim (negative: from the end + 1)"),
          A("ends", "ints", None, "end per leading dim, exclusive (-1: through the last)")],
         "Copy of data[starts:ends] per dim (dims past len(starts) whole; indices past "
         "the end are clamped). Any dtype, strings included.", _check_slice)


def _check_dims(op, a):
    if any(d < 0 for d in a["dims"]):
        return "dims %s must be >= 0" % (list(a["dims"]),)
    return None


register("ExpandDims", 1, 1, [A("dims", "ints", [], "positions of the new size-1 dims")],
         "A view with size-1 dims inserted at 'dims' (sorted, duplicates dropped).",
         lambda op, a: _check_dims(op, a) or (
             None if a["dims"] else "argument 'dims' is required"))
register("Squeeze", 1, 1, [A("dims", "ints", [], "size-1 dims to drop")],
         "A view without the size-1 dims 'dims' (each must be 1).",
         lambda op, a: _check_dims(op, a) or (
             None if a["dims"] else "argument 'dims' is required"))


def _check_transpose(op, a):
    axes = a["axes"]
    if axes and sorted(axes) != list(range(len(axes))):
        return "axes %s is not a permutation of 0..%d" % (list(axes), len(axes) - 1)
    return None


register("Transpose", 1, 1, [A("axes", "ints", [], "output dim i is input dim axes[i]; "
                                                     "none: reversed")],
         "Permute the dims (a copy). Numeric and bool dtypes.", _check_transpose)
register("Clip", 1, 1, [A("min", "float", None, "lower bound (none: unbounded)"),
                        A("max", "float", None, "upper bound (none: unbounded)")],
         "Y = min(max(X, min), max) element-wise, in place when Y is X. Numeric dtypes.")


def _check_random_fill(lo_name, hi_name, strict):
    def check(op, a):
        nin = len(op.input)
        # (shape, min, max): the shape rules are those of one input
        msg = _check_constant_fill(_FirstInputOnly(op) if nin == 3 else op, a)
        if msg:
            return msg
        lo, hi = a[lo_name], a[hi_name]
        if strict and not hi > lo:
            return "%s=%r must be > 0" % (hi_name, hi)
        if not strict:
            if nin == 3:
                if _arg_names(op) & {lo_name, hi_name}:
                    return ("the bounds come from inputs 1 and 2: do not also set "
                            "argument %r or %r" % (lo_name, hi_name))
            elif nin == 2:
                return "takes 0 or 1 input (the shape), or 3 (shape, min, max)"
            elif not lo < hi:
                return "%s=%r must be < %s=%r" % (lo_name, lo, hi_name, hi)
        return None
    return check


class _FirstInputOnly(object):
    """An op seen with only its first input (the filler checks' shape rules)."""

    def __init__(self, op):
        self.input = list(op.input)[:1]
        self.arg = [a for a in op.arg] if _arg_names(op) else []


_check_uniform_fill = _check_random_fill("min", "max", False)
_check_gaussian_fill = _check_random_fill("dummy_zero", "std", True)


def _fill_args(a_name, a_default, a_doc, b_name, b_default, b_doc):
    return [A("shape", "ints", []), A("extra_shape", "ints", []),
            A("input_as_shape", "bool", False),
            A(a_name, "float", a_default, a_doc), A(b_name, "float", b_default, b_doc),
            A("seed", "int", None, "fastpipe: seed the op's generator (xoshiro256** over "
              "splitmix64(seed)): the same values in every run and process, and in every "
              "instance of the op (as Caffe2's random_seed); not given: a random seed per "
              "run and instance")]


register("UniformFill", (0, 3), 1,
         _fill_args("min", 0.0, "lower bound", "max", 1.0, "upper bound (exclusive)"),
         "float32 uniform in [min, max). Shape as ConstantFill's; with 3 inputs (shape, "
         "min, max) the bounds are float32 scalars and min > max empties dim 0.",
         lambda op, a: _check_uniform_fill(op, a), ignored=_FILL_IGNORED)
register("GaussianFill", (0, 1), 1,
         _fill_args("mean", 0.0, "mean", "std", 1.0, "standard deviation (> 0)"),
         "float32 normal(mean, std). Shape as ConstantFill's.",
         lambda op, a: _check_gaussian_fill(op, dict(a, dummy_zero=0.0)),
         ignored=_FILL_IGNORED)
# --- text files (fastpipe.text_file_reader; kernels in _core/textfile.pxi) -----
TEXT_FIELD_TYPES = {INT8: "int8", INT16: "int16", INT32: "int32", INT64: "int64",
                    UINT8: "uint8", UINT16: "uint16", FLOAT: "float32", DOUBLE: "float64",
                    STRING: "string"}


def _check_create_text_file_reader(op, a):
    if not a["filename"]:
        return "filename is required (the path of the TSV file to read)"
    if a["num_passes"] < 1:
        return "num_passes=%d must be >= 1" % a["num_passes"]
    if not a["field_types"]:
        return "field_types is empty: the file needs at least one field"
    return _check_text_fields(a)


def _check_create_text_file_writer(op, a):
    if not a["filename"]:
        return "filename is required"
    if not a["field_types"]:
        return "field_types is required (one DataType per field)"
    return _check_text_fields(a)


def _check_text_fields(a):
    """field_types / field_names of the TSV reader and writer."""
    types = a["field_types"]
    for i, t in enumerate(types):
        if t not in TEXT_FIELD_TYPES:
            return ("field_types[%d]=%r is not a supported DataType (supported: %s)"
                    % (i, t, ", ".join("%d (%s)" % kv for kv in sorted(TEXT_FIELD_TYPES.items()))))
    names = a["field_names"]
    if names and len(names) != len(types):
        return "field_names has %d names for %d field_types" % (len(names), len(types))
    return None


def _check_text_file_reader_read(op, a):
    if a["batch_size"] < 1:
        return "batch_size=%d must be >= 1" % a["batch_size"]
    return None


register("CreateTextFileReader", 0, 1,
         [A("filename", "str", ""), A("num_passes", "int", 1),
          A("field_types", "ints", []),
          A("field_names", "strings", [],
            "fastpipe: the fields' names, for error messages (optional)")],
         "Open a TSV file (one record per line, fields separated by tabs, '\\n' or "
         "'\\r\\n' line ends) as a reader object shared by every op that reads it.",
         _check_create_text_file_reader)
register("TextFileReaderRead", 1, (1, INF), [A("batch_size", "int", 1)],
         "Read up to batch_size lines: one 1-D output per field; empty outputs at the "
         "end of the last pass.", _check_text_file_reader_read)
register("CreateTextFileWriter", 0, 1,
         [A("filename", "str", ""), A("append", "bool", False),
          A("field_types", "ints", []),
          A("field_names", "strings", [], "the fields' names, for error messages (optional)")],
         "fastpipe: open (create; truncate unless append) a TSV file for writing as a writer "
         "object shared by every op that writes it.", _check_create_text_file_writer)
register("TextFileWriterWrite", (1, INF), 0, [],
         "fastpipe: append one line per record of the 1-D field inputs (after the writer), "
         "numbers formatted with std::to_chars (shortest round trip); a batch's lines are "
         "written together under the writer's lock.")
register("TextFileWriterClose", 1, (0, 1), [],
         "fastpipe: close the writer's file (again: a no-op); the optional output is the "
         "number of lines written (int64).")


# --- control ops (kernels: _core/control.pxi) -------------------------------
# Caffe2's If / While / Do / CreateScope.  Subnets are NetDef arguments; the
# lowering step turns each into a child net description, bound once per op
# instance (so N runtime instances get N bindings).


def _check_if(op, a):
    if a["then_net"] is None:
        return "then_net must be specified in If operator"
    return None


def _check_while(op, a):
    if a["loop_net"] is None:
        return "loop_net must be specified in While operator"
    return None


def _check_do(op, a):
    """Caffe2's DoOp constructor checks: the last input and output are the same
    workspace blob; the other inputs (outputs) are distinct; inner_blobs and
    outer_blobs_idx bind every outer name exactly once."""
    if a["net"] is None:
        return "net must be specified in Do operator"
    if getattr(op, "is_gradient_op", False):
        return "gradient Do operators are not supported (fastpipe runs forward nets only)"
    if a["copy_external_blobs"] and a["reuse_workspace"]:
        return "reuse_workspace and copy_external_blobs cannot both be set"
    ins, outs = list(op.input), list(op.output)
    if ins[-1] != outs[-1]:
        return ("the last input (%r) and the last output (%r) must be the same "
                "workspace blob (made by CreateScope)" % (ins[-1], outs[-1]))
    ins, outs = ins[:-1], outs[:-1]
    if len(set(ins)) != len(ins):
        return "duplicate input blobs %s" % ins
    if len(set(outs)) != len(outs):
        return "duplicate output blobs %s" % outs
    inner, idx = a["inner_blobs"] or [], a["outer_blobs_idx"] or []
    if len(inner) != len(idx):
        return ("invalid blob bindings: inner_blobs has %d names but outer_blobs_idx "
                "has %d indices" % (len(inner), len(idx)))
    outer = ins + outs
    used = set()
    seen = set()
    for name, k in zip(inner, idx):
        if name in seen:
            return "invalid blob bindings: inner blob %r is bound twice" % name
        seen.add(name)
        if not 0 <= k < len(outer):
            return ("invalid blob bindings: outer blob index %d (inner name %r) is out "
                    "of bounds [0, %d]" % (k, name, len(outer) - 1))
        if outer[k] in used:
            return "invalid blob bindings: outer blob %r is bound twice" % outer[k]
        used.add(outer[k])
    if used != set(outer):
        return ("invalid blob bindings: outer blobs %s are not bound to any inner blob"
                % sorted(set(outer) - used))
    return None


register("If", (1, INF), (0, INF), [
    A("then_net", "net", None, "net run when the condition is true"),
    A("else_net", "net", None, "net run when it is false (optional)"),
], "Run then_net (else else_net) in this workspace if input 0, a bool scalar, is "
   "true.  The other inputs and the outputs name the blobs the subnets read and "
   "write (for dependency tracking only).", check=_check_if)
register("While", (1, INF), (0, INF), [
    A("loop_net", "net", None, "net run while the condition is true"),
    A("cond_net", "net", None, "net run before each check of the condition (optional)"),
], "Run cond_net (if any), then, while input 0 (a bool scalar) is true, loop_net "
   "and cond_net again, in this workspace.  Cancelling the run stops the loop "
   "between iterations.", check=_check_while)
register("Do", (1, INF), (1, INF), [
    A("net", "net", None, "the subnet"),
    A("inner_blobs", "strings", [], "inner blob names bound to outer blobs"),
    A("outer_blobs_idx", "ints", [], "per inner blob, the index of its outer blob "
      "among the inputs then the outputs (the workspace blobs skipped)"),
    A("saved_fwd_blobs", "strings", [], "blobs the gradient Do needs (kept for "
      "Caffe2 compatibility: fastpipe has no gradient Do)"),
    A("reuse_workspace", "bool", False, "Caffe2: reuse the last child workspace; "
      "fastpipe always keeps one child workspace per op binding"),
    A("copy_external_blobs", "bool", False, "Caffe2: copy forwarded tensors into the "
      "child after the run (for gradients); no effect on forward results"),
], "Run the subnet in a child workspace that sees only the bound outer blobs "
   "(inner_blobs[k] is the outer blob outer_blobs_idx[k]); every other blob the "
   "subnet makes stays local to the child.  The last input and output are the "
   "workspace blob made by CreateScope.", check=_check_do)
register("CreateScope", 0, 1, doc=(
    "Make the workspace blob a Do op names as its last input and output.  fastpipe "
    "keeps each Do's child workspace in the Do op's own binding, so the blob "
    "carries no data."))
# ---- checkpoints: Save / Load / DBExists / GetAllBlobNames over minidb ----------

DB_TYPES = ("minidb",)


class DbNotSupportedError(OperatorDefError, NotSupportedError):
    """A Save/Load/DBExists op asks for a db type (or DBReader inputs) fastpipe does
    not provide."""


def _check_db_type(op, a):
    db_type = a["db_type"]
    if db_type not in DB_TYPES:
        raise DbNotSupportedError(
            "%s: db_type=%r is not supported: fastpipe reads and writes only 'minidb' "
            "(its own format, docs/minidb.md)%s" % (
                _where(op, None), db_type,
                "" if db_type else "; Caffe2 also requires a db type"))


def _check_save(op, a):
    _check_db_type(op, a)
    if not a["db"]:
        return "Must specify a db name (argument db)"
    over = a["blob_name_overrides"]
    if over and len(over) != len(op.input):
        return "blob_name_overrides has %d names for %d inputs" % (len(over), len(op.input))
    names = list(over) if over else [str(x) for x in op.input]
    strip = a["strip_prefix"]
    if strip:
        names = [n[n.find(strip) + len(strip):] if strip in n else n for n in names]
    seen = set()
    for n in names:
        if n in seen:
            return "duplicated blob name %r in the db (after strip_prefix/blob_name_overrides)" % n
        seen.add(n)
    return None


def _check_load(op, a):
    if len(op.input):
        raise DbNotSupportedError(
            "%s: DBReader inputs (%d given) are not provided by fastpipe: name the db(s) "
            "with db= or dbs= and db_type='minidb'" % (_where(op, None), len(op.input)))
    _check_db_type(op, a)
    dbs = a["dbs"]
    if not dbs and not a["db"]:
        return "Must specify a db name (argument db or dbs)"
    if dbs:
        if any(not d for d in dbs):
            return "Db name should not be empty (argument dbs)"
        if len(set(dbs)) != len(dbs):
            return "Duplicated db name in dbs=%r" % (list(dbs),)
    src = a["source_blob_names"]
    if src and len(src) != len(op.output):
        return ("Number of output blobs (%d) and source_blob_names (%d) mismatch"
                % (len(op.output), len(src)))
    if src and a["strip_prefix"]:
        return "strip_prefix and source_blob_names are mutually exclusive"
    if src and a["load_all"]:
        return "cannot load_all while using source_blob_names"
    if not a["load_all"]:
        names = list(src) if src else [str(x) for x in op.output]
        if len(set(names)) != len(names):
            return "Duplicated source blob name in %r" % (names,)
    return None


def _check_db_exists(op, a):
    _check_db_type(op, a)
    return None


_PATH_DOC = ("absolute path; otherwise relative to the workspace root folder "
             "(the current directory, as Caffe2's default '.')")
register("Save", (1, INF), 0,
         [A("absolute_path", "bool", False, "db is an " + _PATH_DOC),
          A("strip_prefix", "str", "", "drop each name up to and including this prefix"),
          A("blob_name_overrides", "strings", [], "names to store instead of the inputs'"),
          A("db", "str", "", "the db file"),
          A("db_type", "str", "", "must be 'minidb'")],
         "Write the inputs (tensors of every dtype, counters, dataset cursors) to a minidb "
         "file, atomically (temporary file, fsync, rename).", _check_save,
         ignored=("chunk_size", "options"))
register("Load", (0, INF), (0, INF),
         [A("absolute_path", "bool", False, "db/dbs are " + _PATH_DOC),
          A("add_prefix", "str", "", "prefix added to every name read"),
          A("strip_prefix", "str", "", "drop each name read up to and including this prefix"),
          A("db", "str", "", "the db file"),
          A("dbs", "strings", [], "several db files (instead of db)"),
          A("db_type", "str", "", "must be 'minidb'"),
          A("keep_device", "bool", False, "accepted (fastpipe has one device)"),
          A("load_all", "bool", False, "load every blob of the db(s) into the workspace"),
          A("allow_incomplete", "bool", False, "outputs missing from the db(s) are no error"),
          A("source_blob_names", "strings", [], "names in the db, one per output")],
         "Read blobs from minidb file(s) into the outputs (matched by name).  Caffe2's "
         "DBReader inputs are not provided.", _check_load, ignored=("shape", "db_options"))
register("DBExists", 0, 1,
         [A("absolute_path", "bool", False, "db_name is an " + _PATH_DOC),
          A("db_name", "str", "", "the db file"),
          A("db_type", "str", "", "must be 'minidb'")],
         "Bool scalar: the db file exists.", _check_db_exists)
register("GetAllBlobNames", 0, 1,
         [A("include_shared", "bool", True, "also the blobs of parent workspaces")],
         "1-D string tensor: the names of the blobs of the workspace the op runs in, sorted.")

# Checks that read only the op's arguments and arity (not its input/output
# names), so parse_args may share one result between ops of equal arity.
# Any other check gets the names in its cache key.
_ARG_ONLY_CHECKS = {_check_bcast, _check_constant_fill, _check_given, _check_counter,
                    _check_python, _check_create_queue, _check_weighted,
                    _check_read_next, _check_read_random, _check_sort_and_shuffle,
                    _check_print, _check_python_stage, _check_transpose,
                    _check_create_text_file_reader, _check_text_file_reader_read,
                    _check_create_text_file_writer, _check_if, _check_while}
