"""Graph-only tests of fastpipe.net_builder (no runtime needed)."""

import pytest

from fastpipe import core
from fastpipe.errors import GraphError
from fastpipe.net_builder import NetBuilder, ops
from fastpipe.task import Task, TaskGroup


def _op_types(net):
    return [op.type for op in net.Proto().op]


def test_ops_without_builder_is_attribute_error():
    assert not hasattr(ops, "Copy")
    with pytest.raises(AttributeError):
        ops.Copy
    with NetBuilder():
        assert hasattr(ops, "Copy")


def test_ops_forward_to_current_net_and_names_follow_builder():
    with NetBuilder("nbA") as nb:
        a = ops.Const(1)
        b = ops.Copy(a)
        net = ops.net()
        with NetBuilder("inner") as inner:
            ops.Copy(b)
    children = nb.get()
    assert children[0] is net
    assert str(net).startswith("nbA")
    assert _op_types(net) == ["GivenTensorInt64Fill", "Copy"]
    assert inner.name == "nbA/inner"
    assert str(inner.get()[0]).startswith("nbA/inner")
    assert children == [net]  # a plain nested builder is not a child


def test_ops_net_with_net_and_name():
    n = core.Net("explicit")
    with NetBuilder() as nb:
        assert ops.net(n) is n
        ops.Const(1)  # goes to n, the current net
        m = ops.net(name="fresh")
        assert m is not n
        with pytest.raises(GraphError):
            ops.net(net=n, name="x")
    assert nb.get() == [n, m]
    assert _op_types(n) == ["GivenTensorInt64Fill"]


def test_stop_if_ends_current_net_and_makes_a_loop():
    with NetBuilder("loopy") as nb:
        c = ops.Const(True)
        ops.stop_if(c)
        ops.Copy(c)
    children = nb.get()
    assert len(children) == 2
    stop = nb._stop_blob
    assert stop is not None and str(stop).endswith("stop_blob")
    # stop set false, then ORed in the same (first) net
    assert _op_types(children[0])[-2:] == ["ConstantFill", "Or"]
    step = core.to_execution_step(nb)
    assert step.Proto().should_stop_blob == str(stop)


def test_stop_blob_init_inserted_when_not_first_child():
    with NetBuilder() as nb:
        ops.Const(1)
        ops.net(name="second")
        ops.stop()
    children = nb.get()
    assert len(children) == 3
    init = children[0]
    assert "stop_blob_init" in str(init)
    assert _op_types(init) == ["ConstantFill"]
    assert init.Proto().op[0].output[0] == str(nb._stop_blob)


def test_frozen_builder_rejects_changes():
    with NetBuilder() as nb:
        ops.Const(1)
    with pytest.raises(GraphError):
        nb.add(core.Net("late"))
    with pytest.raises(GraphError):
        nb.current_net()


def test_name_and_fullname_conflict():
    with pytest.raises(GraphError):
        NetBuilder(name="a", _fullname="b")


def test_loop_requires_stop():
    with NetBuilder():
        with pytest.raises(GraphError):
            with ops.loop():
                ops.Const(1)


def test_loop_with_iters_creates_counter_in_parent():
    with NetBuilder("p") as nb:
        with ops.loop(10) as loop:
            ops.Copy(loop.iter())
    parent_net, loop_builder = nb.get()
    # the bound and counter come from the parent's net
    assert _op_types(parent_net) == ["GivenTensorInt64Fill"] * 3
    assert str(loop.iter()) in [o for op in parent_net.Proto().op for o in op.output]
    step = core.to_execution_step(loop_builder)
    assert step.Proto().should_stop_blob
    inner = loop_builder.get()
    assert "GE" in _op_types(inner[0])
    assert _op_types(inner[-1])[-1] == "Add"


def test_loop_iter_without_count_raises():
    with NetBuilder():
        with ops.loop() as loop:
            ops.stop()
        with pytest.raises(GraphError):
            loop.iter()


def test_loop_with_blob_bound():
    with NetBuilder() as nb:
        n = ops.Const(4)
        with ops.loop(n) as loop:
            pass
    assert loop._num_iters is n
    assert len(nb.get()) == 2


def test_if_elif_else_structure():
    with NetBuilder() as nb:
        x = ops.Const(True)
        y = ops.Const(False)
        with ops.If(x) as if_:
            ops.Copy(x)
        with if_.Elif(y) as elif_:
            ops.Copy(y)
        with elif_.Else() as else_:
            ops.Copy(x)
    children = nb.get()
    # Elif/Else conditions are computed in parent nets between the branches
    assert [c for c in children if isinstance(c, NetBuilder)] == [if_, elif_, else_]
    for branch in (if_, elif_, else_):
        # run-once builders with a stop blob append a final stop()
        assert branch._stop_blob is not None
        last = branch.get()[-1]
        assert _op_types(last)[-1] == "Or"
    with NetBuilder():
        with pytest.raises(GraphError):
            with else_.Else():
                pass


def test_else_must_follow_if_immediately():
    with NetBuilder():
        with ops.If(ops.Const(True)) as if_:
            ops.Const(1)
        # a condition computed in between is fine
        with if_.Elif(ops.Const(False)) as elif_:
            ops.Const(2)
        with ops.loop(2):
            ops.Const(3)
        with pytest.raises(GraphError):
            elif_.Else()


def test_stop_guard():
    with NetBuilder():
        with ops.stop_guard() as sg:
            ops.stop_if(ops.Const(True))
        assert isinstance(sg.has_stopped(), core.BlobReference)
        sg2 = ops.stop_guard()
        with pytest.raises(GraphError):
            sg2.has_stopped()


def test_setup_blocks_are_attributes_not_children():
    with NetBuilder() as nb:
        with ops.task_init() as ti:
            ops.Const(1)
        with ops.task_instance_exit() as tie:
            ops.Const(2)
        with ops.local_init() as li:
            ops.Const(3)
        ops.Const(4)
    children = nb.get()
    assert len(children) == 1
    net = children[0]
    assert net.get_attributes(Task.TASK_SETUP) == [ti]
    assert net.get_attributes(Task.TASK_INSTANCE_SETUP) == [tie]
    assert net.get_attributes(TaskGroup.LOCAL_SETUP) == [li]
    init_step = ti.setup(None)
    assert isinstance(init_step, core.ExecutionStep)
    assert ti.exit(None) is None
    assert tie.setup(None) is None
    assert isinstance(tie.exit(None), core.ExecutionStep)


def test_task_reporter_is_report_step_attribute():
    with NetBuilder() as nb:
        with ops.task_reporter(interval_ms=250):
            ops.Const(1)
    net = nb.get()[0]
    (step,) = net.get_attributes(Task.REPORT_STEP)
    assert step.Proto().run_every_ms == 250


def test_local_reporter_registers_on_group():
    with TaskGroup() as tg:
        with NetBuilder():
            with ops.local_reporter(interval_ms=50):
                ops.Const(1)
    assert len(tg._report_steps) == 1
    assert tg._report_steps[0][1].Proto().run_every_ms == 50


def test_no_bare_asserts_in_pipeline_layer():
    import pathlib
    import re
    import fastpipe
    root = pathlib.Path(fastpipe.__file__).parent
    mine = ["net_builder", "task", "session", "dataio", "queue_util",
            "pipeline", "dataset", "checkpoint", "net_printer"]
    for mod in mine:
        src = (root / (mod + ".py")).read_text()
        assert not re.search(r"^\s*assert\b", src, re.M), mod
