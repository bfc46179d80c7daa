"""Process-wide table of functions behind ``Python`` operators.

``core.Net.Python(f)`` registers ``f`` here and stores the returned token in
the operator's ``token`` argument; the runtime looks the token up when it
compiles the operator.  ``f`` is either a callable ``f(inputs, outputs)`` or
a ``(factory, args, kwargs)`` tuple; a factory is called once per compiled
operator instance (so once per runtime instance) and must return the
callable.
"""

import itertools
import threading

_lock = threading.Lock()  # protects _table and _ids
_table = {}
_ids = itertools.count()


def register(func, pass_workspace=False):
    if isinstance(func, tuple):
        if len(func) != 3 or not callable(func[0]):
            raise ValueError("Python op: expected f or (factory, args, kwargs), got %r"
                             % (func,))
    elif not callable(func):
        raise ValueError("Python op: %r is not callable" % (func,))
    with _lock:
        token = "python_op:%d" % next(_ids)
        _table[token] = (func, bool(pass_workspace))
    return token


def lookup(token):
    with _lock:
        entry = _table.get(token)
    if entry is None:
        raise KeyError("no Python function registered under token %r" % token)
    return entry
