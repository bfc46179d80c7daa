"""Readers and writers (Caffe2's ``caffe2.python.dataio``).

Readers and writers do not move data themselves: they *add operators* to
nets they are handed.  ``read`` appends ops that read the next batch and
returns ``(should_stop, fields)``; ``write`` appends ops that write one
batch.  The read and write nets must be atomic and thread-safe, because a
pipe runs them from several instances at once.

The ``*_ex`` methods split the work by lifetime:

* ``setup_ex(init_net, exit_net)``: ops run once per task run (before /
  after all instances);
* ``read_ex(local_init_net, local_finish_net)`` and ``write_ex``: nets run
  per iteration, plus per-instance init/exit ops.
"""

import time

import numpy as np

from . import core
from .errors import ArgumentError, GraphError, NotSupportedError
from .schema import Field, Struct, from_blob_list

__all__ = ["Reader", "Writer", "ReaderBuilder", "PipedReaderBuilder", "Pipe",
           "CounterReader", "CountUntil", "ReaderWithLimitBase",
           "ReaderWithLimit", "ReaderWithTimeLimit", "ReaderWithDelay",
           "CompositeReader",
           "CompositeReaderBuilder"]


class Reader(object):
    """Base class of readers.  Subclasses implement ``read`` (or
    ``read_ex``) and optionally ``setup_ex`` and ``reset``.

    Example::

        class ConstReader(Reader):
            def read(self, net):
                return net.ConstantFill([], 1, shape=[], dtype=core.DataType.BOOL,
                                        value=True), [net.Const(1)]
    """

    def __init__(self, schema=None):
        if schema is not None and not isinstance(schema, Field):
            raise GraphError("Reader schema must be a schema.Field, got %r"
                             % type(schema).__name__)
        self._schema = schema

    def schema(self):
        if self._schema is None:
            raise GraphError("Schema not provided for this reader.")
        return self._schema

    def _set_schema(self, schema):
        self._schema = schema

    def setup_ex(self, init_net, finish_net):
        """Add ops to run once at task init / task exit."""

    def read_ex(self, local_init_net, local_finish_net):
        """Returns ``(nets, should_stop, fields)``; by default a single
        ``reader_body`` net filled by ``read``."""
        read_net = core.Net("reader_body")
        return ([read_net],) + tuple(self.read(read_net))

    def read_record_ex(self, local_init_net, local_finish_net):
        nets, should_stop, fields = self.read_ex(local_init_net, local_finish_net)
        if self._schema:
            fields = from_blob_list(self._schema, fields)
        return nets, should_stop, fields

    def read(self, read_net):
        """Append ops reading one batch to ``read_net``; return
        ``(should_stop, fields)``, ``should_stop`` a bool scalar blob."""
        raise NotSupportedError("Readers must implement `read`.")

    def reset(self, net):
        """Append ops that rewind the reader (not all readers can)."""
        raise NotSupportedError("This reader cannot be reset.")

    def read_record(self, read_net):
        should_stop, fields = self.read(read_net)
        if self._schema:
            fields = from_blob_list(self._schema, fields)
        return should_stop, fields

    def execution_step(self, reader_net_name=None, external_should_stop=None):
        """A step that loops over a new read net until the data ends.

        Returns:
            ``(read_step, fields)``.
        """
        reader_net = core.Net(reader_net_name or "reader")
        should_stop, fields = self.read_record(reader_net)
        if external_should_stop is not None:
            should_stop = reader_net.Or([external_should_stop, should_stop])
        read_step = core.execution_step(
            "{}_step".format(reader_net_name), reader_net,
            should_stop_blob=should_stop)
        return read_step, fields


