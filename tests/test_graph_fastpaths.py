"""The graph layer's fast paths keep the slow paths' semantics: proto
messages with fields in the instance dict, the parse_args memo, the
one-pass clone_and_bind_net, the direct op printer, shared lowering
templates and the gc pause around bulk graph work."""
import copy
import gc
import pickle

import numpy as np
import pytest

from fastpipe import _core, _opschema, core, net_printer, proto, schema, workspace
from fastpipe.errors import OperatorDefError


# -- proto messages -------------------------------------------------------------------------

def test_unset_fields_read_as_defaults_and_are_not_set():
    op = proto.OperatorDef()
    assert op.type == "" and op.name == "" and op.is_gradient_op is False
    assert op.input == [] and op.arg == []
    assert not op.HasField("type")
    assert op.ListFields() == []
    assert str(op) == ""


def test_repeated_field_read_is_attached_and_assignment_copies():
    op = proto.OperatorDef()
    op.input.append("a")              # the list read is the field
    op.arg.add(name="k", i=1)
    assert op.input == ["a"] and op.arg[0].i == 1
    src = ["b", "c"]
    op.output = src
    src.append("d")
    assert op.output == ["b", "c"]
    assert op.ListFields() == [("input", ["a"]), ("output", ["b", "c"]), ("arg", op.arg)]


def test_has_clear_and_unknown_fields():
    op = proto.OperatorDef(type="Add", input=["a"])
    assert op.HasField("type")
    op.ClearField("type")
    op.ClearField("input")
    assert not op.HasField("type") and op.type == "" and op.input == []
    with pytest.raises(ValueError):
        op.HasField("input")        # repeated: no presence
    with pytest.raises(ValueError):
        op.ClearField("nope")
    with pytest.raises(AttributeError):
        op.nope = 1
    with pytest.raises(AttributeError):
        op.nope


def test_singular_message_read_creates_and_sets_it():
    op = proto.OperatorDef()
    assert not op.HasField("device_option")
    op.device_option.device_type = 1
    assert op.HasField("device_option") and op.device_option.device_type == 1


def test_copies_are_deep_and_equal():
    nd = proto.NetDef(name="n", external_input=["x"])
    op = nd.op.add(type="Add", input=["x", "x"], output=["y"])
    op.arg.add(name="broadcast", i=1)
    op.device_option.node_name = "nd"
    for c in (copy.deepcopy(nd), nd._copy(), proto.NetDef()):
        if not c.op:
            c.CopyFrom(nd)
        assert c == nd and str(c) == str(nd)
        c.op[0].input.append("z")
        c.op[0].arg[0].i = 7
        c.op[0].device_option.node_name = "other"
        c.external_input.append("w")
        assert nd.op[0].input == ["x", "x"] and nd.op[0].arg[0].i == 1
        assert nd.op[0].device_option.node_name == "nd" and nd.external_input == ["x"]


def test_copy_drops_empty_repeated_fields_without_changing_the_message():
    op = proto.OperatorDef(type="Not")
    op.arg                              # materialise an empty list
    op.control_input
    c = op._copy()
    assert c == op and c.arg == [] and c.ListFields() == op.ListFields()
    c.arg.add(name="a", i=1)
    assert op.arg == []


def test_merge_from_appends_and_overwrites():
    a = proto.OperatorDef(type="Add", input=["x"])
    b = proto.OperatorDef(type="Mul", input=["y"], name="m")
    a.MergeFrom(b)
    assert a.type == "Mul" and a.name == "m" and a.input == ["x", "y"]
    b.input.append("z")
    assert a.input == ["x", "y"]


def test_pickle_round_trip_and_old_layout():
    nd = proto.NetDef(name="n")
    nd.op.add(type="Add", input=["a", "b"], output=["c"]).arg.add(name="k", f=1.5)
    back = pickle.loads(pickle.dumps(nd))
    assert back == nd and type(back.op) is type(nd.op)
    old = proto.OperatorDef.__new__(proto.OperatorDef)
    old.__setstate__({"_set": {"type": "Add"}, "input": ["a"], "output": [], "arg": []})
    assert old == proto.OperatorDef(type="Add", input=["a"])


