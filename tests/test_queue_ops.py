"""BlobsQueue operators: close/drain, Safe* status, batching, timeouts,
strict close, stats, and exactly-once delivery under concurrency."""
import numpy as np
import pytest

from fastpipe import _core, core, workspace
from fastpipe.errors import QueueClosedError, RunError

DT = core.DataType


def make_queue(name="q", capacity=4, num_blobs=1, **kw):
    net = core.Net("mkq_" + name)
    net.CreateBlobsQueue([], name, capacity=capacity, num_blobs=num_blobs, **kw)
    workspace.RunNetOnce(net)


def enqueue(q, *values, safe=True):
    names = []
    for i, v in enumerate(values):
        workspace.FeedBlob("in_%d" % i, np.asarray(v))
        names.append("in_%d" % i)
    net = core.Net("enq")
    if safe:
        net.SafeEnqueueBlobs([q] + names, names + ["enq_status"])
    else:
        net.EnqueueBlobs([q] + names, names)
    workspace.RunNetOnce(net)
    return bool(workspace.FetchBlob("enq_status")) if safe else None


def dequeue(q, n=1, num_records=1):
    outs = ["out_%d" % i for i in range(n)]
    net = core.Net("deq")
    net.SafeDequeueBlobs([q], outs + ["deq_status"], num_records=num_records)
    workspace.RunNetOnce(net)
    status = bool(workspace.FetchBlob("deq_status"))
    vals = [workspace.FetchBlob(o) if workspace.FetchBlob(o) is not None else None
            for o in outs] if workspace.HasBlob(outs[0]) and _has_value(outs[0]) else None
    return status, vals


def _has_value(name):
    try:
        workspace.FetchBlob(name)
        return True
    except KeyError:
        return False


def close(q):
    net = core.Net("close")
    net.CloseBlobsQueue([q], [])
    workspace.RunNetOnce(net)


def test_fifo_and_two_blob_records():
    make_queue(num_blobs=2)
    assert enqueue("q", [1, 2], ["a"]) is False
    assert enqueue("q", [3], ["b", "c"]) is False
    st, (x, s) = dequeue("q", 2)
    assert st is False and list(x) == [1, 2] and list(s) == [b"a"]
    st, (x, s) = dequeue("q", 2)
    assert list(x) == [3] and list(s) == [b"b", b"c"]


def test_closed_queue_drains_then_reports_status():
    make_queue()
    enqueue("q", [1])
    enqueue("q", [2])
    close("q")
    assert dequeue("q")[1][0].tolist() == [1]
    assert dequeue("q")[1][0].tolist() == [2]
    status, vals = dequeue("q")
    assert status is True
    assert vals[0].tolist() == [2]        # outputs left stale on failure (Caffe2)


def test_closed_queue_with_room_accepts_writes_by_default():
    make_queue(capacity=2)
    close("q")
    assert enqueue("q", [1]) is False     # Caffe2: closed + room -> accepted
    assert enqueue("q", [2]) is False
    assert enqueue("q", [3]) is True      # closed + full -> status true
    assert dequeue("q")[1][0].tolist() == [1]


def test_strict_close_rejects_every_write_after_close():
    make_queue(capacity=2, strict_close=True)
    enqueue("q", [1])
    close("q")
    assert enqueue("q", [2]) is True
    assert dequeue("q")[1][0].tolist() == [1]
    assert dequeue("q")[0] is True


def test_plain_enqueue_dequeue_fail_the_net_when_closed():
    make_queue(capacity=1)
    enqueue("q", [1], safe=False)
    close("q")
    with pytest.raises(QueueClosedError, match="EnqueueBlobs.*'q' is closed"):
        enqueue("q", [2], safe=False)
    net = core.Net("plain_deq")
    net.DequeueBlobs(["q"], ["o"])
    workspace.RunNetOnce(net)
    assert workspace.FetchBlob("o").tolist() == [1]
    with pytest.raises(RuntimeError, match="DequeueBlobs.*closed and empty"):
        workspace.RunNetOnce(net)


