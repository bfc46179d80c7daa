"""Tests of fastpipe.dataset (runtime tests need fastpipe.workspace)."""

import numpy as np
import pytest

from fastpipe import core, schema
from fastpipe.dataset import Dataset
from fastpipe.errors import GraphError
from fastpipe.pipeline import pipe
from fastpipe.task import TaskGroup

from pipeline_helpers import (fetch_column, make_dataset, make_empty_dataset,
                              sorted_column)
from pipeline_helpers import local_session as _session


# --- graph only ---------------------------------------------------------------


def test_dataset_accessors():
    st = schema.Struct(("a", schema.Scalar(np.int64)),
                       ("b", schema.Scalar(np.float32)))
    ds = Dataset(st, name="acc")
    assert ds.field_names() == ["a", "b"]
    assert ds.fields == ["a", "b"]
    assert list(ds.field_types) == [np.dtype(np.int64), np.dtype(np.float32)]
    assert ds.field_types() == ds.field_types
    assert ds.get_blobs() is None
    with pytest.raises(GraphError):
        ds.reader()
    with pytest.raises(GraphError):
        ds.writer()
    init = core.Net("acc_init")
    ds.init_empty(init)
    assert len(ds.get_blobs()) == 2
    assert [op.type for op in init.Proto().op] == ["ConstantFill", "ConstantFill"]
    assert ds.content().field_names() == ["a", "b"]
    assert ds.get_record().field_blobs() == ds.get_blobs()


def test_dataset_from_column_names():
    ds = Dataset(["x", "y:lengths", "y:values"])
    assert ds.field_names() == ["x", "y:lengths", "y:values"]
    with pytest.raises(GraphError):
        Dataset("nope")


def test_reader_ops():
    ds = Dataset(schema.Struct(("a", schema.Scalar(np.int64))), name="ops")
    ds.init_empty(core.Net("ops_init"))
    init = core.Net("reader_init")
    reader = ds.reader(init_net=init, batch_size=4, enforce_batch_size=True)
    assert [op.type for op in init.Proto().op] == ["CreateTreeCursor"]
    read = core.Net("read")
    stop, fields = reader.read(read)
    types = [op.type for op in read.Proto().op]
    assert types == ["ReadNextBatch", "IsEmpty"]
    op = read.Proto().op[0]
    args = {a.name: a.i for a in op.arg if a.name != "fields"}
    assert args == {"batch_size": 4, "enforce_batch_size": 1}
    reset = core.Net("reset")
    reader.reset(reset)
    assert [op.type for op in reset.Proto().op] == ["ResetCursor"]


def test_writer_ops():
    ds = Dataset(schema.Struct(("a", schema.Scalar(np.int64))), name="wops")
    ds.init_empty(core.Net("wops_init"))
    init = core.Net("w_init")
    writer = ds.writer(init_net=init)
    assert [op.type for op in init.Proto().op] == ["CreateMutex"]
    net = core.Net("w")
    writer.write(net, [core.BlobReference("in_a")])
    assert [op.type for op in net.Proto().op] == ["CheckDatasetConsistency",
                                                   "AtomicAppend"]
    with pytest.raises(GraphError):
        writer.write(net, [])


# --- runtime ------------------------------------------------------------------




@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("n", [1, 4])
def test_round_trip_in_batches(ws, batch_size, n):
    tag = "rt_%d_%d" % (batch_size, n)
    src = make_dataset(ws, "src_" + tag, {"a": list(range(50)),
                                          "b": list(range(1000, 1050))})
    dst = make_empty_dataset(ws, "dst_" + tag, "a", "b")
    with TaskGroup() as tg:
        pipe(src.reader(batch_size=batch_size), dst.writer(), num_runtime_threads=n)
    _session(ws).run(tg)
    a = fetch_column(ws, dst, 0)
    b = fetch_column(ws, dst, 1)
    assert sorted(a.tolist()) == list(range(50))
    # rows stay together
    assert (b - a).tolist() == [1000] * 50


@pytest.mark.timeout(120)
def test_enforce_batch_size_drops_tail(ws):
    src = make_dataset(ws, "enf_src", {"a": list(range(10))})
    dst = make_empty_dataset(ws, "enf_dst", "a")
    with TaskGroup() as tg:
        pipe(src.reader(batch_size=4, enforce_batch_size=True), dst.writer())
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(8))


@pytest.mark.timeout(120)
def test_random_reader_reads_a_permutation(ws):
    src = make_dataset(ws, "rnd_src", {"a": list(range(30))})
    dst = make_empty_dataset(ws, "rnd_dst", "a")
    init = core.Net("rnd_init")
    reader = src.random_reader(init_net=init, batch_size=4)
    reader.sort_and_shuffle(init, shuffle_size=1, batch_size=4)
    reader.computeoffset(init)
    ws.run(init)
    with TaskGroup() as tg:
        pipe(reader, dst.writer(), num_runtime_threads=2)
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(30))


def test_random_reader_requires_indices_and_offsets():
    ds = Dataset(schema.Struct(("a", schema.Scalar(np.int64))), name="rr")
    ds.init_empty(core.Net("rr_init"))
    reader = ds.random_reader(init_net=core.Net("rr_i2"))
    with pytest.raises(GraphError):
        reader.read(core.Net("rr_read"))


class _FakeFrame(object):
    """The two DataFrame features init_from_dataframe uses."""

    def __init__(self, columns):
        self._cols = columns
        self.columns = list(range(len(columns)))
        self.iloc = self

    def __getitem__(self, key):
        return np.asarray(self._cols[key[1]])


@pytest.mark.timeout(60)
def test_init_from_dataframe(ws):
    from fastpipe import workspace
    ds = Dataset(["a", "b"], name="df")
    net = core.Net("df_net")
    ds.init_from_dataframe(net, _FakeFrame([[1, 2, 3], [4, 5, 6]]))
    blobs = ds.get_blobs()
    assert [str(b) for b in blobs] == list(net.Proto().external_input)
    assert workspace.FetchBlob(str(blobs[1])).tolist() == [4, 5, 6]
    with pytest.raises(GraphError):
        ds.init_from_dataframe(net, _FakeFrame([[1]]))
