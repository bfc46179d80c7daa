"""The bottom of the graph layer: hooks that higher modules register into.

The graph modules (``fastpipe._graph.*``) import only each other, ``proto``,
``_opschema``, ``_pyop`` and ``errors``; they never import ``net_builder``
or ``schema``.  Where the graph layer needs something those modules define,
they register it here when they are imported:

* ``net_builder`` registers its :class:`NetBuilder` class, so ``Net`` can
  prefix new net names with the active builder's name and
  ``to_execution_step`` can recognise a builder.
* ``task`` registers its :class:`TaskGroup` class, for ``net_builder``'s
  local reporters.
* ``schema`` registers the record functions ``Net.set_input_record``,
  ``Net.Clone`` and ``clone_and_bind_net`` use.  A record only exists once
  ``schema`` was imported, so a Net that holds one always finds them.

Registration happens once, at import time, from the importing thread (the
import lock serialises it); readers never need a lock.
"""

from ..errors import GraphError

# The NetBuilder class (None until fastpipe.net_builder is imported).
_builder_class = None
# The TaskGroup class (None until fastpipe.task is imported).
_task_group_class = None
# name -> function, filled by fastpipe.schema
_schema_functions = {}


def register_builder_class(cls):
    """Called once by ``fastpipe.net_builder``."""
    global _builder_class
    _builder_class = cls


def builder_class():
    """The NetBuilder class, or None if ``fastpipe.net_builder`` was never
    imported (then no builder can be active)."""
    return _builder_class


def builder_prefix():
    """Name of this thread's active NetBuilder ('' if none)."""
    cls = _builder_class
    if cls is None:
        return ""
    builder = cls.current(required=False)
    return builder.name if builder else ""


def register_task_group_class(cls):
    """Called once by ``fastpipe.task`` (``net_builder``'s local reporters
    register on the active TaskGroup)."""
    global _task_group_class
    _task_group_class = cls


def task_group_class():
    """The TaskGroup class; a reporter can only be built inside a TaskGroup,
    so ``fastpipe.task`` is imported by then."""
    if _task_group_class is None:
        raise GraphError("local_reporter needs an active TaskGroup (import fastpipe.task)")
    return _task_group_class


def register_schema_functions(**functions):
    """Called once by ``fastpipe.schema`` (NewRecord, from_blob_list, Struct,
    Field)."""
    _schema_functions.update(functions)


def schema_function(name):
    """A function ``fastpipe.schema`` registered (GraphError if it was never
    imported: then no record can exist to need it)."""
    try:
        return _schema_functions[name]
    except KeyError:
        raise GraphError("fastpipe.schema.%s is needed here but fastpipe.schema "
                         "was never imported" % name) from None
