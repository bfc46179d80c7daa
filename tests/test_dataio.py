"""Tests of fastpipe.dataio readers and writers (runtime tests need
fastpipe.workspace)."""

import numpy as np
import pytest

from fastpipe.errors import FastpipeWarning

from fastpipe import core, schema
from fastpipe.dataio import (CompositeReader, CounterReader, CountUntil, Pipe,
                             PipedReaderBuilder, Reader, ReaderBuilder,
                             ReaderWithLimit, ReaderWithTimeLimit, Writer)
from fastpipe.errors import GraphError
from fastpipe.pipeline import pipe, pipe_and_output
from fastpipe.task import TaskGroup, WorkspaceType

from pipeline_helpers import (make_dataset, make_empty_dataset, fetch_column,
                              sorted_column)
from pipeline_helpers import local_session as _session


# --- graph only ---------------------------------------------------------------


def test_reader_schema_checks():
    with pytest.raises(GraphError):
        Reader().schema()
    with pytest.raises(GraphError):
        Reader(schema="not a field")
    with pytest.raises(NotImplementedError):
        Reader().read(core.Net("r"))
    with pytest.raises(NotImplementedError):
        Reader().reset(core.Net("r"))


def test_counter_reader_setup_is_guarded():
    r = CounterReader()
    assert r.schema().field_names() == ["iter"]
    init, exit_ = core.Net("i"), core.Net("e")
    r.setup_ex(init, exit_)
    r.setup_ex(init, exit_)
    assert [op.type for op in init.Proto().op] == ["CreateCounter", "ConstantFill"]
    nets, stop, fields = r.read_ex(None, None)
    assert [op.type for op in nets[0].Proto().op] == ["CountUp"]
    assert stop == r.should_stop


def test_reader_with_limit_nets():
    limited = ReaderWithLimit(CounterReader(), num_iter=3)
    init, exit_ = core.Net("li"), core.Net("le")
    limited.setup_ex(init, exit_)
    types = [op.type for op in init.Proto().op]
    assert types == ["ConstantFill", "CreateCounter", "ConstantFill", "CreateCounter"]
    nets, stop, _ = limited.read_ex(core.Net("x"), core.Net("y"))
    assert [op.type for op in nets[0].Proto().op] == ["CountDown"]
    assert [op.type for op in nets[-1].Proto().op] == ["Copy", "Or"]
    assert nets[-1].Proto().op[0].output[0] == str(stop)
    with pytest.raises(GraphError):
        ReaderWithLimit(CounterReader(), num_iter=-1)


def test_writer_defaults():
    class W(Writer):
        def write(self, net, fields):
            net.Copy(fields[0], "copied")

    w = W()
    rec = schema.Struct(("a", schema.Scalar(np.int64, core.BlobReference("ba"))))
    nets, stop = w.write_record_ex(rec, core.Net("wi"), core.Net("we"))
    assert w.schema() is rec
    assert str(stop).endswith("dequeue_status")
    assert [op.type for op in nets[0].Proto().op] == ["Copy"]


def test_piped_reader_builder():
    class Builder(ReaderBuilder):
        def schema(self):
            return "s"

        def setup(self, **kw):
            return {"x": kw}

        def new_reader(self, **kw):
            return CounterReader()

    seen = {}

    def piper(reader, **kw):
        seen.update(kw)
        return reader

    pb = PipedReaderBuilder(Builder(), piper)
    assert pb.schema() == "s"
    assert pb.setup(a=1) == {"x": {"a": 1}}
    assert isinstance(pb.new_reader(b=2), CounterReader)
    assert seen == {"b": 2}


def test_pipe_base_counts_and_registers():
    p = Pipe(obj_key="k")
    net = core.Net("pn")
    p._new_writer(schema.Struct(("a", schema.Scalar(np.int64))), net)
    p._new_reader(net)
    assert p.num_writers() == 1 and p.num_readers() == 1
    assert net.get_attributes("k") == [p, p]
    assert p.schema().field_names() == ["a"]


# --- runtime ------------------------------------------------------------------




