"""Control operators If / While / Do and the builders that emit them
(``ops.IfNet``/``Elif``/``Else``, ``ops.WhileNet``/``Condition``,
``NetBuilder(_use_control_ops=True)``), with Caffe2's net_builder_test
scenarios run both ways."""

import os
import re
import signal
import threading
import time

import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.core import Plan, to_execution_step
from fastpipe.errors import (CancelledError, FastpipeError, GraphError, OperatorDefError,
                             RunError)
from fastpipe.net_builder import NetBuilder, ops
from fastpipe.session import LocalSession
from fastpipe.task import Task, TaskGroup, final_output


def _run(nb, name="plan"):
    plan = Plan(name)
    plan.AddStep(to_execution_step(nb))
    ws = workspace.C.Workspace()
    ws.run(plan)
    return ws


def _fetch(ws, blob):
    return ws.blobs[str(blob)].fetch()


def _op_types(net):
    return [op.type for op in net.Proto().op]


# ---- Caffe2's net_builder_test scenarios ------------------------------------------

def _if_net_scenario():
    """Caffe2's test_if_net body; returns the blobs it checks."""
    x0 = ops.Const(0)
    x1 = ops.Const(1)
    x2 = ops.Const(2)
    y0 = ops.Const(0)
    y1 = ops.Const(1)
    y2 = ops.Const(2)
    first_res = ops.Const(0)
    with ops.IfNet(ops.Const(True)):
        ops.Const(1, blob_out=first_res)
    with ops.Else():
        ops.Const(2, blob_out=first_res)
    second_res = ops.Const(0)
    with ops.IfNet(ops.Const(False)):
        ops.Const(1, blob_out=second_res)
    with ops.Else():
        ops.Const(2, blob_out=second_res)
    # nested and sequential ifs, empty then/else, outer blobs read and
    # written (an input too), local blobs
    with ops.IfNet(ops.LT([x0, x1])):
        local_blob = ops.Const(900)
        ops.Add([ops.Const(100), local_blob], [y0])
        gt = ops.GT([x1, x2])
        with ops.IfNet(gt):
            pass
        with ops.Else():
            ops.Add([y1, local_blob], [local_blob])
            ops.Add([ops.Const(100), y1], [y1])
        with ops.IfNet(ops.EQ([local_blob, ops.Const(901)])):
            ops.Const(7, blob_out=y2)
            ops.Add([y1, y2], [y2])
    with ops.Else():
        pass
    return first_res, second_res, y0, y1, y2, local_blob


@pytest.mark.parametrize("use_control_ops", [False, True])
def test_caffe2_if_net(use_control_ops):
    with NetBuilder(_use_control_ops=use_control_ops) as nb:
        first_res, second_res, y0, y1, y2, local_blob = _if_net_scenario()
    ws = _run(nb, "if_net_test")
    assert _fetch(ws, first_res) == 1
    assert _fetch(ws, second_res) == 2
    assert _fetch(ws, y0) == 1000
    assert _fetch(ws, y1) == 101
    assert _fetch(ws, y2) == 108
    # blobs first made inside a branch live in its Do workspace only
    assert str(local_blob) not in ws.blobs


@pytest.mark.parametrize("use_control_ops", [False, True])
def test_caffe2_while_net(use_control_ops):
    with NetBuilder(_use_control_ops=use_control_ops) as nb:
        x = ops.Const(0)
        y = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                ops.Add([x, ops.Const(1)], [x])
                ops.LT([x, ops.Const(7)])
            ops.Add([x, y], [y])
    ws = _run(nb, "while_net_test")
    assert _fetch(ws, x) == 7
    assert _fetch(ws, y) == 21


def test_use_control_ops_merges_into_one_net():
    with NetBuilder(_use_control_ops=True) as nb:
        x = ops.Const(3)
        with ops.IfNet(ops.GT([x, ops.Const(1)])):
            ops.Add([x, ops.Const(1)], [x])
    children = nb.get()
    assert len(children) == 1 and isinstance(children[0], core.Net)
    types = _op_types(children[0])
    assert types.count("If") == 1 and types.count("CreateScope") == 1
    ws = _run(nb)
    assert _fetch(ws, x) == 4


def _arg(op, name):
    return next(a for a in op.arg if a.name == name)


