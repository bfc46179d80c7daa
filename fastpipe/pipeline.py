"""Pipes: read -> process -> write tasks (Caffe2's ``caffe2.python.pipeline``).

``pipe(input, output, processor=f, num_runtime_threads=N)`` builds one Task
that repeats [read, process, write] until the reader (or the writer) sets
the shared status blob.  The description is built **once**; the Task
records ``num_instances=N`` and the runtime makes the N instances, each in
its own child workspace::

    with TaskGroup() as tg:
        q = pipe(dataset.reader(), processor=double, num_runtime_threads=4)
        pipe(q, out_dataset.writer())
    LocalSession().run(tg)

The deprecated ``num_threads=N`` builds N copies of the pipe in Python
(names prefixed ``t:i/``) running as concurrent substeps of one task in a
shared workspace; it costs N times the build work.
"""

import threading
from typing import Any, Callable, Optional, Sequence, Union

from . import _pyop, core, queue_util
from .dataio import Reader, Writer
from .errors import ArgumentError, GraphError
from .net_builder import NetBuilder, ops
from .proto import gc_paused
from .schema import Field, Scalar, as_record, from_column_list
from .task import Node, Task, TaskGroup

__all__ = ["Output", "pipe", "pipe_and_output", "ProcessingReader",
           "NetProcessor", "PythonProcessor", "normalize_processor_output",
           "make_processor", "processor_name", "DEFAULT_QUEUE_CAPACITY"]

DEFAULT_QUEUE_CAPACITY = 100


class Output(object):
    """What a processor returns: nets to run, the output record, and an
    optional stop blob.

    Must be created inside the processor's NetBuilder (``pipe`` provides
    one): with ``nets=None`` it takes (and freezes) that builder's
    children, i.e. what the processor built with ``ops``.

    ``keep`` (fastpipe, not Caffe2): a bool scalar blob the processor's nets
    set; false drops the record -- :func:`pipe` then skips the rest of the
    iteration (later processors and the write) and reads the next record.
    :class:`PythonProcessor` uses it for a function that returns None.
    """

    def __init__(self, nets=None, record=None, should_stop=None, keep=None):
        builder = NetBuilder.current(required=False)
        if builder is None:
            raise GraphError("pipeline.Output needs an active NetBuilder "
                             "(create it inside a processor).")
        builder_children = builder.get()
        if nets is not None and builder_children:
            raise GraphError("Cannot both use `ops` syntax and return a list of nets.")
        if nets is None:
            nets = builder_children
        if isinstance(nets, core.Net):
            nets = [nets]
        self.nets = [] if nets is None else list(nets)
        self.record = None if record is None else as_record(record)
        self.should_stop = should_stop
        self.keep = keep


def _init_output(output, capacity, global_init_net, global_exit_net):
    if output is None:
        out_queue = queue_util.Queue(
            capacity=capacity if capacity is not None else DEFAULT_QUEUE_CAPACITY)
        writer = out_queue.writer()
    elif isinstance(output, Writer):
        if capacity is not None:
            raise GraphError("capacity would not be used with a Writer output.")
        out_queue = None
        writer = output
    elif hasattr(output, "writer"):
        if capacity is not None:
            raise GraphError("capacity would not be used with this output.")
        out_queue = output
        writer = output.writer()
    else:
        raise ArgumentError("output must be a reader, queue or stream.")
    writer.setup_ex(global_init_net, global_exit_net)
    return out_queue, writer


def make_processor(processor, reader=None):
    """None -> identity; a Net -> NetProcessor; anything else unchanged."""
    if processor is None:
        return lambda rec: rec
    if isinstance(processor, core.Net):
        return NetProcessor(processor)
    if reader is not None and hasattr(processor, "schema_func"):
        def processor_schema():
            return processor.schema_func(reader)
        processor.schema = processor_schema
    return processor


