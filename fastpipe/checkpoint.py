"""Jobs and the epoch loop (Caffe2's ``caffe2.python.checkpoint``).

A :class:`Job` holds four TaskGroups: ``init_group`` (GLOBAL; run once),
``epoch_group`` (run once per epoch), ``download_group`` and
``exit_group`` (run once at the end), plus stop signals -- TaskOutputs
fetched after every epoch; the loop ends when any is truthy.
:class:`JobRunner` drives a session through it::

    with Job() as job:                 # entering a job enters epoch_group
        with job.init_group:
            ...
        pipe(ReaderWithLimit(reader, 100), processor=train)
        epoch_limiter(job, 3)
    JobRunner(job)(LocalSession())     # -> number of epochs run

The compiled epoch plan is the same object every epoch, so init nets of
its tasks (queue creation, cursors, task_init) re-run every epoch.

Checkpoints: given a :class:`CheckpointManager` (one node) or a
:class:`MultiNodeCheckpointManager`, the runner saves every blob of the
node's global workspace after init (epoch 0) and after every epoch, with the
``Save`` operator into ``<db_prefix>/<node>.<epoch>`` (``db_type='minidb'``,
fastpipe's own format: docs/minidb.md), and ``resume_from_epoch=k`` loads
checkpoint ``k`` instead of running the init group and goes on at epoch
``k + 1``.  Counters and dataset cursors are saved with their state, so a
resumed reader continues where epoch ``k`` left it::

    manager = CheckpointManager("/ckpt", "trainer", "minidb")
    JobRunner(job, manager)(session)                        # saves .0, .1, ...
    JobRunner(job, manager, resume_from_epoch=2)(session2)  # loads .2, runs 3, ...
"""

import logging
import os

import numpy as np

from . import context, core
from .errors import ArgumentError, GraphError, NotSupportedError
from .net_builder import ops
from .task import Node, Task, TaskGroup, TaskOutput, WorkspaceType, final_output

__all__ = ["Job", "JobRunner", "epoch_limiter", "CheckpointManager",
           "MultiNodeCheckpointManager", "UploadTaskGroupBuilder", "db_name",
           "get_ckpt_filename"]

logger = logging.getLogger(__name__)


class Job(context.Managed):
    """Init, epoch, download and exit TaskGroups plus stop signals.

    Entering a Job makes it current (``Job.current()``) and enters its
    ``epoch_group``, so tasks created inside go to the epoch group.
    """

    def __init__(self, init_group=None, epoch_group=None, download_group=None,
                 exit_group=None, stop_signals=None, nodes_to_checkpoint=None):
        self.init_group = init_group or TaskGroup(workspace_type=WorkspaceType.GLOBAL)
        self.epoch_group = epoch_group or TaskGroup()
        self.download_group = download_group or TaskGroup()
        self.exit_group = exit_group or TaskGroup()
        self.stop_signals = stop_signals if stop_signals is not None else []
        self._nodes_to_checkpoint = nodes_to_checkpoint

    # later Caffe2 spelling
    @property
    def stop_conditions(self):
        return self.stop_signals

    def nodes_to_checkpoint(self):
        if self._nodes_to_checkpoint:
            return self._nodes_to_checkpoint
        init = self.init_group
        return init.used_nodes() if isinstance(init, TaskGroup) else []

    def compile(self, session_class):
        """A copy of this job whose groups are compiled for ``session_class``."""
        return Job(
            init_group=session_class.compile(self.init_group),
            epoch_group=session_class.compile(self.epoch_group),
            download_group=session_class.compile(self.download_group),
            exit_group=session_class.compile(self.exit_group),
            stop_signals=self.stop_signals,
            nodes_to_checkpoint=self.nodes_to_checkpoint())

    def __enter__(self):
        super(Job, self).__enter__()
        self.epoch_group.__enter__()
        return self

    def __exit__(self, *args):
        self.epoch_group.__exit__(*args)
        super(Job, self).__exit__(*args)

    def add_stop_signal(self, output):
        """Stop the epoch loop once ``output`` (a TaskOutput, or a blob that
        becomes the output of a step-less epoch task) is truthy."""
        if isinstance(output, core.BlobReference):
            t = Task(outputs=[output], group=self.epoch_group)
            output = t.outputs()[0]
        if not isinstance(output, TaskOutput):
            raise GraphError("A stop signal must be a BlobReference or a "
                             "TaskOutput, got %r" % type(output).__name__)
        self.stop_signals.append(output)

    add_stop_condition = add_stop_signal

    def __repr__(self):
        return "Job(init_group=%r, epoch_group=%r, download_group=%r, " \
               "exit_group=%r, stop_signals=%r)" % (
                   self.init_group, self.epoch_group, self.download_group,
                   self.exit_group, self.stop_signals)


