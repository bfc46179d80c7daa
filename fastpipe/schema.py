"""Records: typed, nested schemas whose leaves can hold blobs.

Caffe2's ``caffe2.python.schema``.  A *record* is a tree of fields --
:class:`Struct` (named children), :class:`List` (``lengths`` plus
``values``), :class:`Scalar` (a leaf with a numpy dtype and optionally a
blob) -- flattened into columns named with ``:`` (``'a:b'``,
``'list:lengths'``, ``'list:values'``).  Leaves hold either a
:class:`fastpipe.core.BlobReference` (a blob in a workspace) or a numpy
array (actual data).

Example::

    from fastpipe import core, schema
    import numpy as np

    rec = schema.Struct(('id', np.int64), ('feat', schema.List(np.float32)))
    rec.field_names()        # ['id', 'feat:lengths', 'feat:values']
    net = core.Net('reader')
    blobs = schema.NewRecord(net, rec)   # one fresh blob per column

Fields are immutable once built (a Struct rejects attribute assignment);
build new ones with ``+``, ``-``, ``clone`` and ``from_blob_list``.
Nothing here is thread-aware: share built records freely, but do not build
one from several threads.
"""

import logging
from collections import OrderedDict, namedtuple

import numpy as np

from . import core
from .core import BlobReference
from ._graph import registry as _graph_registry
from .errors import ArgumentError, AttributeNotFoundError, GraphError, IndexOutOfRangeError, NotFoundError, NotSupportedError

logger = logging.getLogger(__name__)

__all__ = [
    "FIELD_SEPARATOR", "Metadata", "FeatureSpec", "Field", "Scalar", "Struct",
    "List", "ListWithEvicted", "Map", "MapWithEvicted", "NamedTuple", "Tuple",
    "RawTuple", "from_dtype", "from_column_list", "from_blob_list",
    "as_record", "FetchRecord", "FeedRecord", "NewRecord", "ConstRecord",
    "InitEmptyRecord", "is_schema_subset", "equal_schemas", "schema_check",
    "data_type_for_dtype", "dtype_for_core_type", "attach_metadata_to_scalars",
]

FIELD_SEPARATOR = ":"


def _join_field_name(prefix, suffix):
    if prefix and suffix:
        return prefix + FIELD_SEPARATOR + suffix
    return prefix or suffix or ""


def _normalize_field(field_or_type_or_blob, keep_blobs=True):
    """A fresh Field for a container: a Field is cloned, a type/dtype
    becomes ``Scalar(dtype)``, anything else ``Scalar(blob=...)``."""
    if isinstance(field_or_type_or_blob, Field):
        return field_or_type_or_blob.clone(keep_blobs=keep_blobs)
    if type(field_or_type_or_blob) in (type, np.dtype):
        return Scalar(dtype=field_or_type_or_blob)
    return Scalar(blob=field_or_type_or_blob)


FeatureSpec = namedtuple(
    "FeatureSpec",
    ["feature_type", "feature_names", "feature_ids", "feature_is_request_only",
     "desired_hash_size", "feature_to_index"])
FeatureSpec.__new__.__defaults__ = (None,) * 6


class Metadata(namedtuple("Metadata",
                          ["categorical_limit", "expected_value", "feature_specs"])):
    """Extra information attached to a Scalar.

    ``categorical_limit``: for non-negative integer fields, max value + 1.
    ``expected_value``: anticipated average value (e.g. of list lengths).
    ``feature_specs``: a :data:`FeatureSpec`.
    """
    __slots__ = ()


Metadata.__new__.__defaults__ = (None, None, None)


