"""Caffe2 parity items of issue 9 (graph layer and queues), each checked
against the behaviour of Caffe2's own code (``caffe2/python/core.py``,
``workspace.py``, ``dataset.py``, ``caffe2/operators/dataset_ops.cc``,
``caffe2/queue/queue_ops.h``).

* Name scopes under a device scope (Detectron's ``NamedCudaScope``) are
  applied once on every naming path.
* ``ws.run(OperatorDef)``, ``workspace.RunOperatorOnce``, ``core.workspace``,
  and the fills' ``run_once=`` argument.
* ``Dataset.trim`` and the ``TrimDataset`` operator.
* ``WeightedSampleDequeueBlobs`` with ``table_idx_blob``.
"""
import subprocess
import sys

import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import FastpipeError, OperatorDefError
from fastpipe.net_builder import NetBuilder, ops


# -- 1. NameScope under DeviceScope ------------------------------------------------

GPU = core.DeviceOption(1, 0)


def _named_cuda_scope(order):
    """Detectron's c2_utils.NamedCudaScope(0): NameScope('gpu_0') and a CUDA
    DeviceScope, entered in either order."""
    import contextlib
    stack = contextlib.ExitStack()
    if order == "name_first":
        stack.enter_context(core.NameScope("gpu_0"))
        stack.enter_context(core.DeviceScope(GPU))
    else:
        stack.enter_context(core.DeviceScope(GPU))
        stack.enter_context(core.NameScope("gpu_0"))
    return stack


ORDERS = ["name_first", "device_first"]


@pytest.mark.parametrize("order", ORDERS)
def test_net_op_calls_scope_names_once_under_device_scope(order):
    net = core.Net("detectron")
    with _named_cuda_scope(order):
        x = net.ConstantFill([], "x", shape=[1], value=1.0)
        # plain call, special kwargs (name=, engine=, arg=, control_input=),
        # a BlobReference method, auto-named outputs
        y = net.Add([x, "x"], "y", name="add")
        z = net.Add([x, x], "z", engine="E")
        c = net.Copy(["x"], ["c"], control_input=["x"])
        r = x.Copy([], "r")
        auto = net.Copy(["x"], 1)
        single = net.Copy(["x"])
    assert [str(b) for b in (x, y, z, c, r)] == [
        "gpu_0/x", "gpu_0/y", "gpu_0/z", "gpu_0/c", "gpu_0/r"]
    # Caffe2's NextName gives '<net>/<type>[:<i>]', then the scope is applied
    assert str(auto) == "gpu_0/%s/Copy:0" % net.Name()
    assert str(single) == "gpu_0/%s/Copy" % net.Name()
    proto = net.Proto()
    for op in proto.op:
        assert all(n.startswith("gpu_0/") and not n.startswith("gpu_0/gpu_0")
                   for n in list(op.input) + list(op.output) + list(op.control_input)), op
        assert op.device_option.device_type == 1
    assert list(proto.op[1].input) == ["gpu_0/x", "gpu_0/x"]
    assert list(proto.op[3].control_input) == ["gpu_0/x"]
    assert proto.op[1].name == "add" and proto.op[2].engine == "E"


@pytest.mark.parametrize("order", ORDERS)
def test_const_under_device_scope_is_scoped_once(order):
    net = core.Net("consts")
    with _named_cuda_scope(order):
        a = net.Const(1.0)
        b = net.Const(2.0)
        named = net.Const([1, 2], "k")
        flag = net.Const(True, "flag")
    n = net.Name()
    assert str(a) == "gpu_0/%s/GivenTensorFill:0" % n
    assert str(b) == "gpu_0/%s/GivenTensorFill_2:0" % n
    assert str(named) == "gpu_0/k" and str(flag) == "gpu_0/flag"
    assert all(op.device_option.device_type == 1 for op in net.Proto().op)
    # the names run: the constants land where the names say
    ws = workspace.C.Workspace()
    ws.run(net)
    assert ws.blobs["gpu_0/%s/GivenTensorFill_2:0" % n].fetch().tolist() == 2.0
    assert ws.blobs["gpu_0/k"].fetch().tolist() == [1, 2]


