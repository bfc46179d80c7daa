"""Tests of fastpipe.schema (records)."""

import itertools

import numpy as np
import pytest

from fastpipe import core, schema
from fastpipe.core import BlobReference
from fastpipe.errors import GraphError
from fastpipe.schema import List, Map, Metadata, Scalar, Struct

_ids = itertools.count()


def uname(base="n"):
    return "tsc%d_%s" % (next(_ids), base)


def sample():
    return Struct(
        ("a", np.int32),
        ("b", Struct(("c", np.float32), ("d", List(np.int64)))),
        ("e", Scalar(str)),
    )


# --- structure ----------------------------------------------------------------


def test_field_names_types_flatten():
    s = sample()
    assert s.field_names() == ["a", "b:c", "b:d:lengths", "b:d:values", "e"]
    assert s.field_types() == [np.dtype(np.int32), np.dtype(np.float32),
                               np.dtype(np.int32), np.dtype(np.int64), np.dtype(str)]
    assert len(s.all_scalars()) == 5
    assert all(isinstance(x, Scalar) for x in s.all_scalars())
    assert s.field_metadata() == [None] * 5
    assert not s.has_blobs()
    with pytest.raises(GraphError):
        s.field_blobs()
    with pytest.raises(AssertionError):  # Caffe2 asserted
        s.field_blobs()


def test_nested_names_create_and_merge_structs():
    s = Struct(("a", np.int32), ("b:c", np.int32), ("b:d:e", np.float32),
               ("b", Struct(("f", np.int32))))
    assert s.field_names() == ["a", "b:c", "b:d:e", "b:f"]
    assert isinstance(s.b, Struct) and isinstance(s.b.d, Struct)
    assert s["b:d:e"].field_types() == [np.dtype(np.float32)]
    assert "b:d" in s and "b:x" not in s and "zz" not in s


def test_struct_errors():
    with pytest.raises(ValueError, match="Duplicate field name"):
        Struct(("a", np.int32), ("a", np.int32))
    with pytest.raises(TypeError):  # merging sub-structs with the same leaf
        Struct(("a:b", np.int32), ("a:b", np.int32))
    with pytest.raises(AssertionError, match="lengths"):
        Struct(("lengths", np.int32))
    with pytest.raises(AssertionError):
        Struct(("", np.int32))
    with pytest.raises(AssertionError):
        Struct(("a", np.int32, 3))


def test_struct_access():
    s = sample()
    assert s.a is s["a"] is s[0]
    assert s["b:c"] is s.b.c
    assert s[1] is s.b
    sub = s[["a", "b:c"]]
    assert isinstance(sub, Struct) and sub.field_names() == ["a", "b:c"]
    assert s[[0, 2]].field_names() == ["a", "e"]
    with pytest.raises(KeyError):
        s["zz"]
    with pytest.raises(AttributeError):
        s.zz
    with pytest.raises(IndexError):
        s[10]
    assert s.get("zz", 5) == 5 and s.get("a", None) is s.a
    assert len(s) == 3
    assert [f for f in s] == [s.a, s.b, s.e]
    assert [name for name, _ in s.get_children()] == ["a", "b", "e"]
    assert not Struct()  # empty Struct is falsy (has __len__), as in Caffe2


def test_struct_is_immutable():
    s = sample()
    with pytest.raises(TypeError):
        s.a = Scalar(np.int32)
    with pytest.raises(TypeError):
        s.new = 1


def test_struct_add_and_sub():
    s1 = Struct(("a", np.int32), ("b", Struct(("c", np.int32))))
    s2 = Struct(("b", Struct(("d", np.float32))), ("e", np.int64))
    merged = s1 + s2
    assert merged.field_names() == ["a", "b:c", "b:d", "e"]
    assert s1.field_names() == ["a", "b:c"]  # unchanged
    with pytest.raises(TypeError):
        s1 + Struct(("a", np.int32))
    assert (merged - s2).field_names() == ["a", "b:c"]
    assert (merged - Struct(("b", Struct(("c", np.int32), ("d", np.float32))))
            ).field_names() == ["a", "e"]
    with pytest.raises(TypeError):
        merged - Struct(("a", Struct(("x", np.int32))))
    assert (merged - Struct(("zz", np.int32))).field_names() == merged.field_names()


