"""Fault injection: a failure anywhere in a run (an op error, a ``Python``
op exception, a soft failure of a queue op, a reporter failure, a failure in
task or instance init/exit) records the first error, wakes every blocked
read and write, stops every loop, joins every native thread and raises from
``run`` naming the op, its net and step.  Each failure is injected while
peers are blocked on a full queue and on an empty queue (capacity-1 queues
and Event handshakes make that deterministic; no sleeps).  Then: sticky
cancel, re-running after a failure, many runs in one LocalSession, and
Ctrl-C.

Both APIs are covered: the raw core (``core.Net``, ``core.execution_step``,
``workspace.RunPlan``) and the pipeline stack (``pipeline.pipe``,
``task.TaskGroup``, ``session.LocalSession``).  The autouse fixture in
conftest.py checks that no native thread outlives a test.
"""
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from fastpipe import core, schema, workspace
from fastpipe.dataio import CountUntil
from fastpipe.errors import RunError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.queue_util import Queue
from fastpipe.session import LocalSession
from fastpipe.task import Task, TaskGroup

from reliability_helpers import (DT, HANDSHAKE_SECS, Announcer, Boom, Hook, Sink,
                                 add_hook, fd_count, native_thread_count, victim_steps)

pytestmark = pytest.mark.timeout(60)   # tests below may set their own

K = 3               # records that go through before a stream failure
N_RECORDS = 10      # records the producer makes when it is finite

# stage -> (net name, step name, call of the hook that fails)
RAW_STAGES = {
    "producer": ("producer", "produce", K + 1),
    "processor": ("processor", "mid_loop", K + 1),
    "consumer": ("consumer", "consume", K + 1),
    "instance_init": ("mid_inst_init", "mid_inst_init", 2),
    "instance_exit": ("mid_inst_exit", "mid_inst_exit", 1),
    "task_init": ("mid_task_init", "mid_task_init", 1),
    "task_exit": ("mid_task_exit", "mid_task_exit", 1),
    "reporter": ("mid_report", "mid_reporter", 1),
}


def _expected(net, step, stage, kind):
    where = r"in net '%s(_\d+)?' \(step '%s'(, instance \d+)?\)" % (net, step)
    if kind == "python":
        return r"Python #\d+ %s: the Python function raised Boom: boom in %s at call \d+" % (
            where, stage)
    return r"Add #\d+ %s: .*[Dd]imension mismatch" % where


def raw_plan(hooks, victim=None, victim_event=None, n_records=N_RECORDS, instances=2,
             capacity=1, sink=None):
    """producer -> q1 -> [2 instances of processor] -> q2 -> consumer, with
    task init/exit, instance init/exit and a 1 ms reporter on the middle
    stage; every stage runs its hook (see reliability_helpers.Hook).
    `victim` ('full' / 'empty') adds a step blocked on a third queue."""
    def hook(stage):
        return hooks.get(stage) or Hook(stage)

    init = core.Net("fault_init")
    init.CreateBlobsQueue([], "q1", capacity=capacity, num_blobs=1)
    init.CreateBlobsQueue([], "q2", capacity=capacity, num_blobs=1)
    init.CreateCounter([], "ids", init_count=0)

    prod = core.Net("producer")
    add_hook(prod, hook("producer"), "producer")
    prod.CountUp("ids", "pid")
    prod.SafeEnqueueBlobs(["q1", "pid"], ["pid", "p_status"])
    close1 = core.Net("close_q1")
    close1.CloseBlobsQueue(["q1"], [])
    producer_task = core.execution_step("producer_task", [
        core.execution_step("produce", prod, num_iter=n_records),
        core.execution_step("close_q1", close1)])

    task_init = core.Net("mid_task_init")
    add_hook(task_init, hook("task_init"), "task_init")
    inst_init = core.Net("mid_inst_init")
    add_hook(inst_init, hook("instance_init"), "instance_init")
    inst_init.ConstantFill([], "mid_st", shape=[], value=False, dtype=DT.BOOL)
    mid_read = core.Net("mid_read")
    mid_read.SafeDequeueBlobs(["q1"], ["mv", "mid_st"])
    proc = core.Net("processor")
    add_hook(proc, hook("processor"), "processor")
    proc.SafeEnqueueBlobs(["q2", "mv"], ["mv", "mid_wst"])
    inst_exit = core.Net("mid_inst_exit")
    add_hook(inst_exit, hook("instance_exit"), "instance_exit")
    task_exit = core.Net("mid_task_exit")
    add_hook(task_exit, hook("task_exit"), "task_exit")
    close2 = core.Net("close_q2")
    close2.CloseBlobsQueue(["q2"], [])
    report = core.Net("mid_report")
    add_hook(report, hook("reporter"), "reporter")
    reporter = core.execution_step("mid_reporter", report)
    reporter.RunEveryMillis(1)
    instance = core.execution_step("mid_instance", [
        core.execution_step("mid_inst_init", inst_init),
        core.execution_step("mid_loop", [mid_read, proc], should_stop_blob="mid_st"),
        core.execution_step("mid_inst_exit", inst_exit)], create_workspace=True)
    mid_task = core.execution_step("mid_task", [
        reporter,
        core.execution_step("mid_task_init", task_init),
        core.execution_step("mid_parallel", [instance], num_concurrent_instances=instances),
        core.execution_step("mid_task_exit", task_exit),
        core.execution_step("close_q2", close2)])

    cons_read = core.Net("cons_read")
    cons_read.SafeDequeueBlobs(["q2"], ["cv", "cons_st"])
    cons = core.Net("consumer")
    add_hook(cons, hook("consumer"), "consumer")
    cons.Python(sink or Sink())(["cv"], [])
    consumer_task = core.execution_step("consume", [cons_read, cons], should_stop_blob="cons_st")

    tasks = [producer_task, mid_task, consumer_task]
    if victim is not None:
        tasks.append(victim_steps(init, victim, victim_event))
    plan = core.Plan("fault_plan")
    plan.AddStep(core.execution_step("fault_init", init))
    plan.AddStep(core.execution_step("fault_run", tasks, concurrent_substeps=True))
    return plan