class Field(object):
    """Abstract field of a record.

    Subclasses implement ``field_names``, ``field_types``,
    ``field_metadata``, ``field_blobs``, ``all_scalars``, ``has_blobs`` and
    ``clone``.  ``==`` compares names, types and metadata -- not blobs.
    """

    __slots__ = ("_parent", "_field_offsets")

    def __init__(self, children):
        self._parent = (None, 0)
        offsets = []
        offset = 0
        for child in children:
            offsets.append(offset)
            offset += len(child.field_names())
        offsets.append(offset)
        self._field_offsets = offsets

    def clone_schema(self):
        """A copy without blobs."""
        return self.clone(keep_blobs=False)

    def field_names(self):
        raise NotSupportedError("Field is an abstract class.")

    def field_types(self):
        raise NotSupportedError("Field is an abstract class.")

    def field_metadata(self):
        raise NotSupportedError("Field is an abstract class.")

    def field_blobs(self):
        raise NotSupportedError("Field is an abstract class.")

    def all_scalars(self):
        raise NotSupportedError("Field is an abstract class.")

    def has_blobs(self):
        raise NotSupportedError("Field is an abstract class.")

    def clone(self, keep_blobs=True):
        raise NotSupportedError("Field is an abstract class.")

    def _set_parent(self, parent, relative_id):
        self._parent = (parent, relative_id)

    def slice(self):
        """The range of column ids this field covers in its root record."""
        base = self._child_base_id()
        return slice(base, base + len(self.field_names()))

    def _child_base_id(self, child_index=None):
        """Column id of this field (or of its child ``child_index``) in the
        root record."""
        parent, idx = self._parent
        pos = 0 if child_index is None else self._field_offsets[child_index]
        if parent:
            pos += parent._child_base_id(idx)
        return pos

    def __eq__(self, other):
        if not isinstance(other, Field):
            return NotImplemented
        return (self.field_names() == other.field_names() and
                self.field_types() == other.field_types() and
                self.field_metadata() == other.field_metadata())

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def _pprint_impl(self, indent, out):
        raise NotSupportedError("Field is an abstract class.")

    def __repr__(self):
        out = []
        self._pprint_impl(0, out)
        return "".join(out)


class List(Field):
    """A variable-length list: columns ``lengths`` (int32) and ``values:...``.

    If the values are a Struct, its fields are reachable as attributes of
    the list (``lst.x`` is ``lst['values:x']``).
    """

    __slots__ = ("lengths", "_items")

    def __init__(self, values, lengths_blob=None):
        if isinstance(lengths_blob, Field):
            if not isinstance(lengths_blob, Scalar):
                raise GraphError("List lengths must be a Scalar, got %s"
                                 % type(lengths_blob).__name__)
            self.lengths = _normalize_field(lengths_blob)
        else:
            self.lengths = Scalar(np.int32, lengths_blob)
        self._items = _normalize_field(values)
        self.lengths._set_parent(self, 0)
        self._items._set_parent(self, 1)
        super(List, self).__init__([self.lengths, self._items])

    def field_names(self):
        return ["lengths"] + [_join_field_name("values", v)
                              for v in self._items.field_names()]

    def field_types(self):
        return self.lengths.field_types() + self._items.field_types()

    def field_metadata(self):
        return self.lengths.field_metadata() + self._items.field_metadata()

    def field_blobs(self):
        return self.lengths.field_blobs() + self._items.field_blobs()

    def all_scalars(self):
        return self.lengths.all_scalars() + self._items.all_scalars()

    def has_blobs(self):
        return self.lengths.has_blobs() and self._items.has_blobs()

    def clone(self, keep_blobs=True):
        return type(self)(_normalize_field(self._items, keep_blobs=keep_blobs),
                          _normalize_field(self.lengths, keep_blobs=keep_blobs))

    def _pprint_impl(self, indent, out):
        pad = "  " * indent
        out.append(pad + "List(\n")
        out.append(pad + "  lengths=\n")
        self.lengths._pprint_impl(indent + 2, out)
        out.append(pad + "  _items=\n")
        self._items._pprint_impl(indent + 2, out)
        out.append(pad + ")\n")

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeNotFoundError(item)
        items = self._items
        if isinstance(items, Struct):
            return getattr(items, item)
        if item in ("value", "items", "values"):
            return items
        raise AttributeNotFoundError("Field not found in list: %s." % item)

    def __getitem__(self, item):
        names = item.split(FIELD_SEPARATOR, 1)
        if len(names) == 1:
            if item == "lengths":
                return self.lengths
            if item == "values":
                return self._items
        elif names[0] == "values":
            return self._items[names[1]]
        raise NotFoundError("Field not found in list: %s." % item)