def get_ckpt_filename(node_name, epoch):
    """The checkpoint file name of ``node_name`` at ``epoch``: ``node.epoch``."""
    return str(node_name) + "." + str(epoch)


def db_name(epoch, node_name, db_prefix, path_prefix=None):
    """The full db name (path) of a checkpoint: ``path_prefix + node.epoch``
    when ``path_prefix`` is given, else ``os.path.join(db_prefix, node.epoch)``."""
    if path_prefix:
        return path_prefix + get_ckpt_filename(node_name, epoch)
    return os.path.join(db_prefix, get_ckpt_filename(node_name, epoch))


def _names(values):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class CheckpointManager(object):
    """Saves and loads the global workspace of one node at epoch boundaries.

    Handed to :class:`JobRunner`, which calls ``init`` once (after the init
    group, or instead of it when resuming), ``save(epoch)`` after init and
    after every epoch and ``load(epoch)`` to resume.  Each returns a Task to
    run on the session; the blobs checkpointed are the ones that exist in
    the node's workspace once the init group ran (``GetAllBlobNames`` with
    ``include_shared=False``), or, when resuming, the list stored in the
    checkpoint itself.

    Args:
        db_prefix: directory of the checkpoint files (used as an absolute
            path: ``db_name(epoch, node_name, db_prefix)``).
        node_name: the node's name (file names are ``<node_name>.<epoch>``).
        db_type: the db type; fastpipe provides ``'minidb'``.
        metadata_handler: optional object with ``set_params``, ``write``,
            ``last_epoch``, ``cp_accessible`` and ``report`` (Caffe2's
            interface) for checkpoint bookkeeping.

    Threading: build and run from one thread (the one driving the session).
    """

    def __init__(self, db_prefix, node_name, db_type, metadata_handler=None):
        self._db_prefix = db_prefix
        self._node_name = node_name
        self._db_type = db_type
        self._metadata_handler = metadata_handler
        # the blob list is saved too, first of all (the net's external input)
        self._net = core.Net("!!checkpoint_mngr")
        self._blob_names = self._net.AddExternalInput("blob_names")
        self._names_output = None
        self._path_prefix = None
        self._path_type = None
        self._current_db_name = None
        self._current_checkpoint_duration = None

    def init(self, nodes=None, retrieve_from_epoch=None, path_prefix=None, path_type=None):
        """A Task that determines the blobs to checkpoint: every blob of the
        node's workspace now, or (``retrieve_from_epoch``) the list saved in
        that checkpoint."""
        if nodes is not None and len(nodes) != 1:
            raise GraphError("CheckpointManager only supports single node (got %d nodes: "
                             "use MultiNodeCheckpointManager)" % len(nodes))
        with Task(outputs=[self._blob_names]) as task:
            if retrieve_from_epoch is None:
                ops.GetAllBlobNames([], self._blob_names, include_shared=False)
            else:
                full_db_name = db_name(retrieve_from_epoch, self._node_name,
                                       self._db_prefix, path_prefix)
                logger.info("Initializing checkpoints from = %s", full_db_name)
                ops.Load([], self._blob_names, db=full_db_name,
                         db_type=path_type or self._db_type, absolute_path=True,
                         keep_device=True)
        self._names_output = task.outputs()[0]
        return task

    def blob_list(self):
        """The names of the checkpointed blobs (after ``init`` ran)."""
        if self._names_output is None:
            raise GraphError("CheckpointManager.blob_list(): run the task of init() first")
        return _names(np.asarray(self._names_output.fetch()).reshape(-1).tolist())

    def _timed_task(self, cp_op_name, add_op):
        """A Task running ``add_op``'s ops, timed (``_current_checkpoint_duration``)."""
        with Task(name=cp_op_name) as task:
            with ops.task_init():
                timer = ops.TimerBegin([], counter_name=str(self._node_name))
            add_op()
            with ops.task_exit():
                time_span_blob = ops.TimerGetAndEnd(timer)
            self._current_checkpoint_duration = final_output(time_span_blob)
        return task

    def collect_checkpoint_stats(self, stats):
        """Add this node's last checkpoint duration (ns) to ``stats`` (a dict
        db name -> duration)."""
        if self._current_db_name and self._current_checkpoint_duration:
            stats[self._current_db_name] = np.asarray(
                self._current_checkpoint_duration.fetch()).reshape(-1)[0]
        else:
            logger.info("Failed to collect checkpoint stats: %s", self._current_db_name)

    def load(self, epoch, path_prefix=None, path_type=None):
        """A Task that loads every checkpointed blob from checkpoint ``epoch``."""
        self._current_db_name = db_name(epoch, self._node_name, self._db_prefix, path_prefix)
        db_type = path_type or self._db_type
        logger.info("Loading checkpoints from = %s", self._current_db_name)

        def add_op():
            ops.Load([], self.blob_list(), db=self._current_db_name, db_type=db_type,
                     absolute_path=True, keep_device=True)
        return self._timed_task("checkpoint_load", add_op)

    def load_blobs_from_checkpoint(self, blob_names, epoch):
        """A Task that loads only ``blob_names`` (those present) from
        checkpoint ``epoch``."""
        self._current_db_name = db_name(epoch, self._node_name, self._db_prefix)
        logger.info("Load from %s", self._current_db_name)

        def add_op():
            ops.Load([], list(blob_names), db=self._current_db_name, db_type=self._db_type,
                     absolute_path=True, allow_incomplete=True)
        return self._timed_task("checkpoint_partial_load", add_op)

    def check_db_exists(self, epoch):
        """A Task whose output is whether checkpoint ``epoch`` exists."""
        name = db_name(epoch, self._node_name, self._db_prefix)
        logger.info("Check existence of %s", name)
        with Task() as task:
            existence = ops.Const(False)
            ops.DBExists([], [existence], db_name=name, db_type=self._db_type,
                         absolute_path=True)
            task.add_output(existence)
        return task

    def report_checkpoint_stats(self, action_name):
        all_stats = {}
        self.collect_checkpoint_stats(all_stats)
        if self._metadata_handler:
            self._metadata_handler.report(action_name, all_stats)

    def save(self, epoch):
        """A Task that saves every checkpointed blob as checkpoint ``epoch``."""
        self._current_db_name = db_name(epoch, self._node_name, self._db_prefix)
        logger.info("Saving to %s", self._current_db_name)

        def add_op():
            ops.Save(self.blob_list(), [], db=self._current_db_name, db_type=self._db_type,
                     absolute_path=True)
        return self._timed_task("checkpoint_save", add_op)

    def write_checkpoint_metadata(self, epoch):
        if self._metadata_handler is not None:
            self._metadata_handler.write(epoch=epoch)

    def get_resume_from_epoch_id(self, user_epoch=None):
        """The epoch to resume from: ``user_epoch``, or the metadata
        handler's ``last_epoch(user_epoch=...)``."""
        last_epoch = user_epoch
        if self._metadata_handler is not None:
            last_epoch = self._metadata_handler.last_epoch(user_epoch=user_epoch)
        return last_epoch

    def set_params(self, nodes, path_prefix=None, path_type=None):
        if path_prefix:
            self._path_prefix = path_prefix
        if path_type:
            self._path_type = path_type
        if self._metadata_handler:
            self._metadata_handler.set_params(
                db_prefix=self._db_prefix, db_type=self._db_type,
                node_names=[str(self._node_name)], path_prefix=self._path_prefix,
                path_type=self._path_type)

    def cp_accessible(self, epoch=None):
        """True when checkpoint data is accessible (the metadata handler's
        answer; True without one)."""
        if self._metadata_handler is not None:
            return self._metadata_handler.cp_accessible(epoch)
        return True


