"""AtomicAppend growth: contents stay exact across many growths (every dtype,
both growth paths: in-place mremap growth of big buffers and the old
allocate-and-copy path), and a buffer a numpy view still pins is never grown
or moved under it."""
import numpy as np
import pytest

from fastpipe import _core, core, workspace

NUMERIC = [np.float32, np.float64, np.int32, np.int64, np.bool_, np.uint8,
           np.int8, np.int16, np.uint16, np.float16]


@pytest.fixture(params=["mapped", "copy"])
def growth(request):
    prev = _core._append_growth(request.param)
    yield request.param
    _core._append_growth(prev)


def _batch(dtype, i, rows, width):
    base = (np.arange(rows * width, dtype=np.int64) * 7 + i * 131) % 251
    if dtype is np.bool_:
        return (base % 3 == 0).reshape(rows, width)
    return base.astype(dtype).reshape(rows, width)


def _append_net(name, acc, b):
    workspace.FeedBlob(name + "_acc", acc)
    workspace.FeedBlob(name + "_b", b)
    init = core.Net(name + "_init")
    init.CreateMutex([], [name + "_mu"])
    workspace.RunNetOnce(init)
    net = core.Net(name)
    net.AtomicAppend([name + "_mu", name + "_acc", name + "_b"], [name + "_acc"])
    workspace.CreateNet(net)
    return net


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", NUMERIC, ids=lambda d: np.dtype(d).name)
def test_contents_exact_across_many_growths(growth, dtype):
    # rows of 512 bytes; batch sizes vary so that growths land at odd
    # offsets, and the total (~6 MiB) crosses the mapped-buffer threshold
    # (1 MiB) and then grows it several more times
    width = 512 // np.dtype(dtype).itemsize
    net = _append_net("g", np.zeros((0, width), dtype), np.zeros((0, width), dtype))
    expect = []
    for i in range(120):
        rows = 1 + (i * 37) % 190
        b = _batch(dtype, i, rows, width)
        expect.append(b)
        workspace.FeedBlob("g_b", b)
        workspace.RunNet(net)
        if i % 29 == 0:    # a fetch in between (a copy) must not disturb growth
            np.testing.assert_array_equal(workspace.FetchBlob("g_acc"), np.concatenate(expect))
    out = workspace.FetchBlob("g_acc")
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, np.concatenate(expect))


@pytest.mark.timeout(60)
def test_one_append_past_the_threshold_then_small_ones(growth):
    # jump straight to a mapped buffer (8 MiB at once), then grow it
    big = np.arange(2 << 20, dtype=np.float32).reshape(-1, 4)
    net = _append_net("j", big[:1], big[1:])
    workspace.RunNet(net)
    tail = []
    for i in range(50):
        b = np.full((1000 + i, 4), i, np.float32)
        tail.append(b)
        workspace.FeedBlob("j_b", b)
        workspace.RunNet(net)
    np.testing.assert_array_equal(workspace.FetchBlob("j_acc"), np.concatenate([big] + tail))


@pytest.mark.timeout(60)
def test_strings_exact_across_many_growths(growth):
    net = _append_net("s", np.array([b"first"], dtype=object), np.array([b"x"], dtype=object))
    expect = [b"first"]
    for i in range(80):
        # short strings (in-place SSO storage) and long ones (heap storage):
        # moving them between buffers must keep both intact
        b = [(b"s%d_%d" % (i, k)) * (1 + (k % 9) * 4) for k in range(1 + (i * 13) % 70)]
        expect.extend(b)
        workspace.FeedBlob("s_b", np.array(b, dtype=object))
        workspace.RunNet(net)
    assert workspace.FetchBlob("s_acc").tolist() == expect


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", [np.float32, np.int16], ids=["float32", "int16"])
def test_pinned_view_keeps_old_contents_while_the_tensor_grows(growth, dtype):
    # A Python op takes zero-copy views of the accumulator between appends
    # (it sees the live buffer).  Later appends must move to a new buffer
    # rather than grow or write that one: each view keeps exactly the rows
    # it saw, and the accumulator ends up complete.
    views = []
    calls = []

    def keep(inputs, outputs):
        calls.append(1)
        if len(calls) % 5 == 1:       # every 5th: views pin, later appends copy
            views.append((len(calls), inputs[0].data))

    init = core.Net("pv_init")
    init.CreateMutex([], ["pv_mu"])
    workspace.RunNetOnce(init)
    net = core.Net("pv")
    net.AtomicAppend(["pv_mu", "pv_acc", "pv_b"], ["pv_acc"])
    net.Python(keep)(["pv_acc"], [])
    workspace.FeedBlob("pv_acc", np.zeros((0, 4), dtype))
    workspace.FeedBlob("pv_b", np.zeros((0, 4), dtype))
    workspace.CreateNet(net)
    expect = []
    for i in range(40):
        # 192 kB (float32) a batch: the accumulator is a mapped buffer
        # after a few appends, and grows many times after that
        b = np.full((12000, 4), i, dtype)
        expect.append(b)
        workspace.FeedBlob("pv_b", b)
        workspace.RunNet(net)
    assert len(calls) == 40 and len(views) == 8
    for n, v in views:
        np.testing.assert_array_equal(v, np.concatenate(expect[:n]), err_msg="view after %d" % n)
    np.testing.assert_array_equal(workspace.FetchBlob("pv_acc"), np.concatenate(expect))


def test_growth_mode_switch_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mapped.*copy"):
        _core._append_growth("realloc")


@pytest.mark.timeout(60)
def test_a_finished_append_job_releases_its_workspace_and_buffers():
    # Dataset -> pipe -> Dataset, run by a LocalSession, then dropped: the
    # session's compile cache must not keep the job (and its appended
    # buffers) alive, or every later job in the process writes into fresh
    # memory (and the process grows by the job's data each time).
    import gc
    import weakref
    from fastpipe import dataset, pipeline, schema, session, task

    def job():
        ws = workspace.C.Workspace()
        src = dataset.Dataset(schema.Struct(("x", schema.Scalar((np.float32, (4,))))), name="src")
        dst = dataset.Dataset(schema.Struct(("x", schema.Scalar((np.float32, (4,))))), name="dst")
        init = core.Net("rel_init")
        with core.NameScope("src"):
            src.init_empty(init)
        with core.NameScope("dst"):
            dst.init_empty(init)
        writer = dst.writer(init_net=init)
        with task.TaskGroup() as tg:
            pipeline.pipe(src.reader(batch_size=64), writer, num_runtime_threads=1)
        ws.run(init)
        ws.blobs[str(src.get_blobs()[0])].feed(np.ones((1000, 4), np.float32))
        sess = session.LocalSession(ws)
        sess.run(tg)
        assert ws.blobs[str(dst.get_blobs()[0])].fetch().shape == (1000, 4)
        return weakref.ref(ws), weakref.ref(sess)

    ws_ref, sess_ref = job()
    gc.collect()
    assert ws_ref() is None and sess_ref() is None
