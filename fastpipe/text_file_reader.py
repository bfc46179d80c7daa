"""Reading TSV files natively (and writing them back): Caffe2's ``text_file_reader`` module.

:class:`TextFileReader` reads a text file of tab-separated fields, one
record per line, with the ``CreateTextFileReader`` / ``TextFileReaderRead``
operators.  Lines are split and numbers parsed by the native core without
the GIL (``fastpipe/_core/textfile.pxi``); no Python runs per line.
:class:`TextFileWriter` writes records as TSV lines that
:class:`TextFileReader` reads back exactly.
"""

import os
import threading
import weakref
from typing import List, Optional, Tuple

import numpy as np

from fastpipe import core
from fastpipe.dataio import Reader, Writer
from fastpipe.errors import ArgumentError, FastpipeError, GraphError
from fastpipe.schema import Scalar, Struct, data_type_for_dtype
from fastpipe._opschema import TEXT_FIELD_TYPES

__all__ = ["TextFileReader", "TextFileWriter"]


class TextFileReader(Reader):
    """A reader of a TSV file: one record per line, fields separated by tabs.

    Args:
        init_net: a net run once before reading (it gets the
            ``CreateTextFileReader`` op, which opens the file: a missing
            file fails it with an error naming the file).
        filename: the path of the file.
        schema: a ``schema.Struct`` of ``Scalar`` fields, in file order;
            each field's dtype is int8, int16, int32, int64, uint8,
            uint16, float32, float64 or a string type
            (``str``/``bytes``/object).
        num_passes: how many times the file is read.
        batch_size: lines per read (the last batch of the last pass may be
            shorter).

    Each read gives one 1-D array per field; after the last line of the
    last pass a read gives empty arrays and ``should_stop`` (``IsEmpty`` of
    the first field, as in Caffe2) is true.  Lines end in ``\\n`` or
    ``\\r\\n``; a last line without a line end is read; fields are not
    unescaped.  A line with the wrong number of fields, or a numeric field
    that is not a number or is out of range, fails the run with a
    ``RunError`` naming the file, the line number and the field.

    Threading: the reader is one native object shared by every op that
    reads it, so the runtime instances of a pipe share it and every line is
    read exactly once per pass across them.  Lines are handed out under the
    reader's mutex and parsed after it is released, in parallel.

    Example::

        init = core.Net("init")
        reader = TextFileReader(init, "data.tsv", schema.Struct(
            ("id", schema.Scalar(np.int64)), ("value", schema.Scalar(np.float32))),
            batch_size=1024)
        ws.run(init)
        with task.TaskGroup() as tg:
            q = pipeline.pipe(reader, processor=f, num_runtime_threads=2)
    """

    def __init__(self, init_net: core.Net, filename: str, schema: Struct,
                 num_passes: int = 1, batch_size: int = 1):
        if not isinstance(schema, Struct):
            raise GraphError("TextFileReader: schema must be a schema.Struct, got %r"
                             % type(schema).__name__)
        names = schema.field_names()
        if not names:
            raise GraphError("TextFileReader: the schema has no fields")
        for name, child in schema.get_children():
            if not isinstance(child, Scalar):
                raise GraphError("TextFileReader: field %r is a %s; only Scalar fields are "
                                 "supported" % (name, type(child).__name__))
        field_types = []
        for name, dtype in zip(names, schema.field_types()):
            dtype = np.dtype(dtype)
            if dtype.shape:
                raise GraphError("TextFileReader: field %r has shape %s; a TSV field holds "
                                 "one value" % (name, dtype.shape))
            try:
                dt = data_type_for_dtype(dtype)
            except TypeError:
                dt = None
            if dt not in TEXT_FIELD_TYPES:
                raise GraphError("TextFileReader: field %r has dtype %s; supported are "
                                 "int8/16/32/64, uint8/16, float32, float64 and strings"
                                 % (name, dtype))
            field_types.append(int(dt))
        for arg, value in (("num_passes", num_passes), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ArgumentError("TextFileReader: %s=%r must be an int >= 1" % (arg, value))
        if not isinstance(filename, str) or not filename:
            raise ArgumentError("TextFileReader: filename=%r must be a non-empty str"
                                % (filename,))
        Reader.__init__(self, schema)
        self.filename = filename
        self._reader = init_net.CreateTextFileReader(
            [], filename=filename, num_passes=int(num_passes), field_types=field_types,
            field_names=list(names))
        self._batch_size = int(batch_size)

    def read(self, net: core.Net) -> Tuple[core.BlobReference, List[core.BlobReference]]:
        """Append a ``TextFileReaderRead`` and the stop test; returns
        ``(should_stop, fields)``."""
        blobs = net.TextFileReaderRead(
            [self._reader], len(self.schema().field_names()), batch_size=self._batch_size)
        blobs = core.output_to_list(blobs)
        is_empty = net.IsEmpty([blobs[0]], core.ScopedBlobReference(net.NextName("should_stop")))
        return is_empty, blobs



def _check_schema(what, schema):
    """Validate a TSV schema; returns (names, numpy dtypes, field type codes)."""
    if not isinstance(schema, Struct):
        raise GraphError("%s: schema must be a schema.Struct, got %r"
                         % (what, type(schema).__name__))
    names = schema.field_names()
    if not names:
        raise GraphError("%s: the schema has no fields" % what)
    for name, child in schema.get_children():
        if not isinstance(child, Scalar):
            raise GraphError("%s: field %r is a %s; only Scalar fields are supported"
                             % (what, name, type(child).__name__))
    dtypes = []
    for name, dtype in zip(names, schema.field_types()):
        dtype = np.dtype(dtype)
        if dtype.shape:
            raise GraphError("%s: field %r has shape %s; a TSV field holds one value"
                             % (what, name, dtype.shape))
        try:
            dt = data_type_for_dtype(dtype)
        except TypeError:
            dt = None
        if dt not in TEXT_FIELD_TYPES:
            raise GraphError("%s: field %r has dtype %s; supported are int8/16/32/64, "
                             "uint8/16, float32, float64 and strings" % (what, name, dtype))
        dtypes.append(dtype)
    return list(names), dtypes


class _TsvState(object):
    __slots__ = ("filename", "append", "lock", "fh", "lines", "__weakref__")

    def __init__(self, filename, append):
        self.filename = filename
        self.append = append
        # protects fh and lines: every runtime instance writes through one
        # file object, a whole batch of lines per write under the lock
        self.lock = threading.Lock()
        self.fh = None
        self.lines = 0


def _format_column(what, fname, dtype, values):
    kind = dtype.kind
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ArgumentError("%s: field %r: a batch of shape %s; write 1-D batches (one value "
                            "per line)" % (what, fname, arr.shape))
    if kind == "f":
        # repr of a Python float is the shortest string that parses back to
        # the same double; a float32 widened to double is that same value,
        # and its double repr parses (as float32 or float64) back exactly
        return list(map(repr, arr.astype(np.float64).tolist()))
    if kind in "iu":
        return list(map(str, arr.tolist()))
    out = []
    for v in arr.tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        else:
            v = str(v)
        if "\t" in v or "\n" in v or "\r" in v:
            raise ArgumentError("%s: field %r: value %r holds a tab or line end; TSV fields "
                                "are not escaped" % (what, fname, v))
        out.append(v)
    return out


def _tsv_open_fn(state_ref, what):
    def open_file(inputs, outputs):
        st = state_ref()
        if st is None:
            raise GraphError("%s: its state is gone" % what)
        with st.lock:
            if st.fh is not None:
                st.fh.close()
            try:
                st.fh = open(st.filename, "a" if st.append else "w", encoding="utf-8",
                             newline="\n")
            except OSError as e:
                raise ArgumentError("%s: cannot open %r for writing: %s"
                                    % (what, st.filename, e)) from e
            st.lines = 0
    open_file.__qualname__ = "TextFileWriter.open"
    return open_file


def _tsv_write_fn(state_ref, what, names, dtypes):
    def write_lines(inputs, outputs):
        st = state_ref()
        if st is None:
            raise GraphError("%s: its state is gone" % what)
        cols = [_format_column(what, f, dt, t.data) for f, dt, t in zip(names, dtypes, inputs)]
        n = len(cols[0])
        for f, c in zip(names, cols):
            if len(c) != n:
                raise ArgumentError("%s: field %r has %d values but field %r has %d"
                                    % (what, f, len(c), names[0], n))
        if not n:
            return
        text = "\n".join(map("\t".join, zip(*cols))) + "\n"
        with st.lock:
            if st.fh is None:
                raise GraphError("%s: write before the file was opened (or after commit)"
                                 % what)
            st.fh.write(text)
            st.lines += n
    write_lines.__qualname__ = "TextFileWriter.write"
    return write_lines


def _tsv_close_fn(state_ref, what):
    def close_file(inputs, outputs):
        st = state_ref()
        if st is None:
            raise GraphError("%s: its state is gone" % what)
        with st.lock:
            if st.fh is not None:
                st.fh.close()
                st.fh = None
    close_file.__qualname__ = "TextFileWriter.close"
    return close_file


class TextFileWriter(Writer):
    """A writer of a TSV file that :class:`TextFileReader` reads back exactly.

    Args:
        filename: the file to write.
        schema: a ``schema.Struct`` of ``Scalar`` fields, in file order (the
            same field types as :class:`TextFileReader`).
        append: add to the file instead of truncating it at the start of
            each run.

    The file is opened at the start of every run (truncated unless
    ``append``) and closed at the task's exit (``commit``).  Each write
    gives one line per record: integers in decimal, floats as Python's
    ``repr`` of the value as a double -- the shortest string that parses
    back to it, so float32 and float64 values round-trip bit-exactly
    (``nan``/``inf`` are written as ``nan``/``inf``) -- and strings as
    UTF-8; a string holding a tab, ``\\n`` or ``\\r`` is an error (the
    reader does not unescape).

    Threading: **GIL-bound** -- each write is a ``Python`` operator that
    formats its batch, then appends all its lines under the writer's lock
    in one ``write`` call, so lines of several runtime instances never
    interleave and every record is written exactly once.  Formatting costs
    about a microsecond per value (measured in ``bench/test_bench_files.py``).

    Example::

        w = TextFileWriter("out.tsv", schema.Struct(
            ("id", schema.Scalar(np.int64)), ("value", schema.Scalar(np.float32))))
        pipeline.pipe(src, w, num_runtime_threads=2)
    """

    def __init__(self, filename: str, schema: Struct, append: bool = False):
        what = "TextFileWriter(%r)" % (filename,)
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ArgumentError("TextFileWriter: filename=%r must be a non-empty path"
                                % (filename,))
        names, dtypes = _check_schema(what, schema)
        self._schema = schema
        self.filename = os.fspath(filename)
        self.field_names = names
        self._what = what
        self._dtypes = dtypes
        self._state = _TsvState(self.filename, bool(append))
        self._set_up = False

    @property
    def lines_written(self) -> int:
        """Lines written by the current (or last) run."""
        return self._state.lines

    def setup_ex(self, init_net: core.Net, finish_net: core.Net) -> None:
        if self._set_up:
            return
        init_net.add_attribute("fastpipe.text_file_writer", self._state)
        init_net.Python(_tsv_open_fn(weakref.ref(self._state), self._what))([], [])
        self.commit(finish_net)
        self._set_up = True

    def write(self, writer_net: core.Net, fields) -> None:
        fields = list(fields)
        if len(fields) != len(self.field_names):
            raise GraphError("%s: %d blobs written for %d fields %r"
                             % (self._what, len(fields), len(self.field_names),
                                self.field_names))
        writer_net.add_attribute("fastpipe.text_file_writer", self._state)
        writer_net.Python(_tsv_write_fn(weakref.ref(self._state), self._what,
                                        self.field_names, self._dtypes))(fields, [])

    def commit(self, finish_net: core.Net) -> None:
        finish_net.add_attribute("fastpipe.text_file_writer", self._state)
        finish_net.Python(_tsv_close_fn(weakref.ref(self._state), self._what))([], [])
