"""Blobs, workspaces and the workspace module API."""
import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import BlobError, RunError

ALL_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.bool_, np.uint8,
              np.int8, np.int16, np.uint16, np.float16]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3), (1, 2, 1, 2)])
def test_feed_fetch_roundtrip(dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    assert workspace.FeedBlob("x", a) is True
    b = workspace.FetchBlob("x")
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_fetch_is_a_copy():
    workspace.FeedBlob("x", np.zeros(3, np.float32))
    a = workspace.FetchBlob("x")
    a[:] = 7
    np.testing.assert_array_equal(workspace.FetchBlob("x"), np.zeros(3))


def test_strings_roundtrip():
    workspace.FeedBlob("s", np.array(["ab", "", "héllo"]))
    s = workspace.FetchBlob("s")
    assert s.dtype == object
    assert list(s) == [b"ab", b"", "héllo".encode()]
    workspace.FeedBlob("s2", np.array([b"x", b"y"], dtype=object).reshape(2, 1))
    assert workspace.FetchBlob("s2").shape == (2, 1)


def test_unsupported_dtype_names_blob():
    with pytest.raises(TypeError, match="'bad'.*uint64"):
        workspace.FeedBlob("bad", np.zeros(2, np.uint64))


def test_fetch_missing_blob():
    with pytest.raises(BlobError, match="'nope' does not exist"):
        workspace.FetchBlob("nope")
    with pytest.raises(KeyError):
        workspace.FetchBlob("nope")


def test_has_blob_blobs_reset():
    workspace.FeedBlob("a", np.ones(1))
    workspace.CreateBlob("b")
    assert workspace.HasBlob("a") and workspace.HasBlob("b")
    assert set(workspace.Blobs()) == {"a", "b"}
    workspace.ResetWorkspace()
    assert workspace.Blobs() == []


def test_switch_workspace():
    workspace.FeedBlob("a", np.ones(1))
    workspace.SwitchWorkspace("other", True)
    try:
        assert workspace.CurrentWorkspace() == "other"
        assert not workspace.HasBlob("a")
        with pytest.raises(RuntimeError):
            workspace.SwitchWorkspace("missing")
    finally:
        workspace.SwitchWorkspace("default")
    assert workspace.HasBlob("a")


def test_object_api_and_child_visibility():
    parent = workspace.C.Workspace()
    parent.create_blob("shared").feed(np.array([1, 2], np.int32))
    child = workspace.C.Workspace(parent)
    assert child.has_blob("shared")
    np.testing.assert_array_equal(child.blobs["shared"].fetch(), [1, 2])
    net = core.Net("child_writes")
    net.ConstantFill([], "shared", shape=[1], value=5, dtype=core.DataType.INT32)
    net.ConstantFill([], "local", shape=[1], value=1.0)
    assert child.run(net) is True
    # create-through-parent: the existing parent blob was written
    np.testing.assert_array_equal(parent.blobs["shared"].fetch(), [5])
    assert child.has_blob("local") and not parent.has_blob("local")


def test_create_net_run_net_and_overwrite():
    net = core.Net("counter_net")
    net.ConstantFill([], "x", shape=[2], value=1.0)
    net.Add(["x", "x"], "y")
    workspace.CreateNet(net)
    assert workspace.RunNet(net.Proto().name, 3) is True
    np.testing.assert_array_equal(workspace.FetchBlob("y"), [2, 2])
    with pytest.raises(RuntimeError, match="refuse to overwrite"):
        workspace.CreateNet(net)
    workspace.CreateNet(net, overwrite=True)
    with pytest.raises(RuntimeError, match="does not exist"):
        workspace.RunNet("no_such_net")


def test_failed_run_leaves_workspace_usable():
    net = core.Net("bad")
    net.Add(["a", "b"], "c")
    workspace.FeedBlob("a", np.ones(2, np.float32))
    workspace.FeedBlob("b", np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match="Add.*bad.*Dimension mismatch"):
        workspace.RunNetOnce(net)
    workspace.FeedBlob("b", np.ones(2, np.float32))
    assert workspace.RunNetOnce(net)
    np.testing.assert_array_equal(workspace.FetchBlob("c"), [2, 2])


def test_missing_input_blob_is_named():
    net = core.Net("reads_missing")
    net.Copy("never_written", "y")
    with pytest.raises(RuntimeError, match="never_written.*does not exist"):
        workspace.RunNetOnce(net)


def test_remove_blob():
    workspace.FeedBlob("a", np.ones(1))
    assert workspace.RemoveBlob("a") is True
    assert not workspace.HasBlob("a")


def test_fetch_object_blob():
    net = core.Net("mk")
    net.CreateCounter([], "c", init_count=1)
    workspace.RunNetOnce(net)
    h = workspace.FetchBlob("c")
    assert h.kind == "counter"


def test_parent_cannot_be_reset_under_a_live_child():
    parent = workspace.C.Workspace()
    parent.create_blob("x").feed(np.ones(2, np.float32))
    child = workspace.C.Workspace(parent)
    net = core.Net("reads_parent")
    net.Copy("x", "y")
    child.create_net(net)
    with pytest.raises(RuntimeError, match="child workspace"):
        parent.reset()
    with pytest.raises(RuntimeError, match="child workspace"):
        parent._native.remove_blob("x")
    del child, net
    parent.reset()
    assert not parent.has_blob("x")


def test_blob_used_by_a_created_net_cannot_be_removed():
    workspace.FeedBlob("x", np.ones(2, np.float32))
    net = core.Net("uses_x")
    net.Copy("x", "y")
    workspace.CreateNet(net)
    with pytest.raises(RuntimeError, match="net .* uses it"):
        workspace.RemoveBlob("x")
    workspace.RunNet(net.Proto().name)
