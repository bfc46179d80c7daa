"""Shared helpers of the reliability suites (test_faults, test_bad_input,
test_stress); not a test module.

The fault scenarios use *hooks*: ``Python`` operators whose behaviour is a
closure with a call counter, so "fail after k records" needs no sleep, and
*victims*: steps that block on a capacity-1 queue (full or empty) and set
an Event just before they block, so a failing hook can wait until a peer is
blocked before it fails.
"""
import os
import threading
import time

import numpy as np

from fastpipe import core, workspace

DT = core.DataType

# How long a hook waits for a victim to announce that it is about to block.
# Only reached if the run is already broken; the test's own timeout is larger.
HANDSHAKE_SECS = 20.0


class Boom(ValueError):
    """The exception a failing hook raises (so tests can check __cause__)."""


class Hook(object):
    """A ``Python`` op body that counts its calls and, on call ``fail_at``
    (1-based; None: never), waits for ``wait_for`` (an Event) and then fails:
    ``kind='python'`` raises :class:`Boom`; ``kind='op'`` feeds a float32[3]
    into its output, so a following ``Add`` with a float32[2] fails with a
    dimension mismatch.  Normal calls feed float32[2] zeros."""

    def __init__(self, label, fail_at=None, kind="python", wait_for=None):
        self.label = label
        self.fail_at = fail_at
        self.kind = kind
        self.wait_for = wait_for
        self.calls = 0
        self.failed_at = None       # time.monotonic() just before failing

    def __call__(self, inputs, outputs):
        self.calls += 1
        bad = self.fail_at is not None and self.calls == self.fail_at
        if bad and self.wait_for is not None:
            self.wait_for.wait(HANDSHAKE_SECS)
        if bad:
            self.failed_at = time.monotonic()
        if bad and self.kind == "python":
            raise Boom("boom in %s at call %d" % (self.label, self.calls))
        if outputs:
            outputs[0].feed(np.zeros(3 if bad else 2, np.float32))


def add_hook(net, hook, tag):
    """Append ``hook`` to ``net``: Python(hook) -> shape_<tag>, then
    Add(two_<tag>, shape_<tag>) (fails when the hook feeds the wrong
    shape).  Returns nothing; the blobs are private to the tag."""
    net.Python(hook)([], ["shape_" + tag])
    net.ConstantFill([], "two_" + tag, shape=[2], value=1.0, dtype=DT.FLOAT)
    net.Add(["two_" + tag, "shape_" + tag], "sum_" + tag)


class Announcer(object):
    """A ``Python`` op body that sets ``event`` on its ``at``-th call."""

    def __init__(self, event, at=1):
        self.event = event
        self.at = at
        self.calls = 0

    def __call__(self, inputs, outputs):
        self.calls += 1
        if self.calls >= self.at:
            self.event.set()


def victim_steps(init_net, kind, event):
    """A step that blocks on a capacity-1 queue and sets ``event`` just
    before it blocks: ``kind='full'`` writes records nobody reads (the
    second write blocks), ``kind='empty'`` reads a queue nobody writes."""
    qname = "victim_q_" + kind
    init_net.CreateBlobsQueue([], qname, capacity=1, num_blobs=1)
    net = core.Net("victim_" + kind)
    if kind == "full":
        net.Python(Announcer(event, at=2))([], [])
        net.ConstantFill([], "victim_rec", shape=[1], value=1.0, dtype=DT.FLOAT)
        net.EnqueueBlobs([qname, "victim_rec"], ["victim_rec"])
        return core.execution_step("victim_full_step", net, num_iter=10 ** 9)
    net.Python(Announcer(event, at=1))([], [])
    net.DequeueBlobs([qname], ["victim_out"])
    return core.execution_step("victim_empty_step", net, num_iter=10 ** 9)


def native_thread_count():
    return len(os.listdir("/proc/self/task"))


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def fetch_int(name, ws=None):
    if ws is None:
        return int(np.asarray(workspace.FetchBlob(name)).reshape(-1)[0])
    return int(np.asarray(ws.blobs[name].fetch()).reshape(-1)[0])


def new_event():
    return threading.Event()


class Sink(object):
    """A ``Python`` op body that records the first value of its input."""

    def __init__(self):
        self.seen = []

    def __call__(self, inputs, outputs):
        self.seen.append(int(np.asarray(inputs[0].data).reshape(-1)[0]))


class SinkAll(object):
    """A ``Python`` op body that records every value of its input."""

    def __init__(self):
        self.seen = []

    def __call__(self, inputs, outputs):
        self.seen.extend(int(x) for x in np.asarray(inputs[0].data).reshape(-1))