class Writer(object):
    """Base class of writers.  Subclasses implement ``write`` and
    optionally ``commit`` (ops run at task exit)."""

    _schema = None

    def schema(self):
        return self._schema

    def write(self, writer_net, fields):
        """Append ops that write one batch (``fields``: blobs)."""
        raise NotSupportedError("Writers must implement write.")

    def write_record(self, writer_net, fields):
        if isinstance(fields, Field):
            self._schema = fields
            fields = fields.field_blobs()
        self.write(writer_net, fields)

    def setup_ex(self, init_net, finish_net):
        self.commit(finish_net)

    def write_ex(self, fields, local_init_net, local_finish_net, stop_blob):
        write_net = core.Net("write_net")
        self.write(write_net, fields)
        return [write_net]

    def write_record_ex(self, fields, local_init_net, local_finish_net,
                        stop_blob=None):
        """Returns ``(write_nets, stop_blob)``; a writer that must stop the
        pipe writes true into ``stop_blob``."""
        if isinstance(fields, Field):
            self._schema = fields
            fields = fields.field_blobs()
        if stop_blob is None:
            stop_blob = local_init_net.NextName("dequeue_status")
        write_nets = self.write_ex(fields, local_init_net, local_finish_net,
                                   stop_blob)
        return write_nets, stop_blob

    def commit(self, finish_net):
        """Append ops that signal the end of data (may be a no-op)."""


class ReaderBuilder(object):
    """Makes readers, e.g. one per trainer in a distributed job."""

    def schema(self):
        raise NotSupportedError()

    def setup(self, **kwargs):
        """One-time setup before ``new_reader`` (call once)."""
        raise NotSupportedError()

    def new_reader(self, **kwargs):
        raise NotSupportedError()


class PipedReaderBuilder(ReaderBuilder):
    """A ReaderBuilder whose readers go through ``piper(reader=..., **kw)``,
    e.g. ``lambda reader, **kw: pipe(reader, processor=f)``."""

    def __init__(self, builder, piper):
        self._builder = builder
        self._piper = piper

    def schema(self):
        return self._builder.schema()

    def setup(self, **kwargs):
        return self._builder.setup(**kwargs)

    def new_reader(self, **kwargs):
        output = self._piper(reader=self._builder.new_reader(**kwargs), **kwargs)
        return output if isinstance(output, Reader) else output.reader()


class Pipe(object):
    """Base of queues and streams: something with a reader and a writer.
    The first writer's schema is adopted; readers and writers attach the
    pipe to their init nets under ``obj_key`` (so its ``setup`` runs)."""

    def __init__(self, schema=None, obj_key=None):
        self._num_writers = 0
        self._num_readers = 0
        self._schema = schema
        self._obj_key = obj_key

    def schema(self):
        return self._schema

    def setup(self, global_init_net):
        pass

    def reader(self):
        raise NotSupportedError()

    def writer(self):
        raise NotSupportedError()

    def num_readers(self):
        return self._num_readers

    def num_writers(self):
        return self._num_writers

    def _new_writer(self, writer_schema, writer_init_net):
        if writer_schema is not None and self._schema is None:
            self._schema = writer_schema
        self._num_writers += 1
        if self._obj_key is not None:
            writer_init_net.add_attribute(self._obj_key, self)

    def _new_reader(self, reader_init_net):
        self._num_readers += 1
        if self._obj_key is not None:
            reader_init_net.add_attribute(self._obj_key, self)


class CounterReader(Reader):
    """Produces 0, 1, 2, ... (schema ``iter: int64``), shared by every
    instance reading from it; never stops by itself."""

    def __init__(self):
        Reader.__init__(self, schema=Struct(("iter", np.int64)))
        self.counter = None
        self.should_stop = None

    def setup_ex(self, global_init_net, global_finish_net):
        if self.counter is None:
            self.counter = global_init_net.CreateCounter([], init_count=0)
            self.should_stop = global_init_net.ConstantFill(
                [], shape=[], dtype=core.DataType.BOOL, value=False)

    def read_ex(self, local_init_net, local_finish_net):
        if self.counter is None:
            raise GraphError("CounterReader: setup_ex not called.")
        count_net = core.Net("limited_reader_counter")
        value = count_net.CountUp([self.counter], 1)
        return [count_net], self.should_stop, [value]


