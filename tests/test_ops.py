"""Semantics and error messages of the basic operator kernels."""
import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import OperatorDefError, RunError

DT = core.DataType


def run(op_type, inputs=None, outputs=("out",), **args):
    """Feed inputs (name -> array), run one op, return fetched outputs."""
    inputs = inputs or {}
    for name, value in inputs.items():
        workspace.FeedBlob(name, value)
    net = core.Net("t_" + op_type)
    getattr(net, op_type)(list(inputs), list(outputs), **args)
    workspace.RunNetOnce(net)
    res = [workspace.FetchBlob(o) for o in outputs]
    return res[0] if len(res) == 1 else res


# -- fills ---------------------------------------------------------------------

def test_constant_fill_defaults_to_float_scalar():
    out = run("ConstantFill")
    assert out.dtype == np.float32 and out.shape == () and out == 0


def test_constant_fill_shape_value_dtype():
    out = run("ConstantFill", shape=[2, 3], value=4, dtype=DT.INT32)
    assert out.dtype == np.int32 and out.shape == (2, 3) and (out == 4).all()


def test_constant_fill_infers_dtype_from_value():
    assert run("ConstantFill", value=2.5).dtype == np.float32
    assert run("ConstantFill", value=True).dtype == np.int64   # Caffe2: i -> INT64
    out = run("ConstantFill", value=True, dtype=DT.BOOL)
    assert out.dtype == np.bool_ and out.shape == () and bool(out)


def test_constant_fill_string():
    out = run("ConstantFill", shape=[2], value="ab", dtype=DT.STRING)
    assert list(out) == [b"ab", b"ab"]


def test_constant_fill_from_input_and_extra_shape():
    out = run("ConstantFill", {"x": np.zeros((2, 3), np.int64)}, extra_shape=[4], value=1.0)
    assert out.shape == (2, 3, 4)
    out = run("ConstantFill", {"s": np.array([3, 2], np.int64)}, input_as_shape=True, value=1.0)
    assert out.shape == (3, 2)


def test_constant_fill_errors():
    net = core.Net("cf")
    with pytest.raises(ValueError, match="ConstantFill.*'cf'.*'shape'.*input"):
        net.ConstantFill(["x"], "y", shape=[1])
    with pytest.raises(ValueError, match="extra_shape"):
        net.ConstantFill([], "y", extra_shape=[1])
    with pytest.raises(ValueError, match="unknown argument 'bogus'"):
        net.ConstantFill([], "y", bogus=1)
    with pytest.raises(RunError, match="wrong field"):
        run("ConstantFill", value=1.5, dtype=DT.INT32)


@pytest.mark.parametrize("op,values,dtype", [
    ("GivenTensorFill", [1.5, 2.5], np.float32),
    ("GivenTensorDoubleFill", [1.5, 2.5], np.float64),
    ("GivenTensorIntFill", [1, -2], np.int32),
    ("GivenTensorInt64Fill", [1, 2 ** 40], np.int64),
    ("GivenTensorBoolFill", [True, False], np.bool_),
    ("GivenTensorStringFill", ["a", "b"], object),
])
def test_given_tensor_fills(op, values, dtype):
    out = run(op, shape=[2], values=values)
    assert out.dtype == dtype
    expect = [v.encode() for v in values] if dtype is object else values
    assert list(out) == expect


def test_given_fill_count_mismatch():
    with pytest.raises(ValueError, match="shape \\[3\\] has 3 elements but 2 values"):
        core.Net("g").GivenTensorFill([], "y", shape=[3], values=[1.0, 2.0])


def test_const_helper():
    net = core.Net("consts")
    b = net.Const(True)
    a = net.Const(np.array([[1, 2]], np.int32))
    workspace.RunNetOnce(net)
    assert workspace.FetchBlob(b).dtype == np.bool_
    np.testing.assert_array_equal(workspace.FetchBlob(a), [[1, 2]])


# -- copy / logic / comparison ----------------------------------------------------