def test_equality_ignores_blobs():
    a = Struct(("x", Scalar(np.int32, BlobReference("b1"))))
    b = Struct(("x", Scalar(np.int32, BlobReference("b2"))))
    c = Struct(("x", Scalar(np.int64)))
    assert a == b
    assert a != c
    assert Scalar(np.int32) == Scalar(np.int32)
    assert Scalar(np.int32, metadata=Metadata(categorical_limit=3)) != Scalar(np.int32)
    assert (a == 3) is False
    assert schema.equal_schemas(a, b)
    assert not schema.equal_schemas(a, c)
    assert schema.equal_schemas(a, c, check_field_types=False)


def test_list_and_map():
    lst = List(Struct(("x", np.int32), ("y", np.float32)))
    assert lst.field_names() == ["lengths", "values:x", "values:y"]
    assert lst.x is lst["values:x"]
    assert lst["lengths"] is lst.lengths
    assert lst.lengths.field_types() == [np.dtype(np.int32)]
    with pytest.raises(KeyError):
        lst["nope"]
    plain = List(np.float32)
    assert plain.field_names() == ["lengths", "values"]
    assert plain.value is plain["values"] and plain.items is plain["values"]
    with pytest.raises(AttributeError):
        plain.nope
    m = Map(np.int64, np.float32)
    assert m.field_names() == ["lengths", "values:keys", "values:values"]
    m2 = Map(np.int64, np.float32, keys_name="k", values_name="v")
    assert m2.field_names() == ["lengths", "values:k", "values:v"]
    with pytest.raises(AssertionError):
        List(np.int32, lengths_blob=Struct(("a", np.int32)))
    lw = schema.ListWithEvicted(np.int32)
    assert lw.field_names() == ["lengths", "values", "_evicted_values"]
    assert lw.field_types()[-1] == np.dtype(np.int64)


def test_tuples():
    t = schema.Tuple(np.int32, np.float32)
    assert t.field_names() == ["field_0", "field_1"]
    assert schema.NamedTuple("p", np.int32).field_names() == ["p_0"]
    r = schema.RawTuple(3)
    assert r.field_names() == ["field_0", "field_1", "field_2"]
    assert r.field_types() == [np.dtype(np.void)] * 3
    with pytest.raises(AssertionError):
        schema.RawTuple(-1)


# --- Scalar -------------------------------------------------------------------------


def test_scalar_blob_handling():
    ref = BlobReference("blob")
    s = Scalar(np.float32, ref)
    assert s.get() is ref and s() is ref and s.has_blobs()
    assert s.field_blobs() == [ref]
    with pytest.raises(ValueError, match="ambiguous"):
        Scalar(np.int32, "plain string")
    with pytest.raises(GraphError):
        Scalar(np.int32).get()
    arr = Scalar(np.float32, [1, 2])
    assert isinstance(arr.get(), np.ndarray) and arr.get().dtype == np.float32
    assert Scalar(np.float32, 3).get().shape == (1,)  # 0-d becomes 1-d
    inner = Scalar(np.float32, np.zeros((2, 3)))
    assert inner.dtype == np.dtype((np.float32, (3,)))
    assert Scalar((np.int32, 5)).dtype.shape == (5,)
    assert Scalar((np.int32, 1)).dtype.shape == (1,)
    assert Scalar().dtype == np.dtype(np.void)
    assert Scalar(blob=np.array([1, 2])).dtype == np.dtype(np.void)
    with pytest.raises(GraphError):
        Scalar(blob=[1, 2])  # untyped data must be an ndarray
    with pytest.raises(AssertionError):
        Scalar(np.dtype([("a", np.int32)]))


def test_scalar_set_and_set_value():
    s = Scalar(np.int32)
    s.set_value(BlobReference("x"))
    assert str(s.get()) == "x" and s.dtype == np.dtype(np.int32)
    s.set(np.float32, BlobReference("y"))
    assert s.dtype == np.dtype(np.float32) and str(s.get()) == "y"
    with pytest.raises(AssertionError):
        s.set_value(np.array([1], dtype=np.int64), throw_on_type_mismatch=True)
    s.set_value(np.array([1], dtype=np.float32), throw_on_type_mismatch=True)


def test_metadata():
    m = Metadata(categorical_limit=10)
    assert m.expected_value is None and m.feature_specs is None
    s = Scalar(np.int64, metadata=m)
    assert s.metadata is m
    assert s.field_metadata() == [m]
    with pytest.raises(AssertionError):
        Scalar(np.float32, metadata=m)
    with pytest.raises(AssertionError):
        Scalar(np.int32).set_metadata("nope")
    rec = Struct(("a", np.int32), ("b", np.int64))
    schema.attach_metadata_to_scalars(rec, m)
    assert rec.field_metadata() == [m, m]


