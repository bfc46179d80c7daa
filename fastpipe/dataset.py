"""In-memory datasets with a fixed schema (Caffe2's ``caffe2.python.dataset``).

A :class:`Dataset` is a set of blobs, one per schema field, stored as
native tensors.  Its reader reads batches atomically through a shared tree
cursor (``ReadNextBatch``), so any number of instances can read it
concurrently and every record is read exactly once; its writer appends
under a mutex (``AtomicAppend``).
"""

import weakref
from typing import Optional

import numpy as np

from . import core
from .dataio import Reader, Writer
from .errors import GraphError
from .schema import InitEmptyRecord, Struct, from_blob_list, from_column_list

__all__ = ["Dataset", "Const", "execution_step_with_progress"]


class _DatasetReader(Reader):
    def __init__(self, dataset, name, batch_size=1, enforce_batch_size=False):
        """Use ``dataset.reader()``."""
        Reader.__init__(self, dataset.content())
        self.dataset = dataset
        self.name = name or (dataset.name + "_cursor")
        self.batch_size = batch_size
        self.enforce_batch_size = enforce_batch_size
        self.cursor = None

    def setup_ex(self, init_net, exit_net):
        # guarded: a reader shared by several pipes creates its cursor once
        if self.cursor is None:
            self.cursor = init_net.CreateTreeCursor(
                [], init_net.NextScopedBlob(self.name), fields=self.dataset.fields)

    def read(self, read_net):
        if self.cursor is None:
            raise GraphError("Dataset reader %s: setup_ex not called." % self.name)
        content = self.dataset.content()
        with core.NameScope(read_net.NextName(self.name)):
            fields = read_net.ReadNextBatch(
                [self.cursor] + content.field_blobs(), content.field_names(),
                batch_size=self.batch_size,
                enforce_batch_size=self.enforce_batch_size)
            fields = core.output_to_list(fields)
            return read_net.IsEmpty([fields[0]]), fields

    def reset(self, net):
        net.ResetCursor([self.cursor], [])


class _DatasetRandomReader(Reader):
    def __init__(self, dataset, name, indices, batch_size=1, loop_over=False,
                 enforce_batch_size=False):
        """Use ``dataset.random_reader()``."""
        Reader.__init__(self, dataset.content())
        self.dataset = dataset
        self.cursor = None
        self.name = name or (dataset.name + "_cursor")
        self.indices = indices
        self.offsets = None
        self.batch_size = batch_size
        self.loop_over = loop_over
        self.enforce_batch_size = enforce_batch_size

    def setup_ex(self, init_net, exit_net):
        if self.cursor is None:
            self.cursor = init_net.CreateTreeCursor(
                [], init_net.NextScopedBlob(self.name), fields=self.dataset.fields)

    def reset(self, net):
        net.ResetCursor([self.cursor], [])

    def computeoffset(self, net):
        """Append ops computing the record offsets (needed by ``read``)."""
        self.reset(net)
        self.offsets = net.ComputeOffset(
            [self.cursor] + self.dataset.content().field_blobs(), "offsets")

    def sort_and_shuffle(self, net, sort_by_field=None, shuffle_size=1,
                         batch_size=1):
        """Append ops computing the reading order (``indices``)."""
        content = self.dataset.content()
        sort_by_field_idx = -1
        if sort_by_field:
            if sort_by_field not in content.field_names():
                raise GraphError("sort_by_field %r is not a field of the dataset"
                                 % sort_by_field)
            sort_by_field_idx = content.field_names().index(sort_by_field)
        self.reset(net)
        self.indices = net.SortAndShuffle(
            [self.cursor] + content.field_blobs(), "indices",
            sort_by_field_idx=sort_by_field_idx, shuffle_size=shuffle_size,
            batch_size=batch_size)

    def read(self, read_net):
        if self.cursor is None:
            raise GraphError("Dataset random reader: setup_ex not called")
        if self.indices is None:
            raise GraphError("Dataset random reader: sort_and_shuffle not called")
        if self.offsets is None:
            raise GraphError("Dataset random reader: computeoffset not called")
        content = self.dataset.content()
        with core.NameScope(read_net.NextName(self.name)):
            fields = read_net.ReadRandomBatch(
                [self.cursor, self.indices, self.offsets] + content.field_blobs(),
                content.field_names(), batch_size=self.batch_size,
                enforce_batch_size=self.enforce_batch_size,
                loop_over=self.loop_over)
            fields = core.output_to_list(fields)
            return read_net.IsEmpty([fields[0]]), fields


