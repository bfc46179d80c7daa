"""The stat registry: timers, queue stats, export/reset."""
import numpy as np

from fastpipe import core, stats, workspace


def test_timer_stats_and_reset():
    stats.reset()
    net = core.Net("timed")
    t = net.TimerBegin([], "tmr", counter_name="my_timer")
    net.TimerGet(t, "elapsed")
    net.TimerEnd(t, [])
    workspace.CreateNet(net)
    workspace.RunNet(net.Proto().name, 3)
    s = stats.export()
    assert s["my_timer/time_ns/count"] == 3
    assert s["my_timer/time_ns/sum"] >= 0
    e = workspace.FetchBlob("elapsed")
    assert e.dtype == np.int64 and e.shape == ()
    assert stats.export(reset=True)["my_timer/time_ns/count"] == 3
    assert stats.export()["my_timer/time_ns/count"] == 0


def test_timer_errors():
    import pytest
    from fastpipe.errors import RunError
    net = core.Net("timer_twice")
    net.TimerBegin([], "t2")
    workspace.CreateNet(net)
    workspace.RunNet(net.Proto().name)
    with pytest.raises(RunError, match="already running timer"):
        workspace.RunNet(net.Proto().name)
    end = core.Net("timer_end_twice")
    end.TimerGetAndEnd("t2", "ns")
    end.TimerEnd("t2", [])
    with pytest.raises(RunError, match="TimerEnd.*stopped timer"):
        workspace.RunNetOnce(end)
    assert workspace.FetchBlob("ns").shape == (1,)


def test_stat_registry_ops():
    stats.reset()
    workspace.FeedBlob("keys", np.array(["a/b", "a/c"]))
    workspace.FeedBlob("vals", np.array([3, 4], np.int64))
    net = core.Net("statops")
    net.StatRegistryUpdate(["keys", "vals"], [])
    net.StatRegistryUpdate(["keys", "vals"], [])
    net.StatRegistryExport([], ["k", "v", "ts"], reset=False)
    workspace.RunNetOnce(net)
    got = dict(zip([k.decode() for k in workspace.FetchBlob("k")], workspace.FetchBlob("v")))
    assert got["a/b"] == 6 and got["a/c"] == 8
    assert stats.export()["a/b"] == 6


def test_separate_registries_are_rejected_not_ignored():
    import pytest
    with pytest.raises(ValueError, match="StatRegistryCreate.*process-wide"):
        core.Net("reg").StatRegistryCreate([], "handle")
    with pytest.raises(ValueError, match="StatRegistryExport.*inputs"):
        core.Net("reg2").StatRegistryExport(["handle"], ["k", "v", "t"])