def test_if_net_ops_follow_caffe2_control_ops_util():
    """The layout of Caffe2's add_if_op: CreateScope per branch, then If
    over [cond] + outer inputs + workspace blobs; each branch a Do whose
    inner names are the outer names, indexed into inputs + outputs."""
    with NetBuilder() as nb:
        x = ops.Const(1)
        y = ops.Const(0)
        cond = ops.GT([x, ops.Const(0)])
        with ops.IfNet(cond):
            local = ops.Const(5)
            ops.Add([x, local], [y])
        with ops.Else():
            ops.Const(3, blob_out=y)
    if_net = nb.get()[-1].get()[0]
    assert _op_types(if_net) == ["CreateScope", "CreateScope", "If"]
    then_ws, else_ws = if_net.Proto().op[0].output[0], if_net.Proto().op[1].output[0]
    assert then_ws.endswith("/workspace_if_then") and else_ws.endswith("/workspace_if_else")
    if_op = if_net.Proto().op[2]
    assert list(if_op.input) == [str(cond), str(x), then_ws, else_ws]
    assert list(if_op.output) == [str(y), then_ws, else_ws]
    then_do = _arg(if_op, "then_net").n.op
    assert [op.type for op in then_do] == ["Do"]
    do = then_do[0]
    assert list(do.input) == [str(x), then_ws] and list(do.output) == [str(y), then_ws]
    bind = dict(zip([b.decode() for b in _arg(do, "inner_blobs").strings],
                    _arg(do, "outer_blobs_idx").ints))
    assert bind == {str(x): 0, str(y): 1}
    inner = _arg(do, "net").n
    assert [op.type for op in inner.op] == ["GivenTensorInt64Fill", "Add"]
    assert str(local) not in bind
    else_do = _arg(if_op, "else_net").n.op[0]
    assert list(else_do.input) == [else_ws] and list(else_do.output) == [str(y), else_ws]


def test_while_net_ops_follow_caffe2_control_ops_util():
    """Caffe2's add_while_op: the condition blob made by the condition net
    is filled false first; the loop's outputs are inputs too; the body's Do
    copies external blobs (copy_external_blobs=True)."""
    with NetBuilder() as nb:
        x = ops.Const(0)
        y = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                c = ops.LT([x, ops.Const(7)])
            ops.Add([x, ops.Const(1)], [x])
            ops.Add([x, y], [y])
    while_net = nb.get()[-1].get()[0]
    assert _op_types(while_net) == ["ConstantFill", "CreateScope", "CreateScope", "While"]
    body_ws = while_net.Proto().op[1].output[0]
    cond_ws = while_net.Proto().op[2].output[0]
    w = while_net.Proto().op[3]
    assert list(w.input) == [str(c), str(x), str(y), body_ws, cond_ws]
    assert list(w.output) == [str(x), str(y), body_ws, str(c), cond_ws]
    body_do = _arg(w, "loop_net").n.op[0]
    assert _arg(body_do, "copy_external_blobs").i == 1
    assert list(body_do.input) == [str(x), str(y), body_ws]
    cond_do = _arg(w, "cond_net").n.op[0]
    assert list(cond_do.input) == [str(x), cond_ws]
    assert list(cond_do.output) == [str(c), cond_ws]


