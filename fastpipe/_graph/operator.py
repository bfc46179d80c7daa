"""Operator arguments, OperatorDefs and Python operator registration."""

import copy as _copy

import numpy as np

from .. import _pyop
from .. import proto as _proto
from .blob import BlobReference, _rectify
from .scope import _scope_local
from ..errors import ArgumentError


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
        # a Python op's token keeps its registered function alive: store
        # the Token itself, not a plain copy
        arg.s = value if isinstance(value, _pyop.Token) else bytes(value)
    elif isinstance(value, _proto.NetDef):
        arg.n = _copy.deepcopy(value)
    elif isinstance(value, BlobReference):
        arg.s = value._name.encode("utf-8")
    else:
        try:
            items = [_py_scalar(v) for v in value]
        except TypeError:
            raise ArgumentError("Unknown argument type: key=%s value=%r, value type=%s"
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
            raise ArgumentError(
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

