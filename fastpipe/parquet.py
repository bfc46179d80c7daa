"""A reader over Parquet files (optional extra: ``pip install fastpipe[parquet]``).

:class:`ParquetReader` reads the row groups of one or more Parquet files --
the unit of work -- through one cursor shared by every runtime instance:
each instance claims the next (file, row group), decodes it with pyarrow
(which releases the GIL while it decodes, so instances decode in parallel)
and cuts batches of exactly ``batch_size`` records from a pool every
instance shares (only the very last batch of an epoch may be shorter), so
every record is read exactly once per epoch.

``import fastpipe`` (and importing this module) never imports pyarrow; the
reader imports it when it is made, and says which extra to install when it
is missing.

Example::

    from fastpipe import pipeline, session, task, workspace
    from fastpipe.parquet import ParquetReader

    with task.TaskGroup() as tg:
        src = ParquetReader("data/", fields=["id", "x"], batch_size=1024)
        q = pipeline.pipe(src, processor=f, num_runtime_threads=4)
    session.LocalSession(workspace.C.Workspace()).run(tg)
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
import weakref
from collections import deque
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import _core, core
from .dataio import Reader
from .errors import ArgumentError, FastpipeError, NotSupportedError
from .schema import Scalar, Struct
from .sources import SEED_LIMIT, FileMissingError, _dead, _PythonOpSource

__all__ = ["ParquetReader", "NullValueError", "PARQUET_EXTRA"]

#: what to install for this module (the ``parquet`` extra pulls in pyarrow)
PARQUET_EXTRA = "pip install fastpipe[parquet]"

_ids = itertools.count()
_WAIT_SLICE_S = 0.05     # a waiting read op wakes this often (to see an interrupt)


class NullValueError(FastpipeError, ValueError):
    """A Parquet column holds nulls and no fill value was given for it."""


def _pyarrow_parquet():
    """``pyarrow.parquet``, or a clear error naming the extra when pyarrow is
    not installed (looked up on the import path first, so an error raised
    *inside* an installed pyarrow is never mistaken for a missing one)."""
    if "pyarrow" in sys.modules:
        found = sys.modules["pyarrow"] is not None
    else:
        found = any(getattr(f, "find_spec", None) is not None and
                    f.find_spec("pyarrow", None) is not None for f in sys.meta_path)
    if not found:
        raise NotSupportedError("ParquetReader needs pyarrow, which is not installed: "
                                "%s (or pip install pyarrow)" % PARQUET_EXTRA)
    import pyarrow.parquet as pq
    return pq


def _numpy_dtype(pa, t) -> Optional[np.dtype]:
    """The numpy dtype a column of arrow type t becomes (np.object_ for
    strings, held as string tensors), or None when the core has no such
    dtype."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.dtype(object)
    if pa.types.is_boolean(t):
        return np.dtype(np.bool_)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        d = np.dtype(t.to_pandas_dtype())
        if d in _NUMERIC:
            return d
    return None


_NUMERIC = tuple(np.dtype(d) for d in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                       np.int32, np.int64, np.uint8, np.uint16))


def _parquet_paths(src, what: str) -> List[str]:
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if os.path.isdir(path):
            paths = [os.path.join(path, e) for e in sorted(os.listdir(path))
                     if e.endswith((".parquet", ".pq")) and not e.startswith(".")]
            if not paths:
                raise ArgumentError("%s: directory %r holds no .parquet files" % (what, path))
            return paths
        if not os.path.exists(path):
            raise FileMissingError("%s: no file or directory %r" % (what, path))
        return [path]
    if isinstance(src, (list, tuple)) and src:
        paths = [os.fspath(p) for p in src]
        for p in paths:
            if not os.path.isfile(p):
                raise FileMissingError("%s: no file %r" % (what, p))
        return paths
    raise ArgumentError("%s: expected a Parquet file, a directory or a non-empty list of files, "
                        "got %r" % (what, src))


