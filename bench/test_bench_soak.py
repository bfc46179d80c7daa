"""Soak and latency benchmarks of the reliability requirements.

* soak: one pipe job (CountUntil -> processor making a float32[4096]
  record -> capacity-8 queue -> 2 counting instances) run 100 times in one
  LocalSession; peak RSS (VmHWM), RSS and native thread count before and
  after go into extra_info; threads must not grow and RSS must stay flat.
* memory bound: the same job streaming 10x more records must not grow peak
  RSS materially (VmHWM is reset through /proc/self/clear_refs before each
  measured run; the sink only counts, with CountUp).
* failure latency: a consumer's Python op raises (recording
  time.monotonic() just before) while the producer is blocked on a full
  capacity-1 queue; time until run() raises.  Target < 100 ms.
* Ctrl-C latency: SIGINT (os.kill from a helper thread, after an Event set
  by the run) while blocked in a queue; time until KeyboardInterrupt.
  Target < 1 s.

* fresh jobs: 100 jobs each built from scratch on a fresh workspace and
  session (Dataset -> y = 2x+1 -> queue -> Dataset, 250 k float32[16]
  records, batch 64), beside the same 100 runs of one job on one session.
  The rate times ``session.run`` only (the job is built, fed and lowered
  before; that time is reported as build_feed_lower_ms_median).  extra_info: RSS growth from after the first job to after the last
  (garbage collected), the median rate of the first and of the last 10
  runs and their ratio (issue 7 asks for last/first >= 0.8).  A finished
  job gives its data back (tests/test_long_lived.py checks that strictly).
  Large Dataset buffers live in their own memory mappings (AtomicAppend's
  mapped growth), so freeing a job returns them to the system; measured
  here: +37 MiB over 100 jobs (about one job's data), last/first 1.00.
  Asserted: every job's native workspace is freed, and RSS grows by less
  than four jobs' data (keeping every job would cost 100 x 2 x 15 MiB).

Run: python3 -m pytest bench/test_bench_soak.py --benchmark-only -s
"""
import gc
import os
import signal
import threading
import time
import weakref

import numpy as np
import pytest

from fastpipe import core, dataset, schema, workspace
from fastpipe.dataio import CountUntil
from fastpipe.errors import RunError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.session import LocalSession
from fastpipe.task import TaskGroup

RECORD_FLOATS = 4096        # 16 KiB per record
SOAK_RUNS = 100
SOAK_RECORDS = 500


def _status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0])      # kB
    return out


def _threads():
    return len(os.listdir("/proc/self/task"))


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0).  False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _counting_job(ws, n, counter="soak_count"):
    init = core.Net("soak_init_" + counter)
    init.CreateCounter([], counter, init_count=0)
    ws.run(init)

    def make_big(rec):
        big = ops.ConstantFill([], shape=[RECORD_FLOATS], value=1.0, dtype=core.DataType.FLOAT)
        return schema.Struct(("x", schema.Scalar((np.float32, (RECORD_FLOATS,)), big)))

    def count_only(rec):
        ops.CountUp([core.BlobReference(counter)])
        return None

    with TaskGroup() as tg:
        q = pipe(CountUntil(n), processor=make_big, capacity=8, num_runtime_threads=2,
                 name="soak_src")
        pipe(q, processor=count_only, num_runtime_threads=2, name="soak_sink")
    return tg


