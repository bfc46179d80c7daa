"""W_heavy (the peer kit's workload, ../shared/peerbench/common.py): 2,000
float32 (64, 1024) batches, processor ``np.cumsum(np.sort(b, axis=1),
axis=1)`` as a ``pipeline.PythonProcessor`` with 1 and 2 runtime instances,
beside the kit's stdlib peers (worker threads + queue.Queue, and the staged
reader -> workers -> main pipeline) with 1 and 2 workers, in one run.

fastpipe: a Dataset reader (batch 64) -> PythonProcessor(process_heavy) ->
queue -> Dataset writer; the kit's consumer (consume_heavy) runs after the
timed region over the written batches, as the checksum.  A second variant
consumes with consume_heavy per item in a last 1-instance PythonProcessor
that keeps nothing.  A third consumes in the main thread through
``LocalSession.iterate`` (skipped where iterate is not merged yet).  The
peers run the kit's consumer in the main thread inside the timed region, as
the kit does.

A second group runs a stage that does release the GIL (sha256 of each batch)
the same two ways, to show what N instances give when the function allows it.

Run: python -m pytest bench/test_bench_heavy.py --benchmark-only
"""
import hashlib
import os
import sys
import threading

import numpy as np
import pytest

from fastpipe import core, dataset, pipeline, schema, session, task, workspace

_KIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                    "peerbench")
if not os.path.exists(os.path.join(_KIT, "common.py")):
    pytest.skip("the peer kit (../shared/peerbench) is not here", allow_module_level=True)
sys.path.insert(0, _KIT)
import common as C  # noqa: E402
import peer_stdlib  # noqa: E402

GROUP = "W_heavy: 2,000 x (64,1024) float32 sort+cumsum (batches/s)"
ROUNDS = 5


@pytest.fixture(scope="module")
def heavy():
    data = C.make_heavy()
    return data, C.heavy_check(data)


@pytest.fixture(scope="module")
def fastpipe_source(heavy):
    """A workspace holding W_heavy as a Dataset of 128,000 rows of 1024."""
    data, _ = heavy
    n, rows, cols = data.shape
    ws = workspace.C.Workspace()
    src = dataset.Dataset(schema.Struct(("b", schema.Scalar((np.float32, (cols,))))),
                          name="heavy_src")
    init = core.Net("heavy_init")
    with core.NameScope("heavy_src"):
        src.init_empty(init)
    ws.run(init)
    ws.blobs[str(src.get_blobs()[0])].feed(data.reshape(n * rows, cols))
    return ws, src


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("instances", [1, 2])
def test_heavy_fastpipe(benchmark, record, heavy, fastpipe_source, instances):
    data, check = heavy
    n, rows, cols = data.shape
    ws, src = fastpipe_source
    dst = dataset.Dataset(schema.Struct(("b", schema.Scalar((np.float32, (cols,))))),
                          name="heavy_dst_%d" % instances)
    init = core.Net("heavy_dst_init")
    with core.NameScope("heavy_dst_%d" % instances):
        dst.init_empty(init)
    ws.run(init)
    out_blob = ws.blobs[str(dst.get_blobs()[0])]
    with task.TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=rows),
                          processor=pipeline.PythonProcessor(C.process_heavy),
                          num_runtime_threads=instances)
        pipeline.pipe(q, dst.writer())
    sess = session.LocalSession(ws)
    sess.compile(tg)

    def reset():
        out_blob.feed(np.zeros((0, cols), np.float32))   # the run appends to it
        return (), {}

    def run():
        sess.run(tg)    # the reader's cursor is created by the task's init: row 0

    benchmark.pedantic(run, setup=reset, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    out = out_blob.fetch()
    assert out.shape == (n * rows, cols)
    ok, detail = check(C.consume_heavy(out.reshape(n, rows, cols)))
    assert ok, detail
    record("fastpipe PythonProcessor, %d instance(s)" % instances, batches=n,
           instances=instances, rate_per_s=n / benchmark.stats.stats.median,
           consumer="kit consume_heavy after the run (Dataset writer; iterate not merged)")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("instances", [1, 2])
def test_heavy_fastpipe_consumer_stage(benchmark, record, heavy, fastpipe_source, instances):
    """The same stage, consumed by the kit's consume_heavy applied to each
    item in a last, 1-instance PythonProcessor that keeps nothing (on a
    native thread, not the main thread): the consumer's work without the
    Dataset writer's copy and page faults."""
    data, check = heavy
    n, rows, cols = data.shape
    ws, src = fastpipe_source
    acc = [0, 0.0]

    def consume(c):
        k, s = C.consume_heavy((c,))
        acc[0] += k
        acc[1] += s
        return None

    with task.TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=rows),
                          processor=pipeline.PythonProcessor(C.process_heavy),
                          num_runtime_threads=instances)
        pipeline.pipe(q, processor=pipeline.PythonProcessor(consume, name="consume_heavy"))
    sess = session.LocalSession(ws)
    sess.compile(tg)

    def reset():
        acc[:] = [0, 0.0]
        return (), {}

    benchmark.pedantic(lambda: sess.run(tg), setup=reset, rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    ok, detail = check(tuple(acc))
    assert ok, detail
    record("fastpipe PythonProcessor, %d instance(s), consumer stage" % instances, batches=n,
           instances=instances, rate_per_s=n / benchmark.stats.stats.median,
           consumer="kit consume_heavy per item in a 1-instance PythonProcessor sink")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("instances", [1, 2])
def test_heavy_fastpipe_iterate(benchmark, record, heavy, fastpipe_source, instances):
    """The stage's queue consumed in the main thread through
    LocalSession.iterate by the kit's consume_heavy (items are 1-tuples: it
    gets their one field).  Skipped where iterate is not merged yet."""
    if not hasattr(session.LocalSession, "iterate"):
        pytest.skip("LocalSession.iterate is not in this tree yet")
    data, check = heavy
    n, rows, cols = data.shape
    ws, src = fastpipe_source
    with task.TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=rows),
                          processor=pipeline.PythonProcessor(C.process_heavy),
                          num_runtime_threads=instances)
    sess = session.LocalSession(ws)
    sess.compile(tg)

    def run():
        return C.consume_heavy(rec[0] for rec in sess.iterate(tg, q))
    res = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ok, detail = check(res)
    assert ok, detail
    record("fastpipe PythonProcessor, %d instance(s), iterate" % instances, batches=n,
           instances=instances, rate_per_s=n / benchmark.stats.stats.median,
           consumer="kit consume_heavy in the main thread through LocalSession.iterate")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("workers", [1, 2])
