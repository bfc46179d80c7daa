"""Data ops (fastpipe/_core/dataops.pxi) against numpy: BooleanMask, Gather,
Concat, Split, Reshape, Slice, ExpandDims, Squeeze, Transpose, Clip,
UniformFill, GaussianFill -- values, dtypes, errors, in-place use, seeded
fills, and a filter in a real pipe."""

import numpy as np
import pytest

from fastpipe import core, schema, workspace
from fastpipe.errors import FastpipeError, OperatorDefError, RunError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.task import TaskGroup

from pipeline_helpers import local_session, make_dataset, make_empty_dataset, sorted_column

DT = core.DataType

NUMERIC = [np.float32, np.float64, np.int32, np.int64, np.int8, np.uint8,
           np.int16, np.uint16, np.bool_]


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


def run_net(net):
    workspace.RunNetOnce(net)


def sample(dtype, shape, seed=0):
    rng = np.random.RandomState(seed)
    if dtype is object:
        flat = np.array([("s%d" % v).encode() for v in rng.randint(0, 1000, int(np.prod(shape)))],
                        dtype=object)
        return flat.reshape(shape)
    if dtype is np.bool_:
        return rng.randint(0, 2, shape).astype(np.bool_)
    return (rng.randn(*shape) * 50).astype(dtype)


def strings(shape):
    return sample(object, shape)


def assert_same(got, want):
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# -- BooleanMask -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMERIC + [object])
@pytest.mark.parametrize("shape", [(7,), (6, 3), (5, 2, 4)])
def test_boolean_mask_matches_numpy(dtype, shape):
    data = sample(dtype, shape)
    mask = np.random.RandomState(1).randint(0, 2, shape[0]).astype(bool)
    got, idx = run("BooleanMask", {"d": data, "m": mask}, ("o", "i"))
    assert_same(got, data[mask])
    assert_same(idx, np.nonzero(mask)[0].astype(np.int64))


def test_boolean_mask_all_false_and_all_true():
    data = np.arange(12, dtype=np.int64).reshape(4, 3)
    assert_same(run("BooleanMask", {"d": data, "m": np.zeros(4, bool)}), data[:0])
    assert_same(run("BooleanMask", {"d": data, "m": np.ones(4, bool)}), data)


def test_boolean_mask_in_place():
    data = np.arange(6, dtype=np.float32)
    mask = np.array([1, 0, 1, 1, 0, 0], bool)
    workspace.FeedBlob("d", data)
    workspace.FeedBlob("m", mask)
    net = core.Net("bm_inplace")
    net.BooleanMask(["d", "m"], ["d"])
    run_net(net)
    assert_same(workspace.FetchBlob("d"), data[mask])


def test_boolean_mask_errors():
    with pytest.raises(RunError, match=r"BooleanMask.*mask .*int64\[3\].*dim 0 .*\[4\]|BooleanMask.*dtype int64, expected bool"):
        run("BooleanMask", {"d": np.zeros(4), "m": np.zeros(3, np.int64)})
    with pytest.raises(RunError, match=r"BooleanMask.*mask bool\[3\] does not match dim 0 of data float64\[4\]"):
        run("BooleanMask", {"d": np.zeros(4), "m": np.zeros(3, bool)})
    with pytest.raises(RunError, match=r"BooleanMask.*input 1 \('m'\).*1-D mask"):
        run("BooleanMask", {"d": np.zeros((2, 2)), "m": np.zeros((2, 2), bool)})
    with pytest.raises(OperatorDefError, match="BooleanMask.*takes exactly 2 inputs"):
        core.Net("x").BooleanMask(["d"], ["o"])


# -- Gather ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMERIC + [object])
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_gather_matches_numpy(dtype, idx_dtype):
    data = sample(dtype, (6, 3, 2))
    idx = np.array([[5, 0], [2, 2], [1, 4]], idx_dtype)
    assert_same(run("Gather", {"d": data, "i": idx}), np.take(data, idx, axis=0))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_gather_axis(axis):
    data = sample(np.float32, (4, 5, 3))
    idx = np.array([2, 0, 2], np.int64)
    assert_same(run("Gather", {"d": data, "i": idx}, axis=axis), np.take(data, idx, axis=axis))