@pytest.mark.parametrize("order", ORDERS)
def test_create_operator_scoped_names_and_next_blobs_under_device_scope(order):
    net = core.Net("names")
    with _named_cuda_scope(order):
        op = core.CreateOperator("Copy", ["a"], ["b"], control_input=["a"])
        op_ref = core.CreateOperator("Copy", [core.ScopedBlobReference("a")],
                                     core.BlobReference("plain"))
        op_dev = core.CreateOperator("Copy", "a", "b", device_option=core.DeviceOption(0))
        assert core.ScopedName("w") == "gpu_0/w"
        assert str(core.ScopedBlobReference("w")) == "gpu_0/w"
        assert str(net.NextScopedBlob("w")) == "gpu_0/w"
        assert str(net.NextScopedBlob("w")) == "gpu_0/w_auto_0"
        assert str(net.NextBlob("w")) == "w"
        assert workspace.GetNameScope() == "gpu_0/"
        with core.NameScope("conv1"):
            inner = net.Copy(["x"], "y")
    assert list(op.input) == ["gpu_0/a"] and list(op.output) == ["gpu_0/b"]
    assert list(op.control_input) == ["gpu_0/a"]
    assert op.device_option.device_type == 1
    assert list(op_ref.input) == ["gpu_0/a"] and list(op_ref.output) == ["plain"]
    assert op_dev.device_option.device_type == 0
    assert str(inner) == "gpu_0/conv1/y"
    assert list(net.Proto().op[0].input) == ["gpu_0/conv1/x"]


def test_net_builder_ops_under_device_scope_are_scoped_once():
    with core.NameScope("gpu_0"), core.DeviceScope(GPU):
        with NetBuilder("nb_scoped"):
            one = ops.Const(1, "one")
            two = ops.Add([one, one], "two")
            auto = ops.Copy([two], 1)
    assert str(one) == "gpu_0/one" and str(two) == "gpu_0/two"
    assert str(auto).startswith("gpu_0/nb_scoped") and "gpu_0/gpu_0" not in str(auto)


# -- 2. ws.run(OperatorDef), RunOperatorOnce, core.workspace, run_once --------------


def test_workspace_runs_a_single_operator(ws):
    op = core.CreateOperator("ConstantFill", [], "x", shape=[2], value=3.0)
    assert ws.run(op) is True
    assert ws.blobs["x"].fetch().tolist() == [3.0, 3.0]
    add = core.CreateOperator("Add", ["x", "x"], "x")
    ws.run(add)
    ws.run(add, num_iter=2)
    assert ws.blobs["x"].fetch().tolist() == [24.0, 24.0]


def test_run_operator_once_uses_the_current_workspace():
    op = core.CreateOperator("GivenTensorIntFill", [], "ints", shape=[3], values=[1, 2, 3])
    assert workspace.RunOperatorOnce(op) is True
    assert workspace.FetchBlob("ints").tolist() == [1, 2, 3]
    assert workspace.RunOperatorsOnce([
        core.CreateOperator("Copy", "ints", "a"),
        core.CreateOperator("Add", ["a", "ints"], "b")]) is True
    assert workspace.FetchBlob("b").tolist() == [2, 4, 6]


def test_single_operator_errors_name_the_operator(ws):
    bad = core.CreateOperator("ConstantFill", [], "x", shape=[2], valu=3.0)
    with pytest.raises(OperatorDefError, match="ConstantFill.*'valu'"):
        ws.run(bad)
    with pytest.raises(FastpipeError, match="expected an OperatorDef, got str"):
        workspace.RunOperatorOnce("x")
    with pytest.raises(TypeError):   # ArgumentError is also a TypeError
        ws.run(42)
    failing = core.CreateOperator("Copy", "missing", "y")
    with pytest.raises(FastpipeError, match="missing"):
        ws.run(failing)


def test_core_exposes_the_workspace_module():
    assert core.workspace is workspace
    assert core.workspace.FeedBlob is workspace.FeedBlob
    with pytest.raises(AttributeError, match="no_such_name"):
        core.no_such_name


@pytest.mark.timeout(60)
def test_core_workspace_loads_lazily():
    # importing core alone still loads nothing above the graph layer;
    # the attribute loads the workspace module on first use
    code = ("import sys\nfrom fastpipe import core\n"
            "assert 'fastpipe.workspace' not in sys.modules\n"
            "assert 'fastpipe._core' not in sys.modules\n"
            "w = core.workspace\n"
            "assert w is sys.modules['fastpipe.workspace']\n"
            "w.RunOperatorOnce(core.CreateOperator('ConstantFill', [], 'x', value=1.0))\n"
            "assert w.FetchBlob('x') == 1.0\n")
    import os
    import fastpipe
    subprocess.run([sys.executable, "-c", code], check=True, timeout=50,
                   cwd=os.path.dirname(os.path.dirname(fastpipe.__file__)))


