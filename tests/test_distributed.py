"""RaySession: a job's Nodes on a local Ray cluster (one cluster per module).

The same jobs run under LocalSession and RaySession and must agree; a
cross-node queue delivers every record exactly once; a failure on either
side of a queue (op error, Python exception, a killed node actor) raises on
the driver within the bound and leaves no actor; backpressure is checked by
counting batches in flight, never by timing.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fastpipe import checkpoint, core, dataset, pipeline, schema, session, sources, task  # noqa: E402
from fastpipe import workspace  # noqa: E402
from fastpipe.errors import CancelledError, FastpipeError, NotSupportedError, RunError  # noqa: E402
from fastpipe.net_builder import ops  # noqa: E402

from fastpipe.distributed import (NodeFailedError, NodeLostError,  # noqa: E402
                                  RayRunHandle, RaySession)

# the jobs' Python functions live in this module, which the node actors
# cannot import: ship them by value (as functions of a __main__ script are)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 5.0          # the sessions' node_timeout_s: the failure bound


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # the node actors import fastpipe from this tree (installed or not)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Overrides conftest's check: Ray's own driver threads (gRPC, log
    listeners) come and go, so only Python threads that are not daemons --
    the session's supervisor threads -- must be gone after each test."""
    before = set(threading.enumerate())
    yield
    extra = [t for t in threading.enumerate()
             if t not in before and t.is_alive() and not t.daemon
             and not isinstance(t, threading.Timer)]
    for t in extra:
        t.join(10)
    extra = [t for t in extra if t.is_alive()]
    assert not extra, "threads left running: %r" % extra


def assert_actors_gone(handles):
    """Every actor handle refers to a dead actor (the ping cannot succeed)."""
    for name, a in handles.items():
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.ping.remote(), timeout=30)    # the session confirmed the kill


# ---- jobs ---------------------------------------------------------------------------


def _times_two(x):
    return x * 2


def build_job(n=600, batch=7, num_epochs=3):
    """reader node (array reader -> 2x+1 on 2 instances) -> queue -> trainer
    node (a Python stage on 2 instances -> a Dataset); a Job with 3 epochs
    whose exit group outputs the dataset and whose epoch group outputs a
    per-epoch sum."""
    ids = np.arange(n, dtype=np.int64)
    xs = (np.arange(n, dtype=np.float32) % 97)
    out_schema = schema.Struct(("id", schema.Scalar(np.int64)), ("x", schema.Scalar(np.float32)))
    dst = dataset.Dataset(out_schema, name="dst")
    job = checkpoint.Job()
    with job.init_group:
        with task.Node("trainer"):
            init = core.Net("dst_init")
            with core.NameScope("dst"):
                dst.init_empty(init)
            task.Task(step=init)
    with job:
        with task.Node("reader"):
            src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch,
                                      shuffle=True, seed=3)

            def affine(rec):
                y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                             ops.Const(np.float32(1))], broadcast=1)
                return schema.as_record({"id": rec.id(), "x": y})
            q = pipeline.pipe(src, processor=affine, num_runtime_threads=2, capacity=4)
        with task.Node("trainer"):
            def stage(i, x):
                return i, _times_two(x)
            q2 = pipeline.pipe(q, processor=pipeline.PythonProcessor(stage),
                               num_runtime_threads=2, capacity=4)
            pipeline.pipe(q2, dst.writer())
        checkpoint.epoch_limiter(job, num_epochs)
    with job.exit_group:
        with task.Node("trainer"):
            outs = task.Task(outputs=list(dst.get_blobs())).outputs()
    return job, outs


def run_job(sess, job, outs):
    epochs = checkpoint.JobRunner(job)(sess)
    values = [o.fetch() for o in outs]
    return epochs, values


def rows(values):
    """The dataset's records (its id and x columns) as a sorted list of (id, x)."""
    ids, xs = (np.asarray(v) for v in values)
    return sorted(zip(ids.tolist(), xs.tolist()))


