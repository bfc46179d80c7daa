"""Kernels read arguments through named positions, and those names are held
to the op schemas (fastpipe/_opschema.py) when the native core is imported:
a schema edit that moves, renames or retypes an argument fails loudly."""
import pytest

from fastpipe import _core, _opschema
from fastpipe._opschema import ArgSpec, OpSchema
from fastpipe.errors import FastpipeError, OperatorDefError


def test_every_kernel_table_matches_its_schema():
    tables = _core.kernel_arg_tables()
    kernels = _core.registered_kernels()
    for op_type in kernels:
        schema = _opschema.REGISTRY.get(op_type)
        if schema is not None and schema.args:
            assert op_type in tables, op_type
    for op_type, table in tables.items():
        schema = _opschema.REGISTRY[op_type]
        assert sorted(table) == sorted(schema.arg_index), op_type
        for name, (pos, kind) in table.items():
            assert schema.args[pos].name == name, (op_type, name, pos)
            assert schema.args[pos].kind == kind, (op_type, name, kind)
    # and the import-time checker agrees (it ran on import; run it again)
    _core.check_kernel_args(_opschema.REGISTRY, tables, kernels)


def test_tables_cover_the_kernels_that_read_arguments():
    tables = _core.kernel_arg_tables()
    for op_type in ("ConstantFill", "GivenTensorStringFill", "Add", "Scale", "Cast",
                    "CreateCounter", "ResetCounter", "CreateBlobsQueue", "DequeueBlobs",
                    "SafeDequeueBlobs", "WeightedSampleDequeueBlobs", "TimerBegin",
                    "StatRegistryExport", "CreateTreeCursor", "ReadNextBatch",
                    "SortAndShuffle", "ReadRandomBatch", "CheckDatasetConsistency", "Print"):
        assert op_type in tables, op_type


def _fake(*args):
    return {"FakeOp": OpSchema("FakeOp", (0, 0), (0, 0), [ArgSpec(n, k) for n, k in args])}


GOOD = {"FakeOp": {"alpha": (0, "int"), "beta": (1, "float")}}


def test_checker_accepts_a_matching_table():
    _core.check_kernel_args(_fake(("alpha", "int"), ("beta", "float")), GOOD, ["FakeOp"])


@pytest.mark.parametrize("schema_args, tables, kernels, match", [
    # the schema's arguments were reordered
    ((("beta", "float"), ("alpha", "int")), GOOD, ["FakeOp"],
     r"'FakeOp'.*argument 'alpha' is at position 1 in the schema but the kernel reads position 0"),
    # an argument was inserted in front
    ((("gamma", "str"), ("alpha", "int"), ("beta", "float")), GOOD, ["FakeOp"],
     r"'FakeOp'.*argument 'alpha' is at position 1 in the schema"),
    # an argument was added at the end but the kernel's table does not name it
    ((("alpha", "int"), ("beta", "float"), ("gamma", "str")), GOOD, ["FakeOp"],
     r"'FakeOp'.*schema argument 'gamma' \(position 2\) is missing from the kernel's table"),
    # an argument was renamed
    ((("alpha", "int"), ("betta", "float")), GOOD, ["FakeOp"],
     r"'FakeOp'.*reads argument 'beta' at position 1, which the schema does not have"),
    # an argument changed kind (the kernel would read the wrong field)
    ((("alpha", "int"), ("beta", "int")), GOOD, ["FakeOp"],
     r"'FakeOp'.*argument 'beta' is of kind 'int' in the schema but the kernel reads it as 'float'"),
    # a kernel of an op with arguments declares no table
    ((("alpha", "int"),), {}, ["FakeOp"],
     r"'FakeOp'.*the schema has arguments \['alpha'\] but the kernel declares no table"),
])
def test_checker_names_the_op_and_argument_of_a_mismatch(schema_args, tables, kernels, match):
    with pytest.raises(OperatorDefError, match=match) as ei:
        _core.check_kernel_args(_fake(*schema_args), tables, kernels)
    assert isinstance(ei.value, FastpipeError) and isinstance(ei.value, ValueError)


def test_checker_rejects_a_table_without_schema():
    with pytest.raises(OperatorDefError, match=r"'FakeOp'.*no schema is registered"):
        _core.check_kernel_args({}, GOOD, [])


def test_reordering_a_real_schema_is_detected():
    # what a careless edit of _opschema.py would do: swap ConstantFill's
    # 'value' and 'dtype' (the kernel reads positions 3 and 4)
    real = _opschema.REGISTRY["ConstantFill"]
    args = list(real.args)
    args[3], args[4] = args[4], args[3]
    registry = dict(_opschema.REGISTRY)
    registry["ConstantFill"] = OpSchema("ConstantFill", real.inputs, real.outputs, args)
    with pytest.raises(OperatorDefError, match=r"'ConstantFill'.*argument '(value|dtype)' is at "
                                               r"position [34] in the schema"):
        _core.check_kernel_args(registry, _core.kernel_arg_tables(), _core.registered_kernels())
