"""Graph-only tests of fastpipe.task (no runtime needed)."""

import pytest

from fastpipe import core
from fastpipe.errors import GraphError
from fastpipe.net_builder import ops
from fastpipe.task import (Cluster, Node, SetupNets, Task, TaskGroup, TaskOutput,
                           TaskOutputList, WorkspaceType, add_setup_steps,
                           final_output, get_setup_nets)


def _substep_names(step):
    return [s.Name() for s in step.Substeps()]


def _net_names(step):
    return list(step.Proto().network)


def test_cluster_and_node_registration():
    with Cluster() as c:
        with Node("a", cpus=2):
            with Node("b"):
                assert str(Node.current()) == "b"
        Node("a", mem=1)
    assert c.nodes() == ["a", "b"]
    assert c.node_kwargs()["a"] == {"cpus": 2, "mem": 1}
    assert str(Node.current()) == "local"


def test_task_naming_and_dedup():
    with TaskGroup() as tg:
        t1 = Task(name="x")
        t2 = Task(name="x")
        with Node("n1"):
            t3 = Task(name="x")
        t4 = Task()
    assert [t.name for t in (t1, t2, t3, t4)] == [
        "local/x", "local/x:1", "n1/x", "local/task"]
    assert t3.node == "n1"
    assert tg.num_registered_tasks() == 4
    assert tg.used_nodes() == ["local", "n1"]


def test_task_name_from_step():
    step = core.execution_step("mystep", core.Net("n"))
    with TaskGroup():
        t = Task(step=step)
    assert t.name == "local/mystep"


def test_task_context_builds_step_with_task_prefix():
    with TaskGroup() as tg:
        with Task(name="ctx") as t:
            ops.Const(1)
        with pytest.raises(GraphError):
            with t:
                pass
    assert t._step is not None
    (net,) = t._step.Nets()
    assert str(net).startswith("local/ctx")
    assert tg.tasks() == [t]


def test_task_context_keeps_group_order():
    with TaskGroup() as tg:
        with Task(name="first"):
            Task(name="inner")
            ops.Const(1)
    assert [t.name for t in tg.tasks()] == ["local/inner", "local/first"]


def test_get_step_dummy_output_and_wrapping():
    with TaskGroup():
        with Task(name="t") as t:
            ops.Const(1)
    step = t.get_step()
    assert step is t.get_step()  # memoised
    assert step.Name() == "local/t"
    assert _substep_names(step)[-1] == "local/t:exit"
    (out,) = t.outputs()
    exit_step = step.Substeps()[-1]
    (exit_net,) = exit_step.Nets()
    assert str(exit_net) == "local/t:output"
    op = exit_net.Proto().op[0]
    assert op.type == "ConstantFill"
    assert op.output[0] == str(out.names[0])
    dtypes = [a.i for a in op.arg if a.name == "dtype"]
    assert dtypes == [core.DataType.INT32]


def test_step_less_task_has_no_dummy_output():
    with TaskGroup():
        t = Task(name="empty")
    step = t.get_step()
    assert t.outputs() == []
    assert not step.HasNets() and not step.HasSubsteps()


def test_num_instances_structure():
    with TaskGroup():
        with Task(name="par", num_instances=3) as t:
            with ops.task_init():
                ops.Const(0)
            with ops.task_instance_init():
                ops.Const(1)
            ops.Const(2)
            with ops.task_instance_exit():
                ops.Const(3)
            with ops.task_exit():
                ops.Const(4)
    step = t.get_step()
    assert _substep_names(step) == ["local/par:init", "%s:parallel", "local/par:exit"]
    par = step.Substeps()[1]
    assert par.Proto().num_concurrent_instances == 3
    (inst,) = par.Substeps()
    assert inst.Name() == "local/par:instance"
    assert inst.Proto().create_workspace
    assert _substep_names(inst) == [
        "local/par:instance:init", "local/par", "local/par:instance:exit"]