class _DatasetEpochReader(Reader):
    def __init__(self, dataset, name, batch_size=1, shuffle=False, seed=None,
                 enforce_batch_size=False):
        """Use ``dataset.epoch_reader()``."""
        from . import sources
        Reader.__init__(self, dataset.content())
        self.dataset = dataset
        self.name = name or (dataset.name + "_epoch_cursor")
        self.batch_size = batch_size
        self.enforce_batch_size = enforce_batch_size
        self.shuffle = bool(shuffle)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < sources.SEED_LIMIT):
            raise GraphError("Dataset %s: epoch_reader seed=%r must be an int in [0, 2**63)"
                             % (dataset.name, seed))
        seed_given = seed is not None     # exact resume needs a given seed
        if seed is None and shuffle:
            import secrets
            seed = secrets.randbelow(sources.SEED_LIMIT)
        self.seed = seed
        # the epoch counter (and seed) of the shuffled order
        self._state = sources._ArrayState([], seed if seed is not None else 0, seeded=seed_given)
        self.cursor = None
        self.indices = None
        self.offsets = None
        # Flat numeric datasets (no lengths fields, no strings) are shuffled
        # by ReadArrayBatch through the permutation: one row gather per
        # record.  Nested or string datasets go through ComputeOffset +
        # ReadRandomBatch (whole records, slower).
        self.flat = not any(f.split(":")[-1] == "lengths" for f in dataset.fields) and \
            all(np.dtype(t).base.kind not in "SUO" for t in dataset.field_types)

    @property
    def epoch(self):
        """The next epoch: how many runs have shuffled with this reader so far
        (it counts only when ``shuffle=True``; the permutation of epoch k is
        derived from (seed, k))."""
        return self._state.epoch

    def setup_ex(self, init_net, exit_net):
        # Everything here runs in the task init, i.e. at the start of every
        # run: a new cursor (so every run reads from the first record) and,
        # when shuffling, the offsets and this epoch's permutation.  Guarded:
        # a reader shared by several pipes is set up by the first.
        from . import sources
        if sources._check_one_group(self, "Dataset.epoch_reader") or self.cursor is not None:
            return
        content = self.dataset.content()
        self.cursor = init_net.CreateTreeCursor(
            [], init_net.NextScopedBlob(self.name), fields=self.dataset.fields)
        if self.shuffle:
            key = init_net.NextScopedBlob(self.name + "_epoch_key")
            init_net.add_attribute("fastpipe.sources", self._state)
            init_net.Python(sources._feed_arrays_fn(weakref.ref(self._state), self.name,
                                                    True))([], [key])
            sources._name_last_op(init_net, self.name + "/epoch_key")
            if not self.flat:
                self.offsets = init_net.ComputeOffset(
                    [self.cursor] + content.field_blobs(),
                    init_net.NextScopedBlob(self.name + "_offsets"))
            # field 0 is always in the root domain: its rows are the records
            self.indices = init_net.EpochPermutation(
                [key, content.field_blobs()[0]],
                init_net.NextScopedBlob(self.name + "_permutation"))

    def read(self, read_net):
        if self.cursor is None:
            raise GraphError("Dataset epoch reader %s: setup_ex not called." % self.name)
        content = self.dataset.content()
        if self.shuffle and self.flat:
            scope = read_net.NextName(self.name)
            outs = core.output_to_list(read_net.ReadArrayBatch(
                [self.cursor, self.indices] + content.field_blobs(),
                ["%s/%s" % (scope, f) for f in ["stop"] + content.field_names()],
                batch_size=self.batch_size, enforce_batch_size=self.enforce_batch_size,
                permuted=True))
            return outs[0], outs[1:]
        with core.NameScope(read_net.NextName(self.name)):
            if self.shuffle:
                fields = read_net.ReadRandomBatch(
                    [self.cursor, self.indices, self.offsets] + content.field_blobs(),
                    content.field_names(), batch_size=self.batch_size,
                    enforce_batch_size=self.enforce_batch_size)
            else:
                fields = read_net.ReadNextBatch(
                    [self.cursor] + content.field_blobs(), content.field_names(),
                    batch_size=self.batch_size,
                    enforce_batch_size=self.enforce_batch_size)
            fields = core.output_to_list(fields)
            return read_net.IsEmpty([fields[0]]), fields

    def reset(self, net):
        net.ResetCursor([self.cursor], [])


