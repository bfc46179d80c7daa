"""Graph-only tests of fastpipe.net_printer (no runtime needed)."""

import pytest

from fastpipe import core, net_printer
from fastpipe.checkpoint import Job, epoch_limiter
from fastpipe.dataio import CountUntil
from fastpipe.errors import GraphError
from fastpipe.net_builder import NetBuilder, ops
from fastpipe.pipeline import pipe
from fastpipe.task import Task, TaskGroup


def test_net_c2_syntax_and_legacy_syntax():
    net = core.Net("printme")
    a = net.ConstantFill([], "a", shape=[2], value=1.5)
    net.Copy(a, "b")
    text = net_printer.to_string(net)
    name = str(net)
    assert text.splitlines()[0] == "%s = core.Net('%s')" % (name, name)
    assert "%s.ConstantFill([], ['a'], shape=[2], value=1.5)" % name in text
    assert "%s.Copy(['a'], ['b'])" % name in text
    legacy = net_printer.to_string(net, c2_syntax=False)
    assert legacy.splitlines()[0] == "# net: %s" % name
    assert "b = Copy(a)" in legacy


def test_factor_prefixes():
    net = core.Net("fp")
    net.Sum(["pre/xa", "pre/xb"], "out")
    text = net_printer.to_string(net, c2_syntax=False, factor_prefixes=True)
    assert "out = Sum(pre/x[a, b])" in text


def test_step_headers():
    with NetBuilder() as nb:
        with ops.loop(3):
            ops.Const(1)
    text = net_printer.to_string(core.to_execution_step(nb))
    assert "with loop():" in text
    assert "yield stop_if(" in text

    n = core.Net("it")
    n.Const(1)
    assert "with loop(5):" in net_printer.to_string(
        core.execution_step("five", n, num_iter=5))

    s1 = core.execution_step("s1", core.Net("c1"))
    s1.Nets()[0].Const(1)
    s2 = core.execution_step("s2", core.Net("c2"), create_workspace=True)
    s2.Nets()[0].Const(1)
    text = net_printer.to_string(
        core.execution_step("par", [s1, s2], concurrent_substeps=True))
    assert "with parallel():" in text
    # Caffe2 prints the step names unquoted
    assert "with step(s1):" in text
    assert "with workspace(s2):" in text


def test_empty_block_prints_pass():
    text = net_printer.Text()
    with text.context("nothing"):
        pass
    assert str(text) == "with nothing:\n    pass"


def test_task_group_with_instances():
    with TaskGroup() as tg:
        with Task(name="w", num_instances=4):
            with ops.task_instance_init():
                ops.Const(0)
            ops.Const(1)
    text = net_printer.to_string(tg)
    lines = text.splitlines()
    assert lines[0] == "with TaskGroup():"
    assert lines[1].startswith(
        "    with Task(node=local, name=local/grouped_by_node, outputs=Output[")
    assert "with parallel(num_instances=4):" in text


def _build_job():
    with Job() as job:
        with job.init_group:
            init = core.Net("job_init")
            init.Const(1)
            Task(step=init)
        reader = CountUntil(5)
        pipe(reader, num_runtime_threads=2)
        epoch_limiter(job, 2)
    return job


def test_job_to_string_has_all_sections():
    job = _build_job()
    text = net_printer.to_string(job)
    for header in ("with Job.current().init_group:",
                   "with Job.current().epoch_group:",
                   "with Job.current().stop_signals:",
                   "with Job.current().download_group:",
                   "with Job.current().exit_group:"):
        assert header in text
    assert "    Output[" in text
    assert "parallel(num_instances=2)" in text
    assert "CreateBlobsQueue" in text


def test_runtime_pipe_printout_size_does_not_grow_with_instances():
    def build(n):
        with TaskGroup() as tg:
            pipe(CountUntil(10), num_runtime_threads=n)
        return net_printer.to_string(tg)
    small, big = build(1), build(1000)
    assert abs(len(small.splitlines()) - len(big.splitlines())) <= 3


def test_analyze_accepts_valid_job():
    net_printer.analyze(_build_job())


def test_analyze_undefined_blob():
    net = core.Net("undef")
    net.Copy("never_written", "y")
    with TaskGroup() as tg:
        Task(step=net)
    with pytest.raises(GraphError, match="Blob undefined"):
        net_printer.analyze(tg)


def test_analyze_concurrent_writers():
    a, b = core.Net("wa"), core.Net("wb")
    a.ConstantFill([], "same", shape=[], value=1.0)
    b.ConstantFill([], "same", shape=[], value=2.0)
    step = core.execution_step(
        "both", [core.execution_step("sa", a), core.execution_step("sb", b)],
        concurrent_substeps=True)
    with pytest.raises(AssertionError, match="multiple parallel"):
        net_printer.analyze(step)


def test_unsupported_object():
    with pytest.raises(TypeError):
        net_printer.to_string(object())


def test_debug_net_logs_each_op():
    net = core.Net("dbg")
    net.ConstantFill([], "a", shape=[1], value=1.0)
    net.Copy("a", "b")
    dbg = net_printer.debug_net(net)
    types = [op.type for op in dbg.Proto().op]
    assert types == ["GivenTensorStringFill", "Print", "ConstantFill",
                     "GivenTensorStringFill", "Print", "Copy"]
