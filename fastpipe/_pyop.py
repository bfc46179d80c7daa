"""Process-wide table of functions behind ``Python`` operators.

``core.Net.Python(f)`` registers ``f`` here and stores the returned token in
the operator's ``token`` argument; the runtime looks the token up when it
compiles the operator.  ``f`` is either a callable ``f(inputs, outputs)`` or
a ``(factory, args, kwargs)`` tuple; a factory is called once per compiled
operator instance (so once per runtime instance) and must return the
callable.

Lifetime: the table holds its entries *weakly*.  The token returned by
:func:`register` is a :class:`Token` -- ``bytes`` that compare and hash as
the plain token, and that hold the entry strongly.  The token sits in the
``token`` argument of every OperatorDef that calls the function, and the
graph's copies (``Net.Clone``, ``clone_and_bind_net``, a Plan's NetDefs,
``copy``/``deepcopy``) share the same Token object, so the entry lives
exactly as long as some Net, NetDef or Plan uses it (or the caller keeps
the token).  When the last one is dropped, the function and whatever its
closure captured are freed.  A compiled native program keeps the looked-up
function itself for as long as the program lives.
"""

import itertools
import threading
import weakref
from .errors import ArgumentError, NotFoundError

__all__ = ["Token", "register", "lookup"]

_lock = threading.Lock()  # protects _table and _ids
# token (str) -> _Entry; an entry goes away with the last Token holding it
_table = weakref.WeakValueDictionary()
_ids = itertools.count()


class _Entry(object):
    __slots__ = ("func", "pass_workspace", "__weakref__")

    def __init__(self, func, pass_workspace):
        self.func = func
        self.pass_workspace = pass_workspace


class Token(bytes):
    """The ``token`` argument of a ``Python`` op: ``b'python_op:<n>'``,
    holding the registered function alive.  Immutable, so copies of an
    argument share it (``copy``/``deepcopy`` return the same object)."""

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        # A pickled token comes back bound to the function if it is still
        # registered in this process, else as plain bytes (lookup then
        # raises KeyError, as for any unknown token).
        return (_revive, (bytes(self),))


def _revive(raw):
    with _lock:
        entry = _table.get(raw.decode("utf-8"))
    if entry is None:
        return raw
    token = Token(raw)
    token._entry = entry
    return token


def register(func, pass_workspace=False):
    """Register ``func``; returns its :class:`Token` (keep it, or an op
    holding it, alive for as long as the function may be looked up)."""
    if isinstance(func, tuple):
        if len(func) != 3 or not callable(func[0]):
            raise ArgumentError("Python op: expected f or (factory, args, kwargs), got %r"
                             % (func,))
    elif not callable(func):
        raise ArgumentError("Python op: %r is not callable" % (func,))
    entry = _Entry(func, bool(pass_workspace))
    with _lock:
        name = "python_op:%d" % next(_ids)
        _table[name] = entry
    token = Token(name.encode("utf-8"))
    token._entry = entry
    return token


def lookup(token):
    """``(func, pass_workspace)`` registered under ``token`` (str, bytes or
    Token).  KeyError if unknown or if nothing holds it any more."""
    key = token.decode("utf-8") if isinstance(token, bytes) else token
    with _lock:
        entry = _table.get(key)
    if entry is None:
        raise NotFoundError("no Python function registered under token %r" % (token,))
    return (entry.func, entry.pass_workspace)


def registered_count():
    """How many functions are registered now (for tests and leak checks)."""
    with _lock:
        return len(_table)
