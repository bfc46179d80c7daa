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
import os
import re
import secrets
import struct
import threading
import weakref
import zipfile
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, core
from .dataio import Reader, Writer
from .errors import ArgumentError, FastpipeError, GraphError, NotFoundError
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

__all__ = ["ArrayReader", "IterableReader", "NpyReader", "NpyShardWriter", "FileMissingError"]

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

    __slots__ = ("arrays", "seed", "epoch", "lock", "seeded", "pinned", "__weakref__")

    def __init__(self, arrays: List[np.ndarray], seed: int, seeded: bool = True):
        self.arrays = arrays
        self.seed = seed
        self.epoch = 0
        # the seed was given (the same permutations in every process): what
        # exact resume of a shuffled reader needs (LocalSession.iterate)
        self.seeded = seeded
        self.pinned = None              # the epoch the next run uses (iterate pins it)
        self.lock = threading.Lock()   # protects epoch and pinned (runs may overlap)

    def pin(self, epoch: int) -> None:
        """Make the next run read epoch ``epoch`` (a resumed run re-reads the
        permutation of the run it resumes); later runs go on from there."""
        with self.lock:
            self.pinned = int(epoch)

    def next_key(self) -> np.ndarray:
        with self.lock:
            e = self.epoch if self.pinned is None else self.pinned
            self.pinned = None
            self.epoch = e + 1
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
    feed_arrays._fastpipe_array_state = state_ref    # found by LocalSession.iterate (resume)
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
        seed_given = seed is not None
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
        self._state = _ArrayState(prepared, seed if seed is not None else 0,
                                  seeded=seed_given)
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
                raise NotFoundError("IterableReader %r: item %r has no field %s (fields: %r)"
                               % (name, list(item), e, fields)) from None
        if isinstance(item, (tuple, list)):
            if len(item) != nf:
                raise ArgumentError("IterableReader %r: an item has %d values for %d fields %r"
                                 % (name, len(item), nf, fields))
            return list(item)
        if nf != 1:
            raise ArgumentError("IterableReader %r: an item of type %s for %d fields %r "
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
    read_items._fastpipe_iterable = name        # LocalSession.iterate refuses to resume it
    return read_items


class _PythonOpSource(Reader):
    """A source whose run starts with one Python op (``_start_op()``, in the
    init net) and whose read is one Python op (``_read_op()``) producing the
    stop flag and the fields (``_field_names()``); subclasses hold their run
    state in ``_state`` and set ``_set_up = False``.  ``_KIND`` names the
    class in errors."""

    _KIND = "source"

    def setup_ex(self, init_net: core.Net, exit_net: Optional[core.Net]) -> None:
        """Add the op that starts a run's iteration to ``init_net`` (once)."""
        if _check_one_group(self, self._KIND) or self._set_up:
            return
        init_net.add_attribute("fastpipe.sources", self._state)
        init_net.Python(self._start_op())([], [])
        _name_last_op(init_net, self.name + "/start")
        self._set_up = True

    def read(self, read_net: core.Net) -> Tuple[core.BlobReference, List[core.BlobReference]]:
        """Append the ``Python`` op that reads the next batch or item(s)."""
        if not self._set_up:
            raise GraphError("%s %r: setup_ex not called." % (self._KIND, self.name))
        read_net.add_attribute("fastpipe.sources", self._state)
        scope = core.ScopedName(read_net.NextName(self.name))
        outs = [core.BlobReference("%s/%s" % (scope, f))
                for f in ("stop",) + tuple(self._field_names())]
        read_net.Python(self._read_op())([], outs)
        _name_last_op(read_net, self.name)
        return outs[0], outs[1:]


class IterableReader(_PythonOpSource):
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

    _KIND = "IterableReader"

    def _field_names(self) -> Sequence[str]:
        return self.fields

    def _start_op(self):
        return _start_fn(weakref.ref(self._state), self.name)

    def _read_op(self):
        return _read_fn(weakref.ref(self._state), self.name, self.fields, self.batch_size)



# ---- .npy / .npz files ------------------------------------------------------------

class FileMissingError(FastpipeError, FileNotFoundError):
    """A file a file source or writer needs does not exist."""


#: dtypes the native core holds (the ones ``_core._borrow_array`` accepts)
NPY_DTYPES = tuple(np.dtype(d) for d in (
    np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.bool_))

_SHARD_RE = re.compile(r"^(?P<field>.+)-(?P<k>\d+)\.npy$")


def _shards_in_dir(directory: str) -> "dict[str, List[str]]":
    """field -> shard paths in shard order: ``<field>-<k>.npy`` files sorted by
    k, or one ``<field>.npy``."""
    shards = {}
    singles = {}
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".npy"):
            continue
        m = _SHARD_RE.match(entry)
        if m:
            shards.setdefault(m.group("field"), []).append(
                (int(m.group("k")), os.path.join(directory, entry)))
        else:
            singles[entry[:-4]] = os.path.join(directory, entry)
    out = {}
    for field, path in singles.items():
        out[field] = [path]
    for field, items in shards.items():
        if field in out:
            raise ArgumentError("NpyReader: directory %r holds both %s.npy and shards %s-<k>.npy"
                                % (directory, field, field))
        out[field] = [p for _, p in sorted(items)]
    return out


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileMissingError("%s: no file %r" % (what, path))
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ArgumentError("%s: cannot read %r as .npy without pickles: %s"
                            % (what, path, e)) from e
    return arr