class ListWithEvicted(List):
    """A List with an extra ``_evicted_values`` int64 column (LRU hashing)."""

    __slots__ = ("_evicted_values",)

    def __init__(self, values, lengths_blob=None, evicted_values=None):
        if isinstance(evicted_values, Field):
            if not isinstance(evicted_values, Scalar):
                raise GraphError("evicted_values must be a Scalar")
            self._evicted_values = _normalize_field(evicted_values)
        else:
            self._evicted_values = Scalar(np.int64, evicted_values)
        super(ListWithEvicted, self).__init__(values, lengths_blob=lengths_blob)

    def field_names(self):
        return super(ListWithEvicted, self).field_names() + ["_evicted_values"]

    def field_types(self):
        return (super(ListWithEvicted, self).field_types() +
                self._evicted_values.field_types())

    def field_metadata(self):
        return (super(ListWithEvicted, self).field_metadata() +
                self._evicted_values.field_metadata())

    def field_blobs(self):
        return (super(ListWithEvicted, self).field_blobs() +
                self._evicted_values.field_blobs())

    def all_scalars(self):
        return (super(ListWithEvicted, self).all_scalars() +
                self._evicted_values.all_scalars())

    def has_blobs(self):
        return (super(ListWithEvicted, self).has_blobs() and
                self._evicted_values.has_blobs())

    def clone(self, keep_blobs=True):
        return type(self)(
            _normalize_field(self._items, keep_blobs=keep_blobs),
            _normalize_field(self.lengths, keep_blobs=keep_blobs),
            _normalize_field(self._evicted_values, keep_blobs=keep_blobs))

    def __getitem__(self, item):
        if item == "_evicted_values":
            return self._evicted_values
        return super(ListWithEvicted, self).__getitem__(item)


