"""The main job on a Ray cluster: ``python -m fastpipe.distributed.demo``.

A reader node shuffles records and runs a native stage (2x+1) on two
runtime instances; its output queue crosses to a trainer node, where a
Python stage (clip) runs on two instances; the trainer's queue streams to
this process, where the training loop consumes it.  The same job runs on a
LocalSession first, and both runs are checked: every record arrived
exactly once, with the same values.

Options: ``--records N`` (default 200000), ``--batch B`` (records per
pipeline record, default 64), ``--address ADDR`` (an existing cluster;
default: start a local one with 2 CPUs), ``--epochs E`` (default 2).
"""

import argparse
import os
import sys
import time

import numpy as np


def build(n, batch, seed=0):
    from fastpipe import pipeline, schema, sources, task
    from fastpipe.net_builder import ops

    ids = np.arange(n, dtype=np.int64)
    xs = np.random.default_rng(seed).random((n, 16), dtype=np.float32)

    def double_plus_one(rec):   # builds ops once; they run per record, natively
        y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                     ops.Const(np.float32(1))], broadcast=1)
        return schema.as_record({"id": rec.id(), "x": y})

    def augment(i, x):          # runs per record, on numpy arrays
        return i, np.clip(x, 1.0, 2.5)

    with task.TaskGroup() as tg:
        with task.Node("reader"):
            src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch, shuffle=True,
                                      seed=seed)
            q = pipeline.pipe(src, processor=double_plus_one, num_runtime_threads=2)
        with task.Node("trainer"):
            q = pipeline.pipe(q, processor=pipeline.PythonProcessor(augment),
                              num_runtime_threads=2)
    return tg, q, xs


def consume(sess, tg, q):
    """One epoch: the training loop.  Returns (ids, checksum, records/s)."""
    t0 = time.perf_counter()
    seen = []
    total = 0.0
    for ids, x in sess.iterate(tg, q):
        seen.append(ids)
        total += float(x.sum(dtype=np.float64))
    dt = time.perf_counter() - t0
    ids = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    return ids, total, len(ids) / dt if dt > 0 else float("inf")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastpipe.distributed.demo",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--address", default=None)
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from fastpipe import session, workspace
    from fastpipe.distributed import RaySession

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [here] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x])
    t0 = time.perf_counter()
    if args.address:
        ray.init(address=args.address, configure_logging=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    print("ray cluster up in %.2f s (%s)" % (time.perf_counter() - t0,
                                             args.address or "local, 2 CPUs"))
    expected = np.arange(args.records)
    results = {}
    try:
        for name in ("LocalSession", "RaySession"):
            tg, q, xs = build(args.records, args.batch)
            t0 = time.perf_counter()
            sess = (session.LocalSession(workspace.C.Workspace()) if name == "LocalSession"
                    else RaySession(node_timeout_s=30))
            with sess:
                for epoch in range(args.epochs):
                    ids, checksum, rate = consume(sess, tg, q)
                    ok = np.array_equal(np.sort(ids), expected)
                    print("%-12s epoch %d: %8d records, %10.0f records/s into the loop, "
                          "exactly once: %s" % (name, epoch + 1, len(ids), rate,
                                                "yes" if ok else "NO"))
                    if not ok:
                        return 1
                    results.setdefault(name, []).append(checksum)
            if name == "RaySession":
                print("(RaySession epoch 1 includes starting the 2 node actors)")
    finally:
        ray.shutdown()
    same = np.allclose(results["LocalSession"], results["RaySession"], rtol=1e-9)
    print("same values on both sessions: %s" % ("yes" if same else "NO"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