def _count(ws, counter="soak_count"):
    net = core.Net("soak_read_" + counter)
    net.RetrieveCount([counter], [counter + "_value"])
    ws.run(net)
    return int(np.asarray(ws.blobs[counter + "_value"].fetch()))


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="soak: pipe job x100 in one session")
def test_soak_100_runs_one_session(benchmark, record):
    ws = workspace.C.Workspace()
    tg = _counting_job(ws, SOAK_RECORDS)
    session = LocalSession(ws)
    session.run(tg)                                     # warm up
    before, threads_before = _status(), _threads()

    def soak():
        for _ in range(SOAK_RUNS):
            session.run(tg)
    benchmark.pedantic(soak, rounds=1, iterations=1)
    after, threads_after = _status(), _threads()
    assert _count(ws) == SOAK_RECORDS * (SOAK_RUNS + 1)
    record("fastpipe 100 runs", runs=SOAK_RUNS, records_per_run=SOAK_RECORDS,
           rate_per_s=SOAK_RUNS * SOAK_RECORDS / benchmark.stats.stats.median,
           vmhwm_kb_before=before["VmHWM"], vmhwm_kb_after=after["VmHWM"],
           vmrss_kb_before=before["VmRSS"], vmrss_kb_after=after["VmRSS"],
           threads_before=threads_before, threads_after=threads_after)
    print("\nsoak: VmHWM %d -> %d kB, VmRSS %d -> %d kB, threads %d -> %d"
          % (before["VmHWM"], after["VmHWM"], before["VmRSS"], after["VmRSS"],
             threads_before, threads_after))
    assert threads_after <= threads_before
    assert after["VmRSS"] - before["VmRSS"] < 32 * 1024        # < 32 MiB over 100 runs


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="memory bound: 10x more records")
def test_memory_bounded_by_capacity_not_data_size(benchmark, record):
    if not _reset_peak():
        pytest.skip("cannot reset VmHWM (/proc/self/clear_refs)")
    ws = workspace.C.Workspace()
    small_n, big_n = 1000, 10000
    small = _counting_job(ws, small_n, "mem_small")
    big = _counting_job(ws, big_n, "mem_big")
    session = LocalSession(ws)
    session.run(small)                                  # warm up both
    session.run(big)
    growth = {}

    def measure(tg, key):
        _reset_peak()
        base = _status()["VmRSS"]
        session.run(tg)
        growth[key] = _status()["VmHWM"] - base

    measure(small, "small")
    benchmark.pedantic(lambda: measure(big, "big"), rounds=1, iterations=1)
    assert _count(ws, "mem_small") == 2 * small_n
    assert _count(ws, "mem_big") == 2 * big_n
    record("fastpipe 10x records", small_records=small_n, big_records=big_n,
           peak_growth_kb_small=growth["small"], peak_growth_kb_big=growth["big"],
           record_kb=RECORD_FLOATS * 4 // 1024)
    print("\nmemory: peak growth %d kB for %d records, %d kB for %d records"
          % (growth["small"], small_n, growth["big"], big_n))
    # 9000 more records of 16 KiB would be ~140 MiB if they were retained
    assert growth["big"] <= growth["small"] + 8 * 1024


def _blocked_producer_failing_consumer():
    """Producer blocked on a full capacity-1 queue; the consumer's Python op
    raises once the producer announced its blocking write."""
    blocked = threading.Event()
    failed_at = []
    writes = [0]

    def announce(rec_in, rec_out):
        writes[0] += 1
        if writes[0] >= 3:           # 1 read by the consumer, 1 in the queue, this one blocks
            blocked.set()

    def fail(rec_in, rec_out):
        blocked.wait(20)
        failed_at.append(time.monotonic())
        raise ValueError("consumer failed")

    def producer(rec):
        ops.Python(announce)([], [])
        return rec

    def consumer(rec):
        ops.Python(fail)([], [])
        return None

    with TaskGroup() as tg:
        q = pipe(CountUntil(10 ** 9), processor=producer, capacity=1, name="lat_prod")
        pipe(q, processor=consumer, name="lat_cons")
    return tg, failed_at


@pytest.mark.timeout(300)
@pytest.mark.benchmark(group="failure latency (consumer fails, producer blocked)")
def test_failure_latency(benchmark, record):
    session = LocalSession()
    latencies = []

    def once():
        tg, failed_at = _blocked_producer_failing_consumer()
        with pytest.raises(RunError, match="consumer failed"):
            session.run(tg)
        latencies.append(time.monotonic() - failed_at[0])
    benchmark.pedantic(once, rounds=20, iterations=1)
    med = float(np.median(latencies))
    record("fastpipe failure -> raise", latency_median_ms=round(med * 1e3, 3),
           latency_max_ms=round(max(latencies) * 1e3, 3), target_ms=100)
    print("\nfailure latency: median %.2f ms, max %.2f ms" % (med * 1e3, max(latencies) * 1e3))
    assert med < 0.1


@pytest.mark.timeout(300)
@pytest.mark.benchmark(group="Ctrl-C latency (blocked in a queue)")
def test_ctrl_c_latency(benchmark, record):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    latencies = []

    def once():
        workspace.ResetWorkspace()
        init = core.Net("cc_init")
        init.CreateBlobsQueue([], "cc_q", capacity=1, num_blobs=1)
        workspace.RunNetOnce(init)
        blocked = threading.Event()
        net = core.Net("cc_blocker")
        net.Python(lambda i, o: blocked.set())([], [])
        net.DequeueBlobs(["cc_q"], ["cc_never"])
        sent = []

        def interrupter():
            if blocked.wait(20):
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        t = threading.Thread(target=interrupter)
        t.start()
        try:
            try:
                workspace.RunPlan(core.Plan(core.execution_step("cc_step", net)))
            except KeyboardInterrupt:
                latencies.append(time.monotonic() - sent[0])
            else:
                raise AssertionError("run returned without KeyboardInterrupt")
        finally:
            t.join(10)
            signal.signal(signal.SIGINT, old)
    benchmark.pedantic(once, rounds=10, iterations=1)
    med = float(np.median(latencies))
    record("fastpipe SIGINT -> KeyboardInterrupt", latency_median_ms=round(med * 1e3, 3),
           latency_max_ms=round(max(latencies) * 1e3, 3), target_ms=1000)
    print("\nCtrl-C latency: median %.1f ms, max %.1f ms" % (med * 1e3, max(latencies) * 1e3))
    assert max(latencies) < 1.0


# -- 100 fresh jobs ------------------------------------------------------------------

FRESH_JOBS = 100
FRESH_RECORDS = 250_000
FRESH = "soak: 100 jobs, Dataset -> 2x+1 -> queue -> Dataset, 250k records each"


def _rss_kb():
    gc.collect()
    return _status()["VmRSS"]


def _dataset_job():
    """A fresh job: (init net, task group, source, destination)."""
    src = dataset.Dataset(schema.Struct(("x", schema.Scalar((np.float32, (16,))))), name="src")
    dst = dataset.Dataset(schema.Struct(("y", schema.Scalar((np.float32, (16,))))), name="dst")
    init = core.Net("soak_fresh_init")
    with core.NameScope("src"):
        src.init_empty(init)
    with core.NameScope("dst"):
        dst.init_empty(init)
    writer = dst.writer(init_net=init)

    def proc(rec):
        y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                     ops.Const(np.float32(1))], broadcast=1)
        return schema.Struct(("y", schema.Scalar((np.float32, (16,)), y)))

    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=64), processor=proc, capacity=256)
        pipe(q, writer)
    return init, tg, src, dst