# ---- tests --------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_same_job_same_records_and_outputs_as_local_session():
    job, outs = build_job()
    local_epochs, local_values = run_job(session.LocalSession(workspace.C.Workspace()), job, outs)
    job, outs = build_job()
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        ray_epochs, ray_values = run_job(s, job, outs)
        actors = s.actors()
        # the epoch counter's tasks run on the default node, "local": 3 nodes
        assert sorted(actors) == ["local", "reader", "trainer"]
    assert local_epochs == ray_epochs == 3
    assert len(local_values) == len(ray_values)
    local_rows, ray_rows = rows(local_values), rows(ray_values)
    assert len(ray_rows) == 3 * 600
    assert ray_rows == local_rows
    # every id arrived once per epoch, transformed on both nodes
    assert sorted(set(ray_rows)) == sorted((i, float((i % 97) * 2 + 1) * 2) for i in range(600))
    assert_actors_gone(actors)


@pytest.mark.timeout(120)
def test_cross_node_queue_2_producers_3_consumers_exactly_once():
    n = 3000
    with task.TaskGroup() as tg:
        with task.Node("producer"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(n, dtype=np.int64)},
                                                  batch_size=1),
                              num_runtime_threads=2, capacity=3)
        with task.Node("consumer"):
            out = pipeline.pipe(q, processor=pipeline.PythonProcessor(lambda i: i),
                                num_runtime_threads=3, capacity=3)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=5, max_in_flight=2) as s:
        got = [rec[0] for rec in s.iterate(tg, out)]
        stats = s.last_stats
    got = np.concatenate(got)
    assert len(got) == n
    assert np.array_equal(np.sort(got), np.arange(n))
    qname = str(q.queue())
    assert stats["producer"]["send"][qname]["records"] == n
    assert stats["consumer"]["recv"][qname]["records"] == n


@pytest.mark.timeout(120)
def test_backpressure_bounds_batches_in_flight_when_consumer_is_slow():
    k, b = 2, 4
    n = 300

    def slow(i):
        time.sleep(0.002)   # makes the consumer slow; nothing waits on it
        return i
    with task.TaskGroup() as tg:
        with task.Node("producer"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(n, dtype=np.int64)},
                                                  batch_size=1), capacity=2)
        with task.Node("consumer"):
            pipeline.pipe(q, processor=pipeline.PythonProcessor(slow), capacity=n + 1)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=b, max_in_flight=k) as s:
        s.run(tg)
        stats = s.last_stats
    send = stats["producer"]["send"][str(q.queue())]
    recv = stats["consumer"]["recv"][str(q.queue())]
    assert send["records"] == recv["records"] == n
    # the producer outran the consumer: its outbox filled up to K ...
    assert send["max_outbox"] == k
    # ... and no more: put - acknowledged never exceeded outbox + pulls + the one being fed
    assert send["max_in_flight"] <= 2 * k + 1
    assert recv["max_outstanding"] <= k


def _two_node_job(fail_side, kind, n=2000):
    """reader -> queue -> trainer, failing on ``fail_side`` with ``kind``."""
    xs = np.arange(n, dtype=np.float32)

    def boom(x):
        if x[0] >= 40:
            raise ValueError("boom at %d" % x[0])
        return x

    def op_fail(rec):
        # the last batch holds 2 rows, not 7: the Add fails there
        return schema.as_record({"x": ops.Add([rec.x(), ops.Const(np.ones(7, np.float32))])})

    def ident(rec):
        return rec
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            proc = ident
            if fail_side == "reader":
                proc = op_fail if kind == "op" else pipeline.PythonProcessor(boom)
            q = pipeline.pipe(sources.ArrayReader({"x": xs}, batch_size=7), processor=proc,
                              capacity=2, name="produce")
        with task.Node("trainer"):
            proc = ident
            if fail_side == "trainer":
                proc = op_fail if kind == "op" else pipeline.PythonProcessor(boom)
            out = pipeline.pipe(q, processor=proc, num_runtime_threads=2, capacity=2,
                                name="consume")
            pipeline.pipe(out, processor=pipeline.PythonProcessor(lambda x: None))
    return tg


