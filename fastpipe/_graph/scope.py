"""Operator data types and the thread-local name and device scopes."""

import contextlib
import threading

from .. import _opschema
from .. import proto as _proto
from ..errors import ArgumentError, GraphError


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
        raise ArgumentError("unknown DataType code %r" % (code,))

    @staticmethod
    def Value(name):
        try:
            return _opschema.DTYPE_NAMES[name]
        except KeyError:
            raise ArgumentError("unknown DataType name %r" % (name,))


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