def test_equality_ignores_materialised_empty_lists():
    a = proto.OperatorDef(type="Add")
    b = proto.OperatorDef(type="Add")
    b.input
    b.arg
    assert a == b and not (a != b)
    b.input.append("x")
    assert a != b


# -- parse_args memo -----------------------------------------------------------------------

def _op(op_type, inputs, outputs, **args):
    return core.CreateOperator(op_type, inputs, outputs, **args)


def test_parse_args_memo_shares_results_of_equal_ops():
    a = _opschema.parse_args(_op("Add", ["x", "y"], ["z"], broadcast=1), "n1")
    b = _opschema.parse_args(_op("Add", ["p", "q"], ["r"], broadcast=1), "n2")
    c = _opschema.parse_args(_op("Add", ["p", "q"], ["r"], broadcast=0), "n2")
    assert a is b and a is not c
    assert a[1][a[0].arg_index["broadcast"]] is True
    assert c[1][c[0].arg_index["broadcast"]] is False


def test_parse_args_errors_are_not_memoised_and_name_each_op():
    good = _op("Add", ["a", "b"], ["c"])
    _opschema.parse_args(good, "n")
    with pytest.raises(OperatorDefError, match="Add 'bad' in net 'other'"):
        _opschema.parse_args(_op("Add", ["a"], ["c"], name="bad"), "other")
    with pytest.raises(OperatorDefError, match="in net 'third'"):
        _opschema.parse_args(_op("Add", ["a"], ["c"]), "third")
    with pytest.raises(OperatorDefError, match="axis"):
        _opschema.parse_args(_op("Add", ["a", "b"], ["c"], axis=1), "n")


def test_parse_args_memo_keys_on_names_when_the_check_reads_them():
    ok = _op("SafeEnqueueBlobs", ["q", "a"], ["a", "s"])
    _opschema.parse_args(ok, "n")
    bad = _op("SafeEnqueueBlobs", ["q", "a"], ["b", "s"])   # same arity, wrong names
    with pytest.raises(OperatorDefError):
        _opschema.parse_args(bad, "n")


def test_parse_args_does_not_add_an_arg_list_to_the_op():
    op = proto.OperatorDef(type="Add", input=["a", "b"], output=["c"])
    _opschema.parse_args(op, "n")
    assert "arg" not in op.__dict__


def test_parse_args_memo_follows_schema_reregistration():
    schema_before = _opschema.REGISTRY["Not"]
    first = _opschema.parse_args(_op("Not", ["a"], ["b"]), "n")
    try:
        _opschema.register("Not", 1, 1, [_opschema.ArgSpec("k", "int", 3)])
        again = _opschema.parse_args(_op("Not", ["a"], ["b"]), "n")
        assert again is not first and again[1] == [None]
    finally:
        _opschema.REGISTRY["Not"] = schema_before


# -- clone_and_bind_net --------------------------------------------------------------------

def _reference_bind(net, prefix, blob_remap):
    """clone_and_bind_net's blob map as the SSA pass computes it."""
    ssa, versions = core.get_ssa(net.Proto())
    undef = core.get_undefined_blobs(ssa)
    for blob in versions:
        if blob not in blob_remap:
            blob_remap[blob] = blob if blob in undef else prefix + blob
    return blob_remap


def _nets():
    m = core.Net("fp_model")
    rec = m.set_input_record(schema.Struct(("x", schema.Scalar((np.float32, (4,))))))
    y = m.Mul([rec.x(), rec.x()])
    for i in range(5):
        y = m.Add([y, rec.x()])
    m.set_output_record(schema.Struct(("y", schema.Scalar((np.float32, (4,)), y))))
    n = core.Net("fp_ext")
    n.AddExternalInput("a", "b", "unused", "w")
    n.Copy("x0", "a")              # an external input written before it is read
    n.Add(["a", "w"], "b2")
    n.Mul(["b", "b2"], "b")        # read, then written
    n.Sub(["b", "fp_ext_blob_3"], "c")
    k = core.Net("fp_noext")
    k.Proto().op.add(type="Add", input=["u", "v"], output=["u"])
    k.Proto().op.add(type="Add", input=["u", "z"], output=["w"])
    return [m, n, k]


