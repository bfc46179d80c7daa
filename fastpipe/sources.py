"""Readers over data that lives in Python: numpy arrays and iterables.

Two sources for ``pipeline.pipe`` (and anything else that takes a
``dataio.Reader``), without the NewRecord / FeedRecord / init-net dance:

* :class:`ArrayReader` reads numpy arrays **in place** -- at the start of
  every run the arrays are put into the workspace as tensors that borrow the
  arrays' memory (no copy of the data) -- and reads batches natively, with
  the GIL released, through one cursor shared by every runtime instance.
  ``shuffle=True`` reads through a permutation drawn from ``(seed, epoch)``.
* :class:`IterableReader` pulls items from a Python iterable or generator
  in a ``Python`` operator: GIL-bound by nature.

**Epochs.** A run of a task group is one epoch of every reader set up in it.
A reader counts its own epochs from 0: the k-th run (of any task group, in
any session) that includes the task whose init sets the reader up is its
epoch k.  Every run starts at the first record; with ``shuffle=True`` each
epoch reads through a fresh permutation, and the sequence of permutations is
fixed by ``seed`` (the same in every process).

Example::

    import numpy as np
    from fastpipe import pipeline, session, sources, task, workspace

    ids = np.arange(1000, dtype=np.int64)
    xs = np.random.rand(1000, 16).astype(np.float32)
    with task.TaskGroup() as tg:
        src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=64,
                                  shuffle=True, seed=0)
        q = pipeline.pipe(src, processor=f, num_runtime_threads=2)
    session.LocalSession(workspace.C.Workspace()).run(tg)
"""

from __future__ import annotations

import itertools
import secrets
import threading
import weakref
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, core
from .dataio import Reader
from .errors import ArgumentError, GraphError
from .schema import Scalar, Struct


def _check_one_group(reader, what):
    """A reader's run-time setup lives in the task init of the TaskGroup it
    was first set up in; another group would run without it (a missing
    cursor, or silently nothing).  Returns True when already set up in the
    active group (a reader shared by its pipes), raises for another group."""
    from .task import TaskGroup
    group = TaskGroup.current(required=False)
    first = reader.__dict__.get("_setup_group")
    if first is None:
        reader._setup_group = weakref.ref(group) if group is not None else (lambda: None)
        return False
    if first() is not group:
        raise GraphError(
            "%s %r is already set up in another TaskGroup: make one reader per TaskGroup "
            "(a new reader over the same data costs nothing; array sources are read in "
            "place)" % (what, getattr(reader, "name", "?")))
    return True

__all__ = ["ArrayReader", "IterableReader"]

_ids = itertools.count()
SEED_LIMIT = 1 << 63

ArraysLike = Union[Mapping[str, Any], Sequence[Any], np.ndarray]


def _name_last_op(net: core.Net, name: str) -> None:
    """Name the op just added to ``net`` (for error messages).  Passing
    ``name=`` when adding it would send the op through CreateOperator,
    which applies the NameScope to the already scoped blob names again."""
    net.Proto().op[-1].name = name


def _dead(kind: str, name: str) -> GraphError:
    return GraphError("%s %r: its data is gone (the reader and every net that set it up "
                      "were dropped before the run)" % (kind, name))


class _ArrayState(object):
    """What an ArrayReader's init op needs at run time: the arrays, the
    seed, the epoch counter.  The init op holds it weakly (the process-wide
    Python-op table outlives jobs); the reader and the init net hold it."""

    __slots__ = ("arrays", "seed", "epoch", "lock", "__weakref__")

    def __init__(self, arrays: List[np.ndarray], seed: int):
        self.arrays = arrays
        self.seed = seed
        self.epoch = 0
        self.lock = threading.Lock()   # protects epoch (runs may overlap)

    def next_key(self) -> np.ndarray:
        with self.lock:
            e = self.epoch
            self.epoch += 1
        return np.array([self.seed, e], dtype=np.int64)