class _PqState(object):
    """The reader's run-time state, shared by every runtime instance.  The
    read ops hold it weakly (the process-wide Python-op table outlives
    jobs); the reader and the nets that set it up hold it."""

    __slots__ = ("paths", "fields", "units", "seed", "shuffle", "fill", "epoch", "run_epoch", "cond",
                 "order", "next_unit", "decoding", "pending", "pending_rows", "counts",
                 "tls", "__weakref__")

    def __init__(self, paths, fields, units, seed, shuffle, fill):
        self.paths = paths
        self.fields = fields
        self.units = units          # [(file index, row group, rows)]
        self.seed = seed
        self.shuffle = shuffle
        self.fill = fill            # column -> fill value (nulls)
        self.epoch = 0
        self.run_epoch = 0          # the epoch being read (set with order)
        # protects everything below: the unit cursor (order, next_unit), the
        # count of decodes in flight, the pool of decoded records and counts
        self.cond = threading.Condition(threading.Lock())
        self.order = []
        self.next_unit = 0
        self.decoding = 0
        self.pending = deque()      # [offset, [column arrays]] in arrival order
        self.pending_rows = 0
        self.counts = {"borrowed": 0, "assembled": 0}
        self.tls = threading.local()   # per thread: path -> ParquetFile

    def start_epoch(self):
        with self.cond:
            e = self.epoch
            self.epoch += 1
            n = len(self.units)
            if self.shuffle:
                self.order = [int(i) for i in
                              np.random.default_rng([self.seed, e]).permutation(n)]
            else:
                self.order = list(range(n))
            self.run_epoch = e
            self.next_unit = 0
            self.decoding = 0
            self.pending.clear()
            self.pending_rows = 0
            return e

    def cut(self, n: int) -> Optional[List[np.ndarray]]:
        """Up to n records from the front of the pool (lock held): views of
        one decoded row group, or the pieces joined when they span two."""
        n = min(n, self.pending_rows)
        if n == 0:
            return None
        off, cols = self.pending[0]
        left = len(cols[0]) - off if cols else 0
        if left >= n:
            out = [c[off:off + n] for c in cols]
            if left == n:
                self.pending.popleft()
            else:
                self.pending[0][0] = off + n
            self.counts["borrowed"] += 1
        else:
            pieces = []
            need = n
            while need:
                off, cols = self.pending[0]
                m = min(need, len(cols[0]) - off)
                pieces.append([c[off:off + m] for c in cols])
                if off + m == len(cols[0]):
                    self.pending.popleft()
                else:
                    self.pending[0][0] = off + m
                need -= m
            out = [np.concatenate([p[j] for p in pieces]) for j in range(len(pieces[0]))]
            self.counts["assembled"] += 1
        self.pending_rows -= n
        return out

    def decode(self, unit_pos: int, name: str, pa, pq) -> List[np.ndarray]:
        """Decode one row group into numpy columns (no lock held: pyarrow
        releases the GIL while it reads and decodes)."""
        u = self.order[unit_pos]
        fi, rg, rows = self.units[u]
        path = self.paths[fi]
        files = getattr(self.tls, "files", None)
        if files is None:
            files = self.tls.files = {}
        pf = files.get(path)
        if pf is None:
            # a handle per thread; pre_buffer=False: read in this thread, not
            # through pyarrow's I/O pool (a row group is read whole anyway)
            pf = files[path] = pq.ParquetFile(path, pre_buffer=False)
        table = pf.read_row_group(rg, columns=self.fields, use_threads=False)
        cols = []
        for f in self.fields:
            col = table.column(f)
            if col.null_count:
                if f not in self.fill:
                    first = _first_null(col)
                    raise NullValueError(
                        "ParquetReader %r: file %r column %r row group %d holds %d null(s) "
                        "(the first at row %d of the row group); pass fill_nulls={%r: value} "
                        "to read them as a value" % (name, path, f, rg, col.null_count, first, f))
                import pyarrow.compute as pc
                col = pc.fill_null(col, self.fill[f])
            if col.num_chunks == 1:
                chunk = col.chunk(0)
            else:
                chunk = col.combine_chunks()            # a copy, rare (one chunk per group)
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            if pa.types.is_boolean(chunk.type) or pa.types.is_string(chunk.type) or \
                    pa.types.is_large_string(chunk.type):
                arr = chunk.to_numpy(zero_copy_only=False)   # bit-packed / strings: converted
            else:
                arr = chunk.to_numpy(zero_copy_only=True)    # the arrow buffer itself
            cols.append(arr)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.run_epoch, u]).permutation(rows)
            cols = [c[perm] for c in cols]      # a shuffled batch gathers rows: a copy
        return cols


def _first_null(col) -> int:
    off = 0
    for chunk in col.chunks:
        if chunk.null_count:
            valid = chunk.is_valid().to_numpy(zero_copy_only=False)
            return off + int(np.argmin(valid))
        off += len(chunk)
    return -1