@pytest.mark.parametrize("pre", [{}, {"w": "W", "a": "A"}])
def test_one_pass_bind_matches_the_ssa_rule(pre):
    for net in _nets():
        expected = _reference_bind(net, "p/", dict(pre))
        cloned, remap = core.clone_and_bind_net(net, "c_" + net.Name(), "p/", dict(pre))
        assert remap == expected
        for op, op2 in zip(net.Proto().op, cloned.Proto().op):
            assert op2.input == [expected.get(b, b) for b in op.input]
            assert op2.output == [expected.get(b, b) for b in op.output]
        assert cloned.Proto().external_input == [
            expected.get(b, b) for b in net.Proto().external_input]
        assert cloned._op_outputs == {b for op in cloned.Proto().op for b in op.output}


def test_bind_with_control_op_uses_the_full_map():
    then = core.Net("fp_then")
    then.Add(["a", "w"], "t")
    net = core.Net("fp_if")
    net.AddExternalInput("cond", "a", "w")
    net.Proto().op.add(type="If", input=["cond", "a", "w"], output=["t"],
                       arg=[core.MakeArgument("then_net", then.Proto())])
    expected = _reference_bind(net, "r/", {})
    cloned, remap = core.clone_and_bind_net(net, "fp_if_c", "r/")
    assert remap == expected
    sub = cloned.Proto().op[0].arg[0].n
    assert sub.op[0].output == [expected["t"]]


def test_clone_records_and_later_edits_are_independent():
    m = _nets()[0]
    cloned, remap = core.clone_and_bind_net(m, "fp_c", "q/")
    assert [str(b) for b in cloned.input_record().field_blobs()] == [
        remap[str(b)] for b in m.input_record().field_blobs()]
    cloned.Proto().op[0].input[0] = "changed"
    assert m.Proto().op[0].input[0] != "changed"


# -- net_printer ------------------------------------------------------------------------------

def test_direct_op_lines_match_print_op():
    net = core.Net("fp_print")
    net.ConstantFill([], "x", shape=[2], value=1.0)
    net.Add(["x", "x"], "y", broadcast=1)
    net.Sub(["y", "x"], "z")
    with core.DeviceScope(core.DeviceOption(0, 0, node_name="nd")):
        net.Copy("z", "w")
    net.Proto().op.add(type="Foo")
    net.Proto().op.add(type="Bar", input=[core.BlobReference("ref")], output=["o"])
    text = net_printer.Printer()
    text.add("fp_print = core.Net('fp_print')")
    text.c2_net_name = str(net)
    for op in net.Proto().op:
        net_printer.print_op(text, op)
    assert net_printer.to_string(net) == str(text)


# -- lowering ---------------------------------------------------------------------------------

def test_ops_with_equal_content_lower_independently():
    workspace.FeedBlob("fp_a", np.ones(3, np.float32))
    workspace.FeedBlob("fp_b", np.full(3, 2.0, np.float32))
    n1 = core.Net("fp_low1")
    n1.Add(["fp_a", "fp_b"], "fp_c")
    n1.ConstantFill([], "fp_k", shape=[3], value=5.0)
    n2 = core.Net("fp_low2")
    n2.Add(["fp_c", "fp_b"], "fp_d")
    n2.ConstantFill([], "fp_k2", shape=[2], value=5.0)
    plan = core.Plan("fp_low")
    plan.AddStep(core.execution_step("s", [n1, n2]))
    workspace.RunPlan(plan)
    assert workspace.FetchBlob("fp_d").tolist() == [5.0] * 3
    assert workspace.FetchBlob("fp_k2").shape == (2,)


def test_python_ops_with_same_arity_call_their_own_function():
    seen = []
    net = core.Net("fp_py")
    net.Python(lambda i, o: seen.append(1))([], [])
    net.Python(lambda i, o: seen.append(2))([], [])
    workspace.RunNetOnce(net)
    assert seen == [1, 2]


def test_lowering_error_names_op_index_and_net():
    net = core.Net("fp_err")
    net.ConstantFill([], "fp_e", shape=[1], value=1.0)
    net.Add(["fp_e", "fp_missing"], "fp_f")
    with pytest.raises(RuntimeError, match=r"Add #1 in net 'fp_err"):
        workspace.RunNetOnce(net)


