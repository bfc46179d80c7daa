"""Rebatching queue operators (Caffe2's rebatching_queue_test.py scenarios,
plus errors, every dtype, concurrency with runtime instances, and a failure
elsewhere in the run waking blocked readers and writers)."""
import threading

import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import FastpipeError, OperatorDefError, QueueClosedError, RunError

DT = core.DataType


def run_net(net):
    workspace.RunNetOnce(net)


# -- Caffe2's scenarios ------------------------------------------------------------------

def test_single_enqueue_dequeue():
    net = core.Net("net")
    tensors = [net.ConstantFill([], 1, value=1.0, run_once=False) for _ in range(3)]
    queue = net.CreateRebatchingQueue([], 1, capacity=10, num_blobs=1)
    for t in tensors:
        net.EnqueueRebatchingQueue([queue, t], [])
    results = [net.DequeueRebatchingQueue([queue], 1) for _ in range(3)]
    net.CloseRebatchingQueue([queue], 0)
    run_net(net)
    for r in results:
        out = workspace.FetchBlob(r)
        assert out.shape == (1,)                    # a 0-d record under a new dim 0
        np.testing.assert_array_equal(out, [1.0])


def test_record_keeps_its_shape_under_a_new_dim0():
    workspace.FeedBlob("rec", np.arange(6, dtype=np.float32).reshape(2, 3))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], "rq", capacity=4, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "rec"], [])
    net.EnqueueRebatchingQueue([queue, "rec"], [])
    net.DequeueRebatchingQueue([queue], "out", num_elements=2)
    run_net(net)
    out = workspace.FetchBlob("out")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0], workspace.FetchBlob("rec"))
    np.testing.assert_array_equal(out[1], workspace.FetchBlob("rec"))


def test_multi_enqueue_dequeue():
    workspace.FeedBlob("tensors", np.arange(10, dtype=np.int32))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], 1, capacity=10, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "tensors"], [], enqueue_batch=True)
    results = [net.DequeueRebatchingQueue([queue], 1, num_elements=5) for _ in range(2)]
    run_net(net)
    np.testing.assert_array_equal(workspace.FetchBlob(results[0]), np.arange(5))
    np.testing.assert_array_equal(workspace.FetchBlob(results[1]), np.arange(5, 10))


def test_closes_properly():
    workspace.FeedBlob("tensors", np.arange(10, dtype=np.int32))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], 1, capacity=10, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "tensors"], 0, enqueue_batch=True)
    net.CloseRebatchingQueue([queue], 0)
    results = [net.DequeueRebatchingQueue([queue], 1, num_elements=5) for _ in range(2)]
    run_net(net)
    np.testing.assert_array_equal(workspace.FetchBlob(results[0]), np.arange(5))
    np.testing.assert_array_equal(workspace.FetchBlob(results[1]), np.arange(5, 10))
    # enqueuing more fails now that the queue is closed
    enq = core.Net("enq")
    enq.EnqueueRebatchingQueue([queue, "tensors"], [], enqueue_batch=True)
    with pytest.raises(QueueClosedError, match="EnqueueRebatchingQueue.*is closed"):
        run_net(enq)
    # and so does dequeuing: closed and drained
    deq = core.Net("deq")
    deq.DequeueRebatchingQueue([queue], 1, num_elements=5)
    with pytest.raises(RuntimeError, match="DequeueRebatchingQueue.*closed and empty"):
        run_net(deq)


def test_dequeue_more_than_available_returns_the_rest_at_close():
    workspace.FeedBlob("tensors", np.arange(7, dtype=np.int64))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], "rq", capacity=10, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "tensors"], [], enqueue_batch=True)
    net.CloseRebatchingQueue([queue], [])
    net.DequeueRebatchingQueue([queue], "a", num_elements=5)
    net.DequeueRebatchingQueue([queue], "b", num_elements=5)    # only 2 left
    run_net(net)
    np.testing.assert_array_equal(workspace.FetchBlob("a"), np.arange(5))
    np.testing.assert_array_equal(workspace.FetchBlob("b"), [5, 6])