def test_clone_and_clone_schema():
    ref = BlobReference("r")
    s = Struct(("a", Scalar(np.int32, ref)))
    c = s.clone()
    assert c is not s and c.a is not s.a
    assert c.field_blobs() == [ref]
    cs = s.clone_schema()
    assert not cs.has_blobs() and cs == s
    assert s.has_blobs()


def test_child_base_id_and_slice():
    s = sample()
    assert s.a.id() == 0
    assert s.b.c.id() == 1
    assert s.b.d.lengths.id() == 2
    assert s["b:d:values"].id() == 3
    assert s.e.id() == 4
    assert s.b.slice() == slice(1, 4)
    assert s.b._child_base_id(1) == 2
    assert s.b.d.slice() == slice(2, 4)


# --- functions --------------------------------------------------------------------------------


def test_as_record():
    s = sample()
    assert schema.as_record(s) is s
    t = schema.as_record([np.int32, (np.float32, np.int64)])
    assert t.field_names() == ["field_0", "field_1:field_0", "field_1:field_1"]
    # a list of (name, field) pairs still becomes a Tuple (Caffe2 quirk), so
    # the str name is taken as an (ambiguous) blob
    with pytest.raises(ValueError, match="ambiguous"):
        schema.as_record([("x", np.int32)])
    pairs = schema.as_record([(BlobReference("x"), np.int32)])
    assert pairs.field_names() == ["field_0:field_0", "field_0:field_1"]
    d = schema.as_record({"x": np.int32, "y": BlobReference("yb")})
    assert d.field_names() == ["x", "y"]
    assert str(d.y.get()) == "yb"
    sc = schema.as_record(BlobReference("b"))
    assert isinstance(sc, Scalar) and str(sc.get()) == "b"


def test_from_blob_list():
    s = sample()
    blobs = [BlobReference("v%d" % i) for i in range(5)]
    rec = schema.from_blob_list(s, blobs)
    assert rec.field_blobs() == blobs
    assert not s.has_blobs()
    assert rec == s
    with pytest.raises(AssertionError, match="5 elements"):
        schema.from_blob_list(s, blobs[:2])
    single = schema.from_blob_list(Scalar(np.int32), BlobReference("one"))
    assert str(single.get()) == "one"
    with pytest.raises(AssertionError):
        schema.from_blob_list("not a field", [])


def test_from_column_list():
    rec = schema.from_column_list(
        ["a:lengths", "a:values", "b:lengths", "b:keys", "b:values", "c:d", "e"],
        col_types=[np.int32, np.float32, np.int32, np.int64, np.float32, np.int32, None])
    assert isinstance(rec.a, List)
    assert isinstance(rec.b, List) and rec.b.field_names() == [
        "lengths", "values:keys", "values:values"]
    assert isinstance(rec.c, Struct)
    assert rec.field_names() == ["a:lengths", "a:values", "b:lengths",
                                 "b:values:keys", "b:values:values", "c:d", "e"]
    assert rec.e.dtype == np.dtype(np.void)
    assert rec["a:values"].dtype == np.dtype(np.float32)
    blobs = [BlobReference(n) for n in ["x", "y"]]
    r2 = schema.from_column_list(["x", "y"], col_blobs=blobs)
    assert r2.field_blobs() == blobs
    with pytest.raises(AssertionError):
        schema.from_column_list(["x"], col_types=[])


def test_from_dtype():
    dt = np.dtype([("a", np.int32), ("b", np.float32, (3,))])
    rec = schema.from_dtype(dt)
    assert rec.field_names() == ["a", "b"]
    assert rec.b.dtype.shape == (3,)
    assert schema.from_dtype(np.int64).field_types() == [np.dtype(np.int64)]


def test_is_schema_subset():
    assert schema.is_schema_subset(Struct(("a", np.int32)), sample())
    assert schema.is_schema_subset(Struct(("a", np.float64)), sample())  # names only
    assert not schema.is_schema_subset(Struct(("zz", np.int32)), sample())


def test_data_type_for_dtype():
    D = core.DataType
    f = schema.data_type_for_dtype
    assert f(np.dtype(np.float32)) == D.FLOAT
    assert f(np.dtype(np.float64)) == D.DOUBLE
    assert f(np.dtype(np.int32)) == D.INT32
    assert f(np.dtype(np.int64)) == D.INT64
    assert f(np.dtype(np.bool_)) == D.BOOL
    assert f(np.dtype(str)) == D.STRING
    assert f(np.dtype(object)) == D.STRING
    assert f(np.dtype((np.int32, (4,)))) == D.INT32
    with pytest.raises(TypeError):
        f(np.dtype(np.void))
    assert schema.dtype_for_core_type(D.INT64) is np.int64