def _to_rows(rec):
    """int64 scalar -> int64 [1] so a dataset can append it."""
    from fastpipe.net_builder import ops
    with ops.task_init():
        zero = ops.ConstantFill([], shape=[1], value=0, dtype=core.DataType.INT64)
    row = ops.Add([zero, rec.field_blobs()[0]], broadcast=1)
    return schema.Struct(("x", schema.Scalar(np.int64, row)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1, 2, 8])
def test_count_until(ws, n):
    dst = make_empty_dataset(ws, "cu_dst%d" % n, "x")
    with TaskGroup() as tg:
        pipe(CountUntil(57), dst.writer(), processor=_to_rows, num_runtime_threads=n)
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(57))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("limit,expect_finished", [(0, False), (5, False), (30, True)])
def test_reader_with_limit_over_dataset(ws, limit, expect_finished):
    src = make_dataset(ws, "rl_src%d" % limit, {"x": list(range(20))})
    dst = make_empty_dataset(ws, "rl_dst%d" % limit, "x")
    with TaskGroup() as tg:
        limited = ReaderWithLimit(src.reader(), num_iter=limit)
        _, finished = pipe_and_output(limited, dst.writer(), num_runtime_threads=2,
                                      final_outputs=limited.data_finished())
    _session(ws).run(tg)
    got = sorted_column(ws, dst)
    assert len(got) == min(limit, 20)
    assert len(set(got)) == len(got)
    assert bool(finished.fetch()) is expect_finished


@pytest.mark.timeout(120)
def test_reader_with_limit_none_is_unlimited_and_global_data_finished(ws):
    src = make_dataset(ws, "rn_src", {"x": list(range(12))})
    dst = make_empty_dataset(ws, "rn_dst", "x")
    with TaskGroup(workspace_type=WorkspaceType.GLOBAL) as tg:
        limited = ReaderWithLimit(src.reader(), num_iter=None)
        pipe(limited, dst.writer())
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(12))
    # GLOBAL: the task_init blob lives in the session workspace
    assert bool(ws.blobs[str(limited.data_finished())].fetch())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("duration", [0, 3600])
def test_reader_with_time_limit_long_enough(ws, duration):
    src = make_dataset(ws, "tl_src%d" % duration, {"x": list(range(40))})
    dst = make_empty_dataset(ws, "tl_dst%d" % duration, "x")
    with TaskGroup() as tg:
        limited = ReaderWithTimeLimit(src.reader(), duration=duration)
        _, finished = pipe_and_output(limited, dst.writer(), num_runtime_threads=2,
                                      final_outputs=limited.data_finished())
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(40))
    assert bool(finished.fetch())


@pytest.mark.timeout(120)
def test_reader_with_time_limit_expired_stops_unfinished(ws):
    """A limit of 1 ns has passed by the first read: nothing is read."""
    src = make_dataset(ws, "te_src", {"x": list(range(40))})
    dst = make_empty_dataset(ws, "te_dst", "x")
    with TaskGroup() as tg:
        limited = ReaderWithTimeLimit(src.reader(), duration=1e-9)
        _, finished = pipe_and_output(limited, dst.writer(),
                                      final_outputs=limited.data_finished())
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == []
    assert not bool(finished.fetch())


@pytest.mark.timeout(120)
def test_composite_reader_stops_with_shortest(ws):
    a = make_dataset(ws, "comp_a", {"x": list(range(10))})
    b = make_dataset(ws, "comp_b", {"y": list(range(100, 106))})
    dst = make_empty_dataset(ws, "comp_dst", "x", "y")
    with TaskGroup() as tg:
        reader = CompositeReader(["a", "b"], [a.reader(), b.reader()])
        assert reader.schema().field_names() == ["a:x", "b:y"]
        pipe(reader, dst.writer())
    _session(ws).run(tg)
    xs = fetch_column(ws, dst, 0).tolist()
    ys = fetch_column(ws, dst, 1).tolist()
    assert xs == list(range(6))
    assert ys == list(range(100, 106))


@pytest.mark.timeout(120)
def test_reader_execution_step(ws):
    src = make_dataset(ws, "es_src", {"x": list(range(7))})
    dst = make_empty_dataset(ws, "es_dst", "x")
    init = core.Net("es_init")
    reader = src.reader(init_net=init)
    writer = dst.writer(init_net=init)
    ws.run(init)
    step, fields = reader.execution_step("es_read")
    assert step.Proto().should_stop_blob
    assert fields.field_names() == ["x"]
    consume = core.Net("es_consume")
    writer.write(consume, fields.field_blobs())
    step.AddNet(consume)
    ws.run(step)
    assert sorted_column(ws, dst) == list(range(7))