def test_copy_is_deep():
    x = np.arange(4, dtype=np.float64)
    out = run("Copy", {"x": x})
    np.testing.assert_array_equal(out, x)
    s = run("Copy", {"s": np.array(["p", "q"])})
    assert list(s) == [b"p", b"q"]


@pytest.mark.parametrize("op,fn", [("And", np.logical_and), ("Or", np.logical_or),
                                   ("Xor", np.logical_xor)])
def test_logic_ops(op, fn):
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    np.testing.assert_array_equal(run(op, {"a": a, "b": b}), fn(a, b))


def test_not():
    np.testing.assert_array_equal(run("Not", {"a": np.array([True, False])}), [False, True])
    with pytest.raises(RunError, match="Not.*dtype float32, expected bool"):
        run("Not", {"a": np.ones(2, np.float32)})


@pytest.mark.parametrize("op,fn", [("LT", np.less), ("LE", np.less_equal), ("GT", np.greater),
                                   ("GE", np.greater_equal), ("EQ", np.equal),
                                   ("NE", np.not_equal)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_comparisons(op, fn, dtype):
    a = np.array([1, 2, 3], dtype)
    b = np.array([2, 2, 2], dtype)
    out = run(op, {"a": a, "b": b})
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, fn(a, b))


@pytest.mark.parametrize("op,fn", [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
def test_arithmetic(op, fn, dtype):
    a = np.arange(1, 7, dtype=dtype).reshape(2, 3)
    b = (np.arange(6, dtype=dtype).reshape(2, 3) + 1)
    out = run(op, {"a": a, "b": b})
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, fn(a, b))


def test_div_float_and_int():
    out = run("Div", {"a": np.array([1.0, 3.0], np.float32), "b": np.array([2.0, 2.0], np.float32)})
    np.testing.assert_allclose(out, [0.5, 1.5])
    out = run("Div", {"a": np.array([7, -7], np.int32), "b": np.array([2, 2], np.int32)})
    np.testing.assert_array_equal(out, [3, -3])      # C division truncates
    with pytest.raises(RunError, match="Div.*division by zero"):
        run("Div", {"a": np.array([1], np.int64), "b": np.array([0], np.int64)})


def test_broadcast_rules():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    # scalar
    np.testing.assert_array_equal(run("Add", {"a": a, "b": np.array(1, np.float32)}, broadcast=1), a + 1)
    # suffix
    b = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(run("Mul", {"a": a, "b": b}, broadcast=1), a * b)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(run("Sub", {"a": a, "b": b}, broadcast=1), a - b)
    # axis-anchored block
    b = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(run("Add", {"a": a, "b": b}, broadcast=1, axis=1),
                                  a + b.reshape(1, 3, 1))
    # comparison with broadcast
    np.testing.assert_array_equal(run("GT", {"a": a, "b": np.array(10, np.float32)}, broadcast=1),
                                  a > 10)


def test_broadcast_errors():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(RunError, match="Dimension mismatch.*did you forget to set broadcast=1"):
        run("Add", {"a": a, "b": np.zeros(3, np.float32)})
    with pytest.raises(RunError, match="cannot broadcast"):
        run("Add", {"a": a, "b": np.zeros(2, np.float32)}, broadcast=1)
    with pytest.raises(ValueError, match="'axis' requires broadcast"):
        core.Net("ax").Add(["a", "b"], "c", axis=0)
    with pytest.raises(RunError, match="different dtypes"):
        run("Add", {"a": a, "b": np.zeros((2, 3), np.float64)})
    with pytest.raises(RunError, match="expected int32, int64, float32 or float64"):
        run("Add", {"a": np.zeros(2, np.bool_), "b": np.zeros(2, np.bool_)})


def test_in_place_add():
    workspace.FeedBlob("a", np.array([1, 2], np.int32))
    net = core.Net("inplace")
    net.Add(["a", "a"], "a")
    workspace.RunNetOnce(net)
    np.testing.assert_array_equal(workspace.FetchBlob("a"), [2, 4])


def test_sum_and_scale():
    xs = {"x%d" % i: np.full(3, i + 1, np.float32) for i in range(3)}
    np.testing.assert_array_equal(run("Sum", xs), [6, 6, 6])
    np.testing.assert_array_equal(run("Sum", {"one": np.arange(3)}), [0, 1, 2])
    with pytest.raises(RunError, match="Sum.*input 1.*same dims"):
        run("Sum", {"p": np.ones(3, np.float32), "q": np.ones(4, np.float32)})
    np.testing.assert_allclose(run("Scale", {"x": np.array([1, 2], np.float32)}, scale=0.5), [0.5, 1])
    with pytest.raises(RunError, match="Scale.*expected float32 or float64"):
        run("Scale", {"x": np.array([1, 2], np.int32)}, scale=2.0)


@pytest.mark.parametrize("to,np_to", [(DT.FLOAT, np.float32), (DT.DOUBLE, np.float64),
                                      (DT.INT32, np.int32), (DT.INT64, np.int64),
                                      (DT.BOOL, np.bool_), (DT.UINT8, np.uint8),
                                      (DT.INT8, np.int8), (DT.INT16, np.int16),
                                      (DT.UINT16, np.uint16)])
def test_cast(to, np_to):
    x = np.array([0, 1.7, 3.2, 100], np.float32)
    np.testing.assert_array_equal(run("Cast", {"x": x}, to=to), x.astype(np_to))


def test_cast_by_name_and_errors():
    out = run("Cast", {"x": np.array([1, 0], np.int64)}, to="float")
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="argument 'to' is required"):
        core.Net("c").Cast(["x"], "y")
    with pytest.raises(ValueError, match="unknown data type 'nope'"):
        core.Net("c").Cast(["x"], "y", to="nope")
    with pytest.raises(RunError, match="Cast.*string"):
        run("Cast", {"s": np.array(["1"])}, to=DT.INT32)


def test_is_empty():
    assert bool(run("IsEmpty", {"x": np.zeros((0, 3))})) is True
    out = run("IsEmpty", {"x": np.zeros(1)})
    assert out.shape == () and bool(out) is False


def test_print(capsys):
    run("Print", {"p": np.array([1, 2], np.int32)}, outputs=())
    assert "p: 1,2" in capsys.readouterr().out


# -- counters, mutex, AtomicAppend ------------------------------------------------------

def test_counters():
    net = core.Net("counters")
    net.CreateCounter([], "c", init_count=2)
    net.CountDown("c", "d1")
    net.CountDown("c", "d2")
    net.CountDown("c", "d3")
    net.RetrieveCount("c", "r")
    net.CheckCounterDone("c", "done")
    net.CountUp("c", "prev")
    net.ResetCounter("c", "before_reset", init_count=10)
    net.RetrieveCount("c", "after")
    workspace.RunNetOnce(net)
    f = workspace.FetchBlob
    assert [bool(f("d1")), bool(f("d2")), bool(f("d3"))] == [False, False, True]
    assert int(f("r")) == -1 and f("r").dtype == np.int64 and f("r").shape == ()
    assert bool(f("done"))
    assert int(f("prev")) == -1
    assert int(f("before_reset")) == 0 and int(f("after")) == 10


def test_counter_errors():
    with pytest.raises(ValueError, match="init_count=-1 must be >= 0"):
        core.Net("c").CreateCounter([], "c", init_count=-1)
    workspace.FeedBlob("t", np.zeros(1))
    with pytest.raises(RunError, match="CountUp.*'t'.*is not a counter.*tensor"):
        net = core.Net("cu")
        net.CountUp("t", "x")
        workspace.RunNetOnce(net)


def test_atomic_append_into_empty_tensor_of_another_dtype_copies():
    # Caffe2's dataset writer appends into float32[0] blobs from InitEmptyRecord
    net = core.Net("aa")
    net.CreateMutex([], ["m"])
    net.ConstantFill([], ["a"], shape=[0])
    net.GivenTensorInt64Fill([], ["b"], shape=[2], values=[4, 5])
    net.AtomicAppend(["m", "a", "b"], ["a"])
    workspace.RunNetOnce(net)
    out = workspace.FetchBlob("a")
    assert out.dtype == np.int64 and out.tolist() == [4, 5]


def test_atomic_append():
    workspace.FeedBlob("a", np.array([[1, 2]], np.int32))
    workspace.FeedBlob("b", np.array([[3, 4], [5, 6]], np.int32))
    net = core.Net("append")
    net.CreateMutex([], "m")
    net.AtomicAppend(["m", "a", "b"], ["a"])
    net.AtomicAppend(["m", "a", "b"], ["a"])
    workspace.RunNetOnce(net)
    np.testing.assert_array_equal(workspace.FetchBlob("a"),
                                  [[1, 2], [3, 4], [5, 6], [3, 4], [5, 6]])
    workspace.FeedBlob("bad", np.array([[1, 2, 3]], np.int32))
    net = core.Net("append_bad")
    net.CreateMutex([], "m2")
    net.AtomicAppend(["m2", "a", "bad"], ["a"])
    with pytest.raises(RunError, match="cannot append int32\\[1, 3\\] to int32\\[5, 2\\]"):
        workspace.RunNetOnce(net)


# -- Python op ----------------------------------------------------------------------------

def test_python_op_calling_convention():
    def f(inputs, outputs):
        x = inputs[0].data
        outputs[0].reshape(x.shape)
        outputs[0].data[...] = x * 2 + 1
        outputs[1].feed(np.array(["done"]))
    workspace.FeedBlob("x", np.arange(3, dtype=np.float32))
    net = core.Net("py")
    net.Python(f)(["x"], ["y", "s"])
    workspace.RunNetOnce(net)
    np.testing.assert_array_equal(workspace.FetchBlob("y"), [1, 3, 5])
    assert list(workspace.FetchBlob("s")) == [b"done"]


def test_python_op_view_survives_later_writes():
    kept = []

    def keep(inputs, outputs):
        kept.append(inputs[0].data)
    workspace.FeedBlob("x", np.array([1, 2], np.int64))
    net = core.Net("keepview")
    net.Python(keep)(["x"], [])
    net.ConstantFill([], "x", shape=[2], value=9, dtype=core.DataType.INT64)
    workspace.RunNetOnce(net)
    # the kernel reallocated instead of writing under the Python view
    np.testing.assert_array_equal(kept[0], [1, 2])
    np.testing.assert_array_equal(workspace.FetchBlob("x"), [9, 9])


def test_python_op_factory_called_once_per_op_instance():
    calls = []

    def factory(scale):
        calls.append(scale)

        def f(inputs, outputs):
            outputs[0].feed(inputs[0].data * scale)
        return f
    workspace.FeedBlob("x", np.ones(2, np.float32))
    net = core.Net("factory")
    net.Python((factory, (3,), {}))(["x"], ["y"])
    workspace.CreateNet(net)
    workspace.RunNet(net.Proto().name, 5)
    assert calls == [3]
    np.testing.assert_array_equal(workspace.FetchBlob("y"), [3, 3])


def test_python_op_exception_is_cause():
    def boom(inputs, outputs):
        raise ZeroDivisionError("custom failure")
    net = core.Net("pyfail")
    net.Python(boom)([], [])
    with pytest.raises(RunError, match="Python.*pyfail.*ZeroDivisionError: custom failure") as ei:
        workspace.RunNetOnce(net)
    assert isinstance(ei.value.__cause__, ZeroDivisionError)


def test_unknown_op_is_attribute_error():
    net = core.Net("u")
    assert not hasattr(net, "NoSuchOperator")
    with pytest.raises(AttributeError):
        net.NoSuchOperator([], [])


def test_wrong_arity_and_arg_type():
    net = core.Net("arity")
    with pytest.raises(ValueError, match="Add.*'arity'.*takes exactly 2 inputs, got 1"):
        net.Add(["a"], ["b"])
    with pytest.raises(ValueError, match="CreateBlobsQueue.*'capacity' expects an int"):
        net.CreateBlobsQueue([], "q", capacity="big")
