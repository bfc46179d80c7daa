"""The native run boundary: exceptions that end a wait, Python ops'
workspace argument, Workspace.run(net, num_iter), plan field types."""
import signal
import threading

import numpy as np
import pytest

from fastpipe import _core, core, workspace
from fastpipe.errors import ArgumentError, FastpipeError, PlanError, WorkspaceError

from conftest import _native_tids
from conftest import extra_native_tids as _extra_tids



class Alarm(Exception):
    """What the test's SIGALRM handler raises."""


@pytest.fixture
def alarm():
    """Arm SIGALRM to raise Alarm after `seconds` (from the main thread)."""
    fired = []

    def handler(signum, frame):
        fired.append(signum)
        raise Alarm("the alarm rang")
    old = signal.signal(signal.SIGALRM, handler)

    def arm(seconds):
        signal.setitimer(signal.ITIMER_REAL, seconds)
    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _blocked_step(ws, qname):
    init = core.Net(qname + "_init")
    init.CreateBlobsQueue([], qname, capacity=1, num_blobs=1)
    ws.run(init)
    net = core.Net(qname + "_reader")
    net.DequeueBlobs([qname], [qname + "_out"], timeout_secs=0.0)   # waits forever
    return core.execution_step(qname + "_step", net)


@pytest.mark.timeout(30)
def test_signal_handler_exception_while_dequeue_blocks_cancels_and_joins(ws, alarm):
    step = _blocked_step(ws, "alarm_q")
    before = _native_tids()
    alarm(0.2)
    with pytest.raises(Alarm, match="the alarm rang"):
        ws.run(step)
    # every native thread of the run was joined before the exception left run()
    assert _extra_tids(before) == set()
    # the workspace is usable and not busy; the queue is still there
    ws.reset()


@pytest.mark.timeout(30)
def test_signal_handler_exception_in_instances_joins_every_thread(ws, alarm):
    """Four runtime instances blocked on one queue: all are woken and joined."""
    init = core.Net("alarm_mq_init")
    init.CreateBlobsQueue([], "alarm_mq", capacity=1, num_blobs=1)
    ws.run(init)
    net = core.Net("alarm_mq_reader")
    net.DequeueBlobs(["alarm_mq"], ["alarm_mq_out"], timeout_secs=0.0)
    inner = core.execution_step("alarm_inner", net, create_workspace=True)
    outer = core.execution_step("alarm_outer", [inner], num_concurrent_instances=4)
    before = _native_tids()
    alarm(0.2)
    with pytest.raises(Alarm):
        ws.run(outer)
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_signal_handler_exception_while_a_python_op_spins(ws, alarm):
    """User code inside a Python op sees no queue closing: the abort
    interrupts it so that the join cannot hang."""
    entered = threading.Event()

    def spin(inputs, outputs):
        entered.set()
        while True:
            pass
    net = core.Net("spinner")
    net.Python(spin)([], [])
    before = _native_tids()
    alarm(0.3)
    with pytest.raises(Alarm):
        ws.run(core.execution_step("spin_step", net))
    assert entered.is_set()
    assert _extra_tids(before) == set()


@pytest.mark.timeout(30)
def test_start_program_then_signal_in_wait_then_wait_again(ws, alarm):
    step = _blocked_step(ws, "alarm_q2")
    plan = core.Plan("alarm_plan2")
    plan.AddStep(step)
    run = ws._native.start_program(_core.Program.from_plan(plan.Proto()))
    alarm(0.1)
    with pytest.raises(Alarm):
        run.wait()
    assert run.done()
    with pytest.raises(Alarm):      # the run's first error is that exception
        run.wait()


# ---- Workspace.run(net, num_iter) ---------------------------------------------------

def test_workspace_run_net_num_iter(ws):
    ws.feed_blob("n", np.zeros(1, np.int64))
    ws.feed_blob("one", np.ones(1, np.int64))
    net = core.Net("inc")
    net.Add(["n", "one"], "n")
    assert ws.run(net, num_iter=3) is True
    assert ws.fetch_blob("n")[0] == 3
    ws.run(net.Proto(), 2)                  # a NetDef too
    assert ws.fetch_blob("n")[0] == 5
    ws.run(net)
    assert ws.fetch_blob("n")[0] == 6
    ws.run(net, num_iter=0)
    assert ws.fetch_blob("n")[0] == 6