def test_multiple_components():
    n = 10
    workspace.FeedBlob("complex_tensor", np.array([[x, x + 1] for x in range(n)], np.int32))
    net = core.Net("net")
    tensors = [
        net.GivenTensorIntFill([], 1, shape=[n], values=list(range(n))),
        net.GivenTensorFill([], 1, shape=[n], values=[x * 1.0 for x in range(n)]),
        net.GivenTensorBoolFill([], 1, shape=[n], values=[x % 2 == 0 for x in range(n)]),
        "complex_tensor"]
    queue = net.CreateRebatchingQueue([], 1, capacity=10, num_blobs=4)
    net.EnqueueRebatchingQueue([queue] + tensors, [], enqueue_batch=True)
    results = net.DequeueRebatchingQueue([queue], 4, num_elements=5)
    run_net(net)
    for r, t in zip(results, tensors):
        want = workspace.FetchBlob(t)[:5]
        got = workspace.FetchBlob(r)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_enqueue_of_an_empty_batch_adds_nothing():
    workspace.FeedBlob("empty", np.zeros((0, 3), np.float32))
    workspace.FeedBlob("one", np.ones((1, 3), np.float32))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], "rq", capacity=2, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "empty"], [], enqueue_batch=True)
    net.EnqueueRebatchingQueue([queue, "one"], [], enqueue_batch=True)
    net.CloseRebatchingQueue([queue], [])
    net.DequeueRebatchingQueue([queue], "out", num_elements=4)
    run_net(net)
    np.testing.assert_array_equal(workspace.FetchBlob("out"), np.ones((1, 3), np.float32))


def test_enqueue_copies_so_later_writes_do_not_change_queued_records():
    workspace.FeedBlob("x", np.array([1, 2], np.int32))
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], "rq", capacity=4, num_blobs=1)
    net.EnqueueRebatchingQueue([queue, "x"], [])
    net.ConstantFill([], "x", shape=[2], value=9, dtype=DT.INT32)   # overwrite in place
    net.EnqueueRebatchingQueue([queue, "x"], [])
    net.DequeueRebatchingQueue([queue], "out", num_elements=2)
    run_net(net)
    np.testing.assert_array_equal(workspace.FetchBlob("out"), [[1, 2], [9, 9]])


# -- every dtype ------------------------------------------------------------------------

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
           np.uint8, np.uint16, np.bool_]


@pytest.mark.parametrize("dtype", NUMERIC + [object], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("enqueue_batch", [False, True])
def test_every_dtype_round_trips(dtype, enqueue_batch):
    rows = 6
    if dtype is object:
        data = np.array([[b"r%d_c%d" % (r, c) for c in range(3)] for r in range(rows)], object)
    elif dtype is np.bool_:
        data = (np.arange(rows * 3).reshape(rows, 3) % 3 == 0)
    else:
        data = (np.arange(rows * 3).reshape(rows, 3) % 100).astype(dtype)
    net = core.Net("net")
    queue = net.CreateRebatchingQueue([], "rq", capacity=rows, num_blobs=1)
    if enqueue_batch:
        workspace.FeedBlob("batch", data)
        net.EnqueueRebatchingQueue([queue, "batch"], [], enqueue_batch=True)
    else:
        for r in range(rows):
            workspace.FeedBlob("row_%d" % r, data[r])
            net.EnqueueRebatchingQueue([queue, "row_%d" % r], [])
    net.DequeueRebatchingQueue([queue], "first", num_elements=4)
    net.DequeueRebatchingQueue([queue], "rest", num_elements=2)
    run_net(net)
    got = np.concatenate([workspace.FetchBlob("first"), workspace.FetchBlob("rest")])
    assert got.shape == data.shape
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, data)


# -- errors -----------------------------------------------------------------------------

def test_shape_mismatch_in_one_dequeue_names_op_and_queue():
    workspace.FeedBlob("a", np.zeros(3, np.float32))
    workspace.FeedBlob("b", np.zeros(4, np.float32))
    net = core.Net("mm")
    net.CreateRebatchingQueue([], "shapeq", capacity=4, num_blobs=1)
    net.EnqueueRebatchingQueue(["shapeq", "a"], [])
    net.EnqueueRebatchingQueue(["shapeq", "b"], [])
    net.DequeueRebatchingQueue(["shapeq"], "out", num_elements=2)
    with pytest.raises(RunError, match=r"DequeueRebatchingQueue.*'mm'.*'shapeq'.*"
                                       r"float32\[4\] in record 1 but float32\[3\]"):
        run_net(net)


