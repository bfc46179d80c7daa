"""The graph layer: blobs, nets, execution steps and plans.

This is Caffe2's ``caffe2.python.core`` for pipeline code: it builds a
description (plain-Python :mod:`fastpipe.proto` messages) and never touches
data.  Everything here is cheap -- adding an operator is a handful of
dictionary operations plus schema validation -- and nothing ever loops over
runtime instances.

Example::

    from fastpipe import core

    net = core.Net('init')
    one = net.Const(1.0)
    two = net.Add([one, one])          # BlobReference('init/Add')
    step = core.execution_step('main', net, num_iter=3)
    plan = core.Plan(step)

Threading: building a single Net or ExecutionStep from several threads at
once is not supported (as in Caffe2).  The process-wide name registries
(net and step names) and the name scope are thread-safe; the name scope is
thread-local.
"""

import contextlib
import copy as _copy
import importlib
import operator as _operator
import sys
import threading
from collections import OrderedDict, defaultdict
from itertools import chain as _chain

import numpy as np

from . import _opschema
from . import _pyop
from . import proto as _proto
from .errors import GraphError

__all__ = [
    "DataType", "IsOperator", "BlobReference", "ScopedName",
    "ScopedBlobReference", "NameScope", "CurrentNameScope", "DeviceScope",
    "CurrentDeviceScope", "DeviceOption", "CreateOperator",
    "CreatePythonOperator", "MakeArgument", "Net", "ExecutionStep", "Plan",
    "execution_step", "scoped_execution_step", "to_execution_step",
    "clone_and_bind_net", "get_ssa", "get_undefined_blobs",
    "get_output_producers", "get_net_name", "output_to_list",
    "add_nets_in_order",
]


# ---------------------------------------------------------------------------
# Data types and operator registry


class DataType(object):
    """Caffe2's TensorProto.DataType codes (plain ints)."""

    UNDEFINED = _opschema.UNDEFINED
    FLOAT = _opschema.FLOAT
    INT32 = _opschema.INT32
    BYTE = _opschema.BYTE
    STRING = _opschema.STRING
    BOOL = _opschema.BOOL
    UINT8 = _opschema.UINT8
    INT8 = _opschema.INT8
    UINT16 = _opschema.UINT16
    INT16 = _opschema.INT16
    INT64 = _opschema.INT64
    FLOAT16 = _opschema.FLOAT16
    DOUBLE = _opschema.DOUBLE

    @staticmethod
    def Name(code):
        for name, value in _opschema.DTYPE_NAMES.items():
            if value == code:
                return name
        raise ValueError("unknown DataType code %r" % (code,))

    @staticmethod
    def Value(name):
        try:
            return _opschema.DTYPE_NAMES[name]
        except KeyError:
            raise ValueError("unknown DataType name %r" % (name,))


def IsOperator(op_type):
    """True iff ``op_type`` is a registered operator type."""
    return _opschema.is_operator(op_type)


# ---------------------------------------------------------------------------
# Name scope

_NAMESCOPE_SEPARATOR = "/"
_scope_local = threading.local()


def CurrentNameScope():
    """The active name scope of this thread, e.g. ``'a/b/'`` (or ``''``)."""
    try:
        return _scope_local.namescope
    except AttributeError:
        _scope_local.namescope = ""
        return ""


@contextlib.contextmanager
def NameScope(prefix, reset=False):
    """Prefix string blob names created inside the block with ``prefix/``.

    Scopes nest (``a/b/``); ``reset=True`` replaces the current scope.
    ``NameScope(None)`` or ``NameScope('')`` adds nothing.
    """
    if prefix is not None and not isinstance(prefix, str):
        if isinstance(prefix, bytes):
            prefix = prefix.decode("utf-8")
        else:
            raise GraphError("NameScope takes in a string as its argument, got %r"
                             % (prefix,))
    old = CurrentNameScope()
    prefix = prefix + _NAMESCOPE_SEPARATOR if prefix else ""
    _scope_local.namescope = prefix if reset else old + prefix
    try:
        yield
    finally:
        _scope_local.namescope = old


def CurrentDeviceScope():
    """The active DeviceOption of this thread (None if no DeviceScope)."""
    return getattr(_scope_local, "devicescope", None)


def DeviceOption(device_type, device_id=0, random_seed=None, node_name=None,
                 numa_node_id=None, extra_info=None):
    """A :class:`fastpipe.proto.DeviceOption` (fastpipe runs everything on
    the CPU; the option is recorded on operators and otherwise ignored)."""
    option = _proto.DeviceOption()
    option.device_type = device_type
    option.device_id = device_id
    if node_name is not None:
        option.node_name = node_name
    if random_seed is not None:
        option.random_seed = random_seed
    if extra_info is not None:
        option.extra_info = list(extra_info)
    return option


@contextlib.contextmanager
def DeviceScope(scope, node_name=None):
    """Operators created inside get a copy of ``scope`` as device_option."""
    new = _proto.DeviceOption()
    if scope:
        if not isinstance(scope, _proto.DeviceOption):
            raise GraphError("DeviceScope takes in a DeviceOption as its argument.")
        new.CopyFrom(scope)
    elif not node_name:
        raise GraphError("At least one argument should be non-null in DeviceScope")
    if node_name:
        new.node_name = node_name
    old = CurrentDeviceScope()
    if old is not None and old.HasField("node_name") and not new.HasField("node_name"):
        new.node_name = old.node_name
    _scope_local.devicescope = new
    try:
        yield
    finally:
        _scope_local.devicescope = old


def ScopedName(name):
    """``name`` prefixed with the current name scope."""
    if isinstance(name, bytes):
        name = name.decode("utf-8")
    return CurrentNameScope() + name


def ScopedBlobReference(name, *args, **kwargs):
    """A BlobReference whose name gets the current name scope prefix."""
    return BlobReference(ScopedName(name), *args, **kwargs)


# ---------------------------------------------------------------------------
# BlobReference


class BlobReference(object):
    """A named blob, optionally tied to the net that produces it.

    Hash and equality go by name, so a reference compares equal to the plain
    string; ``str(ref)`` is the name.  ``ref.OpType(...)`` appends
    ``OpType([ref, ...])`` to the owning net.  ``meta`` is a free-form dict.
    """

    __slots__ = ("_name", "_from_net", "_meta")

    def __init__(self, name, net=None):
        if isinstance(name, str):
            self._name = name
        elif isinstance(name, bytes):
            self._name = name.decode("utf-8")
        else:
            self._name = str(name)
        self._from_net = net
        self._meta = None

    @property
    def meta(self):
        m = self._meta
        if m is None:
            m = self._meta = {}
        return m

    @meta.setter
    def meta(self, value):
        self._meta = value

    def __hash__(self):
        return hash(self._name)

    def __eq__(self, other):
        if isinstance(other, str):
            return self._name == other
        if isinstance(other, BlobReference):
            return self._name == other._name
        if isinstance(other, bytes):
            return self._name == other.decode("utf-8")
        return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __str__(self):
        return self._name

    def __repr__(self):
        return 'BlobReference("%s")' % self._name

    def __add__(self, other):
        if not isinstance(other, str):
            raise TypeError("Cannot add BlobReference to a non-string.")
        return BlobReference(self._name + other, self._from_net)

    def __radd__(self, other):
        if not isinstance(other, str):
            raise TypeError("Cannot add a non-string to BlobReference.")
        return BlobReference(other + self._name, self._from_net)

    def __getstate__(self):
        return (self._name, self._from_net, self._meta)

    def __setstate__(self, state):
        self._name, self._from_net, self._meta = state

    def Net(self):
        return self._from_net

    def GetNameScope(self):
        return self._name[:self._name.rfind(_NAMESCOPE_SEPARATOR) + 1]

    def GetUnscopedName(self):
        return self._name[self._name.rfind(_NAMESCOPE_SEPARATOR) + 1:]

    def _CreateAndAddToNet(self, op_type, inputs=None, *args, **kwargs):
        if inputs is None:
            inputs = []
        elif isinstance(inputs, (BlobReference, str, bytes)):
            inputs = [inputs]
        else:
            inputs = list(inputs)
        inputs.insert(0, self)
        return self._from_net._CreateAndAddToSelf(op_type, inputs, *args, **kwargs)

    def __getattr__(self, op_type):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        if self._from_net is None:
            raise AttributeError(
                "You cannot use a blob reference that does not have a net "
                "source to create operators (%s.%s). Create the operator from "
                "an explicit net object." % (self._name, op_type))
        if not _opschema.is_operator(op_type):
            raise AttributeError("Method %s is not a registered operator." % op_type)

        def create(*args, **kwargs):
            return self._CreateAndAddToNet(op_type, *args, **kwargs)
        create.__name__ = op_type
        return create


