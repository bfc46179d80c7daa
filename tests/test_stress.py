"""Randomized stress of the run loop with hypothesis.

* ``test_random_graphs_*`` (raw core API): producers -> queue -> [N runtime
  instances] -> queue -> consumers, random capacities (from 1), records per
  producer, dequeue batch sizes, strict or Caffe2 close, and an optional
  failure point (a ``Python`` op raising on its k-th call in a producer, an
  instance or a consumer).
* ``test_random_pipes_*`` (pipeline API): pipe(CountUntil(n), processor, N
  instances) -> Queue(capacity, num_dequeue_records) -> pipe(sink, M
  instances), optional failure in the processor or the sink.
* ``test_close_racing_writers_*``: a close racing the writers; strict close
  delivers exactly the accepted records.
* ``test_concurrent_runs_*``: 2-3 random graphs run at once from Python
  threads on one workspace.

Each example checks:
  * the run terminates (the test has a timeout, every example is bounded);
  * without a failure: every record is delivered exactly once (the ids seen
    by all consumers are exactly 0..total-1) and each record's fields stayed
    together (payload == 3 * id, row by row, also across batches);
  * with a failure: ``run`` raises a RunError naming the failing op (its
    ``__cause__`` is the Python exception), and no id is delivered twice.

CI (a plain ``python3 -m pytest``) runs a small bounded sample.  A long run
is one command:

    FASTPIPE_STRESS_EXAMPLES=2000 python3 -m pytest -m stress tests/test_stress.py

(the per-test timeout grows with the number of examples; add ``-x`` to stop
at the first falsifying example, which hypothesis prints;
``FASTPIPE_STRESS_TRACE=1`` with ``-s`` prints every example before it runs,
which names the one that hangs if a timeout fires).
"""
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpipe import core, schema, workspace
from fastpipe.dataio import CountUntil
from fastpipe.errors import RunError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.queue_util import Queue
from fastpipe.session import LocalSession
from fastpipe.task import TaskGroup

from reliability_helpers import DT, Boom, Hook, SinkAll

EXAMPLES = int(os.environ.get("FASTPIPE_STRESS_EXAMPLES", "25"))
TIMEOUT = max(120, 2 * EXAMPLES)

STRESS_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.stress


@st.composite
def graphs(draw):
    producers = draw(st.integers(1, 4))
    g = dict(
        producers=producers,
        per_producer=draw(st.lists(st.integers(0, 120), min_size=producers,
                                   max_size=producers)),
        instances=draw(st.sampled_from([0, 1, 2, 3, 8])),    # 0: no middle stage
        consumers=draw(st.integers(1, 4)),
        cap1=draw(st.sampled_from([1, 1, 2, 3, 64])),
        cap2=draw(st.sampled_from([1, 1, 2, 5, 64])),
        batch=draw(st.sampled_from([1, 1, 2, 7])),
        strict=draw(st.booleans()),
        fail=draw(st.sampled_from([None, None, "producer", "middle", "consumer"])),
        fail_at=draw(st.integers(1, 150)),
    )
    if g["instances"] == 0 and g["fail"] == "middle":
        g["fail"] = None
    return g


def _record_net(name, ids_counter):
    """Produce one record (idv int64[1], payload int64[1] = 3 * id)."""
    net = core.Net(name)
    idn = net.CountUp(ids_counter, name + "_id")
    idr = net.Cast(idn, name + "_idr", to=DT.INT64)
    idv = net.ConstantFill([idr], name + "_idv", extra_shape=[1], value=0, dtype=DT.INT64)
    net.Add([idv, idr], idv, broadcast=1)
    two = net.Add([idv, idv], name + "_two")
    net.Add([two, idv], name + "_pay")
    return net, name + "_idv", name + "_pay"