@pytest.mark.timeout(30)
def test_dequeue_timeout_is_an_op_failure():
    make_queue()
    net = core.Net("tmo")
    net.DequeueBlobs(["q"], ["o"], timeout_secs=0.05)
    with pytest.raises(RunError, match="timed out in 50 ms on queue 'q'"):
        workspace.RunNetOnce(net)


def test_num_records_batches_along_dim0():
    make_queue(capacity=8, num_blobs=2)
    for i in range(5):
        enqueue("q", np.full((1, 3), i, np.float32), np.array([i, i], np.int64))
    close("q")
    st, (a, b) = dequeue("q", 2, num_records=3)
    assert st is False and a.shape == (3, 3) and b.tolist() == [0, 0, 1, 1, 2, 2]
    st, (a, b) = dequeue("q", 2, num_records=3)      # partial batch, status false
    assert st is False and a[:, 0].tolist() == [3, 4]
    st, _ = dequeue("q", 2, num_records=3)
    assert st is True


def test_num_records_rejects_mismatched_inner_dims():
    make_queue(capacity=4)
    enqueue("q", np.zeros((1, 3), np.float32))
    enqueue("q", np.zeros((1, 4), np.float32))
    close("q")
    with pytest.raises(RunError, match="cannot batch records of queue 'q'.*float32\\[1, 4\\].*"
                                       "float32\\[1, 3\\]"):
        dequeue("q", num_records=2)


def test_num_records_rejects_mismatched_dtype_and_0d():
    make_queue(capacity=4)
    enqueue("q", np.zeros(2, np.float32))
    enqueue("q", np.zeros(2, np.int32))
    close("q")
    with pytest.raises(RunError, match="int32\\[2\\] in record 1"):
        dequeue("q", num_records=2)
    make_queue("q0", capacity=2)
    enqueue("q0", np.float32(1))
    close("q0")
    with pytest.raises(RunError, match="0-d tensor"):
        dequeue("q0", num_records=2)


def test_record_arity_and_bad_handles():
    make_queue(num_blobs=2)
    with pytest.raises(RunError, match="holds 2 blobs per record, got 1"):
        enqueue("q", [1])
    workspace.FeedBlob("notq", np.zeros(1))
    with pytest.raises(RunError, match="'notq'.*is not a queue"):
        enqueue("notq", [1])
    with pytest.raises(ValueError, match="capacity=0 must be >= 1"):
        core.Net("bad").CreateBlobsQueue([], "bq", capacity=0)
    with pytest.raises(ValueError, match="num_records=0 must be >= 1"):
        core.Net("bad2").SafeDequeueBlobs(["q"], ["a", "s"], num_records=0)


def test_enqueue_moves_and_fetched_arrays_stay_intact():
    make_queue(capacity=2)
    enqueue("q", np.array([1, 2, 3], np.int64))
    _, (v,) = dequeue("q")
    kept = v                                    # a Python-held copy
    enqueue("q", np.array([7, 8, 9], np.int64))
    enqueue("q", np.array([4, 5, 6], np.int64))
    assert kept.tolist() == [1, 2, 3]
    assert dequeue("q")[1][0].tolist() == [7, 8, 9]


def test_weighted_sample_dequeue():
    make_queue("qa", capacity=4)
    make_queue("qb", capacity=4)
    for i in range(3):
        enqueue("qa", np.array([i], np.int64))
    net = core.Net("wsd")
    net.WeightedSampleDequeueBlobs(["qa", "qb"], ["v", "idx", "st"], weights=[1.0, 0.0],
                                   table_idx_blob=1)
    workspace.RunNetOnce(net)
    assert workspace.FetchBlob("v").tolist() == [0]
    assert workspace.FetchBlob("idx").tolist() == [0] and not workspace.FetchBlob("st")
    close("qa")
    net2 = core.Net("wsd2")
    net2.WeightedSampleDequeueBlobs(["qa", "qb"], ["v", "st"], weights=[1.0, 0.0])
    workspace.RunNetOnce(net2)
    workspace.RunNetOnce(net2)
    workspace.RunNetOnce(net2)
    assert bool(workspace.FetchBlob("st"))      # qa exhausted -> stop