def test_new_record_uses_next_scoped_blob():
    net = core.Net(uname())
    s = Struct(("a", np.int32), ("l", List(np.float32)))
    rec = schema.NewRecord(net, s)
    assert [str(b) for b in rec.field_blobs()] == ["a", "l:lengths", "l:values"]
    rec2 = schema.NewRecord(net, s)
    assert [str(b) for b in rec2.field_blobs()] == [
        "a_auto_0", "l:lengths_auto_0", "l:values_auto_0"]
    with core.NameScope("ns"):
        sc = schema.NewRecord(net, Scalar(np.int32))
    assert str(sc.get()) == "ns/unnamed_scalar"
    assert isinstance(sc, Scalar) and sc.dtype == np.dtype(np.int32)
    with pytest.raises(AssertionError):
        schema.NewRecord(net, "nope")


def test_init_empty_record():
    net = core.Net(uname())
    rec = schema.InitEmptyRecord(net, Struct(
        ("a", np.int32), ("v", Scalar((np.float32, 3))), ("s", str), ("u", Scalar())))
    ops = net.Proto().op
    assert [op.type for op in ops] == ["ConstantFill"] * 4
    args = [{a.name: a for a in op.arg} for op in ops]
    assert args[0]["shape"].ints == [0] and args[0]["dtype"].i == core.DataType.INT32
    assert args[1]["shape"].ints == [0, 3] and args[1]["dtype"].i == core.DataType.FLOAT
    assert args[2]["dtype"].i == core.DataType.STRING
    assert "dtype" not in args[3] and args[3]["shape"].ints == [0]
    assert [list(op.output) for op in ops] == [[str(b)] for b in rec.field_blobs()]
    with pytest.raises(TypeError):
        schema.InitEmptyRecord(core.Net(uname()), Struct(("u", Scalar())),
                               enforce_types=True)
    # an existing record keeps its blobs
    net2 = core.Net(uname())
    given = Struct(("a", Scalar(np.int64, BlobReference("mine"))))
    assert schema.InitEmptyRecord(net2, given) is given
    assert net2.Proto().op[0].output == ["mine"]


def test_const_record():
    net = core.Net(uname())
    arrays = Struct(("a", Scalar(np.int32, np.array([1, 2], dtype=np.int32))),
                    ("b", Scalar(np.float32, np.array([0.5], dtype=np.float32))))
    rec = schema.ConstRecord(net, arrays)
    assert [str(b) for b in rec.field_blobs()] == ["a", "b"]
    assert [op.type for op in net.Proto().op] == ["GivenTensorIntFill", "GivenTensorFill"]


def test_record_used_by_net_input_record():
    net = core.Net(uname())
    rec = net.set_input_record(Struct(("x", np.float32)))
    assert str(rec.x.get()) == str(net) + "/x"


# --- Fetch/Feed (need the runtime) ---------------------------------------------------------


def _workspace():
    try:
        from fastpipe import workspace
        workspace.FeedBlob, workspace.FetchBlob  # noqa: B018
        return workspace
    except (ImportError, AttributeError):
        return None


def test_feed_and_fetch_record():
    ws = _workspace()
    if ws is None:
        pytest.skip("fastpipe.workspace not available")
    rec = Struct(("a", Scalar(np.int32, BlobReference(uname("fa")))),
                 ("l", List(np.float32, lengths_blob=BlobReference(uname("fl")))))
    rec = schema.from_blob_list(rec, [BlobReference(uname(n)) for n in "abc"])
    data = [np.array([1, 2], dtype=np.int32), np.array([1], dtype=np.int32),
            np.array([0.5], dtype=np.float32)]
    schema.FeedRecord(rec, data)
    out = schema.FetchRecord(rec)
    assert out == rec
    for got, want in zip(out.field_blobs(), data):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(AssertionError):
        schema.FeedRecord(rec, data[:1])
    # a record of arrays is accepted too
    schema.FeedRecord(rec, schema.from_blob_list(rec, [d + 1 for d in data]))
    np.testing.assert_array_equal(schema.FetchRecord(rec).a.get(), data[0] + 1)


def test_fetch_record_needs_blob_references():
    rec = Struct(("a", Scalar(np.int32, np.array([1], dtype=np.int32))))
    with pytest.raises(AssertionError):
        schema.FetchRecord(rec)
