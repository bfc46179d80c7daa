"""Graph-only tests of fastpipe.core (no runtime needed)."""

import itertools
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastpipe import _pyop, core, proto, schema
from conftest import join_thread
from fastpipe.errors import GraphError, OperatorDefError



_ids = itertools.count()


def uname(base="n"):
    """A net name nobody in this process has used yet."""
    return "tcg%d_%s" % (next(_ids), base)


def op_types(net):
    return [op.type for op in net.Proto().op]


def arg_map(op):
    return {a.name: a for a in op.arg}


def _net_builder():
    try:
        from fastpipe import net_builder
        return net_builder
    except ImportError:
        return None


# --- naming --------------------------------------------------------------------


def test_net_names_are_process_unique():
    base = uname("dup")
    nets = [core.Net(base) for _ in range(3)]
    assert [str(n) for n in nets] == [base, base + "_1", base + "_2"]
    assert [n.Name() for n in nets] == [str(n) for n in nets]
    # A name that equals an earlier generated one also gets a suffix.
    assert str(core.Net(base + "_1")) == base + "_1_1"
    assert nets[0].Proto().name == base


def test_net_names_are_unique_across_threads():
    base = uname("thr")
    names = []
    lock = threading.Lock()

    def make():
        for _ in range(50):
            n = core.Net(base)
            with lock:
                names.append(str(n))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        join_thread(t)
    assert len(set(names)) == 200


def test_net_name_gets_builder_prefix():
    nb_mod = _net_builder()
    if nb_mod is None or not hasattr(nb_mod, "NetBuilder"):
        pytest.skip("fastpipe.net_builder not available")
    bname = uname("builder")
    with nb_mod.NetBuilder(_fullname=bname):
        net = core.Net("inner")
    assert str(net) == bname + "/inner"


def test_auto_output_names():
    net = core.Net(uname())
    n = str(net)
    a = net.Copy("x")
    b = net.Copy("x")
    assert (str(a), str(b)) == (n + "/Copy", n + "/Copy_2")
    assert isinstance(a, core.BlobReference) and a.Net() is net
    outs = net.ConstantFill([], 1)
    assert str(outs) == n + "/ConstantFill:0"
    multi = net.StatRegistryExport([], 3)
    assert isinstance(multi, tuple)
    assert [str(o) for o in multi] == [n + "/StatRegistryExport:%d" % i for i in range(3)]
    assert net.Print(a, []) is None
    assert net.NextName() == n + "_blob_0"
    assert net.NextName() == n + "_blob_1"
    # NextName de-duplicates only against blobs defined in this net.
    assert net.NextName("Copy") == n + "/Copy_3"
    assert net.NextName("Never") == n + "/Never"
    assert net.NextName("Never") == n + "/Never"


def test_next_blob_never_repeats():
    net = core.Net(uname())
    net.Copy("in", "k")
    assert str(net.NextBlob("k")) == "k_auto_0"  # 'k' is defined
    assert str(net.NextBlob("k")) == "k_auto_1"
    assert str(net.NextBlob("fresh")) == "fresh"
    assert str(net.NextBlob("fresh")) == "fresh_auto_0"
    with core.NameScope("sc"):
        assert str(net.NextScopedBlob("s")) == "sc/s"
        assert str(net.NextScopedBlob("s")) == "sc/s_auto_0"
    assert str(net.NextScopedBlob()) == "unnamed"


# --- NameScope -----------------------------------------------------------------------


def test_namescope_prefixes_string_names_only():
    net = core.Net(uname())
    n = str(net)
    ref = core.BlobReference("plain_ref")
    assert core.CurrentNameScope() == ""
    with core.NameScope("a"):
        assert core.CurrentNameScope() == "a/"
        with core.NameScope("b"):
            assert core.ScopedName("x") == "a/b/x"
            out = net.Copy("in", "out")
            out2 = net.Copy(ref)
            auto = net.Copy(ref)
        with core.NameScope("r", reset=True):
            assert core.ScopedName("x") == "r/x"
        with core.NameScope(None):
            assert core.ScopedName("x") == "a/x"
        assert str(core.ScopedBlobReference("y")) == "a/y"
    assert core.CurrentNameScope() == ""
    assert str(out) == "a/b/out"
    assert net.Proto().op[0].input == ["a/b/in"]
    assert net.Proto().op[1].input == ["plain_ref"]
    assert str(out2) == "a/b/" + n + "/Copy"
    # NextName checks the scoped name, so a second scoped Copy is _2.
    assert str(auto) == "a/b/" + n + "/Copy_2"


def test_namescope_restored_on_error_and_thread_local():
    with pytest.raises(RuntimeError):
        with core.NameScope("boom"):
            raise RuntimeError("x")
    assert core.CurrentNameScope() == ""
    seen = {}
    with core.NameScope("main"):
        t = threading.Thread(target=lambda: seen.setdefault("s", core.CurrentNameScope()))
        t.start()
        join_thread(t)
    assert seen["s"] == ""
    with pytest.raises(GraphError):
        with core.NameScope(3):
            pass


