"""ExecutionStep rules (runtime spec §1), concurrency, errors, the GIL and
Ctrl-C."""
import os
import signal
import threading
import time

import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import PlanError, RunError

DT = core.DataType


def counter_net(name, counter="ctr"):
    net = core.Net(name)
    net.CountUp(counter, net.NextName("prev"))
    return net


def init_counter(name="ctr", value=0):
    net = core.Net("init_" + name)
    net.CreateCounter([], name, init_count=value)
    workspace.RunNetOnce(net)


def count(name="ctr"):
    net = core.Net("read_" + name)
    net.RetrieveCount(name, "count_of_" + name)
    workspace.RunNetOnce(net)
    return int(workspace.FetchBlob("count_of_" + name))


def run_step(step):
    plan = core.Plan("p")
    plan.AddStep(step)
    return workspace.RunPlan(plan)


def bool_blob(name, value):
    workspace.FeedBlob(name, np.array(value, dtype=np.bool_))


# -- loops and stop blobs --------------------------------------------------------

def test_nets_run_in_order_and_num_iter():
    workspace.FeedBlob("x", np.array([0], np.int64))
    one = core.Net("one")
    one.ConstantFill([], "one_v", shape=[1], value=1, dtype=DT.INT64)
    add = core.Net("add")
    add.Add(["x", "one_v"], "x")
    dbl = core.Net("dbl")
    dbl.Add(["x", "x"], "x")
    assert run_step(core.execution_step("s", [one, add, dbl], num_iter=3)) is True
    # ((0+1)*2+1)*2+1)*2 = 14
    assert workspace.FetchBlob("x")[0] == 14


@pytest.mark.parametrize("n", [0, 1, 7])
def test_num_iter_counts(n):
    init_counter()
    run_step(core.execution_step("s", counter_net("c"), num_iter=n))
    assert count() == n


def test_stop_checked_after_each_net_never_before_first():
    init_counter()
    bool_blob("stop", True)        # stale true from an earlier run
    nets = [counter_net("a"), counter_net("b")]
    run_step(core.execution_step("s", nets, should_stop_blob="stop"))
    assert count() == 1            # first net ran; the stop skipped the second


def test_stop_set_mid_loop_skips_rest_and_is_success():
    init_counter()
    init_counter("after")
    bool_blob("stop", False)
    check = core.Net("check")
    check.CountUp("ctr", "v")
    check.ConstantFill([], "limit", shape=[], value=4, dtype=DT.INT64)
    check.GE(["v", "limit"], "stop")
    tail = counter_net("tail", "after")
    assert run_step(core.execution_step("loop", [check, tail], should_stop_blob="stop"))
    assert count() == 5 and count("after") == 4


def test_only_once():
    init_counter()
    bool_blob("stop", False)
    run_step(core.execution_step("s", counter_net("c"), should_stop_blob="stop",
                                 only_once=True))
    assert count() == 1


def test_substep_loop_with_stop_checked_after_each_substep():
    init_counter()
    bool_blob("stop", True)
    s1 = core.execution_step("s1", counter_net("c1"))
    s2 = core.execution_step("s2", counter_net("c2"))
    outer = core.execution_step("outer", [s1, s2], should_stop_blob="stop")
    run_step(outer)
    assert count() == 1


def test_stop_blob_must_be_a_bool_scalar():
    init_counter()
    workspace.FeedBlob("stop", np.array(1, np.int64))
    with pytest.raises(RunError, match="should_stop_blob 'stop' expects a scalar boolean, got int64"):
        run_step(core.execution_step("s", counter_net("c"), should_stop_blob="stop"))
    workspace.FeedBlob("stop", np.array([True, False]))
    init_counter()
    with pytest.raises(RunError, match="scalar boolean, got bool\\[2\\]"):
        run_step(core.execution_step("s", counter_net("c"), should_stop_blob="stop"))


def test_missing_stop_blob_is_plan_error():
    init_counter()
    with pytest.raises(PlanError, match="should_stop_blob 'nowhere' does not exist"):
        run_step(core.execution_step("s", counter_net("c"), should_stop_blob="nowhere"))