def build_plan(g, hook, pfx="st"):
    init = core.Net(pfx + "_init")
    init.CreateBlobsQueue([], pfx + "_q1", capacity=g["cap1"], num_blobs=2,
                          strict_close=g["strict"])
    init.CreateCounter([], pfx + "_ids", init_count=0)
    last_q = pfx + "_q1"

    prods = []
    for p in range(g["producers"]):
        net, idv, pay = _record_net(pfx + "_p%d" % p, pfx + "_ids")
        if hook is not None and g["fail"] == "producer" and p == 0:
            net.Python(hook)([], [])
        net.SafeEnqueueBlobs([pfx + "_q1", idv, pay], [idv, pay, pfx + "_pst%d" % p])
        prods.append(core.execution_step(pfx + "_prod%d" % p, net, num_iter=g["per_producer"][p]))
    close1 = core.Net(pfx + "_close1")
    close1.CloseBlobsQueue([pfx + "_q1"], [])
    stages = [core.execution_step(pfx + "_producers", [
        core.execution_step(pfx + "_prods", prods, concurrent_substeps=True),
        core.execution_step(pfx + "_close1", close1)])]

    if g["instances"]:
        init.CreateBlobsQueue([], pfx + "_q2", capacity=g["cap2"], num_blobs=2,
                              strict_close=g["strict"])
        last_q = pfx + "_q2"
        minit = core.Net(pfx + "_minit")
        minit.ConstantFill([], pfx + "_mst", shape=[], value=False, dtype=DT.BOOL)
        mread = core.Net(pfx + "_mread")
        mread.SafeDequeueBlobs([pfx + "_q1"], [pfx + "_mid", pfx + "_mpay", pfx + "_mst"])
        mwrite = core.Net(pfx + "_mwrite")
        if hook is not None and g["fail"] == "middle":
            mwrite.Python(hook)([], [])
        mwrite.SafeEnqueueBlobs([pfx + "_q2", pfx + "_mid", pfx + "_mpay"],
                                [pfx + "_mid", pfx + "_mpay", pfx + "_mwst"])
        inst = core.execution_step(pfx + "_instance", [
            core.execution_step(pfx + "_minit", minit),
            core.execution_step(pfx + "_mloop", [mread, mwrite], should_stop_blob=pfx + "_mst")],
            create_workspace=True)
        close2 = core.Net(pfx + "_close2")
        close2.CloseBlobsQueue([pfx + "_q2"], [])
        stages.append(core.execution_step(pfx + "_middle", [
            core.execution_step(pfx + "_par", [inst], num_concurrent_instances=g["instances"]),
            core.execution_step(pfx + "_close2", close2)]))

    for c in range(g["consumers"]):
        init.CreateMutex([], pfx + "_mu%d" % c)
        workspace.FeedBlob(pfx + "_seen%d" % c, np.zeros(0, np.int64))
        workspace.FeedBlob(pfx + "_seenpay%d" % c, np.zeros(0, np.int64))
        read = core.Net(pfx + "_c%d" % c)
        read.SafeDequeueBlobs([last_q],
                              [pfx + "_cid%d" % c, pfx + "_cpay%d" % c, pfx + "_cst%d" % c],
                              num_records=g["batch"])
        use = core.Net(pfx + "_use%d" % c)
        if hook is not None and g["fail"] == "consumer" and c == 0:
            use.Python(hook)([], [])
        use.AtomicAppend([pfx + "_mu%d" % c, pfx + "_seen%d" % c, pfx + "_cid%d" % c],
                         [pfx + "_seen%d" % c])
        use.AtomicAppend([pfx + "_mu%d" % c, pfx + "_seenpay%d" % c, pfx + "_cpay%d" % c],
                         [pfx + "_seenpay%d" % c])
        stages.append(core.execution_step(pfx + "_cons%d" % c, [read, use],
                                          should_stop_blob=pfx + "_cst%d" % c))
    plan = core.Plan("stress")
    plan.AddStep(core.execution_step(pfx + "_init", init))
    plan.AddStep(core.execution_step(pfx + "_run", stages, concurrent_substeps=True))
    return plan


def _delivered(g, pfx="st"):
    ids = np.concatenate([workspace.FetchBlob(pfx + "_seen%d" % c)
                          for c in range(g["consumers"])])
    pays = np.concatenate([workspace.FetchBlob(pfx + "_seenpay%d" % c)
                           for c in range(g["consumers"])])
    return ids.reshape(-1), pays.reshape(-1)


@pytest.mark.timeout(TIMEOUT)
@STRESS_SETTINGS
@given(g=graphs())
def test_random_graphs_deliver_exactly_once_or_fail_cleanly(g):
    workspace.ResetWorkspace()
    if os.environ.get("FASTPIPE_STRESS_TRACE"):
        print("graph example", g, flush=True)
    hook = Hook(g["fail"], fail_at=g["fail_at"]) if g["fail"] else None
    plan = build_plan(g, hook)
    try:
        workspace.RunPlan(plan)
        raised = None
    except RunError as e:
        raised = e
    _check_graph_result(g, hook, raised)