def test_step_loops_and_control_ops_agree():
    """The same computation with step-based ops.If/ops.loop and with
    IfNet/WhileNet: Caffe2's test_loops totals."""
    expected = [0, 0, 0, 0]
    for i in range(10):
        for j in range(i):
            val = i * 10 + j
            k = 1 if val >= 80 else 2 if val >= 50 else 3
            expected[k] += val
            expected[0] += val

    with NetBuilder() as nb1:
        totals = [ops.Const(0) for _ in range(4)]
        with ops.loop(10) as outer:
            base = ops.Mul([outer.iter(), ops.Const(10)])
            with ops.loop(outer.iter()) as inner:
                val = ops.Add([base, inner.iter()])
                with ops.If(ops.GE([val, ops.Const(80)])) as c:
                    ops.Add([totals[1], val], [totals[1]])
                with c.Elif(ops.GE([val, ops.Const(50)])) as c:
                    ops.Add([totals[2], val], [totals[2]])
                with c.Else():
                    ops.Add([totals[3], val], [totals[3]])
                ops.Add([totals[0], val], totals[0])
    ws1 = _run(nb1)

    with NetBuilder(_use_control_ops=True) as nb2:
        totals2 = [ops.Const(0) for _ in range(4)]
        i = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([i, ops.Const(10)])
            base = ops.Mul([i, ops.Const(10)])
            j = ops.Const(0)
            with ops.WhileNet():
                with ops.Condition():
                    ops.LT([j, i])
                val = ops.Add([base, j])
                with ops.IfNet(ops.GE([val, ops.Const(80)])):
                    ops.Add([totals2[1], val], [totals2[1]])
                with ops.Elif(ops.GE([val, ops.Const(50)])):
                    ops.Add([totals2[2], val], [totals2[2]])
                with ops.Else():
                    ops.Add([totals2[3], val], [totals2[3]])
                ops.Add([totals2[0], val], [totals2[0]])
                ops.Add([j, ops.Const(1)], [j])
            ops.Add([i, ops.Const(1)], [i])
    ws2 = _run(nb2)
    assert [int(_fetch(ws1, t)) for t in totals] == expected
    assert [int(_fetch(ws2, t)) for t in totals2] == expected


# ---- If / Elif / Else chains ---------------------------------------------------------

def _classify(value):
    """IfNet / Elif / Elif / Else over ``value``; returns the result blob."""
    x = ops.Const(value)
    r = ops.Const(-1)
    with ops.IfNet(ops.GE([x, ops.Const(100)])):
        ops.Const(3, blob_out=r)
    with ops.Elif(ops.GE([x, ops.Const(10)])):
        ops.Const(2, blob_out=r)
    with ops.Elif(ops.GE([x, ops.Const(0)])):
        ops.Const(1, blob_out=r)
    with ops.Else():
        ops.Const(0, blob_out=r)
    return r


@pytest.mark.parametrize("use_control_ops", [False, True])
def test_if_elif_else_chain(use_control_ops):
    values = [500, 100, 99, 10, 9, 0, -1, -50]
    with NetBuilder(_use_control_ops=use_control_ops) as nb:
        results = [_classify(v) for v in values]
    ws = _run(nb)
    assert [int(_fetch(ws, r)) for r in results] == [3, 3, 2, 2, 1, 1, 0, 0]


def test_elif_condition_runs_only_when_earlier_conditions_are_false():
    """Nets computing an Elif's condition belong to the else branch: a
    Python op there runs only when the IfNet's condition was false."""
    calls = []
    with NetBuilder() as nb:
        r = ops.Const(0)
        for flag in (True, False):
            with ops.IfNet(ops.Const(flag)):
                ops.Const(1, blob_out=r)
            ops.Python(lambda i, o, flag=flag: calls.append(flag))([], [])
            with ops.Elif(ops.Const(True)):
                ops.Const(2, blob_out=r)
    ws = _run(nb)
    assert calls == [False]
    assert _fetch(ws, r) == 2


def test_else_without_if_net_is_an_error():
    with NetBuilder():
        ops.Const(1)
        with pytest.raises(GraphError, match="Else"):
            ops.Else()
        with pytest.raises(GraphError, match="Elif"):
            ops.Elif(ops.Const(True))


@pytest.mark.parametrize("then_what", ["Elif", "Else"])
def test_elif_or_else_after_else_is_an_error(then_what):
    with NetBuilder():
        t = ops.Const(True)
        with ops.IfNet(t):
            ops.Const(1)
        with ops.Else():
            ops.Const(2)
        with pytest.raises(GraphError, match="after an Else"):
            ops.Elif(t) if then_what == "Elif" else ops.Else()


def test_stop_blobs_are_refused_with_control_ops():
    with NetBuilder(_use_control_ops=True):
        with pytest.raises(GraphError, match="control op"):
            ops.stop()
        with pytest.raises(GraphError):
            ops.loop(3)


def test_condition_outside_while_net_is_an_error():
    with NetBuilder():
        with pytest.raises(GraphError, match="Condition"):
            ops.Condition()


def test_while_net_without_condition_is_an_error():
    with NetBuilder():
        with pytest.raises(GraphError, match="Condition"):
            with ops.WhileNet():
                ops.Const(1)


