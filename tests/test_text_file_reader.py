"""fastpipe.text_file_reader.TextFileReader: TSV files parsed natively
(CreateTextFileReader / TextFileReaderRead, fastpipe/_core/textfile.pxi)."""

import collections
import re

import numpy as np
import pytest

from fastpipe import core, pipeline, schema, session, task, workspace
from fastpipe.dataset import Dataset
from fastpipe.errors import (ArgumentError, FastpipeError, GraphError, OperatorDefError,
                             RunError)
from fastpipe.text_file_reader import TextFileReader

ID_VALUE = (("id", np.int64), ("value", np.float32))


def struct(fields):
    return schema.Struct(*[(n, schema.Scalar(dt)) for n, dt in fields])


def write(tmp_path, text, name="data.tsv", newline="\n"):
    p = tmp_path / name
    p.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return str(p)


def make_reader(ws, path, fields, **kw):
    init = core.Net("init")
    reader = TextFileReader(init, path, struct(fields), **kw)
    ws.run(init)
    return reader


def iterate_all(ws, reader, instances=1):
    """Every batch the reader gives through pipe(), read with iterate."""
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances)
    with session.LocalSession(ws) as s:
        return [tuple(np.asarray(a) for a in b) for b in s.iterate(tg, q)]


def rows_of(batches):
    out = []
    for b in batches:
        out.extend(zip(*[a.tolist() for a in b]))
    return out


def id_value_text(n):
    return "".join("%d\t%r\n" % (i, i * 0.25 - 7.5) for i in range(n))


def expected_id_value(n):
    return [(i, float(np.float32(i * 0.25 - 7.5))) for i in range(n)]


# ---- values -----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_round_trip_every_field_type(ws, tmp_path):
    fields = (("i32", np.int32), ("i64", np.int64), ("f32", np.float32),
              ("f64", np.float64), ("s", str))
    rows = [
        ("0", "0", "0", "0", "plain"),
        ("-2147483648", "-9223372036854775808", "-3.4028235e+38", "-1.7976931348623157e+308",
         ""),
        ("2147483647", "9223372036854775807", "3.4028235e+38", "2.2250738585072014e-308",
         "with space"),
        ("+17", "+42", "+1.5", "1e-400", "ünïcødé"),
        ("-1", "123456789012", "0.1", "0.1", "a,b;c\"d'"),
        ("7", "-7", "inf", "-inf", "x"),
        ("3", "3", "1e-50", "6.02214076e23", "\\t is not unescaped"),
    ]
    path = write(tmp_path, "".join("\t".join(r) + "\n" for r in rows))
    reader = make_reader(ws, path, fields, batch_size=3)
    batches = iterate_all(ws, reader)
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    got = [np.concatenate([b[k] for b in batches]) for k in range(5)]
    assert [g.dtype for g in got[:4]] == [np.int32, np.int64, np.float32, np.float64]
    assert got[0].tolist() == [int(r[0]) for r in rows]
    assert got[1].tolist() == [int(r[1]) for r in rows]
    np.testing.assert_array_equal(got[2], np.array([float(r[2]) for r in rows], np.float64)
                                  .astype(np.float32))
    np.testing.assert_array_equal(got[3], np.array([float(r[3]) for r in rows]))
    assert [x.decode("utf-8") for x in got[4]] == [r[4] for r in rows]