def _check_graph_result(g, hook, raised, pfx="st"):
    total = sum(g["per_producer"])
    ids, pays = _delivered(g, pfx)
    assert len(ids) == len(pays)
    np.testing.assert_array_equal(pays, 3 * ids)          # records stayed whole
    if hook is not None and hook.failed_at is not None:
        assert raised is not None, "the hook failed but run() returned"
        assert "boom in %s" % g["fail"] in str(raised), str(raised)
        assert isinstance(raised.__cause__, Boom)
        assert len(set(ids.tolist())) == len(ids), "a record was delivered twice"
        assert set(ids.tolist()) <= set(range(total))
    else:
        assert raised is None, "unexpected failure: %s" % raised
        assert len(ids) == total, "delivered %d of %d records" % (len(ids), total)
        assert sorted(ids.tolist()) == list(range(total))


@st.composite
def pipe_graphs(draw):
    return dict(
        n=draw(st.integers(0, 150)),
        threads1=draw(st.sampled_from([1, 2, 4])),
        threads2=draw(st.sampled_from([1, 2, 3])),
        capacity=draw(st.sampled_from([1, 2, 8, 100])),
        batch=draw(st.sampled_from([1, 1, 2, 5])),
        fail=draw(st.sampled_from([None, "processor", "sink"])),
        fail_at=draw(st.integers(1, 150)),
    )


@pytest.mark.timeout(TIMEOUT)
@STRESS_SETTINGS
@given(g=pipe_graphs())
def test_random_pipes_in_one_session(g):
    """pipe(CountUntil(n), processor, N instances) -> Queue(capacity,
    num_dequeue_records=batch) -> pipe(sink, M instances) on the pipeline
    API, one LocalSession per example."""
    workspace.ResetWorkspace()
    hook = Hook(g["fail"], fail_at=g["fail_at"]) if g["fail"] else Hook("never")
    if os.environ.get("FASTPIPE_STRESS_TRACE"):
        print("pipe example", g, flush=True)
    sink = SinkAll()

    def processor(rec):
        if g["fail"] == "processor":
            ops.Python(hook)([], [])
        # int64 scalar -> int64[1], so that records can be batched on dim 0
        x = rec.field_blobs()[0]
        row = ops.ConstantFill([x], extra_shape=[1], value=0, dtype=DT.INT64)
        row = ops.Add([row, x], broadcast=1)
        return schema.Struct(("x", schema.Scalar((np.int64, (1,)), row)))

    def consumer(rec):
        if g["fail"] == "sink":
            ops.Python(hook)([], [])
        ops.Python(sink)(rec.field_blobs(), [])
        return None         # a sink: no output queue (which nobody would read)

    with TaskGroup() as tg:
        q = Queue(g["capacity"], name="sq", num_dequeue_records=g["batch"])
        pipe(CountUntil(g["n"]), q, processor=processor, num_runtime_threads=g["threads1"],
             name="sp")
        pipe(q, processor=consumer, num_runtime_threads=g["threads2"], name="ss")
    try:
        LocalSession().run(tg)
        raised = None
    except RunError as e:
        raised = e
    if hook.failed_at is not None:
        assert raised is not None and "boom in %s" % g["fail"] in str(raised)
        assert len(set(sink.seen)) == len(sink.seen)
    else:
        assert raised is None, str(raised)
        assert sorted(sink.seen) == list(range(g["n"]))


@st.composite
def close_races(draw):
    return dict(
        producers=draw(st.integers(1, 4)),
        consumers=draw(st.integers(1, 3)),
        capacity=draw(st.sampled_from([1, 1, 2, 4])),
        batch=draw(st.sampled_from([1, 1, 3])),
        close_after=draw(st.integers(0, 80)),
        strict=draw(st.booleans()),
    )


