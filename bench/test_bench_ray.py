"""RaySession on a local Ray cluster (2 CPUs): skipped without Ray.

* cross-node queue throughput, records/s, for single records (one id per
  record) and batches of 64 rows per record: fastpipe's bridged queue
  between two node actors, beside ``ray.util.queue.Queue`` (one actor call
  per item, a producer and a consumer task) and beside the same fastpipe
  queue inside one node (both tasks on one actor);
* a 2-node job's wall time on RaySession beside LocalSession;
* RaySession start-up: a new session's first run of a one-node job (the
  node actor's start), beside a warm session's run of the same job.

Checks after timing: the bridged runs' record counts on both sides of the
queue (the producer's outbox and the consumer's receiver saw every record),
and count + sum for the ray.util.queue baseline.

Run: python -m pytest bench/test_bench_ray.py --benchmark-only
"""
import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fastpipe import pipeline, session, sources, task, workspace  # noqa: E402
from fastpipe.distributed import RaySession  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_SINGLE = 20_000          # single records through the fastpipe paths
N_RAYQ = 2_000             # items through ray.util.queue.Queue (~1 k items/s)
ROWS = 64


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_session():
    s = RaySession(node_timeout_s=30, batch_size=64, max_in_flight=4)
    yield s
    s.close()


def drain_job(n_records, rows, one_node):
    """producer (array reader) -> queue -> consumer that drains it natively
    (a pipe into a queue of capacity > n, never read)."""
    ids = np.arange(n_records * rows, dtype=np.int64)
    with task.TaskGroup() as tg:
        with task.Node("producer"):
            q = pipeline.pipe(sources.ArrayReader({"id": ids}, batch_size=rows), capacity=64)
        with task.Node("producer" if one_node else "consumer"):
            out = pipeline.pipe(q, capacity=n_records + 1)
    return tg, out


@pytest.mark.benchmark(group="ray: cross-node queue, single records")
@pytest.mark.parametrize("path", ["fastpipe 2 nodes", "fastpipe 1 node", "ray.util.queue"])
def test_cross_node_queue_single(benchmark, record, ray_session, path):
    _queue_bench(benchmark, record, ray_session, path, 1)


@pytest.mark.benchmark(group="ray: cross-node queue, batches of 64")
@pytest.mark.parametrize("path", ["fastpipe 2 nodes", "fastpipe 1 node", "ray.util.queue"])
def test_cross_node_queue_batch64(benchmark, record, ray_session, path):
    _queue_bench(benchmark, record, ray_session, path, ROWS)


def _queue_bench(benchmark, record, ray_session, path, rows):
    if path == "ray.util.queue":
        n = N_RAYQ
        rows_total = n * rows

        def run():
            return _ray_queue_roundtrip(n, rows)
    else:
        n = N_SINGLE if rows == 1 else N_SINGLE // 4
        rows_total = n * rows
        one = path == "fastpipe 1 node"
        jobs = []

        def setup():
            jobs.append(drain_job(n, rows, one))
            return (), {}

        def run():
            tg, out = jobs[-1]
            ray_session.run(tg)
            return ray_session.last_stats
    if path == "ray.util.queue":
        result = benchmark.pedantic(run, rounds=3, iterations=1)
        assert result == (rows_total, rows_total * (rows_total - 1) // 2)
    else:
        stats = benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
        if path == "fastpipe 2 nodes":
            (send,) = stats["producer"]["send"].values()
            (recv,) = stats["consumer"]["recv"].values()
            assert send["records"] == recv["records"] == n
    med = benchmark.stats.stats.median
    record(path, records_per_s=n / med, rows_per_s=rows_total / med, records=n,
           rows_per_record=rows)


def _ray_queue_roundtrip(n, rows):
    """A producer task puts n items (an id array of `rows` each) into a
    ray.util.queue.Queue; a consumer task gets them; returns (rows, sum)."""
    from ray.util.queue import Queue
    q = Queue(maxsize=64)

    @ray.remote(num_cpus=0)
    def produce(q, n, rows):
        for i in range(n):
            q.put(np.arange(i * rows, (i + 1) * rows, dtype=np.int64))
        q.put(None)

    @ray.remote(num_cpus=0)
    def consume(q):
        count = total = 0
        while True:
            item = q.get()
            if item is None:
                return count, total
            count += len(item)
            total += int(item.sum())
    p = produce.remote(q, n, rows)
    c = consume.remote(q)
    ray.get(p)
    out = ray.get(c)
    q.shutdown()
    return out


@pytest.mark.benchmark(group="ray: 2-node job wall time")
@pytest.mark.parametrize("sess_kind", ["RaySession", "LocalSession"])
def test_two_node_job_wall_time(benchmark, record, ray_session, sess_kind):
    n = 5_000
    jobs = []

    def setup():
        jobs.append(drain_job(n, ROWS, False))
        return (), {}
    if sess_kind == "RaySession":
        sess = ray_session
    else:
        sess = session.LocalSession(workspace.C.Workspace())

    def run():
        tg, out = jobs[-1]
        sess.run(tg)
    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    med = benchmark.stats.stats.median
    record(sess_kind, seconds=med, records=n, rows_per_record=ROWS)


@pytest.mark.benchmark(group="ray: RaySession start-up")
@pytest.mark.parametrize("kind", ["new session (actor start)", "warm session"])
def test_ray_session_startup(benchmark, record, ray_session, kind):
    def one_node_job():
        with task.TaskGroup() as tg:
            with task.Node("solo"):
                pipeline.pipe(sources.ArrayReader({"id": np.arange(10, dtype=np.int64)},
                                                  batch_size=1))
        return tg
    if kind == "warm session":
        ray_session.run(one_node_job())

        def run():
            ray_session.run(one_node_job())
    else:
        def run():
            with RaySession(node_timeout_s=30) as s:
                s.run(one_node_job())
    benchmark.pedantic(run, rounds=3, iterations=1)
    record(kind, seconds=benchmark.stats.stats.median)