def _soak_input():
    x = (np.arange(FRESH_RECORDS * 16, dtype=np.int64) % 1000).astype(np.float32)
    x = x.reshape(FRESH_RECORDS, 16)
    return x, float((2.0 * x.astype(np.float64) + 1.0).sum())


def _check(ws, dst, checksum):
    y = ws.blobs[str(dst.get_blobs()[0])].fetch()
    assert y.shape == (FRESH_RECORDS, 16)
    assert abs(float(y.astype(np.float64).sum()) - checksum) < 1e-3 * FRESH_RECORDS


def _soak_summary(rates, rss, threads):
    first = float(np.median(rates[:10]))
    last = float(np.median(rates[-10:]))
    return dict(runs=len(rates), records_per_run=FRESH_RECORDS,
                rate_per_s=float(np.median(rates)),
                rate_first10_median=round(first), rate_last10_median=round(last),
                ratio_last_first=round(last / first, 3),
                rss_kb_after_first=rss[0], rss_kb_after_last=rss[1],
                rss_growth_kb=rss[1] - rss[0],
                threads_before=threads[0], threads_after=threads[1])


@pytest.mark.timeout(900)
@pytest.mark.benchmark(group=FRESH)
def test_soak_100_fresh_jobs(benchmark, record):
    x, checksum = _soak_input()
    rates, rss, threads, prepare = [], [], [_threads()], []
    native_workspaces = []

    def one_job():
        t0 = time.perf_counter()
        init, tg, src, dst = _dataset_job()
        ws = workspace.C.Workspace()
        ws.run(init)
        ws.blobs[str(src.get_blobs()[0])].feed(x)
        session = LocalSession(ws)
        session.compile(tg).obj.native_program()       # lower outside the rate
        prepare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        session.run(tg)
        rates.append(FRESH_RECORDS / (time.perf_counter() - t0))
        _check(ws, dst, checksum)
        native_workspaces.append(weakref.ref(ws._native))

    def soak():
        one_job()
        rss.append(_rss_kb())                          # one job's worth resident
        for _ in range(FRESH_JOBS - 1):
            one_job()
        rss.append(_rss_kb())
    benchmark.pedantic(soak, rounds=1, iterations=1)
    threads.append(_threads())
    info = _soak_summary(rates, rss, threads)
    info["build_feed_lower_ms_median"] = round(float(np.median(prepare)) * 1e3, 3)
    record("fastpipe 100 fresh jobs", **info)
    print("\nfresh jobs: rate first10 %.3g, last10 %.3g rec/s (x%.2f); RSS %d -> %d kB (+%d)"
          % (info["rate_first10_median"], info["rate_last10_median"],
             info["ratio_last_first"], rss[0], rss[1], rss[1] - rss[0]))
    assert threads[1] <= threads[0]
    # no job's workspace (so none of its blobs) outlives the job
    gc.collect()
    assert sum(r() is not None for r in native_workspaces) == 0
    # keeping every job's ~2 x 15 MiB would be ~3 GiB
    assert rss[1] - rss[0] < 128 * 1024