def test_gather_wraps_negative_indices_on_axis_0_as_caffe2():
    data = sample(np.float64, (5, 2))
    idx = np.array([-1, 0, -5, 2], np.int64)
    assert_same(run("Gather", {"d": data, "i": idx}), data[idx])
    d3 = sample(np.int32, (2, 4))
    assert_same(run("Gather", {"d": d3, "i": np.array([-1, 1])}, axis=1, wrap_indices=True),
                d3[:, [-1, 1]])


def test_gather_of_an_empty_dim_keeps_the_data_shape():
    # Caffe2 (pytorch#13781): an empty batch gathers to itself
    data = np.zeros((0, 3), np.float32)
    assert run("Gather", {"d": data, "i": np.array([[1, 2]], np.int64)}).shape == (0, 3)


def test_gather_in_place_and_empty_indices():
    data = np.arange(10, dtype=np.int64) * 3
    workspace.FeedBlob("d", data)
    workspace.FeedBlob("i", np.array([9, 1, 1], np.int32))
    net = core.Net("g_inplace")
    net.Gather(["d", "i"], ["d"])
    run_net(net)
    assert_same(workspace.FetchBlob("d"), data[[9, 1, 1]])
    assert_same(run("Gather", {"d": data, "i": np.zeros(0, np.int64)}), data[:0])


def test_gather_errors():
    with pytest.raises(RunError, match=r"Gather.*index 7 \(element 1 of input 1 'i'\) is out of range "
                                       r"for dim 0 of data int64\[5\]"):
        run("Gather", {"d": np.arange(5), "i": np.array([0, 7])})
    with pytest.raises(RunError, match=r"Gather.*index -6 \(element 0"):
        run("Gather", {"d": np.arange(5), "i": np.array([-6])})
    with pytest.raises(RunError, match=r"Gather.*index -1"):
        run("Gather", {"d": np.arange(5), "i": np.array([-1])}, wrap_indices=False)
    with pytest.raises(RunError, match=r"Gather.*index -1 .*for dim 1"):
        run("Gather", {"d": np.zeros((2, 3)), "i": np.array([-1])}, axis=1)
    with pytest.raises(RunError, match=r"Gather.*input 1 \('i'\) has dtype float32, expected int32 or int64"):
        run("Gather", {"d": np.arange(5), "i": np.zeros(1, np.float32)})
    with pytest.raises(RunError, match=r"Gather.*'axis'=3 is out of range for 2 dimension"):
        run("Gather", {"d": np.zeros((2, 2)), "i": np.zeros(1, np.int64)}, axis=3)


# -- Concat / Split ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMERIC + [object])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_matches_numpy(dtype, axis):
    parts = [sample(dtype, s, seed=k) for k, s in
             enumerate([(2, 3, 4), (2, 3, 4), (2, 3, 4)])]
    # vary the concatenated dim
    parts[1] = np.concatenate([parts[1], parts[1]], axis=axis)
    names = {"c%d" % k: p for k, p in enumerate(parts)}
    out, info = run("Concat", names, ("o", "info"), axis=axis)
    assert_same(out, np.concatenate(parts, axis=axis))
    assert_same(info, np.array([p.shape[axis] for p in parts], np.int32))


def test_concat_default_axis_is_1_and_order_nhwc():
    a, b = sample(np.float32, (2, 3, 2, 2)), sample(np.float32, (2, 1, 2, 2), 1)
    assert_same(run("Concat", {"a": a, "b": b}), np.concatenate([a, b], axis=1))
    c, d = sample(np.int32, (1, 2, 2, 3)), sample(np.int32, (1, 2, 2, 1), 1)
    assert_same(run("Concat", {"c": c, "d": d}, order="NHWC"), np.concatenate([c, d], axis=3))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_add_axis_stacks(axis):
    parts = [sample(np.int64, (3, 2), seed=k) for k in range(4)]
    out, info = run("Concat", {"p%d" % k: p for k, p in enumerate(parts)}, ("o", "info"),
                    axis=axis, add_axis=1)
    assert_same(out, np.stack(parts, axis=axis))
    assert_same(info, np.ones(4, np.int32))


