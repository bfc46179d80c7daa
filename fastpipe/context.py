"""Thread-local context stacks (Caffe2's ``caffe2.python.context``).

A *context class* keeps, per thread, a stack of active instances.  Entering
an instance (``with obj:``) runs the class's own ``__enter__`` (if it has
one) and pushes the instance; leaving pops it -- checking that the popped
object is the one being exited -- and then runs the class's own
``__exit__``.  ``cls.current()`` returns the innermost active instance.

Two spellings are supported, as in Caffe2 (the 2017/18 decorator and the
later base classes)::

    @context.define_context(allow_default=True)
    class Node(object):
        ...

    class Cluster(context.DefaultManaged):
        ...

    with Node('trainer'):
        Node.current().name      # -> 'trainer'

An instance can also decorate a function: the function then runs with the
instance active.

Threading: the stacks are thread-local, so a context entered in one thread
is invisible to others.  A default instance (``allow_default=True``) is
created lazily and permanently pushed on the first ``current()`` call that
finds an empty stack, once per thread.
"""

import functools
import threading

from .errors import GraphError

__all__ = ["define_context", "get_active_context", "ContextInfo",
           "Managed", "DefaultManaged"]


class ContextInfo(object):
    """The per-thread stack of one context class."""

    __slots__ = ("cls", "allow_default", "arg_name", "_local")

    def __init__(self, cls, allow_default=False, arg_name=None):
        self.cls = cls
        self.allow_default = allow_default
        self.arg_name = arg_name
        self._local = threading.local()

    @property
    def stack(self):
        local = self._local
        try:
            return local.stack
        except AttributeError:
            local.stack = []
            return local.stack

    def enter(self, value):
        self.stack.append(value)

    def exit(self, value):
        stack = self.stack
        if not stack:
            raise GraphError("Context %s is empty." % self.cls.__name__)
        top = stack.pop()
        if top is not value:
            stack.append(top)
            raise GraphError(
                "Context %s: exiting %r but the active one is %r "
                "(contexts must be exited in reverse order)"
                % (self.cls.__name__, value, top))

    def get_active(self, required=True):
        stack = self.stack
        if not stack:
            if not required:
                return None
            if not self.allow_default:
                raise GraphError("Context %s is required but none is active."
                                 % self.cls.__name__)
            stack.append(self.cls())
        return stack[-1]


def _info(cls):
    info = getattr(cls, "_ctx_info", None)
    if info is None:
        raise GraphError("%s is not a context class" % (cls,))
    return info


def get_active_context(cls, val=None, required=True):
    """``cls.current(val, required)`` as a function."""
    info = _info(cls)
    if val is not None:
        if not isinstance(val, cls):
            raise GraphError("Wrong context type. Expected: %s, got %s."
                             % (cls.__name__, type(val).__name__))
        return val
    return info.get_active(required=required)


def _ctx_enter(self):
    prev = type(self)._ctx_prev_enter
    if prev is not None:
        prev(self)
    type(self)._ctx_info.enter(self)
    return self


def _ctx_exit(self, *args):
    type(self)._ctx_info.exit(self)
    prev = type(self)._ctx_prev_exit
    if prev is not None:
        return prev(self, *args)
    return None


def _ctx_call(self, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with self:
            return func(*args, **kwargs)
    return wrapper


def _ctx_current(cls, value=None, required=True):
    return get_active_context(cls, value, required)


class define_context(object):
    """Class decorator that makes a class a thread-local context.

    Args:
        arg_name: kept for compatibility (the name of the argument through
            which callers may pass an explicit instance).
        allow_default: when True, ``current()`` with an empty stack creates
            ``cls()`` and pushes it permanently.
    """

    def __init__(self, arg_name=None, allow_default=False):
        self.arg_name = arg_name
        self.allow_default = allow_default

    def __call__(self, cls):
        if "_ctx_info" in _all_dicts(cls):
            raise GraphError("%s: a parent class already defines a context"
                             % cls.__name__)
        cls._ctx_info = ContextInfo(cls, self.allow_default, self.arg_name)
        cls._ctx_class = cls
        cls._ctx_prev_enter = getattr(cls, "__enter__", None)
        cls._ctx_prev_exit = getattr(cls, "__exit__", None)
        cls.__enter__ = _ctx_enter
        cls.__exit__ = _ctx_exit
        cls.__call__ = _ctx_call
        cls.current = classmethod(_ctx_current)
        return cls


def _all_dicts(cls):
    names = set()
    for klass in cls.__mro__:
        names.update(vars(klass))
    return names


# --- base-class spelling (later Caffe2) --------------------------------------

_managed_lock = threading.Lock()  # protects creating ContextInfo of Managed classes


def _managed_info(cls):
    info = cls.__dict__.get("_managed_info")
    if info is None:
        with _managed_lock:
            info = cls.__dict__.get("_managed_info")
            if info is None:
                info = ContextInfo(cls, allow_default=issubclass(cls, DefaultManaged))
                cls._managed_info = info
    return info


def _managed_classes(obj):
    return [c for c in type(obj).__mro__
            if c is not Managed and c is not DefaultManaged
            and isinstance(c, type) and issubclass(c, Managed)]


class Managed(object):
    """Base class making subclasses thread-local contexts.

    Each class in the MRO (below ``Managed``) has its own stack, so entering
    a ``Sub(Base)`` instance makes it current for both ``Sub`` and ``Base``.
    """

    @classmethod
    def current(cls, value=None, required=True):
        if value is not None:
            if not isinstance(value, cls):
                raise GraphError("Wrong context type. Expected: %s, got %s."
                                 % (cls.__name__, type(value).__name__))
            return value
        return _managed_info(cls).get_active(required=required)

    def __enter__(self):
        for cls in _managed_classes(self):
            _managed_info(cls).enter(self)
        return self

    def __exit__(self, *args):
        for cls in _managed_classes(self):
            _managed_info(cls).exit(self)

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with self:
                return func(*args, **kwargs)
        return wrapper


class DefaultManaged(Managed):
    """Like :class:`Managed`, but ``current()`` creates a default instance."""