class Struct(Field):
    """An ordered set of named fields sharing the same domain.

    ``Struct(('a', np.int32), ('b:c', Scalar()), ('b', Struct(...)))`` --
    names containing ``:`` create nesting; sub-structs with the same name
    are merged.  A duplicate leaf raises ValueError; ``lengths`` is not a
    valid name.  Access children with ``s.a``, ``s['b:c']``, ``s[0]`` or
    ``s[['a', 'b']]`` (a new Struct).  ``s1 + s2`` merges, ``s1 - s2``
    removes.  Structs are immutable.
    """

    __slots__ = ("fields", "_frozen")

    def __init__(self, *fields):
        for field in fields:
            if not isinstance(field, (tuple, list)) or len(field) != 2:
                raise GraphError("Struct fields must be (name, field) pairs, got %r"
                                 % (field,))
            if not field[0]:
                raise GraphError("Field names cannot be empty")
            if field[0] == "lengths":
                raise GraphError("Struct cannot contain a field named `lengths`.")
        children = OrderedDict()
        for name, field in fields:
            field = _normalize_field(field)
            if FIELD_SEPARATOR in name:
                name, field = self._struct_from_nested_name(name, field)
            if name not in children:
                children[name] = field
                continue
            existing = children[name]
            if not isinstance(field, Struct) or not isinstance(existing, Struct):
                raise ArgumentError("Duplicate field name: %s" % name)
            children[name] = existing + field
        object.__setattr__(self, "fields", children)
        for idx, field in enumerate(children.values()):
            field._set_parent(self, idx)
        super(Struct, self).__init__(list(children.values()))
        object.__setattr__(self, "_frozen", True)

    @staticmethod
    def _struct_from_nested_name(nested_name, field):
        head, rest = nested_name.split(FIELD_SEPARATOR, 1)
        if not head or not rest:
            raise GraphError("Invalid nested field name %r" % nested_name)
        return head, Struct((rest, field))

    def get_children(self):
        return list(self.fields.items())

    def field_names(self):
        names = []
        for name, field in self.fields.items():
            names.extend(_join_field_name(name, f) for f in field.field_names())
        return names

    def field_types(self):
        types = []
        for field in self.fields.values():
            types.extend(field.field_types())
        return types

    def field_metadata(self):
        meta = []
        for field in self.fields.values():
            meta.extend(field.field_metadata())
        return meta

    def field_blobs(self):
        blobs = []
        for field in self.fields.values():
            blobs.extend(field.field_blobs())
        return blobs

    def all_scalars(self):
        scalars = []
        for field in self.fields.values():
            scalars.extend(field.all_scalars())
        return scalars

    def has_blobs(self):
        return all(field.has_blobs() for field in self.fields.values())

    def clone(self, keep_blobs=True):
        return type(self)(*[(k, _normalize_field(v, keep_blobs=keep_blobs))
                            for k, v in self.fields.items()])

    def _get_field_by_nested_name(self, nested_name):
        names = nested_name.split(FIELD_SEPARATOR, 1)
        field = self.fields.get(names[0])
        if field is None:
            return None
        if len(names) == 1:
            return field
        try:
            return field[names[1]]
        except (KeyError, TypeError):
            return None

    def _pprint_impl(self, indent, out):
        pad = "  " * indent
        out.append(pad + "Struct(\n")
        for name, field in self.fields.items():
            out.append(pad + "  %s=\n" % name)
            field._pprint_impl(indent + 2, out)
        out.append(pad + ")\n")

    def __contains__(self, item):
        return self._get_field_by_nested_name(item) is not None

    def __len__(self):
        return len(self.fields)

    def __iter__(self):
        return iter(self.fields.values())

    def __getitem__(self, item):
        if isinstance(item, (list, tuple)):
            keys = list(self.fields)
            return Struct(*[(keys[k] if isinstance(k, int) else k, self[k])
                            for k in item])
        if isinstance(item, int):
            values = list(self.fields.values())
            try:
                return values[item]
            except IndexError:
                raise IndexOutOfRangeError("Struct has %d fields, index %d out of range"
                                 % (len(values), item))
        field = self._get_field_by_nested_name(item)
        if field is None:
            raise NotFoundError('field "%s" not found' % (item,))
        return field

    def get(self, item, default_value):
        """The field ``item`` (attribute lookup), or ``default_value``."""
        return getattr(self, item, default_value)

    def __getattr__(self, item):
        if item.startswith("_"):
            raise AttributeNotFoundError(item)
        try:
            return object.__getattribute__(self, "fields")[item]
        except (KeyError, AttributeError):
            raise AttributeNotFoundError(item)

    def __setattr__(self, key, value):
        if getattr(self, "_frozen", False) and not key.startswith("_"):
            raise ArgumentError("Struct.__setattr__() is disabled after __init__()")
        object.__setattr__(self, key, value)

    def __add__(self, other):
        """Merge two Structs (recursively for common sub-structs)."""
        if not isinstance(other, Struct):
            return NotImplemented
        children = OrderedDict(self.get_children())
        for name, right in other.get_children():
            if name not in children:
                children[name] = right
                continue
            left = children[name]
            if not (isinstance(left, Struct) and isinstance(right, Struct)):
                raise ArgumentError(
                    "Type of left_field, %s, and type of right_field, %s, must "
                    "both be Struct to allow merging of the field, %s"
                    % (type(left).__name__, type(right).__name__, name))
            children[name] = left + right
        return Struct(*children.items())

    def __sub__(self, other):
        """Remove ``other``'s fields (recursively; emptied sub-structs go)."""
        if not isinstance(other, Struct):
            return NotImplemented
        children = OrderedDict(self.get_children())
        for name, right in other.get_children():
            if name not in children:
                continue
            left = children[name]
            if type(left) is not type(right):
                raise ArgumentError(
                    "Type of left_field, %s, is not the same as that of "
                    "right_field, %s, yet they have the same field name, %s"
                    % (type(left).__name__, type(right).__name__, name))
            if isinstance(left, Struct):
                child = left - right
                if child.get_children():
                    children[name] = child
                    continue
            children.pop(name)
        return Struct(*children.items())