class MultiNodeCheckpointManager(object):
    """Checkpoints every node of a job: one :class:`CheckpointManager` per
    node (files ``<db_prefix>/<node>.<epoch>``); ``init``, ``load`` and
    ``save`` return a GLOBAL TaskGroup with one task per node.

    Args:
        db_prefix: directory of the checkpoint files.
        db_type: the db type; fastpipe provides ``'minidb'``.
        metadata_handler: optional checkpoint bookkeeping (see
            :class:`CheckpointManager`).
    """

    def __init__(self, db_prefix, db_type, metadata_handler=None):
        self._node_managers = None
        self._db_prefix = db_prefix
        self._db_type = db_type
        self._metadata_handler = metadata_handler
        self._path_prefix = None
        self._path_type = None
        self._node_names = None

    def _task_group(self, func, *args, **kw):
        if self._node_managers is None:
            raise GraphError("MultiNodeCheckpointManager: init must be called first.")
        with TaskGroup(WorkspaceType.GLOBAL) as task_group:
            for node, manager in self._node_managers:
                with Node(node):
                    func(manager, *args, **kw)
        return task_group

    def _make_managers(self, nodes):
        self._node_managers = []
        for node in nodes:
            with Node(node):
                manager = CheckpointManager(db_prefix=self._db_prefix, node_name=str(node),
                                            db_type=self._db_type)
                self._node_managers.append((node, manager))

    def _check_nodes(self, nodes):
        have = [node for node, _ in self._node_managers]
        if have != list(nodes):
            raise GraphError("MultiNodeCheckpointManager was initialised for nodes %r, "
                             "got %r" % (have, list(nodes)))

    def init(self, nodes, retrieve_from_epoch=None, path_prefix=None, path_type=None):
        if self._node_managers is not None:
            self._check_nodes(nodes)
            return TaskGroup(WorkspaceType.GLOBAL)
        self._make_managers(nodes)
        # (Caffe2 passes the last node here; each manager serves one node)
        return self._task_group(CheckpointManager.init, nodes=None,
                                retrieve_from_epoch=retrieve_from_epoch,
                                path_prefix=path_prefix, path_type=path_type)

    def load(self, epoch, path_prefix=None, path_type=None):
        return self._task_group(CheckpointManager.load, epoch, path_prefix=path_prefix,
                                path_type=path_type)

    def load_blobs_locally(self, nodes, blob_names, epoch, session):
        """Load ``blob_names`` from every node's checkpoint ``epoch`` into the
        session's workspace.  False (nothing more loaded) as soon as one
        node's checkpoint does not exist."""
        if self._node_managers is not None:
            self._check_nodes(nodes)
        else:
            self._make_managers(nodes)
        for _, manager in self._node_managers:
            existence_task = manager.check_db_exists(epoch)
            session.run(existence_task)
            if not _truthy(existence_task.outputs()[0].fetch()):
                logger.info("DB %s does not exist!",
                            db_name(epoch, manager._node_name, manager._db_prefix))
                return False
            session.run(manager.load_blobs_from_checkpoint(blob_names, epoch))
        logger.info("Successfully loaded from checkpoints.")
        return True

    def get_ckpt_db_name(self, node_name, epoch):
        """The db name of ``node_name``'s checkpoint ``epoch`` (None for a
        node this manager does not know)."""
        for node, manager in self._node_managers or ():
            if str(node) == node_name:
                return db_name(epoch, manager._node_name, manager._db_prefix)
        return None

    def report_checkpoint_stats(self, action_name):
        all_stats = {}
        for _, manager in self._node_managers or ():
            manager.collect_checkpoint_stats(all_stats)
        logger.debug("checkpoint stats: %s", all_stats)
        if self._metadata_handler:
            self._metadata_handler.report(action_name, all_stats)

    def save(self, epoch):
        return self._task_group(CheckpointManager.save, epoch)

    def write_checkpoint_metadata(self, epoch):
        if self._metadata_handler is not None:
            self._metadata_handler.write(epoch=epoch)

    def get_resume_from_epoch_id(self, user_epoch=None):
        last_epoch = user_epoch
        if self._metadata_handler is not None:
            last_epoch = self._metadata_handler.last_epoch(user_epoch=user_epoch)
        return last_epoch

    def set_params(self, nodes, path_prefix=None, path_type=None):
        self._node_names = [str(node) for node in nodes]
        if path_prefix:
            self._path_prefix = path_prefix
        if path_type:
            self._path_type = path_type
        if self._metadata_handler:
            self._metadata_handler.set_params(
                db_prefix=self._db_prefix, db_type=self._db_type, node_names=self._node_names,
                path_prefix=self._path_prefix, path_type=self._path_type)

    def cp_accessible(self, epoch=None):
        if self._metadata_handler is not None:
            return self._metadata_handler.cp_accessible(epoch)
        return True


