"""A long-lived process that builds and runs a fresh job per request stays
flat: a finished job owns nothing that outlives it (DESIGN.md, invariants).

Each job is built from scratch on a fresh ``workspace.C.Workspace()``:
Dataset -> y = 2x + 1 -> queue -> Dataset, two pipes, run by a fresh
LocalSession, its output checked.  RSS (``/proc/self/statm``), the thread
count (``/proc/self/task``) and open file descriptors (``/proc/self/fd``)
are measured after a warm-up and again after the loop.

Python-op stages are kept out of the strict loop: until the ``_pyop``
function table frees the functions of dropped jobs (fixed on another
branch), every ``Python`` op's function lives for the life of the process;
``test_python_op_function_is_freed_with_its_job`` shows it and is marked
xfail(strict) until that fix is merged -- remove the mark then.
"""

import gc
import os
import sys
import weakref

import numpy as np
import pytest

workspace = pytest.importorskip("fastpipe.workspace")

from fastpipe import core, dataset, pipeline, schema  # noqa: E402
from fastpipe.net_builder import ops  # noqa: E402
from fastpipe.session import LocalSession  # noqa: E402
from fastpipe.task import TaskGroup  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MiB = 1 << 20


def _rss():
    """Resident set size in bytes, after collecting garbage cycles."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _threads():
    return len(os.listdir("/proc/self/task"))


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _build(width, python_stage=False, batch_size=8, capacity=4):
    """A fresh job: (init net, task group, source, destination)."""
    src = dataset.Dataset(schema.Struct(("x", schema.Scalar((np.float32, (width,))))),
                          name="src")
    dst = dataset.Dataset(schema.Struct(("y", schema.Scalar((np.float32, (width,))))),
                          name="dst")
    init = core.Net("init")
    with core.NameScope("src"):
        src.init_empty(init)
    with core.NameScope("dst"):
        dst.init_empty(init)
    writer = dst.writer(init_net=init)

    def double_plus_one(rec):
        y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                     ops.Const(np.float32(1))], broadcast=1)
        if python_stage:
            def copy(inputs, outputs):
                outputs[0].feed(inputs[0].data)
            y = ops.Python(copy)([y], 1)
        return schema.Struct(("y", schema.Scalar((np.float32, (width,)), y)))

    with TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=batch_size), processor=double_plus_one,
                          capacity=capacity)
        pipeline.pipe(q, writer)
    return init, tg, src, dst


def _run_fresh_job(i, n=64, width=4, python_stage=False):
    init, tg, src, dst = _build(width, python_stage)
    ws = workspace.C.Workspace()
    ws.run(init)
    value = float(i % 7)
    ws.blobs[str(src.get_blobs()[0])].feed(np.full((n, width), value, np.float32))
    LocalSession(ws).run(tg)
    y = ws.blobs[str(dst.get_blobs()[0])].fetch()
    assert y.shape == (n, width)
    assert (y == 2 * value + 1).all()


@pytest.mark.timeout(120)
def test_thousand_fresh_jobs_stay_flat():
    """1,000 fresh jobs in one process: RSS grows < 20 MiB after a warm-up
    of 50, and threads and file descriptors do not grow at all."""
    for i in range(50):
        _run_fresh_job(i)
    # Graph objects made under gc_paused are collected in bulk once enough
    # of them accumulate (fastpipe.proto.gc_paused): measure what is kept,
    # not garbage waiting for that collection.
    gc.collect()
    rss0, threads0, fds0 = _rss(), _threads(), _fds()
    for i in range(50, 1000):
        _run_fresh_job(i)
    gc.collect()
    rss1, threads1, fds1 = _rss(), _threads(), _fds()
    assert threads1 <= threads0, (threads0, threads1)
    assert fds1 <= fds0, (fds0, fds1)
    assert rss1 - rss0 < 20 * MiB, "RSS grew %.1f MiB over 950 jobs" % ((rss1 - rss0) / MiB)


@pytest.mark.timeout(120)
def test_dropped_job_frees_its_native_data():
    """A 200 MiB source (and the 200 MiB it is copied into) is given back
    when the workspace, the session and the job are dropped: the compile
    cache and the TaskOutputs keep none of it."""
    width, n = 1024, 51200                        # 4 KiB records, 200 MiB
    base = _rss()
    init, tg, src, dst = _build(width, batch_size=64, capacity=8)
    ws = workspace.C.Workspace()
    ws.run(init)
    x = np.ones((n, width), np.float32)
    ws.blobs[str(src.get_blobs()[0])].feed(x)
    del x
    session = LocalSession(ws)
    session.run(tg)
    y = ws.blobs[str(dst.get_blobs()[0])].fetch()
    assert y.shape == (n, width) and float(y[-1, -1]) == 3.0
    del y
    loaded = _rss()
    assert loaded - base > 300 * MiB, "the job's data was not resident: %.0f MiB" % (
        (loaded - base) / MiB)
    native_ws = weakref.ref(ws._native)
    del ws, session, init, tg, src, dst
    freed = _rss()
    assert native_ws() is None
    assert freed - base < 40 * MiB, "%.0f MiB still held after the job was dropped" % (
        (freed - base) / MiB)


@pytest.mark.timeout(120)
def test_jobs_with_python_stages_stay_flat():
    """Jobs with a Python-op stage (every other one) leak no thread or file
    descriptor, and RSS stays within the same margin.  (Each Python op's
    function is still kept by the _pyop table until that fix is merged --
    see the xfail test below; these functions are tiny, so that stays
    inside the margin.)"""
    for i in range(20):
        _run_fresh_job(i, python_stage=True)
    gc.collect()
    rss0, threads0, fds0 = _rss(), _threads(), _fds()
    for i in range(20, 300):
        _run_fresh_job(i, python_stage=(i % 2 == 0))
    gc.collect()
    assert _threads() <= threads0
    assert _fds() <= fds0
    assert _rss() - rss0 < 20 * MiB


@pytest.mark.timeout(60)
def test_python_op_function_is_freed_with_its_job():
    class Payload(object):
        """Stands for whatever a user's function closes over."""

    def make_job():
        payload = Payload()

        def fn(inputs, outputs):
            outputs[0].feed(np.asarray(inputs[0].data) + (payload is not None))
        net = core.Net("pyop_job")
        x = net.ConstantFill([], "pyop_x", shape=[2], value=1.0, dtype=core.DataType.FLOAT)
        net.Python(fn)([x], ["pyop_y"])
        ws = workspace.C.Workspace()
        LocalSession(ws).run(net)
        assert ws.blobs["pyop_y"].fetch().tolist() == [2.0, 2.0]
        return weakref.ref(payload)

    ref = make_job()
    gc.collect()
    assert ref() is None
