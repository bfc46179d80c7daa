"""Print's arguments, with Caffe2's semantics (caffe2/operators/utility_ops.h
PrintOp and TensorPrinter):

* ``limit``: print at most this many elements; 0 (the default) means
  TensorPrinter's default of 1000.
* ``every_n`` (>= 1, default 1): print on the 1st, (n+1)th, (2n+1)th... run
  of the op instance.
* ``to_file``: write to ``<root folder>/<input blob name>.log`` instead of the
  console; the file is truncated when the op instance is created and gets
  one line per printed run.  (fastpipe's root folder: the working
  directory.)

The Print kernel lives in pyop.pxi (the GIL trampoline); a run that prints
nothing (every_n) does not take the GIL.
"""
import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import FastpipeError, OperatorDefError



def _lines(text, name):
    return [ln for ln in text.splitlines() if ln.startswith(name + ":")]


def _values(line):
    return [int(v) for v in line.split(":", 1)[1].strip().split(",")]


def _print_every_run(num_iter, **args):
    """A plan running CountUp -> Print(count) num_iter times in one op
    instance (so every_n counts across the iterations)."""
    init = core.Net("pr_init")
    init.CreateCounter([], ["pr_ctr"], init_count=0)
    workspace.RunNetOnce(init)
    net = core.Net("pr")
    net.CountUp(["pr_ctr"], ["pr_count"])
    net.Print(["pr_count"], [], **args)
    plan = core.Plan("pr_plan")
    plan.AddStep(core.execution_step("pr_step", net, num_iter=num_iter))
    workspace.RunPlan(plan)


def test_default_prints_every_element_up_to_1000(capfd):
    workspace.FeedBlob("pa", np.arange(1500, dtype=np.int64))
    net = core.Net("pa_net")
    net.Print(["pa"], [])
    workspace.RunNetOnce(net)
    (line,) = _lines(capfd.readouterr().out, "pa")
    assert _values(line) == list(range(1000))


@pytest.mark.parametrize("every_n, limit, match", [
    (0, 0, r"Print.*every_n=0 must be >= 1"),
    (-2, 0, r"Print.*every_n=-2 must be >= 1"),
    (1, -1, r"Print.*limit=-1 must be >= 0"),
])
def test_bad_every_n_or_limit_is_rejected_naming_the_op(every_n, limit, match):
    with pytest.raises(OperatorDefError, match=match) as ei:
        core.Net("bad_print").Print(["x"], [], every_n=every_n, limit=limit)
    assert isinstance(ei.value, FastpipeError) and isinstance(ei.value, ValueError)


def test_limit_caps_the_number_of_elements_printed(capfd):
    workspace.FeedBlob("pl", np.arange(10, dtype=np.int32).reshape(2, 5))
    net = core.Net("pl_net")
    net.Print(["pl"], [], limit=3)
    workspace.RunNetOnce(net)
    (line,) = _lines(capfd.readouterr().out, "pl")
    assert _values(line) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_every_n_prints_the_first_run_and_then_every_nth(capfd):
    _print_every_run(7, every_n=3)
    lines = _lines(capfd.readouterr().out, "pr_count")
    assert [_values(ln) for ln in lines] == [[0], [3], [6]]     # runs 1, 4 and 7


@pytest.mark.timeout(30)
def test_every_n_1_prints_every_run(capfd):
    _print_every_run(4, every_n=1)
    lines = _lines(capfd.readouterr().out, "pr_count")
    assert [_values(ln) for ln in lines] == [[0], [1], [2], [3]]


@pytest.mark.timeout(30)
def test_to_file_writes_one_line_per_run_to_the_blobs_log_file(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pr_count.log").write_text("stale content from an earlier run\n")
    _print_every_run(3, to_file=True)
    assert _lines(capfd.readouterr().out, "pr_count") == []        # nothing on the console
    text = (tmp_path / "pr_count.log").read_text()
    assert "stale" not in text                                      # truncated at creation
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 3
    assert [ln.rsplit(":", 1)[1].strip() for ln in lines] == ["0", "1", "2"]


def test_limit_above_the_size_prints_every_element(capfd):
    workspace.FeedBlob("pm", np.arange(4, dtype=np.int64))
    net = core.Net("pm_net")
    net.Print(["pm"], [], limit=10)
    workspace.RunNetOnce(net)
    (line,) = _lines(capfd.readouterr().out, "pm")
    assert _values(line) == [0, 1, 2, 3]


@pytest.mark.timeout(30)
def test_every_n_counts_per_op_instance(capfd):
    """Each run of a plan makes a new op instance, whose count starts at 1."""
    _print_every_run(3, every_n=2)     # prints runs 1 and 3 (counts 0 and 2)
    _print_every_run(3, every_n=2)     # a new op instance: runs 1 and 3 again
    lines = _lines(capfd.readouterr().out, "pr_count")
    # one count across both plans would print the 1st, 3rd and 5th run: 0, 2, 1
    assert [_values(ln) for ln in lines] == [[0], [2], [0], [2]]


@pytest.mark.timeout(30)
def test_to_file_with_limit_and_every_n(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workspace.FeedBlob("pf", np.arange(6, dtype=np.int32))
    net = core.Net("pf_net")
    net.Print(["pf"], [], to_file=True, limit=2, every_n=2)
    plan = core.Plan("pf_plan")
    plan.AddStep(core.execution_step("pf_step", net, num_iter=5))
    workspace.RunPlan(plan)
    assert _lines(capfd.readouterr().out, "pf") == []
    lines = (tmp_path / "pf.log").read_text().splitlines()
    assert lines == ["pf: 0,1"] * 3                                # runs 1, 3 and 5


def test_to_file_that_cannot_be_opened_fails_naming_the_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pd.log").mkdir()                                   # a directory: open fails
    workspace.FeedBlob("pd", np.arange(2, dtype=np.int32))
    net = core.Net("pd_net")
    net.Print(["pd"], [], to_file=True)
    with pytest.raises(FastpipeError, match=r"Print #0 in net 'pd_net'.*log file") as ei:
        workspace.RunNetOnce(net)
    assert isinstance(ei.value.__cause__, OSError)