@pytest.mark.timeout(120)
@pytest.mark.parametrize("side", ["reader", "trainer"])
@pytest.mark.parametrize("kind", ["op", "python"])
def test_failure_on_either_side_raises_naming_node_task_and_cause(side, kind):
    tg = _two_node_job(side, kind)
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        t0 = time.monotonic()
        with pytest.raises(NodeFailedError) as ei:
            s.run(tg)
        elapsed = time.monotonic() - t0
        actors_left = s.actors()
    err = ei.value
    assert isinstance(err, RunError) and isinstance(err, FastpipeError)
    assert err.node == side
    assert err.task == "%s/%s" % (side, "produce" if side == "reader" else "consume")
    assert "node %r" % side in str(err) and err.task in str(err)
    if kind == "python":
        assert "ValueError: boom at" in str(err)
        assert isinstance(err.__cause__, ValueError)
    else:
        assert "Add" in str(err)
    assert elapsed < 2 * TIMEOUT_S + 10
    assert actors_left == {}     # a failed job leaves no actor


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", ["reader", "trainer"])
def test_killed_node_actor_mid_run_raises_node_lost(victim):
    n = 200000
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(n, dtype=np.int64)},
                                                  batch_size=1), capacity=2)
        with task.Node("trainer"):
            out = pipeline.pipe(q, processor=pipeline.PythonProcessor(lambda i: i), capacity=2)
    with RaySession(node_timeout_s=TIMEOUT_S, max_in_flight=2, batch_size=4) as s:
        it = s.iterate(tg, out)
        first = [next(it) for _ in range(5)]     # the job is running on both nodes
        actors = s.actors()
        t0 = time.monotonic()
        ray.kill(actors[victim], no_restart=True)
        with pytest.raises(NodeLostError) as ei:
            for _ in it:
                pass
        elapsed = time.monotonic() - t0
        assert s.actors() == {}
    assert len(first) == 5
    assert ei.value.node == victim
    assert "node %r was lost" % victim in str(ei.value)
    assert elapsed < 2 * TIMEOUT_S + 10
    assert_actors_gone(actors)


@pytest.mark.timeout(120)
def test_cancel_stops_every_node_and_leaves_no_actor():
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(10 ** 6, dtype=np.int64)},
                                                  batch_size=1), capacity=2)
        with task.Node("trainer"):
            out = pipeline.pipe(q, capacity=2)
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        it = s.iterate(tg, out)
        next(it)
        actors = s.actors()
        it.close()                       # cancels the job on both nodes
        assert it.run.done()
        with pytest.raises(CancelledError):
            it.run.wait()
        assert s.actors() == {}
    assert_actors_gone(actors)


@pytest.mark.timeout(60)
def test_queue_read_on_two_nodes_is_a_clear_error():
    with task.TaskGroup() as tg:
        with task.Node("a"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(10, dtype=np.int64)},
                                                  batch_size=1))
        with task.Node("b"):
            pipeline.pipe(q)
        with task.Node("c"):
            pipeline.pipe(q)
    with pytest.raises(NotSupportedError, match=r"queue '[^']*' is written on node\(s\) "
                                                r"\['a'\] and read on node\(s\) \['b', 'c'\]"):
        RaySession.compile(tg)