def _feed_arrays_fn(state_ref: "weakref.ref[_ArrayState]", name: str, keyed: bool):
    def feed_arrays(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("ArrayReader", name)
        for out, arr in zip(outputs, st.arrays):
            if arr.dtype.kind in "SUO":
                out.feed(arr)           # strings are native std::strings: a copy
            else:
                _core._borrow_array(out, arr)
        if keyed:
            outputs[len(st.arrays)].feed(st.next_key())
    feed_arrays.__qualname__ = "ArrayReader(%s).feed_arrays" % name
    return feed_arrays


def _normalize_arrays(arrays: ArraysLike, name: str) -> Tuple[List[str], List[np.ndarray]]:
    if isinstance(arrays, Mapping):
        names = [str(k) for k in arrays]
        values = list(arrays.values())
    elif isinstance(arrays, (tuple, list)):
        names = ["f%d" % i for i in range(len(arrays))]
        values = list(arrays)
    else:
        names = ["data"]
        values = [arrays]
    if not values:
        raise ArgumentError("ArrayReader %r: no arrays given" % name)
    if len(set(names)) != len(names):
        raise ArgumentError("ArrayReader %r: field names %r are not unique" % (name, names))
    return names, values


class ArrayReader(Reader):
    """A reader over numpy arrays, read in place and batched natively.

    Args:
        arrays: a dict field name -> array, a tuple/list of arrays (fields
            ``f0``, ``f1``...) or one array (field ``data``).  Every array
            has the same length along dim 0 (the records).
        batch_size: records per read (the last batch may be shorter), or
            ``None`` for single records without the batch dimension (an
            ``int64 (N,)`` field gives 0-d items, a ``float32 (N, 16)``
            field gives ``(16,)`` items).
        shuffle: read each epoch through a fresh permutation of the records.
        seed: with ``shuffle``, fixes the sequence of permutations (the
            same in every process); ``None`` draws one for this reader.
            An int in ``[0, 2**63)``.
        enforce_batch_size: drop a short last batch.
        name: the reader's name (in op names and errors).

    The arrays are not copied: every run puts them into the workspace as
    tensors that borrow their memory (and hold a reference to them), and the
    core never writes into borrowed memory.  An array that is not
    C-contiguous or not in native byte order is copied **once**, here, into
    a contiguous native array (``copied_fields`` names those fields);
    string/object arrays are copied into the workspace at every run.
    Changing an array in place between runs changes what later runs read;
    changing it during a run is a data race.

    Threading: reads run on native threads without the GIL; every runtime
    instance of a pipe shares one cursor, so each record is read exactly
    once per epoch across instances.  The only Python work is one call per
    run in the task init (it hands the arrays over and, with ``shuffle``,
    the epoch key).  See the module docstring for what an epoch is.

    Example::

        src = ArrayReader({"id": ids, "x": xs}, batch_size=None)
        q = pipeline.pipe(src, processor=f, num_runtime_threads=2)
    """

    def __init__(self, arrays: ArraysLike, batch_size: Optional[int] = 1,
                 shuffle: bool = False, seed: Optional[int] = None,
                 enforce_batch_size: bool = False, name: Optional[str] = None):
        self.name = name or "array_reader_%d" % next(_ids)
        names, values = _normalize_arrays(arrays, self.name)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                    or batch_size < 1:
                raise ArgumentError("ArrayReader %r: batch_size=%r must be an int >= 1 or None"
                                    % (self.name, batch_size))
            batch_size = int(batch_size)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                    or not 0 <= seed < SEED_LIMIT:
                raise ArgumentError("ArrayReader %r: seed=%r must be an int in [0, 2**63)"
                                    % (self.name, seed))
            seed = int(seed)
        elif shuffle:
            seed = secrets.randbelow(SEED_LIMIT)
        prepared = []
        copied = []
        rows = None
        for fname, value in zip(names, values):
            arr = np.asarray(value)
            if arr.ndim < 1:
                raise ArgumentError("ArrayReader %r: field %r is a %d-d array; fields need at "
                                    "least 1 dim (the records)" % (self.name, fname, arr.ndim))
            if rows is None:
                rows = arr.shape[0]
            elif arr.shape[0] != rows:
                raise ArgumentError("ArrayReader %r: field %r has %d records but field %r has %d"
                                    % (self.name, fname, arr.shape[0], names[0], rows))
            if arr.dtype.kind not in "SUO":
                if not arr.dtype.isnative:
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                    copied.append(fname)
                elif not arr.flags.c_contiguous:
                    arr = np.ascontiguousarray(arr)
                    copied.append(fname)
                if arr.dtype.kind == "b" and arr.dtype.itemsize != 1:
                    raise ArgumentError("ArrayReader %r: field %r: unsupported dtype %s"
                                        % (self.name, fname, arr.dtype))
            prepared.append(arr)
        self.field_names_ = names
        self.copied_fields = tuple(copied)
        self.num_records = rows
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.enforce_batch_size = bool(enforce_batch_size)
        self._state = _ArrayState(prepared, seed if seed is not None else 0)
        Reader.__init__(self, Struct(*[
            (fname, Scalar((arr.dtype if arr.dtype.kind not in "SUO" else np.object_,
                            arr.shape[1:])))
            for fname, arr in zip(names, prepared)]))
        self._cursor = None
        self._blobs = None
        self._perm = None

    @property
    def epoch(self) -> int:
        """The next epoch: how many runs have shuffled with this reader so far
        (it counts only when ``shuffle=True``; the permutation of epoch k is
        derived from (seed, k))."""
        return self._state.epoch

    def setup_ex(self, init_net: core.Net, exit_net: Optional[core.Net]) -> None:
        """Add the run-time setup to ``init_net`` (once: a reader shared by
        several pipes is set up by the first)."""
        if _check_one_group(self, "ArrayReader") or self._cursor is not None:
            return
        prefix = "%s_%d" % (self.name, next(_ids))
        blobs = [init_net.NextScopedBlob("%s/%s" % (prefix, f)) for f in self.field_names_]
        outs = list(blobs)
        key = None
        if self.shuffle:
            key = init_net.NextScopedBlob(prefix + "/epoch_key")
            outs.append(key)
        init_net.add_attribute("fastpipe.sources", self._state)   # keeps the arrays with the net
        init_net.Python(_feed_arrays_fn(weakref.ref(self._state), self.name, self.shuffle))(
            [], outs)
        _name_last_op(init_net, self.name + "/feed")
        if self.shuffle:
            self._perm = init_net.EpochPermutation(
                [key, blobs[0]], init_net.NextScopedBlob(prefix + "/permutation"))
            _name_last_op(init_net, self.name + "/permutation")
        self._cursor = init_net.CreateTreeCursor(
            [], init_net.NextScopedBlob(prefix + "/cursor"),
            fields=[str(i) for i in range(len(blobs))])
        self._blobs = blobs

    def read(self, read_net: core.Net) -> Tuple[core.BlobReference, List[core.BlobReference]]:
        """Append one ``ReadArrayBatch``; returns ``(should_stop, fields)``."""
        if self._cursor is None:
            raise GraphError("ArrayReader %r: setup_ex not called." % self.name)
        ins = [self._cursor] + ([self._perm] if self.shuffle else []) + list(self._blobs)
        scope = read_net.NextName(self.name)
        outs = read_net.ReadArrayBatch(
            ins, ["%s/%s" % (scope, f) for f in ["stop"] + list(self.field_names_)],
            batch_size=self.batch_size or 1,
            enforce_batch_size=self.enforce_batch_size,
            record=self.batch_size is None, permuted=self.shuffle)
        _name_last_op(read_net, self.name)
        outs = core.output_to_list(outs)
        return outs[0], outs[1:]

    def reset(self, net: core.Net) -> None:
        """Rewind to the first record of the current epoch."""
        if self._cursor is None:
            raise GraphError("ArrayReader %r: setup_ex not called." % self.name)
        net.ResetCursor([self._cursor], [])


class _IterState(object):
    __slots__ = ("source", "it", "lock", "done", "__weakref__")

    def __init__(self, source):
        self.source = source
        self.it = None
        self.done = False
        self.lock = threading.Lock()   # protects it and done: instances read one iterator


def _start_fn(state_ref, name):
    def start_iteration(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("IterableReader", name)
        src = st.source
        it = iter(src() if callable(src) else src)
        with st.lock:
            st.it = it
            st.done = False
    start_iteration.__qualname__ = "IterableReader(%s).start" % name
    return start_iteration


def _read_fn(state_ref, name, fields, batch_size):
    nf = len(fields)

    def split(item):
        if isinstance(item, Mapping):
            try:
                return [item[f] for f in fields]
            except KeyError as e:
                raise KeyError("IterableReader %r: item %r has no field %s (fields: %r)"
                               % (name, list(item), e, fields)) from None
        if isinstance(item, (tuple, list)):
            if len(item) != nf:
                raise ValueError("IterableReader %r: an item has %d values for %d fields %r"
                                 % (name, len(item), nf, fields))
            return list(item)
        if nf != 1:
            raise ValueError("IterableReader %r: an item of type %s for %d fields %r "
                             "(give a tuple or a dict)" % (name, type(item).__name__, nf, fields))
        return [item]

    def read_items(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("IterableReader", name)
        want = 1 if batch_size is None else batch_size
        items = []
        with st.lock:
            if st.it is None:
                raise GraphError("IterableReader %r: read before its init ran" % name)
            while not st.done and len(items) < want:
                try:
                    items.append(next(st.it))
                except StopIteration:
                    st.done = True
        if not items:
            outputs[0].feed(np.bool_(True))
            return
        if batch_size is None:
            values = split(items[0])
        else:
            cols = list(zip(*[split(x) for x in items]))
            values = [np.stack([np.asarray(v) for v in col]) for col in cols]
        for out, v in zip(outputs[1:], values):
            out.feed(v)
        outputs[0].feed(np.bool_(False))
    read_items.__qualname__ = "IterableReader(%s).read" % name
    return read_items


class IterableReader(Reader):
    """A reader over a Python iterable or generator.

    Args:
        iterable: an iterable, or a zero-argument callable returning one,
            called at the start of every run (use a callable -- e.g. a
            generator function -- for a source that restarts each epoch; an
            iterator or generator object is consumed once, across runs).
        fields: the field names (a name or a sequence of names); default
            one field, ``data``.  Each item is a tuple/list in field order,
            a dict by field name, or (one field) the value itself.
        batch_size: ``None`` (default) hands each item on as one record;
            an int stacks that many items along a new dim 0 (the last batch
            may be shorter).
        name: the reader's name (in op names and errors).

    Threading: **GIL-bound by nature** -- every read calls ``next()`` on the
    iterator in a ``Python`` operator, holding the GIL and a lock (runtime
    instances share one iterator, so each item is read once).  It suits
    sources that are Python anyway (file lists, generators, decoders); for
    arrays use :class:`ArrayReader`, which reads without the GIL.  An
    exception raised by the iterable fails the job; the error names this
    reader's read op (``name``) and has the exception as ``__cause__``.

    Example::

        def records():
            for i in range(100):
                yield np.int64(i), np.full(16, i, np.float32)
        src = IterableReader(records, fields=("id", "x"))
        q = pipeline.pipe(src, processor=f)
    """

    def __init__(self, iterable: Union[Iterable[Any], Callable[[], Iterable[Any]]],
                 fields: Union[None, str, Sequence[str]] = None,
                 batch_size: Optional[int] = None, name: Optional[str] = None):
        self.name = name or "iterable_reader_%d" % next(_ids)
        if not callable(iterable) and not hasattr(iterable, "__iter__"):
            raise ArgumentError("IterableReader %r: %r is neither iterable nor callable"
                                % (self.name, type(iterable).__name__))
        if fields is None:
            fields = ("data",)
        elif isinstance(fields, str):
            fields = (fields,)
        fields = tuple(str(f) for f in fields)
        if not fields or len(set(fields)) != len(fields):
            raise ArgumentError("IterableReader %r: fields=%r must be distinct names"
                                % (self.name, fields))
        if batch_size is not None and (isinstance(batch_size, bool) or
                                       not isinstance(batch_size, (int, np.integer)) or
                                       batch_size < 1):
            raise ArgumentError("IterableReader %r: batch_size=%r must be an int >= 1 or None"
                                % (self.name, batch_size))
        self.fields = fields
        self.batch_size = None if batch_size is None else int(batch_size)
        self._state = _IterState(iterable)
        Reader.__init__(self, Struct(*[(f, Scalar()) for f in fields]))
        self._set_up = False

    def setup_ex(self, init_net: core.Net, exit_net: Optional[core.Net]) -> None:
        """Add the op that starts the iteration to ``init_net`` (once)."""
        if _check_one_group(self, "IterableReader") or self._set_up:
            return
        init_net.add_attribute("fastpipe.sources", self._state)
        init_net.Python(_start_fn(weakref.ref(self._state), self.name))([], [])
        _name_last_op(init_net, self.name + "/start")
        self._set_up = True

    def read(self, read_net: core.Net) -> Tuple[core.BlobReference, List[core.BlobReference]]:
        """Append the ``Python`` op that reads the next item(s)."""
        if not self._set_up:
            raise GraphError("IterableReader %r: setup_ex not called." % self.name)
        read_net.add_attribute("fastpipe.sources", self._state)
        scope = core.ScopedName(read_net.NextName(self.name))
        outs = [core.BlobReference("%s/%s" % (scope, f)) for f in ("stop",) + self.fields]
        read_net.Python(_read_fn(weakref.ref(self._state), self.name, self.fields,
                                 self.batch_size))([], outs)
        _name_last_op(read_net, self.name)
        return outs[0], outs[1:]