# --- ops, inputs, errors ----------------------------------------------------------------


def test_external_inputs_are_inputs_not_produced_here():
    net = core.Net(uname())
    a = net.Copy("x", "a")
    net.Add([a, "x"], "s")
    net.Add(["y", "y"], "t")
    assert net.Proto().external_input == ["x", "y"]
    assert [str(b) for b in net.external_inputs] == ["x", "y"]
    assert net.BlobIsDefined("a") and net.BlobIsDefined("x")
    assert not net.BlobIsDefined("zzz")
    assert net.UsesBlob("x") and not net.UsesBlob("s")
    assert net.UsedBlobNames() == {"x", "a", "s", "y", "t"}


def test_add_external_input_output():
    net = core.Net(uname())
    ref = net.AddExternalInput("i1")
    assert isinstance(ref, core.BlobReference) and str(ref) == "i1"
    refs = net.AddExternalInputs("i2", core.BlobReference("i3"))
    assert [str(r) for r in refs] == ["i2", "i3"]
    with pytest.raises(GraphError, match="already contains an input named i1"):
        net.AddExternalInput("i1")
    with pytest.raises(AssertionError):
        net.AddExternalInput("i4", "i4")
    assert net.Proto().external_input == ["i1", "i2", "i3"]
    out = net.Copy("i1", "o")
    net.AddExternalOutput(out)
    assert net.Proto().external_output == ["o"]
    assert [str(b) for b in net.external_outputs] == ["o"]
    with pytest.raises(GraphError, match="not defined"):
        net.AddExternalOutput(core.BlobReference("nope"))
    with core.NameScope("sc"):
        assert [str(r) for r in net.AddScopedExternalInputs("z")] == ["sc/z"]


def test_unknown_op_is_attribute_error():
    net = core.Net(uname())
    assert not hasattr(net, "NoSuchOperator")
    assert hasattr(net, "Copy")
    with pytest.raises(AttributeError):
        net.NoSuchOperator(["a"], ["b"])
    assert core.IsOperator("Copy") and not core.IsOperator("NoSuchOperator")
    ref = core.BlobReference("x", net)
    assert not hasattr(ref, "NoSuchOperator")
    with pytest.raises(AttributeError):
        core.BlobReference("x").Copy([])  # no owning net


def test_bad_argument_names_op_arg_and_net_and_leaves_net_unchanged():
    net = core.Net(uname())
    net.Copy("x", "y")
    before = (list(net.Proto().external_input), len(net.Proto().op))
    with pytest.raises(OperatorDefError) as info:
        net.ConstantFill(["newin"], "z", shap=[1])
    msg = str(info.value)
    assert "ConstantFill" in msg and "shap" in msg and str(net) in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="capacity"):
        net.CreateBlobsQueue([], "q", capacity=0)
    with pytest.raises(ValueError, match="outputs"):
        net.Copy("x", ["a", "b"])  # arity
    assert (list(net.Proto().external_input), len(net.Proto().op)) == before
    assert not net.BlobIsDefined("z")


def test_op_kwargs_become_arguments():
    net = core.Net(uname())
    net.Add(["a", "b"], "c", broadcast=1, axis=None)
    op = net.Proto().op[0]
    args = arg_map(op)
    assert set(args) == {"broadcast"} and args["broadcast"].i == 1
    net.Copy("a", "d", name="my_copy", engine="X")
    assert net.Proto().op[1].name == "my_copy"
    assert net.Proto().op[1].engine == "X"


def test_blob_reference_behaviour():
    net = core.Net(uname())
    b = core.BlobReference("x", net)
    assert b == "x" and b == core.BlobReference("x") and b == b"x"
    assert b != "y" and not (b == 3)
    assert hash(b) == hash("x")
    assert {b: 1}["x"] == 1
    assert str(b) == "x" and repr(b) == 'BlobReference("x")'
    assert str(b + "_s") == "x_s" and (b + "_s").Net() is net
    assert str("p/" + b) == "p/x"
    with pytest.raises(TypeError):
        b + 3
    b.meta["k"] = 1
    assert b.meta == {"k": 1}
    assert core.BlobReference(b"bytes") == "bytes"
    out = b.Add("y")
    assert str(out) == str(net) + "/Add"
    assert net.Proto().op[0].input == ["x", "y"]
    assert core.BlobReference("a/b/c").GetNameScope() == "a/b/"
    assert core.BlobReference("a/b/c").GetUnscopedName() == "c"
    with pytest.raises(TypeError):
        net.Copy([3], "o")


