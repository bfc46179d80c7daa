"""Tests of fastpipe.checkpoint: Job structure (graph) and JobRunner with
epoch_limiter (runtime, needs fastpipe.workspace)."""

import os

import pytest

from fastpipe import core, net_printer
from fastpipe.checkpoint import Job, JobRunner, epoch_limiter
from fastpipe.errors import GraphError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.dataio import ReaderWithLimit
from fastpipe.task import Cluster, Node, Task, TaskGroup, TaskOutput, WorkspaceType

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


# --- checkpoints (Caffe2's checkpoint_test.py) ------------------------------------


def build_pipeline(node_id):
    """Caffe2's build_pipeline: a 10-record dataset read 3 records an epoch
    through a cursor made in the init group, each record added to a total
    that starts at 100."""
    from fastpipe.dataset import Dataset
    from fastpipe.schema import ConstRecord, Struct
    import numpy as np
    with Node("trainer_%d" % node_id):
        with Job.current().init_group, Task():
            data_arr = Struct(("val", np.array(list(range(10)))))
            data = ConstRecord(ops, data_arr)
            ds = Dataset(data, name="dataset:%d" % node_id)
            full_reader = ds.reader(ops)
            total = ops.Const([100])

        def inc_total(rec):
            ops.Add([total, rec.val()], [total])

        epoch_reader = ReaderWithLimit(full_reader, num_iter=3)
        pipe(epoch_reader, processor=inc_total)
        Job.current().add_stop_condition(epoch_reader.data_finished())
    return [total]


EXPECTED_TOTALS = [103, 115, 136, 145]


def _run_with(builder):
    from fastpipe.session import LocalSession
    with Cluster():
        with Job() as job:
            outputs = build_pipeline(node_id=0)
        output_fetcher = Task(step=core.Net("empty"), outputs=outputs)

        def fetch_total(session):
            session.run(output_fetcher)
            return output_fetcher.outputs()[0].fetch()

        session, checkpoint = builder()
        job.compile(LocalSession)
        num_epochs = JobRunner(job, checkpoint).train(session)
        assert num_epochs == len(EXPECTED_TOTALS)
        assert fetch_total(session) == EXPECTED_TOTALS[-1]

        for initial_epoch in range(1, num_epochs + 1):
            session, checkpoint = builder()
            JobRunner(job, checkpoint, resume_from_epoch=initial_epoch).train(session)
            assert fetch_total(session) == EXPECTED_TOTALS[-1]

        for epoch in range(1, num_epochs + 1):
            session.run(checkpoint.load(epoch))
            assert fetch_total(session) == EXPECTED_TOTALS[epoch - 1]


@pytest.mark.timeout(120)
def test_single_checkpoint(tmp_path):
    from fastpipe import workspace
    from fastpipe.checkpoint import CheckpointManager
    from fastpipe.session import LocalSession

    def builder():
        ws = workspace.C.Workspace()
        return LocalSession(ws), CheckpointManager(str(tmp_path), "temp_node", "minidb")
    _run_with(builder)
    # checkpoints 0 (after init) to 4, and 5 from the run resumed after epoch 4
    # (it runs epoch 5, which reads nothing and stops); no temporary files left
    assert sorted(os.listdir(tmp_path)) == ["temp_node.%d" % e for e in range(6)]


@pytest.mark.timeout(120)
def test_multi_node_checkpoint(tmp_path):
    from fastpipe import workspace
    from fastpipe.checkpoint import MultiNodeCheckpointManager
    from fastpipe.session import LocalSession

    def builder():
        ws = workspace.C.Workspace()
        return LocalSession(ws), MultiNodeCheckpointManager(str(tmp_path), "minidb")
    _run_with(builder)
    assert sorted(os.listdir(tmp_path)) == ["trainer_0.%d" % e for e in range(6)]