class ReaderWithLimitBase(Reader):
    """A reader that may stop before its inner reader does.

    ``data_finished()`` is a bool blob, created false at task init and
    shared by all instances, that becomes true iff the inner reader ran
    out of data.  Subclasses implement ``setup_limiter`` and
    ``check_limiter_condition``.
    """

    def __init__(self, reader):
        Reader.__init__(self, schema=reader._schema)
        self.reader = reader
        self.net = core.Net("reader_with_limit")
        self._data_finished = self.net.AddExternalInput(
            self.net.NextName("data_finished"))
        self.should_stop = None

    def setup_ex(self, global_init_net, global_finish_net):
        global_init_net.ConstantFill(
            [], [self._data_finished], shape=[], value=False,
            dtype=core.DataType.BOOL)
        self.reader.setup_ex(global_init_net, global_finish_net)
        self.setup_limiter(global_init_net, global_finish_net)

    def read_ex(self, local_init_net, local_finish_net):
        """Nets: [condition -> should_stop] + inner read nets +
        [should_stop <- inner stop; data_finished |= inner stop]."""
        stop_condition_net = core.Net("limited_reader_condition")
        should_stop = self.check_limiter_condition(stop_condition_net)

        nets, local_data_finished, fields = self.reader.read_ex(
            local_init_net, local_finish_net)
        self._set_schema(self.reader._schema)

        check_done_net = core.Net("limited_reader_post")
        # The stop check after the condition net already ran, so reusing
        # should_stop for the inner reader's status is safe.
        check_done_net.Copy(local_data_finished, should_stop)
        check_done_net.Or([self._data_finished, local_data_finished],
                          [self._data_finished])
        return [stop_condition_net] + list(nets) + [check_done_net], should_stop, fields

    def setup_limiter(self, global_init_net, global_finish_net):
        raise NotSupportedError("Subclass must implement `setup_limiter`")

    def check_limiter_condition(self, stop_condition_net):
        raise NotSupportedError("Subclass must implement `check_limiter_condition`")

    def data_finished(self):
        """Bool blob: true iff the inner reader was exhausted (rather than
        stopped by the limit)."""
        return self._data_finished


def _false_blob(net):
    return net.ConstantFill([], 1, shape=[], value=False, dtype=core.DataType.BOOL)


class ReaderWithLimit(ReaderWithLimitBase):
    """Stops after ``num_iter`` reads in total, across all instances (a
    shared CountDown runs before each read, so no record is dropped at the
    limit).  ``None`` means unlimited; 0 reads nothing."""

    def __init__(self, reader, num_iter=1):
        super(ReaderWithLimit, self).__init__(reader)
        self.counter = None
        self.num_iter = num_iter
        if num_iter is not None:
            if int(num_iter) < 0:
                raise GraphError("ReaderWithLimit: num_iter=%r must be >= 0" % num_iter)
            self.counter = self.net.AddExternalInput(self.net.NextName("counter"))

    def setup_limiter(self, global_init_net, global_finish_net):
        if self.counter is not None:
            global_init_net.CreateCounter([], [self.counter],
                                          init_count=int(self.num_iter))

    def check_limiter_condition(self, stop_condition_net):
        if self.counter is not None:
            return stop_condition_net.CountDown([self.counter], 1)
        return _false_blob(stop_condition_net)


def CountUntil(num_iter):
    """A reader producing 0 .. num_iter-1."""
    return ReaderWithLimit(CounterReader(), num_iter)


class ReaderWithTimeLimit(ReaderWithLimitBase):
    """Stops once ``duration`` seconds passed since task init (checked
    before each read).  ``duration`` <= 0 or None means unlimited."""

    def __init__(self, reader, duration=0):
        super(ReaderWithTimeLimit, self).__init__(reader)
        self.timer = None
        self.duration = duration
        self.duration_ns_blob = None

    def setup_limiter(self, global_init_net, global_finish_net):
        if self.duration is not None and self.duration > 0:
            duration_ns = int(self.duration * (10 ** 9))
            self.timer = global_init_net.TimerBegin([], counter_name="epoch_timer")
            self.duration_ns_blob = global_init_net.ConstantFill(
                [], shape=[], value=duration_ns, dtype=core.DataType.INT64)
            global_finish_net.TimerEnd([self.timer], [])

    def check_limiter_condition(self, stop_condition_net):
        if self.duration is not None and self.duration > 0:
            if self.timer is None:
                raise GraphError("ReaderWithTimeLimit: setup_ex not called.")
            elapsed = stop_condition_net.TimerGet(self.timer)
            return stop_condition_net.GE([elapsed, self.duration_ns_blob])
        return _false_blob(stop_condition_net)