@pytest.mark.parametrize("fill,kwargs", [
    ("ConstantFill", dict(shape=[2], value=5.0)),
    ("GivenTensorFill", dict(shape=[2], values=[1.0, 2.0])),
    ("GivenTensorDoubleFill", dict(shape=[1], values=[1.0])),
    ("GivenTensorIntFill", dict(shape=[1], values=[7])),
    ("GivenTensorInt64Fill", dict(shape=[1], values=[7])),
    ("GivenTensorBoolFill", dict(shape=[1], values=[True])),
    ("GivenTensorStringFill", dict(shape=[1], values=["s"])),
])
@pytest.mark.parametrize("run_once", [0, 1])
def test_fills_accept_run_once(ws, fill, kwargs, run_once):
    net = core.Net("fill_run_once")
    out = getattr(net, fill)([], "out", run_once=run_once, **kwargs)
    plain = getattr(net, fill)([], "plain", **kwargs)
    ws.run(net)
    np.testing.assert_array_equal(ws.blobs[str(out)].fetch(), ws.blobs[str(plain)].fetch())
    # ignored means ignored: a net run twice fills twice either way
    net2 = core.Net("fill_run_once_twice")
    net2.ConstantFill([], "acc", shape=[1], value=1.0, run_once=run_once)
    net2.Add(["acc", "acc"], "acc")
    ws.run(net2, num_iter=2)
    assert ws.blobs["acc"].fetch().tolist() == [2.0]


def test_run_once_given_twice_is_still_an_error():
    net = core.Net("fill_twice")
    op = core.CreateOperator("ConstantFill", [], "x", value=1.0, run_once=1)
    op.arg.append(core.MakeArgument("run_once", 0))
    with pytest.raises(OperatorDefError, match="'run_once' given twice"):
        workspace.C.Workspace().run(op)
    with pytest.raises(OperatorDefError, match="unknown argument 'run_twice'"):
        net.ConstantFill([], "y", value=1.0, run_twice=1)


# -- 4. WeightedSampleDequeueBlobs with table_idx_blob ------------------------------


def _filled_queues(ws, num_queues, num_blobs, records):
    """num_queues closed queues of capacity ``records``, queue q holding
    ``records`` records whose blob b is float32 [q * 10 + b]."""
    init = core.Net("wsd_init")
    queues = [init.CreateBlobsQueue([], "wq%d" % q, capacity=records, num_blobs=num_blobs)
              for q in range(num_queues)]
    fill = core.Net("wsd_fill")
    for q in range(num_queues):
        blobs = [fill.ConstantFill([], "wq%d_b%d" % (q, b), shape=[1], value=float(q * 10 + b))
                 for b in range(num_blobs)]
        fill.SafeEnqueueBlobs([queues[q]] + blobs, blobs + ["wq%d_st" % q])
    close = core.Net("wsd_close")
    for q in queues:
        close.CloseBlobsQueue([q], 0)
    ws.run(init)
    ws.run(fill, num_iter=records)
    ws.run(close)
    return queues


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_blobs,table_idx_blob", [
    (n, t) for n in (1, 2, 3) for t in range(-1, n)])