def test_workspace_run_num_iter_errors(ws):
    net = core.Net("noop_net")
    with pytest.raises(ArgumentError, match="num_iter must be an int"):
        ws.run(net, num_iter="3")
    with pytest.raises(ValueError, match="num_iter=-1"):
        ws.run(net, num_iter=-1)
    with pytest.raises(ArgumentError, match="applies to a Net"):
        ws.run(core.execution_step("s", net), num_iter=2)
    with pytest.raises(TypeError, match="expected a Net"):
        ws.run(object())


# ---- Python ops with pass_workspace ---------------------------------------------------

@pytest.mark.timeout(60)
def test_python_op_pass_workspace_in_runtime_instances(ws):
    """Each runtime instance's op gets its own child workspace: it sees the
    root's blobs, writes a blob of its own and the handle expires after the
    call."""
    ws.feed_blob("shared_in", np.array([5.0], np.float32))
    seen = []
    lock = threading.Lock()

    def op(inputs, outputs, w):
        assert w is not None
        x = w.blobs["shared_in"].fetch()
        w.feed_blob("mine", np.array([x[0] * 2], np.float32))
        with lock:
            seen.append((w.has_blob("shared_in"), w.has_blob("mine"),
                         float(w.fetch_blob("mine")[0]), "mine" in w.blobs,
                         w.blob_names(local_only=True), w))
    net = core.Net("pyws")
    net.Python(op, pass_workspace=True)([], [])
    inner = core.execution_step("pyws_inner", net, create_workspace=True)
    outer = core.execution_step("pyws_outer", [inner], num_concurrent_instances=2)
    ws.run(outer)
    assert len(seen) == 2
    for has_in, has_mine, val, contains, local, _ in seen:
        assert (has_in, has_mine, val, contains) == (True, True, 10.0, True)
        assert local == ["mine"]          # written into the instance's child
    assert not ws.has_blob("mine")        # ... not into the root
    view = seen[0][-1]
    with pytest.raises(WorkspaceError, match="valid only during the call"):
        view.fetch_blob("shared_in")
    assert isinstance(view, _core.WorkspaceView)


def test_python_op_pass_workspace_at_root(ws):
    out = []

    def op(inputs, outputs, w):
        out.append(sorted(w.blobs.keys()))
        w.blobs["made_by_op"].feed(np.arange(3)) if "made_by_op" in w.blobs else \
            w.feed_blob("made_by_op", np.arange(3))
    ws.feed_blob("root_blob", np.zeros(1))
    net = core.Net("pyws_root")
    net.Python(op, pass_workspace=True)([], [])
    ws.run(net)
    assert "root_blob" in out[0]
    assert ws.fetch_blob("made_by_op").tolist() == [0, 1, 2]


# ---- plan field types before values ------------------------------------------------

@pytest.mark.parametrize("field,value", [("run_every_ms", "5"), ("num_iter", "3"),
                                         ("num_concurrent_instances", 2.5),
                                         ("report_interval", None)])
def test_step_field_with_wrong_type_is_a_plan_error(field, value):
    net = core.Net("typed")
    plan = core.Plan("typed_plan")
    plan.AddStep(core.execution_step("typed_step", net))
    pd = plan.Proto()
    setattr(pd.execution_step[0], field, value)
    with pytest.raises(PlanError, match="%s must be an int" % field):
        _core.Program.from_plan(pd)


def test_native_errors_are_fastpipe_errors(ws):
    with pytest.raises(WorkspaceError):
        ws._native.run_net("no_such_net")
    with pytest.raises(RuntimeError):
        ws._native.run_net("no_such_net")
    net = core.Net("twice")
    ws.create_net(net)
    with pytest.raises(WorkspaceError, match="refuse to overwrite"):
        ws.create_net(net)
    with pytest.raises(ArgumentError, match="not supported"):
        ws.feed_blob("c", np.array([1 + 2j]))
    with pytest.raises(FastpipeError):
        workspace.SwitchWorkspace("never_made_ws")
    with pytest.raises(RuntimeError):
        workspace.SwitchWorkspace("never_made_ws")