def normalize_processor_output(output):
    """Map what a processor returned to an :class:`Output`:

    * an Output -> itself;
    * a record (Field) -> ``Output(record=...)``;
    * ``(record, stop_blob)`` -> record plus stop;
    * any other tuple -> ``Output(nets, record, stop)``;
    * anything else -> ``Output(nets)``.
    """
    if isinstance(output, Output):
        return output
    if isinstance(output, Field):
        return Output(record=output)
    if isinstance(output, tuple):
        if (len(output) == 2 and isinstance(output[0], Field)
                and isinstance(output[1], core.BlobReference)):
            return Output(None, *output)
        return Output(*output)
    return Output(output)


def processor_name(processor):
    """A name for tasks and profiler counters (and so for stages in errors,
    ``to_dot`` and ``run.stats()``): the processor's ``name`` (NetProcessor,
    PythonProcessor, named readers), a function's or method's
    ``__qualname__`` (Caffe2 under Python 3 said ``function``; a lambda is
    ``<lambda> at file.py:LINE``), a queue's blob name, otherwise the class
    name (readers, writers)."""
    name = getattr(processor, "name", None)
    if isinstance(name, str) and name:
        return name
    if not isinstance(processor, type) and callable(getattr(processor, "queue", None)):
        try:
            blob = str(processor.queue())      # a queue_util.QueueWrapper
        except Exception:
            blob = ""
        if blob:
            return blob[:-len("/handler")] if blob.endswith("/handler") else blob
    return _callable_name(processor, processor.__class__.__name__)


def pipe(input, output=None, num_threads=1, processor=None, name=None,
         capacity=None, group=None, num_runtime_threads=1):
    """Create a Task that pipes ``input`` into ``output``.

    Args:
        input: a Reader, or anything with ``.reader()`` (Queue, Dataset...).
        output: a Writer, anything with ``.writer()``, or None for a new
            ``Queue(capacity or 100)``.
        num_threads: deprecated static copies (built N times in Python); 0
            returns a lazy reader and creates no task.
        processor: a function ``record -> Output | record | (record, stop)
            | (nets, record, stop) | nets``, or a Net (NetProcessor).
        name: the task name (default from processor/output/input).
        capacity: capacity of the new output queue.
        group: the TaskGroup (default: the active one).
        num_runtime_threads: N runtime instances of one description; 0 is
            like ``num_threads=0``.

    Returns:
        The new output queue, the output object if it has ``.writer()``,
        a reader (count 0), or None.
    """
    result, _ = _pipe_step(input, output, num_threads, processor, name,
                           capacity, group, num_runtime_threads)
    return result


def pipe_and_output(input, output=None, num_threads=1, processor=None, name=None,
                    capacity=None, group=None, num_runtime_threads=1,
                    final_outputs=None):
    """Like :func:`pipe`, and also returns the task's outputs.

    Returns:
        ``(result, outputs)``: ``outputs`` is the task's TaskOutput list, a
        single TaskOutput if ``final_outputs`` is not a list, or None.
    """
    if not num_threads > 0:
        raise GraphError("pipe_and_output: num_threads=%r must be > 0" % (num_threads,))
    result, task = _pipe_step(input, output, num_threads, processor, name,
                              capacity, group, num_runtime_threads, final_outputs)
    outputs = None
    if final_outputs is not None:
        outputs = task.outputs()
        if type(final_outputs) not in (list, tuple):
            outputs = outputs[0]
    return result, outputs


def _profiler_name(name, input, output):
    return "{0}/{1}/{2}/{3}/{4}".format(
        str(Node.current()), "pipe", name,
        processor_name(input) if input is not None else "NoInput",
        processor_name(output) if output is not None else "NoOutput")


def _timed_body(read_nets, write_nets, status, profiler_name):
    """The loop step [timer start, reads, writes, timer end] until status,
    plus the net that ends the timer after the loop (a stop skips the
    in-loop one)."""
    timer_start_net = core.Net("timer_start")
    timer = timer_start_net.TimerBegin([], counter_name=profiler_name)
    timer_end_net = core.Net("timer_end")
    timer_end_net.TimerEnd(timer, [])
    items = _nest_drops(list(read_nets) + list(write_nets), status)
    body = core.execution_step(
        "body", [timer_start_net] + items + [timer_end_net],
        should_stop_blob=status)
    return body, timer_end_net