# -- raw core API: every stage x (python, op) x (peer blocked on full, empty) ---------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
@pytest.mark.parametrize("kind", ["python", "op"])
@pytest.mark.parametrize("stage", sorted(RAW_STAGES))
def test_raw_failure_while_peer_blocked(stage, kind, blocked):
    net, step, fail_at = RAW_STAGES[stage]
    blocked_ev = threading.Event()
    hook = Hook(stage, fail_at=fail_at, kind=kind, wait_for=blocked_ev)
    # the reporter fails on its first periodic run: keep the stream going
    n = 10 ** 9 if stage == "reporter" else N_RECORDS
    plan = raw_plan({stage: hook}, victim=blocked, victim_event=blocked_ev, n_records=n)
    with pytest.raises(RunError, match=_expected(net, step, stage, kind)) as ei:
        workspace.RunPlan(plan)
    assert blocked_ev.is_set()
    assert hook.failed_at is not None
    assert time.monotonic() - hook.failed_at < 5.0
    if kind == "python":
        assert isinstance(ei.value.__cause__, Boom)
    # the first error wins: no "queue closed" / "cancelled" message from peers
    assert "closed" not in str(ei.value).lower()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("capacity", [1, 2, 64])
@pytest.mark.parametrize("instances", [1, 2, 8])
@pytest.mark.parametrize("stage", ["producer", "processor", "consumer", "instance_exit"])
def test_raw_failure_over_instances_and_capacities(stage, instances, capacity):
    net, step, fail_at = RAW_STAGES[stage]
    ev = threading.Event()
    hook = Hook(stage, fail_at=fail_at, wait_for=ev)
    plan = raw_plan({stage: hook}, victim="full", victim_event=ev, instances=instances,
                    capacity=capacity, n_records=200)
    with pytest.raises(RunError, match=_expected(net, step, stage, "python")):
        workspace.RunPlan(plan)


@pytest.mark.timeout(60)
def test_raw_plan_without_failure_delivers_everything():
    sink = Sink()
    assert workspace.RunPlan(raw_plan({}, sink=sink, n_records=50))
    assert sorted(sink.seen) == list(range(50))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
