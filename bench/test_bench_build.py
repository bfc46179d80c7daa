"""Graph build cost: describing, printing and compiling jobs.

* training job: 5 reader nodes and 20 trainer nodes.  Each reader node
  runs a pipe (dataset reader -> a 2-op processor -> a new Queue); each
  trainer node runs a pipe from one of those queues through a 2,000-op
  model net (a NetProcessor over a chain of Add/Mul/Sub on float32[16],
  cloned per node with clone_and_bind_net, as in Caffe2 jobs), all with
  ``num_runtime_threads=N``.  One round = build the TaskGroup, compile it
  with ``LocalSession(ws).compile``, print the compiled job with
  ``net_printer.to_string`` and lower the plan to the native program
  (``_core.Program.from_plan``).  N = 1, 8 and 1000 show that the cost
  does not depend on N (one more test interleaves the three within each
  round, so that load from other processes hits them alike).  Caffe2 runs the same source (build + LocalSession
  compile, which creates the Plan, + to_string; Caffe2 lowers a plan
  inside ``workspace.RunPlan``, which is not timed there).
* the training job in a fresh process (N = 8): a subprocess imports
  fastpipe, builds, compiles, prints and lowers the job once, timing that
  inside itself; the median over several subprocesses is the figure the
  issue's 200 ms target is about (no warmed caches, no earlier garbage).
  Caffe2's figure from issue 7 (1.86 s) sits beside it, or the oracle's
  own fresh-process number when it is installed.
* pipe job: the same two pipes with a 20-op model, N = 1, 10, 100, 1000,
  built with runtime instances (``num_runtime_threads=N``: flat) and with
  static copies (``num_threads=N``: N copies built in Python, O(N)).

Every round starts from a collected heap (gc.collect() in the untimed
setup, on both sides), so the garbage of the previous round is not
charged to the next one.

Run: python -m pytest bench/test_bench_build.py --benchmark-only
"""
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from conftest import _MEDIANS, caffe2_seconds
from fastpipe import _core, workspace

# Written against the Caffe2 API only, so that the same source runs on the
# oracle (where `fastpipe` aliases caffe2.python).
JOB_SRC = '''
import time

import numpy as np
from fastpipe import core, dataset, net_printer, pipeline, schema, session, task
from fastpipe.net_builder import ops

FEATURES = 16


def _feature_schema():
    return schema.Struct(("x", schema.Scalar((np.float32, (FEATURES,)))))


def _normalise(rec):
    x = rec.x()
    y = ops.Add([ops.Mul([x, x]), x])
    return schema.Struct(("x", schema.Scalar((np.float32, (FEATURES,)), y)))


def model_net(num_ops):
    net = core.Net("model")
    rec = net.set_input_record(_feature_schema())
    x = rec.x()
    y = net.Mul([x, x])
    kinds = ("Add", "Mul", "Sub")
    for i in range(num_ops - 1):
        y = getattr(net, kinds[i % 3])([y, x])
    net.set_output_record(schema.Struct(("x", schema.Scalar((np.float32, (FEATURES,)), y))))
    return net


def build_job(instances, readers=5, trainers=20, model_ops=2000, static=False):
    kw = {"num_threads": instances} if static else {"num_runtime_threads": instances}
    model = model_net(model_ops)
    queues = []
    with task.TaskGroup() as tg:
        for r in range(readers):
            with task.Node("reader:%d" % r):
                ds = dataset.Dataset(_feature_schema(), name="source_%d" % r)
                ds.init_empty(core.Net("source_init_%d" % r))
                queues.append(pipeline.pipe(ds.reader(batch_size=64), processor=_normalise,
                                            capacity=64, **kw))
        for t in range(trainers):
            with task.Node("trainer:%d" % t):
                pipeline.pipe(queues[t % readers], processor=pipeline.NetProcessor(model),
                              capacity=64, **kw)
    return tg


def build_compile_print(ws, instances, with_print=True, **kw):
    """(tg, compiled, text, seconds of build / compile / print)."""
    t0 = time.perf_counter()
    tg = build_job(instances, **kw)
    t1 = time.perf_counter()
    compiled = session.LocalSession(ws).compile(tg)
    t2 = time.perf_counter()
    # tasks_by_node() is memoised per node mapping (in Caffe2 too), so after
    # a LocalSession compile the group prints as its one grouped task.
    text = net_printer.to_string(tg.to_task()) if with_print else ""
    t3 = time.perf_counter()
    return tg, compiled, text, (t1 - t0, t2 - t1, t3 - t2)
'''
_ns = {}
exec(JOB_SRC, _ns)
build_compile_print = _ns["build_compile_print"]

