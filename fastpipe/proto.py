"""Plain-Python stand-ins for Caffe2's protobuf messages.

fastpipe has no protobuf dependency.  These classes keep Caffe2's field
names (``op``, ``type``, ``input``, ``output``, ``arg``, ``external_input``,
``substep``, ``network``, ...) so code that walks ``net.Proto()`` keeps
working, and they support the small part of the protobuf message API that
pipeline code uses: ``HasField``, ``ClearField``, ``CopyFrom``,
``MergeFrom``, ``add()`` on repeated message fields, equality and a
text dump.

These messages are the boundary between the graph layer and the runtime:
``fastpipe._lower`` reads a :class:`PlanDef` and hands the native core a
flat description.
"""

import copy as _copy

__all__ = ["Argument", "DeviceOption", "OperatorDef", "NetDef",
           "ExecutionStep", "PlanDef"]


class _RepeatedMessage(list):
    """A list of messages with protobuf's ``add()`` and ``extend``."""

    __slots__ = ("_cls",)

    def __init__(self, cls, items=()):
        super().__init__(items)
        self._cls = cls

    def add(self, **kwargs):
        item = self._cls(**kwargs)
        self.append(item)
        return item

    def __deepcopy__(self, memo):
        return _RepeatedMessage(self._cls, [_copy.deepcopy(x, memo) for x in self])

    def __reduce__(self):
        return (_RepeatedMessage, (self._cls, list(self)))


class _Message(object):
    """Minimal protobuf-like message.

    Subclasses declare ``_scalars`` (name -> default), ``_repeated`` (names
    of repeated scalar fields) and ``_messages`` (name -> class for repeated
    message fields).  A scalar field is "set" once assigned; reading an unset
    field gives its default, as protobuf does.
    """

    _scalars = {}
    _repeated = ()
    _messages = {}
    _singular = {}

    def __init__(self, **kwargs):
        object.__setattr__(self, "_set", {})
        for name in self._repeated:
            object.__setattr__(self, name, [])
        for name, cls in self._messages.items():
            object.__setattr__(self, name, _RepeatedMessage(cls))
        for key, value in kwargs.items():
            if key in self._repeated:
                getattr(self, key).extend(value)
            elif key in self._messages:
                getattr(self, key).extend(value)
            else:
                setattr(self, key, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: unset scalar fields.
        cls = type(self)
        if name in cls._scalars:
            return cls._scalars[name]
        if name in cls._singular:
            value = cls._singular[name]()
            self._set[name] = value
            return value
        raise AttributeError("%s has no field %r" % (cls.__name__, name))

    def __setattr__(self, name, value):
        cls = type(self)
        if name in cls._scalars or name in cls._singular:
            self._set[name] = value
        elif name in cls._repeated:
            object.__setattr__(self, name, list(value))
        elif name in cls._messages:
            object.__setattr__(self, name, _RepeatedMessage(cls._messages[name], value))
        else:
            raise AttributeError("%s has no field %r" % (cls.__name__, name))

    def __getattribute__(self, name):
        if not name.startswith("_"):
            d = object.__getattribute__(self, "_set")
            if name in d:
                return d[name]
        return object.__getattribute__(self, name)

    def HasField(self, name):
        cls = type(self)
        if name not in cls._scalars and name not in cls._singular:
            raise ValueError('Protocol message %s has no singular "%s" field.'
                             % (cls.__name__, name))
        return name in self._set

    def ClearField(self, name):
        cls = type(self)
        if name in cls._scalars or name in cls._singular:
            self._set.pop(name, None)
        elif name in cls._repeated:
            object.__setattr__(self, name, [])
        elif name in cls._messages:
            object.__setattr__(self, name, _RepeatedMessage(cls._messages[name]))
        else:
            raise ValueError("%s has no field %r" % (cls.__name__, name))

    def ListFields(self):
        out = []
        for name in list(self._scalars) + list(self._singular):
            if name in self._set:
                out.append((name, self._set[name]))
        for name in list(self._repeated) + list(self._messages):
            value = object.__getattribute__(self, name)
            if value:
                out.append((name, value))
        return out

    def CopyFrom(self, other):
        if other is self:
            return
        fresh = _copy.deepcopy(other)
        object.__setattr__(self, "_set", fresh._set)
        for name in self._repeated:
            object.__setattr__(self, name, object.__getattribute__(fresh, name))
        for name in self._messages:
            object.__setattr__(self, name, object.__getattribute__(fresh, name))

    def MergeFrom(self, other):
        fresh = _copy.deepcopy(other)
        self._set.update(fresh._set)
        for name in self._repeated:
            getattr(self, name).extend(object.__getattribute__(fresh, name))
        for name in self._messages:
            getattr(self, name).extend(object.__getattribute__(fresh, name))

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.ListFields() == other.ListFields()

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __deepcopy__(self, memo):
        new = type(self)()
        object.__setattr__(new, "_set", _copy.deepcopy(self._set, memo))
        for name in self._repeated:
            object.__setattr__(new, name, list(object.__getattribute__(self, name)))
        for name in self._messages:
            object.__setattr__(new, name,
                               _copy.deepcopy(object.__getattribute__(self, name), memo))
        return new

    def __getstate__(self):
        state = {"_set": self._set}
        for name in list(self._repeated) + list(self._messages):
            state[name] = list(object.__getattribute__(self, name))
        return state

    def __setstate__(self, state):
        object.__setattr__(self, "_set", state["_set"])
        for name in self._repeated:
            object.__setattr__(self, name, state.get(name, []))
        for name, cls in self._messages.items():
            object.__setattr__(self, name, _RepeatedMessage(cls, state.get(name, [])))

    def _text(self, indent):
        pad = "  " * indent
        lines = []
        for name, value in self.ListFields():
            if name in self._messages or name in self._singular:
                items = value if name in self._messages else [value]
                for item in items:
                    lines.append("%s%s {" % (pad, name))
                    lines.extend(item._text(indent + 1))
                    lines.append("%s}" % pad)
            elif name in self._repeated:
                for item in value:
                    lines.append("%s%s: %s" % (pad, name, _fmt(item)))
            else:
                lines.append("%s%s: %s" % (pad, name, _fmt(value)))
        return lines

    def __str__(self):
        return "\n".join(self._text(0)) + ("\n" if self.ListFields() else "")

    def __repr__(self):
        return "<%s\n%s>" % (type(self).__name__, str(self))


def _fmt(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, str)):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "backslashreplace")
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    return repr(value)