def test_soft_failure_of_plain_dequeue_cancels_blocked_peers(blocked):
    """A plain DequeueBlobs on a closed, empty queue is an op failure (Caffe2
    returned false there and a blocked sibling hung: Pitfall 9)."""
    ev = threading.Event()
    init = core.Net("soft_init")
    init.CreateBlobsQueue([], "soft_q", capacity=1, num_blobs=1)
    victim = victim_steps(init, blocked, ev)
    wait = core.Net("soft_wait")
    wait.Python(lambda i, o: ev.wait(20))([], [])
    wait.CloseBlobsQueue(["soft_q"], [])
    wait.DequeueBlobs(["soft_q"], ["soft_out"])
    plan = core.Plan("soft")
    plan.AddStep(core.execution_step("soft_init", init))
    plan.AddStep(core.execution_step("soft_run", [core.execution_step("soft_step", wait),
                                                  victim], concurrent_substeps=True))
    with pytest.raises(RunError, match=r"DequeueBlobs #2 in net 'soft_wait(_\d+)?' "
                                       r"\(step 'soft_step'\): .*closed"):
        workspace.RunPlan(plan)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
def test_dequeue_timeout_cancels_blocked_peers(blocked):
    """A DequeueBlobs timeout is an op failure that cancels blocked peers."""
    ev = threading.Event()
    init = core.Net("tmo_init")
    init.CreateBlobsQueue([], "tmo_q", capacity=1, num_blobs=1)
    victim = victim_steps(init, blocked, ev)
    wait = core.Net("tmo_wait")
    wait.Python(lambda i, o: ev.wait(20))([], [])
    wait.DequeueBlobs(["tmo_q"], ["tmo_out"], timeout_secs=0.01)
    plan = core.Plan("tmo")
    plan.AddStep(core.execution_step("tmo_init", init))
    plan.AddStep(core.execution_step("tmo_run", [core.execution_step("tmo_step", wait),
                                                 victim], concurrent_substeps=True))
    with pytest.raises(RunError, match=r"DequeueBlobs #1 in net 'tmo_wait(_\d+)?' "
                                       r"\(step 'tmo_step'\): DequeueBlobs timed out in 10 ms "
                                       r"on queue 'tmo_q'"):
        workspace.RunPlan(plan)


@pytest.mark.timeout(60)
def test_report_net_failure_on_final_run_raises():
    """A step's report_net always runs once at the end; if that run fails,
    the step fails."""
    hook = Hook("report_net", fail_at=1)
    rep = core.Net("final_report")
    rep.Python(hook)([], [])
    body = core.Net("rn_body")
    body.ConstantFill([], "rn_x", shape=[1], value=1.0)
    step = core.execution_step("rn_step", body, num_iter=3, report_net=rep,
                               report_interval=3600)
    plan = core.Plan("rn")
    plan.AddStep(step)
    with pytest.raises(RunError, match=r"Python #0 in net 'final_report(_\d+)?'.*"
                                       r"Boom: boom in report_net"):
        workspace.RunPlan(plan)


# -- pipeline API -------------------------------------------------------------------

def _int_struct():
    return schema.Struct(("iter", schema.Scalar(np.int64)))


def pipeline_group(hooks, victim=None, victim_event=None, n_records=N_RECORDS,
                   instances=2, capacity=1, sink=None):
    """CountUntil(n) -> [producer processor] -> Queue(capacity) ->
    [processor, `instances` runtime instances, with task/instance
    init/exit hooks and a 1 ms task reporter] -> Queue(capacity) ->
    [consumer processor + sink].  `victim` adds a task blocked on a full or
    an empty capacity-1 queue that announces it is about to block."""
    def hook(stage):
        return hooks.get(stage) or Hook(stage)
    sink = sink or Sink()

    def producer(rec):
        ops.Python(hook("producer"))([], [])
        return rec

    def processor(rec):
        with ops.task_init():
            ops.Python(hook("task_init"))([], [])
        with ops.task_exit():
            ops.Python(hook("task_exit"))([], [])
        with ops.task_instance_init():
            ops.Python(hook("instance_init"))([], [])
        with ops.task_instance_exit():
            ops.Python(hook("instance_exit"))([], [])
        with ops.task_reporter(interval_ms=1):
            ops.Python(hook("reporter"))([], [])
        ops.Python(hook("processor"))([], [])
        return rec

    def consumer(rec):
        ops.Python(hook("consumer"))([], [])
        ops.Python(sink)(rec.field_blobs(), [])
        return None         # a sink: no output queue (which nobody would read)

    with TaskGroup() as tg:
        q1 = pipe(CountUntil(n_records), processor=producer, capacity=capacity,
                  name="prod")
        q2 = pipe(q1, processor=processor, capacity=capacity, name="mid",
                  num_runtime_threads=instances)
        pipe(q2, processor=consumer, name="cons")
        if victim == "full":
            def announce_full(rec):
                ops.Python(Announcer(victim_event, at=2))([], [])
                return rec
            pipe(CountUntil(10 ** 9), Queue(1, name="victim_full_q"),
                 processor=announce_full, name="victim_full")
        elif victim == "empty":
            def announce_empty(rec):
                with ops.task_instance_init():
                    ops.Python(Announcer(victim_event, at=1))([], [])
                return rec
            pipe(Queue(1, schema=_int_struct(), name="victim_empty_q"),
                 processor=announce_empty, name="victim_empty")
    return tg