class UploadTaskGroupBuilder(object):
    """Builds the TaskGroup that uploads the checkpoints once training ends
    (subclass it: ``build(epoch, checkpoint_manager)``)."""

    def build(self, epoch, checkpoint_manager):
        raise NotSupportedError("UploadTaskGroupBuilder.build must be implemented by a subclass")


def _truthy(value):
    return bool(np.asarray(value).any())


class JobRunner(object):
    """Runs a Job on a session: init once, epochs until a stop signal is
    truthy, then upload, download and exit.  Calling it (or ``train``)
    returns the number of the last epoch run.

    With a ``checkpoint_manager`` a checkpoint is saved after init (epoch 0)
    and after every epoch; with ``resume_from_epoch`` as well, that
    checkpoint is loaded instead of running the init group and the epochs go
    on from the next one.  A failed save is logged and the job goes on (as
    in Caffe2).

    Args:
        job: the Job.
        checkpoint_manager: a CheckpointManager or MultiNodeCheckpointManager.
        resume_from_epoch: the epoch to resume after (its checkpoint is loaded
            when there is a manager; without one the init group is skipped).
        upload_task_group_builder: an UploadTaskGroupBuilder; its TaskGroup
            runs after the last epoch.
    """

    def __init__(self, job, checkpoint_manager=None, resume_from_epoch=None,
                 upload_task_group_builder=None):
        self.job = job
        self.checkpoint_manager = checkpoint_manager
        self.resume_from_epoch = resume_from_epoch
        self.upload_task_group_builder = upload_task_group_builder

    def train(self, session):
        job = self.job
        manager = self.checkpoint_manager
        if manager:
            manager.set_params(nodes=job.nodes_to_checkpoint())
            self.resume_from_epoch = manager.get_resume_from_epoch_id(self.resume_from_epoch)
            if self.resume_from_epoch is not None:
                logger.info("Resuming from epoch %s", self.resume_from_epoch)
        from_scratch = self.resume_from_epoch is None
        if from_scratch:
            session.run(job.init_group)
        if manager:
            logger.info("Preparing checkpoints ...")
            session.run(manager.init(job.nodes_to_checkpoint(),
                                     retrieve_from_epoch=self.resume_from_epoch))
            if from_scratch:
                self.save_checkpoints(0, session)
            else:
                logger.info("Loading checkpoints for epoch %s ...", self.resume_from_epoch)
                session.run(manager.load(self.resume_from_epoch))
                manager.report_checkpoint_stats("checkpoint_load")
                logger.info("Checkpoint loaded")
        logger.info("Finished initializing")
        epoch = 1 if from_scratch else self.resume_from_epoch + 1
        while True:
            logger.info("Starting epoch %d", epoch)
            session.run(job.epoch_group)
            logger.info("Finished epoch %d", epoch)
            stop_signals = [o.fetch() for o in job.stop_signals]
            if manager:
                self.save_checkpoints(epoch, session)
            if any(_truthy(s) for s in stop_signals):
                logger.info("Stopping")
                break
            epoch += 1
        logger.info("Finished training")
        if self.upload_task_group_builder is not None:
            session.run(self.upload_task_group_builder.build(epoch, manager))
            logger.info("Finished uploading the checkpoints")
        session.run(job.download_group)
        session.run(job.exit_group)
        return epoch

    __call__ = train

    def load_blobs_from_checkpoints(self, blob_names, epoch, session):
        """Load only ``blob_names`` from every node's checkpoint ``epoch``
        into the session's workspace (e.g. a model for evaluation).  True
        when every node's checkpoint existed."""
        if not self.checkpoint_manager:
            raise ArgumentError("JobRunner.load_blobs_from_checkpoints: the checkpoint "
                                "manager is None")
        logger.info("Loading checkpoint for epoch %s ...", epoch)
        result = self.checkpoint_manager.load_blobs_locally(
            self.job.nodes_to_checkpoint(), blob_names, epoch, session)
        self.checkpoint_manager.report_checkpoint_stats("checkpoint_partial_load")
        return result

    def save_checkpoints(self, epoch, session):
        """Save checkpoint ``epoch``; a failure is logged, not raised (the job
        goes on, as in Caffe2)."""
        if not self.checkpoint_manager:
            raise ArgumentError("JobRunner.save_checkpoints: the checkpoint manager is None")
        try:
            if self.checkpoint_manager.cp_accessible(epoch=None):
                logger.info("Saving checkpoints for epoch %d", epoch)
                session.run(self.checkpoint_manager.save(epoch))
                self.checkpoint_manager.write_checkpoint_metadata(epoch)
                logger.info("Checkpoints saved")
                self.checkpoint_manager.report_checkpoint_stats("checkpoint_save")
            else:
                logger.warning("Checkpoint files cannot be accessed!")
        except Exception as ex:
            logger.warning("Unable to write checkpoint for epoch %d. Error=%s", epoch, ex)


def epoch_limiter(job, num_epochs):
    """Stop ``job`` after ``num_epochs`` epochs: a counter created in the
    init group, counted down by a task of the epoch group whose output is
    a stop signal."""
    if int(num_epochs) < 1:
        raise GraphError("epoch_limiter: num_epochs=%r must be >= 1" % (num_epochs,))
    with job.init_group:
        init_net = core.Net("epoch_counter_init")
        counter = init_net.CreateCounter([], init_count=int(num_epochs) - 1)
        Task(step=init_net)
    with job.epoch_group:
        epoch_net = core.Net("epoch_countdown")
        finished = epoch_net.CountDown(counter)
        output = Task(step=epoch_net, outputs=finished).outputs()[0]
    job.add_stop_signal(output)