def test_dtype_mismatch_in_one_dequeue():
    workspace.FeedBlob("a", np.zeros(3, np.float32))
    workspace.FeedBlob("b", np.zeros(3, np.int32))
    net = core.Net("mm")
    net.CreateRebatchingQueue([], "dtq", capacity=4, num_blobs=1)
    net.EnqueueRebatchingQueue(["dtq", "a"], [])
    net.EnqueueRebatchingQueue(["dtq", "b"], [])
    net.DequeueRebatchingQueue(["dtq"], "out", num_elements=2)
    with pytest.raises(RunError, match=r"'dtq'.*int32\[3\] in record 1 but float32\[3\]"):
        run_net(net)


def test_different_shapes_in_separate_dequeues_are_fine():
    workspace.FeedBlob("a", np.zeros(3, np.float32))
    workspace.FeedBlob("b", np.ones(4, np.float32))
    net = core.Net("ok")
    net.CreateRebatchingQueue([], "rq", capacity=4, num_blobs=1)
    net.EnqueueRebatchingQueue(["rq", "a"], [])
    net.EnqueueRebatchingQueue(["rq", "b"], [])
    net.DequeueRebatchingQueue(["rq"], "o1")
    net.DequeueRebatchingQueue(["rq"], "o2")
    run_net(net)
    assert workspace.FetchBlob("o1").shape == (1, 3)
    np.testing.assert_array_equal(workspace.FetchBlob("o2"), np.ones((1, 4), np.float32))


def test_wrong_input_and_output_counts():
    workspace.FeedBlob("a", np.zeros(3, np.float32))
    init = core.Net("init")
    init.CreateRebatchingQueue([], "cq", capacity=4, num_blobs=2)
    run_net(init)
    enq = core.Net("enq")
    enq.EnqueueRebatchingQueue(["cq", "a"], [])
    with pytest.raises(RunError, match=r"EnqueueRebatchingQueue.*'cq' holds 2 blobs per "
                                       r"record, but the op has 1 data inputs"):
        run_net(enq)
    run_net(init)       # the failed run closed the queue (as for blob queues): a new one
    deq = core.Net("deq")
    deq.DequeueRebatchingQueue(["cq"], ["o1", "o2", "o3"])
    with pytest.raises(RunError, match=r"'cq' holds 2 blobs per record, but the op has 3 outputs"):
        run_net(deq)


def test_enqueue_batch_needs_equal_dim0_and_at_least_one_dim():
    workspace.FeedBlob("a", np.zeros((3, 2), np.float32))
    workspace.FeedBlob("b", np.zeros(4, np.int32))
    workspace.FeedBlob("s", np.array(1.0, np.float32))
    init = core.Net("init")
    init.CreateRebatchingQueue([], "bq", capacity=8, num_blobs=2)
    init.CreateRebatchingQueue([], "sq", capacity=8, num_blobs=1)
    run_net(init)
    enq = core.Net("enq")
    enq.EnqueueRebatchingQueue(["bq", "a", "b"], [], enqueue_batch=True)
    with pytest.raises(RunError, match=r"same dim 0: input 1 \('a'\) is float32\[3, 2\] but "
                                       r"input 2 \('b'\) is int32\[4\]"):
        run_net(enq)
    enq0 = core.Net("enq0")
    enq0.EnqueueRebatchingQueue(["sq", "s"], [], enqueue_batch=True)
    with pytest.raises(RunError, match=r"input 1 \('s'\) is float32\[\]; enqueue_batch"):
        run_net(enq0)


def test_bad_handles_and_arguments():
    workspace.FeedBlob("notq", np.zeros(2, np.float32))
    net = core.Net("h")
    net.DequeueRebatchingQueue(["notq"], "o")
    with pytest.raises(RunError, match=r"input 0 \('notq'\) is not a rebatching queue"):
        run_net(net)
    # a blob queue is not a rebatching queue
    init = core.Net("bqinit")
    init.CreateBlobsQueue([], "blobq", capacity=2, num_blobs=1)
    run_net(init)
    net2 = core.Net("h2")
    net2.CloseRebatchingQueue(["blobq"], [])
    with pytest.raises(RunError, match=r"not a rebatching queue \(it holds a queue\)"):
        run_net(net2)
    for kw in (dict(capacity=0), dict(num_blobs=0)):
        with pytest.raises(OperatorDefError, match="CreateRebatchingQueue.*=0 must be >= 1"):
            core.Net("bad").CreateRebatchingQueue([], "x", **kw)
    with pytest.raises(OperatorDefError, match="num_elements=0 must be >= 1"):
        core.Net("bad2").DequeueRebatchingQueue(["x"], "o", num_elements=0)
    with pytest.raises(OperatorDefError, match="EnqueueRebatchingQueue.*takes"):
        core.Net("bad3").EnqueueRebatchingQueue(["x"], [])
    assert issubclass(OperatorDefError, FastpipeError)