PIPE_STAGES = {   # stage -> (task name in the net name, call that fails)
    "producer": ("prod", K + 1),
    "processor": ("mid", K + 1),
    "consumer": ("cons", K + 1),
    "instance_init": ("mid", 2),
    "instance_exit": ("mid", 1),
    "task_init": ("mid", 1),
    "task_exit": ("mid", 1),
    "reporter": ("mid", 1),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
@pytest.mark.parametrize("stage", sorted(PIPE_STAGES))
def test_pipeline_failure_while_peer_blocked(stage, blocked):
    task, fail_at = PIPE_STAGES[stage]
    ev = threading.Event()
    hook = Hook(stage, fail_at=fail_at, wait_for=ev)
    n = 10 ** 9 if stage == "reporter" else N_RECORDS
    tg = pipeline_group({stage: hook}, victim=blocked, victim_event=ev, n_records=n)
    with pytest.raises(RunError, match=r"Python #\d+ in net '[^']*%s[^']*' "
                                       r"\(step '[^']+'(, instance \d+)?\): "
                                       r"the Python function raised Boom: boom in %s"
                       % (task, stage)) as ei:
        LocalSession().run(tg)
    assert ev.is_set()
    assert isinstance(ei.value.__cause__, Boom)
    assert time.monotonic() - hook.failed_at < 5.0


@pytest.mark.timeout(60)
def test_pipeline_reporter_failing_on_its_final_run():
    """A task reporter whose interval never elapses still runs once at the
    end of each instance; a failure there fails the run."""
    hook = Hook("final_report", fail_at=1)
    with TaskGroup() as tg:
        with Task(name="final_rep", num_instances=2):
            with ops.task_reporter(interval_ms=60000):
                ops.Python(hook)([], [])
            ops.Const(1)
    with pytest.raises(RunError, match=r"Python #0 in net '[^']*final_rep[^']*' \(step "
                                       r"'[^']*final_rep[^']*', instance [01]\): the Python "
                                       r"function raised Boom: boom in final_report"):
        LocalSession().run(tg)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["local_init", "local_exit"])
def test_pipeline_failure_in_node_setup(which):
    """local_init runs before every task of the node, local_exit after all
    of them (so no peer can be left blocked there)."""
    hook = Hook(which, fail_at=1)
    sink = Sink()
    tg = pipeline_group({}, sink=sink, n_records=30)
    with tg:
        with Task(name="node_setup"):
            with getattr(ops, which)():
                ops.Python(hook)([], [])
            ops.Const(1)
    with pytest.raises(RunError, match=r"net '[^']*node_setup[^']*'.*boom in %s" % which):
        LocalSession().run(tg)
    if which == "local_init":
        assert sink.seen == []          # no task started


def _broken_factory(peer_blocked):
    peer_blocked.wait(HANDSHAKE_SECS)
    raise ValueError("factory broke")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
def test_python_op_factory_failing_in_an_instance_while_peer_blocked(blocked):
    """Python ops in (factory, args, kwargs) form are created when each
    instance's workspace is compiled (at run time)."""
    ev = threading.Event()
    tg = pipeline_group({}, victim=blocked, victim_event=ev)

    def proc(rec):
        ops.Python((_broken_factory, (ev,), {}))([], [])
        return None
    with tg:
        q = pipe(CountUntil(5), name="fac_src")
        pipe(q, processor=proc, num_runtime_threads=3, name="facpipe")
    with pytest.raises(RunError, match=r"Python #0 in net '[^']*facpipe[^']*' \(step "
                                       r"'[^']*facpipe[^']*', instance \d\): creating the "
                                       r"Python op raised ValueError: factory broke"):
        LocalSession().run(tg)
    assert ev.is_set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
