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
Checkpoint managers (Save/Load) are not provided.
"""

import logging

import numpy as np

from . import context, core
from .errors import GraphError, NotSupportedError
from .task import Task, TaskGroup, TaskOutput, WorkspaceType

__all__ = ["Job", "JobRunner", "epoch_limiter"]

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


def _truthy(value):
    return bool(np.asarray(value).any())


class JobRunner(object):
    """Runs a Job on a session: init once, epochs until a stop signal is
    truthy, then download and exit.  Calling it returns the number of
    epochs run.

    Args:
        job: the Job.
        checkpoint_manager: not supported (must be None).
        resume_from_epoch: resume numbering after this epoch (skips the
            init group).
        upload_task_group_builder: an object with ``build(epoch, manager)``
            returning a TaskGroup run after the last epoch.
    """

    def __init__(self, job, checkpoint_manager=None, resume_from_epoch=None,
                 upload_task_group_builder=None):
        if checkpoint_manager is not None:
            raise NotSupportedError(
                "fastpipe does not provide checkpoint managers (Save/Load)")
        self.job = job
        self.checkpoint_manager = checkpoint_manager
        self.resume_from_epoch = resume_from_epoch
        self.upload_task_group_builder = upload_task_group_builder

    def __call__(self, session):
        job = self.job
        from_scratch = self.resume_from_epoch is None
        if from_scratch:
            session.run(job.init_group)
        logger.info("Finished initializing")
        epoch = 1 if from_scratch else self.resume_from_epoch + 1
        while True:
            logger.info("Starting epoch %d", epoch)
            session.run(job.epoch_group)
            logger.info("Finished epoch %d", epoch)
            stop_signals = [o.fetch() for o in job.stop_signals]
            if any(_truthy(s) for s in stop_signals):
                logger.info("Stopping")
                break
            epoch += 1
        if self.upload_task_group_builder is not None:
            session.run(self.upload_task_group_builder.build(
                epoch, self.checkpoint_manager))
        session.run(job.download_group)
        session.run(job.exit_group)
        return epoch

    train = __call__


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