# -- gc pause -------------------------------------------------------------------------------

def test_gc_paused_restores_the_collector_state():
    assert gc.isenabled()
    with proto.gc_paused():
        assert not gc.isenabled()
        with proto.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with proto.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(KeyError):
        with proto.gc_paused():
            raise KeyError("x")
    assert gc.isenabled()


def test_program_from_plan_does_not_leave_gc_disabled():
    plan = core.Plan("fp_gc")
    plan.AddStep(core.execution_step("s", _nets()[0]))
    _core.Program.from_plan(plan.Proto())
    assert gc.isenabled()


def test_bind_with_blob_reference_names_in_the_op_lists():
    net = core.Net("fp_refs")
    net.AddExternalInput("a")
    net.Proto().op.add(type="Add", input=[core.BlobReference("a"), "a"],
                       output=[core.BlobReference("o")])
    net.Proto().op.add(type="Copy", input=["o"], output=["o2"])
    expected = {str(k): str(v) for k, v in _reference_bind(net, "p/", {}).items()}
    cloned, remap = core.clone_and_bind_net(net, "fp_refs_c", "p/")
    assert {str(k): str(v) for k, v in remap.items()} == expected
    assert cloned.Proto().op[0].input == ["a", "a"]
    assert cloned.Proto().op[0].output == ["p/o"] and cloned.Proto().op[1].input == ["p/o"]
    assert all(type(b) is str for op in cloned.Proto().op for b in op.input + op.output)


def test_plan_copy_of_ops_missing_input_or_output_lists():
    net = core.Net("fp_partial_ops")
    net.Proto().op.add(type="ConstantFill", output=["c"])
    net.Proto().op.add(type="Print", input=["c"])
    net.Proto().op.add(type="NoOp")
    copied = net.Proto()._copy()
    assert copied == net.Proto()
    assert [("input" in op.__dict__, "output" in op.__dict__) for op in copied.op] == [
        (False, True), (True, False), (False, False)]
    copied.op[0].output.append("d")
    copied.op[1].input.append("e")
    assert net.Proto().op[0].output == ["c"] and net.Proto().op[1].input == ["c"]


def test_bind_with_inputs_mapped_to_empty_names_and_first_seen_inputs():
    net = core.Net("fp_empty_map")
    net.AddExternalInput("a", "b")
    net.Add(["a", "b"], "s")
    net.Add(["s", "late"], "t")        # 'late' is not an external input
    pre = {"a": ""}
    expected = _reference_bind(net, "p/", dict(pre))
    cloned, remap = core.clone_and_bind_net(net, "fp_empty_map_c", "p/", dict(pre))
    assert remap == expected
    for op, op2 in zip(net.Proto().op, cloned.Proto().op):
        assert op2.input == [expected.get(b, b) for b in op.input]
        assert op2.output == [expected.get(b, b) for b in op.output]


def test_direct_op_lines_in_order_around_ops_printed_one_by_one():
    # runs of directly formatted lines are joined per run; an op printed by
    # print_op in between must keep its place
    net = core.Net("fp_print_order")
    net.Add(["a", "b"], "c")
    net.Mul(["c", "b"], "d")
    with core.DeviceScope(core.DeviceOption(0, 0, node_name="nd")):
        net.Copy("d", "e")
    net.Sub(["e", "a"], "f")
    net.Add(["f", "a"], "g")
    text = net_printer.Printer()
    text.add("fp_print_order = core.Net('fp_print_order')")
    text.c2_net_name = str(net)
    for op in net.Proto().op:
        net_printer.print_op(text, op)
    expected = str(text)
    assert net_printer.to_string(net) == expected
    # nested: every line indented under its step, the runs in place
    outer = core.execution_step("outer", [core.execution_step("s", net),
                                          core.execution_step("t", net)],
                                concurrent_substeps=True)
    body = ["        " + line for line in expected.split("\n")]
    assert net_printer.to_string(outer).split("\n") == (
        ["with parallel():", "    with step(s):"] + body + ["    with step(t):"] + body)