# The Caffe2 side: median of `rounds` rounds of the same function.
CAFFE2_DRIVER = '''
import gc, statistics, time
from caffe2.python import workspace
ws = workspace.C.Workspace()
totals = []
for _ in range(%(rounds)d):
    gc.collect()
    t = time.perf_counter()
    tg, compiled, text, _ = build_compile_print(ws, %(instances)d, with_print=%(with_print)r,
                                                static=%(static)r, **%(kw)r)
    totals.append(time.perf_counter() - t)
    del tg, compiled, text
print(statistics.median(totals))
'''


# `python -c` puts the working directory first on sys.path, where fastpipe's
# own package would shadow the oracle's `fastpipe` alias of caffe2.python.
CAFFE2_PRELUDE = '''
import os, sys
sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
import fastpipe.core
assert "caffe2" in fastpipe.core.__file__, fastpipe.core.__file__
'''


def _caffe2_script(**params):
    return CAFFE2_PRELUDE + JOB_SRC + CAFFE2_DRIVER % params

TRAINING = "training job: 5 readers + 20 trainers x 2000-op model, build+compile+print+lower"
PIPES = "pipe job (2 pipes, 20-op model): build+compile+lower, N instances"


def _clean():
    # untimed: start each round from a collected heap (compiled forms are
    # cached on their runnables and go with them)
    gc.collect()


def _caffe2_row(benchmark, name, secs):
    """Put the oracle's median in this group's side-by-side table (the
    benchmark itself timed nothing)."""
    _MEDIANS[(benchmark.group, name)] = (secs, dict(benchmark.extra_info))


def _op_count(plan_def):
    return sum(len(n.op) for n in plan_def.network)


# -- 1. the training job ----------------------------------------------------------

_STAGES = {}


@pytest.mark.benchmark(group=TRAINING)
@pytest.mark.parametrize("instances", [8, 1, 1000])
def test_training_job_fastpipe(benchmark, record, instances):
    ws = workspace.C.Workspace()
    stages = []
    out = {}

    def run():
        tg, compiled, text, (b, c, p) = build_compile_print(ws, instances)
        t = time.perf_counter()
        prog = _core.Program.from_plan(compiled.obj.plan.Proto())
        stages.append((b, c, p, time.perf_counter() - t))
        out.update(tg=tg, compiled=compiled, text=text, prog=prog)

    benchmark.pedantic(run, setup=_clean, rounds=9, iterations=1, warmup_rounds=1)
    # correctness, after timing: every node's pipe is in the plan, the
    # model is cloned once per trainer node, N is recorded, not unrolled
    plan_def = out["compiled"].obj.plan.Proto()
    ops = _op_count(plan_def)
    assert 20 * 2000 <= ops < 20 * 2000 + 2000
    assert len(out["prog"].net_names()) == len(plan_def.network)
    assert ("num_instances=%d" % instances in out["text"]) == (instances > 1)
    med = [statistics.median(s[i] for s in stages[1:]) for i in range(4)]
    _STAGES[instances] = (benchmark.stats.stats.median, ops)
    extra = dict(instances=instances, ops_in_plan=ops,
                 build_s=round(med[0], 4), compile_s=round(med[1], 4),
                 print_s=round(med[2], 4), lower_s=round(med[3], 4),
                 target_s=0.2, meets_target=benchmark.stats.stats.median <= 0.2)
    if 8 in _STAGES and instances != 8:
        extra["ratio_vs_8_instances"] = round(benchmark.stats.stats.median / _STAGES[8][0], 3)
        assert ops == _STAGES[8][1]   # same description whatever N
    record("fastpipe N=%d" % instances, **extra)