def test_pipeline_without_failure_delivers_everything(instances):
    sink = Sink()
    LocalSession().run(pipeline_group({}, sink=sink, n_records=40, instances=instances))
    assert sorted(sink.seen) == list(range(40))


@pytest.mark.timeout(60)
def test_op_error_mid_stream_in_pipeline_processor():
    """An Add with mismatched dims (its input changes shape at record 5)."""
    ev = threading.Event()
    ev.set()
    hook = Hook("shape", fail_at=5, kind="op")

    def proc(rec):
        shape = ops.Python(hook)([], 1)
        ops.Add([ops.Const(np.ones(2, np.float32)), shape])
        return rec
    with TaskGroup() as tg:
        q = pipe(CountUntil(10 ** 6), processor=proc, capacity=1, name="shaper",
                 num_runtime_threads=2)
        pipe(q, processor=lambda rec: None, name="drain")
    with pytest.raises(RunError, match=r"Add #\d+ in net '[^']*shaper[^']*' "
                                       r"\(step '[^']+'(, instance \d+)?\): "
                                       r".*[Dd]imension mismatch"):
        LocalSession().run(tg)


@pytest.mark.timeout(60)
def test_failure_message_names_the_runtime_instance():
    hook = Hook("processor", fail_at=K + 1)
    tg = pipeline_group({"processor": hook}, instances=4)
    with pytest.raises(RunError) as ei:
        LocalSession().run(tg)
    assert re.search(r"\(step '[^']+', instance [0-3]\)", str(ei.value)), str(ei.value)


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str() of this exception fails")


@pytest.mark.timeout(60)
def test_python_exception_with_unprintable_message_fails_the_run():
    def bad(inputs, outputs):
        raise _Unprintable()
    net = core.Net("unp")
    net.Python(bad)([], [])
    net.ConstantFill([], "unp_after", shape=[1], value=1.0)
    with pytest.raises(RunError, match=r"Python #0 in net 'unp(_\d+)?'") as ei:
        workspace.RunPlan(core.Plan(core.execution_step("unp_step", net)))
    assert isinstance(ei.value.__cause__, _Unprintable)


# -- sticky cancel ------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [2, 8])
def test_failing_instance_stops_non_blocking_sibling_instances(n):
    """Pitfall 10: N instances of one substep must see a sibling's failure
    at their next check, even when they never block."""
    hook = Hook("spinner", fail_at=50)
    init = core.Net("spin_init")
    init.CreateCounter([], "spins", init_count=0)
    workspace.RunNetOnce(init)
    body = core.Net("spin_body")
    body.CountUp("spins", "spin_prev")
    fail = core.Net("spin_fail")
    fail.Python(hook)([], [])
    inst = core.execution_step("spin_inst", [
        core.execution_step("spin_loop", body, num_iter=10 ** 10),
        core.execution_step("spin_fail", fail, num_iter=100)],
        create_workspace=True, concurrent_substeps=True)
    plan = core.Plan("spin")
    plan.AddStep(core.execution_step("spin_par", [inst], num_concurrent_instances=n))
    with pytest.raises(RunError, match="boom in spinner"):
        workspace.RunPlan(plan)


