"""The native run handle: Workspace.start_program / start_net -> _core.Run
(wait with a timeout, cancel, done, drop, what it keeps alive)."""
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy as np
import pytest

from fastpipe import _core, core
from fastpipe.errors import CancelledError, RunError, FastpipeError

from conftest import _native_tids
from conftest import extra_native_tids as _extra_tids



def _queue(ws, name, capacity=1):
    init = core.Net(name + "_init")
    init.CreateBlobsQueue([], name, capacity=capacity, num_blobs=1)
    ws.run(init)


def _blocked_plan(ws, qname="rq"):
    """A plan whose one op blocks forever on an empty queue (timeout 0)."""
    _queue(ws, qname)
    net = core.Net("blocked_" + qname)
    net.DequeueBlobs([qname], [qname + "_out"], timeout_secs=0.0)
    plan = core.Plan("blocked_plan_" + qname)
    plan.AddStep(core.execution_step("blocked_step", net))
    return _core.Program.from_plan(plan.Proto())


def _loop_plan(ws, n):
    ws.blobs  # noqa: B018 (the workspace is used below)
    ws.feed_blob("acc", np.zeros(1, np.float32))
    ws.feed_blob("one", np.ones(1, np.float32))
    net = core.Net("acc_loop")
    net.Add(["acc", "one"], "acc")
    plan = core.Plan("acc_plan")
    plan.AddStep(core.execution_step("acc_step", net, num_iter=n))
    return _core.Program.from_plan(plan.Proto())


@pytest.mark.timeout(30)
def test_start_program_returns_and_wait_reports_finish(ws):
    prog = _loop_plan(ws, 1000)
    run = ws._native.start_program(prog)
    assert isinstance(run, _core.Run)
    assert run.wait() is True
    assert run.done()
    assert ws.fetch_blob("acc")[0] == 1000
    assert run.wait() is True          # waiting again is harmless


@pytest.mark.timeout(30)
def test_wait_timeout_then_cancel_raises_cancelled(ws):
    run = ws._native.start_program(_blocked_plan(ws))
    assert run.wait(timeout=0) is False
    assert run.wait(timeout=0.05) is False
    assert not run.done()
    run.cancel()
    with pytest.raises(CancelledError) as info:
        run.wait()
    assert isinstance(info.value, RunError) and isinstance(info.value, RuntimeError)
    assert run.done()
    with pytest.raises(CancelledError):    # the same error, again, no double free
        run.wait(timeout=1)


@pytest.mark.timeout(30)
def test_cancel_after_another_failure_keeps_that_failure(ws):
    def boom(inputs, outputs):
        raise ValueError("first failure")
    net = core.Net("fails_first")
    net.Python(boom)([], [])
    plan = core.Plan("fails_first_plan")
    plan.AddStep(core.execution_step("s", net))
    run = ws._native.start_program(_core.Program.from_plan(plan.Proto()))
    with pytest.raises(RunError, match="first failure"):
        run.wait()
    # finished: cancel() is a no-op and the original error stays
    run.cancel()
    with pytest.raises(RunError, match="first failure") as info:
        run.wait()
    assert not isinstance(info.value, CancelledError)
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.timeout(30)
def test_cancel_after_success_keeps_success(ws):
    run = ws._native.start_program(_loop_plan(ws, 10))
    assert run.wait()
    run.cancel()
    assert run.wait() is True


@pytest.mark.timeout(30)
def test_two_threads_wait_on_one_run(ws):
    run = ws._native.start_program(_blocked_plan(ws))
    errors = []
    started = threading.Barrier(3)

    def waiter():
        started.wait()
        try:
            run.wait()
        except CancelledError as e:
            errors.append(e)
    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    run.cancel()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert len(errors) == 2


@pytest.mark.timeout(30)
def test_dropping_an_unfinished_run_cancels_and_joins_it(ws):
    before = _native_tids()
    run = ws._native.start_program(_blocked_plan(ws))
    assert run.wait(timeout=0.01) is False
    assert len(_native_tids() - before) >= 1      # its driver thread is running
    del run
    gc.collect()
    # __dealloc__ joined the driver thread: it is gone now (no polling needed).
    assert _extra_tids(before) == set()
    # and the workspace is free again (the run released it)
    ws.reset()


@pytest.mark.timeout(30)
def test_run_keeps_workspace_and_program_alive_then_releases_them():
    ws = _core.Workspace()
    init = core.Net("keep_init")
    init.CreateBlobsQueue([], "kq", capacity=1, num_blobs=1)
    ws.run_program(_core.Program.from_plan(_one_net_plan(init)))
    net = core.Net("keep_block")
    net.DequeueBlobs(["kq"], ["kout"], timeout_secs=0.0)
    prog = _core.Program.from_plan(_one_net_plan(net))
    run = ws.start_program(prog)
    ws_ref, prog_ref = weakref.ref(ws), weakref.ref(prog)
    del ws, prog
    gc.collect()
    assert ws_ref() is not None and prog_ref() is not None   # the threads use them
    run.cancel()
    with pytest.raises(CancelledError):
        run.wait()
    gc.collect()
    assert ws_ref() is None and prog_ref() is None           # released once waited


def _one_net_plan(net):
    plan = core.Plan(net.Name() + "_plan")
    plan.AddStep(core.execution_step(net.Name() + "_step", net))
    return plan.Proto()


@pytest.mark.timeout(30)
def test_run_holds_the_workspace_busy(ws):
    run = ws._native.start_program(_blocked_plan(ws))
    with pytest.raises(RuntimeError, match="while a run uses the workspace") as info:
        ws.reset()
    assert isinstance(info.value, FastpipeError)
    run.cancel()
    with pytest.raises(CancelledError):
        run.wait()
    ws.reset()


@pytest.mark.timeout(30)
def test_start_net_runs_a_created_net_n_times(ws):
    ws.feed_blob("c", np.zeros(1, np.int64))
    ws.feed_blob("one", np.ones(1, np.int64))
    net = core.Net("counter_net")
    net.Add(["c", "one"], "c")
    ws.create_net(net)
    run = ws._native.start_net("counter_net", 7)
    assert run.wait() is True
    assert ws.fetch_blob("c")[0] == 7
    assert ws._native.run_net("counter_net", 3) is True
    assert ws.fetch_blob("c")[0] == 10


def test_run_cannot_be_made_directly():
    with pytest.raises(TypeError):
        _core.Run()


@pytest.mark.timeout(60)
def test_interpreter_exit_with_a_live_run_does_not_hang(tmp_path):
    script = tmp_path / "live_run.py"
    script.write_text(textwrap.dedent("""
        from fastpipe import _core, core
        ws = _core.Workspace()
        init = core.Net("i"); init.CreateBlobsQueue([], "q", capacity=1, num_blobs=1)
        p = core.Plan("pi"); p.AddStep(core.execution_step("si", init))
        ws.run_program(_core.Program.from_plan(p.Proto()))
        net = core.Net("b"); net.DequeueBlobs(["q"], ["o"], timeout_secs=0.0)
        p = core.Plan("pb"); p.AddStep(core.execution_step("sb", net))
        run = ws.start_program(_core.Program.from_plan(p.Proto()))
        assert run.wait(timeout=0.01) is False
        print("started", flush=True)
    """))
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=50, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "started"