def test_queue_stats_keys():
    _core.stats_export(reset=True)
    make_queue("statq", capacity=4, num_blobs=1, field_names=["f"])
    enqueue("statq", np.zeros(4, np.float32))
    enqueue("statq", np.zeros(2, np.float32))
    dequeue("statq")
    stats = _core.stats_export()
    assert stats["statq/queue_dequeued_records"] == 1
    assert stats["statq/queue_dequeued_bytes"] == 16
    assert stats["statq/queue_dequeued_bytes/f"] == 16
    assert stats["statq/queue_balance"] == 1
    assert stats["statq/write_time_ns/count"] == 2
    assert stats["statq/read_time_ns/count"] == 1


# -- concurrency: every record delivered exactly once -------------------------------------

def _mpmc_plan(n_per_producer, producers, consumers, capacity, num_records=1):
    init = core.Net("mpmc_init")
    init.CreateBlobsQueue([], "mq", capacity=capacity, num_blobs=2)
    init.CreateCounter([], "ids", init_count=0)
    prods = []
    for p in range(producers):
        net = core.Net("p%d" % p)
        net.CountUp("ids", "id_%d" % p)
        net.Cast("id_%d" % p, "idf_%d" % p, to=DT.DOUBLE)
        net.Mul(["idf_%d" % p, "idf_%d" % p], "sq_%d" % p)          # payload = id^2
        net.ConstantFill(["id_%d" % p], "row_%d" % p, extra_shape=[1], value=1.0, dtype=DT.DOUBLE)
        net.Mul(["row_%d" % p, "sq_%d" % p], "rowsq_%d" % p, broadcast=1)
        net.Cast("id_%d" % p, "idr_%d" % p, to=DT.INT64)
        net.ConstantFill(["idr_%d" % p], "idv_%d" % p, extra_shape=[1], value=0,
                         dtype=DT.INT64)
        net.Add(["idv_%d" % p, "idr_%d" % p], "idv_%d" % p, broadcast=1)
        net.SafeEnqueueBlobs(["mq", "idv_%d" % p, "rowsq_%d" % p],
                             ["idv_%d" % p, "rowsq_%d" % p, "pst_%d" % p])
        prods.append(core.execution_step("prod%d" % p, net, num_iter=n_per_producer))
    close = core.Net("mclose")
    close.CloseBlobsQueue(["mq"], [])
    conss = []
    for c in range(consumers):
        init.ConstantFill([], "acc_%d" % c, shape=[1], value=0, dtype=DT.INT64)
        init.ConstantFill([], "sqacc_%d" % c, shape=[1], value=0.0, dtype=DT.DOUBLE)
        init.CreateMutex([], "seen_mutex_%d" % c)
        deq = core.Net("c%d" % c)
        deq.SafeDequeueBlobs(["mq"], ["cid_%d" % c, "csq_%d" % c, "cst_%d" % c],
                             num_records=num_records)
        use = core.Net("use%d" % c)
        use.AtomicAppend(["seen_mutex_%d" % c, "seen_%d" % c, "cid_%d" % c], ["seen_%d" % c])
        use.AtomicAppend(["seen_mutex_%d" % c, "seensq_%d" % c, "csq_%d" % c],
                         ["seensq_%d" % c])
        conss.append(core.execution_step("cons%d" % c, [deq, use],
                                         should_stop_blob="cst_%d" % c))
        workspace.FeedBlob("seen_%d" % c, np.zeros(0, np.int64))
        workspace.FeedBlob("seensq_%d" % c, np.zeros(0, np.float64))
    plan = core.Plan("mpmc")
    plan.AddStep(core.execution_step("init", init))
    plan.AddStep(core.execution_step(
        "run", conss + [core.execution_step("producers", [
            core.execution_step("prods", prods, concurrent_substeps=True),
            core.execution_step("close", close)])],
        concurrent_substeps=True))
    return plan