# The attribute of a drop guard (ProcessingReader.read_ex): the step running a
# processor's nets whose last net computes this bool blob, true when the
# record is dropped.
_DROPPED_ATTR = "_fastpipe_dropped"


def _nest_drops(items, status):
    """Make each drop guard in ``items`` (nets and steps of one iteration)
    skip what follows it when it drops the record.

    A guard G is replaced by a step [G, rest] with ``should_stop_blob`` =
    G's dropped blob and ``only_once``: the stop blob is checked after each
    substep, so after G has computed it.  ``rest`` runs the following items
    as a step with ``should_stop_blob=status``, ``only_once``, so the
    reader's or writer's status still ends the iteration after any net, as
    in the flat body; the enclosing loop then sees the status.  A dropped
    record leaves the status false: the loop goes on with the timer end and
    the next read."""
    for i, item in enumerate(items):
        dropped = getattr(item, _DROPPED_ATTR, None)
        if dropped is None:
            continue
        rest = _nest_drops(items[i + 1:], status)
        substeps = [item]
        if rest:
            substeps.append(core.execution_step(item.Name() + ":rest", rest,
                                                should_stop_blob=status, only_once=True))
        guarded = core.execution_step(item.Name() + ":unless_dropped", substeps,
                                      should_stop_blob=dropped, only_once=True)
        return items[:i] + [guarded]
    return items


def _reset_status(init_net, status):
    init_net.ConstantFill([], [status], shape=[], value=False,
                          dtype=core.DataType.BOOL)


def _runtime_threads_task(name, group, final_outputs, reader, num_threads,
                          input, output, capacity):
    profiler_name = _profiler_name(name, input, output)
    with Task(name=name, group=group, outputs=final_outputs,
              num_instances=num_threads) as task:
        global_exit_net = core.Net("pipe:exit")
        global_init_net = core.Net("pipe:init")
        reader.setup_ex(global_init_net, global_exit_net)

        init_net = core.Net("pipe:instance:init")
        exit_net = core.Net("pipe:instance:exit")
        read_nets, status, rec = reader.read_record_ex(init_net, exit_net)
        # a status left true by an earlier run would end the loop after
        # its first net (the stop check runs after each net)
        _reset_status(init_net, status)

        if rec is not None:
            out_queue, writer = _init_output(output, capacity, global_init_net,
                                             global_exit_net)
            write_nets, _ = writer.write_record_ex(rec, init_net, exit_net, status)
        else:
            out_queue = None
            write_nets = []

        with ops.task_init():
            ops.net(global_init_net)
        with ops.task_instance_init():
            ops.net(init_net)

        body, timer_end_net = _timed_body(read_nets, write_nets, status, profiler_name)
        ops.net(body)
        ops.net(timer_end_net)

        with ops.task_instance_exit():
            ops.net(exit_net)
        with ops.task_exit():
            ops.net(global_exit_net)
    return out_queue, task


def _static_threads_task(name, group, final_outputs, reader, num_threads,
                         input, output, capacity):
    profiler_name = _profiler_name(name, input, output)
    with Task(name=name, group=group, outputs=final_outputs) as task:
        global_exit_net = core.Net("exit")
        global_init_net = core.Net("init")
        reader.setup_ex(global_init_net, global_exit_net)

        out_queue = None
        writer = None
        steps = []
        for thread_id in range(num_threads):
            with NetBuilder(name="t:%d" % thread_id) as nb:
                init_net = core.Net("init")
                exit_net = core.Net("exit")
                # a PythonProcessor built here gives its factory this copy's index
                _static_copy.value = (thread_id, num_threads)
                try:
                    read_nets, status, rec = reader.read_record_ex(init_net, exit_net)
                finally:
                    _static_copy.value = None
                _reset_status(init_net, status)
                if rec is not None:
                    if writer is None:
                        # create the output under the task's name, not t:i
                        with NetBuilder(_fullname=task.name):
                            out_queue, writer = _init_output(
                                output, capacity, global_init_net, global_exit_net)
                    write_nets, _ = writer.write_record_ex(rec, init_net, exit_net,
                                                           status)
                else:
                    write_nets = []
                body, timer_end_net = _timed_body(read_nets, write_nets, status,
                                                  profiler_name)
                ops.net(init_net)
                ops.net(body)
                ops.net(timer_end_net)
                ops.net(exit_net)
            steps.append(core.to_execution_step(nb))
        ops.net(global_init_net)
        ops.net(core.execution_step("body", steps, concurrent_substeps=True))
        ops.net(global_exit_net)
    return out_queue, task