@pytest.mark.timeout(60)
def test_cancel_is_sticky_no_later_step_or_iteration_runs():
    """After the first failure nothing new starts: not the rest of an outer
    loop's iterations, not a later top-level step, not a sibling's next
    iteration; reporters do not run periodically anymore."""
    workspace.RunNetOnce(_counters_net("sticky", ["outer", "later", "sib", "rep"]))
    sib_midway = threading.Event()      # the sibling is inside its 2nd iteration
    failing_now = threading.Event()     # the failing op is about to raise
    boom = Hook("sticky", fail_at=2, wait_for=sib_midway)

    def fail_op(inputs, outputs):
        if boom.calls + 1 == boom.fail_at:
            sib_midway.wait(HANDSHAKE_SECS)
            failing_now.set()
        boom(inputs, outputs)
    failing = core.Net("sticky_fail")
    failing.Python(fail_op)([], [])
    sib_ran_after = []
    sib_calls = [0]

    def sibling(inputs, outputs):
        sib_calls[0] += 1
        if sib_calls[0] == 1000 + 10:
            # hand over to the failing op and keep going only once it fails
            sib_midway.set()
            failing_now.wait(HANDSHAKE_SECS)
        elif failing_now.is_set():
            sib_ran_after.append(time.monotonic())
    sib = core.Net("sticky_sib")
    sib.Python(sibling)([], [])
    sib.CountUp("sib", "sib_prev")
    outer_count = core.Net("sticky_outer")
    outer_count.CountUp("outer", "outer_prev")
    later = core.Net("sticky_later")
    later.CountUp("later", "later_prev")
    rep_net = core.Net("sticky_rep")
    rep_net.CountUp("rep", "rep_prev")
    rep = core.execution_step("sticky_reporter", rep_net)
    rep.RunEveryMillis(60000)
    loop = core.execution_step("sticky_loop", [
        rep,
        core.execution_step("sticky_count", outer_count),
        core.execution_step("sticky_pair", [
            core.execution_step("sticky_fail_step", failing),
            core.execution_step("sticky_sib_step", sib, num_iter=1000)],
            concurrent_substeps=True)], num_iter=5)
    plan = core.Plan("sticky")
    plan.AddStep(loop)
    plan.AddStep(core.execution_step("sticky_later", later))
    with pytest.raises(RunError, match="boom in sticky at call 2"):
        workspace.RunPlan(plan)
    assert _count("outer") == 2          # the failing iteration was the second
    assert _count("later") == 0
    assert _count("rep") <= 1            # at most the final run
    # the sibling stopped at its next check, not after its 1000 iterations
    assert len(sib_ran_after) <= 3
    assert 1010 <= _count("sib") < 1020
    assert boom.calls == 2


def _counters_net(name, counters):
    net = core.Net(name + "_counters")
    for c in counters:
        net.CreateCounter([], c, init_count=0)
    return net


def _count(counter):
    net = core.Net("read_" + counter)
    net.RetrieveCount(counter, counter + "_value")
    workspace.RunNetOnce(net)
    return int(workspace.FetchBlob(counter + "_value"))


@pytest.mark.timeout(60)
def test_many_peers_woken_by_one_failure():
    """8 producers blocked on one full queue and 8 consumers blocked on an
    empty one are all woken by one failure."""
    ev = threading.Event()
    full_writes = [0]
    lock = threading.Lock()

    def count_write(inputs, outputs):
        with lock:
            full_writes[0] += 1
            if full_writes[0] >= 8 + 1:     # capacity 1: 8 writers, at most 1 in
                ev.set()
    init = core.Net("many_init")
    init.CreateBlobsQueue([], "many_full", capacity=1, num_blobs=1)
    init.CreateBlobsQueue([], "many_empty", capacity=1, num_blobs=1)
    steps = []
    for i in range(8):
        w = core.Net("many_w%d" % i)
        w.Python(count_write)([], [])
        w.ConstantFill([], "mw%d" % i, shape=[1], value=1.0)
        w.EnqueueBlobs(["many_full", "mw%d" % i], ["mw%d" % i])
        steps.append(core.execution_step("many_w%d" % i, w, num_iter=10 ** 9))
        r = core.Net("many_r%d" % i)
        r.DequeueBlobs(["many_empty"], ["mr%d" % i])
        steps.append(core.execution_step("many_r%d" % i, r, num_iter=10 ** 9))
    hook = Hook("many", fail_at=1, wait_for=ev)
    f = core.Net("many_fail")
    f.Python(hook)([], [])
    steps.append(core.execution_step("many_fail", f))
    plan = core.Plan("many")
    plan.AddStep(core.execution_step("many_init", init))
    plan.AddStep(core.execution_step("many_run", steps, concurrent_substeps=True))
    with pytest.raises(RunError, match=r"net 'many_fail(_\d+)?' \(step 'many_fail'\).*boom"):
        workspace.RunPlan(plan)
    assert time.monotonic() - hook.failed_at < 5.0