def test_concat_output_is_an_input():
    a, b = np.arange(4, dtype=np.float64), np.arange(3, dtype=np.float64)
    workspace.FeedBlob("a", a)
    workspace.FeedBlob("b", b)
    net = core.Net("cc_alias")
    net.Concat(["a", "b", "a"], ["a"], axis=0)
    run_net(net)
    assert_same(workspace.FetchBlob("a"), np.concatenate([a, b, a]))


def test_concat_errors():
    with pytest.raises(RunError, match=r"Concat.*input 1 \('b'\) is float64\[2, 4\], which does not "
                                       r"match input 0 float64\[2, 3\] outside axis 0"):
        run("Concat", {"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}, axis=0)
    with pytest.raises(RunError, match=r"Concat.*input 1 \('b'\) is int64\[2\], expected the dtype"):
        run("Concat", {"a": np.zeros(2), "b": np.zeros(2, np.int64)}, axis=0)
    with pytest.raises(RunError, match=r"Concat.*add_axis=1 needs equal shapes"):
        run("Concat", {"a": np.zeros(2), "b": np.zeros(3)}, axis=0, add_axis=1)
    with pytest.raises(RunError, match=r"Concat.*'axis'=2 is out of range for 2 dimension"):
        run("Concat", {"a": np.zeros((2, 2)), "b": np.zeros((2, 2))}, axis=2)
    with pytest.raises(OperatorDefError, match="Concat.*'axis' or 'order', not both"):
        core.Net("x").Concat(["a", "b"], ["o"], axis=0, order="NHWC")
    with pytest.raises(OperatorDefError, match="Concat.*order='NCWH'"):
        core.Net("x").Concat(["a", "b"], ["o"], order="NCWH")


@pytest.mark.parametrize("dtype", NUMERIC + [object])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_split_matches_numpy(dtype, axis):
    data = sample(dtype, (6, 4, 6))
    sizes = [1, 3, 2] if data.shape[axis] == 6 else [1, 2, 1]
    outs = run("Split", {"d": data}, ("a", "b", "c"), axis=axis, split=sizes)
    for got, want in zip(outs, np.split(data, np.cumsum(sizes)[:-1], axis=axis)):
        assert_same(got, want)


def test_split_even_default_axis_and_second_input():
    data = sample(np.float32, (2, 6, 3))
    for got, want in zip(run("Split", {"d": data}, ("a", "b", "c")), np.split(data, 3, axis=1)):
        assert_same(got, want)
    outs = run("Split", {"d": data, "s": np.array([4, 2], np.int32)}, ("a", "b"), axis=1)
    for got, want in zip(outs, np.split(data, [4], axis=1)):
        assert_same(got, want)


def test_split_add_axis_unstacks_and_round_trips_concat():
    data = sample(np.int64, (3, 4))
    outs = run("Split", {"d": data}, ("a", "b", "c"), axis=0, add_axis=1)
    for k, got in enumerate(outs):
        assert_same(got, data[k])
    # Split inverts Concat through split_info (the second output)
    parts = [sample(np.float32, (n, 2), k) for k, n in enumerate([3, 1, 2])]
    for k, p in enumerate(parts):
        workspace.FeedBlob("p%d" % k, p)
    net = core.Net("rt")
    net.Concat(["p0", "p1", "p2"], ["cat", "info"], axis=0)
    net.Split(["cat", "info"], ["q0", "q1", "q2"], axis=0)
    run_net(net)
    for k, p in enumerate(parts):
        assert_same(workspace.FetchBlob("q%d" % k), p)


def test_split_output_is_the_input():
    data = np.arange(8, dtype=np.int32)
    workspace.FeedBlob("d", data)
    net = core.Net("sp_alias")
    net.Split(["d"], ["d", "e"], axis=0)
    run_net(net)
    assert_same(workspace.FetchBlob("d"), data[:4])
    assert_same(workspace.FetchBlob("e"), data[4:])


def test_split_errors():
    with pytest.raises(RunError, match=r"Split.*split sizes add up to 4 but dim 0 of input 0 float64\[5\] is 5"):
        run("Split", {"d": np.zeros(5)}, ("a", "b"), axis=0, split=[1, 3])
    with pytest.raises(RunError, match=r"Split.*does not split evenly into 2 outputs"):
        run("Split", {"d": np.zeros(5)}, ("a", "b"), axis=0)
    with pytest.raises(RunError, match=r"Split.*input 1 \('s'\) has 3 split sizes for 2 outputs"):
        run("Split", {"d": np.zeros(5), "s": np.array([1, 1, 3], np.int32)}, ("a", "b"), axis=0)
    with pytest.raises(RunError, match=r"Split.*must be 1 with add_axis=1"):
        run("Split", {"d": np.zeros(4)}, ("a", "b"), axis=0, add_axis=1)
    with pytest.raises(OperatorDefError, match="Split.*'split' has 3 sizes for 2 outputs"):
        core.Net("x").Split(["d"], ["a", "b"], split=[1, 2, 3])
    with pytest.raises(OperatorDefError, match="Split.*not both"):
        core.Net("x").Split(["d", "s"], ["a", "b"], split=[1, 2])


# -- Reshape / ExpandDims / Squeeze --------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8, object])
@pytest.mark.parametrize("new,want", [([3, 8], (3, 8)), ([0, -1], (2, 12)), ([-1], (24,)),
                                      ([4, 0, -1], (4, 3, 2)), ([2, 3, 2, 2], (2, 3, 2, 2))])
def test_reshape_matches_numpy(dtype, new, want):
    data = sample(dtype, (2, 3, 4))
    out, old = run("Reshape", {"d": data}, ("o", "old"), shape=new)
    assert_same(out, data.reshape(want))
    assert_same(old, np.array([2, 3, 4], np.int64))


def test_reshape_shape_from_input_and_empty_tensor():
    data = sample(np.float64, (4, 6))
    for dt in (np.int32, np.int64):
        assert_same(run("Reshape", {"d": data, "s": np.array([3, -1], dt)}), data.reshape(3, 8))
    # Caffe2: the -1 of an empty tensor is 0
    assert run("Reshape", {"d": np.zeros((4, 0))}, shape=[0, -1]).shape == (4, 0)


def test_reshape_in_place_leaves_a_fetched_view_alone():
    data = np.arange(6, dtype=np.float32)
    workspace.FeedBlob("d", data)
    net = core.Net("r_inplace")
    net.Copy(["d"], ["x"])
    run_net(net)
    view = workspace.FetchBlob("x")
    net = core.Net("r_inplace2")
    net.Reshape(["x"], ["x", "old"], shape=[2, 3])
    net.Clip(["x"], ["x"], min=2.0)     # writes x in place: must not reach `view`
    run_net(net)
    assert_same(workspace.FetchBlob("x"), np.clip(data, 2.0, None).reshape(2, 3))
    assert_same(view, data)
    assert_same(workspace.FetchBlob("old"), np.array([6], np.int64))


def test_reshape_output_does_not_alias_later_writes():
    """Reshape's output shares the input's buffer; a later in-place write to
    either one must not show through the other."""
    data = np.arange(4, dtype=np.float64)
    workspace.FeedBlob("d", data)
    net = core.Net("r_share")
    net.Copy(["d"], ["x"])
    net.Reshape(["x"], ["y", "old"], shape=[2, 2])
    net.Clip(["y"], ["y"], max=1.0)
    run_net(net)
    assert_same(workspace.FetchBlob("x"), data)
    assert_same(workspace.FetchBlob("y"), np.clip(data, None, 1.0).reshape(2, 2))


def test_reshape_errors():
    with pytest.raises(RunError, match=r"Reshape.*cannot reshape float64\[2, 3\] \(6 elements\) into \[4, 2\]"):
        run("Reshape", {"d": np.zeros((2, 3))}, shape=[4, 2])
    with pytest.raises(RunError, match=r"Reshape.*6 elements are not a multiple of 4"):
        run("Reshape", {"d": np.zeros((2, 3))}, shape=[4, -1])
    with pytest.raises(RunError, match=r"Reshape.*0 \(copy the input's dim\) at position 2"):
        run("Reshape", {"d": np.zeros((2, 3))}, shape=[1, 6, 0])
    with pytest.raises(RunError, match=r"Reshape.*input 1 \('s'\) has dtype float32"):
        run("Reshape", {"d": np.zeros(2), "s": np.array([2], np.float32)})
    with pytest.raises(RunError, match=r"Reshape.*more than one -1"):
        run("Reshape", {"d": np.zeros(2), "s": np.array([-1, -1], np.int64)})
    with pytest.raises(OperatorDefError, match="Reshape.*not both"):
        core.Net("x").Reshape(["d", "s"], ["o"], shape=[2])
    with pytest.raises(OperatorDefError, match="Reshape.*required"):
        core.Net("x").Reshape(["d"], ["o"])
    with pytest.raises(OperatorDefError, match="Reshape.*more than one -1"):
        core.Net("x").Reshape(["d"], ["o"], shape=[-1, -1])


@pytest.mark.parametrize("dtype", [np.float32, np.int16, object])
@pytest.mark.parametrize("dims,want", [([0], (1, 2, 3)), ([1], (2, 1, 3)), ([2], (2, 3, 1)),
                                       ([0, 3], (1, 2, 3, 1)), ([3, 0, 0], (1, 2, 3, 1)),
                                       ([0, 1, 4], (1, 1, 2, 3, 1))])
def test_expand_dims(dtype, dims, want):
    data = sample(dtype, (2, 3))
    assert_same(run("ExpandDims", {"d": data}, dims=dims), data.reshape(want))


@pytest.mark.parametrize("dims,want", [([0], (3, 1, 2)), ([2], (1, 3, 2)), ([0, 2], (3, 2)), ([2, 0, 2], (3, 2))])
def test_squeeze(dims, want):
    data = sample(np.int64, (1, 3, 1, 2))
    assert_same(run("Squeeze", {"d": data}, dims=dims), data.reshape(want))


def test_expand_squeeze_errors():
    with pytest.raises(RunError, match=r"ExpandDims.*dims \[3\] need at least 3 input dimensions"):
        run("ExpandDims", {"d": np.zeros((2, 2))}, dims=[3])
    with pytest.raises(OperatorDefError, match="ExpandDims.*'dims' is required"):
        core.Net("x").ExpandDims(["d"], ["o"])
    with pytest.raises(OperatorDefError, match="Squeeze.*'dims' is required"):
        core.Net("x").Squeeze(["d"], ["o"])
    with pytest.raises(OperatorDefError, match=r"Squeeze.*dims \[-1\] must be >= 0"):
        core.Net("x").Squeeze(["d"], ["o"], dims=[-1])
    with pytest.raises(RunError, match=r"Squeeze.*dimension 1 must be 1 to squeeze it, not 3"):
        run("Squeeze", {"d": np.zeros((1, 3))}, dims=[1])
    with pytest.raises(RunError, match=r"Squeeze.*needs at least 3 dimensions"):
        run("Squeeze", {"d": np.zeros((1, 3))}, dims=[2])


# -- Slice -------------------------------------------------------------------------

def _np_slice(data, starts, ends):
    idx = []
    for k, (s, e) in enumerate(zip(starts, ends)):
        d = data.shape[k]
        s = d + 1 + s if s < 0 else s
        e = d + 1 + e if e < 0 else e
        idx.append(slice(min(s, d), min(e, d)))
    return data[tuple(idx)]


@pytest.mark.parametrize("dtype", NUMERIC + [object])
@pytest.mark.parametrize("starts,ends", [([1], [3]), ([0, 1], [-1, -1]), ([0, 0, 1], [-1, 2, 3]),
                                         ([1, 1, 1], [3, 2, -2]), ([-3], [-1]), ([0], [100]),
                                         ([2, 0], [2, -1])])
def test_slice_matches_caffe2_rules(dtype, starts, ends):
    data = sample(dtype, (4, 3, 4))
    want = _np_slice(data, starts, ends)
    assert_same(run("Slice", {"d": data}, starts=starts, ends=ends), want)
    got = run("Slice", {"d": data, "s": np.array(starts, np.int32), "e": np.array(ends, np.int64)})
    assert_same(got, want)


def test_slice_of_an_empty_dim_is_empty():
    # Caffe2: a dim of size 0 stays 0 whatever starts/ends say
    data = np.zeros((0, 3), np.float32)
    assert run("Slice", {"d": data}, starts=[-5, 1], ends=[7, 2]).shape == (0, 1)


def test_slice_in_place():
    data = np.arange(20, dtype=np.int64).reshape(4, 5)
    workspace.FeedBlob("d", data)
    net = core.Net("sl_inplace")
    net.Slice(["d"], ["d"], starts=[1, 2], ends=[3, -1])
    run_net(net)
    assert_same(workspace.FetchBlob("d"), data[1:3, 2:])


def test_slice_errors():
    with pytest.raises(RunError, match=r"Slice.*start 3 / end 1 of dim 0 are out of range for data "
                                       r"float64\[4\] \(they resolve to \[3, 1\)\)"):
        run("Slice", {"d": np.zeros(4)}, starts=[3], ends=[1])
    with pytest.raises(RunError, match=r"Slice.*start -9"):
        run("Slice", {"d": np.zeros(4)}, starts=[-9], ends=[-1])
    with pytest.raises(RunError, match=r"Slice.*'starts' has 2 entries for data float64\[4\]"):
        run("Slice", {"d": np.zeros(4)}, starts=[0, 0], ends=[1, 1])
    with pytest.raises(RunError, match=r"Slice.*input 1 \('s'\) has dtype float32"):
        run("Slice", {"d": np.zeros(4), "s": np.zeros(1, np.float32), "e": np.ones(1, np.int64)})
    with pytest.raises(OperatorDefError, match="Slice.*required"):
        core.Net("x").Slice(["d"], ["o"], starts=[1])
    with pytest.raises(OperatorDefError, match="Slice.*differ in length"):
        core.Net("x").Slice(["d"], ["o"], starts=[1], ends=[2, 3])
    with pytest.raises(OperatorDefError, match="Slice.*not both"):
        core.Net("x").Slice(["d", "s", "e"], ["o"], starts=[1], ends=[2])


# -- Transpose -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("shape,axes", [((3, 4), None), ((2, 3, 4), [1, 0, 2]), ((2, 3, 4), [2, 0, 1]),
                                        ((2, 3, 4, 5), None), ((2, 1, 3, 2, 2), [4, 2, 0, 3, 1]),
                                        ((5,), [0]), ((0, 3), None)])