def _pipe_step(input, output=None, num_threads=1, processor=None, name=None,
               capacity=None, group=None, num_runtime_threads=None,
               final_outputs=None):
    if num_runtime_threads is None:
        num_runtime_threads = 1
    if num_threads > 1 and num_runtime_threads > 1:
        raise GraphError("Only one of num_threads or num_runtime_threads must be set.")
    if num_threads < 0 or num_runtime_threads < 0:
        raise GraphError("num_threads=%r and num_runtime_threads=%r must be >= 0"
                         % (num_threads, num_runtime_threads))

    if isinstance(input, Reader):
        reader = input
    elif hasattr(input, "reader"):
        reader = input.reader()
    else:
        raise ArgumentError(
            "Input must be a reader, queue or stream. Got {}".format(type(input)))

    if processor is not None:
        reader = ProcessingReader(reader, processor)

    if num_threads == 0 or num_runtime_threads == 0:
        if output is not None:
            raise GraphError("pipe with 0 threads returns a reader; "
                             "output must be None.")
        return reader, None

    if name is None and processor is not None:
        name = processor_name(processor)
    if name is None and output is not None:
        name = "pipe_into:%s" % processor_name(output)
    if name is None:
        name = "pipe_from:%s" % processor_name(input)

    # building a pipe allocates many long-lived graph objects (N copies of
    # it with num_threads=N): see fastpipe.proto.gc_paused
    with gc_paused():
        if num_threads > 1:
            return _static_threads_task(name, group, final_outputs, reader,
                                        num_threads, input, output, capacity)
        return _runtime_threads_task(name, group, final_outputs, reader,
                                     num_runtime_threads, input, output, capacity)


class ProcessingReader(Reader):
    """Reads a record from ``reader`` and passes it through ``processor``
    (called inside a fresh NetBuilder, once per build of the read nets)."""

    def __init__(self, reader, processor):
        Reader.__init__(self)
        self.reader = reader
        self.processor = make_processor(processor, reader)

    def schema(self):
        return self.processor.schema()

    def setup_ex(self, init_net, finish_net):
        self.reader.setup_ex(init_net, finish_net)

    def read_ex(self, init_net, exit_net):
        read_nets, status, rec = self.reader.read_record_ex(init_net, exit_net)
        read_nets = list(read_nets)
        # The processor may use `ops`; Output() takes this builder's children.
        with NetBuilder() as nb:
            result = normalize_processor_output(self.processor(rec))
        if result.keep is not None:
            read_nets.append(_drop_guard(result, status, processor_name(self.processor)))
        else:
            read_nets += result.nets
        if result.should_stop is not None or nb._stop_blob is not None:
            stop_net = core.Net("stop_net")
            if result.should_stop is not None:
                stop_net.Or([status, result.should_stop], [status])
            if nb._stop_blob is not None:
                stop_net.Or([status, nb._stop_blob], [status])
            read_nets.append(stop_net)
        if hasattr(self.processor, "setup"):
            init_net.add_attribute(TaskGroup.LOCAL_SETUP, self.processor)
        self._set_schema(result.record)
        fields = result.record.field_blobs() if result.record else None
        return read_nets, status, fields


