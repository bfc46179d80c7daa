"""Seeing inside a running job (fastpipe.observe): run.stats(), stage names,
diagnose() (bottleneck verdict and stall report), the stall watchdog and
StallError, the progress line, the per-op profile."""
import io
import json
import logging
import threading
import time

import numpy as np
import pytest

import fastpipe
from fastpipe import net_printer, pipeline, queue_util, schema, session, sources, task
from fastpipe.errors import FastpipeError, RunError, StallError
from fastpipe.net_builder import ops
from fastpipe.observe import StallReport, Verdict


def double(rec):
    """An op-building (native) stage."""
    y = ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1)
    return schema.as_record({"id": rec.id(), "x": y})


def plus_one(rec):
    y = ops.Add([rec.x(), ops.Const(np.float32(1))], broadcast=1)
    return schema.as_record({"id": rec.id(), "x": y})


def scale(ids, x):
    return ids, x * np.float32(3)


def crunch(ids, x):
    """Real work per batch: ~1 ms of numpy on this machine, vs a few us for
    the native stages."""
    a = np.arange(20000.0)
    for _ in range(12):
        a = np.sqrt(a + 1.0)
    return ids, x + np.float32(a[0] * 0)


def boom(ids, x):
    if ids[0] >= 64:
        raise ValueError("boom at %d" % ids[0])
    return ids, x


def _source(n=4096, batch=64, name="vals"):
    ids = np.arange(n, dtype=np.int64)
    xs = np.ones((n, 4), dtype=np.float32)
    return sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch, name=name)


def _three_stages(first, middle, last, n=4096, capacity=4, instances=(1, 1, 1),
                  last_capacity=None):
    """reader -> first -> middle -> last -> the queue iterate() reads."""
    with task.TaskGroup() as tg:
        q = pipeline.pipe(_source(n), processor=first, capacity=capacity,
                          num_runtime_threads=instances[0])
        q = pipeline.pipe(q, processor=middle, capacity=capacity,
                          num_runtime_threads=instances[1])
        q = pipeline.pipe(q, processor=last, capacity=last_capacity or capacity,
                          num_runtime_threads=instances[2])
    return tg, q


def _by_name(stats):
    return {s["name"]: s for s in stats["stages"]}


# ---- stats ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_stats_rise_during_the_run_and_are_exact_at_the_end(ws):
    n, batch, cap = 4096, 64, 4
    last = lambda rec: rec  # noqa: E731 (a lambda stage is the point)
    tg, q = _three_stages(pipeline.PythonProcessor(scale), double, last, n=n, capacity=cap)
    lam = "<lambda> at test_observe.py:%d" % last.__code__.co_firstlineno
    with session.LocalSession(ws) as s:
        it = s.iterate(tg, q)
        got = 0
        polls = []
        for k, (ids, x) in enumerate(it):
            got += len(ids)
            if k == 10:
                polls.append(it.stats())
            if k == 10 + 2 * cap + 2:
                # more than a queue's worth was written after the first poll
                # asked the ops to flush: the second poll must see more
                polls.append(it.stats())
        final = it.stats()
    assert got == n
    first, second = (_by_name(p) for p in polls)
    assert set(first) == {"scale", "double", lam}
    assert second[lam]["records_out"] > first[lam]["records_out"]
    assert second[lam]["records_out"] <= n
    assert not polls[0]["done"] and final["done"]
    st = _by_name(final)
    for name in ("scale", "double", lam):
        assert st[name]["records_out"] == n, name
        assert st[name]["batches_out"] == n // batch, name
        assert st[name]["instances"] == 1
        for key in ("busy", "blocked_in", "blocked_out"):
            assert 0.0 <= st[name][key] <= 1.0
        assert st[name]["rate_out"] > 0
    assert st["scale"]["records_in"] is None        # reads a source, not a queue
    assert st["double"]["records_in"] == n and st["double"]["batches_in"] == n // batch
    assert st[lam]["records_in"] == n
    queues = {qs["name"]: qs for qs in final["queues"]}
    assert len(queues) == 3
    for qs in queues.values():
        assert qs["records"] == n // batch and qs["capacity"] == cap and qs["depth"] == 0
        assert qs["closed"]
    assert queues[st["scale"]["outputs"][0]]["writers"] == ["scale"]
    assert queues[st["scale"]["outputs"][0]]["readers"] == ["double"]
    assert queues[str(q.queue())]["readers"] == ["<iterate>"]
    # plain data: a JSON round trip gives it back unchanged
    assert json.loads(json.dumps(final)) == final
    assert final["profile"] is None