@pytest.mark.timeout(120)
def test_ckpt_name_and_load_model_from_ckpts(tmp_path):
    from fastpipe import workspace
    from fastpipe.checkpoint import MultiNodeCheckpointManager
    from fastpipe.session import LocalSession
    import numpy as np
    num_nodes = 3
    names_dir = tmp_path / "names"
    names_dir.mkdir()
    checkpoint = MultiNodeCheckpointManager(str(names_dir), "minidb")
    with Cluster():
        with Job() as job:
            for node_id in range(num_nodes):
                build_pipeline(node_id)
        job.compile(LocalSession)
        checkpoint.init(job.nodes_to_checkpoint())
        for node_id in range(num_nodes):
            node_name = "trainer_%d" % node_id
            assert checkpoint.get_ckpt_db_name(node_name, 5) == str(names_dir) + "/" + node_name + ".5"

    ckpt_dir = str(tmp_path / "ckpt")
    os.mkdir(ckpt_dir)
    workspace.ResetWorkspace()
    for node_id in range(num_nodes):
        ws = workspace.C.Workspace()
        session = LocalSession(ws)
        checkpoint = MultiNodeCheckpointManager(ckpt_dir, "minidb")
        with Cluster():
            with Job() as job:
                build_pipeline(node_id)
            job.compile(LocalSession)
            num_epochs = JobRunner(job, checkpoint).train(session)
        assert num_epochs == len(EXPECTED_TOTALS)
        # Caffe2: "There are 17 global blobs after finishing up the job runner
        # (only blobs on init_group are checkpointed)"
        assert len(ws.blobs) == 17

    ws = workspace.C.Workspace()
    session = LocalSession(ws)
    assert len(ws.blobs) == 0
    model_blob_names = ["trainer_1/task_2/GivenTensorInt64Fill:0",
                        "trainer_2/task_2/GivenTensorInt64Fill:0"]
    checkpoint = MultiNodeCheckpointManager(ckpt_dir, "minidb")
    with Cluster():
        with Job() as job:
            for node_id in range(num_nodes):
                build_pipeline(node_id)
        job.compile(LocalSession)
        job_runner = JobRunner(job, checkpoint)
        job_runner.load_blobs_from_checkpoints(blob_names=model_blob_names, epoch=1,
                                               session=session)
        # checkpoints of epochs 1 to 4 load, epoch 5 does not exist
        for epoch in range(1, 5):
            assert job_runner.load_blobs_from_checkpoints(
                blob_names=model_blob_names, epoch=epoch, session=session)
            for blob_name in model_blob_names:
                assert ws.has_blob(blob_name)
                assert ws.fetch_blob(blob_name) == np.array([EXPECTED_TOTALS[epoch - 1]])
        assert not job_runner.load_blobs_from_checkpoints(
            blob_names=model_blob_names, epoch=5, session=session)


class _UploadToLocalFile(object):
    def __init__(self, dest_dir):
        self.dest_dir = dest_dir

    def build(self, epoch, checkpoint_manager):
        import shutil
        from fastpipe.checkpoint import db_name

        def local_copy_op(src, dest):
            def copy_op(inputs, outputs):
                shutil.copyfile(src, dest)
            return copy_op
        with TaskGroup(WorkspaceType.GLOBAL) as upload_task_group:
            for node, manager in checkpoint_manager._node_managers:
                with Node(str(node)), Task():
                    src_path = db_name(epoch, manager._node_name, manager._db_prefix)
                    dest_path = os.path.join(self.dest_dir, str(node))
                    ops.Python((local_copy_op, [src_path, dest_path], {}))([], [])
        return upload_task_group


@pytest.mark.timeout(120)
def test_upload_checkpoint(tmp_path):
    from fastpipe import workspace
    from fastpipe.checkpoint import MultiNodeCheckpointManager, UploadTaskGroupBuilder
    from fastpipe.session import LocalSession

    class UploadToLocalFile(_UploadToLocalFile, UploadTaskGroupBuilder):
        pass
    upload_dir = tmp_path / "upload"
    upload_dir.mkdir()
    num_nodes = 3
    for node_id in range(num_nodes):
        assert not (upload_dir / ("trainer_%d" % node_id)).exists()
    for node_id in range(num_nodes):
        ws = workspace.C.Workspace()
        session = LocalSession(ws)
        checkpoint = MultiNodeCheckpointManager(str(tmp_path), "minidb")
        with Cluster():
            with Job() as job:
                build_pipeline(node_id)
            job.compile(LocalSession)
            job_runner = JobRunner(job, checkpoint,
                                   upload_task_group_builder=UploadToLocalFile(str(upload_dir)))
            assert job_runner.train(session) == len(EXPECTED_TOTALS)
    for node_id in range(num_nodes):
        up = upload_dir / ("trainer_%d" % node_id)
        assert up.exists()
        assert up.read_bytes() == (tmp_path / ("trainer_%d.4" % node_id)).read_bytes()