def test_import_fastpipe_never_imports_ray_and_distributed_says_how_to_install():
    code = ("import sys; import fastpipe, fastpipe.session, fastpipe.pipeline; "
            "assert 'ray' not in sys.modules, 'fastpipe imported ray'; "
            "sys.modules['ray'] = None\n"
            "try:\n    import fastpipe.distributed\n"
            "except ImportError as e:\n"
            "    from fastpipe.errors import FastpipeError\n"
            "    assert isinstance(e, FastpipeError)\n"
            "    print(e)\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install fastpipe[ray]" in out.stdout


@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_cancels_the_cluster_job():
    import _thread
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(10 ** 6, dtype=np.int64)},
                                                  batch_size=1), capacity=2)
        with task.Node("trainer"):
            pipeline.pipe(q, processor=pipeline.PythonProcessor(lambda i: None))
    main = threading.main_thread().ident
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        run = s.start(tg)
        actors = s.actors()

        def interrupt_once_waiting():
            # a handshake, not a sleep: wait (bounded) until the main thread
            # is inside RayRunHandle.wait, then press Ctrl-C
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                f = sys._current_frames().get(main)
                codes = []
                while f is not None:
                    codes.append(f.f_code)
                    f = f.f_back
                if RayRunHandle.wait.__code__ in codes:
                    _thread.interrupt_main()
                    return
                os.sched_yield()
        t = threading.Thread(target=interrupt_once_waiting)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            run.wait()
        t.join(10)
        assert run.done()          # cancelled on every node and joined before the raise
        with pytest.raises(CancelledError):
            run.wait()
        assert s.actors() == {}
    assert_actors_gone(actors)


@pytest.mark.timeout(120)
def test_consumer_that_stops_early_stops_the_producer_across_nodes():
    """The trainer reads 20 records and ends; its copy of the queue closes,
    the bridge asks the reader node to close its copy, and the reader (with
    10^6 records left) stops as it would on one node: the job finishes."""
    from fastpipe import dataio
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(10 ** 6, dtype=np.int64)},
                                                  batch_size=1), capacity=2)
        with task.Node("trainer"):
            out = pipeline.pipe(dataio.ReaderWithLimit(q.reader(), num_iter=20), capacity=2)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=4, max_in_flight=2) as s:
        got = [rec[0] for rec in s.iterate(tg, out)]
        stats = s.last_stats
    assert len(got) == 20
    assert len(set(np.concatenate(got).tolist())) == 20
    sent = stats["reader"]["send"][str(q.queue())]["records"]
    assert sent < 1000          # the reader stopped long before its 10^6 records


@pytest.mark.timeout(120)
def test_iterate_yields_views_of_the_object_store():
    """Large batches reach the driver as numpy views of Ray's object store
    (read-only, not copies), with the queue's field names."""
    n, width = 16, 64 * 1024          # 256 KiB per record: batches go to the store
    xs = np.arange(n * width, dtype=np.float32).reshape(n, width)
    with task.TaskGroup() as tg:
        with task.Node("reader"):
            q = pipeline.pipe(sources.ArrayReader({"x": xs}, batch_size=1), capacity=2)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=4) as s:
        recs = list(s.iterate(tg, q))
    assert len(recs) == n
    assert np.array_equal(np.sort(np.concatenate([r.x for r in recs])[:, 0]), xs[:, 0])
    assert all(not r.x.flags.writeable for r in recs)


def test_group_compiled_for_local_session_is_a_clear_error():
    with task.TaskGroup() as tg:
        with task.Node("a"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(10, dtype=np.int64)},
                                                  batch_size=1))
        with task.Node("b"):
            pipeline.pipe(q)
    session.LocalSession.compile(tg)
    with pytest.raises(FastpipeError, match="build the group again for RaySession"):
        RaySession.compile(tg)


@pytest.mark.timeout(120)
def test_a_long_session_keeps_a_bounded_number_of_jobs_per_node():
    from fastpipe.distributed import session as dsession

    def job(k):
        with task.TaskGroup() as tg:
            with task.Node("solo"):
                pipeline.pipe(sources.ArrayReader({"id": np.arange(k + 1, dtype=np.int64)},
                                                  batch_size=1), capacity=k + 2)
        return tg
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        for k in range(dsession._JOBS_KEPT_PER_NODE + 4):
            s.run(job(k))
        actor = s.actors()["solo"]
        assert ray.get(actor.loaded_jobs.remote(), timeout=30) == dsession._JOBS_KEPT_PER_NODE
        s.run(job(0))           # still runs after the evictions