@pytest.mark.timeout(120)
@pytest.mark.parametrize("producers,consumers", [(1, 1), (2, 2), (3, 1), (1, 3)])
@pytest.mark.parametrize("capacity", [1, 2, 64])
@pytest.mark.parametrize("num_records", [1, 5])
def test_every_record_delivered_exactly_once(producers, consumers, capacity, num_records):
    n = 600
    workspace.RunPlan(_mpmc_plan(n, producers, consumers, capacity, num_records))
    ids = np.concatenate([workspace.FetchBlob("seen_%d" % c) for c in range(consumers)])
    sqs = np.concatenate([workspace.FetchBlob("seensq_%d" % c) for c in range(consumers)])
    total = n * producers
    assert len(ids) == total
    assert sorted(ids.tolist()) == list(range(total))            # each id exactly once
    np.testing.assert_array_equal(sqs.reshape(-1), ids.astype(np.float64) ** 2)


@pytest.mark.timeout(60)
def test_buffer_viewed_from_python_is_never_recycled_under_the_view():
    # A consumer keeps numpy views of the records it dequeues (Python op
    # .data, zero-copy).  Those buffers go back into queue slots at the next
    # dequeue and on to the producer, which writes new records: it must
    # write into fresh memory, never under a live view.
    make_queue("vq", capacity=2)
    workspace.FeedBlob("vcount", np.array(0, np.int64))
    views = []

    def keep(inputs, outputs):
        views.append(inputs[0].data)

    init = core.Net("v_init")
    init.CreateCounter([], "vctr", init_count=0)
    workspace.RunNetOnce(init)
    prod = core.Net("v_prod")
    prod.CountUp("vctr", "vid")
    prod.ConstantFill(["vid"], "vrow", extra_shape=[8], value=0, dtype=DT.INT64)
    prod.Add(["vrow", "vid"], "vrow", broadcast=1)
    prod.SafeEnqueueBlobs(["vq", "vrow"], ["vrow", "vpst"])
    close_net = core.Net("v_close")
    close_net.CloseBlobsQueue(["vq"], [])
    deq = core.Net("v_deq")
    deq.SafeDequeueBlobs(["vq"], ["vout", "vst"])
    use = core.Net("v_use")
    use.Python(keep)(["vout"], [])
    plan = core.Plan("views")
    plan.AddStep(core.execution_step("run", [
        core.execution_step("cons", [deq, use], should_stop_blob="vst"),
        core.execution_step("prod", [core.execution_step("p", prod, num_iter=200),
                                     core.execution_step("c", close_net)])],
        concurrent_substeps=True))
    workspace.RunPlan(plan)
    assert len(views) == 200
    for i, v in enumerate(views):
        assert v.tolist() == [i] * 8, (i, v.tolist())


def test_a_created_net_rerun_after_its_queue_was_recreated_counts_into_the_new_queue():
    """CreateBlobsQueue runs again while a created net's EnqueueBlobs holds
    the old queue's last reference: the op must hand its counters to the old
    queue before dropping it (found in review: the counters were added into
    the freed queue -- a heap-use-after-free under tools/sanitize.sh)."""
    ws = workspace.C.Workspace()
    init = core.Net("init")
    init.CreateBlobsQueue([], ["q"], capacity=4, num_blobs=1)
    ws.feed_blob("x", np.arange(3, dtype=np.float32))
    prod = core.Net("prod")
    prod.EnqueueBlobs(["q", "x"], ["x"])
    ws.run(init)
    ws.create_net(prod)
    ws._native.run_net("prod")
    for _ in range(3):
        ws.run(init)                  # a new queue; the op held the old one's last reference
        ws.feed_blob("x", np.arange(3, dtype=np.float32))
        ws._native.run_net("prod")
    drain = core.Net("drain")
    drain.DequeueBlobs(["q"], ["y"])
    ws.run(drain)
    assert np.array_equal(ws.fetch_blob("y"), np.arange(3, dtype=np.float32))
