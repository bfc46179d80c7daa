"""Plain-Python stand-ins for Caffe2's protobuf messages.

fastpipe has no protobuf dependency.  These classes keep Caffe2's field
names (``op``, ``type``, ``input``, ``output``, ``arg``, ``external_input``,
``substep``, ``network``, ...) so code that walks ``net.Proto()`` keeps
working, and they support the small part of the protobuf message API that
pipeline code uses: ``HasField``, ``ClearField``, ``CopyFrom``,
``MergeFrom``, ``add()`` on repeated message fields, equality and a
text dump.

These messages are the boundary between the graph layer and the runtime:
``fastpipe/_core/lower.pxi`` (``_core.Program.from_plan``) reads a :class:`PlanDef` and hands the native core a
flat description.
"""

import gc as _gc
import threading as _threading
from .errors import ArgumentError, AttributeNotFoundError

__all__ = ["Argument", "DeviceOption", "OperatorDef", "NetDef",
           "ExecutionStep", "PlanDef"]


class _RepeatedMessage(list):
    """A list of messages with protobuf's ``add()`` and ``extend``.

    Each message class has its own subclass (``_RepeatedMessage.of(cls)``)
    holding the item class as a class attribute, so making one is a plain
    ``list`` construction with no Python-level ``__init__``.
    """

    __slots__ = ()
    _cls = None
    _subclasses = {}

    @staticmethod
    def of(item_cls):
        sub = _RepeatedMessage._subclasses.get(item_cls)
        if sub is None:
            sub = type("Repeated" + item_cls.__name__, (_RepeatedMessage,),
                       {"__slots__": (), "_cls": item_cls,
                        "__new__": list.__new__, "__init__": list.__init__})
            _RepeatedMessage._subclasses[item_cls] = sub
        return sub

    def add(self, **kwargs):
        item = self._cls(**kwargs)
        self.append(item)
        return item

    def __deepcopy__(self, memo):
        return type(self)([x._copy() for x in self])

    def __copy__(self):
        return type(self)(self)

    def __reduce__(self):
        return (_repeated_message, (self._cls, list(self)))


def _repeated_message(item_cls, items):
    return _RepeatedMessage.of(item_cls)(items)


class _LazyRepeated(object):
    """Class-level descriptor of a repeated field: the first read of an
    unset field stores a fresh empty list (or message list) in the instance
    ``__dict__``, which then shadows the descriptor, so later reads are
    plain attribute lookups."""

    __slots__ = ("name", "make")

    def __init__(self, name, make):
        self.name = name
        self.make = make

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.make()
        return value


class gc_paused(object):
    """``with gc_paused():`` runs a bulk graph operation (cloning a net,
    compiling or printing a plan, lowering it) with the cyclic garbage
    collector off.  Such an operation allocates tens of thousands of
    long-lived containers and no garbage cycles; with the collector on, the
    allocations trigger repeated full collections of the whole heap, which
    cost more than the operation itself.  Reference counting still frees
    everything as usual; collection resumes on exit.  Nested and concurrent
    uses are safe: only the outermost one that found the collector enabled
    re-enables it.

    On that exit, the objects tracked so far are moved to the oldest
    generation (``gc.freeze()`` then ``gc.unfreeze()``: two list splices,
    no traversal) instead of being left in the youngest one, whose next
    collection would traverse every graph object the operation just made
    (and the next older one would traverse them again): in a fresh process
    that was ~30 ms of a 200 ms job build.  They are still examined by
    full collection.  A pause that made fewer than ``_MOVE_MIN`` objects (a
    small job: a few hundred to ~2,000 objects a pipe) skips the move and
    leaves them to the ordinary young collections, which free a dead small
    job's cycles promptly; the move is for big builds (a 2,000-op pipe makes
    ~8,000).  CPython does not count objects moved that way towards
    its own trigger for a full collection, so this class does: once the
    objects moved since the last full collection outnumber both
    ``_FULL_COLLECTION_MIN`` and the objects that survived that collection,
    the exit runs ``gc.collect()``.  Garbage cycles among graph objects
    (a Net and its BlobReferences form one) are thus still freed, and a
    process that builds a job per request stays flat in memory: at most
    about one live heap's worth of objects waits for the next full
    collection."""

    __slots__ = ("_was_enabled",)

    def __enter__(self):
        self._was_enabled = _gc.isenabled()
        if self._was_enabled:
            _gc.disable()
        return self

    def __exit__(self, *exc):
        if self._was_enabled:
            global _moved_since_full, _live_after_full
            young = _gc.get_count()[0]  # objects made since the last collection
            if young < _MOVE_MIN or _gc.get_freeze_count():
                # a small build: leave its objects to the ordinary young
                # collections, which free a small job's cycles promptly.
                # Or the user froze objects (gc.freeze() before a fork):
                # unfreeze() would undo that, so no move either
                _gc.enable()
                return False
            _gc.freeze()
            _gc.unfreeze()
            with _gc_accounting_lock:
                _moved_since_full += young
                full = _moved_since_full > max(_FULL_COLLECTION_MIN, _live_after_full)
                if full:
                    _moved_since_full = 0
            _gc.enable()
            if full:
                _gc.collect()
                _gc.freeze()    # everything left is in the oldest generation
                live = _gc.get_freeze_count()
                _gc.unfreeze()
                with _gc_accounting_lock:
                    _live_after_full = live
        return False