# -- concurrency -------------------------------------------------------------------------

def _producer_consumer_plan(instances, capacity, rows=3, iters=40, per_dequeue=4):
    """`instances` producer instances each enqueue `iters` batches of `rows`
    records (id, k) with a shared counter for ids; `instances` consumer
    instances each dequeue iters*rows/per_dequeue batches of `per_dequeue`."""
    assert (iters * rows) % per_dequeue == 0
    init = core.Net("pc_init")
    init.CreateRebatchingQueue([], "pcq", capacity=capacity, num_blobs=2)
    init.CreateCounter([], "ids", init_count=0)
    init.CreateMutex([], "seen_mutex")
    init.GivenTensorIntFill([], "ks", shape=[rows], values=list(range(rows)))
    workspace.FeedBlob("seen_id", np.zeros(0, np.int64))
    workspace.FeedBlob("seen_k", np.zeros(0, np.int32))
    prod = core.Net("pc_prod")
    prod.CountUp("ids", "id")
    prod.ConstantFill(["ks"], "idrow", value=0, dtype=DT.INT64)
    prod.Add(["idrow", "id"], "idrow", broadcast=1)
    prod.EnqueueRebatchingQueue(["pcq", "idrow", "ks"], [], enqueue_batch=True)
    cons = core.Net("pc_cons")
    cons.DequeueRebatchingQueue(["pcq"], ["cid", "ck"], num_elements=per_dequeue)
    # one AtomicAppend for both columns: two would let another consumer's
    # append land between them and misalign ids and ks
    cons.AtomicAppend(["seen_mutex", "seen_id", "seen_k", "cid", "ck"], ["seen_id", "seen_k"])
    prod_step = core.execution_step(
        "producers", [core.execution_step("p", prod, num_iter=iters, create_workspace=True)],
        num_concurrent_instances=instances)
    cons_step = core.execution_step(
        "consumers", [core.execution_step("c", cons, num_iter=iters * rows // per_dequeue,
                                          create_workspace=True)],
        num_concurrent_instances=instances)
    plan = core.Plan("pc")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("work", [cons_step, prod_step], concurrent_substeps=True))
    return plan


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
@pytest.mark.parametrize("capacity", [1, 2, 64])
def test_producers_and_consumers_deliver_every_record_exactly_once(instances, capacity):
    rows, iters = 3, 40
    workspace.RunPlan(_producer_consumer_plan(instances, capacity, rows, iters))
    ids = workspace.FetchBlob("seen_id")
    ks = workspace.FetchBlob("seen_k")
    total = instances * iters
    assert len(ids) == len(ks) == total * rows
    pairs = sorted(zip(ids.tolist(), ks.tolist()))
    assert pairs == [(i, k) for i in range(total) for k in range(rows)]


@pytest.mark.timeout(60)
def test_parallel_producer_consumer_caffe2_style():
    # Caffe2's test_rebatching_parallel_producer_consumer: concurrent
    # substeps, producers enqueue single records, consumers num_iter reads
    n_threads, per_thread = 4, 25
    init = core.Net("init_net")
    init.CreateRebatchingQueue([], "ppq", capacity=n_threads * per_thread, num_blobs=1)
    init.CreateMutex([], "m")
    workspace.FeedBlob("seen", np.zeros(0, np.int32))
    producers = []
    for i in range(n_threads):
        net = core.Net("producer_%d" % i)
        values = [1 + x + i * per_thread for x in range(per_thread)]
        blob = net.GivenTensorIntFill([], "vals_%d" % i, shape=[per_thread], values=values)
        net.EnqueueRebatchingQueue(["ppq", blob], [], enqueue_batch=True)
        producers.append(core.execution_step("producer_%d" % i, net))
    consumers = []
    for i in range(n_threads):
        net = core.Net("consumer_%d" % i)
        net.DequeueRebatchingQueue(["ppq"], "got_%d" % i, num_elements=1)
        net.AtomicAppend(["m", "seen", "got_%d" % i], ["seen"])
        consumers.append(core.execution_step("consumer_%d" % i, net, num_iter=per_thread))
    plan = core.Plan("test")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("worker", [
        core.execution_step("consumer", consumers, concurrent_substeps=True),
        core.execution_step("producer", producers, concurrent_substeps=True)],
        concurrent_substeps=True))
    workspace.RunPlan(plan)
    assert sorted(workspace.FetchBlob("seen").tolist()) == list(range(1, 1 + n_threads * per_thread))


