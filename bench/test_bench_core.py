"""Engine-core benchmarks (issue: engine core).

* step loop: per-iteration cost of ExecutionStep(num_iter=10^6) over a net
  of one small op, beside the same loop written in Python with numpy (and
  Caffe2's executor when the oracle is installed);
* scaling: two concurrent instances of a CPU-bound native loop against one.

Run: python -m pytest bench/test_bench_core.py --benchmark-only
"""
import numpy as np
import pytest

from conftest import caffe2_seconds
from fastpipe import core, workspace

N_ITER = 1_000_000


def _loop_plan(n_iter):
    workspace.FeedBlob("x", np.ones(16, np.float32))
    workspace.FeedBlob("one", np.ones(16, np.float32))
    net = core.Net("step_loop")
    net.Add(["x", "one"], "x")
    plan = core.Plan("loop_plan")
    plan.AddStep(core.execution_step("loop", net, num_iter=n_iter))
    return plan


@pytest.mark.benchmark(group="step loop: 10^6 iterations of Add on float32[16]")
def test_step_loop_fastpipe(benchmark, record):
    plan = _loop_plan(N_ITER)
    benchmark.pedantic(workspace.RunPlan, args=(plan,), rounds=5, iterations=1)
    x = workspace.FetchBlob("x")
    assert x[0] == 1 + 5 * N_ITER
    record("fastpipe ExecutionStep num_iter", ns_per_iter=round(benchmark.stats.stats.median / N_ITER * 1e9, 1))


@pytest.mark.benchmark(group="step loop: 10^6 iterations of Add on float32[16]")
def test_step_loop_python_numpy(benchmark, record):
    x = np.ones(16, np.float32)
    one = np.ones(16, np.float32)

    def loop():
        for _ in range(N_ITER):
            np.add(x, one, out=x)
    benchmark.pedantic(loop, rounds=3, iterations=1)
    record("python for-loop + numpy", ns_per_iter=round(benchmark.stats.stats.median / N_ITER * 1e9, 1))


@pytest.mark.benchmark(group="step loop: 10^6 iterations of Add on float32[16]")
def test_step_loop_caffe2(benchmark, record):
    secs = caffe2_seconds("step loop 10^6 Add float32[16]", """
        import time, numpy as np
        from caffe2.python import core, workspace
        workspace.FeedBlob("x", np.ones(16, np.float32))
        workspace.FeedBlob("one", np.ones(16, np.float32))
        net = core.Net("step_loop"); net.Add(["x", "one"], "x")
        plan = core.Plan("p"); plan.AddStep(core.execution_step("loop", net, num_iter=%d))
        t = time.perf_counter(); workspace.RunPlan(plan); print(time.perf_counter() - t)
    """ % N_ITER)
    if secs is None:
        pytest.skip("Caffe2 oracle not installed")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info["caffe2_seconds"] = secs
    benchmark.extra_info["ns_per_iter"] = round(secs / N_ITER * 1e9, 1)


# -- scaling: 2 instances vs 1 ----------------------------------------------------

SCALE_ITERS = 40000


def _instances_plan(n):
    init = core.Net("scale_init")
    init.CreateCounter([], "done", init_count=0)
    workspace.RunNetOnce(init)
    body = core.Net("cpu_body")
    body.ConstantFill([], "a", shape=[4096], value=1.0)
    body.ConstantFill([], "b", shape=[4096], value=1.0001)
    inner = core.Net("cpu_inner")
    inner.Mul(["a", "b"], "a")
    inner.Add(["a", "b"], "a")
    fin = core.Net("cpu_fin")
    fin.CountUp("done", "prev")
    inst = core.execution_step("inst", [core.execution_step("setup", body),
                                        core.execution_step("work", inner, num_iter=SCALE_ITERS),
                                        core.execution_step("fin", fin)],
                               create_workspace=True)
    plan = core.Plan("scale_%d" % n)
    plan.AddStep(core.execution_step("par", [inst], num_concurrent_instances=n))
    return plan


def _check_done(n, rounds):
    net = core.Net("read_done")
    net.RetrieveCount("done", "done_v")
    workspace.RunNetOnce(net)
    assert int(workspace.FetchBlob("done_v")) == n * rounds


@pytest.mark.benchmark(group="instances: CPU-bound native loop, same work per instance")
@pytest.mark.parametrize("n", [1, 2])
def test_instances_scaling(benchmark, record, n):
    plan = _instances_plan(n)
    benchmark.pedantic(workspace.RunPlan, args=(plan,), rounds=5, iterations=1)
    _check_done(n, 5)
    work = n * SCALE_ITERS * 2 * 4096
    med = benchmark.stats.stats.median
    _SCALE[n] = med
    extra = {}
    if n == 2 and 1 in _SCALE:
        extra["speedup_2_vs_1"] = round(2 * _SCALE[1] / med, 2)
    record("%d instance(s)" % n, instances=n, elements_per_s="%.3g" % (work / med), **extra)


_SCALE = {}