def _start_fn(state_ref, name):
    def start_epoch(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("ParquetReader", name)
        st.start_epoch()
    start_epoch.__qualname__ = "ParquetReader(%s).start" % name
    return start_epoch


def _read_fn(state_ref, name, batch_size, pa, pq):
    def read_batch(inputs, outputs):
        st = state_ref()
        if st is None:
            raise _dead("ParquetReader", name)
        while True:
            with st.cond:
                batch = st.cut(batch_size) if st.pending_rows >= batch_size else None
                unit = -1
                if batch is None:
                    if st.next_unit < len(st.order):
                        unit = st.next_unit             # claim the next row group
                        st.next_unit += 1
                        st.decoding += 1
                    elif st.decoding:
                        # another instance is decoding the last row groups:
                        # its records may complete a full batch.  Timed
                        # slices: a cancelled run interrupts Python ops
                        # (KeyboardInterrupt), delivered when the wait returns.
                        st.cond.wait(_WAIT_SLICE_S)
                        continue
                    else:
                        batch = st.cut(batch_size)      # the short last batch, or None
                        if batch is None:
                            outputs[0].feed(np.bool_(True))
                            return
            if batch is not None:
                break
            cols = None
            try:
                cols = st.decode(unit, name, pa, pq)
            finally:
                # whatever happened (a decode error, an interrupt), the count
                # of decodes in flight goes down, so no waiter is left behind
                with st.cond:
                    st.decoding -= 1
                    if cols is not None and len(cols) and len(cols[0]):
                        st.pending.append([0, cols])
                        st.pending_rows += len(cols[0])
                    st.cond.notify_all()
        for out, arr in zip(outputs[1:], batch):
            if arr.dtype.kind == "O":
                out.feed(arr)           # strings become native std::strings: a copy
            else:
                _core._borrow_array(out, arr)   # the decoded column, no copy
        outputs[0].feed(np.bool_(False))
    read_batch.__qualname__ = "ParquetReader(%s).read" % name
    return read_batch


class ParquetReader(_PythonOpSource):
    """A reader over Parquet files: row groups decoded in parallel, batches
    of exactly ``batch_size``.

    Args:
        path_or_paths_or_dir: a ``.parquet`` file, a list of them, or a
            directory (its ``*.parquet`` / ``*.pq`` files, sorted by name).
            Every file must have the selected columns, with the same types.
        fields: the columns to read, in this order (default: every column
            of the first file, in file order).
        batch_size: records per batch (an int >= 1).  Every batch holds
            exactly ``batch_size`` records except the last of an epoch.
        shuffle: read each epoch in a fresh order: the row groups in an order
            drawn from ``(seed, epoch)``, and the records of each row group
            permuted (from ``(seed, epoch, row group)``).
        seed: with ``shuffle``, fixes those orders (an int in
            ``[0, 2**63)``); ``None`` draws one.  With one runtime instance
            the order of records is then the same in every run and process;
            with several, the set of records is, and the order depends on
            which instance finishes decoding first.
        fill_nulls: nulls are an error (:class:`NullValueError`, naming the
            file, the column and the row group) unless a value is given
            here: one value for every column, or a dict column -> value.
        name: the reader's name (in op names and errors).

    Columns: integer (int8/16/32/64, uint8/16), floating (float16/32/64)
    and boolean columns become numpy arrays; strings (also
    dictionary-encoded) become string tensors.  Other types (uint32/64,
    timestamps, lists, structs...) are refused when the reader is made,
    naming the file and the column.

    Copies: a numeric column of a row group without nulls is handed on as
    pyarrow decoded it (``to_numpy(zero_copy_only=True)``: the workspace
    tensor borrows the arrow buffer), and a batch inside one row group is a
    view of it.  Booleans (bit-packed in arrow), strings, filled nulls, a
    batch that spans two row groups (assembled) and shuffled row groups
    (gathered) are copies.  :meth:`batch_counts` says how many batches were
    borrowed and how many assembled.

    Threading: the row groups are the unit of work.  Every runtime instance
    of a pipe shares one cursor over (file, row group): an instance that
    needs records claims the next row group under a lock and decodes it
    without the lock (pyarrow releases the GIL while decoding, so instances
    decode in parallel); decoded records go into a pool that every instance
    cuts batches from, so each record is read exactly once per epoch.  The
    read is a ``Python`` operator: cutting a batch holds the GIL briefly.

    Example::

        src = ParquetReader(["a.parquet", "b.parquet"], batch_size=256,
                            shuffle=True, seed=0)
        q = pipeline.pipe(src, processor=f, num_runtime_threads=4)
    """

    def __init__(self, path_or_paths_or_dir: Union[str, os.PathLike, Sequence[Any]],
                 fields: Optional[Sequence[str]] = None, batch_size: int = 1024,
                 shuffle: bool = False, seed: Optional[int] = None,
                 fill_nulls: Union[None, Any, Mapping[str, Any]] = None,
                 name: Optional[str] = None):
        self.name = name or "parquet_reader_%d" % next(_ids)
        what = "ParquetReader %r" % self.name
        pq = _pyarrow_parquet()
        import pyarrow as pa
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ArgumentError("%s: batch_size=%r must be an int >= 1" % (what, batch_size))
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                    or not 0 <= seed < SEED_LIMIT:
                raise ArgumentError("%s: seed=%r must be an int in [0, 2**63)" % (what, seed))
            seed = int(seed)
        elif shuffle:
            seed = secrets.randbelow(SEED_LIMIT)
        paths = _parquet_paths(path_or_paths_or_dir, what)
        units = []
        types = None
        first_path = None
        for fi, path in enumerate(paths):
            try:
                pf = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as e:
                raise ArgumentError("%s: %r is not a readable Parquet file: %s"
                                    % (what, path, e)) from e
            sch = pf.schema_arrow
            if fields is None:
                fields = list(sch.names)
            fields = [str(f) for f in fields]
            if types is None:
                if not fields or len(set(fields)) != len(fields):
                    raise ArgumentError("%s: fields=%r must be distinct column names"
                                        % (what, fields))
            for f in fields:
                if sch.get_field_index(f) < 0:
                    raise ArgumentError("%s: file %r has no column %r (columns: %r)"
                                        % (what, path, f, list(sch.names)))
            ftypes = [sch.field(f).type for f in fields]
            if types is None:
                for f, t in zip(fields, ftypes):
                    if _numpy_dtype(pa, t) is None:
                        raise ArgumentError(
                            "%s: file %r column %r has type %s; supported are int8/16/32/64, "
                            "uint8/16, float16/32/64, bool and string" % (what, path, f, t))
                types = ftypes
                first_path = path
            else:
                for f, t, t0 in zip(fields, ftypes, types):
                    if t != t0:
                        raise ArgumentError("%s: column %r is %s in %r but %s in %r"
                                            % (what, f, t, path, t0, first_path))
            md = pf.metadata
            for rg in range(md.num_row_groups):
                rows = md.row_group(rg).num_rows
                if rows:
                    units.append((fi, rg, rows))
        if isinstance(fill_nulls, Mapping):
            fill = {str(k): v for k, v in fill_nulls.items()}
            for k in fill:
                if k not in fields:
                    raise ArgumentError("%s: fill_nulls names %r, which is not a selected "
                                        "column (%r)" % (what, k, fields))
        elif fill_nulls is None:
            fill = {}
        else:
            fill = {f: fill_nulls for f in fields}
        for f, t in zip(fields, types):
            if f in fill:
                try:
                    pa.scalar(fill[f], type=t)
                except (TypeError, ValueError, pa.ArrowException) as e:
                    raise ArgumentError(
                        "%s: fill_nulls value %r does not fit column %r (%s): %s%s"
                        % (what, fill[f], f, t, e,
                           "" if isinstance(fill_nulls, Mapping) else
                           "; give one value per column: fill_nulls={column: value}")) from e
        self.paths = paths
        self.field_names_ = fields
        self.dtypes = [_numpy_dtype(pa, t) for t in types]
        self.num_records = sum(u[2] for u in units)
        self.num_row_groups = len(units)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self._state = _PqState(paths, fields, units, seed if seed is not None else 0,
                               self.shuffle, fill)
        self._pa = (pa, pq)
        Reader.__init__(self, Struct(*[(f, Scalar(d)) for f, d in zip(fields, self.dtypes)]))
        self._set_up = False

    @property
    def epoch(self) -> int:
        """The next epoch (how many runs have started with this reader)."""
        return self._state.epoch

    def batch_counts(self) -> Dict[str, int]:
        """Batches handed on so far: ``borrowed`` (views of one decoded row
        group) and ``assembled`` (joined across row groups: a copy)."""
        with self._state.cond:
            return dict(self._state.counts)

    _KIND = "ParquetReader"

    def _field_names(self) -> Sequence[str]:
        return self.field_names_

    def _start_op(self):
        return _start_fn(weakref.ref(self._state), self.name)

    def _read_op(self):
        pa, pq = self._pa
        return _read_fn(weakref.ref(self._state), self.name, self.batch_size, pa, pq)

    def reset(self, net: core.Net) -> None:
        raise NotSupportedError("ParquetReader %r: reset is not supported (every run starts "
                                "an epoch at the first row group)" % self.name)
