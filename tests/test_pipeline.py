"""Tests of fastpipe.pipeline: graph shape (no runtime) and runtime
behaviour (needs fastpipe.workspace)."""

import functools
import sys

import numpy as np
import pytest

from fastpipe import core, schema
from fastpipe.dataio import CountUntil, Reader
from fastpipe.errors import GraphError
from fastpipe.net_builder import NetBuilder, ops
from fastpipe.pipeline import (NetProcessor, Output, ProcessingReader,
                               normalize_processor_output, pipe,
                               pipe_and_output, processor_name)
from fastpipe.queue_util import Queue
from fastpipe.task import TaskGroup

from pipeline_helpers import (double_processor, make_dataset,
                              make_empty_dataset, sorted_column)
from pipeline_helpers import local_session as _session


# --- graph only ---------------------------------------------------------------


def _count_ops(tg):
    task = tg.to_task()
    plan = core.Plan("count")
    plan.AddStep(task.get_step())
    return sum(len(n.op) for n in plan.Proto().network)


def test_runtime_threads_build_cost_is_independent_of_instances():
    sizes = []
    for n in (1, 1000):
        with TaskGroup() as tg:
            pipe(CountUntil(10), processor=double_processor, num_runtime_threads=n)
        sizes.append(_count_ops(tg))
    assert sizes[0] == sizes[1]


def test_static_threads_build_cost_grows():
    sizes = []
    for n in (2, 4):
        with TaskGroup() as tg:
            pipe(CountUntil(10), processor=double_processor, num_threads=n)
        sizes.append(_count_ops(tg))
    assert sizes[1] > sizes[0]


def test_runtime_pipe_shape():
    with TaskGroup() as tg:
        q = pipe(CountUntil(3), num_runtime_threads=5, name="shape")
    assert isinstance(q, Queue)
    (task,) = tg.tasks()
    assert task.name == "local/shape"
    step = task.get_step()
    par = [s for s in step.Substeps() if s.Name() == "%s:parallel"]
    assert len(par) == 1 and par[0].Proto().num_concurrent_instances == 5
    (inst,) = par[0].Substeps()
    init_step = inst.Substeps()[0]
    status_resets = [op for n in init_step.Nets() for op in n.Proto().op
                     if op.type == "ConstantFill"
                     and [a.i for a in op.arg if a.name == "dtype"] == [core.DataType.BOOL]]
    assert status_resets, "instance init must reset status to false"
    plan = core.Plan("shape_plan")
    plan.AddStep(step)
    types = [op.type for n in plan.Proto().network for op in n.op]
    assert "TimerBegin" in types and "TimerEnd" in types


def test_pipe_zero_threads_returns_reader_and_rejects_output():
    with TaskGroup() as tg:
        r = pipe(CountUntil(3), num_threads=0, processor=double_processor)
        assert isinstance(r, ProcessingReader)
        r2 = pipe(CountUntil(3), num_runtime_threads=0)
        assert isinstance(r2, Reader)
        with pytest.raises(GraphError):
            pipe(CountUntil(3), Queue(3), num_threads=0)
    assert tg.num_registered_tasks() == 0


def test_pipe_argument_errors():
    with TaskGroup():
        with pytest.raises(GraphError):
            pipe(CountUntil(3), num_threads=2, num_runtime_threads=2)
        with pytest.raises(ValueError):
            pipe(object())
        with pytest.raises(ValueError):
            pipe(CountUntil(3), output=object())
        with pytest.raises(GraphError):
            pipe_and_output(CountUntil(3), num_threads=0)


def test_pipe_names():
    def my_fun(rec):
        return rec
    with TaskGroup() as tg:
        pipe(CountUntil(3), processor=my_fun)
        q = Queue(3)
        pipe(CountUntil(3), q)
        pipe(CountUntil(3))
    names = [t.name for t in tg.tasks()]
    # the output queue's blob name (Caffe2: the class name, "Queue")
    assert names == ["local/test_pipe_names.<locals>.my_fun", "local/pipe_into:queue_1",
                     "local/pipe_from:ReaderWithLimit"]
    # a function's qualified name, never Caffe2's bare 'function'; a lambda
    # says where it was written
    assert processor_name(my_fun) == "test_pipe_names.<locals>.my_fun"
    line = sys._getframe().f_lineno + 1
    assert processor_name(lambda rec: rec) == "<lambda> at test_pipeline.py:%d" % line
    assert processor_name(functools.partial(my_fun)) == "test_pipe_names.<locals>.my_fun"
    assert processor_name(Queue(3, name="tokens")) == "tokens"