# -- re-run after failure, many runs ---------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("stage", ["producer", "processor", "consumer", "task_exit"])
def test_raw_rerun_same_plan_after_failure(stage):
    net, step, fail_at = RAW_STAGES[stage]
    hook = Hook(stage, fail_at=fail_at)
    sink = Sink()
    plan = raw_plan({stage: hook}, sink=sink, n_records=30)
    with pytest.raises(RunError, match="boom in %s" % stage):
        workspace.RunPlan(plan)
    for _ in range(3):
        hook.fail_at = None
        del sink.seen[:]
        assert workspace.RunPlan(plan)
        assert sorted(sink.seen) == list(range(30))


@pytest.mark.timeout(60)
def test_rerun_after_failure_with_queue_created_before_the_plan():
    init = core.Net("pre_init")
    init.CreateBlobsQueue([], "pre_q", capacity=1, num_blobs=1)
    init.CreateCounter([], "pre_ids", init_count=0)
    workspace.RunNetOnce(init)
    hook = Hook("pre", fail_at=4)
    prod = core.Net("pre_prod")
    prod.Python(hook)([], [])
    prod.CountUp("pre_ids", "pre_id")
    prod.SafeEnqueueBlobs(["pre_q", "pre_id"], ["pre_id", "pre_pst"])
    close = core.Net("pre_close")
    close.CloseBlobsQueue(["pre_q"], [])
    sink = Sink()
    read = core.Net("pre_read")
    read.SafeDequeueBlobs(["pre_q"], ["pre_v", "pre_cst"])
    use = core.Net("pre_use")
    use.Python(sink)(["pre_v"], [])
    plan = core.Plan("pre")
    plan.AddStep(core.execution_step("pre_run", [
        core.execution_step("pre_prodtask", [
            core.execution_step("pre_produce", prod, num_iter=20),
            core.execution_step("pre_close", close)]),
        core.execution_step("pre_consume", [read, use], should_stop_blob="pre_cst")],
        concurrent_substeps=True))
    with pytest.raises(RunError, match="boom in pre"):
        workspace.RunPlan(plan)
    hook.fail_at = None
    del sink.seen[:]
    # The queue belongs to the workspace and the failed run's cancel closed it:
    # the re-run must not silently lose records; it raises a clear error.
    with pytest.raises(RunError, match="queue 'pre_q' was closed when an earlier run failed"):
        workspace.RunPlan(plan)
    workspace.RunNetOnce(init)          # create the queue (and ids) again: runs are exact
    del sink.seen[:]
    assert workspace.RunPlan(plan)
    assert sorted(sink.seen) == list(range(20))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stage", ["producer", "processor", "consumer", "instance_init",
                                   "task_exit", "reporter"])
def test_pipeline_rerun_same_group_after_failure(stage):
    task, fail_at = PIPE_STAGES[stage]
    hook = Hook(stage, fail_at=fail_at)
    sink = Sink()
    tg = pipeline_group({stage: hook}, sink=sink, n_records=30)
    session = LocalSession()
    with pytest.raises(RunError, match="boom in %s" % stage):
        session.run(tg)
    hook.fail_at = None
    del sink.seen[:]
    session.run(tg)
    assert sorted(sink.seen) == list(range(30))


@pytest.mark.timeout(120)
def test_many_runs_in_one_session_no_leaks():
    """60 runs of one compiled group, every third one failing mid-stream:
    results stay exact, and threads and file descriptors do not grow."""
    hook = Hook("processor")
    sink = Sink()
    tg = pipeline_group({"processor": hook}, sink=sink, n_records=20, instances=2)
    session = LocalSession()
    session.run(tg)                          # warm up (compile, first allocations)
    threads0, fds0 = native_thread_count(), fd_count()
    for i in range(60):
        del sink.seen[:]
        hook.calls = 0
        hook.fail_at = K + 1 if i % 3 == 0 else None
        if hook.fail_at:
            with pytest.raises(RunError, match="boom in processor"):
                session.run(tg)
        else:
            session.run(tg)
            assert sorted(sink.seen) == list(range(20))
    assert native_thread_count() <= threads0
    assert fd_count() <= fds0


@pytest.mark.timeout(60)
def test_pipeline_task_without_instances_failing_in_task_init():
    """A plain Task (no pipe) whose task init fails: the other task, blocked
    on a queue that the failing task would have fed, is woken."""
    ev = threading.Event()
    hook = Hook("plain_init", fail_at=1, wait_for=ev)
    q = Queue(1, schema=_int_struct(), name="plain_q")
    with TaskGroup() as tg:
        with Task(name="plain_failing"):
            with ops.task_init():
                ops.Python(hook)([], [])
            ops.Const(1)

        def announce(rec):
            with ops.task_instance_init():
                ops.Python(Announcer(ev))([], [])
            return rec
        pipe(q, processor=announce, name="plain_reader")
    with pytest.raises(RunError, match=r"net '[^']*plain_failing[^']*'.*boom in plain_init"):
        LocalSession().run(tg)