class Scalar(Field):
    """A leaf: one column with a numpy dtype and optionally a blob.

    ``Scalar(np.float32)``, ``Scalar((np.int32, 5))`` (rows of 5),
    ``Scalar()`` (unknown type: ``np.void``).  The blob is a BlobReference
    or array data (converted with numpy; 0-d becomes 1-d).  A plain ``str``
    blob is rejected as ambiguous.  ``s.get()`` / ``s()`` return the blob.
    """

    __slots__ = ("_metadata", "dtype", "_original_dtype", "_blob")

    def __init__(self, dtype=None, blob=None, metadata=None):
        self._metadata = None
        self.set(dtype, blob, metadata)
        super(Scalar, self).__init__([])

    def field_names(self):
        return [""]

    def field_type(self):
        return self.dtype

    def field_types(self):
        return [self.dtype]

    def field_metadata(self):
        return [self._metadata]

    def has_blobs(self):
        return self._blob is not None

    def field_blobs(self):
        if self._blob is None:
            raise GraphError("Value is not set for this field.")
        return [self._blob]

    def all_scalars(self):
        return [self]

    def clone(self, keep_blobs=True):
        return Scalar(dtype=self._original_dtype,
                      blob=self._blob if keep_blobs else None,
                      metadata=self._metadata)

    def get(self):
        """The blob of this Scalar (raises GraphError if unset)."""
        if self._blob is None:
            raise GraphError("Value is not set for this field.")
        return self._blob

    def __call__(self):
        return self.get()

    @property
    def metadata(self):
        return self._metadata

    def set_metadata(self, value):
        if not isinstance(value, Metadata):
            raise GraphError("metadata must be Metadata, got %s" % type(value).__name__)
        self._metadata = value
        self._validate_metadata()

    def _validate_metadata(self):
        meta = self._metadata
        if meta is None:
            return
        if meta.categorical_limit is not None and self.dtype is not None:
            if not np.issubdtype(self.dtype, np.integer):
                raise GraphError("`categorical_limit` can be specified only in "
                                 "integral fields but got %s" % self.dtype)

    def set_value(self, blob, throw_on_type_mismatch=False, unsafe=False):
        """Set the blob, keeping the dtype (checked against an ndarray blob
        when ``throw_on_type_mismatch``)."""
        if self.dtype.base != np.void and throw_on_type_mismatch:
            if not isinstance(blob, np.ndarray):
                raise GraphError("Got %r" % (blob,))
            if blob.dtype.base != self.dtype.base:
                raise GraphError("Expected %s, got %s" % (self.dtype.base, blob.dtype.base))
        self.set(dtype=self._original_dtype, blob=blob)

    def set(self, dtype=None, blob=None, metadata=None, unsafe=False):
        """Set the dtype and/or blob (see the class docstring)."""
        if blob is not None and isinstance(blob, str):
            raise ArgumentError(
                "Passing str blob to Scalar.set() is ambiguous. Do either "
                "set(blob=np.array(blob)) or set(blob=BlobReference(blob))")
        self._original_dtype = dtype
        if isinstance(dtype, tuple) and len(dtype) == 2 and dtype[1] == 1:
            dtype = (dtype[0], (1,))
        if dtype is not None:
            if isinstance(dtype, tuple) and dtype[0] is np.void:
                raise ArgumentError("Cannot set the Scalar with type %s for blob %s."
                                % (dtype, blob))
            dtype = np.dtype(dtype)
        if blob is not None and not isinstance(blob, BlobReference):
            preserve_shape = isinstance(blob, np.ndarray)
            if dtype is not None and dtype != np.void:
                blob = np.array(blob, dtype=dtype.base)
                if blob.size == 0 and not preserve_shape:
                    blob = blob.reshape((0,) + dtype.shape)
            elif not isinstance(blob, np.ndarray):
                raise GraphError("Invalid blob type: %s" % type(blob).__name__)
            if blob.ndim == 0 and not preserve_shape:
                blob = blob.reshape((1,))
            if blob.ndim > 1 and dtype is not None and dtype.base != np.void:
                dtype = np.dtype((dtype.base, blob.shape[1:]))
        if dtype is None:
            dtype = np.dtype(np.void)
        if dtype.fields:
            raise GraphError("Cannot create Scalar with a structured dtype. "
                             "Use from_dtype instead.")
        self.dtype = dtype
        self._blob = blob
        if metadata is not None:
            self.set_metadata(metadata)
        self._validate_metadata()

    def set_type(self, dtype):
        self._original_dtype = dtype
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.void)
        self._validate_metadata()

    def _pprint_impl(self, indent, out):
        out.append("  " * indent + "Scalar(%r, %r, %r)\n"
                   % (self.dtype, self._blob, self._metadata))

    def id(self):
        """Column id of this scalar in its root record."""
        return self._child_base_id()