def _blob_name(blob, scoped):
    """The string name of one input/output given as str/bytes/BlobReference."""
    if isinstance(blob, BlobReference):
        return blob._name
    if isinstance(blob, str):
        return CurrentNameScope() + blob if scoped else blob
    if isinstance(blob, bytes):
        blob = blob.decode("utf-8")
        return CurrentNameScope() + blob if scoped else blob
    return None


def _rectify(blobs):
    """Names of op inputs/outputs; string names get the NameScope prefix."""
    if isinstance(blobs, BlobReference):
        return [blobs._name]
    if isinstance(blobs, str):
        return [CurrentNameScope() + blobs]
    if isinstance(blobs, (list, tuple)):
        scope = CurrentNameScope()
        out = []
        for blob in blobs:
            if isinstance(blob, BlobReference):
                out.append(blob._name)
            elif isinstance(blob, str):
                out.append(scope + blob)
            elif isinstance(blob, bytes):
                out.append(scope + blob.decode("utf-8"))
            else:
                raise TypeError("I/O blob #%d of unsupported type: %r of type %s"
                                % (len(out), blob, type(blob).__name__))
        return out
    if isinstance(blobs, bytes):
        return [CurrentNameScope() + blobs.decode("utf-8")]
    raise TypeError("Unknown input/output type: %r of type %s"
                    % (blobs, type(blobs).__name__))


# ---------------------------------------------------------------------------
# Arguments and operators


