"""Save / Load / DBExists / GetAllBlobNames over the minidb format
(fastpipe/_core/savedb.pxi, docs/minidb.md): every dtype round-trips,
Caffe2's naming arguments, objects with state, and corrupt or truncated
files are clear errors, never garbage."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastpipe import core, workspace
from fastpipe.errors import FastpipeError, NotSupportedError, OperatorDefError, RunError

NUMERIC = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
           np.uint8, np.uint16, np.bool_]


def _save(ws, blobs, path, **kw):
    net = core.Net("save")
    net.Save(list(blobs), [], db=str(path), db_type="minidb", absolute_path=True, **kw)
    ws.run(net)


def _load(ws, blobs, path, **kw):
    net = core.Net("load")
    kw.setdefault("db", str(path))
    net.Load([], list(blobs), db_type="minidb", absolute_path=True, **kw)
    ws.run(net)


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind == "f":
        # bit-exact (NaNs and signed zeros too)
        assert a.tobytes() == b.tobytes()
    else:
        np.testing.assert_array_equal(a, b)


# --- tensors ----------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=st.sampled_from(NUMERIC).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))))
def test_every_numeric_dtype_round_trips(tmp_path, arr):
    ws = workspace.C.Workspace()
    ws.feed_blob("x", arr)
    _save(ws, ["x"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["x"], tmp_path / "db")
    _same(ws2.fetch_blob("x"), arr)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strings=st.lists(st.binary(max_size=40), max_size=12),
       two_d=st.booleans())
def test_string_tensors_round_trip(tmp_path, strings, two_d):
    arr = np.array(strings + [b""], dtype=object)
    if two_d and len(arr) % 2 == 0:
        arr = arr.reshape(2, -1)
    ws = workspace.C.Workspace()
    ws.feed_blob("s", arr)
    _save(ws, ["s"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["s"], tmp_path / "db")
    got = ws2.fetch_blob("s")
    assert got.shape == arr.shape and got.tolist() == arr.tolist()


def test_zero_d_and_empty_tensors_and_many_blobs_in_one_db(ws, tmp_path):
    vals = {"scalar_f": np.float32(2.5), "scalar_i": np.int64(-7), "empty": np.zeros((0, 3), np.int32),
            "strs": np.array(["a", "ünï"], dtype=object), "b": np.array([True, False])}
    for k, v in vals.items():
        ws.feed_blob(k, v)
    _save(ws, vals, tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, vals, tmp_path / "db")
    for k, v in vals.items():
        got = ws2.fetch_blob(k)
        if k == "strs":
            assert got.tolist() == [s.encode() for s in v]
        else:
            _same(got, v)


def test_large_tensor_round_trips(ws, tmp_path):
    x = np.random.default_rng(0).random((1 << 20, 3), dtype=np.float32)   # 12 MiB
    ws.feed_blob("big", x)
    _save(ws, ["big"], tmp_path / "db")
    ws.feed_blob("big", np.zeros(1, np.float32))
    _load(ws, ["big"], tmp_path / "db")
    _same(ws.fetch_blob("big"), x)


def test_load_overwrites_and_keep_device_is_accepted(ws, tmp_path):
    ws.feed_blob("w", np.arange(4, dtype=np.int64))
    _save(ws, ["w"], tmp_path / "db")
    ws.feed_blob("w", np.array(["other"], dtype=object))
    _load(ws, ["w"], tmp_path / "db", keep_device=1)
    _same(ws.fetch_blob("w"), np.arange(4, dtype=np.int64))


# --- names: overrides, prefixes, source names, several dbs ----------------------------


def test_blob_name_overrides_and_source_blob_names(ws, tmp_path):
    ws.feed_blob("a", np.int32(1))
    ws.feed_blob("b", np.int32(2))
    _save(ws, ["a", "b"], tmp_path / "db", blob_name_overrides=["x_scores", "y_scores"])
    ws2 = workspace.C.Workspace()
    with pytest.raises(RunError, match=r"'a'.*'b'"):
        _load(ws2, ["a", "b"], tmp_path / "db")
    _load(ws2, ["p", "q"], tmp_path / "db", source_blob_names=["y_scores", "x_scores"])
    assert ws2.fetch_blob("p") == 2 and ws2.fetch_blob("q") == 1


def test_strip_prefix_on_save_and_add_prefix_on_load(ws, tmp_path):
    """Caffe2: strip_prefix drops the name up to and including the prefix's
    first occurrence; add_prefix is prepended to every name read."""
    ws.feed_blob("gpu_0/w", np.float32(1))
    ws.feed_blob("gpu_0/b", np.float32(2))
    ws.feed_blob("plain", np.float32(3))
    _save(ws, ["gpu_0/w", "gpu_0/b", "plain"], tmp_path / "db", strip_prefix="gpu_0/")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["w", "b", "plain"], tmp_path / "db")
    assert [float(ws2.fetch_blob(n)) for n in ("w", "b", "plain")] == [1, 2, 3]
    ws3 = workspace.C.Workspace()
    _load(ws3, ["gpu_1/w", "gpu_1/b"], tmp_path / "db", add_prefix="gpu_1/")
    assert float(ws3.fetch_blob("gpu_1/w")) == 1 and float(ws3.fetch_blob("gpu_1/b")) == 2


def test_strip_prefix_on_load(ws, tmp_path):
    ws.feed_blob("trainer_0/model/w", np.int64(5))
    _save(ws, ["trainer_0/model/w"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["eval/w"], tmp_path / "db", strip_prefix="model/", add_prefix="eval/")
    assert ws2.fetch_blob("eval/w") == 5


def test_load_from_several_dbs_and_a_name_in_two_dbs(ws, tmp_path):
    ws.feed_blob("a", np.int64(1))
    ws.feed_blob("b", np.int64(2))
    _save(ws, ["a"], tmp_path / "db1")
    _save(ws, ["b"], tmp_path / "db2")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["a", "b"], None, db="", dbs=[str(tmp_path / "db1"), str(tmp_path / "db2")])
    assert ws2.fetch_blob("a") == 1 and ws2.fetch_blob("b") == 2
    _save(ws, ["a", "b"], tmp_path / "db3")
    # as in Caffe2, reading stops once every output is loaded (so a and b from
    # db2 + db3 is no conflict); a third output makes Load read on into b again
    _load(ws2, ["a", "b"], None, db="", dbs=[str(tmp_path / "db2"), str(tmp_path / "db3")])
    with pytest.raises(RunError, match=r"blob 'b' is in two dbs: '%s' and '%s'"
                       % (tmp_path / "db2", tmp_path / "db3")):
        _load(ws2, ["a", "b", "c"], None, db="", dbs=[str(tmp_path / "db2"), str(tmp_path / "db3")],
              allow_incomplete=1)


def test_allow_incomplete(ws, tmp_path):
    ws.feed_blob("have", np.float32(1))
    _save(ws, ["have"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    with pytest.raises(RunError, match=r"expected to load 2 blobs, got 1.*'missing'") as e:
        _load(ws2, ["have", "missing"], tmp_path / "db")
    assert e.value.op_type == "Load"
    _load(ws2, ["have", "missing"], tmp_path / "db", allow_incomplete=True)
    assert ws2.fetch_blob("have") == 1
    assert ws2._native.blob_kind("missing") == "empty"


def test_load_all(ws, tmp_path):
    ws.feed_blob("x", np.arange(3))
    ws.feed_blob("y", np.array([b"s"], dtype=object))
    _save(ws, ["x", "y"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, [], tmp_path / "db", load_all=1)
    assert sorted(ws2.blobs.keys()) == ["x", "y"]
    _same(ws2.fetch_blob("x"), np.arange(3))
    _load(ws2, ["copy/x"], tmp_path / "db", load_all=1, add_prefix="copy/")
    assert ws2.has_blob("copy/x") and ws2.has_blob("copy/y")
    with pytest.raises(RunError, match=r"output blob 'z' is not in the db"):
        _load(ws2, ["z"], tmp_path / "db", load_all=1)


# --- DBExists, GetAllBlobNames, relative paths -------------------------------------------


def test_db_exists_and_relative_paths(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws.feed_blob("x", np.int32(3))
    net = core.Net("save_rel")
    net.Save(["x"], [], db="rel.db", db_type="minidb")      # relative: the root folder "."
    ws.run(net)
    assert (tmp_path / "rel.db").is_file()
    check = core.Net("exists")
    check.DBExists([], ["e1"], db_name="rel.db", db_type="minidb")
    check.DBExists([], ["e2"], db_name=str(tmp_path / "rel.db"), db_type="minidb", absolute_path=1)
    check.DBExists([], ["e3"], db_name=str(tmp_path / "nope.db"), db_type="minidb", absolute_path=1)
    check.DBExists([], ["e4"], db_name=str(tmp_path), db_type="minidb", absolute_path=1)  # a directory
    ws.run(check)
    got = [ws.fetch_blob(n) for n in ("e1", "e2", "e3", "e4")]
    assert [bool(g) for g in got] == [True, True, False, False]
    assert got[0].dtype == np.bool_ and got[0].shape == ()
    load = core.Net("load_rel")
    load.Load([], ["y"], db="rel.db", db_type="minidb", source_blob_names=["x"])
    ws.run(load)
    assert ws.fetch_blob("y") == 3


def test_get_all_blob_names_include_shared(ws):
    ws.feed_blob("parent_a", np.int32(1))
    ws.feed_blob("parent_b", np.int32(1))
    child = workspace.C.Workspace(ws)
    child.feed_blob("child_c", np.int32(1))
    net = core.Net("names")
    net.GetAllBlobNames([], ["all"])
    net.GetAllBlobNames([], ["local"], include_shared=False)
    child.run(net)
    assert child.fetch_blob("all").tolist() == [b"all", b"child_c", b"local", b"parent_a",
                                                b"parent_b"]
    assert child.fetch_blob("local").tolist() == [b"all", b"child_c", b"local"]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Save", "Load", "DBExists"])
@pytest.mark.parametrize("db_type", ["leveldb", "lmdb", ""])
def test_other_db_types_are_refused_naming_them(op, db_type):
    net = core.Net("bad_type")
    kw = {"db_name": "x"} if op == "DBExists" else {"db": "x"}
    with pytest.raises(NotSupportedError, match=r"db_type=%r is not supported.*minidb" % db_type) as e:
        getattr(net, op)(["a"] if op == "Save" else [], [] if op == "Save" else ["a"],
                         db_type=db_type, **kw)
    assert isinstance(e.value, OperatorDefError) and op in str(e.value)


def test_bad_arguments_are_build_time_errors():
    net = core.Net("bad_args")
    with pytest.raises(OperatorDefError, match="Must specify a db name"):
        net.Save(["a"], [], db_type="minidb")
    with pytest.raises(OperatorDefError, match="blob_name_overrides has 1 names for 2 inputs"):
        net.Save(["a", "b"], [], db="d", db_type="minidb", blob_name_overrides=["x"])
    with pytest.raises(OperatorDefError, match="Duplicated|duplicated"):
        net.Save(["g/a", "h/a"], [], db="d", db_type="minidb", strip_prefix="/")
    with pytest.raises(OperatorDefError, match="mutually exclusive"):
        net.Load([], ["a"], db="d", db_type="minidb", source_blob_names=["x"], strip_prefix="p")
    with pytest.raises(OperatorDefError, match="source_blob_names"):
        net.Load([], ["a", "b"], db="d", db_type="minidb", source_blob_names=["x"])
    with pytest.raises(OperatorDefError, match="load_all"):
        net.Load([], ["a"], db="d", db_type="minidb", source_blob_names=["x"], load_all=1)
    with pytest.raises(OperatorDefError, match="Duplicated db name"):
        net.Load([], ["a"], dbs=["d", "d"], db_type="minidb")
    with pytest.raises(NotSupportedError, match="DBReader inputs .1 given. are not provided"):
        net.Load(["reader"], ["a"], db_type="minidb")


def test_missing_file_names_it(ws, tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(RunError, match=r"db '%s'.*does not exist" % path) as e:
        _load(ws, ["x"], path)
    assert isinstance(e.value, FastpipeError)


def test_save_into_a_missing_directory_names_it(ws, tmp_path):
    ws.feed_blob("x", np.int32(1))
    path = tmp_path / "no_dir" / "db"
    with pytest.raises(RunError, match=r"cannot create db '%s'.*No such file" % path):
        _save(ws, ["x"], path)


def test_saving_a_queue_or_an_empty_blob_is_an_error_and_keeps_the_old_db(ws, tmp_path):
    ws.feed_blob("x", np.int32(1))
    _save(ws, ["x"], tmp_path / "db")
    before = (tmp_path / "db").read_bytes()
    init = core.Net("mkq")
    init.CreateBlobsQueue([], ["q"], capacity=2, num_blobs=1)
    init.ConstantFill([], ["never"], shape=[1], value=0.0)
    ws.run(init)
    with pytest.raises(RunError, match=r"input 1 \('q'\) holds a queue, which cannot be saved"):
        _save(ws, ["x", "q"], tmp_path / "db")
    ws.create_blob("unset")
    with pytest.raises(RunError, match=r"\('unset'\) has no value yet"):
        _save(ws, ["unset"], tmp_path / "db")
    assert (tmp_path / "db").read_bytes() == before       # atomic: the old db is intact
    assert sorted(os.listdir(tmp_path)) == ["db"]          # and no temporary file is left


def _saved_db(tmp_path):
    ws = workspace.C.Workspace()
    ws.feed_blob("a", np.arange(100, dtype=np.float64))
    ws.feed_blob("s", np.array([b"abc", b"de"], dtype=object))
    path = tmp_path / "db"
    _save(ws, ["a", "s"], path)
    return path, path.read_bytes()


def test_truncated_file_is_a_clear_error_at_every_cut(ws, tmp_path):
    path, data = _saved_db(tmp_path)
    for cut in [0, 5, 31, 32, 40, 70, 100, 500, len(data) - 40, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(RunError, match=r"truncated") as e:
            _load(ws, ["a", "s"], path)
        assert str(path) in str(e.value)


def test_corrupt_bytes_are_detected_by_checksums(ws, tmp_path):
    path, data = _saved_db(tmp_path)
    rng = np.random.default_rng(1)
    # every byte of the header and of the first record's header, and a sample of the rest
    positions = list(range(0, 120)) + sorted(rng.choice(np.arange(120, len(data)), 60, replace=False))
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0x41
        path.write_bytes(bytes(bad))
        with pytest.raises(RunError, match=r"corrupt|not a fastpipe minidb|truncated|not supported"):
            _load(ws, ["a", "s"], path)


def test_not_a_minidb_file(ws, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(10))
    with pytest.raises(RunError, match=r"not a fastpipe minidb file"):
        _load(ws, ["a"], path)


# --- objects with state ----------------------------------------------------------------------


def test_counter_round_trips(ws, tmp_path):
    net = core.Net("ctr")
    net.CreateCounter([], ["ctr"], init_count=5)
    net.CountUp(["ctr"], ["prev1"])
    net.CountUp(["ctr"], ["prev2"])
    ws.run(net)
    _save(ws, ["ctr"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    _load(ws2, ["ctr"], tmp_path / "db")
    assert ws2._native.blob_kind("ctr") == "counter"
    after = core.Net("after")
    after.RetrieveCount(["ctr"], ["count"])
    after.CountUp(["ctr"], ["prev"])
    ws2.run(after)
    assert ws2.fetch_blob("count") == 7 and ws2.fetch_blob("prev") == 7
    ws.run(after)                      # the original is independent of the loaded copy
    assert ws.fetch_blob("count") == 7


def _cursor_ws(n):
    ws = workspace.C.Workspace()
    ws.feed_blob("vals", np.arange(n, dtype=np.int64) * 10)
    init = core.Net("cursor_init")
    init.CreateTreeCursor([], ["cursor"], fields=["val"])
    ws.run(init)
    return ws


def _read(ws, batch):
    net = core.Net("read_%d" % batch)
    net.ReadNextBatch(["cursor", "vals"], ["batch"], batch_size=batch)
    ws.run(net)
    return ws.fetch_blob("batch").tolist()


def test_cursor_saved_mid_epoch_continues_in_a_fresh_workspace(tmp_path):
    ws = _cursor_ws(10)
    assert _read(ws, 3) == [0, 10, 20]
    _save(ws, ["cursor", "vals"], tmp_path / "db")
    assert _read(ws, 3) == [30, 40, 50]           # the original goes on independently
    fresh = workspace.C.Workspace()
    _load(fresh, ["cursor", "vals"], tmp_path / "db")
    assert fresh._native.blob_kind("cursor") == "cursor"
    assert _read(fresh, 4) == [30, 40, 50, 60]
    assert _read(fresh, 4) == [70, 80, 90]
    assert _read(fresh, 4) == []


def test_cursor_at_start_and_with_nested_fields_round_trip(tmp_path):
    ws = workspace.C.Workspace()
    ws.feed_blob("lens", np.array([2, 0, 3], dtype=np.int32))
    ws.feed_blob("items", np.arange(5, dtype=np.int64))
    init = core.Net("c_init")
    init.CreateTreeCursor([], ["fresh"], fields=["a:lengths", "a:items"])
    init.CreateTreeCursor([], ["moved"], fields=["a:lengths", "a:items"])
    init.ReadNextBatch(["moved", "lens", "items"], ["l0", "i0"], batch_size=1)
    ws.run(init)
    assert ws.fetch_blob("i0").tolist() == [0, 1]
    _save(ws, ["fresh", "moved"], tmp_path / "db")
    ws2 = workspace.C.Workspace()
    ws2.feed_blob("lens", np.array([2, 0, 3], dtype=np.int32))
    ws2.feed_blob("items", np.arange(5, dtype=np.int64))
    _load(ws2, ["fresh", "moved"], tmp_path / "db")
    net = core.Net("c_read")
    net.ReadNextBatch(["fresh", "lens", "items"], ["fl", "fi"], batch_size=1)
    net.ReadNextBatch(["moved", "lens", "items"], ["ml", "mi"], batch_size=2)
    ws2.run(net)
    assert ws2.fetch_blob("fi").tolist() == [0, 1]
    assert ws2.fetch_blob("ml").tolist() == [0, 3] and ws2.fetch_blob("mi").tolist() == [2, 3, 4]


@pytest.mark.timeout(60)
def test_save_inside_the_read_loop_records_the_position_after_each_read(tmp_path):
    """A net that reads a batch and then saves the cursor, run 7 times: the
    db holds the position after 7 batches of 4, and a fresh workspace goes on
    from record 28."""
    n = 100
    ws = _cursor_ws(n)
    read = core.Net("read_loop")
    read.ReadNextBatch(["cursor", "vals"], ["batch"], batch_size=4)
    read.Save(["cursor"], [], db=str(tmp_path / "db"), db_type="minidb", absolute_path=True)
    ws.run(read, num_iter=7)
    assert ws.fetch_blob("batch").tolist() == [240, 250, 260, 270]
    fresh = workspace.C.Workspace()
    _load(fresh, ["cursor"], tmp_path / "db")
    fresh.feed_blob("vals", np.arange(n, dtype=np.int64) * 10)
    assert _read(fresh, 2) == [280, 290]


# --- the file format, read independently of the core (docs/minidb.md) ------------------------


def _crc32c(data, crc=0):
    table = _crc32c.table
    if table is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
            table.append(c)
        _crc32c.table = table
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


_crc32c.table = None


def _parse_minidb(data):
    """Parse a minidb file as docs/minidb.md describes it, checking every
    checksum; returns [(name, kind, dtype, shape, payload)]."""
    import struct
    assert data[:8] == b"FPMINIDB"
    version, flags, nrec, reserved, crc = struct.unpack_from("<IIQII", data, 8)
    assert (version, flags, reserved) == (1, 0, 0)
    assert crc == _crc32c(data[:28])
    pos, out = 32, []
    for _ in range(nrec):
        magic, kind, dtype, ndim, nlen, zero, plen = struct.unpack_from("<4sIIIIIQ", data, pos)
        assert magic == b"FPRC" and zero == 0
        shape = struct.unpack_from("<%dq" % ndim, data, pos + 32)
        name_at = pos + 32 + 8 * ndim
        name = data[name_at:name_at + nlen].decode()
        hdr_end = name_at + nlen
        (hcrc,) = struct.unpack_from("<I", data, hdr_end)
        assert hcrc == _crc32c(data[pos:hdr_end])
        payload = data[hdr_end + 4:hdr_end + 4 + plen]
        (pcrc,) = struct.unpack_from("<I", data, hdr_end + 4 + plen)
        assert pcrc == _crc32c(payload)
        out.append((name, kind, dtype, shape, payload))
        pos = hdr_end + 8 + plen
    assert pos == len(data)
    return out


def test_crc32c_check_value():
    assert _crc32c(b"123456789") == 0xE3069283      # the CRC-32C check value


def test_file_layout_matches_the_documented_format(ws, tmp_path):
    # payloads long enough for the core's 3-stream CRC path (3 x 8 KiB blocks)
    # and odd lengths for its tails
    x = np.random.default_rng(2).random(25_001, dtype=np.float64)
    ws.feed_blob("x", x)
    ws.feed_blob("s", np.array([b"ab", b"", b"xyz"], dtype=object))
    ws.feed_blob("i", np.arange(6, dtype=np.int16).reshape(2, 3))
    init = core.Net("ctr")
    init.CreateCounter([], ["c"], init_count=41)
    ws.run(init)
    _save(ws, ["x", "s", "i", "c"], tmp_path / "db", blob_name_overrides=["x", "s", "i", "c"])
    recs = _parse_minidb((tmp_path / "db").read_bytes())
    assert [r[0] for r in recs] == ["x", "s", "i", "c"]
    name, kind, dtype, shape, payload = recs[0]
    assert (kind, dtype, shape) == (0, 13, (25_001,)) and payload == x.tobytes()
    assert recs[1][1:4] == (0, 4, (3,))
    assert recs[1][4] == (b"\x02" + b"\0" * 7 + b"ab" + b"\0" * 8 + b"\x03" + b"\0" * 7 + b"xyz")
    assert recs[2][1:4] == (0, 9, (2, 3)) and recs[2][4] == np.arange(6, dtype=np.int16).tobytes()
    assert recs[3][1:4] == (1, 0, ()) and recs[3][4] == np.int64(41).tobytes()


def _tsv_reader_ws(path, num_passes):
    ws = workspace.C.Workspace()
    init = core.Net("tf_init")
    init.CreateTextFileReader([], ["tfr"], filename=str(path), num_passes=num_passes,
                              field_types=[10, 1], field_names=["id", "value"])
    ws.run(init)
    return ws


def _tsv_read(ws, batch):
    net = core.Net("tf_read_%d" % batch)
    net.TextFileReaderRead(["tfr"], ["ids", "vals"], batch_size=batch)
    ws.run(net)
    return ws.fetch_blob("ids").tolist()


@pytest.mark.parametrize("first", [0, 3, 7, 10, 13])
def test_text_file_reader_position_round_trips(tmp_path, first):
    """A TSV reader saved after `first` lines (2 passes over 10 lines, the
    last without a line end) and loaded in a fresh workspace hands out
    exactly the lines the saved one had not."""
    path = tmp_path / "data.tsv"
    path.write_text("".join("%d\t%d.5\n" % (i, i) for i in range(9)) + "9\t9.5")
    ws = _tsv_reader_ws(path, num_passes=2)
    before = _tsv_read(ws, first) if first else []
    _save(ws, ["tfr"], tmp_path / "db")
    rest_original = []
    while True:
        got = _tsv_read(ws, 4)
        if not got:
            break
        rest_original += got
    fresh = workspace.C.Workspace()
    _load(fresh, ["tfr"], tmp_path / "db")
    assert fresh._native.blob_kind("tfr") == "text file reader"
    rest = []
    while True:
        got = _tsv_read(fresh, 4)
        if not got:
            break
        rest += got
    assert rest == rest_original
    assert before + rest == list(range(10)) * 2
    assert fresh.fetch_blob("vals").dtype == np.float32


def test_text_file_reader_whose_file_is_gone_is_a_clear_load_error(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("1\t1.0\n2\t2.0\n")
    ws = _tsv_reader_ws(path, num_passes=1)
    _save(ws, ["tfr"], tmp_path / "db")
    path.unlink()
    with pytest.raises(RunError, match=r"record 0 \('tfr'\): text file reader state: cannot "
                                       r"reopen file '%s'" % path):
        _load(workspace.C.Workspace(), ["tfr"], tmp_path / "db")


# ---- hostile files (found in review: each crashed or silently succeeded) ----------

def _rec(name, kind, dtype, shape, payload, plen=None):
    import struct
    if plen is None:
        plen = len(payload)
    nb = name.encode()
    h = struct.pack("<4sIIIIIQ", b"FPRC", kind, dtype, len(shape), len(nb), 0, plen)
    h += struct.pack("<%dq" % len(shape), *shape) + nb
    h += struct.pack("<I", _crc32c(h))
    return h + payload + struct.pack("<I", _crc32c(payload))


def _db(recs):
    import struct
    h = b"FPMINIDB" + struct.pack("<IIQI", 1, 0, len(recs), 0)
    h += struct.pack("<I", _crc32c(h))
    return h + b"".join(recs)


def test_a_record_claiming_a_huge_payload_is_an_error_not_a_silent_success(tmp_path):
    """A string record whose length field says 2**62 bytes (valid header
    checksum, file truncated): before, resize() threw inside a noexcept
    kernel, Cython printed 'Exception ignored' and Load returned success
    with the blob unchanged."""
    ws = workspace.C.Workspace()
    ws.feed_blob("s", np.array([b"old"], dtype=object))
    p = tmp_path / "huge.db"
    p.write_bytes(_db([_rec("s", 0, 4, (1,), b"", plen=1 << 62)])[:-4])
    with pytest.raises(RunError, match="payload longer than the rest of the file"):
        _load(ws, ["s"], p)


def test_a_text_reader_state_with_a_bad_field_type_is_refused(tmp_path):
    """A text-file reader record whose field type the parser does not read
    (5: a 1-byte type; 999): before, the next read wrote std::strings into
    1-byte slots (a segfault)."""
    import struct
    data = tmp_path / "data.tsv"
    data.write_text("".join("%s\t%d.5\n" % ("x" * 40, i) for i in range(200)))
    fn = str(data).encode()
    for t in (5, 999):
        pay = (struct.pack("<I", len(fn)) + fn + struct.pack("<I", 2) + struct.pack("<ii", t, 1)
               + struct.pack("<I", 0) + struct.pack("<qqqq", 1, 0, 0, 0))
        p = tmp_path / ("tr%d.db" % t)
        p.write_bytes(_db([_rec("tfr", 7, 0, (), pay)]))
        ws = workspace.C.Workspace()
        with pytest.raises(RunError, match="field type %d is not one a text reader reads" % t):
            _load(ws, ["tfr"], p)


def test_save_refuses_a_name_load_would_refuse(tmp_path):
    ws = workspace.C.Workspace()
    name = "n" * ((1 << 20) + 5)
    ws.feed_blob(name, np.zeros(1, np.float32))
    with pytest.raises(RunError, match="longer than a minidb record allows"):
        _save(ws, [name], tmp_path / "long.db")
    assert not (tmp_path / "long.db").exists()