@pytest.mark.timeout(60)
def test_stats_of_a_started_run_with_instances(ws):
    n = 2048
    with task.TaskGroup() as tg:
        q = pipeline.pipe(_source(n), processor=double, num_runtime_threads=3)
        sink = queue_util.Queue(capacity=1000, name="sink")
        pipeline.pipe(q, output=sink, num_runtime_threads=2)
    with session.LocalSession(ws) as s:
        run = s.start(tg)
        run.wait()
        st = run.stats()
    stages = _by_name(st)
    assert stages["double"]["instances"] == 3
    assert stages["pipe_into:sink"]["instances"] == 2
    assert stages["double"]["records_out"] == n
    assert stages["pipe_into:sink"]["records_in"] == n
    assert json.loads(json.dumps(st)) == st


def test_stage_names_in_errors_and_dot(ws):
    with task.TaskGroup() as tg:
        q = pipeline.pipe(_source(1024), processor=pipeline.PythonProcessor(boom))
        q = pipeline.pipe(q, processor=double)
    assert "boom × 1" in net_printer.to_dot(tg)
    assert "double × 1" in net_printer.to_dot(tg)
    with session.LocalSession(ws) as s:
        with pytest.raises(RunError) as ei:
            s.run(tg)
    assert ei.value.stage == "boom"
    assert isinstance(ei.value.__cause__, ValueError)


# ---- bottleneck verdict -------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("slow", ["first", "middle"])
def test_diagnose_names_the_slow_stage(ws, slow):
    cr = pipeline.PythonProcessor(crunch)
    first, middle = (cr, plus_one) if slow == "first" else (pipeline.PythonProcessor(scale), cr)
    if slow == "middle":
        # the first stage must be fast too: a native one
        first = plus_one
    tg, q = _three_stages(first, middle, double, n=64 * 300, capacity=8)
    with session.LocalSession(ws) as s:
        it = s.iterate(tg, q)
        for _ in it:
            pass
        verdict = it.diagnose()
    assert isinstance(verdict, Verdict) and verdict.kind == "bottleneck"
    assert verdict.stage == "crunch", str(verdict)
    line = str(verdict)
    assert "\n" not in line
    assert line.startswith("stage 'crunch' (1 instance) is the bottleneck: busy ")
    assert "add instances (num_runtime_threads) or a bigger batch" in line
    assert 0.0 < verdict.evidence["busy"] <= 1.0
    if slow == "first":
        assert "reads from a source" in line
    else:
        assert "its input queue full" in line and "its output queue empty" in line
    assert json.loads(json.dumps(verdict.to_dict()))["stage"] == "crunch"


# ---- stall watchdog ------------------------------------------------------------------------

def _stalled_job():
    """A pipe reading a queue that nobody writes."""
    with task.TaskGroup() as tg:
        orphan = queue_util.Queue(capacity=4, name="orphan",
                                  schema=schema.Struct(("x", schema.Scalar(np.float32))))
        out = pipeline.pipe(orphan, processor=pipeline.PythonProcessor(scale, name="waiter"),
                            num_runtime_threads=2)
    return tg, out, str(orphan.queue())


class _Seen(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self)
        self.event = threading.Event()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
        self.event.set()


@pytest.mark.timeout(30)
def test_stall_is_logged_and_diagnosed(ws):
    tg, _, qname = _stalled_job()
    seen = _Seen()
    logger = logging.getLogger("fastpipe")
    logger.addHandler(seen)
    try:
        with session.LocalSession(ws, stall_timeout=0.2) as s:
            run = s.start(tg)
            assert seen.event.wait(10), "the watchdog did not report the stall"
            report = run.diagnose()
            run.cancel()
            with pytest.raises(FastpipeError):
                run.wait()
    finally:
        logger.removeHandler(seen)
    assert isinstance(report, StallReport) and report.kind == "stall"
    assert report.stage == "waiter"
    assert len(report.blocked) == 2
    assert {b["instance"] for b in report.blocked} == {0, 1}
    for b in report.blocked:
        assert b["stage"] == "waiter" and b["waits_to"] == "read"
        assert b["queue"] == qname and (b["depth"], b["capacity"]) == (0, 4)
        assert "SafeDequeueBlobs" in b["op"]
    q = [q for q in report.queues if q["name"] == qname][0]
    assert q["readers_alive"] == 2 and q["writers_alive"] == 0 and q["writers"] == []
    text = str(report)
    assert "waits to read queue '%s' (0/4)" % qname in text
    assert "stage 'waiter'" in seen.messages[0]
    assert json.loads(json.dumps(report.to_dict()))["stage"] == "waiter"