@pytest.mark.timeout(120)
def test_plain_tasks_and_plans_run_and_outputs_come_back():
    net = core.Net("fill")
    blob = net.ConstantFill([], "filled", shape=[3], value=7.0)
    t = task.Task(step=net, outputs=blob)
    plan_net = core.Net("plan_fill")
    plan_net.ConstantFill([], "plan_filled", shape=[2], value=1.0)
    plan = core.Plan("p")
    plan.AddStep(core.execution_step("s", plan_net))
    with RaySession(node_timeout_s=TIMEOUT_S) as s:
        s.run(t)
        s.run(plan)
        compiled = RaySession.compile(t)
        assert compiled.session_class is RaySession
        assert s.compile(t) is compiled          # cached on the runnable
    assert np.array_equal(t.outputs()[0].fetch(), np.full(3, 7.0, np.float32))


def _three_then_nothing():
    for i in range(3):
        yield (np.array(i, dtype=np.int64),)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:    # a source with nothing more for a long while
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_a_part_filled_batch_reaches_the_consumer_while_the_producer_waits():
    """batch_size=64 and a producer that writes 3 records and then has
    nothing for a minute: a pull takes the open batch after LINGER_S, so the
    3 records arrive (before, they waited for 61 more or the end of stream:
    iterate timed out)."""
    with task.TaskGroup() as tg:
        with task.Node("producer"):
            q = pipeline.pipe(sources.IterableReader(_three_then_nothing, fields=["id"]),
                              capacity=4)
        with task.Node("consumer"):
            out = pipeline.pipe(q, processor=pipeline.PythonProcessor(lambda i: i), capacity=4)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=64) as s:
        it = s.iterate(tg, out, timeout=20)
        got = sorted(int(next(it)[0]) for _ in range(3))
        it.close()
    assert got == [0, 1, 2]


@pytest.mark.timeout(120)
def test_live_stats_and_diagnose_of_every_node_while_the_job_runs():
    """stats() asks every node actor for its run's native counters (the
    fastpipe.observe stats of LocalSession) while the job runs; the job is
    held mid-run by the driver not reading (the iterator's first records)."""
    import json
    n = 5000
    with task.TaskGroup() as tg:
        with task.Node("producer"):
            q = pipeline.pipe(sources.ArrayReader({"id": np.arange(n, dtype=np.int64)},
                                                  batch_size=None, name="ids"), capacity=4)
        with task.Node("consumer"):
            out = pipeline.pipe(q, processor=pipeline.PythonProcessor(_times_two),
                                num_runtime_threads=2, capacity=4)
    with RaySession(node_timeout_s=TIMEOUT_S, batch_size=8, max_in_flight=2) as s:
        it = s.iterate(tg, out, timeout=30)
        got = [int(next(it)[0]) for _ in range(10)]
        st = it.stats()
        json.dumps(st)
        prod, cons = st["nodes"]["producer"], st["nodes"]["consumer"]
        assert prod is not None and cons is not None     # both still running
        assert any(x["records_out"] > 0 for x in prod["stages"])
        assert any(x["name"] == "_times_two" for x in cons["stages"]), cons["stages"]
        assert prod["bridges"]["send"][str(q.queue())]["records"] >= 10
        verdicts = it.diagnose()
        assert set(verdicts) == {"producer", "consumer"}
        assert all(isinstance(v, str) and v for v in verdicts.values())
        it.close()
    assert len(set(got)) == 10 and all(g % 2 == 0 and 0 <= g < 2 * n for g in got)