@pytest.mark.benchmark(group=TRAINING)
def test_training_job_flat_in_instances(benchmark, record):
    """N = 1, 8 and 1000 interleaved within each round, so that load from
    other processes hits the three alike: the ratios are the claim."""
    ws = workspace.C.Workspace()
    times = {1: [], 8: [], 1000: []}

    def run():
        for n in (1, 8, 1000):
            _clean()
            t = time.perf_counter()
            tg, compiled, text, _ = build_compile_print(ws, n)
            _core.Program.from_plan(compiled.obj.plan.Proto())
            times[n].append(time.perf_counter() - t)
            del tg, compiled, text

    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    med = {n: statistics.median(v[1:]) for n, v in times.items()}
    record("fastpipe N=1+8+1000 interleaved (3 jobs per round)",
           median_N1_s=round(med[1], 4), median_N8_s=round(med[8], 4),
           median_N1000_s=round(med[1000], 4),
           ratio_N1_vs_N8=round(med[1] / med[8], 3),
           ratio_N1000_vs_N8=round(med[1000] / med[8], 3))
    assert med[1000] < 1.5 * med[8]   # flat (a 125x larger N)


@pytest.mark.benchmark(group=TRAINING)
@pytest.mark.parametrize("instances", [8, 1000])
def test_training_job_caffe2(benchmark, record, instances):
    secs = caffe2_seconds("training job N=%d (build+compile+print)" % instances,
                          _caffe2_script(rounds=3, instances=instances, with_print=True,
                                         static=False, kw={}))
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    extra = dict(caffe2_seconds=round(secs, 4),
                 covers="build + LocalSession.compile (incl. Plan) + to_string; "
                        "no lowering (Caffe2 lowers in RunPlan)")
    if instances in _STAGES:
        extra["caffe2_over_fastpipe"] = round(secs / _STAGES[instances][0], 1)
    benchmark.extra_info.update(extra)
    _caffe2_row(benchmark, "caffe2 N=%d (no lowering)" % instances, secs)


# -- 2. runtime instances vs static copies ------------------------------------------

_PIPES = {}


def _pipe_job_round(ws, n, static):
    tg, compiled, _, _ = build_compile_print(ws, n, with_print=False, readers=1,
                                             trainers=1, model_ops=20, static=static)
    prog = _core.Program.from_plan(compiled.obj.plan.Proto())
    return tg, compiled, prog


@pytest.mark.benchmark(group=PIPES)
@pytest.mark.parametrize("path", ["runtime", "static"])
@pytest.mark.parametrize("n", [1, 10, 100, 1000])
def test_pipe_job_instances(benchmark, record, n, path):
    ws = workspace.C.Workspace()
    static = path == "static"
    out = {}

    def run():
        out["r"] = _pipe_job_round(ws, n, static)

    rounds = 3 if static and n >= 1000 else (5 if static and n >= 100 else 9)
    benchmark.pedantic(run, setup=_clean, rounds=rounds, iterations=1, warmup_rounds=1)
    _, compiled, prog = out["r"]
    plan_def = compiled.obj.plan.Proto()
    ops = _op_count(plan_def)
    med = benchmark.stats.stats.median
    _PIPES[(path, n)] = (med, ops)
    extra = dict(instances=n, path=path, ops_in_plan=ops, nets_in_plan=len(plan_def.network))
    if (path, 1) in _PIPES:
        extra["ratio_vs_N1_same_path"] = round(med / _PIPES[(path, 1)][0], 2)
        if path == "runtime":
            assert ops == _PIPES[(path, 1)][1]    # the description does not grow
        elif n > 1:
            assert ops > _PIPES[(path, 1)][1] * n // 2
    if static and ("runtime", n) in _PIPES:
        extra["static_over_runtime"] = round(med / _PIPES[("runtime", n)][0], 2)
    assert len(prog.net_names()) == len(plan_def.network)
    record("fastpipe %s N=%d" % (path, n), **extra)


@pytest.mark.benchmark(group=PIPES)
@pytest.mark.parametrize("path", ["runtime", "static"])
@pytest.mark.parametrize("n", [100])
def test_pipe_job_instances_caffe2(benchmark, record, n, path):
    static = path == "static"
    secs = caffe2_seconds("pipe job %s N=%d (build+compile)" % (path, n),
                          _caffe2_script(rounds=3, instances=n, with_print=False, static=static,
                                         kw=dict(readers=1, trainers=1, model_ops=20)))
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(caffe2_seconds=round(secs, 4), covers="build + compile, no lowering")
    _caffe2_row(benchmark, "caffe2 %s N=%d (no lowering)" % (path, n), secs)