def Map(keys, values, keys_name="keys", values_name="values", lengths_blob=None):
    """A List of Struct(keys, values)."""
    return List(Struct((keys_name, keys), (values_name, values)),
                lengths_blob=lengths_blob)


def MapWithEvicted(keys, values, keys_name="keys", values_name="values",
                   lengths_blob=None, evicted_values=None):
    return ListWithEvicted(Struct((keys_name, keys), (values_name, values)),
                           lengths_blob=lengths_blob, evicted_values=evicted_values)


def NamedTuple(name_prefix, *fields):
    return Struct(*[("%s_%d" % (name_prefix, i), field)
                    for i, field in enumerate(fields)])


def Tuple(*fields):
    """A Struct with fields ``field_0``, ``field_1``..."""
    return NamedTuple("field", *fields)


def RawTuple(num_fields, name_prefix="field"):
    """A tuple of ``num_fields`` untyped scalars."""
    if not isinstance(num_fields, int) or num_fields < 0:
        raise GraphError("RawTuple: num_fields must be an int >= 0, got %r"
                         % (num_fields,))
    return NamedTuple(name_prefix, *([np.void] * num_fields))


def from_dtype(dtype, _outer_shape=()):
    """A schema from a numpy dtype (structured dtypes become Structs)."""
    if not isinstance(dtype, np.dtype):
        shape = _outer_shape
        dtype = np.dtype((dtype, _outer_shape))
    else:
        shape = _outer_shape + dtype.shape
        if shape != dtype.shape:
            dtype = np.dtype((dtype.base, shape))
    if not dtype.fields:
        return Scalar(dtype)
    fields = []
    for name in dtype.names:
        fdtype, offset = dtype.fields[name][:2]
        fields.append((name, from_dtype(fdtype, _outer_shape=shape)))
    return Struct(*fields)


class _Node(object):
    __slots__ = ("children", "field")

    def __init__(self):
        self.children = OrderedDict()  # (name, is_leaf) -> _Node
        self.field = None

    def get_field(self):
        if self.field is not None:
            return self.field
        if not self.children:
            return Struct()
        names = [name for name, _ in self.children]
        by_name = {name: node for (name, _), node in self.children.items()}
        if len(names) == 2 and set(names) == {"lengths", "values"}:
            return List(by_name["values"].get_field(),
                        lengths_blob=by_name["lengths"].get_field())
        if len(names) == 3 and set(names) == {"lengths", "keys", "values"}:
            return Map(by_name["keys"].get_field(), by_name["values"].get_field(),
                       lengths_blob=by_name["lengths"].get_field())
        return Struct(*[(name, node.get_field())
                        for (name, _), node in self.children.items()])