def test_transpose_matches_numpy(dtype, shape, axes):
    data = sample(dtype, shape)
    args = {} if axes is None else {"axes": axes}
    assert_same(run("Transpose", {"d": data}, **args), np.transpose(data, axes))


def test_transpose_in_place_and_errors():
    data = sample(np.float32, (3, 5))
    workspace.FeedBlob("d", data)
    net = core.Net("tr_inplace")
    net.Transpose(["d"], ["d"])
    run_net(net)
    assert_same(workspace.FetchBlob("d"), data.T)
    with pytest.raises(OperatorDefError, match=r"Transpose.*axes \[0, 0\] is not a permutation"):
        core.Net("x").Transpose(["d"], ["o"], axes=[0, 0])
    with pytest.raises(RunError, match=r"Transpose.*'axes' has 3 entries, expected one per dimension"):
        run("Transpose", {"d": np.zeros((2, 2))}, axes=[0, 2, 1])
    with pytest.raises(RunError, match=r"Transpose.*dtype string"):
        run("Transpose", {"d": strings((2, 2))})


# -- Clip ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.int8,
                                   np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("lo,hi", [(-10.0, 20.0), (None, 5.5), (-3.5, None), (None, None),
                                   (-1e30, 1e30), (30.0, 10.0)])
def test_clip_matches_numpy(dtype, lo, hi):
    data = sample(dtype, (5, 7))
    args = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    want = data.astype(np.float64)
    if lo is not None:
        want = np.maximum(want, lo)
    if hi is not None:
        want = np.minimum(want, hi)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # integer results: the float bounds rounded inward, then the type's range
        lo_i = None if lo is None else np.clip(np.ceil(lo), info.min, info.max)
        hi_i = None if hi is None else np.clip(np.floor(hi), info.min, info.max)
        want = data.astype(np.float64)
        if lo_i is not None:
            want = np.maximum(want, lo_i)
        if hi_i is not None:
            want = np.minimum(want, hi_i)
    assert_same(run("Clip", {"d": data}, **args), want.astype(dtype))