def test_stop_blob_created_by_the_steps_own_net_is_found():
    init_counter()
    net = core.Net("makes_stop")
    net.CountUp("ctr", "v")
    net.ConstantFill([], "three", shape=[], value=2, dtype=DT.INT64)
    net.GE(["v", "three"], "made_stop")
    run_step(core.execution_step("s", net, should_stop_blob="made_stop"))
    assert count() == 3


# -- validation ---------------------------------------------------------------------

def _plan_with(step_proto_edit):
    init_counter()
    step = core.execution_step("s", counter_net("c"))
    plan = core.Plan("p")
    plan.AddStep(step)
    proto = plan.Proto()
    step_proto_edit(proto)
    return proto


def test_step_validation_errors():
    def both(p):
        p.execution_step[0].substep.add(name="x")
    with pytest.raises(PlanError, match="either have substeps or networks but not both"):
        workspace.RunPlan(_plan_with(both))

    def iter_and_stop(p):
        p.execution_step[0].num_iter = 3
        p.execution_step[0].should_stop_blob = "stop"
    with pytest.raises(PlanError, match="num_iter and should_stop_blob"):
        workspace.RunPlan(_plan_with(iter_and_stop))

    def once(p):
        p.execution_step[0].only_once = True
    with pytest.raises(PlanError, match="only_once without should_stop_blob"):
        workspace.RunPlan(_plan_with(once))

    def undefined(p):
        p.execution_step[0].network.append("ghost")
    with pytest.raises(PlanError, match="uses undefined net 'ghost'"):
        workspace.RunPlan(_plan_with(undefined))

    def report(p):
        p.execution_step[0].report_net = p.network[0].name
    with pytest.raises(PlanError, match="needs report_interval"):
        workspace.RunPlan(_plan_with(report))


def test_instances_without_create_workspace_rejected():
    init_counter()
    inner = core.execution_step("inner", counter_net("c"))
    outer = core.execution_step("outer", [inner], num_concurrent_instances=2)
    with pytest.raises(PlanError, match="without create_workspace"):
        run_step(outer)
    with pytest.raises(PlanError, match="must be >= 1"):
        run_step(core.execution_step("neg", [core.execution_step("i", counter_net("d"),
                                                                  create_workspace=True)],
                                     num_concurrent_instances=-1))


# -- workspaces and instances -----------------------------------------------------------

def test_create_workspace_child_outputs_reach_parent_only_if_preexisting():
    workspace.FeedBlob("shared_out", np.array([0], np.int32))
    net = core.Net("writer")
    net.ConstantFill([], "shared_out", shape=[1], value=7, dtype=DT.INT32)
    net.ConstantFill([], "private_out", shape=[1], value=1, dtype=DT.INT32)
    run_step(core.execution_step("s", net, create_workspace=True))
    assert workspace.FetchBlob("shared_out")[0] == 7
    assert not workspace.HasBlob("private_out")


@pytest.mark.parametrize("n", [1, 2, 8])
def test_concurrent_instances_share_parent_blobs(n):
    init_counter()
    body = core.Net("body")
    body.CountUp("ctr", "local_prev")        # same local name in every instance
    body.ConstantFill([], "instance_local", shape=[1], value=1.0)
    inst = core.execution_step("inst", body, num_iter=100, create_workspace=True)
    run_step(core.execution_step("par", [inst], num_concurrent_instances=n))
    assert count() == 100 * n
    assert not workspace.HasBlob("instance_local")