@pytest.mark.timeout(30)
def test_on_stall_raise_cancels_with_stall_error(ws):
    tg, _, qname = _stalled_job()
    with session.LocalSession(ws, stall_timeout=0.2, on_stall="raise") as s:
        t0 = time.monotonic()
        run = s.start(tg)
        with pytest.raises(StallError) as ei:
            run.wait(timeout=10)
        took = time.monotonic() - t0
    assert took < 8, took
    assert isinstance(ei.value, FastpipeError) and isinstance(ei.value, TimeoutError)
    assert ei.value.report.stage == "waiter"
    assert ei.value.report.blocked[0]["queue"] == qname
    assert qname in str(ei.value)


@pytest.mark.timeout(30)
def test_on_stall_raise_in_next(ws):
    tg, out, _ = _stalled_job()
    with session.LocalSession(ws, stall_timeout=0.2, on_stall="raise") as s:
        it = s.iterate(tg, out)
        with pytest.raises(StallError) as ei:
            next(it)
    assert ei.value.report.stage == "waiter"


@pytest.mark.timeout(60)
def test_no_stall_reported_for_a_job_that_moves(ws):
    tg, q = _three_stages(double, plus_one, double, n=64 * 50)
    seen = _Seen()
    logger = logging.getLogger("fastpipe")
    logger.addHandler(seen)
    try:
        with session.LocalSession(ws, stall_timeout=5.0, on_stall="raise") as s:
            assert sum(len(ids) for ids, _ in s.iterate(tg, q)) == 64 * 50
    finally:
        logger.removeHandler(seen)
    assert not seen.messages


def test_stall_options_are_checked(ws):
    for bad in (0, -1, "1", True):
        with pytest.raises(FastpipeError, match="stall_timeout"):
            session.LocalSession(ws, stall_timeout=bad)
    with pytest.raises(FastpipeError, match="on_stall"):
        session.LocalSession(ws, on_stall="explode")


# ---- progress and profile ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_progress_writes_to_a_forced_stream_only(ws):
    # (nobody reads the last queue: it holds every batch)
    tg, q = _three_stages(double, pipeline.PythonProcessor(crunch), plus_one, n=64 * 100,
                          last_capacity=100)
    buf = io.StringIO()
    quiet = io.StringIO()
    with session.LocalSession(ws) as s:
        run = s.start(tg)
        with fastpipe.progress(run, stream=quiet) as p0:     # not a terminal: silent
            assert not p0.enabled
        with fastpipe.progress(run, stream=buf, force=True):
            assert run.wait(timeout=30)
    text = buf.getvalue()
    assert quiet.getvalue() == ""
    assert text.startswith("\r") and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert "crunch" in last and "double" in last and "/s" in last and "queues" in last


@pytest.mark.timeout(60)
def test_start_with_progress_stream(ws):
    buf = io.StringIO()
    with task.TaskGroup() as tg2:
        pipeline.pipe(_source(64 * 20), processor=double,
                      output=queue_util.Queue(capacity=100, name="end"))
    with session.LocalSession(ws) as s:
        run = s.start(tg2, progress=buf)
        run.wait()
    assert buf.getvalue().endswith("\n") and "double" in buf.getvalue()