# -- Ctrl-C -------------------------------------------------------------------------------

def _interrupt_when(event, sent):
    def interrupter():
        if event.wait(20):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
    return threading.Thread(target=interrupter)


def _run_interrupted(run, event):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    sent = []
    # A process started in the background inherits SIGINT as ignored: make
    # Ctrl-C raise as it does in a terminal.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = _interrupt_when(event, sent)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
        elapsed = time.monotonic() - sent[0]
    finally:
        t.join(10)
        signal.signal(signal.SIGINT, old)
    assert not t.is_alive()
    return elapsed


@pytest.mark.timeout(60)
def test_ctrl_c_during_compute_loop():
    ev = threading.Event()
    workspace.RunNetOnce(_counters_net("cc", ["cc_budget"]))
    first = core.Net("cc_first")
    first.Python(Announcer(ev))([], [])
    loop = core.Net("cc_loop")
    loop.CountUp("cc_budget", "cc_prev")
    plan = core.Plan("cc")
    plan.AddStep(core.execution_step("cc_first", first))
    plan.AddStep(core.execution_step("cc_spin", loop, num_iter=10 ** 11))
    assert _run_interrupted(lambda: workspace.RunPlan(plan), ev) < 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocked", ["full", "empty"])
def test_ctrl_c_in_pipeline_while_blocked(blocked):
    ev = threading.Event()
    tg = pipeline_group({}, victim=blocked, victim_event=ev, n_records=5)
    assert _run_interrupted(lambda: LocalSession().run(tg), ev) < 1.0


@pytest.mark.timeout(60)
def test_ctrl_c_then_rerun_works():
    ev = threading.Event()
    sink = Sink()
    tg = pipeline_group({}, victim="full", victim_event=ev, n_records=5)
    session = LocalSession()
    assert _run_interrupted(lambda: session.run(tg), ev) < 1.0
    # a fresh group on the same session/workspace still runs
    session.run(pipeline_group({}, sink=sink, n_records=25))
    assert sorted(sink.seen) == list(range(25))


@pytest.mark.timeout(60)
def test_ctrl_c_while_blocked_in_run_net_once():
    ev = threading.Event()
    init = core.Net("rn_init")
    init.CreateBlobsQueue([], "rn_q", capacity=1, num_blobs=1)
    workspace.RunNetOnce(init)
    net = core.Net("rn_blocked")
    net.Python(Announcer(ev))([], [])
    net.DequeueBlobs(["rn_q"], ["rn_never"])
    assert _run_interrupted(lambda: workspace.RunNetOnce(net), ev) < 1.0


@pytest.mark.timeout(60)
def test_ctrl_c_while_a_python_op_runs():
    ev = threading.Event()

    def busy(inputs, outputs):
        ev.set()
        end = time.monotonic() + 2.0        # bounded, so the test ends without the fix
        while time.monotonic() < end:
            pass
    net = core.Net("busy_py")
    net.Python(busy)([], [])
    plan = core.Plan("busy")
    plan.AddStep(core.execution_step("busy_step", net, num_iter=3))
    assert _run_interrupted(lambda: workspace.RunPlan(plan), ev) < 1.0


@pytest.mark.timeout(60)
def test_ctrl_c_while_python_ops_run_in_many_instances():
    """4 runtime instances each inside a busy Python op (a processor)."""
    started = [0]
    ev = threading.Event()
    lock = threading.Lock()

    def busy(inputs, outputs):
        with lock:
            started[0] += 1
            if started[0] >= 4:
                ev.set()
        end = time.monotonic() + 5.0        # bounded, so a regression cannot hang
        while time.monotonic() < end:
            pass

    def proc(rec):
        ops.Python(busy)([], [])
        return None
    with TaskGroup() as tg:
        pipe(CountUntil(10 ** 6), processor=proc, num_runtime_threads=4, name="busy4")
    assert _run_interrupted(lambda: LocalSession().run(tg), ev) < 1.0
