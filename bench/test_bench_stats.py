"""The cost of watching a job (fastpipe.observe), fastpipe beside itself in
the same run:

* ``stats W_pipe_batched``: the peer kit's W_pipe_batched job
  (../shared/peerbench/common.py; source -> y = 2x + 1 as native ops on 2
  runtime instances -> queue -> iterate -> the kit's consumer), with no
  poller, then with a thread calling ``it.stats()`` every 10 ms.  The
  second cell's extra_info holds the ratio of the medians (target: <= 1.02,
  i.e. at most 2 % slower).
* ``demo progress``: one epoch of the demo job (``fastpipe.demo``: shuffled
  reader -> native stage -> Python stage -> the training loop), progress
  off, then on (forced into a StringIO, refreshed 4x/s).

Run: python -m pytest bench/test_bench_stats.py --benchmark-only
"""
import io
import os
import sys
import threading

import numpy as np
import pytest

from fastpipe import demo, observe, pipeline, schema, session, sources, task, workspace
from fastpipe.net_builder import ops

_KIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "peerbench")
if not os.path.exists(os.path.join(_KIT, "common.py")):
    pytest.skip("peer kit ../shared/peerbench not found", allow_module_level=True)
sys.path.insert(0, _KIT)
import common as C  # noqa: E402

ROUNDS = 9
POLL_S = 0.010
_MED = {}


def _proc(rec):
    y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                 ops.Const(np.float32(1))], broadcast=1)
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("y", schema.Scalar((np.float32, (C.FEAT,)), y)))


class _Job(object):
    def __init__(self):
        self.n = C.pipe_n("W_pipe_batched")
        ids, xs = C.make_records(self.n)
        self.ws = workspace.C.Workspace()
        with task.TaskGroup() as tg:
            src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=C.BATCH)
            self.q = pipeline.pipe(src, processor=_proc, num_runtime_threads=2)
        self.tg = tg
        self.session = session.LocalSession(self.ws)
        self.session.compile(tg)


_JOB = []


def _job():
    if not _JOB:
        _JOB.append(_Job())
    return _JOB[0]


def _epoch(job, poll):
    it = job.session.iterate(job.tg, job.q)
    stop = threading.Event()
    polls = [0]

    def poller():
        while not stop.wait(POLL_S):
            it.stats()
            polls[0] += 1
    t = threading.Thread(target=poller) if poll else None
    if t is not None:
        t.start()
    try:
        res = C.consume_batches(it)
    finally:
        stop.set()
        if t is not None:
            t.join()
    return res, polls[0]


@pytest.mark.parametrize("poll", [False, True], ids=["no poller", "stats() every 10 ms"])
def test_stats_poll_cost(benchmark, record, poll):
    benchmark.group = "stats W_pipe_batched"
    job = _job()
    out = {}

    def run():
        res, n = _epoch(job, poll)
        out["polls"] = n
        return res
    res = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ok, msg = C.pipe_check(job.n)(res)
    assert ok, msg
    med = benchmark.stats.stats.median
    cell = "stats() every 10 ms" if poll else "no poller"
    _MED[cell] = med
    extra = dict(records=job.n, rate_per_s=job.n / med, polls_last_round=out["polls"])
    if poll and "no poller" in _MED:
        extra["ratio_to_no_poller"] = med / _MED["no poller"]
        extra["target_le_1.02_met"] = med / _MED["no poller"] <= 1.02
    record(cell, **extra)


_DEMO = []


def _demo_job():
    if not _DEMO:
        n = 500_000
        ids, xs = demo.make_data(n)
        tg, q = demo.build_job(ids, xs, 256, 2, seed=0)
        ws = workspace.C.Workspace()
        sess = session.LocalSession(ws, stall_timeout=30.0)
        sess.compile(tg)
        _DEMO.append((n, int(ids.sum()), tg, q, sess))
    return _DEMO[0]


@pytest.mark.parametrize("progress", [False, True], ids=["progress off", "progress on"])
def test_demo_progress_cost(benchmark, record, progress):
    benchmark.group = "demo progress"
    n, id_sum, tg, q, sess = _demo_job()
    lines = [0]

    def run():
        it = sess.iterate(tg, q)
        buf = io.StringIO()
        with observe.progress(it, stream=buf, enabled=progress) as p:
            res = demo.training_loop(it)
        lines[0] = p.lines_written
        return res
    seen, got_sum, _ = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert (seen, got_sum) == (n, id_sum)
    assert (lines[0] > 0) == progress
    med = benchmark.stats.stats.median
    cell = "progress on" if progress else "progress off"
    _MED[cell] = med
    extra = dict(records=n, rate_per_s=n / med)
    if progress and "progress off" in _MED:
        extra["ratio_to_progress_off"] = med / _MED["progress off"]
    record(cell, **extra)