def test_heavy_stdlib_threads(benchmark, record, heavy, workers):
    data, check = heavy
    n = data.shape[0]

    def run():
        return C.consume_heavy(peer_stdlib.pipe_threads(data.__getitem__, C.process_heavy,
                                                        n, workers))
    res = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ok, detail = check(res)
    assert ok, detail
    record("stdlib %d worker thread(s) + queue.Queue" % workers, batches=n, workers=workers,
           rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("workers", [1, 2])
def test_heavy_stdlib_staged(benchmark, record, heavy, workers):
    data, check = heavy
    n = data.shape[0]

    def run():
        return C.consume_heavy(peer_stdlib.pipe_staged(data.__getitem__, C.process_heavy,
                                                       n, workers))
    res = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ok, detail = check(res)
    assert ok, detail
    record("stdlib staged: reader -> %d worker(s) -> main" % workers, batches=n,
           workers=workers, rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("threads", [1, 2])
def test_heavy_limit_bare_threads(benchmark, record, heavy, threads):
    """The ceiling of any pipeline that runs the kit's processor under the
    GIL in one process: ``threads`` plain threads each call process_heavy on
    a strided shard, with no queue and no consumer.  Its 2/1 ratio is how far
    the processor itself runs in parallel (np.sort releases the GIL, np.cumsum
    here does not)."""
    data, _ = heavy
    n = data.shape[0]

    def work(w):
        for i in range(w, n, threads):
            C.process_heavy(data[i])

    def run():
        ts = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record("limit: %d bare thread(s) calling process_heavy, no queue" % threads, batches=n,
           threads=threads, rate_per_s=n / benchmark.stats.stats.median)


GROUP_GIL_FREE = "W_heavy data, a stage that releases the GIL: sha256 of each batch (batches/s)"


def _digest(b):
    """sha256 of the batch's bytes (hashlib releases the GIL on big buffers)."""
    return np.frombuffer(hashlib.sha256(b).digest(), dtype=np.uint8)


def _digest_sum(items):
    n = 0
    acc = 0
    for d in items:
        n += 1
        acc += int(d.sum())
    return n, acc


@pytest.fixture(scope="module")
def heavy_digests(heavy):
    data, _ = heavy
    return _digest_sum(_digest(b) for b in data)


@pytest.mark.benchmark(group=GROUP_GIL_FREE)
@pytest.mark.parametrize("instances", [1, 2])
def test_gil_free_stage_fastpipe(benchmark, record, heavy, heavy_digests, fastpipe_source,
                                 instances):
    data, _ = heavy
    n, rows, cols = data.shape
    ws, src = fastpipe_source
    acc = [0, 0]

    def consume(d):
        k, s = _digest_sum((d,))
        acc[0] += k
        acc[1] += s

    with task.TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=rows),
                          processor=pipeline.PythonProcessor(_digest, outputs="digest"),
                          num_runtime_threads=instances)
        pipeline.pipe(q, processor=pipeline.PythonProcessor(consume, name="digest_sum"))
    sess = session.LocalSession(ws)
    sess.compile(tg)

    def reset():
        acc[:] = [0, 0]
        return (), {}

    benchmark.pedantic(lambda: sess.run(tg), setup=reset, rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    assert tuple(acc) == heavy_digests
    record("fastpipe PythonProcessor(sha256), %d instance(s)" % instances, batches=n,
           instances=instances, rate_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group=GROUP_GIL_FREE)
@pytest.mark.parametrize("workers", [1, 2])
def test_gil_free_stage_stdlib_threads(benchmark, record, heavy, heavy_digests, workers):
    data, _ = heavy
    n = data.shape[0]

    def run():
        return _digest_sum(peer_stdlib.pipe_threads(data.__getitem__, _digest, n, workers))
    res = benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert res == heavy_digests
    record("stdlib %d worker thread(s) + queue.Queue (sha256)" % workers, batches=n,
           workers=workers, rate_per_s=n / benchmark.stats.stats.median)