class NetProcessor(object):
    """A processor that clones ``net`` (with ``clone_and_bind_net``) for
    each read-net build, binding the incoming record to the net's input
    record.  The net needs ``set_input_record`` and optionally
    ``set_output_record``.

    ``thread_init_nets`` are cloned the same way and returned by
    ``setup()`` (node-level init).  After ``setup()`` the processor is
    frozen.
    """

    def __init__(self, net, stop_signal=None, thread_init_nets=None, name=None):
        if not isinstance(net, core.Net):
            raise GraphError("NetProcessor expects a core.Net, got %r"
                             % type(net).__name__)
        if stop_signal is not None and not isinstance(stop_signal, core.BlobReference):
            raise GraphError("NetProcessor: stop_signal must be a BlobReference")
        self.name = name or str(net)
        self.thread_init_nets = thread_init_nets or []
        self.net = net
        self._stop_signal = stop_signal
        self._blob_maps = []
        self._frozen = False
        self._cloned_init_nets = []

    def schema(self):
        return self.net.output_record()

    def setup(self, init_net):
        self._frozen = True
        cloned_init_nets = self._cloned_init_nets
        self._cloned_init_nets = []
        return cloned_init_nets

    def __call__(self, rec):
        if self._frozen:
            raise GraphError("NetProcessor %s is frozen (setup() already ran)"
                             % self.name)
        prefix = NetBuilder.current().name + "/"
        blob_remap = {}
        for net in self.thread_init_nets:
            new_net, _ = core.clone_and_bind_net(net, str(net) + prefix, prefix,
                                                 blob_remap)
            self._cloned_init_nets.append(new_net)

        new_net, remappings = core.clone_and_bind_net(
            self.net, str(self.net) + prefix, prefix, blob_remap, rec)

        if self._stop_signal is None:
            stop_signal = None
        elif str(self._stop_signal) in remappings:
            stop_signal = core.BlobReference(remappings[str(self._stop_signal)],
                                             net=new_net)
        else:
            stop_signal = self._stop_signal

        self._blob_maps.append(remappings)
        return Output([new_net], new_net.output_record(), stop_signal)

    def blob_maps(self):
        self._frozen = True
        return self._blob_maps


def _drop_guard(result, status, name):
    """The step running ``result.nets`` and then computing ``dropped`` =
    not (keep or status): a record is dropped when the processor cleared
    ``keep``, unless the reader has already ended (then the rest of the
    iteration must still run to pass the end on, e.g. ReaderWithLimit's
    post net).  pipe() nests the rest of the iteration under it
    (:func:`_nest_drops`); elsewhere it runs as a plain step."""
    check = core.Net("drop_check")
    alive = check.Or([result.keep, status], check.NextName("alive"))
    dropped = check.Not(alive, check.NextName("dropped"))
    guard = core.execution_step("%s:stage" % name, list(result.nets) + [check])
    setattr(guard, _DROPPED_ATTR, dropped)
    return guard


# (index, count) of the static pipe copy (num_threads=N) being built on this
# thread, or None: read by PythonProcessor so each copy's factory gets its index.
_static_copy = threading.local()
_static_copy.value = None


def _callable_name(f, default=None):
    """A function's ``__qualname__``; a lambda's is ``<lambda> at file.py:LINE``
    (its qualname says only where it was written); a partial's is its
    function's; another callable's its class's."""
    import functools
    import os
    if isinstance(f, functools.partial):
        return _callable_name(f.func, default)
    name = getattr(f, "__qualname__", None)
    if isinstance(name, str) and name:
        if name.endswith("<lambda>"):
            code = getattr(f, "__code__", None)
            if code is not None:
                return "<lambda> at %s:%d" % (os.path.basename(code.co_filename),
                                              code.co_firstlineno)
        return name
    return default if default is not None else type(f).__qualname__