def test_undefined_input_in_branch_is_an_error():
    with NetBuilder():
        with pytest.raises(GraphError, match="ghost"):
            with ops.IfNet(ops.Const(True)):
                ops.Copy([core.BlobReference("ghost")], ["out"])


# ---- While ------------------------------------------------------------------------------

def test_while_with_counter_and_no_cond_net():
    """A While op written directly: the loop net updates the condition."""
    body = core.Net("body")
    body.Add(["i", "one"], ["i"])
    body.LT(["i", "limit"], ["go"])
    net = core.Net("w")
    net.Const(0, blob_out="i")
    net.Const(1, blob_out="one")
    net.Const(25, blob_out="limit")
    net.Const(True, blob_out="go")
    net.While(["go", "i", "one", "limit"], ["i", "go"], loop_net=body.Proto())
    ws = workspace.C.Workspace()
    ws.run(net)
    assert ws.blobs["i"].fetch() == 25
    assert not ws.blobs["go"].fetch()


def test_while_that_never_runs_keeps_outputs():
    with NetBuilder() as nb:
        x = ops.Const(5)
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([x, ops.Const(0)])
            ops.Add([x, ops.Const(1)], [x])
    ws = _run(nb)
    assert _fetch(ws, x) == 5


def test_if_nested_in_while():
    with NetBuilder() as nb:
        i = ops.Const(0)
        evens = ops.Const(0)
        odds = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([i, ops.Const(9)])
            with ops.IfNet(ops.EQ([ops.Mul([ops.Div([i, ops.Const(2)]), ops.Const(2)]), i])):
                ops.Add([evens, ops.Const(1)], [evens])
            with ops.Else():
                ops.Add([odds, ops.Const(1)], [odds])
            ops.Add([i, ops.Const(1)], [i])
    ws = _run(nb)
    assert (_fetch(ws, evens), _fetch(ws, odds)) == (5, 4)


def test_python_op_inside_while_body():
    seen = []

    def record(inputs, outputs):
        seen.append(int(inputs[0].data))

    with NetBuilder() as nb:
        i = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([i, ops.Const(4)])
            ops.Python(record)([i], [])
            ops.Add([i, ops.Const(1)], [i])
    _run(nb)
    assert seen == [0, 1, 2, 3]


# ---- Do ----------------------------------------------------------------------------------

def test_do_maps_inner_blobs_to_outer_blobs():
    """inner 'a'/'b' are outer 'x'/'y'; 'tmp' stays in the child workspace."""
    body = core.Net("body")
    body.Add(["a", "a"], ["tmp"])
    body.Add(["tmp", "a"], ["b"])
    net = core.Net("outer")
    net.Const(7, blob_out="x")
    net.CreateScope([], ["scope"])
    # outer names: inputs [x] then outputs [y] -> indices 0 and 1
    net.Do(["x", "scope"], ["y", "scope"], net=body.Proto(),
           inner_blobs=["a", "b"], outer_blobs_idx=[0, 1])
    ws = workspace.C.Workspace()
    ws.run(net)
    assert ws.blobs["y"].fetch() == 21
    assert "tmp" not in ws.blobs and "a" not in ws.blobs and "b" not in ws.blobs


def test_do_child_sees_only_bound_blobs():
    body = core.Net("body")
    body.Copy(["hidden"], ["b"])
    net = core.Net("outer")
    net.Const(1, blob_out="hidden")
    net.Const(2, blob_out="x")
    net.CreateScope([], ["scope"])
    net.Do(["x", "scope"], ["y", "scope"], net=body.Proto(),
           inner_blobs=["a", "b"], outer_blobs_idx=[0, 1])
    ws = workspace.C.Workspace()
    with pytest.raises(FastpipeError, match="hidden") as info:
        ws.run(net)
    # a bind-time error inside the subnet names the inner op and the subnet
    assert re.search(r"Copy #0 in net 'outer\S*/Do\.net/body\S*'", str(info.value))