def test_clip_in_place_reuses_a_private_buffer_but_not_a_pinned_one():
    data = np.linspace(-2, 2, 9).astype(np.float32)
    workspace.FeedBlob("d", data)
    net = core.Net("cl")
    net.Copy(["d"], ["x"])
    run_net(net)
    pinned = workspace.FetchBlob("x")       # a numpy view of x's buffer
    net = core.Net("cl2")
    net.Clip(["x"], ["x"], min=-1.0, max=1.0)
    run_net(net)
    assert_same(workspace.FetchBlob("x"), np.clip(data, -1, 1))
    assert_same(pinned, data)               # the view never saw the write
    assert_same(workspace.FetchBlob("d"), data)   # nor did the fed array


def test_clip_errors():
    with pytest.raises(RunError, match=r"Clip.*input 0 \('d'\) has dtype bool"):
        run("Clip", {"d": np.zeros(2, bool)}, min=0.0)
    with pytest.raises(RunError, match=r"Clip.*dtype string"):
        run("Clip", {"d": strings((2,))}, min=0.0)
    with pytest.raises(RunError, match=r"Clip.*NaN"):
        run("Clip", {"d": np.zeros(2)}, min=float("nan"))


# -- UniformFill / GaussianFill -------------------------------------------------------

def _fill(op_type, **args):
    return run(op_type, **args)