class PythonProcessor(object):
    """A per-record Python stage for :func:`pipe` (beside :class:`NetProcessor`).

    At run time ``fn`` is called with the record's field arrays as positional
    arguments -- numpy views of the blobs, no copy -- and returns one array,
    a tuple of arrays, a dict by output field name, or ``None`` to drop the
    record (a filter).  The output fields keep the input's names when
    ``outputs`` is not given (``fn`` must then return as many arrays as the
    record has fields); ``outputs=("y",)`` names them otherwise.  Returned
    arrays are copied into the output blobs without the GIL (an input array
    returned unchanged is passed on without a copy).

    Threading: each runtime instance (``pipe(..., num_runtime_threads=N)``)
    runs the stage on its own native thread; only the call of ``fn`` (and
    the check of its result) holds the GIL, so a function that releases the
    GIL (numpy sorting and reductions, zlib, file reads) runs N-way parallel.
    With ``fn`` every instance calls the same function, so it must be safe to
    call from several threads at once.  With ``factory``,
    ``factory(instance_id, num_instances)`` is called once per runtime
    instance in every run, when the run sets the instance up (with
    ``num_runtime_threads > 1`` on the instance's own thread), and returns
    that instance's function: per-instance state (an RNG, a tokenizer, a
    file handle) needs no locking.  In the static copies of ``num_threads=N``
    it gets the copy's index and N.

    An exception in the function fails the run: ``run``/``iterate`` raise a
    :class:`fastpipe.errors.RunError` naming the stage (``name``, else the
    function's ``__qualname__``), the runtime instance and the record's
    position (``record #k read by instance i``), with the exception as
    ``__cause__``.

    Example::

        def make(instance_id, num_instances):
            rng = np.random.default_rng(instance_id)
            return lambda ids, x: (ids, x + rng.normal(size=x.shape).astype(np.float32))

        with TaskGroup() as tg:
            q = pipe(reader, processor=PythonProcessor(factory=make),
                     num_runtime_threads=4)
    """

    def __init__(self, fn: Optional[Callable[..., Any]] = None, *,
                 factory: Optional[Callable[[int, int], Callable[..., Any]]] = None,
                 outputs: Optional[Union[str, Sequence[str]]] = None,
                 name: Optional[str] = None) -> None:
        if (fn is None) == (factory is None):
            raise GraphError("PythonProcessor: give exactly one of fn or factory=, got %s"
                             % ("both" if fn is not None else "neither"))
        target = fn if fn is not None else factory
        if not callable(target):
            raise GraphError("PythonProcessor: %s=%r is not callable"
                             % ("fn" if fn is not None else "factory", target))
        if name is not None and (not isinstance(name, str) or not name):
            raise GraphError("PythonProcessor: name=%r must be a non-empty str" % (name,))
        if outputs is not None:
            if isinstance(outputs, str):
                outputs = (outputs,)
            outputs = tuple(outputs)
            if not outputs:
                raise GraphError("PythonProcessor: outputs=() names no field")
            for o in outputs:
                if not isinstance(o, str) or not o:
                    raise GraphError("PythonProcessor: output field names must be non-empty "
                                     "strs, got %r" % (o,))
            if len(set(outputs)) != len(outputs):
                raise GraphError("PythonProcessor: output field names %r are not unique"
                                 % (outputs,))
        self.fn = fn
        self.factory = factory
        self.outputs = outputs
        self.name = name if name is not None else _callable_name(target)
        self._token = _pyop.register(fn if fn is not None else (factory, (), {}))
        self._record = None

    def schema(self) -> Optional[Field]:
        """The output record of the last build (None before the first)."""
        return self._record

    def __call__(self, rec: Any) -> Output:
        """Add the stage's op for the input record ``rec`` (called by pipe /
        ProcessingReader at build time, inside its NetBuilder) and return the
        Output: the stage net, the output record and the ``keep`` blob."""
        if isinstance(rec, Field):
            blobs = rec.field_blobs()
            names = rec.field_names()
        else:
            blobs = list(rec)
            names = ["field_%d" % i for i in range(len(blobs))]
        if not blobs:
            raise GraphError("PythonProcessor %r: the input record has no fields"
                             % self.name)
        out_names = list(self.outputs) if self.outputs is not None else list(names)
        net = core.Net(self.name)
        out_blobs = [net.NextName(n or "out") for n in out_names]
        keep = net.NextName("keep")
        args = {"token": self._token, "fields": out_names, "stage": self.name}
        copy = getattr(_static_copy, "value", None)
        if copy is not None:
            args["instance"], args["num_instances"] = copy
        net.PythonStage([str(b) for b in blobs], out_blobs + [keep], name=self.name,
                        **args)
        out_refs = [core.BlobReference(b, net=net) for b in out_blobs]
        if out_names == [""]:
            record = Scalar(blob=out_refs[0])   # a bare Scalar in, one out
        else:
            record = from_column_list(out_names, col_blobs=out_refs)
        self._record = record
        return Output([net], record, keep=core.BlobReference(keep, net=net))

    def __repr__(self) -> str:
        return "PythonProcessor(%r)" % self.name