@pytest.mark.parametrize("kwargs, match", [
    (dict(inner_blobs=["a"], outer_blobs_idx=[0, 1]), "inner_blobs has 1"),
    (dict(inner_blobs=["a", "a"], outer_blobs_idx=[0, 1]), "bound twice"),
    (dict(inner_blobs=["a", "b"], outer_blobs_idx=[0, 5]), "out of bounds"),
    (dict(inner_blobs=["a", "b"], outer_blobs_idx=[0, 0]), "bound twice"),
    (dict(inner_blobs=["a"], outer_blobs_idx=[0]), "not bound"),
])
def test_do_bad_bindings_are_clear_errors(kwargs, match):
    body = core.Net("body")
    body.Copy(["a"], ["b"])
    net = core.Net("outer")
    with pytest.raises(OperatorDefError, match=match) as info:
        net.Do(["x", "scope"], ["y", "scope"], net=body.Proto(), **kwargs)
    assert "Do" in str(info.value)


def test_do_needs_the_same_workspace_blob_last():
    body = core.Net("body")
    net = core.Net("outer")
    with pytest.raises(OperatorDefError, match="workspace blob"):
        net.Do(["x", "s1"], ["y", "s2"], net=body.Proto(),
               inner_blobs=["x", "y"], outer_blobs_idx=[0, 1])


def test_if_without_then_net_is_an_error():
    net = core.Net("outer")
    with pytest.raises(OperatorDefError, match="then_net"):
        net.If(["c"], [])
    with pytest.raises(OperatorDefError, match="loop_net"):
        net.While(["c"], [])


def test_created_net_with_while_runs_again_and_again():
    """A CreateNet'd net binds its control ops once; every RunNet reuses the
    binding (the Do workspaces too) and sees the outer blobs' new values."""
    init = core.Net("init")
    init.Const(0, blob_out="total")
    workspace.RunNetOnce(init)
    with NetBuilder(_use_control_ops=True, initial_scope=["total"]) as nb:
        total = core.BlobReference("total")
        n = ops.Const(0, blob_out="n")
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([n, ops.Const(4)])
            step = ops.Add([n, ops.Const(1)])      # local to the body
            ops.Add([total, step], [total])
            ops.Copy([step], [n])
    net = nb.get()[0]
    workspace.CreateNet(net)
    for k in range(1, 4):
        assert workspace.RunNet(net.Name()) is True
        assert workspace.FetchBlob("total") == 10 * k
        assert workspace.FetchBlob("n") == 4
    assert not workspace.HasBlob(str(step))


# ---- bad conditions -------------------------------------------------------------------

@pytest.mark.parametrize("op_type", ["If", "While"])
@pytest.mark.parametrize("value, described", [
    (np.float32(1.5), "float32"),
    (np.array([True, False]), "[2]"),
])
def test_bad_condition_is_a_clear_error(op_type, value, described):
    sub = core.Net("sub")
    sub.Const(1, blob_out="z")
    net = core.Net("outer")
    net.Const(value, blob_out="cond")
    args = {"then_net": sub.Proto()} if op_type == "If" else {"loop_net": sub.Proto()}
    getattr(net, op_type)(["cond"], ["z"], **args)
    ws = workspace.C.Workspace()
    with pytest.raises(RunError) as info:
        ws.run(net)
    msg = str(info.value)
    assert op_type in msg and "'cond'" in msg and "bool" in msg and described in msg
    assert info.value.op_type == op_type


# ---- errors inside subnets -------------------------------------------------------------

def test_error_inside_subnet_names_inner_op_and_subnet():
    with NetBuilder() as nb:
        i = ops.Const(0)
        with ops.WhileNet():
            with ops.Condition():
                ops.LT([i, ops.Const(3)])
            with ops.IfNet(ops.EQ([i, ops.Const(2)])):
                # int64 + float32 [3]: a runtime error on the third iteration
                ops.Add([i, ops.Const(np.ones(3, np.float32))], name="bad_add")
            ops.Add([i, ops.Const(1)], [i])
    with pytest.raises(RunError) as info:
        _run(nb)
    msg = str(info.value)
    assert "Add 'bad_add'" in msg
    assert "If.then_net" in msg and "While.loop_net" in msg and "Do.net" in msg
    assert info.value.op_type == "Add"
    assert "Do.net" in info.value.net


def test_python_error_inside_subnet_is_the_cause():
    def boom(inputs, outputs):
        raise ValueError("boom in branch")

    with NetBuilder() as nb:
        with ops.IfNet(ops.Const(True)):
            ops.Python(boom)([], [])
    with pytest.raises(RunError) as info:
        _run(nb)
    assert isinstance(info.value.__cause__, ValueError)
    assert "If.then_net" in str(info.value)


