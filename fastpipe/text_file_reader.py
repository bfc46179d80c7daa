"""Reading TSV files natively (and writing them back): Caffe2's ``text_file_reader`` module.

:class:`TextFileReader` reads a text file of tab-separated fields, one
record per line, with the ``CreateTextFileReader`` / ``TextFileReaderRead``
operators.  Lines are split and numbers parsed by the native core without
the GIL (``fastpipe/_core/textfile.pxi``); no Python runs per line.
:class:`TextFileWriter` writes records as TSV lines that
:class:`TextFileReader` reads back exactly.
"""

import os
from typing import List, Optional, Tuple

import numpy as np

from fastpipe import core
from fastpipe.dataio import Reader, Writer
from fastpipe.errors import ArgumentError, GraphError
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
    """Validate a TSV schema; returns (field names, DataType codes)."""
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
    types = []
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
        types.append(int(dt))
    return list(names), types


class TextFileWriter(Writer):
    """A writer of a TSV file that :class:`TextFileReader` reads back exactly.

    Args:
        filename: the file to write.
        schema: a ``schema.Struct`` of ``Scalar`` fields, in file order (the
            same field types as :class:`TextFileReader`).
        append: add to the file instead of truncating it at the start of
            each run.

    The file is opened (created; truncated unless ``append``) by the
    ``CreateTextFileWriter`` op in the task init of every run and closed by
    ``TextFileWriterClose`` at the task's exit (``commit``); its output
    ``lines_blob`` (an int64 blob of the task's workspace) holds the number
    of lines written.  Each write
    (``TextFileWriterWrite``) gives one line per record, formatted natively
    with ``std::to_chars``: integers in decimal, floats as the shortest
    string that parses back to the same float32 / float64 (bit-exact round
    trip; NaN is written as ``nan``, losing its sign and payload; infinities
    as ``inf`` / ``-inf``), strings as their UTF-8 bytes.  Each written
    field must be a 1-D tensor of exactly the schema's dtype; a string
    holding a tab, ``\n`` or ``\r`` fails the run (the reader does not
    unescape), naming the file and field.

    Threading: native, without the GIL.  Each runtime instance formats its
    batch into its own buffer without a lock, then appends the whole buffer
    under the writer's mutex: lines of several instances never interleave
    and every record is written exactly once (in no set order across
    instances).

    Example::

        w = TextFileWriter("out.tsv", schema.Struct(
            ("id", schema.Scalar(np.int64)), ("value", schema.Scalar(np.float32))))
        pipeline.pipe(src, w, num_runtime_threads=2)
    """

    def __init__(self, filename: str, schema: Struct, append: bool = False):
        if not isinstance(filename, (str, os.PathLike)) or not os.fspath(filename):
            raise ArgumentError("TextFileWriter: filename=%r must be a non-empty path"
                                % (filename,))
        filename = os.fspath(filename)
        names, types = _check_schema("TextFileWriter(%r)" % filename, schema)
        self._schema = schema
        self.filename = filename
        self.name = filename
        self.field_names = names
        self.append = bool(append)
        self._types = types
        self._writer = None
        self.lines_blob = None

    def setup_ex(self, init_net: core.Net, finish_net: core.Net) -> None:
        """Open the file in ``init_net`` and close it in ``finish_net`` (once:
        a writer shared by several pipes is set up by the first)."""
        from fastpipe.sources import _check_one_group
        if _check_one_group(self, "TextFileWriter") or self._writer is not None:
            return
        self._writer = init_net.CreateTextFileWriter(
            [], init_net.NextScopedBlob("text_file_writer"), filename=self.filename,
            append=self.append, field_types=self._types, field_names=self.field_names)
        self.commit(finish_net)

    def write(self, writer_net: core.Net, fields) -> None:
        """Append a ``TextFileWriterWrite`` of ``fields`` (one blob per field)."""
        if self._writer is None:
            raise GraphError("TextFileWriter(%r): setup_ex not called." % self.filename)
        fields = list(fields)
        if len(fields) != len(self.field_names):
            raise GraphError("TextFileWriter(%r): %d blobs written for %d fields %r"
                             % (self.filename, len(fields), len(self.field_names),
                                self.field_names))
        writer_net.TextFileWriterWrite([self._writer] + fields, [])

    def commit(self, finish_net: core.Net) -> None:
        """Append the ``TextFileWriterClose`` (its output: lines written)."""
        if self._writer is None:
            raise GraphError("TextFileWriter(%r): setup_ex not called." % self.filename)
        self.lines_blob = finish_net.TextFileWriterClose(
            [self._writer], finish_net.NextScopedBlob("text_file_writer_lines"))