class _DatasetWriter(Writer):
    def __init__(self, content):
        """Use ``dataset.writer()``."""
        self._content = content
        self.mutex = None

    def setup_ex(self, init_net, exit_net):
        if self.mutex is None:
            self.mutex = init_net.CreateMutex([])

    def write(self, writer_net, fields):
        """Append ops that check ``fields`` against the schema and append
        them to the dataset (atomically, under the writer's mutex)."""
        if self.mutex is None:
            raise GraphError("Dataset writer: setup_ex not called.")
        field_blobs = self._content.field_blobs()
        if len(fields) != len(field_blobs):
            raise GraphError("Expected %s fields, got %s." % (len(field_blobs),
                                                              len(fields)))
        writer_net.CheckDatasetConsistency(
            fields, [], fields=self._content.field_names())
        writer_net.AtomicAppend([self.mutex] + field_blobs + list(fields),
                                field_blobs)

    def commit(self, finish_net):
        """No-op for an in-memory dataset."""


def Const(net, value, dtype=None, name=None):
    """Feed ``value`` into a new uniquely named blob of the current
    workspace now, and declare it an external input of ``net``."""
    from . import workspace
    if not isinstance(net, core.Net):
        raise GraphError("net must be a core.Net instance.")
    value = np.array(value, dtype=dtype)
    blob = net.AddExternalInput(net.NextName(prefix=name))
    workspace.FeedBlob(str(blob), value)
    return blob


def execution_step_with_progress(name, init_net, substeps, rows_read):
    report_net = core.Net("report_net")
    report_net.Print([rows_read], [])
    return core.execution_step(name, substeps, report_net=report_net,
                               concurrent_substeps=True, report_interval=5)


class _CallableList(list):
    """A list that returns itself when called: ``ds.field_types`` works as
    Caffe2's attribute and ``ds.field_types()`` as its documented method."""

    def __call__(self):
        return self