def test_const_fill_choice():
    net = core.Net(uname())
    n = str(net)
    t = net.Const(True)
    assert str(t) == n + "/ConstantFill:0"
    op = net.Proto().op[-1]
    assert op.type == "ConstantFill"
    args = arg_map(op)
    assert args["dtype"].i == core.DataType.BOOL and args["value"].i == 1
    assert "shape" not in args

    def last():
        op = net.Proto().op[-1]
        return op.type, arg_map(op)

    net.Const(5)
    typ, args = last()
    assert typ == "GivenTensorInt64Fill"
    assert args["shape"].ints == [] and args["values"].ints == [5]
    net.Const([1.5, 2.5])
    typ, args = last()
    assert typ == "GivenTensorFill" and args["values"].floats == [1.5, 2.5]
    assert args["shape"].ints == [2]
    net.Const(np.array([[1, 2]], dtype=np.int32))
    typ, args = last()
    assert typ == "GivenTensorIntFill" and args["shape"].ints == [1, 2]
    net.Const(["a", "b"])
    typ, args = last()
    assert typ == "GivenTensorStringFill" and args["values"].strings == [b"a", b"b"]
    net.Const([b"x"])
    assert last()[0] == "GivenTensorStringFill"
    net.Const(np.array([True, False]))
    typ, args = last()
    assert typ == "GivenTensorBoolFill" and args["values"].ints == [1, 0]
    net.Const(np.array([1, 2], dtype=np.int16))
    assert last()[0] == "GivenTensorFill"  # anything else: float32
    net.Const(3, dtype=np.int32)
    assert last()[0] == "GivenTensorIntFill"
    out = net.Const(7, blob_out="seven")
    assert str(out) == "seven"


def test_make_argument():
    A = core.MakeArgument
    assert A("b", True).i == 1 and A("b", True).HasField("i")
    assert A("i", 7).i == 7
    assert A("f", 0.5).f == 0.5
    assert A("s", "hé").s == "hé".encode("utf-8")
    assert A("s", b"raw").s == b"raw"
    assert A("np", np.int64(4)).i == 4
    assert A("np", np.float32(0.5)).f == 0.5
    assert A("np", np.bool_(True)).i == 1
    assert A("l", [1, 2]).ints == [1, 2]
    assert A("l", (1, True)).ints == [1, 1]
    assert A("l", [1.0, 2]).floats == [1.0, 2.0]
    assert A("l", ["a", b"b"]).strings == [b"a", b"b"]
    assert A("a", np.array([1, 2], dtype=np.int32)).ints == [1, 2]
    assert A("a", np.array([0.5], dtype=np.float32)).floats == [0.5]
    empty = A("e", [])
    assert empty.ints == [] and empty.floats == [] and empty.strings == []
    nd = proto.NetDef(name="sub")
    arg = A("n", nd)
    assert arg.n.name == "sub" and arg.n is not nd
    with pytest.raises(ValueError):
        A("bad", object())
    with pytest.raises(ValueError):
        A("bad", [1, "a"])


def test_create_operator():
    with core.NameScope("s"):
        op = core.CreateOperator("Copy", "a", core.BlobReference("b"),
                                 name="c", unused=None)
    assert isinstance(op, proto.OperatorDef)
    assert (op.type, op.input, op.output, op.name) == ("Copy", ["s/a"], ["b"], "c")
    assert list(op.arg) == []
    op = core.CreateOperator("Scale", ["x"], ["y"], scale=2.0)
    assert op.arg[0].name == "scale" and op.arg[0].f == 2.0


def test_datatype_codes():
    D = core.DataType
    assert (D.UNDEFINED, D.FLOAT, D.INT32, D.BYTE, D.STRING, D.BOOL, D.UINT8,
            D.INT8, D.UINT16, D.INT16, D.INT64, D.FLOAT16, D.DOUBLE) == \
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13)


# --- proto, lookup tables, attributes, AppendNet, LogInfo, Python ------------------------


def test_proto_edits_are_seen():
    net = core.Net(uname())
    net.Proto().op.add(type="Copy", input=["p"], output=["q"])
    assert net.BlobIsDefined("q")
    net.Proto().external_input.append("ext")
    assert net.BlobIsDefined("ext")
    out = net.Copy("q")  # q is defined: not an external input
    assert net.Proto().external_input == ["ext"]
    assert str(out) == str(net) + "/Copy"


def test_net_from_netdef_copies_and_renames():
    base = uname("src")
    src = core.Net(base)
    src.Copy("x", "y")
    src.NextName()
    nd = proto.NetDef()
    nd.CopyFrom(src.Proto())
    nd.op.add(type="Copy", input=["y"], output=[base + "_blob_4"])
    copy = core.Net(nd)
    assert str(copy) == base + "_1"
    assert copy.BlobIsDefined("y") and copy.is_external_input("x")
    assert len(copy.Proto().op) == 2
    nd.op[0].type = "Changed"
    assert copy.Proto().op[0].type == "Copy"
    # auto indices continue after the existing <proto name>_blob_<i> ones
    assert copy.NextName() == base + "_1_blob_5"