@pytest.mark.timeout(60)
def test_profile_lists_op_types_and_is_off_by_default(ws):
    tg, q = _three_stages(pipeline.PythonProcessor(scale), double, plus_one, n=64 * 20)
    with session.LocalSession(ws, profile=True) as s:
        it = s.iterate(tg, q)
        assert sum(len(ids) for ids, _ in it) == 64 * 20
        prof = it.run.profile()
    types = {e["op_type"] for e in prof}
    assert {"PythonStage", "Mul", "Add", "SafeEnqueueBlobs", "SafeDequeueBlobs",
            "ReadArrayBatch"} <= types
    mul = [e for e in prof if e["op_type"] == "Mul"]
    assert len(mul) == 1 and mul[0]["calls"] == 20 and mul[0]["net"].startswith("local/double")
    assert all(e["total_s"] >= 0 and e["calls"] > 0 for e in prof)
    assert json.loads(json.dumps(prof)) == prof
    tg, q = _three_stages(double, plus_one, double, n=64 * 4)
    with session.LocalSession(ws) as s:
        it = s.iterate(tg, q)
        assert sum(len(ids) for ids, _ in it) == 64 * 4
        assert it.run.profile() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 8])
def test_polling_from_another_thread_keeps_counts_exact(ws, instances):
    n = 64 * 200
    tg, q = _three_stages(double, plus_one, double, n=n, capacity=2,
                          instances=(instances, instances, 1))
    stop = threading.Event()
    seen = []

    def poll(it):
        while not stop.is_set():
            st = it.stats()
            seen.append(sum(s["records_out"] for s in st["stages"]))
    with session.LocalSession(ws) as s:
        it = s.iterate(tg, q)
        t = threading.Thread(target=poll, args=(it,))
        t.start()
        try:
            got = sum(len(ids) for ids, _ in it)
        finally:
            stop.set()
            t.join(10)
        assert not t.is_alive()
        final = it.stats()
    assert got == n
    assert seen and seen == sorted(seen)            # counts never go back
    st = _by_name(final)
    assert st["double"]["instances"] == instances
    assert all(s["records_out"] == n for s in final["stages"])
    assert st["plus_one"]["records_in"] == n


@pytest.mark.timeout(30)
def test_a_slow_loop_over_a_full_queue_is_not_a_stall(ws):
    """The loop holds the job still (its queue full) for longer than
    stall_timeout: the watchdog sees nothing move, and lets it be."""
    tg, q = _three_stages(double, plus_one, double, n=64 * 40, capacity=2)
    seen = _Seen()
    logger = logging.getLogger("fastpipe")
    logger.addHandler(seen)
    try:
        # stall_timeout well above a loaded machine's scheduling gaps: at
        # 0.05 s, CI once saw 50 ms without a move while the loop drained
        with session.LocalSession(ws, stall_timeout=0.5, on_stall="raise") as s:
            it = s.iterate(tg, q)
            next(it)
            # wait (bounded) until the watchdog has looked at the still job
            deadline = time.monotonic() + 10
            while it.stats()["stalled_for_s"] is None:
                assert time.monotonic() < deadline, "the watchdog never saw the job still"
                threading.Event().wait(0.01)
            assert sum(len(ids) for ids, _ in it) == 64 * 39      # and it goes on
    finally:
        logger.removeHandler(seen)
    assert not [m for m in seen.messages if "stalled" in m]


@pytest.mark.timeout(60)
def test_dropping_the_run_while_the_stall_handler_logs_frees_it_without_deadlock():
    """The user drops the run while the watchdog's handler is inside a slow
    log handler: the handler then holds the Run's last reference.  Freeing
    it there joined the driver thread, which was joining the watchdog: both
    threads hung for ever (found in review).  Now it is freed on a helper
    thread and every thread ends."""
    import gc
    import os
    from fastpipe import workspace
    entered, dropped = threading.Event(), threading.Event()

    class Slow(logging.Handler):
        def emit(self, record):
            if not entered.is_set():
                entered.set()
                dropped.wait(20)

    def ntasks():
        return len(os.listdir("/proc/self/task"))
    lg = logging.getLogger("fastpipe")
    h = Slow()
    lg.addHandler(h)
    try:
        before = ntasks()
        tg, _, _ = _stalled_job()
        s = session.LocalSession(workspace.C.Workspace(), stall_timeout=0.2)
        run = s.start(tg)
        assert entered.wait(20)
        del run
        gc.collect()
        dropped.set()
        deadline = time.monotonic() + 20
        while ntasks() > before and time.monotonic() < deadline:
            time.sleep(0.01)      # polling for the threads to end (bounded), not synchronisation
        assert ntasks() <= before, "threads left: %d (before: %d)" % (ntasks(), before)
    finally:
        lg.removeHandler(h)