def test_output_needs_builder_and_exclusive_nets():
    with pytest.raises(GraphError):
        Output()
    with NetBuilder():
        ops.Const(1)
        with pytest.raises(GraphError):
            Output(nets=[core.Net("x")])
    with NetBuilder():
        out = Output(record=[core.BlobReference("a")])
        assert out.record.field_names() == ["field_0"]


def test_normalize_processor_output_shapes():
    rec = schema.Struct(("a", schema.Scalar(np.int64, core.BlobReference("ba"))))
    stop = core.BlobReference("stop")
    net = core.Net("n")
    with NetBuilder():
        assert normalize_processor_output(rec).record is rec
        o = normalize_processor_output((rec, stop))
        assert o.record is rec and o.should_stop is stop
    with NetBuilder():
        o = normalize_processor_output(([net], rec, stop))
        assert o.nets == [net] and o.should_stop is stop
    with NetBuilder():
        o = normalize_processor_output(net)
        assert o.nets == [net] and o.record is None
    with NetBuilder():
        same = Output(record=rec)
        assert normalize_processor_output(same) is same


def test_net_processor_frozen_after_setup():
    net = core.Net("proc_net")
    net.set_input_record(schema.Struct(("x", schema.Scalar(np.int64))))
    x = net.input_record().x()
    net.set_output_record(schema.Struct(("y", schema.Scalar(np.int64, net.Add([x, x])))))
    proc = NetProcessor(net)
    assert proc.name == str(net)
    proc.setup(None)
    with NetBuilder():
        with pytest.raises(GraphError):
            proc(schema.Struct(("x", schema.Scalar(np.int64, core.BlobReference("bx")))))
    with pytest.raises(GraphError):
        NetProcessor("not a net")


# --- runtime ------------------------------------------------------------------




N_RECORDS = 200


def _run_double(ws, tag, **pipe_kwargs):
    src = make_dataset(ws, "src_" + tag, {"x": list(range(N_RECORDS))})
    dst = make_empty_dataset(ws, "dst_" + tag, "x")
    with TaskGroup() as tg:
        q = pipe(src.reader(), processor=double_processor, **pipe_kwargs)
        pipe(q, dst.writer())
    _session(ws).run(tg)
    return sorted_column(ws, dst)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1, 2, 8])
def test_function_processor_runtime_threads(ws, n):
    assert _run_double(ws, "rt%d" % n, num_runtime_threads=n) == [
        2 * i for i in range(N_RECORDS)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 8])
def test_static_and_runtime_threads_give_same_records(ws, n):
    static = _run_double(ws, "st%d" % n, num_threads=n)
    runtime = _run_double(ws, "rn%d" % n, num_runtime_threads=n)
    assert static == runtime == [2 * i for i in range(N_RECORDS)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kwargs", [{"num_runtime_threads": 1},
                                    {"num_runtime_threads": 4},
                                    {"num_threads": 3}],
                         ids=["runtime1", "runtime4", "static3"])
def test_net_processor(ws, kwargs):
    n = sum(kwargs.values()) * (1 if "num_threads" in kwargs else 10)
    net = core.Net("times3")
    net.set_input_record(schema.Struct(("x", schema.Scalar(np.int64))))
    x = net.input_record().x()
    y = net.Add([net.Add([x, x]), x])
    net.set_output_record(schema.Struct(("x", schema.Scalar(np.int64, y))))
    src = make_dataset(ws, "np_src%d" % n, {"x": list(range(50))})
    dst = make_empty_dataset(ws, "np_dst%d" % n, "x")
    with TaskGroup() as tg:
        q = pipe(src.reader(), processor=net, **kwargs)
        pipe(q, dst.writer())
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == [3 * i for i in range(50)]