def test_attributes():
    net = core.Net(uname())
    assert net.get_attributes("k") == []
    net.add_attribute("k", 1)
    net.add_attribute("k", 2)
    net.add_attribute("j", 3)
    assert net.get_attributes("k") == [1, 2]
    assert net.get_attributes("j") == [3]


def test_append_net():
    a = core.Net(uname("a"))
    a.Copy("x", "y")
    b = core.Net(uname("b"))
    b.Copy("y", "z")
    b.Copy("w", "v")
    b.AddExternalOutput(core.BlobReference("z"))
    assert a.AppendNet(b) is a
    assert op_types(a) == ["Copy", "Copy", "Copy"]
    assert a.Proto().external_input == ["x", "w"]  # y is produced in a
    assert a.Proto().external_output == ["z"]
    assert a.BlobIsDefined("z") and a.BlobIsDefined("v")
    with pytest.raises(GraphError):
        a.AppendNet(b.Proto())


def test_log_info():
    net = core.Net(uname())
    b = net.Copy("x")
    net.LogInfo("hello", b)
    types = op_types(net)
    assert types == ["Copy", "GivenTensorStringFill", "Print", "Print"]
    fill = net.Proto().op[1]
    assert arg_map(fill)["values"].strings == [b"hello"]
    assert net.Proto().op[2].input == [fill.output[0]]
    assert net.Proto().op[3].input == [str(b)]


def test_python_op_registers_function():
    net = core.Net(uname())

    def f(inputs, outputs):
        pass

    make = net.Python(f)
    out = make(["x"], ["y"])
    assert str(out) == "y"
    op = net.Proto().op[0]
    assert op.type == "Python"
    token = arg_map(op)["token"].s.decode()
    assert _pyop.lookup(token) == (f, False)
    make2 = net.Python((dict, (), {}), pass_workspace=True)
    make2([], [])
    token2 = arg_map(net.Proto().op[1])["token"].s.decode()
    func, pass_ws = _pyop.lookup(token2)
    assert func[0] is dict and pass_ws is True
    assert token != token2
    with pytest.raises(ValueError):
        net.Python(42)


# --- records ----------------------------------------------------------------------------


def test_set_input_record_without_blobs_creates_scoped_blobs():
    net = core.Net(uname())
    rec = net.set_input_record(schema.Struct(("a", np.int32), ("b", np.float32)))
    assert [str(b) for b in rec.field_blobs()] == [str(net) + "/a", str(net) + "/b"]
    assert net.Proto().external_input == [str(net) + "/a", str(net) + "/b"]
    assert net.input_record() is rec
    # same blobs: allowed; different: error
    net.set_input_record(rec)
    other = schema.NewRecord(net, schema.Struct(("a", np.int32)))
    with pytest.raises(GraphError, match="cannot be reset"):
        net.set_input_record(other)


def test_set_input_record_with_blobs():
    net = core.Net(uname())
    net.Copy("already", "c")
    rec = schema.Struct(("x", schema.Scalar(np.int32, core.BlobReference("already"))),
                        ("y", schema.Scalar(np.int32, core.BlobReference("yy"))))
    net.set_input_record(rec)
    assert net.Proto().external_input == ["already", "yy"]


def test_set_output_record():
    net = core.Net(uname())
    a = net.Copy("x", "a")
    bad = schema.Struct(("a", schema.Scalar(np.int32, a)),
                        ("z", schema.Scalar(np.int32, core.BlobReference("undefined"))))
    with pytest.raises(GraphError, match="undefined"):
        net.set_output_record(bad)
    rec = schema.Struct(("a", schema.Scalar(np.int32, a)))
    net.set_output_record(rec)
    assert net.output_record() is rec
    assert net.Proto().external_output == ["a"]
    net.set_output_record(rec)  # same blobs: fine, not duplicated
    assert net.Proto().external_output == ["a"]
    b = net.Copy("x", "b")
    with pytest.raises(GraphError):
        net.set_output_record(schema.Struct(("b", schema.Scalar(np.int32, b))))


# --- Clone / clone_and_bind_net -------------------------------------------------------------


def _sample_net():
    net = core.Net(uname("orig"))
    net.set_input_record(schema.Struct(("in", np.float32)))
    inp = net.input_record().field_blobs()[0]
    h = net.Mul([inp, "param"], "h")
    out = net.Add([h, "param"], "out")
    net.set_output_record(schema.Struct(("out", schema.Scalar(np.float32, out))))
    net.add_attribute("k", "v")
    return net, inp


def test_clone_is_deep_copy_with_remap_and_shared_attributes():
    net, inp = _sample_net()
    base = uname("clone")
    clone = net.Clone(base, blob_remap={"h": "H"})
    assert str(clone) == base
    assert [list(op.output) for op in clone.Proto().op] == [["H"], ["out"]]
    assert clone.Proto().op[1].input == ["H", "param"]
    assert clone.Proto().external_input == net.Proto().external_input
    clone.Proto().op[0].type = "Sub"
    assert net.Proto().op[0].type == "Mul"
    assert clone.get_attributes("k") == ["v"]
    clone.add_attribute("k", "w")  # the lists are shared, as in Caffe2
    assert net.get_attributes("k") == ["v", "w"]
    assert clone.input_record().field_blobs()[0].Net() is clone
    assert str(clone.output_record().field_blobs()[0]) == "out"
    same = net.Clone(base)
    assert str(same) == base + "_1"
    no_schema = net.Clone(uname(), keep_schema=False)
    assert no_schema.input_record() is None


