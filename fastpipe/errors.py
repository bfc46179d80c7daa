"""fastpipe's exception tree.

Every exception subclasses :class:`FastpipeError` and the builtin it most
resembles, so callers can catch either.  The runtime turns one native
status code into one of these classes in a single place
(``fastpipe._core._raise_status``).
"""

__all__ = ["FastpipeError", "OperatorDefError", "PlanError", "BlobError",
           "RunError", "QueueClosedError", "GraphError"]


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
    ``Python`` operators."""


class QueueClosedError(RunError):
    """A plain EnqueueBlobs/DequeueBlobs hit a closed queue."""


class GraphError(FastpipeError, ValueError, AssertionError):
    """Misuse of the graph-building API where Caffe2 used ``assert``
    (e.g. a setter on an ExecutionStep already added as a substep).  It is
    also an ``AssertionError`` so code written against Caffe2 that catches
    that keeps working."""