def from_column_list(col_names, col_types=None, col_blobs=None, col_metadata=None):
    """A schema from flattened column names (``'a:b'``), optionally with
    types, blobs and metadata.  ``lengths``+``values`` columns become a
    List, ``lengths``+``keys``+``values`` a Map."""
    n = len(col_names)
    col_types = [None] * n if col_types is None else col_types
    col_blobs = [None] * n if col_blobs is None else col_blobs
    col_metadata = [None] * n if col_metadata is None else col_metadata
    for what, seq in (("col_types", col_types), ("col_blobs", col_blobs),
                      ("col_metadata", col_metadata)):
        if len(seq) != n:
            raise GraphError("col_names and %s must have the same length." % what)
    root = _Node()
    for name, dtype, blob, meta in zip(col_names, col_types, col_blobs, col_metadata):
        parts = name.split(FIELD_SEPARATOR)
        node = root
        for i, part in enumerate(parts):
            leaf = i == len(parts) - 1
            key = (part, leaf)
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node()
            if leaf:
                child.field = Scalar(dtype=dtype, blob=blob, metadata=meta)
            node = child
    return root.get_field()


def from_blob_list(schema, values, throw_on_type_mismatch=False):
    """A copy of ``schema`` whose leaves hold ``values`` (one per column)."""
    if not isinstance(schema, Field):
        raise GraphError("Argument `schema` must be a Field.")
    if isinstance(values, BlobReference):
        values = [values]
    record = schema.clone_schema()
    scalars = record.all_scalars()
    if len(scalars) != len(values):
        raise GraphError("Values must have %d elements, got %d."
                         % (len(scalars), len(values)))
    for scalar, value in zip(scalars, values):
        scalar.set_value(value, throw_on_type_mismatch, unsafe=True)
    return record


def as_record(value):
    """A Field as is; a list/tuple -> Tuple; a dict -> Struct; else Scalar."""
    if isinstance(value, Field):
        return value
    if isinstance(value, (list, tuple)):
        return Tuple(*[as_record(f) for f in value])
    if isinstance(value, dict):
        return Struct(*[(k, as_record(v)) for k, v in value.items()])
    return _normalize_field(value)


def _record_blobs(blob_record):
    if not isinstance(blob_record, Field):
        raise GraphError("expected a schema Field, got %r" % (blob_record,))
    blobs = blob_record.field_blobs()
    for b in blobs:
        if not isinstance(b, BlobReference):
            raise GraphError("record holds %r, expected BlobReferences" % (b,))
    return blobs


def FetchRecord(blob_record, ws=None, throw_on_type_mismatch=False):
    """A copy of ``blob_record`` holding the fetched arrays (from ``ws`` or
    the current workspace)."""
    blobs = _record_blobs(blob_record)
    if ws is None:
        from fastpipe import workspace
        arrays = [workspace.FetchBlob(str(b)) for b in blobs]
    else:
        arrays = [ws.blobs[str(b)].fetch() for b in blobs]
    return from_blob_list(blob_record, arrays, throw_on_type_mismatch)


def FeedRecord(blob_record, arrays, ws=None):
    """Feed ``arrays`` (a list, or a record of arrays) into the record's blobs."""
    blobs = _record_blobs(blob_record)
    if isinstance(arrays, Field):
        arrays = arrays.field_blobs()
    if len(arrays) != len(blobs):
        raise GraphError("Values must contain exactly %d ndarrays." % len(blobs))
    if ws is None:
        from fastpipe import workspace
        for b, a in zip(blobs, arrays):
            workspace.FeedBlob(str(b), a)
    else:
        for b, a in zip(blobs, arrays):
            ws.create_blob(str(b))
            ws.blobs[str(b)].feed(a)


def NewRecord(net, schema):
    """A copy of ``schema`` with a fresh ``net.NextScopedBlob(column)`` per
    column (``unnamed_scalar`` for a bare Scalar)."""
    if isinstance(schema, Scalar):
        result = schema.clone()
        result.set_value(blob=net.NextScopedBlob("unnamed_scalar"), unsafe=True)
        return result
    if not isinstance(schema, Field):
        raise GraphError("Record must be a schema.Field instance.")
    return from_blob_list(schema, [net.NextScopedBlob(prefix=name)
                                   for name in schema.field_names()])