def test_weighted_sample_dequeue_caffe2_scenario(num_blobs, table_idx_blob):
    """Caffe2's queue_ops test_weighted_sample_blobs_queue: producers
    enqueue num_blobs blobs into each queue, one consumer reads
    ``WeightedSampleDequeueBlobs(queues, num_blobs + 1, table_idx_blob=t)``
    for t in [-1, num_blobs) until the status says a queue is exhausted."""
    num_queues, num_iter, capacity = 3, 6, 2
    init_net = core.Net("init_net")
    queues = [init_net.CreateBlobsQueue([], 1, capacity=capacity, num_blobs=num_blobs)
              for _ in range(num_queues)]
    producer_steps, producer_exit_nets = [], []
    for i in range(num_queues):
        name = "producer_%d" % i
        net = core.Net(name)
        blobs = [net.ConstantFill([], 1, value=1.0, run_once=False) for _ in range(num_blobs)]
        status = net.NextName()
        net.SafeEnqueueBlobs([queues[i]] + blobs, blobs + [status])
        exit_net = core.Net("producer_exit_%d" % i)
        exit_net.CloseBlobsQueue(queues[i], 0)
        producer_exit_nets.append(exit_net)
        producer_steps.append(core.execution_step(name, [
            core.execution_step("producer_%d" % i, [net], num_iter=num_iter),
            core.execution_step("producer_exit_%d" % i, [exit_net])]))
    producer_step = core.execution_step("producer", [
        core.execution_step("producers", producer_steps, concurrent_substeps=True)])
    status_lst = []

    def append(ins, outs):
        status_lst.append(bool(ins[0].data))

    consumer_net = core.Net("weight_sample_dequeue_net")
    blobs = consumer_net.WeightedSampleDequeueBlobs(
        queues, num_blobs + 1, weights=np.random.uniform(low=0.1, high=1.0, size=(num_queues,)),
        table_idx_blob=table_idx_blob)
    status = blobs[-1]
    consumer_net.Python(append)(status)
    # Caffe2 reruns the producers' own exit nets here; fastpipe refuses to run
    # one net in two threads at once (a producer may be closing its queue at
    # the same moment), so the consumer closes the queues with nets of its own
    consumer_exit_nets = []
    for i in range(num_queues):
        close_net = core.Net("consumer_exit_%d" % i)
        close_net.CloseBlobsQueue(queues[i], 0)
        consumer_exit_nets.append(close_net)
    consumer_step = core.execution_step("consumer", [
        core.execution_step("consumer", [consumer_net], should_stop_blob=status),
        core.execution_step("producer_exit", consumer_exit_nets)])
    plan = core.Plan("test")
    plan.AddStep(core.execution_step("init", init_net))
    plan.AddStep(core.execution_step("worker", [producer_step, consumer_step],
                                     concurrent_substeps=True))
    ws = workspace.C.Workspace()
    ws.run(plan)
    assert num_iter + 1 <= len(status_lst) <= num_iter * num_queues + 1
    assert status_lst[-1] and not any(status_lst[:-1])


@pytest.mark.parametrize("table_idx_blob", [0, 1])
def test_table_index_overwrites_its_column_in_caffe2_form(ws, table_idx_blob):
    # outputs = queue blobs + status: every output takes a record column, then
    # output t holds the queue's index (int32[1]), as Caffe2's op does
    _filled_queues(ws, 3, 2, records=1)
    net = core.Net("wsd_caffe2_form")
    net.WeightedSampleDequeueBlobs(["wq0", "wq1", "wq2"], ["o0", "o1", "st"],
                                   weights=[0.0, 0.0, 1.0], table_idx_blob=table_idx_blob)
    ws.run(net)
    idx = ws.blobs["o%d" % table_idx_blob].fetch()
    assert idx.dtype == np.int32 and idx.tolist() == [2]
    other = 1 - table_idx_blob
    assert ws.blobs["o%d" % other].fetch().tolist() == [20.0 + other]
    assert not ws.blobs["st"].fetch()


@pytest.mark.parametrize("table_idx_blob", [0, 1])
def test_table_index_as_an_extra_output_is_not_a_data_output(ws, table_idx_blob):
    # one more output than the queue has blobs: the index output takes no column
    _filled_queues(ws, 2, 1, records=2)
    outs = ["d", "d"]
    outs[table_idx_blob] = "idx"
    net = core.Net("wsd_extra_form")
    net.WeightedSampleDequeueBlobs(["wq0", "wq1"], outs + ["st"], weights=[0.0, 1.0],
                                   table_idx_blob=table_idx_blob)
    ws.run(net)
    assert ws.blobs["idx"].fetch().tolist() == [1]
    assert ws.blobs["d"].fetch().tolist() == [10.0]
    ws.run(net)
    ws.run(net)       # wq1 exhausted: status true, the reader stops
    assert bool(ws.blobs["st"].fetch())


def test_table_index_output_count_errors_name_queue_and_argument(ws):
    _filled_queues(ws, 1, 2, records=1)
    net = core.Net("wsd_bad_count")
    net.WeightedSampleDequeueBlobs(["wq0"], ["a", "b", "c", "d", "st"], table_idx_blob=0)
    with pytest.raises(FastpipeError, match="queue 'wq0' holds 2 blobs per record; with "
                       "table_idx_blob=0 the op needs 2 data outputs .* or 3 .* has 4"):
        ws.run(net)
    with pytest.raises(OperatorDefError, match="WeightedSampleDequeueBlobs.*table_idx_blob=2 "
                       "must name one of the 2 outputs before the status"):
        core.Net("wsd_bad_idx").WeightedSampleDequeueBlobs(
            ["wq0"], ["a", "b", "st"], table_idx_blob=2)


