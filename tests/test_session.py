"""Runtime tests of fastpipe.session (need fastpipe.workspace)."""

import gc
import weakref

import pytest

workspace = pytest.importorskip("fastpipe.workspace")

from fastpipe import core  # noqa: E402
from fastpipe._lower import CompiledJob  # noqa: E402
from fastpipe.errors import FastpipeError, GraphError  # noqa: E402
from fastpipe.net_builder import ops  # noqa: E402
from fastpipe.session import (CompiledRunnable, LocalSession, Session,  # noqa: E402
                              SessionGoneError)
from fastpipe.task import (Task, TaskGroup, WorkspaceType,  # noqa: E402
                           final_output)


@pytest.fixture
def ws():
    return workspace.C.Workspace()


def _fill_net(name, blob, value):
    net = core.Net(name)
    net.ConstantFill([], [blob], shape=[], value=value, dtype=core.DataType.INT64)
    return net


@pytest.mark.timeout(30)
def test_run_net_step_plan_task(ws):
    session = LocalSession(ws)
    session.run(_fill_net("n1", "s_net", 1))
    session.run(core.execution_step("st", _fill_net("n2", "s_step", 2)))
    session.run(core.Plan(core.execution_step("pl", _fill_net("n3", "s_plan", 3))))
    with TaskGroup():
        t = Task(step=_fill_net("n4", "s_task", 4))
    session.run(t)
    for name, value in (("s_net", 1), ("s_step", 2), ("s_plan", 3), ("s_task", 4)):
        assert ws.blobs[name].fetch() == value


@pytest.mark.timeout(30)
def test_default_workspace_is_current(ws):
    session = LocalSession()
    session.run(_fill_net("ndef", "s_default_ws", 5))
    assert workspace.FetchBlob("s_default_ws") == 5


@pytest.mark.timeout(30)
def test_private_vs_global_workspace(ws):
    with TaskGroup(WorkspaceType.PRIVATE) as private:
        Task(step=_fill_net("priv", "only_in_child", 1))
    with TaskGroup(WorkspaceType.GLOBAL) as glob:
        Task(step=_fill_net("glob", "in_session_ws", 2))
    session = LocalSession(ws)
    session.run(private)
    session.run(glob)
    assert not ws.has_blob("only_in_child")
    assert ws.blobs["in_session_ws"].fetch() == 2


@pytest.mark.timeout(30)
def test_task_output_from_private_task_survives(ws):
    with TaskGroup() as tg:
        with Task(name="out") as t:
            b = ops.ConstantFill([], "priv_out", shape=[], value=7,
                                 dtype=core.DataType.INT64)
            out = final_output(b)
    LocalSession(ws).run(tg)
    assert t.workspace_type() == WorkspaceType.PRIVATE
    assert out.fetch() == 7
    assert str(out.get()) == "priv_out"


@pytest.mark.timeout(30)
def test_compile_cache_ignores_later_edits(ws):
    net = _fill_net("cached", "cache_blob", 1)
    session = LocalSession(ws)
    session.run(net)
    net.ConstantFill([], ["cache_blob"], shape=[], value=2, dtype=core.DataType.INT64)
    session.run(net)
    assert ws.blobs["cache_blob"].fetch() == 1
    compiled = LocalSession.compile(net)
    assert isinstance(compiled, CompiledRunnable)
    assert LocalSession.compile(net) is compiled
    assert LocalSession.compile(compiled) is compiled
    with pytest.raises(GraphError):
        Session.compile(compiled)