# ---- runtime instances ---------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_instances", [1, 4])
def test_instances_each_run_their_own_while(num_instances):
    """Each instance binds its own While: its counter and local blobs are its
    own (instance-local names), and the shared counter sees every iteration."""
    iters = 50
    with TaskGroup() as tg:
        with Task(num_instances=num_instances):
            with ops.task_init():
                shared = ops.CreateCounter([], ["shared_counter"])
            # a branch sees the blobs named before it: bring the counter in scope
            ops.RetrieveCount(shared)
            i = ops.Const(0)
            total = ops.Const(0)
            with ops.WhileNet():
                with ops.Condition():
                    ops.LT([i, ops.Const(iters)])
                ops.CountUp(shared)
                sq = ops.Mul([i, i])          # local to the loop body
                ops.Add([total, sq], [total])
                ops.Add([i, ops.Const(1)], [i])
            ops.EQ([total, ops.Const(sum(k * k for k in range(iters)))], ["ok"])
            ops.Not(["ok"], ["bad"])
            with ops.IfNet(core.BlobReference("bad")):
                ops.CountUp(shared)           # would spoil the count
            with ops.task_exit():
                count = final_output(ops.RetrieveCount(shared))
    with LocalSession() as session:
        session.run(tg)
        assert count.fetch() == num_instances * iters


# ---- cancellation --------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_infinite_while_is_cancelled_by_run_cancel():
    started = threading.Event()

    def mark(inputs, outputs):
        started.set()

    with NetBuilder(_use_control_ops=True) as nb:
        go = ops.Const(True)
        n = ops.Const(0)
        with ops.IfNet(go):
            ops.Python(mark)([], [])
        with ops.WhileNet():
            with ops.Condition():
                ops.And([go, go])
            ops.Add([n, ops.Const(1)], [n])
    with LocalSession() as session:
        handle = session.start(Task(step=to_execution_step(nb)))
        assert started.wait(20)
        handle.cancel()
        with pytest.raises(CancelledError):
            handle.wait(20)
        assert handle.done()


@pytest.mark.timeout(30)
def test_infinite_while_is_stopped_by_a_failure_elsewhere():
    started = threading.Event()

    def fail_after_start(inputs, outputs):
        if not started.wait(20):
            raise AssertionError("the While never started")
        raise KeyError("failure elsewhere")

    def mark(inputs, outputs):
        started.set()

    with NetBuilder(_use_control_ops=True) as nb:
        go = ops.Const(True)
        with ops.WhileNet():
            with ops.Condition():
                ops.And([go, go])
            ops.Python(mark)([], [])
    fail = core.Net("fail")
    fail.Python(fail_after_start)([], [])
    step = core.execution_step("both", [to_execution_step(nb),
                                        core.execution_step("f", fail)],
                               concurrent_substeps=True)
    ws = workspace.C.Workspace()
    with pytest.raises(RunError) as info:
        ws.run(step)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.timeout(30)
def test_ctrl_c_stops_an_infinite_while_run_as_a_net():
    """A While may never end, so a net holding one runs on the native driver
    (not inline on the calling thread): Ctrl-C stops it within a second."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    started = threading.Event()

    def mark(inputs, outputs):
        started.set()

    with NetBuilder(_use_control_ops=True) as nb:
        go = ops.Const(True)
        with ops.WhileNet():
            with ops.Condition():
                ops.And([go, go])
            with ops.IfNet(go):
                ops.Python(mark)([], [])
    net = nb.get()[0]
    sent = []

    def interrupter():
        if started.wait(20):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=interrupter)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            workspace.C.Workspace().run(net)
        elapsed = time.monotonic() - sent[0]
    finally:
        t.join(10)
        signal.signal(signal.SIGINT, old)
    assert not t.is_alive()
    assert elapsed < 1.0


# ---- printing ------------------------------------------------------------------------------

def test_net_printer_shows_subnets():
    from fastpipe import net_printer
    with NetBuilder() as nb:
        x = ops.Const(1)
        with ops.IfNet(ops.GT([x, ops.Const(0)])):
            ops.Add([x, ops.Const(10)], [x])
    text = net_printer.to_string(to_execution_step(nb))
    assert "If" in text and "then_net" in text and "Add" in text