@pytest.mark.parametrize("op_type,args", [("UniformFill", {"min": -2.0, "max": 3.0}),
                                          ("GaussianFill", {"mean": 1.0, "std": 0.5})])
def test_seeded_fills_are_deterministic_and_unseeded_differ(op_type, args):
    a = _fill(op_type, shape=[1000], seed=42, **args)
    b = _fill(op_type, shape=[1000], seed=42, **args)
    c = _fill(op_type, shape=[1000], seed=43, **args)
    assert a.dtype == np.float32 and a.shape == (1000,)
    assert_same(a, b)
    assert not np.array_equal(a, c)
    u1 = _fill(op_type, shape=[1000], **args)
    u2 = _fill(op_type, shape=[1000], **args)
    assert not np.array_equal(u1, u2)


def test_seeded_fill_in_a_loop_is_a_fixed_sequence():
    net = core.Net("loop_fill")
    net.UniformFill([], ["u"], shape=[4], seed=7)
    net.Concat(["acc", "u"], ["acc"], axis=0)

    def collect():
        workspace.FeedBlob("acc", np.zeros(0, np.float32))
        plan = core.Plan("p")
        plan.AddStep(core.execution_step("s", net, num_iter=3))
        workspace.RunPlan(plan)
        return workspace.FetchBlob("acc")

    first, second = collect(), collect()
    assert first.shape == (12,)
    assert_same(first, second)
    assert not np.array_equal(first[:4], first[4:8])    # the stream moves on per run