@pytest.mark.timeout(30)
def test_closed_session_and_context_manager(ws):
    with LocalSession(ws) as session:
        session.run(_fill_net("ctx", "ctx_blob", 1))
    assert not session.is_open()
    with pytest.raises(GraphError):
        session.run(_fill_net("ctx2", "ctx_blob2", 1))
    s2 = LocalSession(ws)
    with pytest.raises(ZeroDivisionError):
        with s2:
            1 / 0
    assert s2.is_open()  # closes only on a clean exit


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_instances", [1, 2, 8])
def test_setup_once_per_run_and_per_instance(ws, num_instances):
    """task_init runs once per run, instance init once per instance, and
    both run again on every run of the same compiled group."""
    init = core.Net("counters")
    task_count = init.CreateCounter([], ["task_init_runs"], init_count=0)
    inst_count = init.CreateCounter([], ["instance_init_runs"], init_count=0)
    ws.run(init)
    with TaskGroup() as tg:
        with Task(name="setup_once", num_instances=num_instances):
            with ops.task_init():
                ops.CountUp([task_count])
            with ops.task_instance_init():
                ops.CountUp([inst_count])
            ops.Const(1)
    session = LocalSession(ws)
    session.run(tg)
    session.run(tg)
    probe = core.Net("probe")
    probe.RetrieveCount([task_count], ["task_runs_value"])
    probe.RetrieveCount([inst_count], ["inst_runs_value"])
    ws.run(probe)
    assert ws.blobs["task_runs_value"].fetch() == 2
    assert ws.blobs["inst_runs_value"].fetch() == 2 * num_instances


@pytest.mark.timeout(60)
def test_instances_are_isolated_but_share_task_init_blobs(ws):
    """Each runtime instance has its own workspace for names first created
    in it; task_init blobs are shared."""
    n = 4
    with TaskGroup() as tg:
        with Task(name="iso", num_instances=n) as t:
            with ops.task_init():
                shared = ops.CreateCounter([], init_count=0)
            local = ops.ConstantFill([], shape=[], value=0, dtype=core.DataType.INT64)
            with ops.loop(10):
                ops.Add([local, ops.Const(1)], [local])
                ops.CountUp([shared])
            with ops.task_exit():
                total = ops.RetrieveCount([shared])
            t.add_output(total)
    LocalSession(ws).run(tg)
    assert t.outputs()[0].fetch() == 10 * n


@pytest.mark.timeout(30)
def test_failure_raises_runtime_error(ws):
    net = core.Net("bad")
    net.Copy("does_not_exist", "y")
    with pytest.raises(RuntimeError):
        LocalSession(ws).run(net)


@pytest.mark.timeout(60)
def test_task_reporter_runs_at_least_once_per_instance(ws):
    init = core.Net("rep_init")
    reports = init.CreateCounter([], ["reporter_runs"], init_count=0)
    ws.run(init)
    with TaskGroup() as tg:
        with Task(name="reported", num_instances=3):
            with ops.task_reporter(interval_ms=10000):
                ops.CountUp([reports])
            ops.Const(1)
    LocalSession(ws).run(tg)
    probe = core.Net("rep_probe")
    probe.RetrieveCount([reports], ["reporter_runs_value"])
    ws.run(probe)
    # the interval is long: only the guaranteed final run happens
    assert ws.blobs["reporter_runs_value"].fetch() == 3


# -- a finished job owns nothing that outlives it ----------------------------------

def _output_job(name, value):
    with TaskGroup() as tg:
        with Task(name=name) as t:
            b = ops.ConstantFill([], name + "_out", shape=[], value=value,
                                 dtype=core.DataType.INT64)
            out = final_output(b)
    return tg, t, out


@pytest.mark.timeout(30)
def test_dropped_session_and_workspace_are_freed_after_a_run():
    """Nothing (compile cache, TaskOutputs) keeps a run's session or
    workspace -- hence its native blobs -- alive once the caller drops them."""
    ws = workspace.C.Workspace()
    tg, _t, out = _output_job("freed", 3)
    session = LocalSession(ws)
    session.run(tg)
    assert out.fetch() == 3
    refs = [weakref.ref(ws), weakref.ref(ws._native), weakref.ref(session)]
    del ws, session
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    # the job itself is still usable on another session
    ws2 = workspace.C.Workspace()
    LocalSession(ws2).run(tg)
    assert out.fetch() == 3


@pytest.mark.timeout(30)
def test_compile_cache_does_not_keep_the_runnable_alive():
    refs = []
    for i in range(3):
        tg, _t, _out = _output_job("dropped%d" % i, i)
        compiled = LocalSession.compile(tg)
        refs += [weakref.ref(tg), weakref.ref(compiled), weakref.ref(compiled.obj)]
        net = _fill_net("dropped_net%d" % i, "dropped_blob%d" % i, i)
        LocalSession(workspace.C.Workspace()).run(net)
        refs.append(weakref.ref(net))
    del tg, _t, _out, compiled, net
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)


