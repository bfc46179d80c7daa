"""Shared fixtures: a fresh current workspace per test, and a check that no
thread (Python or native) outlives its test."""
import gc
import os
import sys
import threading
import time

import pytest

from fastpipe import workspace


def join_thread(t, timeout=10.0):
    """Join ``t`` and wait (a bounded poll, not a sleep) until its OS thread
    has really exited: ``join`` returns slightly before the kernel thread is
    gone."""
    t.join(timeout)
    assert not t.is_alive()
    tid = t.native_id
    deadline = time.monotonic() + timeout
    while os.path.exists("/proc/self/task/%d" % tid):
        assert time.monotonic() < deadline, "thread %d did not exit" % tid
        os.sched_yield()


def _native_tids():
    try:
        return set(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:  # not Linux
        return set()


def extra_native_tids(before, settle=2.0):
    """Native threads started since `before` that are still there.  A joined
    thread can stay listed for a moment while the kernel reaps it, so poll
    (bounded, no sleep); a thread that was never joined stays and is reported."""
    deadline = time.monotonic() + settle
    extra = _native_tids() - before
    while extra and time.monotonic() < deadline:
        os.sched_yield()
        extra = _native_tids() - before
    return extra


# Threads of Ray's driver (gRPC, its event engine, jemalloc): once
# tests/test_distributed.py has started Ray in this process they stay, and
# gRPC's pools may add one at any time.  They are not fastpipe's.
_RAY_THREAD_NAMES = {"default-executo", "event_engine", "gcs_client_io_s", "grpc_global_tim",
                     "jemalloc_bg_thd", "resolver-execut", "timer_manager"}


def _not_ray(tids):
    if "ray" not in sys.modules:
        return tids
    def name(t):
        try:
            with open("/proc/self/task/%d/comm" % t) as f:
                return f.read().strip()
        except OSError:
            return None     # it has exited meanwhile: not left running
    return {t for t in tids if name(t) not in _RAY_THREAD_NAMES and name(t) is not None}


def _python_tids():
    return {t.native_id for t in threading.enumerate()}


@pytest.fixture
def ws():
    """A fresh workspace of its own (object API)."""
    return workspace.C.Workspace()


@pytest.fixture(autouse=True)
def fresh_workspace():
    """Each test starts on an empty 'default' workspace."""
    workspace.SwitchWorkspace("default")
    workspace.ResetWorkspace()
    yield
    workspace.SwitchWorkspace("default")
    workspace.ResetWorkspace()


@pytest.fixture(autouse=True)
def no_thread_left_behind(request):
    before_native = _native_tids()
    before_py = set(threading.enumerate())
    yield
    # Python threads started by the test must have been joined by it
    # (pytest-timeout's timer thread is not the test's).
    extra_py = [t for t in threading.enumerate()
                if t not in before_py and t.is_alive() and not isinstance(t, threading.Timer)
                and not t.daemon]
    assert not extra_py, "threads left running: %r" % extra_py
    # fastpipe joins every native thread before run() returns.  A Python
    # thread the test joined can still be leaving the kernel for a moment,
    # so give the task list a bounded time to settle (a poll, not a sleep).
    deadline = time.monotonic() + 2.0
    extra_native = _native_tids() - before_native - _python_tids()
    if extra_native:
        # a run or iterator kept only by a reference cycle (a test's
        # pytest.raises traceback holding its frame) is cancelled and joined
        # when the cycle is collected: collect before calling it a leak
        gc.collect()
        extra_native = _native_tids() - before_native - _python_tids()
    while extra_native and time.monotonic() < deadline:
        os.sched_yield()
        extra_native = _native_tids() - before_native - _python_tids()
    extra_native = _not_ray(extra_native)
    assert not extra_native, "native threads left running: %r" % sorted(extra_native)