def test_clone_op_id_mask_and_update_external_list():
    net, inp = _sample_net()
    part = net.Clone(uname(), op_id_mask=[1], update_external_list=True)
    assert op_types(part) == ["Add"]
    assert part.Proto().external_input == ["h", "param"]
    assert part.Proto().external_output == ["out"]
    assert part.BlobIsDefined("h")


def test_clone_and_bind_net_prefixes_produced_blobs_only():
    net, inp = _sample_net()
    base = uname("bound")
    new_input = schema.Struct(("in", schema.Scalar(np.float32, core.BlobReference("src/in"))),
                              ("extra", schema.Scalar(np.int32, core.BlobReference("src/x"))))
    clone, remap = core.clone_and_bind_net(net, base, "pre/", inputs=new_input)
    assert str(clone) == base
    ops_ = clone.Proto().op
    assert ops_[0].input == ["src/in", "param"] and ops_[0].output == ["pre/h"]
    assert ops_[1].output == ["pre/out"]
    assert remap[str(inp)] == "src/in" and remap["param"] == "param"
    assert [str(b) for b in clone.output_record().field_blobs()] == ["pre/out"]
    assert [str(b) for b in clone.input_record().field_blobs()] == ["src/in"]
    # original untouched
    assert net.Proto().op[0].output == ["h"]


def test_clone_and_bind_net_rejects_missing_fields():
    net, _ = _sample_net()
    wrong = schema.Struct(("other", schema.Scalar(np.float32, core.BlobReference("o"))))
    with pytest.raises(GraphError, match="extra fields"):
        core.clone_and_bind_net(net, uname(), "p/", inputs=wrong)
    plain = core.Net(uname())
    with pytest.raises(GraphError):
        core.clone_and_bind_net(plain, uname(), "p/", inputs=wrong)


def test_clone_partial():
    net = core.Net(uname())
    a = net.Copy("x", "a")
    b = net.Copy(a, "b")
    net.Copy("x", "unrelated")
    new, outs = net.ClonePartial("part", ["a"], [b])
    assert op_types(new) == ["Copy"]
    assert [str(o) for o in outs] == ["part/b"]
    assert new.Proto().external_input == ["a"]


# --- ExecutionStep ----------------------------------------------------------------------------


def test_unnamed_steps_are_step_step_1():
    names = [core.ExecutionStep(None).Name() for _ in range(3)]
    assert names[0].startswith("step")
    assert len(set(names)) == 3
    for nm in names:
        assert nm == "step" or nm.startswith("step_")
    assert core.ExecutionStep("explicit").Name() == "explicit"
    assert core.ExecutionStep("explicit").Name() == "explicit"  # not uniquified


def test_step_setters_fill_proto():
    net = core.Net(uname())
    s = core.ExecutionStep(uname("s"), [net, net], num_iter=3)
    p = s.Proto()
    assert p.network == [str(net)]  # the constructor de-duplicates
    assert p.num_iter == 3
    s2 = core.ExecutionStep(uname("s2"))
    s2.SetShouldStopBlob(core.BlobReference("stop"))
    s2.SetOnlyOnce(True)
    s2.SetConcurrentSubsteps(True)
    s2.SetCreateWorkspace(True)
    s2.SetNumConcurrentInstances(4)
    s2.RunEveryMillis(50)
    p2 = s2.Proto()
    assert (p2.should_stop_blob, p2.only_once, p2.concurrent_substeps,
            p2.create_workspace, p2.num_concurrent_instances, p2.run_every_ms) == \
        ("stop", True, True, True, 4, 50)
    with pytest.raises(GraphError):
        s2.SetShouldStopBlob(3)


def test_add_net_appends_and_same_name_different_net_raises():
    a = core.Net(uname("a"))
    s = core.ExecutionStep(uname())
    s.AddNet(a).AddNet(a)
    assert s.Proto().network == [str(a), str(a)]
    assert s.Nets() == [a]
    assert s.get_net(str(a)) is a
    impostor = core.Net(uname("imp"))
    impostor._net.name = str(a)
    with pytest.raises(GraphError, match="Different nets with same name"):
        s.AddNet(impostor)
    with pytest.raises(GraphError):
        s.AddNet(a.Proto())
    with pytest.raises(GraphError, match="both network and substeps"):
        s.AddSubstep(core.execution_step(uname(), a))
    with pytest.raises(GraphError):
        s.SetConcurrentSubsteps(True)