@pytest.mark.timeout(120)
def test_ckpt_save_failure(tmp_path, caplog):
    """Saving into a directory that does not exist fails every save; the job
    still runs all its epochs (Caffe2: a failed save is logged, not raised)."""
    from fastpipe import workspace
    from fastpipe.checkpoint import MultiNodeCheckpointManager
    from fastpipe.session import LocalSession
    missing = str(tmp_path / "path_does_not_exist")
    for node_id in range(3):
        ws = workspace.C.Workspace()
        session = LocalSession(ws)
        checkpoint = MultiNodeCheckpointManager(missing, "minidb")
        with Cluster():
            with Job() as job:
                build_pipeline(node_id)
            job.compile(LocalSession)
            with caplog.at_level("WARNING", logger="fastpipe.checkpoint"):
                assert JobRunner(job, checkpoint).train(session) == len(EXPECTED_TOTALS)
    assert "Unable to write checkpoint for epoch 0" in caplog.text
    assert "cannot create db" in caplog.text
    assert not os.path.exists(missing)


@pytest.mark.timeout(120)
def test_reuse_checkpoint_manager(tmp_path):
    from fastpipe import workspace
    from fastpipe.checkpoint import MultiNodeCheckpointManager
    from fastpipe.session import LocalSession
    ws = workspace.C.Workspace()
    session = LocalSession(ws)
    checkpoint = MultiNodeCheckpointManager(str(tmp_path), "minidb")
    with Job() as job:
        outputs = build_pipeline(node_id=0)
    output_fetcher = Task(step=core.Net("empty"), outputs=outputs)
    job.compile(LocalSession)

    def fetch_total(session):
        session.run(output_fetcher)
        return output_fetcher.outputs()[0].fetch()
    num_epochs = JobRunner(job, checkpoint).train(session)
    for initial_epoch in range(1, num_epochs + 1):
        JobRunner(job, checkpoint, resume_from_epoch=initial_epoch).train(session)
        assert fetch_total(session) == EXPECTED_TOTALS[-1]


def test_db_name_and_ckpt_filename():
    from fastpipe.checkpoint import db_name, get_ckpt_filename
    assert get_ckpt_filename("trainer_3", 7) == "trainer_3.7"
    assert db_name(7, "trainer_3", "/ckpt") == "/ckpt/trainer_3.7"
    assert db_name(7, "trainer_3", "/ckpt", path_prefix="hdfs://x/y_") == "hdfs://x/y_trainer_3.7"


def test_single_manager_refuses_several_nodes_and_unbuilt_use():
    from fastpipe.checkpoint import (CheckpointManager, MultiNodeCheckpointManager,
                                     UploadTaskGroupBuilder)
    from fastpipe.errors import NotSupportedError
    with pytest.raises(GraphError, match="only supports single node"):
        CheckpointManager("/tmp", "n", "minidb").init(nodes=["a", "b"])
    with pytest.raises(GraphError, match="init"):
        CheckpointManager("/tmp", "n", "minidb").blob_list()
    with pytest.raises(GraphError, match="init must be called first"):
        MultiNodeCheckpointManager("/tmp", "minidb").save(1)
    with pytest.raises(NotSupportedError):
        UploadTaskGroupBuilder().build(1, None)


@pytest.mark.timeout(120)
def test_epoch_limiter_counter_resumes_from_its_checkpoint(tmp_path):
    """epoch_limiter's counter lives in the init group, so it is saved with
    its count: a job limited to 4 epochs resumed after epoch 2 runs epochs
    3 and 4 and stops (Caffe2 needs its counter serializer for this)."""
    from fastpipe import workspace
    from fastpipe.checkpoint import CheckpointManager
    from fastpipe.session import LocalSession
    job = _epoch_counting_job(4)
    manager = CheckpointManager(str(tmp_path), "node", "minidb")
    assert JobRunner(job, manager)(LocalSession(workspace.C.Workspace())) == 4
    ws = workspace.C.Workspace()          # a fresh workspace: nothing of the first run
    runner = JobRunner(job, CheckpointManager(str(tmp_path), "node", "minidb"),
                       resume_from_epoch=2)
    assert runner(LocalSession(ws)) == 4
    assert job.total.fetch() == 4         # 2 counted before the checkpoint, 2 after