class NpyReader(ArrayReader):
    """A reader over ``.npy`` files (memory-mapped, read in place) or an ``.npz``.

    Args:
        paths_or_dir_or_npz: one of
            * a directory: every ``<field>.npy`` in it is a field, and
              ``<field>-<k>.npy`` files (what :class:`NpyShardWriter`
              writes) are the shards of a field, in order of ``k``;
            * a dict field name -> path, or -> list of shard paths;
            * a list of ``.npy`` paths (field = the file name without
              ``.npy``);
            * the path of an ``.npz`` file (field = member name).
        fields: the fields to read, in this order (default: all, sorted by
            name for a directory or an ``.npz``).
        batch_size, shuffle, seed, enforce_batch_size: as for
            :class:`ArrayReader`.
        name: the reader's name (in op names, errors and stat keys).

    **No copies of the files.** Every ``.npy`` file -- one per field, or
    every shard of a field -- is opened with ``np.load(mmap_mode="r")`` and
    read in place: nothing is concatenated.  The native read op
    (``ReadSegmentBatch``) walks one cursor over the list of (shard, rows)
    segments; a batch that lies inside one shard **borrows** the mapping
    (the batch tensor points into the page cache and keeps the mapping
    alive; it is read-only), a batch that spans a shard boundary is
    **assembled** (one copy of that batch), and a shuffled batch is
    **gathered** row by row (a copy by nature).  :meth:`batch_counts` tells
    how many batches went each way.  Fields cut into shards at different
    rows are read through the union of the cuts (numpy views, no copy).

    Members of an ``.npz`` written by ``np.savez`` (stored, not compressed)
    are memory-mapped at their offset inside the archive; members of an
    ``np.savez_compressed`` archive are deflated and so are loaded into
    memory, here, once -- ``copied_fields`` names them, as it names a
    Fortran-ordered array (copied once into C order).

    Every field must have the same number of records (dim 0) and a dtype
    the core holds (``NPY_DTYPES``: float16/32/64, int8/16/32/64,
    uint8/16, bool); a missing file, mismatched lengths or another dtype
    is an error naming the file.  Object (pickled) arrays are refused.

    Threading: as :class:`ArrayReader` -- native reads without the GIL, one
    cursor shared by every runtime instance, each record exactly once per
    epoch.

    Example::

        src = NpyReader("out/shards", fields=["id", "x"], batch_size=64)
        q = pipeline.pipe(src, processor=f, num_runtime_threads=2)
    """

    def __init__(self, paths_or_dir_or_npz: Any, fields: Optional[Sequence[str]] = None,
                 batch_size: Optional[int] = 1, shuffle: bool = False,
                 seed: Optional[int] = None, enforce_batch_size: bool = False,
                 name: Optional[str] = None):
        name = name or "npy_reader_%d" % next(_ids)
        what = "NpyReader %r" % name
        src = paths_or_dir_or_npz
        parts = {}          # field -> [(label, array)], one per shard
        files = {}
        copied = []
        if isinstance(src, (str, os.PathLike)) and str(src).endswith(".npz"):
            path = os.fspath(src)
            if not os.path.exists(path):
                raise FileMissingError("%s: no file %r" % (what, path))
            with np.load(path, allow_pickle=False) as z:
                members = sorted(z.files)
                for f in (members if fields is None else fields):
                    if f not in z.files:
                        raise ArgumentError("%s: %r has no member %r (members: %r)"
                                            % (what, path, f, members))
                    label = "%s[%s]" % (path, f)
                    arr = _npz_member_in_place(path, f, what)
                    if arr is None:     # deflated, or not a plain .npy: load it once
                        arr = z[f]
                        copied.append(f)
                    parts[f] = [(label, arr)]
                    files[f] = label
        else:
            if isinstance(src, (str, os.PathLike)):
                path = os.fspath(src)
                if not os.path.isdir(path):
                    if path.endswith(".npy"):
                        field_paths = {os.path.basename(path)[:-4]: [path]}
                    else:
                        raise FileMissingError("%s: no directory %r" % (what, path))
                else:
                    field_paths = _shards_in_dir(path)
                    if not field_paths:
                        raise ArgumentError("%s: directory %r holds no .npy files"
                                            % (what, path))
            elif isinstance(src, Mapping):
                field_paths = {str(k): ([v] if isinstance(v, (str, os.PathLike)) else list(v))
                               for k, v in src.items()}
            elif isinstance(src, (list, tuple)):
                field_paths = {}
                for p in src:
                    p = os.fspath(p)
                    field_paths[os.path.basename(p)[:-4] if p.endswith(".npy") else
                                os.path.basename(p)] = [p]
            else:
                raise ArgumentError("%s: expected a directory, an .npz path, a list of .npy "
                                    "paths or a dict field -> path(s), got %r"
                                    % (what, type(src).__name__))
            order = sorted(field_paths) if fields is None else list(fields)
            for f in order:
                if f not in field_paths:
                    raise ArgumentError("%s: no file for field %r (fields found: %r)"
                                        % (what, f, sorted(field_paths)))
                paths = [os.fspath(p) for p in field_paths[f]]
                if not paths:
                    raise ArgumentError("%s: field %r has no shard files" % (what, f))
                parts[f] = [(p, _load_npy(p, what)) for p in paths]
                files[f] = paths[0] if len(paths) == 1 else paths
        if not parts:
            raise ArgumentError("%s: no fields to read" % what)
        for f, shards in parts.items():
            label0, a0 = shards[0]
            for label, a in shards:
                self._check_npy(what, f, label, a, a0, label0)
            fixed = []
            for label, a in shards:
                if not a.flags.c_contiguous:
                    a = np.ascontiguousarray(a)     # Fortran order: one copy, in C order
                    if f not in copied:
                        copied.append(f)
                fixed.append(a)
            parts[f] = fixed
        first = next(iter(parts))
        rows = {f: sum(a.shape[0] for a in shards) for f, shards in parts.items()}
        for f in parts:
            if rows[f] != rows[first]:
                raise ArgumentError("%s: %s holds %d records but %s holds %d"
                                    % (what, _fmt_files(files[f]), rows[f],
                                       _fmt_files(files[first]), rows[first]))
        # one list of segments for every field: the union of every field's
        # shard cuts (a field cut elsewhere is read through views, no copy)
        cuts = set()
        for shards in parts.values():
            c = 0
            for a in shards:
                c += a.shape[0]
                cuts.add(c)
        cuts.discard(0)
        bounds = [0] + sorted(cuts) if cuts else [0, 0]
        segment_rows = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        flat = []
        for f, shards in parts.items():
            starts = np.cumsum([0] + [a.shape[0] for a in shards])
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                k = int(np.searchsorted(starts, lo, side="right")) - 1
                k = min(k, len(shards) - 1)
                a = shards[k]
                off = lo - int(starts[k])
                if off == 0 and hi - lo == a.shape[0]:
                    flat.append(a)
                else:
                    flat.append(a[off:off + hi - lo])   # a view: still the mapping
        self.name = name
        self.files = files
        self.field_names_ = list(parts)
        self.copied_fields = tuple(copied)
        self.num_records = rows[first]
        self.segment_rows = tuple(segment_rows)
        self.batch_size, self.seed = _check_batch_and_seed(what, batch_size, seed, shuffle)
        self.shuffle = bool(shuffle)
        self.enforce_batch_size = bool(enforce_batch_size)
        self._state = _ArrayState(flat, self.seed if self.seed is not None else 0)
        Reader.__init__(self, Struct(*[(f, Scalar((parts[f][0].dtype, parts[f][0].shape[1:])))
                                       for f in parts]))
        self._cursor = None
        self._blobs = None
        self._perm = None

    def batch_counts(self) -> "dict[str, int]":
        """How many batches this reader's read ops have ``borrowed`` (inside a
        shard: no copy), ``assembled`` (across a shard boundary: one copy) and
        ``gathered`` (shuffled: a copy), over every run so far in this
        process (the ``<name>/..._batches`` stats, until ``stats.reset()``)."""
        st = _core.stats_export(False)
        return {k: int(st.get("%s/%s_batches" % (self.name, k), 0))
                for k in ("borrowed", "assembled", "gathered")}

    def setup_ex(self, init_net: core.Net, exit_net: Optional[core.Net]) -> None:
        """Add the run-time setup to ``init_net`` (once: a reader shared by
        several pipes is set up by the first)."""
        if _check_one_group(self, "NpyReader") or self._cursor is not None:
            return
        prefix = "%s_%d" % (self.name, next(_ids))
        nseg = len(self.segment_rows)
        blobs = [init_net.NextScopedBlob("%s/%s/%d" % (prefix, f, k))
                 for f in self.field_names_ for k in range(nseg)]
        outs = list(blobs)
        if self.shuffle:
            rows = init_net.NextScopedBlob(prefix + "/rows")
            key = init_net.NextScopedBlob(prefix + "/epoch_key")
            outs += [rows, key]
        init_net.add_attribute("fastpipe.sources", self._state)   # keeps the maps with the net
        init_net.Python(_feed_segments_fn(weakref.ref(self._state), self.name, self.shuffle,
                                          self.num_records))([], outs)
        _name_last_op(init_net, self.name + "/feed")
        if self.shuffle:
            self._perm = init_net.EpochPermutation(
                [key, rows], init_net.NextScopedBlob(prefix + "/permutation"))
            _name_last_op(init_net, self.name + "/permutation")
        self._cursor = init_net.CreateTreeCursor(
            [], init_net.NextScopedBlob(prefix + "/cursor"),
            fields=[str(i) for i in range(len(self.field_names_))])
        self._blobs = blobs

    def read(self, read_net: core.Net) -> Tuple[core.BlobReference, List[core.BlobReference]]:
        """Append one ``ReadSegmentBatch``; returns ``(should_stop, fields)``."""
        if self._cursor is None:
            raise GraphError("NpyReader %r: setup_ex not called." % self.name)
        ins = [self._cursor] + ([self._perm] if self.shuffle else []) + list(self._blobs)
        scope = read_net.NextName(self.name)
        outs = read_net.ReadSegmentBatch(
            ins, ["%s/%s" % (scope, f) for f in ["stop"] + list(self.field_names_)],
            batch_size=self.batch_size or 1,
            enforce_batch_size=self.enforce_batch_size,
            record=self.batch_size is None, permuted=self.shuffle,
            segment_rows=list(self.segment_rows), counters=self.name)
        _name_last_op(read_net, self.name)
        outs = core.output_to_list(outs)
        return outs[0], outs[1:]

    @staticmethod
    def _check_npy(what, field, path, arr, first, first_path):
        if arr.dtype not in NPY_DTYPES:
            raise ArgumentError("%s: field %r: %s has dtype %s; supported are %s"
                                % (what, field, _fmt_files(path), arr.dtype,
                                   ", ".join(str(d) for d in NPY_DTYPES)))
        if arr.ndim < 1:
            raise ArgumentError("%s: field %r: %s holds a 0-d array; a field needs a "
                                "records dim" % (what, field, _fmt_files(path)))
        if first is not None and (arr.dtype != first.dtype or arr.shape[1:] != first.shape[1:]):
            raise ArgumentError("%s: field %r: shard %r is %s%s but shard %r is %s%s"
                                % (what, field, path, arr.dtype, arr.shape[1:], first_path,
                                   first.dtype, first.shape[1:]))