@pytest.mark.timeout(120)
def test_processor_stop_if_ends_pipe(ws):
    """A processor calling ops.stop_if stops its pipe; the record that
    triggered the stop is not written."""
    src = make_dataset(ws, "stop_src", {"x": list(range(100))})
    dst = make_empty_dataset(ws, "stop_dst", "x")

    def stop_at_10(rec):
        with ops.task_init():
            budget = ops.CreateCounter([], init_count=10)
        ops.stop_if(ops.CountDown([budget]))  # true from the 11th record on
        return rec

    with TaskGroup() as tg:
        pipe(src.reader(), dst.writer(), processor=stop_at_10)
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == list(range(10))


@pytest.mark.timeout(120)
def test_pipe_and_output_fetches_final_outputs(ws):
    src = make_dataset(ws, "out_src", {"x": list(range(30))})
    dst = make_empty_dataset(ws, "out_dst", "x")

    def summing(rec):
        with ops.task_init():
            total = ops.ConstantFill([], shape=[1], value=0, dtype=core.DataType.INT64)
        summing.total = total
        ops.Add([total, rec.field_blobs()[0]], [total])
        return rec

    with TaskGroup() as tg:
        reader = src.reader()
        q, _ = pipe_and_output(reader, processor=summing)
        _, out = pipe_and_output(q, dst.writer(), final_outputs=summing.total)
    _session(ws).run(tg)
    assert int(np.asarray(out.fetch()).sum()) == sum(range(30))
    assert sorted_column(ws, dst) == list(range(30))


@pytest.mark.timeout(120)
def test_lazy_reader_from_zero_threads(ws):
    src = make_dataset(ws, "lazy_src", {"x": list(range(20))})
    dst = make_empty_dataset(ws, "lazy_dst", "x")
    with TaskGroup() as tg:
        reader = pipe(src.reader(), processor=double_processor, num_runtime_threads=0)
        pipe(reader, dst.writer(), num_runtime_threads=3)
    _session(ws).run(tg)
    assert sorted_column(ws, dst) == [2 * i for i in range(20)]


@pytest.mark.timeout(120)
def test_rerun_resets_status(ws):
    """Running the same compiled pipe twice reads everything twice (the
    instance init resets the status left true by the first run)."""
    src = make_dataset(ws, "rerun_src", {"x": list(range(25))})
    dst = make_empty_dataset(ws, "rerun_dst", "x")
    with TaskGroup() as tg:
        pipe(src.reader(), dst.writer(), num_runtime_threads=2)
    session = _session(ws)
    session.run(tg)
    session.run(tg)
    assert sorted_column(ws, dst) == sorted(list(range(25)) * 2)


@pytest.mark.timeout(120)
def test_python_processor(ws):
    seen = []

    def record(inputs, outputs):
        seen.append(int(np.asarray(inputs[0].data).ravel()[0]))

    def proc(rec):
        ops.Python(record)(rec.field_blobs(), [])
        return rec

    src = make_dataset(ws, "py_src", {"x": list(range(15))})
    dst = make_empty_dataset(ws, "py_dst", "x")
    with TaskGroup() as tg:
        pipe(src.reader(), dst.writer(), processor=proc, num_runtime_threads=3)
    _session(ws).run(tg)
    assert sorted(seen) == list(range(15))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 4])
def test_processor_failure_mid_stream_raises_and_does_not_hang(ws, n):
    """A processor failing mid-stream fails the run with one RuntimeError;
    the consumer blocked on the queue is woken (no hang)."""
    def boom(inputs, outputs):
        if int(np.asarray(inputs[0].data).ravel()[0]) == 37:
            raise ValueError("record 37 is cursed")

    def proc(rec):
        ops.Python(boom)(rec.field_blobs(), [])
        return rec

    src = make_dataset(ws, "boom_src%d" % n, {"x": list(range(100))})
    dst = make_empty_dataset(ws, "boom_dst%d" % n, "x")
    with TaskGroup() as tg:
        q = pipe(src.reader(), processor=proc, num_runtime_threads=n, capacity=2)
        pipe(q, dst.writer(), num_runtime_threads=2)
    with pytest.raises(RuntimeError) as info:
        _session(ws).run(tg)
    assert "cursed" in str(info.value) or "cursed" in str(info.value.__cause__)