@pytest.mark.timeout(30)
def test_fetch_after_session_and_workspace_are_gone_raises():
    tg, _t, out = _output_job("gone", 5)
    ws = workspace.C.Workspace()
    LocalSession(ws).run(tg)
    assert out.fetch() == 5          # the session is gone, its workspace is not
    del ws
    gc.collect()
    with pytest.raises(SessionGoneError, match="'gone_out'.*gone") as info:
        out.fetch()
    assert isinstance(info.value, FastpipeError)
    assert isinstance(info.value, ReferenceError)


@pytest.mark.timeout(30)
def test_compiled_job_is_shared_by_sessions_and_lowered_once():
    """The same runnable compiles to the same object for every LocalSession;
    its native program is built at the first run and reused on another
    workspace; TaskOutputs follow the session that ran last."""
    tg, _t, out = _output_job("shared", 9)
    compiled = LocalSession.compile(tg)
    assert isinstance(compiled.obj, CompiledJob)
    assert LocalSession(workspace.C.Workspace()).compile(tg) is compiled
    assert compiled.obj._program is None            # lowered at the first run
    ws1, ws2 = workspace.C.Workspace(), workspace.C.Workspace()
    LocalSession(ws1).run(compiled)
    program = compiled.obj._program
    assert program is not None
    LocalSession(ws2).run(tg)
    assert compiled.obj._program is program
    assert compiled.obj.native_program() is program
    assert ws1.blobs["shared_out"].fetch() == 9
    assert ws2.blobs["shared_out"].fetch() == 9
    del ws2
    gc.collect()
    with pytest.raises(SessionGoneError):
        out.fetch()


@pytest.mark.timeout(30)
def test_uncacheable_runnable_compiles_each_time(ws):
    """A list of nets cannot carry the cache: each compile is fresh, and
    running it still works."""
    nets = [_fill_net("lst1", "lst_a", 1), _fill_net("lst2", "lst_b", 2)]
    assert LocalSession.compile(nets) is not LocalSession.compile(nets)
    LocalSession(ws).run(nets)
    assert ws.blobs["lst_a"].fetch() == 1 and ws.blobs["lst_b"].fetch() == 2


@pytest.mark.timeout(60)
def test_concurrent_compiles_of_one_runnable_agree():
    """Threads compiling the same group at once all get one compiled object,
    and it is complete: its task_init setup net was not lost to a second,
    concurrent lowering (which finds the setup objects already used)."""
    import threading
    n = 4
    for round_ in range(5):
        with TaskGroup() as tg:
            with Task(name="racing%d" % round_) as t:
                with ops.task_init():
                    v = ops.ConstantFill([], shape=[], value=round_ + 1,
                                         dtype=core.DataType.INT64)
                t.add_output(ops.Copy([v]))
        barrier = threading.Barrier(n)
        got = []

        def compile_it():
            barrier.wait(10)
            got.append(LocalSession.compile(tg))
        threads = [threading.Thread(target=compile_it) for _ in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
            assert not th.is_alive()
        assert len(got) == n and all(c is got[0] for c in got)
        assert LocalSession.compile(tg) is got[0]
        ws = workspace.C.Workspace()
        LocalSession(ws).run(got[0])
        assert t.outputs()[0].fetch() == round_ + 1


@pytest.mark.timeout(30)
def test_compiled_runnable_can_still_be_pickled_and_copied(ws):
    """The cache on a runnable does not travel: a pickled or deep-copied
    net is another runnable, compiled on its own."""
    import copy
    import pickle
    net = _fill_net("pickled", "pickled_blob", 4)
    compiled = LocalSession.compile(net)
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert LocalSession.compile(twin) is not compiled
        LocalSession(ws).run(twin)
        assert ws.blobs["pickled_blob"].fetch() == 4
    assert LocalSession.compile(net) is compiled
