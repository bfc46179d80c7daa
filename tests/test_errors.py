"""fastpipe's exception tree: every error derives from FastpipeError and the
builtin it resembles; RunError carries where it happened as attributes."""
import pickle

import numpy as np
import pytest

from fastpipe import core, errors
from fastpipe.errors import (ArgumentError, BlobError, CancelledError, FastpipeError,
                             OutOfMemoryError, PlanError, QueueClosedError, RunError,
                             WorkspaceError)
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.task import TaskGroup

from pipeline_helpers import local_session, make_dataset, make_empty_dataset


@pytest.mark.parametrize("cls,builtin", [
    (PlanError, ValueError), (PlanError, RuntimeError), (BlobError, KeyError),
    (RunError, RuntimeError), (QueueClosedError, RuntimeError),
    (CancelledError, RuntimeError), (WorkspaceError, RuntimeError),
    (ArgumentError, ValueError), (ArgumentError, TypeError),
    (OutOfMemoryError, MemoryError)])
def test_every_class_is_a_fastpipe_error_and_its_builtin(cls, builtin):
    assert issubclass(cls, FastpipeError) and issubclass(cls, builtin)
    assert cls.__name__ in errors.__all__


def test_cancelled_error_is_a_run_error():
    assert issubclass(CancelledError, RunError)


def test_run_error_attributes_default_to_none_and_survive_pickling():
    e = RunError("plain")
    assert (e.op_type, e.op_index, e.net, e.step, e.instance) == (None,) * 5
    e = RunError("Add #2 in net 'n'", "Add", 2, "n", "s", 1)
    f = pickle.loads(pickle.dumps(e))
    assert str(f) == "Add #2 in net 'n'"
    assert (f.op_type, f.op_index, f.net, f.step, f.instance) == ("Add", 2, "n", "s", 1)


def test_native_op_failure_outside_instances(ws):
    """A native kernel's failure: type, index, net and step are known; no instance."""
    ws.feed_blob("a", np.zeros(3, np.float32))
    ws.feed_blob("b", np.zeros(4, np.float32))
    net = core.Net("mismatch")
    net.ConstantFill([], "unused", shape=[1], value=0.0)
    net.Add(["a", "b"], "c")
    with pytest.raises(RunError) as info:
        ws.run(core.execution_step("mismatch_step", net))
    e = info.value
    assert (e.op_type, e.op_index, e.net, e.step, e.instance) == \
        ("Add", 1, "mismatch", "mismatch_step", None)


@pytest.mark.timeout(120)
def test_failing_op_in_a_pipe_runtime_instance_names_all_parts(ws):
    def boom(inputs, outputs):
        if int(np.asarray(inputs[0].data).ravel()[0]) == 7:
            raise ValueError("record 7 is cursed")

    def proc(rec):
        ops.Python(boom)(rec.field_blobs(), [])
        return rec

    src = make_dataset(ws, "err_src", {"x": list(range(20))})
    dst = make_empty_dataset(ws, "err_dst", "x")
    with TaskGroup() as tg:
        pipe(src.reader(), dst.writer(), processor=proc, num_runtime_threads=2)
    session = local_session(ws)
    compiled = session.compile(tg)
    with pytest.raises(RunError) as info:
        session.run(compiled)
    e = info.value
    assert isinstance(e.__cause__, ValueError)
    assert e.op_type == "Python"
    assert e.instance in (0, 1)
    assert e.net and e.step
    assert "instance %d" % e.instance in str(e)
    assert "in net '%s'" % e.net in str(e) and "step '%s'" % e.step in str(e)
    # op_index is the Python op's position in the net the error names, and
    # step is a step of the lowered plan that runs that net
    plan = compiled.obj.plan.Proto()       # LocalSession's compiled plan
    nets = {n.name: n for n in plan.network}
    assert nets[e.net].op[e.op_index].type == "Python"
    step_nets = _nets_of_step(plan.execution_step, e.step)
    assert step_nets is not None and e.net in step_nets


def _nets_of_step(steps, name):
    for s in steps:
        if s.name == name:
            return list(s.network)
        found = _nets_of_step(s.substep, name)
        if found is not None:
            return found
    return None


def test_step_failure_outside_ops_names_step_and_instance(ws):
    """A stop blob of the wrong kind fails the step, not an op: step and
    instance are set, op fields are None."""
    net = core.Net("bad_stop_net")
    net.ConstantFill([], "bad_stop", shape=[2], value=1.0)     # not a scalar bool
    inner = core.execution_step("bad_stop_inner", net, should_stop_blob="bad_stop",
                                create_workspace=True)
    outer = core.execution_step("bad_stop_outer", [inner], num_concurrent_instances=2)
    with pytest.raises(RunError, match="expects a scalar boolean") as info:
        ws.run(outer)
    e = info.value
    assert (e.op_type, e.op_index, e.net) == (None, None, None)
    assert e.step == "bad_stop_inner" and e.instance in (0, 1)


def test_fastpipe_raises_no_bare_builtin_exception():
    """Every error fastpipe raises derives from FastpipeError (and the
    builtin it resembles): no `raise ValueError(...)` and the like in the
    package's Python or Cython sources."""
    import glob
    import os
    import re
    import fastpipe
    pkg = os.path.dirname(fastpipe.__file__)
    builtins = ("ValueError|TypeError|KeyError|RuntimeError|AttributeError|IndexError|"
                "NotImplementedError|MemoryError|OSError|IOError|LookupError|AssertionError")
    pat = re.compile(r"\braise (%s)\b" % builtins)
    found = []
    for path in (glob.glob(os.path.join(pkg, "*.py")) + glob.glob(os.path.join(pkg, "_graph", "*.py"))
                 + glob.glob(os.path.join(pkg, "_core", "*.pxi")) + [os.path.join(pkg, "_core.pyx")]):
        for n, line in enumerate(open(path), 1):
            if pat.search(line) and not line.lstrip().startswith("#"):
                found.append("%s:%d: %s" % (os.path.relpath(path, pkg), n, line.strip()))
    assert found == []
