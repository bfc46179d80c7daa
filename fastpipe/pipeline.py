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

from . import core, queue_util
from .dataio import Reader, Writer
from .errors import GraphError
from .net_builder import NetBuilder, ops
from .proto import gc_paused
from .schema import Field, as_record
from .task import Node, Task, TaskGroup

__all__ = ["Output", "pipe", "pipe_and_output", "ProcessingReader",
           "NetProcessor", "normalize_processor_output", "make_processor",
           "processor_name", "DEFAULT_QUEUE_CAPACITY"]

DEFAULT_QUEUE_CAPACITY = 100


class Output(object):
    """What a processor returns: nets to run, the output record, and an
    optional stop blob.

    Must be created inside the processor's NetBuilder (``pipe`` provides
    one): with ``nets=None`` it takes (and freezes) that builder's
    children, i.e. what the processor built with ``ops``.
    """

    def __init__(self, nets=None, record=None, should_stop=None):
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
        raise ValueError("output must be a reader, queue or stream.")
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
    """A name for tasks and profiler counters (``function`` for plain
    functions, as in Caffe2 under Python 3)."""
    if hasattr(processor, "name"):
        return processor.name
    if hasattr(processor, "func_name"):
        if processor.func_name == "<lambda>":
            return processor.__module__
        if hasattr(processor, "im_class"):
            return "%s.%s" % (processor.im_class.__name__, processor.func_name)
        return processor.func_name
    return processor.__class__.__name__


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
    body = core.execution_step(
        "body", [timer_start_net] + list(read_nets) + list(write_nets) + [timer_end_net],
        should_stop_blob=status)
    return body, timer_end_net


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
                read_nets, status, rec = reader.read_record_ex(init_net, exit_net)
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
        raise ValueError(
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