def test_concurrent_substeps_really_run_concurrently():
    # A and B rendezvous through two queues: run one after the other, they
    # would deadlock (the DequeueBlobs timeout turns that into a failure).
    init = core.Net("qinit")
    init.CreateBlobsQueue([], "q1", capacity=1, num_blobs=1)
    init.CreateBlobsQueue([], "q2", capacity=1, num_blobs=1)
    init.ConstantFill([], "token", shape=[1], value=1.0)
    workspace.RunNetOnce(init)
    a = core.Net("a")
    a.EnqueueBlobs(["q1", "token"], ["token"])
    a.DequeueBlobs(["q2"], ["got_a"], timeout_secs=10.0)
    b = core.Net("b")
    b.DequeueBlobs(["q1"], ["got_b"], timeout_secs=10.0)
    b.EnqueueBlobs(["q2", "got_b"], ["got_b"])
    step = core.execution_step("both", [core.execution_step("sa", a),
                                        core.execution_step("sb", b)],
                               concurrent_substeps=True)
    assert run_step(step)
    assert workspace.FetchBlob("got_a")[0] == 1.0


def test_same_net_in_two_concurrent_steps_is_detected_not_raced():
    init_counter()
    net = counter_net("shared_net")
    s1 = core.execution_step("s1", net, num_iter=20000)
    s2 = core.execution_step("s2", net, num_iter=20000)
    step = core.execution_step("both", [s1, s2], concurrent_substeps=True)
    try:
        run_step(step)
    except PlanError as e:
        assert "already running in another thread" in str(e)
    else:
        # the two loops happened not to overlap: the count is still exact
        assert count() == 40000


# -- reporters ------------------------------------------------------------------------------

def test_run_every_ms_reporter_final_run_guarantee():
    init_counter()
    init_counter("rep")
    rep = core.execution_step("rep", counter_net("repnet", "rep"))
    rep.RunEveryMillis(60000)        # never fires during the body...
    body = core.execution_step("body", counter_net("bodynet"), num_iter=5)
    run_step(core.execution_step("with_rep", [rep, body]))
    assert count() == 5
    assert count("rep") == 1         # ...but always runs once at the end


def test_reporter_runs_periodically_while_body_waits():
    # The body waits (bounded) on a queue that the reporter fills after it has
    # run twice, so the test needs no sleep.
    init = core.Net("rinit")
    init.CreateBlobsQueue([], "rq", capacity=4, num_blobs=1)
    init.CreateCounter([], "rep", init_count=0)
    workspace.RunNetOnce(init)
    reporter = core.Net("reporter")
    reporter.CountUp("rep", "rep_prev")
    reporter.ConstantFill([], "two", shape=[], value=1, dtype=DT.INT64)
    reporter.EQ(["rep_prev", "two"], "second")
    reporter.Cast("second", "second_f", to=DT.FLOAT)
    reporter.SafeEnqueueBlobs(["rq", "second_f"], ["second_f", "rq_status"])
    body = core.Net("waiter")
    body.DequeueBlobs(["rq"], ["seen"], timeout_secs=20.0)
    body.DequeueBlobs(["rq"], ["seen"], timeout_secs=20.0)
    rep = core.execution_step("rep", reporter)
    rep.RunEveryMillis(5)
    run_step(core.execution_step("s", [rep, core.execution_step("b", body)]))
    assert count("rep") >= 3        # two periodic runs + the final one


def test_report_net_final_run():
    init_counter("rep")
    init_counter()
    step = core.execution_step("s", counter_net("body"), num_iter=2,
                               report_net=counter_net("reportnet", "rep"),
                               report_interval=3600)
    run_step(step)
    assert count("rep") == 1


# -- errors ------------------------------------------------------------------------------------

def _blocking_consumer_and_failing_producer(fail_net):
    init = core.Net("einit")
    init.CreateBlobsQueue([], "eq", capacity=1, num_blobs=1)
    workspace.RunNetOnce(init)
    consumer = core.Net("consumer")
    consumer.DequeueBlobs(["eq"], ["never"])   # blocks forever without cancellation
    return core.execution_step("main", [core.execution_step("cons", consumer),
                                        core.execution_step("prod", fail_net)],
                               concurrent_substeps=True)


@pytest.mark.timeout(20)
def test_op_error_in_worker_cancels_blocked_sibling():
    bad = core.Net("bad_producer")
    workspace.FeedBlob("a", np.ones(2, np.float32))
    workspace.FeedBlob("b", np.ones(3, np.float32))
    bad.Add(["a", "b"], "c")
    step = _blocking_consumer_and_failing_producer(bad)
    t0 = time.monotonic()
    with pytest.raises(RunError, match="Add #0 in net 'bad_producer.*step 'prod'.*Dimension mismatch"):
        run_step(step)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(20)