def ConstRecord(net, array_record):
    """A record of fresh blobs initialised with ``net.Const`` from the arrays
    of ``array_record``."""
    blob_record = NewRecord(net, array_record)
    for blob, array in zip(blob_record.field_blobs(), array_record.field_blobs()):
        net.Const(array, blob)
    return blob_record


def InitEmptyRecord(net, schema_or_record, enforce_types=False):
    """Add typed empty fills (shape ``[0, inner...]``) for every column;
    blobs are created with NewRecord if the schema has none."""
    if not schema_or_record.has_blobs():
        record = NewRecord(net, schema_or_record)
    else:
        record = schema_or_record
    for blob_type, blob in zip(record.field_types(), record.field_blobs()):
        try:
            data_type = data_type_for_dtype(blob_type)
        except TypeError:
            logger.warning("Blob %s has type error", blob)
            if enforce_types:
                raise
            net.ConstantFill([], blob, shape=[0])
            continue
        net.ConstantFill([], blob, shape=[0] + list(blob_type.shape),
                         dtype=data_type)
    return record


_DATA_TYPE_FOR_DTYPE = [
    (np.dtype(np.float16), core.DataType.FLOAT16),
    (np.dtype(np.float32), core.DataType.FLOAT),
    (np.dtype(np.float64), core.DataType.DOUBLE),
    (np.dtype(np.bool_), core.DataType.BOOL),
    (np.dtype(np.int8), core.DataType.INT8),
    (np.dtype(np.int16), core.DataType.INT16),
    (np.dtype(np.int32), core.DataType.INT32),
    (np.dtype(np.int64), core.DataType.INT64),
    (np.dtype(np.uint8), core.DataType.UINT8),
    (np.dtype(np.uint16), core.DataType.UINT16),
]


def data_type_for_dtype(dtype):
    """The core.DataType for a numpy dtype (its base); strings (``str``,
    ``bytes``, object) map to STRING.  Raises TypeError otherwise."""
    base = np.dtype(dtype).base
    if base.kind in "USO":
        return core.DataType.STRING
    for np_type, dt in _DATA_TYPE_FOR_DTYPE:
        if base == np_type:
            return dt
    raise ArgumentError("Unknown dtype: " + str(base))


def dtype_for_core_type(core_type):
    """The numpy type for a core.DataType."""
    if core_type == core.DataType.STRING:
        return np.str_
    for np_type, dt in _DATA_TYPE_FOR_DTYPE:
        if dt == core_type:
            return np_type.type
    raise ArgumentError("Unknown core type: " + str(core_type))


def is_schema_subset(schema, original_schema):
    """True iff ``schema``'s column names are a subset of the original's."""
    return set(schema.field_names()).issubset(set(original_schema.field_names()))


def equal_schemas(schema, original_schema, check_field_names=True,
                  check_field_types=True, check_field_metas=False):
    if not isinstance(schema, Field) or not isinstance(original_schema, Field):
        raise GraphError("equal_schemas expects two schema Fields")
    if check_field_names and schema.field_names() != original_schema.field_names():
        return False
    if check_field_types and schema.field_types() != original_schema.field_types():
        return False
    if check_field_metas and (schema.field_metadata() !=
                              original_schema.field_metadata()):
        return False
    return True


def schema_check(schema, previous=None):
    record = as_record(schema)
    if previous is not None and not equal_schemas(schema, previous):
        raise GraphError("schema %r does not match %r" % (schema, previous))
    return record


def attach_metadata_to_scalars(field, metadata):
    for scalar in field.all_scalars():
        scalar.set_metadata(metadata)


# The graph layer (fastpipe._graph) sits below this module and reaches the
# record functions it needs through its registry.
_graph_registry.register_schema_functions(
    NewRecord=NewRecord, from_blob_list=from_blob_list, Struct=Struct,
    Field=Field)