def test_uniform_fill_range_and_moments():
    u = _fill("UniformFill", shape=[200, 100], min=-2.0, max=3.0, seed=1)
    assert u.shape == (200, 100) and u.min() >= -2.0 and u.max() < 3.0
    assert abs(u.mean() - 0.5) < 0.05 and abs(u.std() - 5 / np.sqrt(12)) < 0.05


def test_uniform_fill_bounds_from_inputs():
    feeds = {"x": np.zeros((300, 2)), "lo": np.array([5.0], np.float32),
             "hi": np.array([6.0], np.float32)}
    u = run("UniformFill", feeds, seed=2)
    assert u.shape == (300, 2) and u.min() >= 5.0 and u.max() < 6.0
    # Caffe2: min > max empties dim 0
    feeds["lo"] = np.array([7.0], np.float32)
    assert run("UniformFill", feeds, seed=2).shape == (0, 2)
    feeds["lo"] = np.array([1.0, 2.0], np.float32)
    with pytest.raises(RunError, match=r"UniformFill.*input 1 \('lo'\) is float32\[2\], expected a "
                                       r"float32 scalar \(the min bound\)"):
        run("UniformFill", feeds)
    with pytest.raises(OperatorDefError, match="UniformFill.*do not also set argument 'min'"):
        core.Net("x").UniformFill(["x", "lo", "hi"], ["o"], min=1.0)
    with pytest.raises(OperatorDefError, match="UniformFill.*takes 0 or 1 input"):
        core.Net("x").UniformFill(["x", "lo"], ["o"])