def _check_batch_and_seed(what, batch_size, seed, shuffle):
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ArgumentError("%s: batch_size=%r must be an int >= 1 or None"
                                % (what, batch_size))
        batch_size = int(batch_size)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= seed < SEED_LIMIT:
            raise ArgumentError("%s: seed=%r must be an int in [0, 2**63)" % (what, seed))
        seed = int(seed)
    elif shuffle:
        seed = secrets.randbelow(SEED_LIMIT)
    return batch_size, seed


def _feed_segments_fn(state_ref, name, keyed, num_records):
    rows = np.empty((num_records, 0), dtype=np.uint8)   # N rows, no bytes: sizes the permutation

    def feed_segments(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("NpyReader", name)
        for out, arr in zip(outputs, st.arrays):
            _core._borrow_array(out, arr)
        if keyed:
            _core._borrow_array(outputs[len(st.arrays)], rows)
            outputs[len(st.arrays) + 1].feed(st.next_key())
    feed_segments.__qualname__ = "NpyReader(%s).feed_segments" % name
    feed_segments._fastpipe_array_state = state_ref   # found by LocalSession.iterate (resume)
    return feed_segments


def _npz_member_in_place(path: str, member: str, what: str) -> Optional[np.ndarray]:
    """Member ``member`` of the .npz at ``path`` memory-mapped where its array
    bytes lie inside the archive, or None when it cannot be (deflated -- an
    ``np.savez_compressed`` archive --, encrypted, not a plain ``.npy``, or
    Fortran-ordered): the caller then loads it."""
    entry = member + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(entry)
    except (KeyError, zipfile.BadZipFile):
        return None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as fh:
        # the local file header: 30 fixed bytes, then the name and extra field
        fh.seek(info.header_offset)
        hdr = fh.read(30)
        if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
            raise ArgumentError("%s: %r: member %r has no valid local header"
                                % (what, path, member))
        name_len, extra_len = struct.unpack("<HH", hdr[26:30])
        data_off = info.header_offset + 30 + name_len + extra_len
        fh.seek(data_off)
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
        except ValueError:
            return None
        array_off = fh.tell()
    if dtype not in NPY_DTYPES or fortran or dtype.hasobject:
        return None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if array_off + nbytes > data_off + info.file_size:
        raise ArgumentError("%s: %r: member %r holds %d bytes, its header says %s %s"
                            % (what, path, member, info.file_size, dtype, shape))
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    arr = np.memmap(path, dtype=dtype, mode="r", offset=array_off, shape=shape, order="C")
    return arr


def _fmt_files(f):
    return repr(f) if isinstance(f, str) else "shards %r" % (f,)



# ---- .npy shards out ----------------------------------------------------------------

class _ShardState(object):
    __slots__ = ("directory", "fields", "per_shard", "lock", "parts", "buffered",
                 "next_k", "written", "__weakref__")

    def __init__(self, directory, fields, per_shard):
        self.directory = directory
        self.fields = fields
        self.per_shard = per_shard
        # protects parts, buffered, next_k and written: every runtime instance
        # writes through one state, and a shard is cut and saved under it
        self.lock = threading.Lock()
        self.parts = [[] for _ in fields]
        self.buffered = 0
        self.next_k = 0
        self.written = []

    def first_free_index(self):
        k = 0
        for entry in os.listdir(self.directory):
            m = _SHARD_RE.match(entry)
            if m and m.group("field") in self.fields:
                k = max(k, int(m.group("k")) + 1)
        return k

    def save_shard(self, n):
        """Cut the first n buffered records into shard next_k (lock held)."""
        cols = []
        for i, parts in enumerate(self.parts):
            col = np.concatenate(parts) if len(parts) > 1 else parts[0]
            cols.append(col[:n])
            rest = col[n:]
            self.parts[i] = [rest] if len(rest) else []
        self.buffered -= n
        k = self.next_k
        self.next_k += 1
        for f, col in zip(self.fields, cols):
            final = os.path.join(self.directory, "%s-%05d.npy" % (f, k))
            tmp = os.path.join(self.directory, ".%s-%05d.npy.tmp" % (f, k))
            with open(tmp, "wb") as fh:
                np.save(fh, col, allow_pickle=False)
            os.replace(tmp, final)     # a shard file is complete or absent
            self.written.append(final)


def _shard_start_fn(state_ref, name):
    def start(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("NpyShardWriter", name)
        os.makedirs(st.directory, exist_ok=True)
        with st.lock:
            st.parts = [[] for _ in st.fields]
            st.buffered = 0
            st.next_k = st.first_free_index()
    start.__qualname__ = "NpyShardWriter(%s).start" % name
    return start


def _shard_write_fn(state_ref, name):
    def write(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("NpyShardWriter", name)
        # the views are valid only during this call: copy
        cols = [np.array(t.data) for t in inputs]
        n = None
        for f, c in zip(st.fields, cols):
            if c.ndim < 1:
                raise ArgumentError("NpyShardWriter %r: field %r is a 0-d value; write "
                                    "batches (a records dim)" % (name, f))
            if c.dtype not in NPY_DTYPES:
                raise ArgumentError("NpyShardWriter %r: field %r has dtype %s; supported are "
                                    "%s" % (name, f, c.dtype, ", ".join(map(str, NPY_DTYPES))))
            if n is None:
                n = c.shape[0]
            elif c.shape[0] != n:
                raise ArgumentError("NpyShardWriter %r: field %r has %d records but field %r "
                                    "has %d" % (name, f, c.shape[0], st.fields[0], n))
        with st.lock:
            for i, c in enumerate(cols):
                prev = st.parts[i][0] if st.parts[i] else None
                if prev is not None and (prev.dtype != c.dtype or prev.shape[1:] != c.shape[1:]):
                    raise ArgumentError("NpyShardWriter %r: field %r changed from %s%s to %s%s "
                                        "within a shard" % (name, st.fields[i], prev.dtype,
                                                            prev.shape[1:], c.dtype, c.shape[1:]))
                st.parts[i].append(c)
            st.buffered += n
            while st.buffered >= st.per_shard:
                st.save_shard(st.per_shard)
    write.__qualname__ = "NpyShardWriter(%s).write" % name
    return write


def _shard_commit_fn(state_ref, name):
    def commit(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("NpyShardWriter", name)
        with st.lock:
            if st.buffered:
                st.save_shard(st.buffered)
    commit.__qualname__ = "NpyShardWriter(%s).commit" % name
    return commit


class NpyShardWriter(Writer):
    """A writer of ``.npy`` shards: ``<directory>/<field>-<k>.npy``.

    Args:
        directory: where the shards go (created at the start of a run).
        fields: the field names, in the order of the blobs written.
        records_per_shard: records in every shard but the last of a run.
        name: the writer's name (in op names and errors).

    Each written blob is a batch: dim 0 counts its records (a reader with
    ``batch_size=None`` hands on records without that dim; give such a pipe
    a batch size).  Every batch written (by any number of runtime
    instances) is buffered in memory until a shard is full;
    each time ``records_per_shard`` records are buffered, one shard per field
    is saved, and the task's exit (``commit``) saves the rest as a shorter
    last shard, so every record lands in exactly one shard.  A shard is
    written to a hidden temporary file and renamed into place: a
    ``<field>-<k>.npy`` file is always complete.  **Resumable naming**: a
    run numbers its shards from one past the highest ``k`` already in the
    directory for these fields, so a later run (or a resumed job) adds
    shards and never overwrites one.  :class:`NpyReader` reads the directory
    back (shards in order of ``k``).

    Threading: **GIL-bound** -- ``write`` is a ``Python`` operator that
    copies the batch and appends it under a lock; saving a shard happens
    under the same lock.  ``written`` lists the shard paths saved so far.

    Example::

        w = NpyShardWriter("out", ["id", "x"], records_per_shard=100000)
        pipeline.pipe(src, w, processor=f, num_runtime_threads=2)
    """

    def __init__(self, directory: str, fields: Sequence[str], records_per_shard: int = 65536,
                 name: Optional[str] = None):
        self.name = name or "npy_shard_writer_%d" % next(_ids)
        if isinstance(fields, str):
            fields = [fields]
        fields = [str(f) for f in fields]
        if not fields or len(set(fields)) != len(fields):
            raise ArgumentError("NpyShardWriter %r: fields=%r must be distinct names"
                                % (self.name, fields))
        for f in fields:
            if os.sep in f or f.startswith("."):
                raise ArgumentError("NpyShardWriter %r: field %r cannot name a file"
                                    % (self.name, f))
        if isinstance(records_per_shard, bool) or not isinstance(records_per_shard,
                                                                 (int, np.integer)) \
                or records_per_shard < 1:
            raise ArgumentError("NpyShardWriter %r: records_per_shard=%r must be an int >= 1"
                                % (self.name, records_per_shard))
        self.directory = os.fspath(directory)
        self.fields = fields
        self.records_per_shard = int(records_per_shard)
        self._state = _ShardState(self.directory, fields, self.records_per_shard)
        self._set_up = False

    @property
    def written(self) -> List[str]:
        return list(self._state.written)

    def setup_ex(self, init_net: core.Net, finish_net: core.Net) -> None:
        if _check_one_group(self, "NpyShardWriter") or self._set_up:
            return
        init_net.add_attribute("fastpipe.sources", self._state)
        init_net.Python(_shard_start_fn(weakref.ref(self._state), self.name))([], [])
        _name_last_op(init_net, self.name + "/start")
        self.commit(finish_net)
        self._set_up = True

    def write(self, writer_net: core.Net, fields: Sequence[Any]) -> None:
        fields = list(fields)
        if len(fields) != len(self.fields):
            raise GraphError("NpyShardWriter %r: %d blobs written for %d fields %r"
                             % (self.name, len(fields), len(self.fields), self.fields))
        writer_net.add_attribute("fastpipe.sources", self._state)
        writer_net.Python(_shard_write_fn(weakref.ref(self._state), self.name))(fields, [])
        _name_last_op(writer_net, self.name)

    def commit(self, finish_net: core.Net) -> None:
        finish_net.add_attribute("fastpipe.sources", self._state)
        finish_net.Python(_shard_commit_fn(weakref.ref(self._state), self.name))([], [])
        _name_last_op(finish_net, self.name + "/commit")