# -- 3. Dataset.trim / TrimDataset -------------------------------------------------

from fastpipe import schema  # noqa: E402
from fastpipe.dataset import Dataset  # noqa: E402
from fastpipe.errors import GraphError  # noqa: E402


def _caffe2_dataset_schema():
    # the schema of Caffe2's dataset_ops_test.test_dataset_ops
    return schema.Struct(
        ("dense", schema.Scalar((np.float32, 3))),
        ("floats", schema.Map(schema.Scalar(np.int32), schema.Scalar(np.float32))),
        ("int_lists", schema.Map(schema.Scalar(np.int32),
                                 schema.List(schema.Scalar(np.int64)))),
        ("text", schema.Scalar(str)))


CAFFE2_CONTENTS = [
    np.array([[1.1, 1.2, 1.3], [2.1, 2.2, 2.3], [3.1, 3.2, 3.3]], np.float32),  # dense
    np.array([1, 2, 3], np.int32),                                 # floats:lengths
    np.array([11, 21, 22, 31, 32, 33], np.int32),                  # floats:values:keys
    np.array([1.1, 2.1, 2.2, 3.1, 3.2, 3.3], np.float32),          # floats:values:values
    np.array([2, 0, 1], np.int32),                                 # int_lists:lengths
    np.array([11, 12, 31], np.int32),                              # int_lists:values:keys
    np.array([2, 4, 3], np.int32),                                 # ...:values:lengths
    np.array([111, 112, 121, 122, 123, 124, 311, 312, 313], np.int64),
    np.array([b"text1", b"text2", b"text3"], object),              # text
]


def _fed_dataset(ws, name, contents):
    ds = Dataset(_caffe2_dataset_schema(), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):
        ds.init_empty(init)
    ws.run(init)
    for blob, value in zip(ds.get_blobs(), contents):
        ws.blobs[str(blob)].feed(value)
    return ds


def _fetch_all(ws, ds):
    return [ws.blobs[str(b)].fetch() for b in ds.get_blobs()]


def _reference_trim(contents, multiple_of):
    """Trim by walking the nesting in numpy (independent of the kernel)."""
    (dense, f_len, f_keys, f_vals, l_len, l_keys, v_len, v_vals, text) = contents
    n = len(dense)
    keep = n // multiple_of * multiple_of
    if keep == n:
        return contents
    f_rows = int(f_len[:keep].sum())
    l_rows = int(l_len[:keep].sum())
    v_rows = int(v_len[:l_rows].sum())
    return [dense[:keep], f_len[:keep], f_keys[:f_rows], f_vals[:f_rows], l_len[:keep],
            l_keys[:l_rows], v_len[:l_rows], v_vals[:v_rows], text[:keep]]


def _assert_contents_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.dtype == object:
            assert [bytes(x) for x in g.tolist()] == [bytes(x) for x in w.tolist()]
        else:
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


def test_trim_caffe2_dataset_keeps_nested_fields_consistent(ws):
    ds = _fed_dataset(ws, "trim_c2", CAFFE2_CONTENTS)
    net = core.Net("trim_c2_net")
    ds.trim(net, multiple_of=2)
    op = net.Proto().op[-1]
    assert op.type == "TrimDataset" and list(op.input) == list(op.output)
    ws.run(net)
    got = _fetch_all(ws, ds)
    # two records kept: floats has 1 + 2 entries, int_lists 2 + 0 with 2 + 4 values
    assert got[0].shape == (2, 3)
    assert got[2].tolist() == [11, 21, 22]
    assert got[5].tolist() == [11, 12] and got[6].tolist() == [2, 4]
    assert got[7].tolist() == [111, 112, 121, 122, 123, 124]
    _assert_contents_equal(got, _reference_trim(CAFFE2_CONTENTS, 2))
    # the trimmed dataset is consistent: the consistency check passes and a
    # reader reads exactly the kept records
    check = core.Net("trim_c2_check")
    check.CheckDatasetConsistency(ds.get_blobs(), [], fields=ds.field_names())
    ws.run(check)