class Dataset(object):
    """An in-memory dataset with a fixed schema.

    Initialise it with ``init_empty(init_net)`` (then fill it with a
    writer) or ``init_from_dataframe``.

    Args:
        fields: a ``schema.Struct`` or a list of field names
            (``'a'``, ``'b:lengths'``, ``'b:values'``...).
        name: prefix of the blobs that hold the data.

    Example::

        ds = Dataset(Struct(('x', Scalar(np.float32))), name='points')
        ds.init_empty(init_net)
        pipe(source_reader, ds.writer())
        pipe(ds.reader(batch_size=16), processor=f, num_runtime_threads=4)
    """

    def __init__(self, fields, name=None):
        if isinstance(fields, list):
            fields = from_column_list(fields)
        elif not isinstance(fields, Struct):
            raise GraphError("fields must be either a Struct or a list of raw "
                             "field names.")
        self.schema = fields
        self.fields = fields.field_names()
        self.field_types = _CallableList(fields.field_types())
        self.name = name or "dataset"
        self.field_blobs = fields.field_blobs() if fields.has_blobs() else None

    def trim(self, net, multiple_of):
        """Append a ``TrimDataset`` op to ``net`` that trims the dataset in
        place so its number of records is a multiple of ``multiple_of``
        (nested fields are cut consistently)."""
        if self.field_blobs is None:
            raise GraphError("Dataset %r: trim needs the dataset's blobs; call "
                             "init_empty or init_from_dataframe first" % self.name)
        net.TrimDataset(self.field_blobs, self.field_blobs, fields=self.fields,
                        multiple_of=multiple_of)

    def init_empty(self, init_net):
        """Append ops to ``init_net`` that create empty blobs for every field."""
        self.field_blobs = InitEmptyRecord(
            init_net, self.schema.clone_schema()).field_blobs()

    def init_from_dataframe(self, net, dataframe):
        """Feed each column of a pandas DataFrame into the current workspace
        now; ``net`` takes the blobs as external inputs."""
        if len(self.fields) != len(dataframe.columns):
            raise GraphError("DataFrame has %d columns for %d fields"
                             % (len(dataframe.columns), len(self.fields)))
        self.field_blobs = [
            Const(net, np.asarray(dataframe.iloc[:, col]).flatten(), name=field)
            for col, field in enumerate(self.fields)]

    def get_blobs(self):
        """The blobs holding the data, in field order."""
        return self.field_blobs

    def content(self):
        """A record of the blobs holding the whole content."""
        return from_blob_list(self.schema, self.field_blobs)

    def field_names(self):
        return self.fields

    def get_record(self):
        """Alias of :meth:`content` (the dataset's record of blobs)."""
        return self.content()

    def _check_initialized(self):
        if not self.field_blobs:
            raise GraphError("Dataset %s not initialized." % self.name)

    def reader(self, init_net=None, cursor_name=None, batch_size=1,
               enforce_batch_size=False):
        """A reader over the dataset.  The cursor is created once: now in
        ``init_net`` if given, else in the first task init it is set up in.

        Every read takes the next ``batch_size`` records atomically; the
        reader stops when a read returns no record.  The cursor reads the
        data once: a later run that finds it at the end reads nothing and
        warns (``fastpipe.errors.FastpipeWarning``); use
        :meth:`epoch_reader` for a reader that starts afresh every run.
        """
        self._check_initialized()
        reader = _DatasetReader(self, cursor_name, batch_size, enforce_batch_size)
        if init_net is not None:
            reader.setup_ex(init_net, None)
        return reader

    def epoch_reader(self, batch_size: int = 1, shuffle: bool = False,
                     seed: Optional[int] = None,
                     enforce_batch_size: bool = False) -> Reader:
        """A reader that starts afresh at every run (every epoch).

        Unlike :meth:`reader`, whose cursor is made once and so reads the
        data once (a re-run whose cursor is already at the end reads nothing
        and warns with ``FastpipeWarning``), this reader sets itself up in
        the task init, i.e. at the start of every run: a new cursor at the
        first record and, with ``shuffle=True``, a fresh permutation of the
        records for this epoch (``fastpipe.sources`` defines epochs: the
        reader's k-th run is its epoch k; the permutations follow from
        ``seed``, the same in every process).  Nested fields (lengths)
        are shuffled by whole records.

        Args:
            batch_size: records per read (the last batch may be shorter).
            shuffle: read each epoch in a fresh random order.
            seed: with ``shuffle``, fixes the sequence of permutations (an
                int in ``[0, 2**63)``); None draws one for this reader.
            enforce_batch_size: drop a short last batch.

        Threading: any number of runtime instances read it concurrently,
        every record exactly once per epoch (one shared cursor); reads run
        natively without the GIL (the shuffled reader's task init makes one
        short Python call per run to hand over the epoch).

        Example::

            reader = ds.epoch_reader(batch_size=64, shuffle=True, seed=0)
            with TaskGroup() as tg:
                pipe(reader, processor=f, num_runtime_threads=4)
            for epoch in range(3):
                session.run(tg)          # three epochs, three orders
        """
        self._check_initialized()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GraphError("Dataset %s: epoch_reader batch_size=%r must be an int >= 1"
                             % (self.name, batch_size))
        return _DatasetEpochReader(self, None, batch_size, shuffle, seed, enforce_batch_size)

    def random_reader(self, init_net=None, indices=None, cursor_name=None,
                      batch_size=1, loop_over=False, enforce_batch_size=False):
        """A reader following the order in ``indices`` (see
        ``sort_and_shuffle``/``computeoffset`` on the reader)."""
        self._check_initialized()
        reader = _DatasetRandomReader(self, cursor_name, indices, batch_size,
                                      loop_over, enforce_batch_size)
        if init_net is not None:
            reader.setup_ex(init_net, None)
        return reader

    def writer(self, init_net=None):
        """A writer appending records to the dataset (thread-safe)."""
        self._check_initialized()
        writer = _DatasetWriter(self.content())
        if init_net is not None:
            writer.setup_ex(init_net, None)
        return writer
