"""Tests of fastpipe.queue_util: graph checks, and runtime tests (need
fastpipe.workspace) of producers and consumers through one queue."""

import numpy as np
import pytest

from fastpipe import core, schema
from fastpipe.dataio import CountUntil, Writer
from fastpipe.errors import GraphError
from fastpipe.pipeline import pipe
from fastpipe.queue_util import Queue, close_queue, dequeue, enqueue
from fastpipe.task import TaskGroup


def to_row(rec):
    """Processor: int64 scalar -> int64 [1] (batchable by the queue)."""
    from fastpipe.net_builder import ops
    with ops.task_init():
        zero = ops.ConstantFill([], shape=[1], value=0, dtype=core.DataType.INT64)
    row = ops.Add([zero, rec.field_blobs()[0]], broadcast=1)
    return schema.Struct(("iter", schema.Scalar(np.int64, row)))


class AppendWriter(Writer):
    """Appends every written int64 field to one blob (under a mutex)."""

    def __init__(self, name, scalar_records=True):
        self.name = name
        self.scalar_records = scalar_records
        self.mutex = None
        self.store = core.BlobReference(name + "/store")

    def setup_ex(self, init_net, exit_net):
        if self.mutex is None:
            self.mutex = init_net.CreateMutex([], [self.name + "/mutex"])
            self.zero = init_net.ConstantFill([], [self.name + "/zero"], shape=[1],
                                              value=0, dtype=core.DataType.INT64)

    def init(self, net):
        net.ConstantFill([], [self.store], shape=[0], dtype=core.DataType.INT64)

    def write(self, net, fields):
        # scalar or batch -> at least 1-d (B broadcast over a [1] zero)
        row = fields[0]
        if self.scalar_records:
            row = net.Add([self.zero, row], broadcast=1)
        net.AtomicAppend([self.mutex, self.store, row], [self.store])


# --- graph only ---------------------------------------------------------------


def test_queue_handler_names_are_unique():
    q1, q2 = Queue(4, name="qq"), Queue(4, name="qq")
    assert str(q1.queue()) != str(q2.queue())
    assert str(q1.queue()).endswith("handler")


def test_reading_a_queue_without_schema_raises():
    with pytest.raises(GraphError):
        Queue(4).reader()
    with pytest.raises(GraphError):
        Queue(0)


def test_enqueue_copies_duplicated_blobs():
    net = core.Net("dup")
    q = core.BlobReference("q")
    status = enqueue(net, q, [core.BlobReference("a"), core.BlobReference("a")])
    types = [op.type for op in net.Proto().op]
    assert types == ["Copy", "SafeEnqueueBlobs"]
    op = net.Proto().op[-1]
    assert op.input[1] != op.input[2]
    assert op.output[-1] == str(status)


def test_dequeue_names_and_count_check():
    net = core.Net("deq")
    blobs, status = dequeue(net, core.BlobReference("q"), 2,
                            field_names=["a", "b"], num_records=3)
    assert len(blobs) == 2
    op = net.Proto().op[0]
    assert op.type == "SafeDequeueBlobs"
    assert [a.i for a in op.arg if a.name == "num_records"] == [3]
    with pytest.raises(GraphError):
        dequeue(net, core.BlobReference("q"), 2, field_names=["a"])


def test_queue_is_created_in_node_setup_and_closed_by_both_sides():
    with TaskGroup() as tg:
        q = pipe(CountUntil(3), capacity=7)
        pipe(q, AppendWriter("w_graph"))
    step = tg.to_task().get_step()
    init = step.Substeps()[0]
    assert init.Name() == "local:init"
    ops = [op for n in init.Nets() for op in n.Proto().op]
    creates = [op for op in ops if op.type == "CreateBlobsQueue"]
    assert len(creates) == 1
    assert [a.i for a in creates[0].arg if a.name == "capacity"] == [7]
    closes = [op for t in tg.tasks() for n in t.get_step().Substeps()[-1].Nets()
              for op in n.Proto().op if op.type == "CloseBlobsQueue"]
    assert len(closes) == 2


# --- runtime ------------------------------------------------------------------


def _runtime():
    return pytest.importorskip("fastpipe.workspace")


def _run_producer_consumer(num_records, producers, consumers, capacity,
                           num_dequeue_records=1):
    workspace = _runtime()
    from fastpipe.session import LocalSession
    ws = workspace.C.Workspace()
    writer = AppendWriter("pc_%d_%d_%d_%d" % (num_records, producers, consumers,
                                              capacity),
                          scalar_records=num_dequeue_records == 1)
    init = core.Net("pc_init")
    writer.init(init)
    ws.run(init)
    with TaskGroup() as tg:
        q = Queue(capacity, schema=schema.Struct(("iter", schema.Scalar(np.int64))),
                  num_dequeue_records=num_dequeue_records)
        pipe(CountUntil(num_records), q, num_runtime_threads=producers,
             processor=to_row if num_dequeue_records > 1 else None)
        pipe(q, writer, num_runtime_threads=consumers)
    LocalSession(ws).run(tg)
    got = np.asarray(ws.blobs[str(writer.store)].fetch())
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("producers,consumers", [(1, 1), (2, 2), (8, 2), (2, 8)])
@pytest.mark.parametrize("capacity", [1, 2, 64])
def test_every_record_delivered_exactly_once(producers, consumers, capacity):
    n = 500
    got = _run_producer_consumer(n, producers, consumers, capacity)
    assert got.size == n
    assert int(got.sum()) == n * (n - 1) // 2
    assert sorted(got.tolist()) == list(range(n))


@pytest.mark.timeout(120)
def test_batched_dequeue_delivers_every_record():
    n = 301
    got = _run_producer_consumer(n, 2, 2, 16, num_dequeue_records=8)
    assert sorted(got.tolist()) == list(range(n))


@pytest.mark.timeout(60)
def test_enqueue_dequeue_close_helpers_at_runtime():
    workspace = _runtime()
    ws = workspace.C.Workspace()
    net = core.Net("manual_q")
    q = net.CreateBlobsQueue([], ["manual_queue"], capacity=2, num_blobs=1)
    v = net.ConstantFill([], ["manual_v"], shape=[1], value=5,
                         dtype=core.DataType.INT64)
    st = enqueue(net, q, [v])
    ws.run(net)
    assert not ws.blobs[str(st)].fetch()

    read_net = core.Net("manual_read")
    (out,), status = dequeue(read_net, q, 1)
    closing = close_queue(core.execution_step("read", read_net), q)
    ws.run(closing)
    assert ws.blobs[str(out)].fetch().tolist() == [5]
    assert not ws.blobs[str(status)].fetch()
    ws.run(read_net)  # closed and empty now
    assert ws.blobs[str(status)].fetch()