def _py_scalar(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def MakeArgument(key, value):
    """Build an :class:`fastpipe.proto.Argument` from a Python value.

    bool/int -> ``i``; float -> ``f``; str (utf-8) / bytes -> ``s``;
    NetDef -> ``n``; numpy scalars as their Python value; sequences of
    ints/bools -> ``ints``, of floats (ints allowed) -> ``floats``, of
    str/bytes -> ``strings``, of NetDefs -> ``nets``; numpy arrays are
    flattened first.  An empty sequence gives an argument with no values.
    """
    arg = _proto.Argument()
    arg.name = key
    if isinstance(value, np.ndarray):
        if value.dtype == np.float32 or value.dtype == np.float64:
            arg.floats = value.ravel().tolist()
            return arg
        value = value.ravel().tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    t = type(value)
    if t is float:
        arg.f = value
    elif t is int or t is bool:
        arg.i = int(value)
    elif t is str:
        arg.s = value.encode("utf-8")
    elif t is bytes:
        arg.s = value
    elif isinstance(value, bool):
        arg.i = int(value)
    elif isinstance(value, int):
        arg.i = int(value)
    elif isinstance(value, float):
        arg.f = float(value)
    elif isinstance(value, str):
        arg.s = str(value).encode("utf-8")
    elif isinstance(value, bytes):
        arg.s = bytes(value)
    elif isinstance(value, _proto.NetDef):
        arg.n = _copy.deepcopy(value)
    elif isinstance(value, BlobReference):
        arg.s = value._name.encode("utf-8")
    else:
        try:
            items = [_py_scalar(v) for v in value]
        except TypeError:
            raise ValueError("Unknown argument type: key=%s value=%r, value type=%s"
                             % (key, value, type(value).__name__))
        if not items:
            return arg
        if all(isinstance(v, int) for v in items):  # bools are ints
            arg.ints = [int(v) for v in items]
        elif all(isinstance(v, (int, float)) for v in items):
            arg.floats = [float(v) for v in items]
        elif all(isinstance(v, (str, bytes, BlobReference)) for v in items):
            arg.strings = [v.encode("utf-8") if isinstance(v, str) else
                           (v._name.encode("utf-8") if isinstance(v, BlobReference)
                            else v) for v in items]
        elif all(isinstance(v, _proto.NetDef) for v in items):
            arg.nets = [_copy.deepcopy(v) for v in items]
        else:
            raise ValueError(
                "Unknown iterable argument type: key=%s value=%r, value types=%s"
                % (key, value, sorted({type(v).__name__ for v in items})))
    return arg


_SPECIAL_OP_KWARGS = frozenset(("name", "control_input", "device_option", "arg",
                                "engine", "debug_info", "random_seed"))


def CreateOperator(operator_type, inputs, outputs, name="", control_input=None,
                   device_option=None, arg=None, engine=None, debug_info=None,
                   **kwargs):
    """Build an OperatorDef (not validated, not added to any net).

    String input/output names get the current NameScope prefix; arguments
    whose value is None are skipped.
    """
    op = _proto.OperatorDef()
    op.type = operator_type
    op.name = name or ""
    op.input = _rectify(inputs)
    op.output = _rectify(outputs)
    if control_input:
        op.control_input = _rectify(control_input)
    if device_option is not None:
        op.device_option = _copy.deepcopy(device_option)
    else:
        scope = getattr(_scope_local, "devicescope", None)
        if scope is not None:
            op.device_option = _copy.deepcopy(scope)
    if engine is not None:
        op.engine = engine
    if debug_info is not None:
        op.debug_info = debug_info
    if "random_seed" in kwargs:
        seed = kwargs.pop("random_seed")
        if seed is not None:
            op.device_option.random_seed = seed
    args = op.arg
    if arg is not None:
        args.extend(arg)
    for key, value in kwargs.items():
        if value is not None:
            args.append(MakeArgument(key, value))
    return op


def _register_python(f, grad_f=None, python_func_type=None, pass_workspace=False):
    if python_func_type:
        impl = python_func_type(f)
        f = impl.forward
    return _pyop.register(f, pass_workspace)


def CreatePythonOperator(f, inputs, outputs, grad_f=None, pass_workspace=False,
                         python_func_type=None, *args, **kwargs):
    """A ``Python`` OperatorDef calling ``f(inputs, outputs)``."""
    kwargs["token"] = _register_python(f, grad_f, python_func_type, pass_workspace)
    return CreateOperator("Python", inputs, outputs, *args, **kwargs)


# ---------------------------------------------------------------------------
# SSA helpers


def get_ssa(net, blob_versions=None):
    """Versioned inputs/outputs of each op: ``(ssa, blob_versions)``.

    ``ssa`` is a list of ``(inputs, outputs)`` with ``(name, version)``
    tuples; version 0 of a blob means "not produced in this net (yet)".
    """
    if isinstance(net, list):
        if blob_versions is None:
            blob_versions = {}
        return [get_ssa(n, blob_versions)[0] for n in net], blob_versions
    proto = net.Proto() if isinstance(net, Net) else net
    if not isinstance(proto, _proto.NetDef):
        raise TypeError("get_ssa: expected a Net or NetDef, got %s" % type(net).__name__)
    if blob_versions is None:
        blob_versions = {}
    for name in proto.external_input:
        if name not in blob_versions:
            blob_versions[str(name)] = 0
    ssa = []
    no_ext = not proto.external_input
    for op in proto.op:
        if no_ext:
            for name in op.input:
                if name not in blob_versions:
                    blob_versions[name] = 0
        inputs = [(name, blob_versions.get(name, 0)) for name in op.input]
        outputs = []
        for name in op.output:
            v = blob_versions.get(name, 0) + 1
            blob_versions[name] = v
            outputs.append((name, v))
        ssa.append((inputs, outputs))
    return ssa, blob_versions


def get_undefined_blobs(ssa):
    """Blobs read before any op of the net writes them."""
    undef = set()
    for inputs, _ in ssa:
        undef.update(name for name, version in inputs if version == 0)
    return undef


def get_output_producers(ssa):
    """Map ``(blob, version)`` -> index of the op producing it."""
    producers = {}
    for i, (_, outputs) in enumerate(ssa):
        for o in outputs:
            producers[o] = i
    return producers


def _remap_netdef(netdef, blob_remap, name):
    """A copy of ``netdef`` with blob names remapped (no Net is created)."""
    get = blob_remap.get
    new = _proto.NetDef()
    for field, value in netdef._set.items():
        if field != "name":
            setattr(new, field, _copy.deepcopy(value))
    new.name = name
    new.external_input = [str(get(b, b)) for b in netdef.external_input]
    new.external_output = [str(get(b, b)) for b in netdef.external_output]
    new.partition_info = list(netdef.partition_info)
    new.arg = [_copy.deepcopy(a) for a in netdef.arg]
    new_ops = new.op
    for op in netdef.op:
        op2 = _proto.copy_op_with_io(op, [str(get(b, b)) for b in op.input],
                                     [str(get(b, b)) for b in op.output])
        fn = _DEFAULT_REMAP_FUNCS.get(op2.type)
        if fn is not None:
            fn(op2, (name + "/") if name else "", blob_remap)
        new_ops.append(op2)
    return new


def control_op_remap(op, prefix, blob_remap):
    """Remap blob names inside the sub-nets of control ops (If/While)."""
    if op.type in ("If", "AsyncIf"):
        names = ("then_net", "else_net")
    else:
        names = ("loop_net", "cond_net")
    for argument in op.arg:
        if argument.name in names and argument.HasField("n"):
            sub = argument.n
            argument.n = _remap_netdef(sub, blob_remap, (sub.name or "") + "_remapped")


_DEFAULT_REMAP_FUNCS = {
    "If": control_op_remap,
    "AsyncIf": control_op_remap,
    "While": control_op_remap,
}


# ---------------------------------------------------------------------------
# Net


def _net_builder_class():
    """fastpipe.net_builder.NetBuilder, imported lazily (None if the module
    does not exist)."""
    mod = sys.modules.get("fastpipe.net_builder")
    if mod is None:
        try:
            mod = importlib.import_module("fastpipe.net_builder")
        except ImportError:
            # Not written yet (or broken while being written): no builder.
            return None
    return getattr(mod, "NetBuilder", None)


def _builder_prefix():
    """Name of the active NetBuilder ('' if none or net_builder missing)."""
    nb_cls = _net_builder_class()
    if nb_cls is None:
        return ""
    builder = nb_cls.current(required=False)
    return builder.name if builder else ""


def _unique_name(basename, used, next_idx):
    """``basename`` if unused, else ``basename_<i>`` with the smallest free
    i >= 1; records the result in ``used``.  ``next_idx`` caches, per
    basename, the smallest i that may still be free (caller holds a lock)."""
    name = basename
    if name in used:
        idx = next_idx.get(basename, 1)
        name = "%s_%d" % (basename, idx)
        while name in used:
            idx += 1
            name = "%s_%d" % (basename, idx)
        next_idx[basename] = idx + 1
    used.add(name)
    return name


_object_setattr = object.__setattr__


class Net(object):
    """An ordered list of operators over named blobs.

    ``Net(name)`` creates an empty net named ``<active builder>/<name>``,
    made unique in the process with ``_1``, ``_2``... suffixes (always use
    ``str(net)``).  ``Net(netdef)`` copies a NetDef (its name is uniquified
    the same way).

    ``net.OpType(inputs, outputs=None, **args)`` appends an operator and
    returns None, one BlobReference or a tuple of them.  Unknown operator
    types raise AttributeError; invalid arguments raise
    :class:`fastpipe.errors.OperatorDefError` (a ValueError) naming the
    operator, net and argument, and leave the net unchanged.
    """

    _net_names_used = set()
    # basename -> smallest suffix that may still be free (the used set only
    # grows, so the smallest free suffix never decreases): keeps naming O(1)
    # amortised instead of Caffe2's scan from _1.
    _net_name_next_idx = {}
    _names_lock = threading.Lock()  # protects the two tables above

    @staticmethod
    def current_prefix():
        return _builder_prefix()

    @staticmethod
    def _get_next_net_name(basename):
        prefix = _builder_prefix()
        basename = "/".join([x for x in (prefix, basename) if x])
        with Net._names_lock:
            return _unique_name(basename, Net._net_names_used,
                                Net._net_name_next_idx)

    def __init__(self, name_or_proto):
        self._input_record = None
        self._output_record = None
        self._registered_blob_names = set()
        self._recreate_lookup_tables = False
        self._op_outputs = set()
        self._external_input_map = set()
        self._attr_dict = defaultdict(list)
        self._next_blob_name_ids = {}
        self._next_blob_auto_ids = {}
        if isinstance(name_or_proto, _proto.NetDef):
            netdef = _copy.deepcopy(name_or_proto)
            self._net = netdef
            self._external_input_map.update(netdef.external_input)
            names = set()
            for op in netdef.op:
                names.update(op.input)
                names.update(op.output)
                self._op_outputs.update(op.output)
            auto = netdef.name + "_blob_"
            indices = []
            for s in names:
                if s.startswith(auto) and s[len(auto):].isdigit():
                    indices.append(int(s[len(auto):]))
            self._next_name_index = max(indices) + 1 if indices else 0
            name = netdef.name
        else:
            if isinstance(name_or_proto, bytes):
                name_or_proto = name_or_proto.decode("utf-8")
            elif name_or_proto is not None and not isinstance(name_or_proto, str):
                raise TypeError("Net() takes a name or a NetDef, got %s"
                                % type(name_or_proto).__name__)
            self._net = _proto.NetDef()
            self._next_name_index = 0
            name = name_or_proto
        self._net.name = Net._get_next_net_name(name)

    # -- identity -------------------------------------------------------------

    def Name(self):
        return self._net.name

    def __str__(self):
        return self._net.name

    def __repr__(self):
        return "Net(%r)" % self._net.name

    def Proto(self):
        """The NetDef.  Edits to it are seen (lookup tables are rebuilt)."""
        self._recreate_lookup_tables = True
        return self._net

    # -- lookup tables ----------------------------------------------------------

    def _RecreateLookupTables(self):
        outs = set()
        for op in self._net.op:
            outs.update(op.output)
        self._op_outputs = outs
        self._external_input_map = set(self._net.external_input)
        self._recreate_lookup_tables = False

    def _CheckLookupTables(self):
        outs = set()
        for op in self._net.op:
            outs.update(op.output)
        if outs - self._op_outputs:
            raise GraphError("op output lookup table out of date")
        if set(self._net.external_input) - self._external_input_map:
            raise GraphError("external input lookup table out of date")

    def BlobIsDefined(self, blob):
        """True iff ``blob`` is an op output or an external input here."""
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        name = str(blob)
        return name in self._op_outputs or name in self._external_input_map

    def is_external_input(self, blob):
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        return str(blob) in self._external_input_map

    def UsesBlob(self, blob):
        name = str(blob)
        for op in self._net.op:
            if name in op.input:
                return True
        return self.is_external_input(name)

    def UsedBlobNames(self):
        """The set of every blob name the net mentions."""
        names = set()
        for op in self._net.op:
            names.update(op.input)
            names.update(op.output)
        names.update(self._net.external_input)
        names.update(self._net.external_output)
        return names

    def GetBlobRef(self, blob_name):
        blob_name = str(blob_name)
        if not self.BlobIsDefined(blob_name):
            raise KeyError("Net does not define blob %s" % blob_name)
        return BlobReference(blob_name, self)

    # -- naming -------------------------------------------------------------------

    def NextName(self, prefix=None, output_id=None):
        """A fresh blob name: ``<net>/<prefix>`` (``_2``... if already defined
        here, checked under the current NameScope) or ``<net>_blob_<n>``.
        The returned name is NOT scoped."""
        if prefix:
            base = self._net.name + "/" + prefix
            suffix = "" if output_id is None else ":" + str(output_id)
            name = base + suffix
            key = name
            index = self._next_blob_name_ids.get(key, 2)
            scope = CurrentNameScope()
            while self.BlobIsDefined(scope + name):
                name = "%s_%d%s" % (base, index, suffix)
                index += 1
                self._next_blob_name_ids[key] = index
            return name
        name = "%s_blob_%d" % (self._net.name, self._next_name_index)
        self._next_name_index += 1
        return name

    def NextBlob(self, prefix="unnamed"):
        """A BlobReference never returned before by this net and not defined
        in it: ``prefix``, else ``prefix_auto_<i>``."""
        base = str(prefix)
        name = base
        registered = self._registered_blob_names
        if name in registered or self.BlobIsDefined(name):
            # Registered and defined names only accumulate, so the smallest
            # free index never decreases: resume from the cached one.
            cache = self._next_blob_auto_ids
            index = cache.get(base, 0)
            name = "%s_auto_%d" % (base, index)
            while name in registered or self.BlobIsDefined(name):
                index += 1
                name = "%s_auto_%d" % (base, index)
            cache[base] = index + 1
        registered.add(name)
        return BlobReference(name)

    def NextScopedBlob(self, prefix="unnamed"):
        """Like NextBlob, with the current NameScope prefix."""
        return self.NextBlob(ScopedName(prefix))

    # -- ops ------------------------------------------------------------------

    def __getattr__(self, op_type):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        if not _opschema.is_operator(op_type):
            raise AttributeError("Method %s is not a registered operator." % op_type)

        def create(*args, **kwargs):
            return self._CreateAndAddToSelf(op_type, *args, **kwargs)
        create.__name__ = op_type
        return create

    def __dir__(self):
        return sorted(set(dir(type(self))) | set(self.__dict__) |
                      set(_opschema.REGISTRY))

    def _CreateAndAddToSelf(self, op_type, inputs, outputs=None, **kwargs):
        if outputs is None:
            outputs = self.NextName(prefix=op_type)
        elif type(outputs) is int:
            outputs = [self.NextName(prefix=op_type, output_id=i)
                       for i in range(outputs)]
        ins = _rectify(inputs)
        outs = _rectify(outputs)
        if (_SPECIAL_OP_KWARGS.isdisjoint(kwargs) and
                getattr(_scope_local, "devicescope", None) is None):
            # Fast path (the common case): no name/engine/device/... options.
            # The fields go straight into the message (ins/outs are new lists).
            op = _proto.OperatorDef.__new__(_proto.OperatorDef)
            _object_setattr(op, "__dict__", {"type": op_type, "name": "",
                                             "input": ins, "output": outs})
            if kwargs:
                args = op.arg
                for key, value in kwargs.items():
                    if value is not None:
                        args.append(MakeArgument(key, value))
        else:
            op = CreateOperator(op_type, ins, outs, **kwargs)
            ins = op.input
            outs = op.output
        net = self._net
        _opschema.parse_args(op, net.name)
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        defined_out = self._op_outputs
        ext = self._external_input_map
        for name in ins:
            if name not in defined_out and name not in ext:
                net.external_input.append(name)
                ext.add(name)
        net.op.append(op)
        defined_out.update(outs)
        if not outs:
            return None
        if len(outs) == 1:
            return BlobReference(outs[0], self)
        return tuple([BlobReference(o, self) for o in outs])

    def _ExtendOps(self, new_ops):
        self._net.op.extend(new_ops)
        if not self._recreate_lookup_tables:
            for op in new_ops:
                self._op_outputs.update(op.output)

    def extend_ops(self, new_ops):
        return self._ExtendOps(new_ops)

    def AddArgument(self, arg_name, arg_value):
        self._net.arg.append(MakeArgument(arg_name, arg_value))

    def Const(self, array, blob_out=None, dtype=None):
        """Add a fill op holding ``array``.

        A Python bool gives a 0-d BOOL ``ConstantFill``; anything else goes
        through ``np.array(array, dtype)`` and a GivenTensor fill chosen by
        dtype: int32 -> GivenTensorIntFill, int64 -> GivenTensorInt64Fill,
        str/bytes -> GivenTensorStringFill, bool -> GivenTensorBoolFill,
        anything else -> GivenTensorFill (float32).
        """
        if isinstance(array, bool):
            return self.ConstantFill([], blob_out or 1, dtype=DataType.BOOL,
                                     value=array)
        array = np.array(array) if dtype is None else np.array(array, dtype=dtype)
        kind = array.dtype.kind
        if array.dtype == np.int32:
            fill = "GivenTensorIntFill"
            values = array.ravel().tolist()
        elif array.dtype == np.int64:
            fill = "GivenTensorInt64Fill"
            values = array.ravel().tolist()
        elif kind in "US" or (kind == "O" and all(
                isinstance(v, (str, bytes)) for v in array.ravel().tolist())):
            fill = "GivenTensorStringFill"
            values = [v if isinstance(v, bytes) else str(v).encode("utf-8")
                      for v in array.ravel().tolist()]
        elif kind == "b":
            fill = "GivenTensorBoolFill"
            values = [int(v) for v in array.ravel().tolist()]
        else:
            fill = "GivenTensorFill"
            values = np.asarray(array, dtype=np.float32).ravel().tolist()
        arg_shape = _proto.Argument()
        arg_shape.name = "shape"
        arg_shape.ints = list(array.shape)
        arg_values = _proto.Argument()
        arg_values.name = "values"
        if fill == "GivenTensorStringFill":
            arg_values.strings = values
        elif fill == "GivenTensorFill":
            arg_values.floats = values
        else:
            arg_values.ints = values
        return self._CreateAndAddToSelf(fill, [], blob_out or 1,
                                        arg=[arg_shape, arg_values])

    def LogInfo(self, *msg_or_blobs):
        """Print each message (a constant string) or blob when the net runs."""
        for item in msg_or_blobs:
            if isinstance(item, BlobReference):
                blob = item
            else:
                blob = self.GivenTensorStringFill([], self.NextName("log"),
                                                  shape=[], values=[item])
            self.Print(blob, [])

    def Python(self, f, grad_f=None, python_func_type=None, pass_workspace=False,
               grad_output_indices=None, grad_input_indices=None):
        """Return ``fn(inputs, outputs, **kwargs)`` adding a ``Python`` op.

        ``f`` is a callable ``f(inputs, outputs)`` (``(inputs, outputs,
        workspace)`` with ``pass_workspace``) or a ``(factory, args,
        kwargs)`` tuple whose factory runs once per op instance at run time.
        Gradients are not supported; ``grad_f`` is accepted and ignored.
        """
        if isinstance(f, tuple) and len(f) == 3:
            f = (f[0], tuple(f[1]), dict(f[2]))
        token = _register_python(f, grad_f, python_func_type, pass_workspace)
        extra = {"token": token}
        if grad_output_indices:
            extra["grad_output_indices"] = list(grad_output_indices)
        if grad_input_indices:
            extra["grad_input_indices"] = list(grad_input_indices)

        def create(*args, **kwargs):
            kwargs.update(extra)
            return self._CreateAndAddToSelf("Python", *args, **kwargs)
        return create

    # -- external inputs/outputs ------------------------------------------------

    def AddExternalInput(self, *inputs):
        """Declare external inputs; returns one BlobReference or a list."""
        if not inputs:
            raise GraphError("AddExternalInput: no inputs given")
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        names = []
        seen = set()
        for blob in inputs:
            name = str(blob)
            if name in self._external_input_map or name in seen:
                raise GraphError("Net %s already contains an input named %s"
                                 % (self._net.name, name))
            seen.add(name)
            names.append(name)
        self._net.external_input.extend(names)
        self._external_input_map.update(names)
        refs = [BlobReference(n, self) for n in names]
        return refs[0] if len(refs) == 1 else refs

    def AddExternalOutput(self, *outputs):
        """Declare external outputs; each must be defined in this net."""
        for blob in outputs:
            if not isinstance(blob, (BlobReference, str)):
                raise GraphError("AddExternalOutput expects BlobReferences, got %r"
                                 % (blob,))
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined in net %s" % (blob, self._net.name))
        self._net.external_output.extend(str(b) for b in outputs)

    def AddExternalInputs(self, *inputs):
        return self.AddExternalInput(*inputs)

    def AddExternalOutputs(self, *outputs):
        self.AddExternalOutput(*outputs)

    def AddScopedExternalInputs(self, *inputs):
        res = self.AddExternalInput(*[ScopedBlobReference(b) for b in inputs])
        return res if isinstance(res, list) else [res]

    def AddScopedExternalOutputs(self, *outputs):
        return self.AddExternalOutput(*[ScopedBlobReference(b) for b in outputs])

    @property
    def external_inputs(self):
        return [BlobReference(x, self) for x in self._net.external_input]

    @property
    def external_outputs(self):
        return [BlobReference(x, self) for x in self._net.external_output]

    # -- records ------------------------------------------------------------------

    def set_input_record(self, input_record):
        """Bind the net's input schema.  A schema without blobs gets fresh
        blobs scoped under the net name; the blobs become external inputs."""
        from fastpipe import schema
        old = self._input_record
        if old is not None and not (
                input_record.has_blobs() and
                set(input_record.field_blobs()) == set(old.field_blobs())):
            raise GraphError("Input schema cannot be reset")
        if not input_record.has_blobs():
            with NameScope(self.Name()):
                self._input_record = schema.NewRecord(self, input_record)
        else:
            self._input_record = input_record
        for blob in self._input_record.field_blobs():
            if not self.is_external_input(blob):
                self.AddExternalInput(blob)
        return self._input_record

    def set_output_record(self, record):
        """Bind the output schema; its blobs must be defined here and become
        external outputs."""
        old = self._output_record
        if old is not None and not (
                record.has_blobs() and
                set(record.field_blobs()) == set(old.field_blobs())):
            raise GraphError("Output schema cannot be reset")
        blobs = record.field_blobs()
        for blob in blobs:
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined in net %s" % (blob, self._net.name))
        existing = set(self._net.external_output)
        for blob in blobs:
            if str(blob) not in existing:
                self.AddExternalOutput(blob)
                existing.add(str(blob))
        self._output_record = record

    def AppendOutputRecordField(self, field_name, record):
        from fastpipe import schema
        if self._output_record is None:
            raise GraphError("Tried to append to missing output record")
        for blob in record.field_blobs():
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined" % blob)
        for blob in record.field_blobs():
            self.AddExternalOutput(blob)
        self._output_record = self._output_record + schema.Struct((field_name, record))

    def input_record(self):
        return self._input_record

    def output_record(self):
        return self._output_record

    # -- attributes ---------------------------------------------------------------

    def add_attribute(self, name, obj):
        """Append ``obj`` to the attribute list ``name`` (no built-in meaning)."""
        self._attr_dict[name].append(obj)

    def get_attributes(self, name):
        return self._attr_dict.get(name, [])

    # -- composition ----------------------------------------------------------------

    def AppendNet(self, net, device_option=None):
        """Append ``net``'s ops (shared, not copied) and external lists."""
        if not isinstance(net, Net):
            raise GraphError("AppendNet expects a Net, got %r" % (net,))
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        other = net._net
        ext = self._net.external_input
        for name in other.external_input:
            if name not in self._external_input_map and name not in self._op_outputs:
                ext.append(name)
                self._external_input_map.add(name)
        outs = self._net.external_output
        outs.extend([o for o in other.external_output if o not in outs])
        ops = other.op
        if device_option is not None:
            ops = [_copy.deepcopy(op) for op in ops]
            for op in ops:
                op.device_option = _copy.deepcopy(device_option)
        self._ExtendOps(list(ops))
        return self

    def Clone(self, name, blob_remap=None, op_id_mask=None, remap_funcs=None,
              keep_schema=True, update_external_list=False):
        """A deep copy named ``name`` (uniquified), blobs renamed through
        ``blob_remap``, only ops in ``op_id_mask`` if given.  Attribute
        lists are shared with this net."""
        with _proto.gc_paused():
            return self._clone(name, blob_remap, op_id_mask, remap_funcs,
                               keep_schema, update_external_list)

    def _clone(self, name, blob_remap, op_id_mask, remap_funcs, keep_schema,
               update_external_list, bind_prefix=None):
        """Clone's body.  With ``bind_prefix`` (clone_and_bind_net), the
        blobs missing from ``blob_remap`` are mapped while cloning, in one
        pass, with clone_and_bind_net's rule: a blob read before any op
        writes it keeps its name, the others get the prefix; ``blob_remap``
        gets an entry for every blob get_ssa versions.  Raises
        _NeedsSsaPass if an op has a remap function (If/While), which would
        need the complete map before the loop ends."""
        funcs = dict(_DEFAULT_REMAP_FUNCS)
        if remap_funcs:
            funcs.update(remap_funcs)
        if blob_remap is None:
            blob_remap = {}
        get = blob_remap.get
        proto = self._net

        def remapped(blob):
            s = str(blob)
            return str(get(s, s))

        # blob name -> new name (str), seeded with the str entries of
        # blob_remap (clone_and_bind_net maps every blob); a plain dict (the
        # interpreter's fast path), other names are added on a miss
        names = {}
        for k, v in blob_remap.items():
            if type(k) is str:
                names[k] = v if type(v) is str else str(v)

        # miss_input(b): the new name of an input not in `names` yet (or
        # mapped to ""), stored there
        if bind_prefix is None:
            def miss_input(b):
                if b not in names:
                    names[b] = remapped(b)
                return names[b]
        else:
            ext = proto.external_input
            versioned_input = set(ext).__contains__ if ext else (lambda b: True)

            def miss_input(b):
                # first seen as an input: read before written -> kept
                if b not in names:
                    if b in blob_remap:
                        names[b] = remapped(b)
                    else:
                        names[b] = b if type(b) is str else str(b)
                        if versioned_input(b):
                            blob_remap[b] = b
                return names[b]


        new_proto = _proto.NetDef()
        for field, value in proto._set.items():
            setattr(new_proto, field, _copy.deepcopy(value))
        new_proto.name = name
        new_proto.partition_info = list(proto.partition_info)
        new_proto.arg = [_copy.deepcopy(a) for a in proto.arg]
        ops = proto.op if op_id_mask is None else [proto.op[i] for i in op_id_mask]
        new_ops = new_proto.op
        prefix = (name + "/") if name else ""
        fget = funcs.get
        lookup = names.get
        append = new_ops.append
        remapped_in_place = False
        # The loop body is _proto.copy_op_with_io, inlined (40k ops in a
        # 20-node job): copy the field dict, replace input/output.  The
        # new ops' output sets are collected after the loop (in C).
        new_op = object.__new__
        op_cls = _proto.OperatorDef
        copy_extras = _proto._copy_op_extras
        for op in ops:
            # fill the new op's own __dict__ (faster than installing a copy)
            op2 = new_op(op_cls)
            d = op2.__dict__
            d.update(op.__dict__)
            # map() runs dict.get in C; a None marks an input not seen yet
            ins = [*map(lookup, op.input)]
            d["input"] = ins if None not in ins else [
                lookup(b) or miss_input(b) for b in op.input]
            # outputs are usually new names: the miss is inlined
            d["output"] = out = []
            for b in op.output:
                v = lookup(b)
                if v is None:
                    if bind_prefix is None or b in blob_remap:
                        v = remapped(b)
                    else:   # first seen as an output -> prefixed
                        v = blob_remap[b] = bind_prefix + b
                        if type(v) is not str:
                            v = str(v)
                    names[b] = v
                out.append(v)
            if "arg" in d or "control_input" in d or "device_option" in d:
                copy_extras(d)
            fn = fget(d.get("type", ""))
            if fn is not None:
                if bind_prefix is not None:
                    raise _NeedsSsaPass()
                fn(op2, prefix, blob_remap)
                remapped_in_place = True
            append(op2)
        if bind_prefix is not None:
            # external inputs no op reads first: written, or unused -> prefixed
            for b in proto.external_input:
                b = str(b)
                if b not in blob_remap:
                    blob_remap[b] = b if names.get(b) == b else bind_prefix + b
        new_proto.external_input = [remapped(b) for b in proto.external_input]
        new_proto.external_output = [remapped(b) for b in proto.external_output]
        if remapped_in_place:   # a remap function may have edited the op
            new_net = Net._from_owned_proto(new_proto)
        else:                   # every op input/output name is in `names`
            outs = set(_chain_from_iterable(map(_get_output, new_ops)))
            new_net = Net._from_owned_proto(new_proto, outs, names.values())

        if keep_schema:
            from fastpipe import schema
            if self._input_record:
                new_net._input_record = schema.from_blob_list(
                    self._input_record,
                    [BlobReference(remapped(b), net=new_net)
                     for b in self._input_record.field_blobs()])
            if self._output_record:
                new_net._output_record = schema.from_blob_list(
                    self._output_record,
                    [BlobReference(remapped(b), net=new_net)
                     for b in self._output_record.field_blobs()])
        new_net._attr_dict.update(self._attr_dict)

        if update_external_list:
            existing = []
            existing_set = set()
            used = set()
            ext_in = []
            ext_in_set = set()
            for op in new_net._net.op:
                for b in op.input:
                    if b not in existing_set:
                        if b not in ext_in_set:
                            ext_in.append(b)
                            ext_in_set.add(b)
                    else:
                        used.add(b)
                for b in op.output:
                    if b not in existing_set:
                        existing.append(b)
                        existing_set.add(b)
            new_net._net.external_input = ext_in
            new_net._net.external_output = [b for b in existing if b not in used]
            new_net._RecreateLookupTables()
        return new_net

    @classmethod
    def _from_owned_proto(cls, netdef, op_outputs=None, blob_names=None):
        """Net(netdef) without copying ``netdef`` (the caller gives it up).
        ``op_outputs`` (a set) and ``blob_names`` (every op input and output
        name), when the caller has them, save a pass over the ops."""
        net = cls.__new__(cls)
        net._input_record = None
        net._output_record = None
        net._registered_blob_names = set()
        net._recreate_lookup_tables = False
        net._attr_dict = defaultdict(list)
        net._next_blob_name_ids = {}
        net._next_blob_auto_ids = {}
        net._net = netdef
        auto = netdef.name + "_blob_"
        if op_outputs is not None and auto in "\n".join(blob_names):
            op_outputs = None   # blob_names may hold more than the ops' names
        if op_outputs is None:
            outs = set()
            names = set()
            for op in netdef.op:
                outs.update(op.output)
                names.update(op.input)
            names.update(outs)
        else:
            outs = op_outputs
            names = ()
        net._op_outputs = outs
        net._external_input_map = set(netdef.external_input)
        indices = [int(s[len(auto):]) for s in names
                   if s.startswith(auto) and s[len(auto):].isdigit()]
        net._next_name_index = max(indices) + 1 if indices else 0
        netdef.name = Net._get_next_net_name(netdef.name)
        return net

    def ClonePartial(self, name, inputs, outputs, remap_funcs=None):
        """Clone only the ops needed to compute ``outputs`` from ``inputs``.

        Returns ``(new_net, [BlobReference...])``.  Internal blobs get the
        prefix ``name/``; ``inputs`` may be a dict old -> new, a list of
        pairs, or a list of names (kept as they are).
        """
        if isinstance(inputs, dict):
            mapping = OrderedDict((str(k), str(v)) for k, v in inputs.items())
        elif isinstance(inputs, list) and inputs and all(
                isinstance(i, tuple) and len(i) == 2 for i in inputs):
            mapping = OrderedDict((str(k), str(v)) for k, v in inputs)
        else:
            mapping = OrderedDict((str(i), str(i)) for i in inputs)
        for out in outputs:
            if not self.BlobIsDefined(out):
                raise GraphError("%s is not defined" % out)
        output_names = [str(o) for o in outputs]
        ssa, versions = get_ssa(self._net, {k: 0 for k in mapping})
        used = _ops_in_path(ssa, versions, list(mapping), output_names)
        disallowed = _ops_in_path(ssa, versions, [], list(mapping))
        if set(used) & set(disallowed):
            raise GraphError("Cannot partially clone net: some of the ops "
                             "required would generate the given input.")
        sub = [ssa[i] for i in used]
        undef = get_undefined_blobs(sub) - set(mapping)
        prefix = (name + "/") if name else ""

        def remap(b):
            if b in mapping:
                return mapping[b]
            if b in undef:
                return b
            return prefix + b
        blob_mapping = {b: remap(b) for b in versions}
        new_net = self.Clone(name, blob_mapping, used, remap_funcs)
        new_in = [blob_mapping[i] for i in mapping] + sorted(undef)
        new_out = [blob_mapping[o] for o in output_names]
        new_net._net.external_input = new_in
        new_net._net.external_output = new_out
        new_net._RecreateLookupTables()
        return new_net, [new_net.GetBlobRef(o) for o in new_out]


def _ops_in_path(ssa, blob_versions, inputs, outputs):
    # The inputs are taken at their latest version.
    inputs_set = set((str(i), blob_versions[str(i)]) for i in inputs)
    producers = get_output_producers(ssa)
    queue = [(str(o), blob_versions[str(o)]) for o in outputs]
    used = set()
    while queue:
        o = queue.pop()
        if o not in inputs_set and o in producers:
            op_id = producers[o]
            if op_id not in used:
                used.add(op_id)
                queue.extend(ssa[op_id][0])
    return sorted(used)


def clone_and_bind_net(net, name, prefix, blob_remap=None, inputs=None,
                       keep_schema=True):
    """Clone ``net`` renaming the blobs it produces to ``prefix + name``.

    Blobs only read by the net (e.g. parameters) keep their names.  With
    ``inputs`` (a schema record), the net's input record is rebound to it:
    the net's input field names must be a subset of ``inputs``'.
    Returns ``(cloned_net, blob_remap)``.  Cost is O(net size).
    """
    from fastpipe import schema
    if not isinstance(net, Net):
        raise GraphError("clone_and_bind_net expects a Net, got %r" % (net,))
    blob_remap = {} if blob_remap is None else blob_remap
    if inputs is not None:
        if not isinstance(inputs, schema.Field):
            raise GraphError("inputs must be a schema.Field, got %r" % (inputs,))
        original = net.input_record()
        if original is None:
            raise GraphError("net %s has no input record to bind" % net.Name())
        diff = set(original.field_names()) - set(inputs.field_names())
        if diff:
            raise GraphError(
                "Schemas don't match, extra fields %s found in the net %s. "
                "original: %s; inputs: %s" % (sorted(diff), net.Name(),
                                              original.field_names(),
                                              inputs.field_names()))
        original_mapping = dict(zip(original.field_names(), original.field_blobs()))
        for fn, fb in zip(inputs.field_names(), inputs.field_blobs()):
            if fn in original_mapping:
                blob_remap[str(original_mapping[fn])] = str(fb)
    with _proto.gc_paused():
        saved = dict(blob_remap)
        try:
            # one pass: blobs are mapped as the clone meets them
            cloned = net._clone(name, blob_remap, None, None, keep_schema, False,
                                bind_prefix=prefix)
        except _NeedsSsaPass:
            blob_remap.clear()
            blob_remap.update(saved)
            versions, undef = _blob_versions_and_undefined(net._net)
            for blob in versions:
                if blob in blob_remap:
                    continue
                blob_remap[blob] = blob if blob in undef else prefix + blob
            cloned = net.Clone(name, blob_remap, keep_schema=keep_schema)
    if not keep_schema and inputs:
        cloned.set_input_record(inputs)
    return cloned, blob_remap


_chain_from_iterable = _chain.from_iterable
_get_output = _operator.attrgetter("output")


class _NeedsSsaPass(Exception):
    """Net._clone(bind_prefix=...) met an op whose remap function needs the
    complete blob map up front."""


def _blob_versions_and_undefined(proto):
    """``(blob_versions, get_undefined_blobs(ssa))`` of ``get_ssa(proto)``
    in one pass, without building the per-op SSA lists.  Only the keys
    (in get_ssa's order) of ``blob_versions`` are meaningful."""
    names = {}
    for name in proto.external_input:
        name = str(name)
        if name not in names:
            names[name] = 0
    no_ext = not proto.external_input
    produced = set()
    undef = set()
    for op in proto.op:
        ins = op.input
        if no_ext:
            for name in ins:
                if name not in names:
                    names[name] = 0
        for name in ins:
            if name not in produced:
                undef.add(name)
        for name in op.output:
            names[name] = 1
            produced.add(name)
    return names, undef


# ---------------------------------------------------------------------------
# Execution steps and plans


def get_net_name(netlike):
    if isinstance(netlike, Net):
        return netlike._net.name
    if isinstance(netlike, _proto.NetDef):
        return netlike.name
    return netlike


def output_to_list(op_output):
    """One BlobReference or an iterable of them, as a list."""
    if isinstance(op_output, BlobReference):
        return [op_output]
    if isinstance(op_output, (list, tuple)):
        return list(op_output)
    raise GraphError("expected a BlobReference, list or tuple, got %r" % (op_output,))


def _add_net_to_dict(net_dict, net):
    name = get_net_name(net)
    if name in net_dict:
        existing = net_dict[name]
        if existing is not None and existing is not net:
            raise GraphError("Different nets with same name: %s" % name)
        return False
    net_dict[name] = net if isinstance(net, Net) else None
    return True


class ExecutionStep(object):
    """Control structure over nets or substeps (never both).

    Holds an ExecutionStep proto plus an ordered name -> Net map for the
    whole subtree.  Once the step has been added to another step or a plan
    it is *used*: its proto was copied at that moment, and setters raise
    :class:`fastpipe.errors.GraphError`.
    """

    _step_names_used = set()
    _step_name_next_idx = {}
    _names_lock = threading.Lock()  # protects the two tables above

    @staticmethod
    def _get_next_step_name(basename):
        with ExecutionStep._names_lock:
            return _unique_name(basename, ExecutionStep._step_names_used,
                                ExecutionStep._step_name_next_idx)

    def __init__(self, name, nets=None, num_iter=None):
        self._step = _proto.ExecutionStep()
        self._step.name = name or ExecutionStep._get_next_step_name("step")
        self._net_dict = OrderedDict()
        self._is_used = False
        self._substeps = []
        if nets is not None:
            if isinstance(nets, (Net, _proto.NetDef, str)):
                nets = [nets]
            network = self._step.network
            for net in nets:
                if _add_net_to_dict(self._net_dict, net):
                    network.append(get_net_name(net))
        if num_iter is not None:
            self._step.num_iter = num_iter

    def get_net(self, name):
        return self._net_dict[name]

    def Name(self):
        return self._step.name

    def __str__(self):
        return self._step.name

    def __repr__(self):
        return "ExecutionStep(%r)" % self._step.name

    def _assert_can_mutate(self):
        if self._is_used:
            raise GraphError("Cannot mutate step %r: it has already been added "
                             "to a plan/step." % self._step.name)

    def _notify_is_used(self):
        self._is_used = True

    def IsUsed(self):
        return self._is_used

    def Proto(self):
        return self._step

    def HasNets(self):
        return len(self._step.network) > 0

    def HasSubsteps(self):
        return len(self._step.substep) > 0

    def Nets(self):
        return list(self._net_dict.values())

    def Substeps(self):
        return self._substeps

    def SetIter(self, num_iter):
        self._assert_can_mutate()
        self._step.num_iter = num_iter

    def SetCreateWorkspace(self, create_workspace):
        self._assert_can_mutate()
        self._step.create_workspace = bool(create_workspace)

    def SetNumConcurrentInstances(self, num_concurrent_instances):
        self._assert_can_mutate()
        self._step.num_concurrent_instances = num_concurrent_instances

    def SetOnlyOnce(self, only_once):
        self._assert_can_mutate()
        self._step.only_once = bool(only_once)

    def SetShouldStopBlob(self, should_stop_blob):
        if not isinstance(should_stop_blob, (BlobReference, str)):
            raise GraphError("expects BlobReference here, got %s"
                             % type(should_stop_blob).__name__)
        self._assert_can_mutate()
        self._step.should_stop_blob = str(should_stop_blob)

    def RunEveryMillis(self, interval):
        """Make this step a reporter: it runs every ``interval`` ms while its
        siblings run, plus once after they finish.  (As in Caffe2 this
        setter is not blocked on a used step, but a used step's proto was
        already copied, so it has no effect there.)"""
        self._step.run_every_ms = interval

    def SetReportNet(self, report_net, report_interval):
        """Deprecated: use RunEveryMillis."""
        self._assert_can_mutate()
        _add_net_to_dict(self._net_dict, report_net)
        self._step.report_net = get_net_name(report_net)
        self._step.report_interval = report_interval

    def AddSubstep(self, substep):
        """Append a copy of ``substep``'s proto as it is now; marks it used.
        An empty step (no nets, no substeps) is silently dropped."""
        self._assert_can_mutate()
        if self.HasNets():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        if isinstance(substep, ExecutionStep):
            substep._notify_is_used()
            if not substep.HasNets() and not substep.HasSubsteps():
                return self
            for name, net in substep._net_dict.items():
                if net is None:  # known only by name
                    self._net_dict.setdefault(name, None)
                else:
                    _add_net_to_dict(self._net_dict, net)
            self._substeps.append(substep)
            proto = substep._step
        elif isinstance(substep, _proto.ExecutionStep):
            proto = substep
        else:
            raise GraphError("AddSubstep expects an ExecutionStep, got %r" % (substep,))
        self._step.substep.append(proto._copy())
        return self

    def SetConcurrentSubsteps(self, concurrent_substeps):
        self._assert_can_mutate()
        if self.HasNets():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        self._step.concurrent_substeps = bool(concurrent_substeps)

    def AddNet(self, net):
        """Append ``net`` (the same net may appear, and run, several times)."""
        self._assert_can_mutate()
        if self.HasSubsteps():
            raise GraphError("Cannot have both network and substeps (step %r)."
                             % self._step.name)
        if not isinstance(net, Net):
            raise GraphError("AddNet expects a Net, got %r" % (net,))
        _add_net_to_dict(self._net_dict, net)
        self._step.network.append(net._net.name)
        return self

    def get_all_attributes(self, name):
        """Attributes ``name`` of every net in the subtree, in first-use order."""
        return [attr for net in self._net_dict.values() if net is not None
                for attr in net.get_attributes(name)]

    @classmethod
    def create_from_proto(cls, step_proto, net_obj_dict, net_proto_dict):
        """Rebuild an ExecutionStep (and Nets) from protos."""
        if bool(step_proto.network) == bool(step_proto.substep):
            raise GraphError("step %r must have either nets or substeps"
                             % step_proto.name)
        items = []
        if step_proto.substep:
            for sub in step_proto.substep:
                items.append(cls.create_from_proto(sub, net_obj_dict, net_proto_dict))
        else:
            for net_name in step_proto.network:
                if net_name not in net_obj_dict:
                    if net_name not in net_proto_dict:
                        raise GraphError("step %r uses unknown net %r"
                                         % (step_proto.name, net_name))
                    net_obj_dict[net_name] = Net(net_proto_dict[net_name])
                items.append(net_obj_dict[net_name])
        has = step_proto.HasField
        return execution_step(
            step_proto.name, items,
            num_iter=step_proto.num_iter if has("num_iter") else None,
            concurrent_substeps=(step_proto.concurrent_substeps
                                 if has("concurrent_substeps") else None),
            should_stop_blob=(BlobReference(step_proto.should_stop_blob)
                              if has("should_stop_blob") else None),
            only_once=step_proto.only_once if has("only_once") else None,
            num_concurrent_instances=(step_proto.num_concurrent_instances
                                      if has("num_concurrent_instances") else None),
            create_workspace=(step_proto.create_workspace
                              if has("create_workspace") else False),
            run_every_ms=step_proto.run_every_ms if has("run_every_ms") else None)


def add_nets_in_order(step, net_list, _seen=None):
    """Append to ``net_list`` the names of nets used by ``step``, in order of
    first use (substeps first, then own nets, then the report net)."""
    if _seen is None:
        _seen = set(net_list)   # membership in O(1): plans hold 10^4 nets
    proto = step.Proto()
    for sub in step.Substeps():
        add_nets_in_order(sub, net_list, _seen)
    for name in proto.network:
        if name not in _seen:
            _seen.add(name)
            net_list.append(name)
    if proto.report_net and proto.report_net not in _seen:
        _seen.add(proto.report_net)
        net_list.append(proto.report_net)


class Plan(object):
    """A PlanDef: top-level steps plus a copy of every NetDef they use.

    ``AddStep`` copies the step proto and the NetDefs at that moment; later
    edits to the nets are not seen by the plan.
    """

    def __init__(self, name_or_step):
        self._plan = _proto.PlanDef()
        self._net_dict = OrderedDict()
        self._steps = []
        if isinstance(name_or_step, ExecutionStep):
            self._plan.name = name_or_step.Name()
            self.AddStep(name_or_step)
        elif isinstance(name_or_step, str):
            self._plan.name = name_or_step
        else:
            raise ValueError("name_or_step must be a string or ExecutionStep")

    def __str__(self):
        return self._plan.name

    def Name(self):
        return self._plan.name

    def Proto(self):
        return self._plan

    def AddNets(self, nets):
        for net in nets:
            if _add_net_to_dict(self._net_dict, net):
                if not isinstance(net, Net):
                    raise GraphError("Plan.AddNets expects Nets, got %r" % (net,))
                self._plan.network.append(net._net._copy())

    def Nets(self):
        return list(self._net_dict.values())

    def AddStep(self, step):
        """Append a copy of ``step`` (empty steps are ignored) and copies of
        the nets it uses, in order of first use."""
        if not isinstance(step, ExecutionStep):
            raise GraphError("Plan.AddStep expects an ExecutionStep, got %r" % (step,))
        step._notify_is_used()
        if not step.HasNets() and not step.HasSubsteps():
            return
        with _proto.gc_paused():
            self._plan.execution_step.append(step._step._copy())
            self._steps.append(step)
            names = []
            add_nets_in_order(step, names)
            self.AddNets([step.get_net(n) for n in names])

    def Steps(self):
        return self._steps

    def get_all_attributes(self, name):
        return [attr for net in self._net_dict.values()
                for attr in net.get_attributes(name)]

    @classmethod
    def create_from_proto(cls, plan_proto):
        plan = Plan(plan_proto.name)
        net_obj_dict = {}
        net_proto_dict = {}
        for net_proto in plan_proto.network:
            if net_proto.name in net_proto_dict:
                raise GraphError("duplicate net %r in plan" % net_proto.name)
            net_proto_dict[net_proto.name] = net_proto
        for step_proto in plan_proto.execution_step:
            plan.AddStep(ExecutionStep.create_from_proto(
                step_proto, net_obj_dict, net_proto_dict))
        return plan




def to_execution_step(step_or_nets, default_name=None):
    """A step as is; a NetBuilder as a step named after it with its children
    (and its stop blob as ``should_stop_blob``); otherwise
    ``execution_step(default_name, step_or_nets)``."""
    if isinstance(step_or_nets, ExecutionStep):
        return step_or_nets
    stop_blob = None
    if not default_name and hasattr(step_or_nets, "name"):
        default_name = step_or_nets.name
    nb_cls = _net_builder_class()
    if nb_cls is not None and isinstance(step_or_nets, nb_cls):
        stop_blob = step_or_nets._stop_blob
        step_or_nets = step_or_nets.get()
    return execution_step(default_name, step_or_nets, should_stop_blob=stop_blob)


def execution_step(default_name, steps_or_nets, num_iter=None, report_net=None,
                   report_interval=None, concurrent_substeps=None,
                   should_stop_blob=None, only_once=None,
                   num_concurrent_instances=None, create_workspace=False,
                   run_every_ms=None):
    """Build an ExecutionStep.

    ``steps_or_nets`` may be None/empty, a Net, an ExecutionStep (it becomes
    the only substep), a list of Nets (the step's nets) or a mixed list
    (each item goes through :func:`to_execution_step` and becomes a
    substep).  Without ``should_stop_blob`` and ``num_iter`` the step runs
    once (``num_iter=1``); giving both raises GraphError.
    """
    if should_stop_blob is not None and num_iter is not None:
        raise GraphError("Cannot set both should_stop_blob and num_iter.")
    if should_stop_blob is None and num_iter is None:
        num_iter = 1
    step = ExecutionStep(default_name)
    if should_stop_blob is not None:
        step.SetShouldStopBlob(should_stop_blob)
    if num_iter is not None:
        step.SetIter(num_iter)
    if only_once is not None:
        step.SetOnlyOnce(only_once)
    if concurrent_substeps is not None:
        step.SetConcurrentSubsteps(concurrent_substeps)
    if report_net is not None:
        if report_interval is None:
            raise GraphError("report_net needs report_interval")
        step.SetReportNet(report_net, report_interval)
    if num_concurrent_instances is not None:
        step.SetNumConcurrentInstances(num_concurrent_instances)
    if create_workspace:
        step.SetCreateWorkspace(True)
    if run_every_ms:
        step.RunEveryMillis(run_every_ms)

    if isinstance(steps_or_nets, ExecutionStep):
        step.AddSubstep(steps_or_nets)
    elif isinstance(steps_or_nets, Net):
        step.AddNet(steps_or_nets)
    elif isinstance(steps_or_nets, list):
        if all(isinstance(x, Net) for x in steps_or_nets):
            for x in steps_or_nets:
                step.AddNet(x)
        else:
            for x in steps_or_nets:
                step.AddSubstep(to_execution_step(x))
    elif steps_or_nets:
        raise ValueError(
            "steps_or_nets must be a step, a net, or a list of nets or steps.")
    return step


def scoped_execution_step(name, *args, **kwargs):
    """execution_step() with the step name under the current NameScope."""
    default_name = ScopedName(name) if name else name
    return execution_step(default_name, *args, **kwargs)