def test_gaussian_fill_moments():
    g = _fill("GaussianFill", shape=[100001], mean=3.0, std=2.0, seed=5)
    assert g.shape == (100001,)
    assert abs(g.mean() - 3.0) < 0.03 and abs(g.std() - 2.0) < 0.03
    # the odd tail element is drawn too (not left at 0)
    assert g[-1] != 0.0


def test_fill_shape_from_input():
    out = run("UniformFill", {"x": np.zeros((2, 3))}, extra_shape=[4], seed=3)
    assert out.shape == (2, 3, 4)
    out = run("GaussianFill", {"s": np.array([3, 2], np.int32)}, input_as_shape=True, seed=3)
    assert out.shape == (3, 2)


def test_fill_errors():
    with pytest.raises(OperatorDefError, match=r"UniformFill.*min=2.0 must be < max=1.0"):
        core.Net("x").UniformFill([], ["o"], min=2.0, max=1.0)
    with pytest.raises(OperatorDefError, match=r"UniformFill.*min=1.0 must be < max=1.0"):
        core.Net("x").UniformFill([], ["o"], min=1.0, max=1.0)
    with pytest.raises(OperatorDefError, match=r"GaussianFill.*std=0.0 must be > 0"):
        core.Net("x").GaussianFill([], ["o"], std=0.0)
    with pytest.raises(OperatorDefError, match=r"UniformFill.*'shape'.*input"):
        core.Net("x").UniformFill(["s"], ["o"], shape=[2])
    with pytest.raises(RunError, match=r"GaussianFill.*input 0 \('s'\) has dtype float32"):
        run("GaussianFill", {"s": np.zeros(2, np.float32)}, input_as_shape=True)


def test_errors_are_fastpipe_errors():
    with pytest.raises(FastpipeError):
        run("Gather", {"d": np.arange(3), "i": np.array([5])})
    with pytest.raises(FastpipeError):
        core.Net("x").Transpose(["d"], ["o"], axes=[1, 1])


# -- in a real pipe ----------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1, 3])
def test_boolean_mask_filters_batches_in_a_pipe(ws, n):
    """A filter job: batches of a Dataset, masked on x > 100 (GT against a
    broadcast constant), written to another Dataset by runtime instances."""
    values = list(range(0, 400, 3))
    src = make_dataset(ws, "f_src%d" % n, {"x": values})
    dst = make_empty_dataset(ws, "f_dst%d" % n, "x")

    def keep_large(rec):
        x = rec.field_blobs()[0]
        thr = ops.ConstantFill([], value=100, dtype=DT.INT64)
        mask = ops.GT([x, thr], broadcast=1)
        kept = ops.BooleanMask([x, mask])
        return schema.Struct(("x", schema.Scalar(np.int64, kept)))

    with TaskGroup() as tg:
        pipe(src.reader(batch_size=7), dst.writer(), processor=keep_large,
             num_runtime_threads=n)
    local_session(ws).run(tg)
    assert sorted_column(ws, dst) == [v for v in values if v > 100]
