"""Tests of fastpipe.checkpoint: Job structure (graph) and JobRunner with
epoch_limiter (runtime, needs fastpipe.workspace)."""

import pytest

from fastpipe import core, net_printer
from fastpipe.checkpoint import Job, JobRunner, epoch_limiter
from fastpipe.errors import GraphError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.dataio import ReaderWithLimit
from fastpipe.task import Task, TaskGroup, TaskOutput, WorkspaceType

from pipeline_helpers import make_dataset, make_empty_dataset, sorted_column
from pipeline_helpers import local_session as _session


# --- graph only ---------------------------------------------------------------


def test_job_groups_and_context():
    with Job() as job:
        assert Job.current() is job
        assert TaskGroup.current() is job.epoch_group
        with job.init_group:
            assert TaskGroup.current() is job.init_group
        t = Task(name="in_epoch")
    assert Job.current(required=False) is None
    assert job.init_group.workspace_type() == WorkspaceType.GLOBAL
    assert t.group is job.epoch_group
    assert job.stop_signals == [] and job.stop_conditions is job.stop_signals


def test_add_stop_signal_from_blob_and_output():
    job = Job()
    job.add_stop_signal(core.BlobReference("stop_now"))
    (sig,) = job.stop_signals
    assert isinstance(sig, TaskOutput)
    assert job.epoch_group.num_registered_tasks() == 1
    job.add_stop_condition(TaskOutput(core.BlobReference("other")))
    assert len(job.stop_signals) == 2
    with pytest.raises(GraphError):
        job.add_stop_signal("not a blob")


def test_epoch_limiter_structure():
    job = Job()
    epoch_limiter(job, 3)
    (init_task,) = job.init_group.tasks()
    ops_ = [op for n in init_task.get_step().Nets() for op in n.Proto().op]
    creates = [op for op in ops_ if op.type == "CreateCounter"]
    assert [a.i for a in creates[0].arg if a.name == "init_count"] == [2]
    assert len(job.stop_signals) == 1
    with pytest.raises(GraphError):
        epoch_limiter(Job(), 0)


def test_checkpoint_manager_not_supported():
    with pytest.raises(NotImplementedError):
        JobRunner(Job(), checkpoint_manager=object())


# --- runtime ------------------------------------------------------------------




def _epoch_counting_job(num_epochs):
    with Job() as job:
        with job.init_group:
            init = core.Net("epochs_init")
            counter = init.CreateCounter([], ["epochs_seen"], init_count=0)
            Task(step=init)
        with Task(name="count_epoch"):
            ops.CountUp([counter])
        with job.exit_group:
            done = core.Net("epochs_done")
            total = done.RetrieveCount([counter], ["epochs_total"])
            # the exit group is PRIVATE: return the value as an output
            job.total = Task(step=done, outputs=total).outputs()[0]
        epoch_limiter(job, num_epochs)
    return job


@pytest.mark.timeout(120)
@pytest.mark.parametrize("num_epochs", [1, 3])
def test_job_runner_with_epoch_limiter(ws, num_epochs):
    job = _epoch_counting_job(num_epochs)
    epochs = JobRunner(job)(_session(ws))
    assert epochs == num_epochs
    assert job.total.fetch() == num_epochs


@pytest.mark.timeout(120)
def test_compiled_job_runs(ws):
    from fastpipe.session import LocalSession
    job = _epoch_counting_job(2)
    compiled = job.compile(LocalSession)
    assert compiled is not job
    assert JobRunner(compiled)(_session(ws)) == 2
    assert job.total.fetch() == 2


@pytest.mark.timeout(120)
def test_job_with_reader_limit_and_data_finished(ws):
    """Each epoch reads 4 records from a shared cursor made in the init
    group; the job stops when the data is exhausted."""
    src = make_dataset(ws, "job_src", {"x": list(range(10))})
    dst = make_empty_dataset(ws, "job_dst", "x")
    with Job() as job:
        with job.init_group:
            init = core.Net("job_reader_init")
            reader = src.reader(init_net=init)
            writer = dst.writer(init_net=init)
            Task(step=init)
        limited = ReaderWithLimit(reader, num_iter=4)
        pipe(limited, writer, num_runtime_threads=2)
        job.add_stop_signal(limited.data_finished())
    epochs = JobRunner(job)(_session(ws))
    assert epochs == 3
    assert sorted_column(ws, dst) == list(range(10))


@pytest.mark.timeout(120)
def test_to_string_whole_job(ws):
    job = _epoch_counting_job(2)
    text = net_printer.to_string(job)
    assert text.startswith("with Job.current().init_group:")
    assert "with Job.current().stop_signals:" in text
    assert "CountDown" in text and "RetrieveCount" in text
    assert JobRunner(job)(_session(ws)) == 2


@pytest.mark.timeout(120)
def test_epochs_reuse_one_lowered_program_and_the_finished_job_is_freed(monkeypatch):
    """JobRunner runs the epoch group's compiled job every epoch: its plan
    is lowered to a native program once, not per epoch; once the runner
    returned and the workspace and session are dropped, nothing keeps the
    workspace alive (the job's stop-signal TaskOutputs hold it weakly)."""
    import gc
    import weakref

    from fastpipe import _core, workspace
    from fastpipe.session import LocalSession, SessionGoneError

    lowered = []
    real_program = _core.Program

    class CountingProgram(object):
        @staticmethod
        def from_plan(plan_def):
            lowered.append(plan_def.name)
            return real_program.from_plan(plan_def)
    monkeypatch.setattr(_core, "Program", CountingProgram)

    job = _epoch_counting_job(4)
    ws = workspace.C.Workspace()
    assert JobRunner(job)(LocalSession(ws)) == 4
    assert job.total.fetch() == 4
    # init, epoch, download and exit groups: one lowering each
    assert lowered.count("task_group_plan") == 4
    native = weakref.ref(ws._native)
    del ws
    gc.collect()
    assert native() is None
    with pytest.raises(SessionGoneError):
        job.total.fetch()