def test_python_error_in_instance_raises_with_cause():
    def fail(inputs, outputs):
        raise ValueError("bad record 42")
    net = core.Net("pyinst")
    net.Python(fail)([], [])
    inst = core.execution_step("inst", net, create_workspace=True)
    step = _blocking_consumer_and_failing_producer(net)
    with pytest.raises(RunError, match="ValueError: bad record 42") as ei:
        run_step(step)
    assert isinstance(ei.value.__cause__, ValueError)
    with pytest.raises(RunError, match="bad record 42"):
        run_step(core.execution_step("par", [inst], num_concurrent_instances=4))


def test_rerun_after_failure_works():
    workspace.FeedBlob("a", np.ones(2, np.float32))
    workspace.FeedBlob("b", np.ones(3, np.float32))
    net = core.Net("rerun")
    net.Add(["a", "b"], "c")
    step = core.execution_step("s", net)
    plan = core.Plan("rerun_plan")
    plan.AddStep(step)
    with pytest.raises(RunError):
        workspace.RunPlan(plan)
    workspace.FeedBlob("b", np.ones(2, np.float32))
    assert workspace.RunPlan(plan)
    np.testing.assert_array_equal(workspace.FetchBlob("c"), [2, 2])


@pytest.mark.timeout(60)
def test_concurrent_runs_on_one_workspace():
    # Runs share the workspace and the counter object; each writes its own
    # output blobs (two runs writing one tensor blob race, as in Caffe2).
    init_counter()
    plans = []
    for k in range(4):
        plan = core.Plan("shared_%d" % k)
        plan.AddStep(core.execution_step("s", counter_net("c%d" % k), num_iter=1000))
        plans.append(plan)
    errors = []

    def go(plan):
        try:
            for _ in range(5):
                workspace.RunPlan(plan)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=go, args=(p,)) for p in plans]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
        assert not t.is_alive()
    assert not errors
    assert count() == 4 * 5 * 1000


# -- the GIL and signals -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_gil_is_released_during_native_loop():
    progress = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            progress[0] += 1
    marks = []

    def mark(inputs, outputs):
        marks.append(progress[0])
    begin = core.Net("begin")
    begin.Python(mark)([], [])
    workspace.FeedBlob("x", np.ones(64, np.float32))
    loop = core.Net("loop")
    loop.Add(["x", "x"], "y")
    end = core.Net("end")
    end.Python(mark)([], [])
    t = threading.Thread(target=spin)
    t.start()
    try:
        plan = core.Plan("gil")
        plan.AddStep(core.execution_step("b", begin))
        plan.AddStep(core.execution_step("l", loop, num_iter=300000))
        plan.AddStep(core.execution_step("e", end))
        workspace.RunPlan(plan)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    # With the GIL held by the loop, the Python thread would barely move.
    assert marks[1] - marks[0] > 10000, marks


@pytest.mark.timeout(30)
def test_ctrl_c_while_blocked_in_queue_raises_keyboard_interrupt():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    init = core.Net("sinit")
    init.CreateBlobsQueue([], "sq", capacity=1, num_blobs=1)
    workspace.RunNetOnce(init)
    blocked = threading.Event()

    def announce(inputs, outputs):
        blocked.set()
    net = core.Net("blocker")
    net.Python(announce)([], [])
    net.DequeueBlobs(["sq"], ["never"])
    sent = []

    def interrupter():
        if blocked.wait(20):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
    # A process started in the background inherits SIGINT as ignored (and
    # Python then installs no handler): make Ctrl-C raise as in a terminal.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=interrupter)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_step(core.execution_step("s", net))
        elapsed = time.monotonic() - sent[0]
    finally:
        t.join(10)
        signal.signal(signal.SIGINT, old)
    assert elapsed < 1.0