def test_num_instances_without_instance_setup_marks_body():
    with TaskGroup():
        with Task(name="body_only", num_instances=4) as t:
            ops.Const(2)
    step = t.get_step()
    par = step.Substeps()[0]
    assert par.Name() == "%s:parallel"
    (body,) = par.Substeps()
    assert body.Proto().create_workspace


def test_task_instance_count_one_is_not_parallel():
    with TaskGroup():
        with Task(name="one", num_instances=1) as t:
            ops.Const(2)
    names = _substep_names(t.get_step())
    assert "%s:parallel" not in names


def test_task_rejects_changes_after_use():
    with TaskGroup() as tg:
        with Task(name="u") as t:
            ops.Const(1)
    tg.tasks()
    with pytest.raises(GraphError):
        t.add_output(core.BlobReference("x"))
    with pytest.raises(GraphError):
        tg.add(Task(name="late", group=None))


def test_group_workspace_types():
    tg = TaskGroup()
    t = Task(name="a", group=tg)
    tg.tasks()
    assert t.workspace_type() == WorkspaceType.PRIVATE
    assert tg.workspace_type() == WorkspaceType.PRIVATE

    g = TaskGroup(workspace_type=WorkspaceType.GLOBAL)
    t = Task(name="b", group=g)
    g.tasks()
    assert t.workspace_type() == WorkspaceType.GLOBAL

    g = TaskGroup(workspace_type=WorkspaceType.GLOBAL)
    Task(name="c", group=g, workspace_type=WorkspaceType.PRIVATE)
    with pytest.raises(GraphError):
        g.tasks()

    g = TaskGroup()
    Task(name="d", group=g, workspace_type=WorkspaceType.GLOBAL)
    g.tasks()
    assert g.workspace_type() == WorkspaceType.GLOBAL


def test_get_setup_nets_order_and_once():
    calls = []

    class Obj(object):
        def __init__(self, tag):
            self.tag = tag

        def setup(self, init_net):
            calls.append(("setup", self.tag))
            init_net.Const(self.tag)
            return None

        def exit(self, exit_net):
            calls.append(("exit", self.tag))
            n = core.Net("exit_%d" % self.tag)
            n.Const(self.tag)
            return [n]

    net = core.Net("holder")
    a, b = Obj(1), Obj(2)
    net.add_attribute("k", a)
    net.add_attribute("k", b)
    net.add_attribute("k", a)  # attached twice: used once
    step = core.execution_step("s", net)
    inits, exits = get_setup_nets("k", [step], None)
    assert calls == [("setup", 1), ("exit", 1), ("setup", 2), ("exit", 2)]
    assert len(inits) == 1 and len(inits[0].Proto().op) == 2
    assert [str(n) for n in exits][0].startswith("exit_1")
    assert len(exits) == 2  # not reversed
    assert get_setup_nets("k", [step], None) == ([], [])


def test_get_setup_nets_target_and_type_errors():
    class Targeted(object):
        _setup_target = "other"

        def setup(self, init_net):
            raise AssertionError("must be skipped")

    class Bad(object):
        def setup(self, init_net):
            return 42

    net = core.Net("targets")
    net.add_attribute("k", Targeted())
    assert get_setup_nets("k", [net], "mine") == ([], [])
    net.add_attribute("bad", Bad())
    with pytest.raises(TypeError):
        get_setup_nets("bad", [net], None)


def test_setup_nets_helper_and_add_setup_steps():
    init, body, ex = core.Net("i"), core.Net("b"), core.Net("e")
    for n in (init, body, ex):
        n.Const(1)
    s = SetupNets([init], [ex])
    assert s.setup(None) == [init]
    assert s.exit(None) == [ex]
    step = core.execution_step("body", body)
    assert add_setup_steps(step, [], [], "x") is step
    wrapped = add_setup_steps(step, [init], [ex], "x")
    assert _substep_names(wrapped) == ["x:init", "body", "x:exit"]