class DeviceOption(_Message):
    _scalars = {"device_type": 0, "device_id": 0, "random_seed": 0,
                "node_name": ""}
    _repeated = ("extra_info",)


class Argument(_Message):
    """One operator argument: exactly one of f, i, s, floats, ints, strings,
    n, nets is meaningful (bools are stored in ``i``, strings as bytes)."""

    _scalars = {"name": "", "f": 0.0, "i": 0, "s": b""}
    _repeated = ("floats", "ints", "strings")
    _messages = {}  # 'n' / 'nets' filled in below


class OperatorDef(_Message):
    _scalars = {"name": "", "type": "", "engine": "", "is_gradient_op": False,
                "debug_info": ""}
    _repeated = ("input", "output", "control_input")
    _messages = {"arg": Argument}
    _singular = {"device_option": DeviceOption}


class NetDef(_Message):
    _scalars = {"name": "", "type": "", "num_workers": 0}
    _repeated = ("external_input", "external_output", "partition_info")
    _messages = {"op": OperatorDef, "arg": Argument}
    _singular = {"device_option": DeviceOption}


class ExecutionStep(_Message):
    _scalars = {"name": "", "num_iter": 0, "criteria_network": "",
                "report_net": "", "report_interval": 0, "run_every_ms": 0,
                "concurrent_substeps": False, "should_stop_blob": "",
                "only_once": False, "create_workspace": False,
                "num_concurrent_instances": 0}
    _repeated = ("network",)
    _messages = {}  # 'substep' filled in below


ExecutionStep._messages = {"substep": ExecutionStep}
Argument._messages = {"nets": NetDef}
Argument._singular = {"n": NetDef}


class PlanDef(_Message):
    _scalars = {"name": ""}
    _messages = {"network": NetDef, "execution_step": ExecutionStep}