# -- 3. the training job in a fresh process ------------------------------------------

FRESH = "training job (N=8) in a fresh process: build+compile+print+lower once"
# Caffe2's build+compile+print of the same job, measured for issue 7.
CAFFE2_ISSUE_SECONDS = 1.86

FRESH_DRIVER = '''
import json, time
t_import = time.perf_counter()
from fastpipe import _core, workspace
t0 = time.perf_counter()
ws = workspace.C.Workspace()
tg, compiled, text, (b, c, p) = build_compile_print(ws, 8)
t = time.perf_counter()
prog = _core.Program.from_plan(compiled.obj.plan.Proto())
lower = time.perf_counter() - t
total = time.perf_counter() - t0
assert len(prog.net_names()) == len(compiled.obj.plan.Proto().network)
assert "num_instances=8" in text
print(json.dumps(dict(total=total, build=b, compile=c, print=p, lower=lower,
                      ops=sum(len(n.op) for n in compiled.obj.plan.Proto().network))))
'''

CAFFE2_FRESH_DRIVER = '''
import json, time
from caffe2.python import workspace
t0 = time.perf_counter()
ws = workspace.C.Workspace()
tg, compiled, text, _ = build_compile_print(ws, 8)
print(json.dumps(dict(total=time.perf_counter() - t0)))
'''

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_process_rounds(rounds=7, python=sys.executable, script=None):
    """One subprocess per round; each times its own single build."""
    script = script or (JOB_SRC + FRESH_DRIVER)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = []
    for _ in range(rounds):
        res = subprocess.run([python, "-c", script], cwd=_REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError("fresh-process build failed:\n" + res.stderr[-2000:])
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


@pytest.mark.benchmark(group=FRESH)
def test_training_job_fresh_process(benchmark, record):
    rounds = fresh_process_rounds()
    # the timed figure comes from inside the subprocesses; the benchmark
    # itself times nothing
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ("total", "build", "compile", "print", "lower")}
    assert all(20 * 2000 <= r["ops"] < 20 * 2000 + 2000 for r in rounds)
    secs = med["total"]
    extra = dict(rounds=len(rounds), median_s=round(secs, 4),
                 min_s=round(min(r["total"] for r in rounds), 4),
                 max_s=round(max(r["total"] for r in rounds), 4),
                 build_s=round(med["build"], 4), compile_s=round(med["compile"], 4),
                 print_s=round(med["print"], 4), lower_s=round(med["lower"], 4),
                 target_s=0.2, meets_target=secs <= 0.2,
                 caffe2_issue7_s=CAFFE2_ISSUE_SECONDS,
                 caffe2_over_fastpipe=round(CAFFE2_ISSUE_SECONDS / secs, 1))
    benchmark.extra_info.update(extra)
    _MEDIANS[(benchmark.group, "fastpipe fresh process N=8")] = (secs, dict(extra))
    _MEDIANS[(benchmark.group, "caffe2 (issue 7 figure)")] = (
        CAFFE2_ISSUE_SECONDS, dict(source="issue 7"))
    print("\nfresh process, N=8: median %.4f s over %d processes (%s)"
          % (secs, len(rounds), ", ".join("%.4f" % r["total"] for r in rounds)))


@pytest.mark.benchmark(group=FRESH)
def test_training_job_fresh_process_caffe2(benchmark, record):
    from conftest import CAFFE2_PY
    if not os.path.exists(CAFFE2_PY):
        pytest.skip("Caffe2 oracle not installed")
    rounds = fresh_process_rounds(
        rounds=3, python=CAFFE2_PY,
        script=CAFFE2_PRELUDE + JOB_SRC + CAFFE2_FRESH_DRIVER)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    secs = statistics.median(r["total"] for r in rounds)
    benchmark.extra_info.update(caffe2_seconds=round(secs, 4), rounds=len(rounds))
    _caffe2_row(benchmark, "caffe2 fresh process N=8 (no lowering)", secs)