# gc_paused's own trigger for full collections (see its docstring)
_FULL_COLLECTION_MIN = 500000
_MOVE_MIN = 4096        # pauses that made fewer objects skip the move
_gc_accounting_lock = _threading.Lock()  # protects the two counters below
_moved_since_full = 0   # objects moved to the oldest generation since the last full collection
_live_after_full = 0    # tracked objects that survived that collection


_object_new = object.__new__
_object_setattr = object.__setattr__

# field kinds in _Message._kinds
_SCALAR, _SINGULAR, _REPEATED, _MESSAGES = 0, 1, 2, 3


class _MessageMeta(type):
    """Installs the per-class field tables: scalar defaults become class
    attributes (a set scalar lives in the instance ``__dict__``, so reading
    any scalar is a normal attribute lookup), repeated fields become
    :class:`_LazyRepeated` descriptors."""

    def __init__(cls, name, bases, ns):
        type.__init__(cls, name, bases, ns)
        cls._install_fields()


class _Message(object, metaclass=_MessageMeta):
    """Minimal protobuf-like message.

    Subclasses declare ``_scalars`` (name -> default), ``_repeated`` (names
    of repeated scalar fields), ``_messages`` (name -> class for repeated
    message fields) and ``_singular`` (name -> class of a singular message
    field).  A scalar field is "set" once assigned; reading an unset field
    gives its default, as protobuf does.  Reading an unset singular message
    field creates (and sets) an empty message.

    Set scalar and message fields, and repeated fields that were read or
    written, live in the instance ``__dict__``; defaults live on the class.
    """

    _scalars = {}
    _repeated = ()
    _messages = {}
    _singular = {}
    _kinds = {}
    _order = ()

    @classmethod
    def _install_fields(cls):
        if cls.__dict__.get("_installed_for") == (
                id(cls._scalars), id(cls._repeated), id(cls._messages), id(cls._singular)):
            return
        kinds = {}
        for name, default in cls._scalars.items():
            kinds[name] = _SCALAR
            setattr(cls, name, default)
        for name in cls._singular:
            kinds[name] = _SINGULAR
        for name in cls._repeated:
            kinds[name] = _REPEATED
            setattr(cls, name, _LazyRepeated(name, list))
        for name, item_cls in cls._messages.items():
            kinds[name] = _MESSAGES
            setattr(cls, name, _LazyRepeated(name, _RepeatedMessage.of(item_cls)))
        cls._kinds = kinds
        # ListFields / text order: scalars, singular messages, repeated
        # scalars, repeated messages (each in declaration order)
        cls._order = tuple(list(cls._scalars) + list(cls._singular) +
                           list(cls._repeated) + list(cls._messages))
        cls._installed_for = (id(cls._scalars), id(cls._repeated),
                              id(cls._messages), id(cls._singular))

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            kind = self._kinds.get(key)
            if kind == _REPEATED or kind == _MESSAGES:
                getattr(self, key).extend(value)
            else:
                setattr(self, key, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: unset singular messages.
        cls = type(self)
        if name in cls._singular:
            value = cls._singular[name]()
            self.__dict__[name] = value
            return value
        raise AttributeNotFoundError("%s has no field %r" % (cls.__name__, name))

    def __setattr__(self, name, value):
        kind = self._kinds.get(name)
        if kind == _SCALAR or kind == _SINGULAR:
            self.__dict__[name] = value
        elif kind == _REPEATED:
            self.__dict__[name] = list(value)
        elif kind == _MESSAGES:
            self.__dict__[name] = _RepeatedMessage.of(self._messages[name])(value)
        else:
            raise AttributeNotFoundError("%s has no field %r" % (type(self).__name__, name))

    @property
    def _set(self):
        """Set scalar and singular fields: name -> value (a new dict)."""
        kinds = self._kinds
        return {k: v for k, v in self.__dict__.items() if kinds.get(k, 9) <= _SINGULAR}

    def HasField(self, name):
        kind = self._kinds.get(name)
        if kind is None or kind > _SINGULAR:
            raise ArgumentError('Protocol message %s has no singular "%s" field.'
                             % (type(self).__name__, name))
        return name in self.__dict__

    def ClearField(self, name):
        if name not in self._kinds:
            raise ArgumentError("%s has no field %r" % (type(self).__name__, name))
        self.__dict__.pop(name, None)

    def ListFields(self):
        d = self.__dict__
        kinds = self._kinds
        out = []
        for name in self._order:
            if name in d:
                value = d[name]
                if kinds[name] <= _SINGULAR or value:
                    out.append((name, value))
        return out

    def _copy(self):
        """A deep copy (messages form trees: no memo is needed)."""
        new = object.__new__(type(self))
        d = self.__dict__.copy()
        for k, v in d.items():
            t = type(v)
            if t is list:
                d[k] = v[:]
            elif isinstance(v, list):  # a _RepeatedMessage subclass
                d[k] = t([x._copy() for x in v])
            elif isinstance(v, _Message):
                d[k] = v._copy()
        object.__setattr__(new, "__dict__", d)
        return new

    def CopyFrom(self, other):
        if other is self:
            return
        if type(other) is not type(self):
            raise ArgumentError("CopyFrom expects a %s, got %s"
                            % (type(self).__name__, type(other).__name__))
        object.__setattr__(self, "__dict__", other._copy().__dict__)

    def MergeFrom(self, other):
        fresh = other._copy()
        d = self.__dict__
        kinds = self._kinds
        for name, value in fresh.__dict__.items():
            kind = kinds[name]
            if kind <= _SINGULAR:
                d[name] = value
            elif value:
                getattr(self, name).extend(value)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.ListFields() == other.ListFields()

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __deepcopy__(self, memo):
        return self._copy()

    def __copy__(self):
        new = object.__new__(type(self))
        d = self.__dict__.copy()
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = type(v)(v)
        object.__setattr__(new, "__dict__", d)
        return new

    def __getstate__(self):
        state = {}
        for k, v in self.__dict__.items():
            state[k] = list(v) if isinstance(v, list) else v
        return state

    def __setstate__(self, state):
        if "_set" in state:  # the layout before fields moved to __dict__
            state = dict(state)
            state.update(state.pop("_set"))
        for name, value in state.items():
            if name in self._kinds:
                setattr(self, name, value)

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
ExecutionStep._install_fields()
Argument._install_fields()


class PlanDef(_Message):
    _scalars = {"name": ""}
    _messages = {"network": NetDef, "execution_step": ExecutionStep}


def copy_op_with_io(op, inputs, outputs):
    """A deep copy of OperatorDef ``op`` whose ``input``/``output`` are the
    given (new) lists: Clone's inner loop, without copying the old lists."""
    d = op.__dict__.copy()
    d["input"] = inputs
    d["output"] = outputs
    if "arg" in d or "control_input" in d or "device_option" in d:
        _copy_op_extras(d)
    new = _object_new(OperatorDef)
    _object_setattr(new, "__dict__", d)
    return new


def _copy_op(op):
    d = op.__dict__.copy()
    v = d.get("input")
    if v is not None:
        d["input"] = v[:]
    v = d.get("output")
    if v is not None:
        d["output"] = v[:]
    if "arg" in d or "control_input" in d or "device_option" in d:
        _copy_op_extras(d)
    new = _object_new(OperatorDef)
    _object_setattr(new, "__dict__", d)
    return new


def _copy_op_extras(d):
    # An empty repeated field is dropped from the copy rather than copied:
    # it reads back as a fresh empty list, exactly like an unset one.
    v = d.get("arg")
    if v is not None:
        if v:
            d["arg"] = type(v)([a._copy() for a in v])
        else:
            del d["arg"]
    v = d.get("control_input")
    if v is not None:
        if v:
            d["control_input"] = v[:]
        else:
            del d["control_input"]
    v = d.get("device_option")
    if v is not None:
        d["device_option"] = v._copy()


OperatorDef._copy = _copy_op


def _copy_net(net):
    """NetDef._copy: the generic copy with the op loop inlined (a plan
    copies every op of every net it runs)."""
    d = net.__dict__.copy()
    for k, v in d.items():
        t = type(v)
        if t is list:
            d[k] = v[:]
        elif k == "op":
            ops = []
            append = ops.append
            for op in v:
                # filling the new op's own (empty) __dict__ is a little
                # faster than copying a dict and installing it
                new_op = _object_new(OperatorDef)
                append(new_op)
                od = new_op.__dict__
                od.update(op.__dict__)
                try:    # almost every op has both (try is free in 3.11+)
                    od["input"] = od["input"][:]
                    od["output"] = od["output"][:]
                except KeyError:
                    x = od.get("output")
                    if x is not None:
                        od["output"] = x[:]
                if "arg" in od or "control_input" in od or "device_option" in od:
                    _copy_op_extras(od)
            d[k] = t(ops)
        elif isinstance(v, list):
            d[k] = t([x._copy() for x in v])
        elif isinstance(v, _Message):
            d[k] = v._copy()
    new = _object_new(NetDef)
    _object_setattr(new, "__dict__", d)
    return new


NetDef._copy = _copy_net
