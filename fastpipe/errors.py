"""fastpipe's exception tree.

Every exception subclasses :class:`FastpipeError` and the builtin it most
resembles, so callers can catch either.  The runtime turns one native
status code into one of these classes in a single place
(``fastpipe._core._raise_status``).
"""

__all__ = ["FastpipeError", "OperatorDefError", "PlanError", "BlobError",
           "RunError", "QueueClosedError", "CancelledError", "GraphError",
           "WorkspaceError", "ArgumentError", "OutOfMemoryError", "FastpipeWarning",
           "IterTimeoutError", "StallError",
           "NotSupportedError", "NotFoundError", "AttributeNotFoundError", "IndexOutOfRangeError"]


class FastpipeError(Exception):
    """Base of every fastpipe exception."""


class OperatorDefError(FastpipeError, ValueError):
    """An operator definition is invalid: unknown argument, bad type, arity."""


class PlanError(FastpipeError, ValueError, RuntimeError):
    """A plan or execution step cannot be compiled (bad field combination,
    undefined net, missing stop blob, missing input blob...).  Also a
    ``RuntimeError``, which is what Caffe2 raised for these."""


class BlobError(FastpipeError, KeyError):
    """A blob does not exist, or holds the wrong kind of value."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RunError(FastpipeError, RuntimeError):
    """An operator failed while a net or plan ran.  The message names the
    operator, its net and step; ``__cause__`` is the original exception for
    ``Python`` operators.

    The same parts are attributes (``None`` where unknown, e.g. a failure
    outside any operator): ``op_type`` (``"Add"``), ``op_index`` (the op's
    position in its net), ``net``, ``step`` (the innermost step) and
    ``instance`` (the runtime instance number, for steps with
    ``num_concurrent_instances``) and ``stage`` (the pipe or task the op
    belongs to, named as in ``run.stats()`` and ``net_printer.to_dot``)."""

    def __init__(self, message="", op_type=None, op_index=None, net=None,
                 step=None, instance=None, stage=None):
        super().__init__(message)
        self.op_type = op_type
        self.op_index = op_index
        self.net = net
        self.step = step
        self.instance = instance
        self.stage = stage

    def __reduce__(self):  # keep the attributes across pickling (e.g. to a Ray driver)
        return (type(self), (str(self), self.op_type, self.op_index, self.net,
                             self.step, self.instance, self.stage))

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class QueueClosedError(RunError):
    """A plain EnqueueBlobs/DequeueBlobs hit a closed queue."""


class CancelledError(RunError):
    """The run was stopped by ``Run.cancel()`` (or by dropping its handle)
    before it finished."""


class WorkspaceError(FastpipeError, RuntimeError):
    """A workspace refused a request: an unknown net or workspace, a net
    that exists already, or freeing blobs that a run or a child workspace
    still uses.  A ``RuntimeError``, as in Caffe2."""


class ArgumentError(FastpipeError, ValueError, TypeError):
    """A value handed to fastpipe has the wrong type or an invalid value
    (feeding a blob an unsupported dtype, a bad shape, a wrong parent).
    Both a ``ValueError`` and a ``TypeError``, so either ``except`` works."""


class OutOfMemoryError(FastpipeError, MemoryError):
    """The native core could not allocate memory."""


class GraphError(FastpipeError, ValueError, AssertionError):
    """Misuse of the graph-building API where Caffe2 used ``assert``
    (e.g. a setter on an ExecutionStep already added as a substep).  It is
    also an ``AssertionError`` so code written against Caffe2 that catches
    that keeps working."""


class FastpipeWarning(UserWarning):
    """A run did something legal but probably unintended, e.g. a
    ``Dataset.reader()`` whose cursor was already at the end when a re-run
    first read it (the run read nothing).  Emitted when the run ends."""


class StallError(FastpipeError, TimeoutError):
    """The stall watchdog (``LocalSession(stall_timeout=..., on_stall="raise")``)
    saw no record move in any queue of the run for ``stall_timeout`` seconds
    and cancelled it.  ``report`` is the :class:`fastpipe.observe.StallReport`
    (who waits on what); ``str()`` shows it."""

    def __init__(self, message="", report=None):
        super().__init__(message)
        self.report = report

    def __reduce__(self):
        return (type(self), (str(self), None))


class IterTimeoutError(FastpipeError, TimeoutError):
    """``next()`` on a RecordIterator made with ``timeout=`` waited longer
    than that for a record (or for its queue to be created).  The job keeps
    running; call ``next()`` again, or ``close()`` to stop it."""


class NotSupportedError(FastpipeError, NotImplementedError):
    """A part fastpipe does not provide (yet), or an abstract method a
    subclass must implement."""


class NotFoundError(FastpipeError, KeyError):
    """A name (a record field, a registered function) is not there."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AttributeNotFoundError(FastpipeError, AttributeError):
    """An attribute lookup failed: not an operator type, not a field."""


class IndexOutOfRangeError(FastpipeError, IndexError):
    """An index past the end (of a record's fields)."""
