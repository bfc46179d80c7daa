"""The main job: fastpipe feeding a Python training loop.

A training set of 10^6 records (an int64 id and a float32[16] feature row)
is read in shuffled batches (``sources.ArrayReader``, a fresh permutation
per epoch), normalised by a native stage (y = 2x + 1, as operators, on
runtime instances), augmented by a Python stage (``PythonProcessor``: per
instance RNG noise, numpy, on runtime instances), and handed batch by batch
to a Python ``for`` loop that stands in for a training step (it computes a
squared-error loss and counts what it saw) -- the pipeline runs on native
threads meanwhile.

For comparison the same loop is then fed by the usual hand-written feeder:
Python threads doing the same work and a ``queue.Queue``.  The demo prints
what it did and how fast, and checks that every record reached the loop
exactly once (count and id checksum) in both.

    python -m fastpipe demo [--records N] [--batch B] [--instances K] [--epochs E]
                            [--progress auto|on|off]

On a terminal (or with ``--progress on``) each fastpipe epoch shows a live
progress line and the session runs with the stall watchdog on; after each
epoch the demo prints ``diagnose()``'s verdict: which stage limited it.
"""

import argparse
import queue
import sys
import threading
import time

import numpy as np

from fastpipe import observe, pipeline, schema, session, sources, task, workspace
from fastpipe.net_builder import ops

FEATURES = 16
NOISE = np.float32(0.01)


def make_data(n):
    ids = np.arange(n, dtype=np.int64)
    xs = ((ids[:, None] % 97).astype(np.float32)
          + np.arange(FEATURES, dtype=np.float32)[None, :]) / np.float32(100)
    return ids, xs


def normalise(rec):
    """The native stage (runs once, at build time: it adds operators)."""
    y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                 ops.Const(np.float32(1))], broadcast=1)
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("x", schema.Scalar((np.float32, (FEATURES,)), y)))


def make_augment(instance_id, num_instances):
    """The Python stage: called once per runtime instance, returns its fn."""
    rng = np.random.default_rng(instance_id)

    def augment(ids, x):
        return ids, x + NOISE * rng.standard_normal(x.shape, dtype=np.float32)
    return augment


def training_loop(batches):
    """Stands in for a training step per batch: a loss and a count."""
    seen = 0
    id_sum = 0
    loss = 0.0
    for ids, x in batches:
        seen += len(ids)
        id_sum += int(ids.sum())
        loss += float(np.square(x - np.float32(2)).mean())
    return seen, id_sum, loss


def build_job(ids, xs, batch, instances, seed):
    with task.TaskGroup() as tg:
        src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=batch, shuffle=True,
                                  seed=seed)
        q = pipeline.pipe(src, processor=normalise, num_runtime_threads=instances,
                          name="normalise")
        q = pipeline.pipe(q, processor=pipeline.PythonProcessor(factory=make_augment,
                                                                name="augment"),
                          num_runtime_threads=instances)
    return tg, q


def threads_feeder(ids, xs, batch, workers, seed):
    """The same feeding written by hand: a shuffled index, worker threads
    doing normalise + augment, a bounded queue.Queue, the loop reads it."""
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    starts = list(range(0, n, batch))
    out = queue.Queue(100)
    end = object()

    def work(w):
        aug = make_augment(w, workers)
        for s in starts[w::workers]:
            idx = order[s:s + batch]
            out.put(aug(ids[idx], xs[idx] * np.float32(2) + np.float32(1)))
        out.put(end)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    done = 0
    while done < workers:
        item = out.get()
        if item is end:
            done += 1
            continue
        yield item
    for t in threads:
        t.join()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastpipe demo",
                                description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=1_000_000, help="training records (10^6)")
    p.add_argument("--batch", type=int, default=256, help="records per batch (256)")
    p.add_argument("--instances", type=int, default=2,
                   help="runtime instances per stage, and feeder threads (2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs over the data (2)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="a live progress line per epoch: auto = when stdout is a terminal")
    args = p.parse_args(argv)
    show = args.progress == "on" or (args.progress == "auto" and observe.stdout_is_terminal())

    ids, xs = make_data(args.records)
    want = (args.records, int(ids.sum()))
    nbatches = -(-args.records // args.batch)

    t0 = time.perf_counter()
    tg, q = build_job(ids, xs, args.batch, args.instances, seed=0)
    ws = workspace.C.Workspace()
    # on a terminal: a stall (nothing moving for 30 s) is logged with who waits on what
    sess = session.LocalSession(ws, stall_timeout=30.0 if show else None)
    sess.compile(tg)
    build_s = time.perf_counter() - t0

    print("fastpipe demo: a training loop fed %d epochs of %d records (%d shuffled batches "
          "of %d per epoch)" % (args.epochs, args.records, nbatches, args.batch))
    print("  pipeline: shuffled reader -> stage 'normalise' (y = 2x+1 as native operators, no "
          "Python; %d instances) -> stage 'augment' (a Python function adding numpy noise; %d "
          "instances) -> this loop; the stages run on native threads while the loop consumes"
          % (args.instances, args.instances))
    print("  built and compiled the job in %.1f ms" % (build_s * 1e3))
    ok = True
    fp_times = []
    for epoch in range(args.epochs):
        t1 = time.perf_counter()
        it = sess.iterate(tg, q)
        with observe.progress(it, stream=sys.stdout, enabled=show):
            seen, id_sum, loss = training_loop(it)
        dt = time.perf_counter() - t1
        fp_times.append(dt)
        good = (seen, id_sum) == want
        ok &= good
        print("  epoch %d: fastpipe delivered %d records in %.3f s = %.2f M records/s "
              "(mean loss %.4f); every record exactly once: %s"
              % (epoch, seen, dt, seen / dt / 1e6, loss / nbatches, "yes" if good else "NO"))
        print("    diagnose(): %s" % it.diagnose())

    th_times = []
    for epoch in range(args.epochs):
        t1 = time.perf_counter()
        seen, id_sum, loss = training_loop(
            threads_feeder(ids, xs, args.batch, args.instances, seed=epoch))
        dt = time.perf_counter() - t1
        th_times.append(dt)
        good = (seen, id_sum) == want
        ok &= good
        print("  epoch %d: Python threads + queue.Queue delivered %d records in %.3f s = "
              "%.2f M records/s; exactly once: %s"
              % (epoch, seen, dt, seen / dt / 1e6, "yes" if good else "NO"))
    fp, th = min(fp_times), min(th_times)
    print("  best epoch: fastpipe %.2f M records/s, threads + queue.Queue %.2f M records/s: "
          "fastpipe fed the loop %.1fx as fast" % (args.records / fp / 1e6,
                                                   args.records / th / 1e6, th / fp))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