SMALL_INTS = [(np.int8, "int8"), (np.int16, "int16"), (np.uint8, "uint8"),
              (np.uint16, "uint16")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dtype,name", SMALL_INTS)
def test_small_integer_fields_round_trip_and_check_their_range(ws, tmp_path, dtype, name):
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.max // 3]
    path = write(tmp_path, "".join("%d\n" % v for v in values))
    got = iterate_all(ws, make_reader(ws, path, (("x", dtype),), batch_size=8))
    assert got[0][0].dtype == dtype and got[0][0].tolist() == values
    for bad in (info.min - 1, info.max + 1):
        path = write(tmp_path, "%d\n%d\n" % (info.max, bad), name="bad.tsv")
        with pytest.raises(RunError, match=re.escape(
                "line 2: field 'x' (1 of 1, %s): '%d' is out of range for %s" % (name, bad, name))):
            iterate_all(ws, make_reader(ws, path, (("x", dtype),)))
    path = write(tmp_path, "1.5\n", name="frac.tsv")
    with pytest.raises(RunError, match="line 1: field 'x' .*'1.5' is not an integer"):
        iterate_all(ws, make_reader(ws, path, (("x", dtype),)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4, 8])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
@pytest.mark.parametrize("num_passes", [1, 2])
def test_exact_multiset_through_pipe(ws, tmp_path, instances, batch_size, num_passes):
    n = 2503
    path = write(tmp_path, id_value_text(n))
    reader = make_reader(ws, path, ID_VALUE, batch_size=batch_size, num_passes=num_passes)
    batches = iterate_all(ws, reader, instances)
    assert all(1 <= len(b[0]) <= batch_size for b in batches)
    assert collections.Counter(rows_of(batches)) == \
        collections.Counter(expected_id_value(n) * num_passes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_into_dataset_writer(ws, tmp_path, instances):
    n = 5000
    path = write(tmp_path, id_value_text(n))
    reader = make_reader(ws, path, ID_VALUE, batch_size=64, num_passes=2)
    dst = Dataset(struct(ID_VALUE), name="dst")
    init = core.Net("dst_init")
    with core.NameScope("dst"):
        dst.init_empty(init)
    ws.run(init)
    with task.TaskGroup() as tg:
        pipeline.pipe(reader, dst.writer(), num_runtime_threads=instances)
    session.LocalSession(ws).run(tg)
    ids = np.asarray(ws.blobs[str(dst.get_blobs()[0])].fetch())
    values = np.asarray(ws.blobs[str(dst.get_blobs()[1])].fetch())
    assert collections.Counter(zip(ids.tolist(), values.tolist())) == \
        collections.Counter(expected_id_value(n) * 2)


@pytest.mark.timeout(60)
def test_lines_across_block_boundaries_and_a_line_longer_than_the_block(ws, tmp_path):
    # the reader's block is 4 MiB: 300k lines cross several block ends, and
    # a 5 MiB field must grow it
    n = 300_000
    long_field = "x" * (5 << 20)
    text = "".join("%d\ts%d\n" % (i, i) for i in range(n // 2)) + "-1\t" + long_field + "\n" + \
        "".join("%d\ts%d\n" % (i, i) for i in range(n // 2, n))
    path = write(tmp_path, text)
    reader = make_reader(ws, path, (("id", np.int64), ("s", str)), batch_size=4096)
    rows = rows_of(iterate_all(ws, reader, 2))
    assert len(rows) == n + 1
    assert sorted(i for i, _ in rows) == [-1] + list(range(n))
    assert all(s == (b"s%d" % i if i >= 0 else long_field.encode()) for i, s in rows)


# ---- line ends, empty files, end of data ------------------------------------------------

@pytest.mark.timeout(30)
def test_crlf_line_endings_read_as_lf(ws, tmp_path):
    text = "1\t0.5\tab\n2\t-1.25\t\n3\t8\tc d\n"
    fields = (("id", np.int64), ("value", np.float32), ("s", str))
    lf = rows_of(iterate_all(ws, make_reader(ws, write(tmp_path, text, "lf.tsv"), fields,
                                             batch_size=2)))
    crlf = rows_of(iterate_all(ws, make_reader(ws, write(tmp_path, text, "crlf.tsv", "\r\n"),
                                               fields, batch_size=2)))
    assert crlf == lf == [(1, 0.5, b"ab"), (2, -1.25, b""), (3, 8.0, b"c d")]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_last_line_without_line_end(ws, tmp_path, newline):
    path = write(tmp_path, "1\t1.5\n2\t2.5\n3\t3.5", newline=newline)
    reader = make_reader(ws, path, ID_VALUE, batch_size=2, num_passes=2)
    assert rows_of(iterate_all(ws, reader)) == [(1, 1.5), (2, 2.5), (3, 3.5)] * 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("num_passes", [1, 3])
def test_empty_file(ws, tmp_path, num_passes):
    path = write(tmp_path, "")
    reader = make_reader(ws, path, ID_VALUE, batch_size=4, num_passes=num_passes)
    assert iterate_all(ws, reader, 2) == []


@pytest.mark.timeout(30)
def test_empty_file_with_a_huge_num_passes_ends_at_once(ws, tmp_path):
    # a billion passes over an empty file: ends without a billion rewinds
    path = write(tmp_path, "")
    reader = make_reader(ws, path, ID_VALUE, batch_size=4, num_passes=10 ** 9)
    assert iterate_all(ws, reader, 2) == []


@pytest.mark.timeout(30)
def test_read_net_loop_caffe2_style(ws, tmp_path):
    # Caffe2's own test shape: string and float fields, a read net run
    # until should_stop, the outputs empty at the end
    rows = [("l%df1" % i, "l%df2" % i, v) for i, v in
            enumerate([0.456, 0.789, 0.10101, -24342.64])]
    path = write(tmp_path, "".join("%s\t%s\t%r\n" % r for r in rows))
    fields = (("field1", str), ("field2", str), ("field3", np.float32))
    reader = make_reader(ws, path, fields, batch_size=3, num_passes=2)
    read_net = core.Net("read")
    should_stop, blobs = reader.read(read_net)
    got = []
    for _ in range(10):
        ws.run(read_net)
        if ws.blobs[str(should_stop)].fetch():
            break
        got.extend(zip(*[np.asarray(ws.blobs[str(b)].fetch()).tolist() for b in blobs]))
    else:
        pytest.fail("should_stop never became true")
    assert [len(np.asarray(ws.blobs[str(b)].fetch())) for b in blobs] == [0, 0, 0]
    assert got == [(a.encode(), b.encode(), float(np.float32(v))) for a, b, v in rows] * 2
    ws.run(read_net)          # after the end, reads stay empty
    assert ws.blobs[str(should_stop)].fetch()


# ---- errors -----------------------------------------------------------------------

def _bad_file(tmp_path, bad_line, at=1234, n=3000):
    lines = ["%d\t%d.5\t%d" % (i, i, i) for i in range(n)]
    lines[at - 1] = bad_line
    return write(tmp_path, "\n".join(lines) + "\n")


BAD_LINES = [
    ("7\t1.5", r"has 2 fields \(tab-separated\), expected 3 \(id:int64, value:float32, "
               r"small:int32\)"),
    ("7\t1.5\t3\textra", r"has 4 fields .*expected 3"),
    ("7", r"has 1 field \(tab-separated\), expected 3"),
    ("", r"has 1 field \(tab-separated\), expected 3"),
    ("x7\t1.5\t3", r"field 'id' \(1 of 3, int64\): 'x7' is not an integer"),
    ("7.0\t1.5\t3", r"field 'id' \(1 of 3, int64\): '7.0' is not an integer"),
    ("7\tabc\t3", r"field 'value' \(2 of 3, float32\): 'abc' is not a number"),
    ("7\t\t3", r"field 'value' \(2 of 3, float32\): '' is not a number"),
    ("7\t 1.5\t3", r"field 'value' \(2 of 3, float32\): ' 1.5' is not a number"),
    ("7\t1.5\t2147483648", r"field 'small' \(3 of 3, int32\): '2147483648' is out of range "
                           r"for int32"),
    ("9223372036854775808\t1.5\t3", r"field 'id' \(1 of 3, int64\): '9223372036854775808' "
                                    r"is out of range for int64"),
    ("7\t1e39\t3", r"field 'value' \(2 of 3, float32\): '1e39' is out of range for float32"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("bad_line,message", BAD_LINES)
def test_malformed_line_names_file_line_and_field(ws, tmp_path, bad_line, message, instances):
    path = _bad_file(tmp_path, bad_line)
    reader = make_reader(ws, path, ID_VALUE + (("small", np.int32),), batch_size=7)
    with pytest.raises(RunError) as e:
        iterate_all(ws, reader, instances)
    msg = str(e.value)
    assert "TextFileReaderRead" in msg
    assert re.search(re.escape("file '%s', line 1234: " % path) + message, msg), msg
    assert isinstance(e.value, FastpipeError)


@pytest.mark.timeout(30)
def test_malformed_line_error_gives_the_pass(ws, tmp_path):
    path = write(tmp_path, "1\t1.0\n2\tnope\n")
    reader = make_reader(ws, path, ID_VALUE, batch_size=1, num_passes=2)
    with pytest.raises(RunError, match=re.escape("file '%s', line 2 (pass 1): field 'value'"
                                                 % path)):
        iterate_all(ws, reader)


@pytest.mark.timeout(30)
def test_line_number_counts_a_crlf_file_and_a_batch_spanning_two_passes(ws, tmp_path):
    # 3 lines per pass, batch 5: the one batch holds all of pass 1 and two
    # lines of pass 2 (two segments); the bad value is on line 3 of a CRLF
    # file, so the error is line 3 (pass 1)
    path = write(tmp_path, "1\t1\n2\t2\n3\tbad\n", newline="\r\n")
    reader = make_reader(ws, path, ID_VALUE, batch_size=5, num_passes=2)
    with pytest.raises(RunError, match=re.escape("line 3 (pass 1): field 'value' (2 of 2, "
                                                 "float32): 'bad' is not a number")):
        iterate_all(ws, reader)


@pytest.mark.timeout(30)
def test_missing_file_fails_at_creation_naming_it(ws, tmp_path):
    path = str(tmp_path / "no_such.tsv")
    init = core.Net("init")
    TextFileReader(init, path, struct(ID_VALUE))
    with pytest.raises(RunError) as e:
        ws.run(init)
    msg = str(e.value)
    assert "CreateTextFileReader" in msg
    assert "cannot open file '%s': No such file or directory" % path in msg


@pytest.mark.timeout(30)
def test_directory_fails_at_creation(ws, tmp_path):
    init = core.Net("init")
    TextFileReader(init, str(tmp_path), struct(ID_VALUE))
    with pytest.raises(RunError, match=re.escape("cannot open file '%s': it is a directory"
                                                 % tmp_path)):
        ws.run(init)


def test_schema_errors_are_clear(tmp_path):
    init = core.Net("init")
    path = str(tmp_path / "x.tsv")
    with pytest.raises(GraphError, match="field 'b' has dtype bool"):
        TextFileReader(init, path, struct((("a", np.int64), ("b", np.bool_))))
    with pytest.raises(GraphError, match="field 'v' has shape \\(3,\\)"):
        TextFileReader(init, path, schema.Struct(("v", schema.Scalar((np.float32, (3,))))))
    with pytest.raises(GraphError, match="schema.Struct"):
        TextFileReader(init, path, schema.Scalar(np.int64))
    with pytest.raises(ArgumentError, match="batch_size=0 must be an int >= 1"):
        TextFileReader(init, path, struct(ID_VALUE), batch_size=0)
    with pytest.raises(ArgumentError, match="num_passes=0 must be an int >= 1"):
        TextFileReader(init, path, struct(ID_VALUE), num_passes=0)


def test_op_arguments_are_checked_at_build():
    net = core.Net("n")
    with pytest.raises(OperatorDefError, match=r"field_types\[1\]=5 is not a supported"):
        net.CreateTextFileReader([], filename="f.tsv", field_types=[10, 5])
    with pytest.raises(OperatorDefError, match="filename is required"):
        net.CreateTextFileReader([], field_types=[10])
    with pytest.raises(OperatorDefError, match="num_passes=0 must be >= 1"):
        net.CreateTextFileReader([], filename="f.tsv", num_passes=0, field_types=[10])
    r = net.CreateTextFileReader([], filename="f.tsv", field_types=[10])
    with pytest.raises(OperatorDefError, match="batch_size=0 must be >= 1"):
        net.TextFileReaderRead([r], 1, batch_size=0)


@pytest.mark.timeout(30)
def test_read_with_wrong_output_count_names_the_reader(ws, tmp_path):
    path = write(tmp_path, "1\t2\n")
    init = core.Net("init")
    r = init.CreateTextFileReader([], "rdr", filename=path, field_types=[10, 1])
    ws.run(init)
    net = core.Net("read")
    net.TextFileReaderRead([r], 3)
    with pytest.raises(RunError, match="the reader 'rdr' \\(file '.*'\\) has 2 fields but the op "
                                       "has 3 outputs"):
        ws.run(net)


@pytest.mark.timeout(30)
def test_reading_a_blob_that_is_not_a_reader(ws):
    net = core.Net("read")
    net.ConstantFill([], "notreader", shape=[1], value=1.0)
    net.TextFileReaderRead(["notreader"], 1)
    with pytest.raises(RunError, match="is not a text file reader"):
        ws.run(net)