class ReaderWithDelay(Reader):
    """Test helper: sleeps ``delay`` seconds (in a Python op) before each
    read of the inner reader."""

    def __init__(self, reader, delay):
        Reader.__init__(self, schema=reader._schema)
        self.reader = reader
        self.delay = delay

    def setup_ex(self, global_init_net, global_finish_net):
        self.reader.setup_ex(global_init_net, global_finish_net)

    def read_ex(self, local_init_net, local_finish_net):
        read_net = core.Net("reader_body")
        delay = self.delay

        def sleep_op(inputs, outputs):
            time.sleep(delay)

        read_net.Python(sleep_op)([], [])
        return ([read_net],) + tuple(self.reader.read(read_net))


class CompositeReader(Reader):
    """Reads from several readers at once (schema: one field per name);
    stops as soon as any of them stops."""

    def __init__(self, names, readers):
        if len(names) != len(readers):
            raise GraphError("CompositeReader: %d names for %d readers"
                             % (len(names), len(readers)))
        super(CompositeReader, self).__init__(schema=Struct(*[
            (name, reader.schema()) for name, reader in zip(names, readers)]))
        self._names = names
        self._readers = readers

    def setup_ex(self, init_net, finish_net):
        for reader in self._readers:
            reader.setup_ex(init_net, finish_net)

    def read_ex(self, local_init_net, local_finish_net):
        fields = []
        stop_blobs = []
        all_nets = []
        for reader in self._readers:
            nets, should_stop, record = reader.read_record_ex(
                local_init_net, local_finish_net)
            stop_blobs.append(should_stop)
            all_nets.append(nets)
            fields.extend(record.field_blobs() if isinstance(record, Field)
                          else list(record))
        # the last reader's stop blob is the composite's; the others are ORed
        # into it right after their own read nets
        local_should_stop = stop_blobs[-1]
        read_nets = []
        for name, nets, stop_blob in zip(self._names, all_nets, stop_blobs):
            read_nets.extend(nets)
            if str(stop_blob) == str(local_should_stop):
                continue
            stop_net = core.Net("{}_stop".format(name))
            stop_net.Or([local_should_stop, stop_blob], local_should_stop)
            read_nets.append(stop_net)
        return read_nets, local_should_stop, fields

    def reset(self, net):
        for reader in self._readers:
            reader.reset(net)


class CompositeReaderBuilder(ReaderBuilder):
    """A ReaderBuilder of CompositeReaders."""

    def __init__(self, names, reader_builders):
        self._names = names
        self._reader_builders = reader_builders
        self._schema = Struct(*[(name, b.schema())
                                for name, b in zip(names, reader_builders)])

    def schema(self):
        return self._schema

    def setup(self, **kwargs):
        data_finished_blobs = {}
        limiter = kwargs.pop("limiter", None)
        for i, builder in enumerate(self._reader_builders):
            if i == len(self._reader_builders) - 1 and limiter is not None:
                kwargs["limiter"] = limiter
            blobs = builder.setup(**kwargs) or {}
            if set(data_finished_blobs) & set(blobs):
                raise GraphError("Overlapping keys: %s"
                                 % (set(data_finished_blobs) & set(blobs)))
            data_finished_blobs.update(blobs)
        return data_finished_blobs

    def new_reader(self, **kwargs):
        readers = []
        for builder in self._reader_builders:
            reader = builder.new_reader(**kwargs)
            if not isinstance(reader, Reader):
                if hasattr(reader, "reader"):
                    reader = reader.reader()
                else:
                    raise ArgumentError("reader must be an instance of Reader or Pipe")
            readers.append(reader)
        return CompositeReader(self._names, readers)