@pytest.mark.timeout(60)
def test_close_wakes_a_reader_blocked_waiting_for_a_full_batch():
    # the reader wants 10 records; 3 arrive, then the queue closes: it gets 3
    started = threading.Event()
    init = core.Net("init")
    init.CreateRebatchingQueue([], "wq", capacity=8, num_blobs=1)
    workspace.FeedBlob("three", np.arange(3, dtype=np.int32))
    reader = core.Net("reader")
    reader.Python(lambda i, o: started.set())([], [])
    reader.DequeueRebatchingQueue(["wq"], "got", num_elements=10)
    writer = core.Net("writer")
    writer.Python(lambda i, o: started.wait(20))([], [])
    writer.EnqueueRebatchingQueue(["wq", "three"], [], enqueue_batch=True)
    writer.CloseRebatchingQueue(["wq"], [])
    plan = core.Plan("p")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("both", [core.execution_step("r", reader),
                                              core.execution_step("w", writer)],
                                     concurrent_substeps=True))
    workspace.RunPlan(plan)
    np.testing.assert_array_equal(workspace.FetchBlob("got"), [0, 1, 2])


def _failing_plan(kind, started):
    """A victim blocked on a rebatching queue (kind 'empty': a dequeue of a
    queue nobody writes; 'full': an enqueue into a full queue) and a Python
    op elsewhere that fails once the victim has started."""
    init = core.Net("finit")
    init.CreateRebatchingQueue([], "fq", capacity=1, num_blobs=1)
    workspace.FeedBlob("rec", np.zeros(2, np.float32))
    victim = core.Net("victim")
    victim.Python(lambda i, o: started.set())([], [])
    if kind == "empty":
        victim.DequeueRebatchingQueue(["fq"], "out")
    else:
        victim.EnqueueRebatchingQueue(["fq", "rec"], [])
        victim.EnqueueRebatchingQueue(["fq", "rec"], [])      # blocks: capacity 1

    def boom(i, o):
        started.wait(20)
        raise ValueError("boom elsewhere")
    bad = core.Net("bad")
    bad.Python(boom)([], [])
    plan = core.Plan("fp")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("both", [core.execution_step("v", victim),
                                              core.execution_step("b", bad)],
                                     concurrent_substeps=True))
    return plan


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["empty", "full"])
def test_failure_elsewhere_wakes_a_blocked_op(kind):
    started = threading.Event()
    with pytest.raises(RunError, match="boom elsewhere") as ei:
        workspace.RunPlan(_failing_plan(kind, started))
    assert isinstance(ei.value.__cause__, ValueError)
    # the failed run closed the queue; a new run using it is told why
    again = core.Net("again")
    again.CloseRebatchingQueue(["fq"], [])
    with pytest.raises(RunError, match="'fq' was closed when an earlier run failed"):
        run_net(again)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1, 2])
def test_batches_larger_than_the_capacity_move_in_chunks(capacity):
    # enqueue of 50 rows and dequeues of 7 both exceed the ring: each side
    # moves what fits, wakes the other and waits for more
    workspace.FeedBlob("big", np.arange(50, dtype=np.int64))
    init = core.Net("init")
    init.CreateRebatchingQueue([], "cq", capacity=capacity, num_blobs=1)
    init.CreateMutex([], "m")
    workspace.FeedBlob("seen", np.zeros(0, np.int64))
    prod = core.Net("prod")
    prod.EnqueueRebatchingQueue(["cq", "big"], [], enqueue_batch=True)
    prod.CloseRebatchingQueue(["cq"], [])
    cons = core.Net("cons")
    cons.DequeueRebatchingQueue(["cq"], "got", num_elements=7)
    cons.AtomicAppend(["m", "seen", "got"], ["seen"])
    plan = core.Plan("chunks")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step("both", [
        core.execution_step("c", cons, num_iter=8),          # 7 * 7 + the last 1
        core.execution_step("p", prod)], concurrent_substeps=True))
    workspace.RunPlan(plan)
    np.testing.assert_array_equal(workspace.FetchBlob("seen"), np.arange(50))   # one consumer: in order
