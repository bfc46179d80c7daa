"""BlobReference and the rules that turn op inputs/outputs into names."""

import numpy as _np

from .. import _opschema
from .scope import _NAMESCOPE_SEPARATOR, CurrentNameScope, ScopedName
from ..errors import ArgumentError, AttributeNotFoundError


def ScopedBlobReference(name, *args, **kwargs):
    """A BlobReference whose name gets the current name scope prefix."""
    return BlobReference(ScopedName(name), *args, **kwargs)


# ---------------------------------------------------------------------------
# BlobReference


class BlobReference(object):
    """A named blob, optionally tied to the net that produces it.

    Hash and equality go by name, so a reference compares equal to the plain
    string; ``str(ref)`` is the name.  ``ref.OpType(...)`` appends
    ``OpType([ref, ...])`` to the owning net.  ``meta`` is a free-form dict.
    """

    __slots__ = ("_name", "_from_net", "_meta")

    def __init__(self, name, net=None):
        if isinstance(name, str):
            self._name = name
        elif isinstance(name, bytes):
            self._name = name.decode("utf-8")
        else:
            self._name = str(name)
        self._from_net = net
        self._meta = None

    @property
    def meta(self):
        m = self._meta
        if m is None:
            m = self._meta = {}
        return m

    @meta.setter
    def meta(self, value):
        self._meta = value

    def __hash__(self):
        return hash(self._name)

    def __eq__(self, other):
        if isinstance(other, str):
            return self._name == other
        if isinstance(other, BlobReference):
            return self._name == other._name
        if isinstance(other, bytes):
            return self._name == other.decode("utf-8")
        return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __str__(self):
        return self._name

    def __repr__(self):
        return 'BlobReference("%s")' % self._name

    def __add__(self, other):
        if not isinstance(other, str):
            raise ArgumentError("Cannot add BlobReference to a non-string.")
        return BlobReference(self._name + other, self._from_net)

    def __radd__(self, other):
        if not isinstance(other, str):
            raise ArgumentError("Cannot add a non-string to BlobReference.")
        return BlobReference(other + self._name, self._from_net)

    def __getstate__(self):
        return (self._name, self._from_net, self._meta)

    def __setstate__(self, state):
        self._name, self._from_net, self._meta = state

    def Net(self):
        return self._from_net

    def GetNameScope(self):
        return self._name[:self._name.rfind(_NAMESCOPE_SEPARATOR) + 1]

    def GetUnscopedName(self):
        return self._name[self._name.rfind(_NAMESCOPE_SEPARATOR) + 1:]

    def _CreateAndAddToNet(self, op_type, inputs=None, *args, **kwargs):
        if inputs is None:
            inputs = []
        elif isinstance(inputs, (BlobReference, str, bytes)):
            inputs = [inputs]
        else:
            inputs = list(inputs)
        inputs.insert(0, self)
        return self._from_net._CreateAndAddToSelf(op_type, inputs, *args, **kwargs)

    def __getattr__(self, op_type):
        if op_type.startswith("_"):
            raise AttributeNotFoundError(op_type)
        if self._from_net is None:
            raise AttributeNotFoundError(
                "You cannot use a blob reference that does not have a net "
                "source to create operators (%s.%s). Create the operator from "
                "an explicit net object.%s" % (self._name, op_type, _numpy_hint(op_type)))
        if not _opschema.is_operator(op_type):
            raise AttributeNotFoundError("Method %s is not a registered operator.%s"
                                 % (op_type, _numpy_hint(op_type)))

        def create(*args, **kwargs):
            return self._CreateAndAddToNet(op_type, *args, **kwargs)
        create.__name__ = op_type
        return create


def _blob_name(blob, scoped):
    """The string name of one input/output given as str/bytes/BlobReference."""
    if isinstance(blob, BlobReference):
        return blob._name
    if isinstance(blob, str):
        return CurrentNameScope() + blob if scoped else blob
    if isinstance(blob, bytes):
        blob = blob.decode("utf-8")
        return CurrentNameScope() + blob if scoped else blob
    return None


def _rectify(blobs):
    """Names of op inputs/outputs; string names get the NameScope prefix."""
    if isinstance(blobs, BlobReference):
        return [blobs._name]
    if isinstance(blobs, str):
        return [CurrentNameScope() + blobs]
    if isinstance(blobs, (list, tuple)):
        scope = CurrentNameScope()
        out = []
        for blob in blobs:
            if isinstance(blob, BlobReference):
                out.append(blob._name)
            elif isinstance(blob, str):
                out.append(scope + blob)
            elif isinstance(blob, bytes):
                out.append(scope + blob.decode("utf-8"))
            else:
                raise ArgumentError("I/O blob #%d of unsupported type: %r of type %s"
                                % (len(out), blob, type(blob).__name__))
        return out
    if isinstance(blobs, bytes):
        return [CurrentNameScope() + blobs.decode("utf-8")]
    raise ArgumentError("Unknown input/output type: %r of type %s"
                    % (blobs, type(blobs).__name__))


def _numpy_hint(name):
    """For a numpy method called on a blob reference: the graph is built
    once, before any data exists, so per-record Python belongs in a
    PythonProcessor."""
    if not hasattr(_np.ndarray, name):
        return ""
    return (" %r is a numpy method, but a BlobReference is a name in the graph, not an "
            "array: a processor that builds ops runs once, at build time. To run numpy "
            "code on every record, use pipeline.PythonProcessor(fn), which calls fn with "
            "the record's arrays at run time." % name)