def test_shared_reader_setup_attached_once():
    """A reader passed to two pipes gets its task-level setup (the cursor)
    in the first task only."""
    import fastpipe.dataset as dataset
    ds = dataset.Dataset(schema.Struct(("x", schema.Scalar(np.int64))))
    ds.field_blobs = [core.BlobReference("shared_ds_x")]
    with TaskGroup() as tg:
        reader = ds.reader()
        pipe(reader, num_runtime_threads=2)
        pipe(reader, num_runtime_threads=2)
    creates = [[op for n in t.get_step().Nets() for op in n.Proto().op
                if op.type == "CreateTreeCursor"] for t in tg.tasks()]
    assert [len(c) for c in creates] == [1, 0]


@pytest.mark.timeout(120)
def test_shared_reader_and_writer_at_runtime(ws):
    """One reader and one writer shared by two concurrent pipes (set up in
    an init net run first): every record is read and written once."""
    src = make_dataset(ws, "sh_src", {"x": list(range(60))})
    dst = make_empty_dataset(ws, "sh_dst", "x")
    init = core.Net("sh_init")
    reader = src.reader(init_net=init)
    writer = dst.writer(init_net=init)
    ws.run(init)
    with TaskGroup() as tg:
        pipe(reader, writer, num_runtime_threads=2)
        pipe(reader, writer, num_runtime_threads=3)
    session = _session(ws)
    session.run(tg)
    assert sorted_column(ws, dst) == list(range(60))
    # a second run re-runs the task init nets, but the cursor was made
    # outside them: the data is exhausted, nothing more is written, and
    # fastpipe says so instead of silently reading nothing
    with pytest.warns(FastpipeWarning, match="epoch_reader"):
        session.run(tg)
    assert sorted_column(ws, dst) == list(range(60))


# --- one contract over every reader -------------------------------------------


def _dataset_reader(ws, tag):
    src = make_dataset(ws, "ct_ds_" + tag, {"x": list(range(40))})
    return src.reader(batch_size=3), list(range(40)), None


def _batched_reader(ws, tag):
    src = make_dataset(ws, "ct_b_" + tag, {"x": list(range(40))})
    return src.reader(batch_size=64), list(range(40)), None


def _count_until(ws, tag):
    return CountUntil(40), list(range(40)), _to_rows


def _limited_dataset(ws, tag):
    src = make_dataset(ws, "ct_lim_" + tag, {"x": list(range(40))})
    return ReaderWithLimit(src.reader(), num_iter=25), None, None


def _time_limited(ws, tag):
    src = make_dataset(ws, "ct_tl_" + tag, {"x": list(range(40))})
    return ReaderWithTimeLimit(src.reader(), duration=3600), list(range(40)), None


def _queue_reader(ws, tag):
    src = make_dataset(ws, "ct_q_" + tag, {"x": list(range(40))})
    q = pipe(src.reader(), num_runtime_threads=2, capacity=4)
    return q.reader(), list(range(40)), None


READERS = [_dataset_reader, _batched_reader, _count_until, _limited_dataset,
           _time_limited, _queue_reader]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("factory", READERS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("n", [1, 2, 8])
def test_reader_contract(ws, factory, n):
    """Every reader, read by n runtime instances: each record exactly once
    per run, the pipe ends by itself, and a second run of the same compiled
    group reads everything again (setup re-runs every run)."""
    tag = "%s_%d" % (factory.__name__.strip("_"), n)
    dst = make_empty_dataset(ws, "ct_dst_" + tag, "x")
    with TaskGroup() as tg:
        reader, expected, processor = factory(ws, tag)
        pipe(reader, dst.writer(), processor=processor, num_runtime_threads=n)
    session = _session(ws)
    session.run(tg)
    first = sorted_column(ws, dst)
    if expected is None:  # limited: any 25 distinct records
        assert len(first) == 25 and len(set(first)) == 25
        expected = first
    assert first == expected
    session.run(tg)
    assert sorted_column(ws, dst) == sorted(expected * 2)
