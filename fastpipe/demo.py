"""The main job: a reader -> processor -> trainer pipeline on fastpipe.

Two in-memory datasets ("clicks" and "views", 10^6 records in all, each a
float32[16] feature row and an int64 id) are read by two reader tasks.  Each
reader pipe normalises its batches (y = 2x + 1) on runtime instances and
writes them into a bounded queue; two trainer tasks, also with runtime
instances, consume the queues, compute a squared error against a target
row and append the per-record loss rows and ids to an output dataset.

It prints the time to build and compile the job, the records each pipe
moved, records per second per pipe (from the pipes' timer stats), the wall
rate, and checks that every record arrived exactly once (count + checksum).

    python -m fastpipe demo [--records N] [--instances K] [--batch B]
"""

import argparse
import sys
import time

import numpy as np

from fastpipe import core, dataset, pipeline, schema, session, stats, task, workspace
from fastpipe.net_builder import ops

FEATURES = 16


def _feature_schema(name):
    return schema.Struct(
        ("id", schema.Scalar(np.int64)),
        (name, schema.Scalar((np.float32, (FEATURES,)))))


def _make_source(ws, name, ids):
    ds = dataset.Dataset(_feature_schema("x"), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):     # field blobs are named after the schema (Caffe2)
        ds.init_empty(init)
    ws.run(init)
    x = (ids[:, None] % 97).astype(np.float32) + np.arange(FEATURES, dtype=np.float32)[None, :]
    id_blob, x_blob = ds.get_blobs()
    ws.blobs[str(id_blob)].feed(ids)
    ws.blobs[str(x_blob)].feed(x)
    return ds


def _normalise(rec):
    """Reader-side processor: y = 2x + 1 on every feature."""
    x = rec.x()
    two = ops.Const(np.float32(2.0))
    one = ops.Const(np.float32(1.0))
    y = ops.Add([ops.Mul([x, two], broadcast=1), one], broadcast=1)
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("y", schema.Scalar((np.float32, (FEATURES,)), y)))


def _train_step(rec):
    """Trainer-side processor: squared error of y against a target row."""
    y = rec.y()
    target = ops.Const(np.full(FEATURES, 3.0, np.float32))
    diff = ops.Sub([y, target], broadcast=1)
    loss = ops.Mul([diff, diff])
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("loss", schema.Scalar((np.float32, (FEATURES,)), loss)))


def build_job(sources, sink_writer, instances, batch, capacity):
    """The whole job as one TaskGroup: per source, a reader pipe into a
    queue and a trainer pipe from that queue into the shared sink writer."""
    queues = []
    with task.TaskGroup() as tg:
        for ds in sources:
            q = pipeline.pipe(ds.reader(batch_size=batch), processor=_normalise,
                              num_runtime_threads=instances, capacity=capacity,
                              name="read_" + ds.name)
            queues.append(q)
            pipeline.pipe(q, sink_writer, processor=_train_step,
                          num_runtime_threads=instances, name="train_" + ds.name)
    return tg, queues


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastpipe demo", description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=1_000_000, help="records in all (default 10^6)")
    p.add_argument("--instances", type=int, default=2, help="runtime instances per pipe")
    p.add_argument("--batch", type=int, default=64, help="records per read")
    p.add_argument("--capacity", type=int, default=64, help="queue capacity (batches)")
    args = p.parse_args(argv)

    ws = workspace.C.Workspace()
    half = args.records // 2
    ids = np.arange(args.records, dtype=np.int64)
    sources = [_make_source(ws, "clicks", ids[:half]), _make_source(ws, "views", ids[half:])]
    sink = dataset.Dataset(schema.Struct(("id", schema.Scalar(np.int64)),
                                         ("loss", schema.Scalar((np.float32, (FEATURES,))))),
                           name="losses")
    init = core.Net("sink_init")
    with core.NameScope("losses"):
        sink.init_empty(init)
    # The writer's mutex is created here, in the session workspace, so both
    # trainer tasks (each in its own private workspace) share it.
    sink_writer = sink.writer(init_net=init)
    ws.run(init)

    t0 = time.perf_counter()
    tg, queues = build_job(sources, sink_writer, args.instances, args.batch, args.capacity)
    sess = session.LocalSession(ws)
    compiled = sess.compile(tg)
    build_s = time.perf_counter() - t0

    stats.reset()
    t1 = time.perf_counter()
    sess.run(compiled)
    run_s = time.perf_counter() - t1
    counters = stats.export()

    out_ids = ws.blobs[str(sink.get_blobs()[0])].fetch()
    loss = ws.blobs[str(sink.get_blobs()[1])].fetch()
    x = (ids[:, None] % 97).astype(np.float64) + np.arange(FEATURES)[None, :]
    expect_loss = float(((2 * x + 1 - 3.0) ** 2).sum())
    ok_count = len(out_ids) == args.records
    ok_ids = ok_count and np.array_equal(np.sort(out_ids), ids)
    ok_sum = abs(float(loss.astype(np.float64).sum()) - expect_loss) <= 1e-6 * expect_loss

    print("fastpipe demo: %d records, 2 reader tasks + 2 trainer tasks, %d runtime instances each, "
          "batch %d" % (args.records, args.instances, args.batch))
    print("  build + compile the job: %.4f s" % build_s)
    print("  run:                     %.3f s  (%.2f M records/s end to end)"
          % (run_s, args.records / run_s / 1e6))
    row_bytes = 8 + 4 * FEATURES            # an id and a float32 row per record
    for q in queues:
        name = str(q.queue())
        batches = counters.get(name + "/queue_dequeued_records", 0)
        moved = counters.get(name + "/queue_dequeued_bytes", 0) // row_bytes
        print("  queue %-34s %9d records in %d batches" % (name, moved, batches))
    for key in sorted(k for k in counters if k.endswith("/time_ns/sum") and "/pipe/" in k):
        base = key[: -len("/time_ns/sum")]
        busy = counters[key] / 1e9 / args.instances
        batches = counters.get(base + "/time_ns/count", 0)
        pipe_name = base.split("/pipe/")[1].split("/")[0]
        records = half if "clicks" in pipe_name else args.records - half
        rate = records / busy if busy > 0 else float("nan")
        print("  pipe %-30s %9d loop iterations, %6.2f M records/s per pipe (timer stats)"
              % (pipe_name, batches, rate / 1e6))
    print("  delivered %d records (%s), ids exactly once: %s, loss checksum %s"
          % (len(out_ids), "ok" if ok_count else "MISMATCH", "ok" if ok_ids else "NO",
             "ok" if ok_sum else "MISMATCH"))
    return 0 if (ok_count and ok_ids and ok_sum) else 1


if __name__ == "__main__":
    sys.exit(main())