def test_add_substep_snapshots_and_freezes():
    n1 = core.Net(uname("n1"))
    n2 = core.Net(uname("n2"))
    child = core.ExecutionStep(uname("child"), n1)
    parent = core.ExecutionStep(uname("parent"))
    assert parent.AddSubstep(child) is parent
    assert child.IsUsed()
    # Setters on a used step raise.
    for call in (lambda: child.SetIter(5), lambda: child.AddNet(n2),
                 lambda: child.SetOnlyOnce(True), lambda: child.SetCreateWorkspace(True),
                 lambda: child.SetNumConcurrentInstances(2),
                 lambda: child.SetShouldStopBlob(core.BlobReference("s")),
                 lambda: child.AddSubstep(core.ExecutionStep(uname(), n2))):
        with pytest.raises(GraphError, match="already been added"):
            call()
    # Direct proto edits after the fact are not seen by the parent.
    child.Proto().num_iter = 99
    assert not parent.Proto().substep[0].HasField("num_iter")
    assert parent.Proto().substep[0].network == [str(n1)]
    assert parent.HasSubsteps() and not parent.HasNets()
    assert parent.Substeps() == [child]
    assert parent.Nets() == [n1]
    with pytest.raises(GraphError):
        parent.AddNet(n2)


def test_empty_substep_dropped_but_marked_used():
    parent = core.ExecutionStep(uname())
    empty = core.ExecutionStep(uname("empty"))
    parent.AddSubstep(empty)
    assert not parent.HasSubsteps()
    assert parent.Substeps() == []
    assert empty.IsUsed()
    with pytest.raises(GraphError):
        empty.SetIter(1)


def test_get_all_attributes_first_use_order():
    a = core.Net(uname("a"))
    b = core.Net(uname("b"))
    a.add_attribute("k", "a1")
    b.add_attribute("k", "b1")
    a.add_attribute("k", "a2")
    s1 = core.execution_step(uname(), [b])
    s2 = core.execution_step(uname(), [a, b])
    top = core.execution_step(uname(), [s1, s2])
    assert top.get_all_attributes("k") == ["b1", "a1", "a2"]
    assert top.get_all_attributes("missing") == []


# --- execution_step / to_execution_step ----------------------------------------------------------


def test_execution_step_argument_forms():
    a = core.Net(uname("a"))
    b = core.Net(uname("b"))
    empty = core.execution_step(uname(), None)
    assert not empty.HasNets() and not empty.HasSubsteps()
    assert empty.Proto().num_iter == 1
    assert not core.execution_step(uname(), []).HasNets()
    one = core.execution_step(uname(), a)
    assert one.Proto().network == [str(a)]
    nets = core.execution_step(uname(), [a, b, a])
    assert nets.Proto().network == [str(a), str(b), str(a)]
    inner = core.execution_step(uname("inner"), a)
    wrap = core.execution_step(uname(), inner)
    assert [s.name for s in wrap.Proto().substep] == [inner.Name()]
    mixed = core.execution_step(uname(), [a, core.execution_step(uname(), b)])
    assert len(mixed.Proto().substep) == 2
    assert mixed.Proto().substep[0].network == [str(a)]
    assert mixed.Proto().substep[0].num_iter == 1
    with pytest.raises(ValueError):
        core.execution_step(uname(), "not a net")
    with pytest.raises(ValueError):
        core.execution_step(uname(), (a,))


def test_execution_step_options():
    a = core.Net(uname())
    stop = core.BlobReference("stop")
    with pytest.raises(GraphError, match="both should_stop_blob and num_iter"):
        core.execution_step(uname(), a, num_iter=2, should_stop_blob=stop)
    s = core.execution_step(uname(), a, should_stop_blob=stop, only_once=True,
                            create_workspace=True, num_concurrent_instances=3,
                            run_every_ms=10)
    p = s.Proto()
    assert p.should_stop_blob == "stop" and not p.HasField("num_iter")
    assert p.only_once and p.create_workspace and p.num_concurrent_instances == 3
    assert p.run_every_ms == 10
    c = core.execution_step(uname(), [core.execution_step(uname(), a)],
                            concurrent_substeps=True, num_iter=5)
    assert c.Proto().concurrent_substeps and c.Proto().num_iter == 5
    assert not c.Proto().HasField("create_workspace")
    r = core.Net(uname("report"))
    rs = core.execution_step(uname(), [core.execution_step(uname(), a)],
                             report_net=r, report_interval=2)
    assert rs.Proto().report_net == str(r) and rs.Proto().report_interval == 2
    assert r in rs.Nets()
    with pytest.raises(GraphError):
        core.execution_step(uname(), a, report_net=r)