def test_tasks_by_node_groups_and_sets_workspaces():
    with TaskGroup() as tg:
        with Node("n1"):
            with Task(name="p", workspace_type=WorkspaceType.PRIVATE) as t1:
                ops.Const(1)
            with Task(name="q", workspace_type=WorkspaceType.PRIVATE) as t2:
                ops.Const(2)
        with Node("n2"):
            with Task(name="r", workspace_type=WorkspaceType.PRIVATE) as t3:
                ops.Const(3)
    grouped = tg.tasks_by_node()
    tasks = grouped.tasks()
    assert [t.name for t in tasks] == ["n1/grouped_by_node", "n2/grouped_by_node"]
    body = tasks[0]._step
    assert body.Name() == "n1:body"
    assert body.Proto().concurrent_substeps
    assert all(s.Proto().create_workspace for s in body.Substeps())
    assert tasks[0].outputs() == t1.outputs() + t2.outputs()
    assert tasks[1].outputs() == t3.outputs()
    assert tg.tasks_by_node() is grouped  # memoised
    with pytest.raises(GraphError):
        tg.tasks_by_node(lambda n: "local")


def test_to_task_collapses_nodes_and_global_wins():
    with TaskGroup() as tg:
        with Node("n1"):
            with Task(name="a", workspace_type=WorkspaceType.GLOBAL) as ta:
                ops.Const(1)
        with Node("n2"):
            with Task(name="b", workspace_type=WorkspaceType.GLOBAL):
                ops.Const(2)
    with Cluster():
        task = tg.to_task()
    assert task.name == "local/grouped_by_node"
    assert task.workspace_type() == WorkspaceType.GLOBAL
    assert not ta.get_step().Proto().create_workspace


def test_local_setup_goes_to_node_init():
    with TaskGroup() as tg:
        with Task(name="a") as t:
            with ops.local_init():
                ops.Const(7)
            ops.Const(1)
    task = tg.to_task()
    step = task.get_step()
    assert _substep_names(step) == ["local:init", t.get_step().Name()]


def test_report_step_on_group():
    with TaskGroup() as tg:
        with Task(name="a"):
            ops.Const(1)
        rep = core.Net("rep")
        rep.Const(1)
        tg.report_step(rep, interval_ms=20)
    step = tg.to_task().get_step()
    assert step.Proto().concurrent_substeps
    assert step.Substeps()[0].Proto().run_every_ms == 20


def test_task_output_get_fetch_and_list():
    a, b, c = (core.BlobReference(x) for x in "abc")
    single = TaskOutput(a)
    many = TaskOutput([b, c])
    with pytest.raises(GraphError):
        single.get()
    with pytest.raises(GraphError):
        single.fetch()
    lst = TaskOutputList([single, many])
    assert lst.names() == [a, b, c]
    lst.set_values(["A", "B", "C"], _fetch_func=lambda v: v.lower())
    assert single.get() == "A"
    assert many.get() == ["B", "C"]
    assert single.fetch() == "a"
    assert many.fetch() == ["b", "c"]
    with pytest.raises(GraphError):
        lst.set_values(["A", "B", "C", "D"])


def test_task_output_record_rebuilds_record():
    from fastpipe import schema
    import numpy as np
    rec = schema.Struct(("x", schema.Scalar(np.int64, core.BlobReference("bx"))),
                        ("y", schema.Scalar(np.int64, core.BlobReference("by"))))
    out = TaskOutput(rec)
    out.set([1, 2], _fetch_func=lambda v: v * 10)
    got = out.fetch()
    assert got.field_names() == ["x", "y"]
    assert got.x() == 10 and got.y() == 20


def test_final_output_with_and_without_task():
    with TaskGroup() as tg:
        with Task(name="t") as t:
            b = ops.Const(1)
            o = final_output(b)
        o2 = final_output(core.BlobReference("lonely"))
    assert t.outputs() == [o]
    tasks = tg.tasks()
    assert len(tasks) == 2
    assert tasks[1].outputs() == [o2]
