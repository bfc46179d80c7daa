"""Benchmark helpers: medians of each benchmark are collected so that every
group can print fastpipe beside its baseline as a ratio at the end of the
run; `caffe2_seconds` times the same workload on the Caffe2 oracle when it
is installed (../shared/tools/caffe2-oracle/setup.sh), so its numbers sit in
the same report."""
import os

# numpy's OpenBLAS starts a worker thread per core that spins after init;
# nothing here calls BLAS, and on 2 cores that thread steals time from the
# threads being measured.  (Set before numpy is imported.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import subprocess  # noqa: E402
import sys
import textwrap

import pytest

from fastpipe import workspace

_MEDIANS = {}     # (group, name) -> (median seconds, extra_info)
_CAFFE2 = {}      # label -> seconds (or an error string)
_CAFFE2_RECORDS = {}  # label -> records moved in the timed region

CAFFE2_PY = os.environ.get("FASTPIPE_CAFFE2_PYTHON", "/tmp/caffe2-venv/bin/python")


@pytest.fixture(autouse=True)
def fresh_workspace():
    workspace.ResetWorkspace()
    yield
    workspace.ResetWorkspace()


@pytest.fixture
def record(benchmark, request):
    """Call record(name) after the benchmark ran to register its median."""
    def _record(name, **extra):
        benchmark.extra_info.update(extra)
        st = benchmark.stats.stats
        _MEDIANS[(benchmark.group, name)] = (st.median, dict(benchmark.extra_info))
    return _record


def caffe2_seconds(label, script, timeout=600, records=None):
    """Run `script` (which must print one float: seconds of the measured
    region) on the Caffe2 oracle.  Returns seconds or None.  With `records`
    the summary also prints the rate."""
    if records:
        _CAFFE2_RECORDS[label] = records
    if label in _CAFFE2:
        v = _CAFFE2[label]
        return v if isinstance(v, float) else None
    if not os.path.exists(CAFFE2_PY):
        _CAFFE2[label] = "oracle not installed"
        return None
    try:
        out = subprocess.run([CAFFE2_PY, "-c", textwrap.dedent(script)], capture_output=True,
                             text=True, timeout=timeout, env=dict(os.environ, GLOG_minloglevel="2"))
        v = float(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - reported in the summary
        _CAFFE2[label] = "failed: %s" % (str(e)[:200],)
        return None
    _CAFFE2[label] = v
    return v


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS and not _CAFFE2:
        return
    tr = terminalreporter
    tr.section("fastpipe side-by-side (medians)")
    groups = {}
    for (g, name), (med, extra) in _MEDIANS.items():
        groups.setdefault(g, []).append((name, med, extra))
    for g, rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        tr.write_line("[%s]" % g)
        base = rows[0][1]
        for name, med, extra in rows:
            rate = extra.get("rate_per_s")
            tail = "  %.3g rec/s" % rate if rate else ""
            tr.write_line("  %-40s %12.6f s  x%.2f vs first%s" % (name, med, base / med if med else 0, tail))
            for k, v in sorted(extra.items()):
                if k not in ("rate_per_s",):
                    tr.write_line("      %s = %s" % (k, v))
    if _CAFFE2:
        tr.write_line("[caffe2 oracle]")
        for label, v in sorted(_CAFFE2.items()):
            if isinstance(v, float):
                n = _CAFFE2_RECORDS.get(label)
                rate = "  %.3g rec/s" % (n / v) if n else ""
                tr.write_line("  %-40s %12.6f s%s" % (label, v, rate))
            else:
                tr.write_line("  %-40s %s" % (label, v))