def test_to_execution_step_passthrough_and_builder():
    a = core.Net(uname())
    s = core.execution_step(uname(), a)
    assert core.to_execution_step(s) is s
    wrapped = core.to_execution_step([a], default_name="dn_" + uname())
    assert wrapped.Name().startswith("dn_") and wrapped.Proto().network == [str(a)]
    nb_mod = _net_builder()
    if nb_mod is None or not hasattr(nb_mod, "NetBuilder"):
        pytest.skip("fastpipe.net_builder not available")
    bname = uname("nb")
    with nb_mod.NetBuilder(_fullname=bname) as nb:
        nb_mod.ops.Copy("x", "y")
        nb_mod.ops.stop_if(core.BlobReference("flag"))
    step = core.to_execution_step(nb)
    assert step.Name() == bname
    assert step.Proto().should_stop_blob != ""
    assert not step.Proto().HasField("num_iter")


# --- Plan ----------------------------------------------------------------------------------------


def test_plan_copies_netdefs_in_order_of_use():
    a = core.Net(uname("a"))
    b = core.Net(uname("b"))
    c = core.Net(uname("c"))
    a.Copy("x", "y")
    s = core.execution_step(uname("top"), [
        core.execution_step(uname(), [b, a]),
        core.execution_step(uname(), [c, b]),
    ])
    plan = core.Plan(s)
    assert plan.Proto().name == s.Name() == str(plan)
    assert [n.name for n in plan.Proto().network] == [str(b), str(a), str(c)]
    assert plan.Nets() == [b, a, c]
    assert plan.Steps() == [s]
    assert s.IsUsed()
    # later edits to the Net are not seen by the plan
    a.Copy("y", "z")
    assert len(plan.Proto().network[1].op) == 1
    assert plan.Proto().execution_step[0].name == s.Name()
    # a net used by a second step is not copied twice
    plan.AddStep(core.execution_step(uname(), [a]))
    assert [n.name for n in plan.Proto().network] == [str(b), str(a), str(c)]
    assert len(plan.Proto().execution_step) == 2


def test_plan_misc():
    p = core.Plan("named_" + uname())
    assert p.Proto().name.startswith("named_")
    empty = core.execution_step(uname(), [])
    p.AddStep(empty)
    assert len(p.Proto().execution_step) == 0 and empty.IsUsed()
    with pytest.raises(ValueError):
        core.Plan(3)
    with pytest.raises(GraphError):
        p.AddStep(core.Net(uname()))
    a = core.Net(uname())
    a.add_attribute("x", 1)
    p.AddStep(core.execution_step(uname(), a))
    assert p.get_all_attributes("x") == [1]
    assert isinstance(p.Proto(), proto.PlanDef)


def test_plan_create_from_proto_roundtrip():
    a = core.Net(uname("a"))
    a.Copy("x", "y")
    s = core.execution_step(uname("s"), [core.execution_step(uname(), a, num_iter=4)])
    plan = core.Plan(s)
    again = core.Plan.create_from_proto(plan.Proto())
    assert again.Proto().execution_step[0].substep[0].num_iter == 4
    assert [op.type for op in again.Proto().network[0].op] == ["Copy"]


def test_device_scope_is_recorded_on_ops():
    net = core.Net(uname())
    net.Copy("a", "b")
    assert not net.Proto().op[0].HasField("device_option")
    opt = core.DeviceOption(0, 0, node_name="node1")
    with core.DeviceScope(opt):
        assert core.CurrentDeviceScope().node_name == "node1"
        net.Copy("b", "c")
        with core.DeviceScope(None, node_name="inner"):
            net.Copy("c", "d")
    assert core.CurrentDeviceScope() is None
    ops_ = net.Proto().op
    assert ops_[1].device_option.node_name == "node1"
    assert ops_[1].device_option is not opt
    assert ops_[2].device_option.node_name == "inner"
    net.Copy("d", "e", device_option=core.DeviceOption(0, 3))
    assert net.Proto().op[3].device_option.device_id == 3
    with pytest.raises(GraphError):
        with core.DeviceScope(None):
            pass


# --- differential check against the real Caffe2 (when installed here) -----------------------

CAFFE2_PYTHON = os.environ.get("CAFFE2_PYTHON", "/tmp/caffe2-venv/bin/python")