@pytest.mark.parametrize("multiple_of", [1, 2, 3, 4, 7])
def test_trim_matches_a_reference_on_random_nested_data(ws, multiple_of):
    rng = np.random.RandomState(multiple_of)
    n = 23
    f_len = rng.randint(0, 4, n).astype(np.int32)
    l_len = rng.randint(0, 3, n).astype(np.int32)
    v_len = rng.randint(0, 5, int(l_len.sum())).astype(np.int32)
    contents = [
        rng.rand(n, 3).astype(np.float32), f_len,
        np.arange(f_len.sum(), dtype=np.int32), rng.rand(f_len.sum()).astype(np.float32),
        l_len, np.arange(l_len.sum(), dtype=np.int32), v_len,
        np.arange(v_len.sum(), dtype=np.int64),
        np.array([("t%d" % i).encode() for i in range(n)], object)]
    ds = _fed_dataset(ws, "trim_rand_%d" % multiple_of, contents)
    net = core.Net("trim_rand_net")
    ds.trim(net, multiple_of)
    ws.run(net)
    got = _fetch_all(ws, ds)
    assert len(got[0]) == n // multiple_of * multiple_of
    _assert_contents_equal(got, _reference_trim(contents, multiple_of))
    ws.run(net)      # trimming again changes nothing
    _assert_contents_equal(_fetch_all(ws, ds), _reference_trim(contents, multiple_of))


def test_trim_then_read_gives_whole_batches(ws):
    from pipeline_helpers import local_session, make_dataset, make_empty_dataset
    from fastpipe.pipeline import pipe
    from fastpipe.task import TaskGroup
    src = make_dataset(ws, "trim_src", {"a": list(range(10))})
    trim = core.Net("trim_src_net")
    src.trim(trim, multiple_of=4)
    ws.run(trim)
    dst = make_empty_dataset(ws, "trim_dst", "a")
    with TaskGroup() as tg:
        pipe(src.reader(batch_size=4, enforce_batch_size=True), dst.writer())
    local_session(ws).run(tg)
    assert sorted(ws.blobs[str(dst.get_blobs()[0])].fetch().tolist()) == list(range(8))


def test_trim_leaves_fetched_arrays_and_fed_arrays_intact(ws):
    ds = Dataset(schema.Struct(("a", schema.Scalar(np.int64))), name="trim_views")
    init = core.Net("trim_views_init")
    with core.NameScope("trim_views"):
        ds.init_empty(init)
    ws.run(init)
    blob = str(ds.get_blobs()[0])
    fed = np.arange(5, dtype=np.int64)
    ws.blobs[blob].feed(fed)
    before = ws.blobs[blob].fetch()
    net = core.Net("trim_views_net")
    ds.trim(net, 2)
    ws.run(net)
    assert ws.blobs[blob].fetch().tolist() == [0, 1, 2, 3]
    assert before.tolist() == [0, 1, 2, 3, 4] and fed.tolist() == [0, 1, 2, 3, 4]


def test_trim_errors_name_the_op_and_argument(ws):
    ds = Dataset(["x", "y:lengths", "y:values"], name="trim_bad")
    with pytest.raises(GraphError, match="trim_bad.*init_empty"):
        ds.trim(core.Net("trim_bad_net"), 2)
    with pytest.raises(OperatorDefError, match="TrimDataset.*multiple_of=0 must be >= 1"):
        core.Net("t0").TrimDataset(["x"], ["x"], fields=["x"], multiple_of=0)
    with pytest.raises(OperatorDefError, match="TrimDataset.*must be the same blob as input 0"):
        core.Net("t1").TrimDataset(["x"], ["y"], fields=["x"], multiple_of=2)
    with pytest.raises(OperatorDefError, match="TrimDataset.*fields has 1 names for 2 inputs"):
        core.Net("t2").TrimDataset(["x", "z"], ["x", "z"], fields=["x"], multiple_of=2)
    # lengths that point past the values: a run-time error naming the field
    ws.feed_blob("x", np.arange(3, dtype=np.int64))
    ws.feed_blob("y:lengths", np.array([2, 5, 1], np.int32))
    ws.feed_blob("y:values", np.arange(4, dtype=np.int64))
    net = core.Net("t3")
    net.TrimDataset(["x", "y:lengths", "y:values"], ["x", "y:lengths", "y:values"],
                    fields=["x", "y:lengths", "y:values"], multiple_of=2)
    with pytest.raises(FastpipeError, match="TrimDataset.*Inconsistent field length.*y:lengths"):
        ws.run(net)
    ws.feed_blob("y:lengths", np.array([2, 1, 1], np.float32))
    with pytest.raises(FastpipeError, match="TrimDataset.*lengths field 1 .*expected int32"):
        ws.run(net)