@pytest.mark.timeout(900)
@pytest.mark.benchmark(group=FRESH)
def test_soak_100_runs_of_one_job(benchmark, record):
    """Baseline: the same 100 runs of one job, compiled once, on one
    workspace (the destination emptied before each run)."""
    x, checksum = _soak_input()
    init, tg, src, dst = _dataset_job()
    ws = workspace.C.Workspace()
    ws.run(init)
    ws.blobs[str(src.get_blobs()[0])].feed(x)
    session = LocalSession(ws)
    rates, rss, threads = [], [], [_threads()]
    dst_blob = str(dst.get_blobs()[0])

    def one_run():
        ws.blobs[dst_blob].feed(np.zeros((0, 16), np.float32))
        t0 = time.perf_counter()
        session.run(tg)
        rates.append(FRESH_RECORDS / (time.perf_counter() - t0))
        _check(ws, dst, checksum)

    def soak():
        one_run()
        rss.append(_rss_kb())
        for _ in range(FRESH_JOBS - 1):
            one_run()
        rss.append(_rss_kb())
    benchmark.pedantic(soak, rounds=1, iterations=1)
    threads.append(_threads())
    info = _soak_summary(rates, rss, threads)
    record("fastpipe 100 runs of one job", **info)
    print("\none job: rate first10 %.3g, last10 %.3g rec/s (x%.2f); RSS %d -> %d kB (+%d)"
          % (info["rate_first10_median"], info["rate_last10_median"],
             info["ratio_last_first"], rss[0], rss[1], rss[1] - rss[0]))
    assert threads[1] <= threads[0]
    assert rss[1] - rss[0] < 64 * 1024