# One scenario run in a fresh process by Caffe2 and by fastpipe; the JSON
# summaries (names, ops, arguments, steps, plan nets, schema names) must match.
_SCENARIO = "import sys, json\nimport numpy as np\nif sys.argv[1] == 'c2':\n    from caffe2.python import core, schema\nelse:\n    sys.path.insert(0, sys.argv[2])\n    from fastpipe import core, schema\n\ndef argval(a):\n    for f in ('f', 'i', 's'):\n        if a.HasField(f):\n            v = getattr(a, f)\n            return [f, v.decode() if isinstance(v, bytes) else v]\n    for f in ('floats', 'ints', 'strings'):\n        v = list(getattr(a, f))\n        if v:\n            return [f, [x.decode() if isinstance(x, bytes) else x for x in v]]\n    return ['empty', None]\n\ndef net_sig(nd):\n    return {'name': nd.name,\n            'ext_in': list(nd.external_input), 'ext_out': list(nd.external_output),\n            'ops': [[op.type, list(op.input), list(op.output),\n                     sorted([a.name] + argval(a) for a in op.arg)] for op in nd.op]}\n\ndef step_sig(s):\n    d = {'name': s.name}\n    for f in ('num_iter', 'should_stop_blob', 'only_once', 'concurrent_substeps',\n              'create_workspace', 'num_concurrent_instances', 'run_every_ms', 'report_net', 'report_interval'):\n        if s.HasField(f):\n            d[f] = getattr(s, f)\n    d['network'] = list(s.network)\n    d['substep'] = [step_sig(x) for x in s.substep]\n    return d\n\nout = {}\nn = core.Net('sc_net')\na = n.Const(True)\nb = n.Const([1, 2, 3])\nc = n.Const(np.array([1.5], dtype=np.float32), blob_out='cc')\nx = n.Copy('in')\ny = n.Copy(x)\nwith core.NameScope('ns'):\n    z = n.Add([x, 'w'], broadcast=1)\n    z2 = n.Add([x, 'w'])\n    t = n.StatRegistryExport([], 3)\n    r = schema.NewRecord(n, schema.Struct(('a', np.int32), ('l', schema.List(np.float32))))\n    r2 = schema.NewRecord(n, schema.Struct(('a', np.int32)))\nn.AddExternalOutput(y)\nrec = n.set_input_record(schema.Struct(('f1', np.int32), ('f2', np.float32)))\nn.LogInfo('hello', y)\nn.Sum([rec.f1(), rec.f2()], 'sum')\nn.set_output_record(schema.Struct(('s', schema.Scalar(np.float32, core.BlobReference('sum')))))\nout['net'] = net_sig(n.Proto())\nout['names'] = [str(v) for v in (a, b, c, x, y, z, z2)] + [str(v) for v in t] + [str(v) for v in r.field_blobs() + r2.field_blobs()] + [str(v) for v in rec.field_blobs()]\ncl, remap = core.clone_and_bind_net(n, 'sc_clone', 'pre/', inputs=schema.Struct(('f1', schema.Scalar(np.int32, core.BlobReference('X1'))), ('f2', schema.Scalar(np.float32, core.BlobReference('X2'))), ('f3', schema.Scalar(np.float32, core.BlobReference('X3')))))\nout['clone'] = net_sig(cl.Proto())\nout['remap'] = sorted(remap.items())\nout['clone_in'] = [str(b) for b in cl.input_record().field_blobs()]\nout['clone_out'] = [str(b) for b in cl.output_record().field_blobs()]\ncl2 = n.Clone('sc_clone2', blob_remap={'in': 'IN'}, op_id_mask=[3, 4], update_external_list=True)\nout['clone2'] = net_sig(cl2.Proto())\nm = core.Net('sc_m')\nm.Copy('q', 'r')\ns1 = core.execution_step('sc_s1', [n, m, n], num_iter=3)\ns2 = core.execution_step('sc_s2', [m, s1], concurrent_substeps=True, should_stop_blob=core.BlobReference('stop'), only_once=True, num_concurrent_instances=2, create_workspace=True, run_every_ms=5)\ns3 = core.execution_step('sc_s3', [s2, core.execution_step('sc_empty', [])], report_net=m, report_interval=3)\np = core.Plan(s3)\nout['plan_nets'] = [x.name for x in p.Proto().network]\nout['plan_steps'] = [step_sig(x) for x in p.Proto().execution_step]\nout['netnames'] = [str(core.Net('sc_dup')) for _ in range(3)] + [str(core.Net('sc_dup_1'))]\nout['nextnames'] = [n.NextName(), n.NextName('Copy'), n.NextName('Copy', 1), str(n.NextBlob('cc')), str(n.NextBlob('cc'))]\nout['schema'] = {\n  'names': schema.Struct(('a', np.int32), ('b:c', schema.List(schema.Struct(('x', np.int32))))).field_names(),\n  'col': schema.from_column_list(['a:lengths', 'a:values', 'm:lengths', 'm:keys', 'm:values', 'z']).field_names(),\n  'tuple': schema.as_record((np.int32, {'k': np.float32})).field_names(),\n  'sub': (schema.Struct(('a', np.int32), ('b', schema.Struct(('c', np.int32), ('d', np.int32)))) - schema.Struct(('b', schema.Struct(('c', np.int32))))).field_names(),\n}\nprint(json.dumps(out, indent=1, sort_keys=True, default=str))\n"


def test_matches_caffe2_reference(tmp_path):
    if not os.path.exists(CAFFE2_PYTHON):
        pytest.skip("reference Caffe2 not installed")
    script = tmp_path / "scenario.py"
    script.write_text(_SCENARIO)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(python, which):
        res = subprocess.run([python, str(script), which, repo], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout)

    ref = run(CAFFE2_PYTHON, "c2")
    got = run(sys.executable, "fp")
    for key in sorted(ref):
        assert got[key] == ref[key], key
