"""Bounded blob queues as pipes (Caffe2's ``caffe2.python.queue_util``).

A :class:`Queue` is created once per node per run (its ``setup`` is
registered under ``TaskGroup.LOCAL_SETUP`` by every reader and writer), in
the node's workspace before any task starts -- that is how PRIVATE tasks
and runtime instances share it.  Readers and writers each close the queue
in their task's exit net, so the queue closes when *either* side's task
ends: a finished producer lets consumers drain and stop, a finished
consumer stops producers.

Queue semantics (runtime): writes move the blobs into the queue; a closed
queue still drains; a write fails only when the queue is closed and full.
"""

import logging

from . import core, dataio
from .errors import GraphError
from .task import TaskGroup

__all__ = ["QueueWrapper", "Queue", "enqueue", "dequeue", "close_queue"]

logger = logging.getLogger(__name__)


class _QueueReader(dataio.Reader):
    def __init__(self, wrapper, num_dequeue_records=1):
        if wrapper.schema() is None:
            raise GraphError("Queue needs a schema in order to be read from "
                             "(build the pipe that writes it first).")
        dataio.Reader.__init__(self, wrapper.schema())
        self._wrapper = wrapper
        self._num_dequeue_records = num_dequeue_records

    def setup_ex(self, init_net, exit_net):
        exit_net.CloseBlobsQueue([self._wrapper.queue()], 0)

    def read_ex(self, local_init_net, local_finish_net):
        self._wrapper._new_reader(local_init_net)
        dequeue_net = core.Net("dequeue")
        names = self.schema().field_names()
        fields, status_blob = dequeue(
            dequeue_net, self._wrapper.queue(), len(names), field_names=names,
            num_records=self._num_dequeue_records)
        return [dequeue_net], status_blob, fields

    def read(self, net):
        """Append the dequeue to ``net``; return ``(status, fields)`` (status
        true once the queue is closed and drained).  ``net`` also carries
        the queue, so the task that runs it creates the queue at node
        setup."""
        self._wrapper._new_reader(net)
        names = self.schema().field_names()
        fields, status_blob = dequeue(
            net, self._wrapper.queue(), len(names), field_names=names,
            num_records=self._num_dequeue_records)
        return status_blob, fields


class _QueueWriter(dataio.Writer):
    def __init__(self, wrapper):
        self._wrapper = wrapper

    def setup_ex(self, init_net, exit_net):
        exit_net.CloseBlobsQueue([self._wrapper.queue()], 0)

    def write_ex(self, fields, local_init_net, local_finish_net, status):
        self._wrapper._new_writer(self.schema(), local_init_net)
        enqueue_net = core.Net("enqueue")
        enqueue(enqueue_net, self._wrapper.queue(), fields, status)
        return [enqueue_net]


class QueueWrapper(dataio.Pipe):
    """A pipe over an existing queue blob ``handler``."""

    def __init__(self, handler, schema=None, num_dequeue_records=1):
        dataio.Pipe.__init__(self, schema, TaskGroup.LOCAL_SETUP)
        self._queue = handler
        self._num_dequeue_records = num_dequeue_records

    def reader(self):
        return _QueueReader(self, num_dequeue_records=self._num_dequeue_records)

    def writer(self):
        return _QueueWriter(self)

    def queue(self):
        return self._queue


class Queue(QueueWrapper):
    """A bounded queue of records, created at node setup.

    Args:
        capacity: records the queue holds before writers block.
        schema: the record schema; default: the first writer's.
        name: the handler blob is ``<name>/handler`` (made unique).
        num_dequeue_records: records per read, concatenated on dim 0.

    Example::

        q = pipe(reader, num_runtime_threads=2)   # a Queue(capacity=100)
        pipe(q, dataset.writer())
    """

    def __init__(self, capacity, schema=None, name="queue", num_dequeue_records=1):
        if int(capacity) < 1:
            raise GraphError("Queue %r: capacity=%r must be >= 1" % (name, capacity))
        net = core.Net(name)
        queue_blob = net.AddExternalInput(net.NextName("handler"))
        QueueWrapper.__init__(self, queue_blob, schema,
                              num_dequeue_records=num_dequeue_records)
        self.capacity = capacity
        self._setup_done = False

    def setup(self, global_init_net):
        if not self._schema:
            raise GraphError("Queue %s does not have a schema." % self._queue)
        self._setup_done = True
        names = self._schema.field_names()
        global_init_net.CreateBlobsQueue(
            [], [self._queue], capacity=self.capacity, num_blobs=len(names),
            field_names=names)


def enqueue(net, queue, data_blobs, status=None):
    """Append a SafeEnqueueBlobs to ``net``; a blob listed twice is copied
    first (enqueue moves data).  Returns the status blob (true iff the
    write failed: queue closed and full)."""
    if status is None:
        status = net.NextName("status")
    queue_blobs = []
    for blob in data_blobs:
        if blob not in queue_blobs:
            queue_blobs.append(blob)
        else:
            logger.warning("Need to copy blob %s to enqueue", blob)
            queue_blobs.append(net.Copy(blob))
    results = net.SafeEnqueueBlobs([queue] + queue_blobs, queue_blobs + [status])
    return results[-1]


def dequeue(net, queue, num_blobs, status=None, field_names=None, num_records=1):
    """Append a SafeDequeueBlobs to ``net``.  Returns ``(blobs, status)``;
    status is true iff the queue is closed and empty."""
    if field_names is not None:
        if len(field_names) != num_blobs:
            raise GraphError("dequeue: %d field names for %d blobs"
                             % (len(field_names), num_blobs))
        data_names = [net.NextName(name) for name in field_names]
    else:
        data_names = [net.NextName("data", i) for i in range(num_blobs)]
    if status is None:
        status = net.NextName("status")
    results = list(net.SafeDequeueBlobs(queue, data_names + [status],
                                        num_records=num_records))
    status_blob = results.pop(-1)
    return results, status_blob


def close_queue(step, *queues):
    """``[step, close]``: a step that runs ``step`` then closes ``queues``."""
    close_net = core.Net("close_queue_net")
    for queue in queues:
        close_net.CloseBlobsQueue([queue], 0)
    close_step = core.execution_step("%s_step" % str(close_net), close_net)
    return core.execution_step("%s_wraper_step" % str(close_net), [step, close_step])