@pytest.mark.timeout(TIMEOUT)
@STRESS_SETTINGS
@given(g=close_races())
def test_close_racing_writers_exactly_once_for_accepted_records(g):
    """Producers write until a write is rejected; a closer closes the queue
    after `close_after` accepted writes, racing the writers.  Strict close:
    the records delivered are exactly the accepted ones (none lost, none
    twice).  Caffe2 close: a record accepted after the readers saw
    closed-and-empty may be lost (Pitfall 3), but none is delivered twice
    and nothing is delivered that was not accepted."""
    workspace.ResetWorkspace()
    if os.environ.get("FASTPIPE_STRESS_TRACE"):
        print("close example", g, flush=True)
    accepted = []
    reached = threading.Event()

    def note(inputs, outputs):
        if not bool(np.asarray(inputs[1].data)):
            accepted.append(int(np.asarray(inputs[0].data).reshape(-1)[0]))
            if len(accepted) >= g["close_after"]:
                reached.set()

    init = core.Net("cr_init")
    init.CreateBlobsQueue([], "cr_q", capacity=g["capacity"], num_blobs=1,
                          strict_close=g["strict"])
    init.CreateCounter([], "cr_ids", init_count=0)
    steps = []
    for p in range(g["producers"]):
        net, idv, _ = _record_net("cr_p%d" % p, "cr_ids")
        keep = net.Copy(idv, "cr_keep%d" % p)
        net.SafeEnqueueBlobs(["cr_q", idv], [idv, "cr_st%d" % p])
        net.Python(note)([keep, "cr_st%d" % p], [])
        steps.append(core.execution_step("cr_prod%d" % p, net, should_stop_blob="cr_st%d" % p))
    closer = core.Net("cr_closer")
    closer.Python(lambda i, o: reached.wait(60))([], [])
    closer.CloseBlobsQueue(["cr_q"], [])
    steps.append(core.execution_step("cr_close", closer))
    for c in range(g["consumers"]):
        init.CreateMutex([], "cr_mu%d" % c)
        workspace.FeedBlob("cr_seen%d" % c, np.zeros(0, np.int64))
        read = core.Net("cr_c%d" % c)
        read.SafeDequeueBlobs(["cr_q"], ["cr_v%d" % c, "cr_cst%d" % c], num_records=g["batch"])
        use = core.Net("cr_use%d" % c)
        use.AtomicAppend(["cr_mu%d" % c, "cr_seen%d" % c, "cr_v%d" % c], ["cr_seen%d" % c])
        steps.append(core.execution_step("cr_cons%d" % c, [read, use],
                                         should_stop_blob="cr_cst%d" % c))
    plan = core.Plan("close_race")
    plan.AddStep(core.execution_step("cr_init", init))
    plan.AddStep(core.execution_step("cr_run", steps, concurrent_substeps=True))
    workspace.RunPlan(plan)
    seen = np.concatenate([workspace.FetchBlob("cr_seen%d" % c).reshape(-1)
                           for c in range(g["consumers"])]).tolist()
    assert len(set(seen)) == len(seen), "a record was delivered twice"
    assert set(seen) <= set(accepted), "delivered a record that was never accepted"
    if g["strict"]:
        assert sorted(seen) == sorted(accepted), (
            "strict close lost %d accepted records" % (len(accepted) - len(seen)))


@pytest.mark.timeout(TIMEOUT)
@STRESS_SETTINGS
@given(gs=st.lists(graphs(), min_size=2, max_size=3))
def test_concurrent_runs_on_one_workspace(gs):
    """2-3 Python threads each run their own random graph (own queues and
    blobs, one shared workspace) at the same time; one run's failure must
    not disturb the others."""
    workspace.ResetWorkspace()
    if os.environ.get("FASTPIPE_STRESS_TRACE"):
        print("concurrent example", gs, flush=True)
    hooks = [Hook(g["fail"], fail_at=g["fail_at"]) if g["fail"] else None for g in gs]
    plans = [build_plan(g, h, pfx="cw%d" % k) for k, (g, h) in enumerate(zip(gs, hooks))]
    results = [None] * len(gs)
    start = threading.Barrier(len(gs))

    def go(k):
        start.wait(10)
        try:
            workspace.RunPlan(plans[k])
            results[k] = "ok"
        except RunError as e:
            results[k] = e
        except BaseException as e:  # noqa: BLE001 - reported below
            results[k] = "unexpected %r" % (e,)
    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(gs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a concurrent run did not terminate"
    for k, g in enumerate(gs):
        assert not (isinstance(results[k], str) and results[k] != "ok"), results[k]
        _check_graph_result(g, hooks[k], None if results[k] == "ok" else results[k],
                            pfx="cw%d" % k)
