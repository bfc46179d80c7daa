"""Files in and out: sources.NpyReader (memory-mapped .npy / .npz),
sources.NpyShardWriter (.npy shards) and text_file_reader.TextFileWriter
(TSV that TextFileReader reads back)."""

import collections
import gc
import os

import numpy as np
import pytest

from fastpipe import core, pipeline, schema, session, sources, task
from fastpipe.errors import ArgumentError, FastpipeError, GraphError, OperatorDefError, RunError
from fastpipe.sources import FileMissingError, NpyReader, NpyShardWriter
from fastpipe.text_file_reader import TextFileReader, TextFileWriter


def iterate_all(ws, reader, instances=1):
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances)
    with session.LocalSession(ws) as s:
        return [tuple(np.asarray(a) for a in b) for b in s.iterate(tg, q)]


def run_into(ws, reader, writer, instances):
    with task.TaskGroup() as tg:
        pipeline.pipe(reader, writer, num_runtime_threads=instances)
    session.LocalSession(ws).run(tg)


def columns(batches, nfields):
    return [np.concatenate([b[i] for b in batches]) for i in range(nfields)]


def id_x(n):
    ids = np.arange(n, dtype=np.int64)
    xs = (np.arange(n * 3, dtype=np.float32) * 0.5).reshape(n, 3)
    return ids, xs


# ---- NpyReader ----------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [1, 64])
def test_npy_reader_exact_records(ws, tmp_path, instances, batch_size):
    n = 1001
    ids, xs = id_x(n)
    np.save(tmp_path / "id.npy", ids)
    np.save(tmp_path / "x.npy", xs)
    reader = NpyReader(str(tmp_path), batch_size=batch_size)
    assert reader.field_names_ == ["id", "x"] and reader.copied_fields == ()
    got_ids, got_xs = columns(iterate_all(ws, reader, instances), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


@pytest.mark.timeout(60)
def test_npy_reader_is_zero_copy_and_keeps_the_memmap_alive(ws, tmp_path):
    n = 5000
    ids, xs = id_x(n)
    np.save(tmp_path / "id.npy", ids)
    np.save(tmp_path / "x.npy", xs)
    reader = NpyReader({"id": str(tmp_path / "id.npy"), "x": str(tmp_path / "x.npy")},
                       batch_size=16)
    maps = []
    for a in reader._state.arrays:      # np.asarray(memmap) is a plain view of it
        assert not a.flags.writeable
        while not isinstance(a, np.memmap):
            a = a.base
        maps.append(a)
    init = core.Net("init")
    reader.setup_ex(init, core.Net("exit"))
    ws.run(init)
    pointers = []
    probe = core.Net("probe")
    probe.Python(lambda inputs, outputs: pointers.extend(
        t.data.__array_interface__["data"][0] for t in inputs))(list(reader._blobs), [])
    ws.run(probe)
    for ptr, m in zip(pointers, maps):
        start = m.__array_interface__["data"][0]
        assert start <= ptr < start + m.nbytes
    # the workspace tensor holds the mapping: dropping the reader and the
    # nets leaves the data readable
    blob_names = [str(b) for b in reader._blobs]
    del reader, maps, init, probe
    gc.collect()
    np.testing.assert_array_equal(np.asarray(ws.blobs[blob_names[0]].fetch()), ids)
    np.testing.assert_array_equal(np.asarray(ws.blobs[blob_names[1]].fetch()), xs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_npy_reader_shuffled_reads_every_record_once(ws, tmp_path, instances):
    n = 777
    ids, xs = id_x(n)
    np.save(tmp_path / "id.npy", ids)
    reader = NpyReader([str(tmp_path / "id.npy")], batch_size=10, shuffle=True, seed=3)
    (got,) = columns(iterate_all(ws, reader, instances), 1)
    assert sorted(got.tolist()) == ids.tolist()
    assert got.tolist() != ids.tolist()


@pytest.mark.timeout(60)
def test_npz_round_trip(ws, tmp_path):
    n = 300
    ids, xs = id_x(n)
    path = str(tmp_path / "data.npz")
    np.savez(path, id=ids, x=xs, other=np.zeros(n, np.int8))
    reader = NpyReader(path, fields=["x", "id"], batch_size=7)
    assert reader.field_names_ == ["x", "id"]
    got_xs, got_ids = columns(iterate_all(ws, reader, 2), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


@pytest.mark.timeout(60)
def test_npy_reader_one_path_and_a_dict_of_shard_lists(ws, tmp_path):
    ids, xs = id_x(90)
    np.save(tmp_path / "only.npy", ids)
    reader = NpyReader(str(tmp_path / "only.npy"), batch_size=8)
    assert reader.field_names_ == ["only"]
    (got,) = columns(iterate_all(ws, reader, 2), 1)
    assert sorted(got.tolist()) == ids.tolist()
    paths = []
    for k, part in enumerate(np.array_split(xs, 3)):
        paths.append(str(tmp_path / ("x_part%d.npy" % k)))
        np.save(paths[-1], part)
    reader = NpyReader({"id": str(tmp_path / "only.npy"), "x": paths}, batch_size=8)
    assert reader.copied_fields == ()       # shards are read in place, not concatenated
    got_ids, got_xs = columns(iterate_all(ws, reader, 2), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


def test_missing_file_is_named(tmp_path):
    np.save(tmp_path / "id.npy", np.arange(3))
    missing = str(tmp_path / "nope.npy")
    with pytest.raises(FileMissingError, match="nope.npy") as e:
        NpyReader({"id": str(tmp_path / "id.npy"), "x": missing})
    assert isinstance(e.value, FastpipeError) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(FileMissingError, match="gone.npz"):
        NpyReader(str(tmp_path / "gone.npz"))
    with pytest.raises(FileMissingError, match="nodir"):
        NpyReader(str(tmp_path / "nodir"))


def test_mismatched_lengths_name_both_files(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(3))
    np.save(tmp_path / "b.npy", np.arange(4))
    with pytest.raises(ArgumentError, match=r"b\.npy.* 4 records but .*a\.npy.* 3"):
        NpyReader(str(tmp_path))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.complex64, "datetime64[s]"])
def test_unsupported_dtype_names_the_file(tmp_path, dtype):
    np.save(tmp_path / "bad.npy", np.zeros(3, dtype=dtype))
    with pytest.raises(ArgumentError, match=r"bad\.npy.*dtype"):
        NpyReader(str(tmp_path))


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ArgumentError, match=r"obj\.npy"):
        NpyReader(str(tmp_path))


def test_shards_of_different_dtypes_are_named(tmp_path):
    np.save(tmp_path / "id-00000.npy", np.arange(3, dtype=np.int64))
    np.save(tmp_path / "id-00001.npy", np.arange(3, dtype=np.int32))
    with pytest.raises(ArgumentError, match=r"id-00001\.npy.*int32.*id-00000\.npy"):
        NpyReader(str(tmp_path))


def test_npz_missing_member_is_named(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, a=np.arange(3))
    with pytest.raises(ArgumentError, match=r"d\.npz.*'b'"):
        NpyReader(path, fields=["b"])


# ---- NpyReader: several shards read in place (ReadSegmentBatch) ---------------------

def write_shards(directory, sizes, fields=("id", "x"), start=0):
    """<field>-<k>.npy shards of the given sizes; returns the full columns."""
    n = sum(sizes)
    ids, xs = id_x(start + n)
    ids, xs = ids[start:], xs[start:]
    os.makedirs(str(directory), exist_ok=True)
    off = 0
    for k, m in enumerate(sizes):
        for f, col in zip(("id", "x"), (ids, xs)):
            if f in fields:
                np.save(os.path.join(str(directory), "%s-%05d.npy" % (f, k)), col[off:off + m])
        off += m
    return ids, xs


def expected_counts(sizes, batch, enforce=False):
    """borrowed / assembled batches of a sequential read over these shards."""
    bounds = np.cumsum([0] + list(sizes))
    n = int(bounds[-1])
    out = {"borrowed": 0, "assembled": 0, "gathered": 0}
    for pos in range(0, n, batch):
        end = min(pos + batch, n)
        if enforce and end - pos < batch:
            break
        s0 = np.searchsorted(bounds, pos, side="right") - 1
        s1 = np.searchsorted(bounds, end - 1, side="right") - 1
        out["borrowed" if s0 == s1 else "assembled"] += 1
    return out


def maps_of(reader):
    """The memory maps behind a reader's segments."""
    maps = []
    for a in reader._state.arrays:
        while not isinstance(a, np.memmap):
            a = a.base
        maps.append(a)
    return maps


def inside(arr, maps):
    ptr = arr.__array_interface__["data"][0]
    for m in maps:
        start = m.__array_interface__["data"][0]
        if start <= ptr and ptr + arr.nbytes <= start + m.nbytes:
            return True
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_shard_boundary_inside_a_batch_is_assembled_and_the_rest_borrowed(ws, tmp_path,
                                                                         instances):
    sizes = [10, 10, 10, 3, 25]
    ids, xs = write_shards(tmp_path, sizes)
    reader = NpyReader(str(tmp_path), batch_size=7)
    assert reader.copied_fields == () and reader.segment_rows == tuple(sizes)
    maps = maps_of(reader)
    got = iterate_all_raw(ws, reader, instances)
    got_ids = np.concatenate([b[0] for b in got])
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), xs[got_ids])
    want = expected_counts(sizes, 7)
    assert reader.batch_counts() == want
    # a borrowed batch *is* the mapping (through the queue, to the loop), read-only;
    # an assembled one is the core's own memory
    borrowed = [b for b in got if inside(b[0], maps)]
    assert len(borrowed) == want["borrowed"]
    for b in borrowed:
        assert inside(b[1], maps) and not b[0].flags.writeable and not b[1].flags.writeable
    assert all(not inside(b[1], maps) for b in got if not inside(b[0], maps))


def iterate_all_raw(ws, reader, instances=1):
    """The arrays the loop gets, as they are (no copy)."""
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, num_runtime_threads=instances)
    with session.LocalSession(ws) as s:
        return [tuple(b) for b in s.iterate(tg, q)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [None, 1, 16])
def test_many_tiny_shards_exactly_once(ws, tmp_path, instances, batch_size):
    rng = np.random.default_rng(7)
    sizes = [int(v) for v in rng.integers(0, 4, size=300)]     # empty shards too
    ids, xs = write_shards(tmp_path, sizes)
    reader = NpyReader(str(tmp_path), batch_size=batch_size)
    assert reader.segment_rows == tuple(v for v in sizes if v)  # empty shards add no cut
    got_ids, got_xs = columns(iterate_all(ws, reader, instances), 2) if batch_size else \
        [np.stack(c) for c in zip(*iterate_all(ws, reader, instances))]
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])
    counts = reader.batch_counts()
    assert counts == expected_counts(sizes, batch_size or 1)
    assert counts["assembled"] == (0 if batch_size in (None, 1) else counts["assembled"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_many_shards_shuffled_with_a_seed_are_reproducible(ws, tmp_path, instances):
    sizes = [5, 1, 17, 0, 40, 2, 9]
    ids, xs = write_shards(tmp_path, sizes)
    orders = []
    for _ in range(2):
        reader = NpyReader(str(tmp_path), batch_size=6, shuffle=True, seed=11)
        got = iterate_all(ws, reader, 1)
        got_ids, got_xs = columns(got, 2)
        assert sorted(got_ids.tolist()) == ids.tolist()
        np.testing.assert_array_equal(got_xs, xs[got_ids])
        assert reader.batch_counts() == {"borrowed": 0, "assembled": 0,
                                         "gathered": len(got)}
        orders.append(got_ids.tolist())
    assert orders[0] == orders[1] != ids.tolist()
    # several instances read the same permutation (in some interleaving), exactly once
    reader = NpyReader(str(tmp_path), batch_size=6, shuffle=True, seed=11)
    got_ids, got_xs = columns(iterate_all(ws, reader, instances), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])
    # one shard holds the same records: the same seed gives the same order
    one = tmp_path / "one"
    write_shards(one, [sum(sizes)])
    (got_one,) = columns(iterate_all(ws, NpyReader(str(one), fields=["id"], batch_size=6,
                                                   shuffle=True, seed=11)), 1)
    assert got_one.tolist() == orders[0]


@pytest.mark.timeout(60)
def test_fields_cut_at_different_rows_are_read_through_views(ws, tmp_path):
    ids, xs = id_x(50)
    id_paths, x_paths = [], []
    for k, (lo, hi) in enumerate([(0, 20), (20, 50)]):
        id_paths.append(str(tmp_path / ("id%d.npy" % k)))
        np.save(id_paths[-1], ids[lo:hi])
    for k, (lo, hi) in enumerate([(0, 5), (5, 30), (30, 50)]):
        x_paths.append(str(tmp_path / ("x%d.npy" % k)))
        np.save(x_paths[-1], xs[lo:hi])
    reader = NpyReader({"id": id_paths, "x": x_paths}, batch_size=4)
    assert reader.copied_fields == () and reader.segment_rows == (5, 15, 10, 20)
    assert all(isinstance(a.base if a.base is not None else a, np.memmap)
               or isinstance(a, np.memmap) for a in reader._state.arrays)
    got_ids, got_xs = columns(iterate_all(ws, reader, 2), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


@pytest.mark.timeout(60)
def test_an_op_writing_a_borrowed_batch_in_place_never_writes_the_file(ws, tmp_path):
    sizes = [32, 32]
    ids, xs = write_shards(tmp_path, sizes)
    before = open(tmp_path / "x-00000.npy", "rb").read()
    reader = NpyReader(str(tmp_path), batch_size=16)
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, processor=_scale_in_place)
    with session.LocalSession(ws) as s:
        got = [tuple(np.array(a) for a in b) for b in s.iterate(tg, q)]
    assert open(tmp_path / "x-00000.npy", "rb").read() == before
    got_ids, got_xs = columns(got, 2)
    np.testing.assert_array_equal(got_xs, xs[got_ids] * 3)


def _scale_in_place(rec):
    """Scale the x field of the batch blob in place (its buffer is the mapping)."""
    from fastpipe.net_builder import ops
    x = rec.field_blobs()[1]
    ops.Scale([x], [x], scale=3.0)
    return rec


@pytest.mark.timeout(60)
def test_a_python_stage_sees_a_borrowed_batch_read_only(ws, tmp_path):
    """The stage's array is the mapping (PROT_READ): writing into it raises
    instead of faulting, and fails the run naming the stage."""
    write_shards(tmp_path, [16, 16])
    reader = NpyReader(str(tmp_path), batch_size=8)

    def zero(batch_ids, x):
        x[:] = 0
        return batch_ids, x
    with task.TaskGroup() as tg:
        q = pipeline.pipe(reader, processor=pipeline.PythonProcessor(zero, name="zero"))
    with pytest.raises(RunError, match="zero") as e:
        with session.LocalSession(ws) as s:
            list(s.iterate(tg, q))
    cause = e.value.__cause__
    assert isinstance(cause, ValueError) and "read-only" in str(cause)


@pytest.mark.timeout(60)
def test_empty_dataset_reads_nothing(ws, tmp_path):
    np.save(tmp_path / "id.npy", np.zeros(0, np.int64))
    reader = NpyReader(str(tmp_path), batch_size=4)
    assert iterate_all(ws, reader, 2) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_npz_stored_members_are_memory_mapped_in_place(ws, tmp_path, instances):
    n = 300
    ids, xs = id_x(n)
    path = str(tmp_path / "data.npz")
    np.savez(path, id=ids, x=xs, flag=(ids % 3 == 0), h=xs.astype(np.float16))
    reader = NpyReader(path, batch_size=32)
    assert reader.copied_fields == ()
    for a in reader._state.arrays:
        assert isinstance(a, np.memmap) and a.filename == os.path.realpath(path)
        assert not a.flags.writeable
    flat = dict(zip(reader.field_names_, reader._state.arrays))
    np.testing.assert_array_equal(flat["x"], xs)
    np.testing.assert_array_equal(flat["flag"], ids % 3 == 0)
    got = iterate_all_raw(ws, reader, instances)
    maps = maps_of(reader)
    assert all(inside(a, maps) for b in got for a in b)     # every batch borrowed
    cols = dict(zip(reader.field_names_, columns(got, 4)))
    assert sorted(cols["id"].tolist()) == ids.tolist()
    np.testing.assert_array_equal(cols["x"], xs[cols["id"]])
    np.testing.assert_array_equal(cols["h"], xs.astype(np.float16)[cols["id"]])


@pytest.mark.timeout(60)
def test_npz_compressed_members_are_loaded_once_and_said_so(ws, tmp_path):
    ids, xs = id_x(200)
    path = str(tmp_path / "c.npz")
    np.savez_compressed(path, id=ids, x=xs)
    reader = NpyReader(path, batch_size=9)
    assert reader.copied_fields == ("id", "x")
    assert not any(isinstance(a, np.memmap) for a in reader._state.arrays)
    got_ids, got_xs = columns(iterate_all(ws, reader, 2), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


def test_npz_fortran_member_is_copied_once(tmp_path):
    xs = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    path = str(tmp_path / "f.npz")
    np.savez(path, x=xs, id=np.arange(4))
    reader = NpyReader(path)
    assert reader.copied_fields == ("x",)


def test_npz_bad_dtype_is_named(tmp_path):
    path = str(tmp_path / "bad.npz")
    np.savez(path, u=np.zeros(3, np.uint32))
    with pytest.raises(ArgumentError, match=r"bad\.npz\[u\].*uint32"):
        NpyReader(path)


def test_read_segment_batch_arguments_are_checked_when_added():
    net = core.Net("segs")
    with pytest.raises(OperatorDefError, match=r"ReadSegmentBatch in net 'segs(_\d+)?'.*"
                                               r"2 segments per field"):
        net.ReadSegmentBatch(["c", "a0", "a1", "b0"], ["stop", "a", "b"], segment_rows=[3, 4])
    with pytest.raises(OperatorDefError, match="segment_rows is empty"):
        net.ReadSegmentBatch(["c", "a0"], ["stop", "a"])
    with pytest.raises(OperatorDefError, match=r"segment_rows=\[3, -1\]"):
        net.ReadSegmentBatch(["c", "a0", "a1"], ["stop", "a"], segment_rows=[3, -1])


@pytest.mark.timeout(60)
def test_a_segment_that_does_not_match_segment_rows_fails_the_read_naming_it(ws):
    init = core.Net("seg_init")
    init.CreateTreeCursor([], "cur", fields=["a"])
    init.GivenTensorInt64Fill([], "a0", values=[1, 2, 3], shape=[3])
    init.GivenTensorInt64Fill([], "a1", values=[4, 5], shape=[2])
    ws.run(init)
    read = core.Net("seg_read")
    read.ReadSegmentBatch(["cur", "a0", "a1"], ["stop", "a"], batch_size=2,
                          segment_rows=[3, 3])
    ws.run(read)                                            # rows 0-1: inside segment 0
    np.testing.assert_array_equal(ws.blobs["a"].fetch(), [1, 2])
    with pytest.raises(RunError, match=r"ReadSegmentBatch.*segment 1 \(input 2 'a1'\) is "
                                       r"int64\[2\] but segment_rows says 3 rows"):
        ws.run(read)                                        # rows 2-3 span into segment 1


@pytest.mark.timeout(60)
def test_read_segment_batch_record_mode_and_enforce(ws):
    init = core.Net("rec_init")
    init.CreateTreeCursor([], "cur", fields=["a"])
    init.GivenTensorFill([], "a0", values=[0.0, 1.0, 2.0, 3.0], shape=[2, 2])
    init.GivenTensorFill([], "a1", values=[4.0, 5.0, 6.0, 7.0, 8.0, 9.0], shape=[3, 2])
    ws.run(init)
    read = core.Net("rec_read")
    read.ReadSegmentBatch(["cur", "a0", "a1"], ["stop", "a"], record=True, segment_rows=[2, 3])
    got = []
    for _ in range(6):
        ws.run(read)
        if ws.blobs["stop"].fetch():
            break
        got.append(ws.blobs["a"].fetch().tolist())
    assert got == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    reset = core.Net("rw")
    reset.ResetCursor(["cur"], [])
    ws.run(reset)
    read2 = core.Net("enf_read")
    read2.ReadSegmentBatch(["cur", "a0", "a1"], ["stop", "a"], batch_size=2,
                           enforce_batch_size=True, segment_rows=[2, 3])
    sizes = []
    for _ in range(5):
        ws.run(read2)
        if ws.blobs["stop"].fetch():
            break
        sizes.append(len(ws.blobs["a"].fetch()))
    assert sizes == [2, 2]                      # the short tail is dropped


def test_to_dot_shows_an_npy_reader_as_a_source(tmp_path):
    from fastpipe import net_printer
    np.save(tmp_path / "id.npy", np.arange(10))
    with task.TaskGroup() as tg:
        pipeline.pipe(NpyReader(str(tmp_path), batch_size=8, name="files"),
                      num_runtime_threads=2)
    assert "source files\\nReadSegmentBatch, batch 8" in net_printer.to_dot(tg)


# ---- NpyShardWriter -----------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
@pytest.mark.parametrize("per_shard", [1, 100, 5000])
def test_shards_round_trip_exactly(ws, tmp_path, instances, per_shard):
    n = 2003
    ids, xs = id_x(n)
    out = str(tmp_path / "out")
    writer = NpyShardWriter(out, ["id", "x"], records_per_shard=per_shard)
    run_into(ws, sources.ArrayReader({"id": ids, "x": xs}, batch_size=9), writer, instances)
    files = sorted(os.listdir(out))
    assert not [f for f in files if f.startswith(".")]          # no temporaries left
    nshards = -(-n // per_shard)
    assert files == sorted("%s-%05d.npy" % (f, k) for f in ("id", "x") for k in range(nshards))
    sizes = [len(np.load(os.path.join(out, "id-%05d.npy" % k))) for k in range(nshards)]
    assert sizes == [per_shard] * (nshards - 1) + [n - per_shard * (nshards - 1)]
    reader = NpyReader(out, batch_size=50)
    got_ids, got_xs = columns(iterate_all(ws, reader, instances), 2)
    assert sorted(got_ids.tolist()) == ids.tolist()
    np.testing.assert_array_equal(got_xs, xs[got_ids])


@pytest.mark.timeout(60)
def test_shard_numbering_resumes_after_existing_shards(ws, tmp_path):
    out = str(tmp_path)
    ids, xs = id_x(250)
    run_into(ws, sources.ArrayReader({"id": ids}, batch_size=8),
             NpyShardWriter(out, ["id"], records_per_shard=100), 2)
    assert sorted(os.listdir(out)) == ["id-00000.npy", "id-00001.npy", "id-00002.npy"]
    writer = NpyShardWriter(out, ["id"], records_per_shard=100)
    run_into(ws, sources.ArrayReader({"id": ids + 1000}, batch_size=8), writer, 2)
    assert sorted(os.path.basename(p) for p in writer.written) == \
        ["id-00003.npy", "id-00004.npy", "id-00005.npy"]
    (got,) = columns(iterate_all(ws, NpyReader(out, batch_size=64), 2), 1)
    assert sorted(got.tolist()) == ids.tolist() + (ids + 1000).tolist()


@pytest.mark.timeout(60)
def test_shard_writer_bad_dtype_fails_the_run_naming_writer_and_field(ws, tmp_path):
    src = sources.ArrayReader({"s": np.array(["a", "b"], dtype=object)}, batch_size=1)
    with pytest.raises(RunError, match=r"NpyShardWriter 'w'.*field 's'"):
        run_into(ws, src, NpyShardWriter(str(tmp_path), ["s"], name="w"), 1)


def test_shard_writer_arguments(tmp_path):
    with pytest.raises(ArgumentError, match="records_per_shard"):
        NpyShardWriter(str(tmp_path), ["a"], records_per_shard=0)
    with pytest.raises(ArgumentError, match="distinct"):
        NpyShardWriter(str(tmp_path), ["a", "a"])


# ---- TextFileWriter -----------------------------------------------------------------

TSV_FIELDS = (("id", np.int64), ("f32", np.float32), ("f64", np.float64), ("i8", np.int8),
              ("u16", np.uint16), ("s", str))


def tsv_schema(fields=TSV_FIELDS):
    return schema.Struct(*[(n, schema.Scalar(dt)) for n, dt in fields])


def tsv_data(n, seed=0):
    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal(n).astype(np.float32) * np.float32(1e-3)
    f64 = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    specials32 = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).max,
                           np.finfo(np.float32).tiny, np.float32(1e-45), 0.1], np.float32)
    specials64 = np.array([np.nan, -np.inf, np.inf, -0.0, np.finfo(np.float64).max,
                           np.finfo(np.float64).tiny, 5e-324, 0.1])
    f32[:len(specials32)] = specials32
    f64[:len(specials64)] = specials64
    ids = np.arange(n, dtype=np.int64)
    ids[1] = np.iinfo(np.int64).min
    ids[2] = np.iinfo(np.int64).max
    return {"id": ids, "f32": f32, "f64": f64,
            "i8": rng.integers(-128, 128, n).astype(np.int8),
            "u16": rng.integers(0, 65536, n).astype(np.uint16),
            "s": np.array(["r%d ü %s" % (i, "x" * (i % 5)) for i in range(n)], dtype=object)}


def read_tsv(ws, path, fields=TSV_FIELDS, instances=1):
    init = core.Net("tsv_init")
    reader = TextFileReader(init, path, tsv_schema(fields), batch_size=100)
    ws.run(init)
    return columns(iterate_all(ws, reader, instances), len(fields))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_tsv_round_trip_is_exact(ws, tmp_path, instances):
    n = 1500
    data = tsv_data(n)
    path = str(tmp_path / "out.tsv")
    writer = TextFileWriter(path, tsv_schema())
    run_into(ws, sources.ArrayReader(data, batch_size=13), writer, instances)
    with open(path, encoding="utf-8") as fh:
        assert sum(1 for _ in fh) == n
    got = read_tsv(ws, path, instances=instances)
    order = np.argsort(got[0], kind="stable")
    got = [g[order] for g in got]
    want_order = np.argsort(data["id"], kind="stable")
    for (name, dt), g in zip(TSV_FIELDS, got):
        want = data[name][want_order]
        if dt is str:
            assert [x.decode("utf-8") for x in g.tolist()] == want.tolist()
        else:
            assert g.dtype == np.dtype(dt)
            # bit-exact, nan and -0.0 included
            assert g.tobytes() == want.astype(dt).tobytes(), name


@pytest.mark.timeout(60)
def test_tsv_lines_of_instances_never_interleave(ws, tmp_path):
    n = 4000
    path = str(tmp_path / "out.tsv")
    fields = (("id", np.int64), ("s", str))
    data = {"id": np.arange(n, dtype=np.int64),
            "s": np.array(["v%d" % i for i in range(n)], dtype=object)}
    run_into(ws, sources.ArrayReader(data, batch_size=3), TextFileWriter(path, tsv_schema(fields)),
             4)
    lines = open(path, encoding="utf-8").read().split("\n")
    assert lines[-1] == ""
    assert collections.Counter(lines[:-1]) == collections.Counter(
        "%d\tv%d" % (i, i) for i in range(n))


@pytest.mark.timeout(60)
def test_tsv_truncates_each_run_unless_append(ws, tmp_path):
    path = str(tmp_path / "out.tsv")
    fields = (("id", np.int64),)
    for _ in range(2):
        run_into(ws, sources.ArrayReader({"id": np.arange(10)}, batch_size=4),
                 TextFileWriter(path, tsv_schema(fields)), 2)
    assert sorted(read_tsv(ws, path, fields)[0].tolist()) == list(range(10))
    run_into(ws, sources.ArrayReader({"id": np.arange(10, 15)}, batch_size=4),
             TextFileWriter(path, tsv_schema(fields), append=True), 2)
    assert sorted(read_tsv(ws, path, fields)[0].tolist()) == list(range(15))


@pytest.mark.timeout(60)
def test_tsv_string_with_a_tab_fails_naming_field(ws, tmp_path):
    path = str(tmp_path / "out.tsv")
    src = sources.ArrayReader({"s": np.array(["ok", "a\tb"], dtype=object)}, batch_size=1)
    with pytest.raises(RunError, match=r"out\.tsv.*field 0 \('s'\).*tab or line end"):
        run_into(ws, src, TextFileWriter(path, tsv_schema((("s", str),))), 1)


@pytest.mark.timeout(60)
def test_tsv_field_of_another_dtype_fails_naming_file_and_field(ws, tmp_path):
    path = str(tmp_path / "out.tsv")
    src = sources.ArrayReader({"id": np.arange(5, dtype=np.int32)}, batch_size=2)
    with pytest.raises(RunError, match=r"out\.tsv.*field 0 \('id'\).*int32.*expected a 1-D int64"):
        run_into(ws, src, TextFileWriter(path, tsv_schema((("id", np.int64),))), 1)


@pytest.mark.timeout(60)
def test_tsv_unwritable_path_fails_naming_it(ws, tmp_path):
    path = str(tmp_path / "no_such_dir" / "out.tsv")
    src = sources.ArrayReader({"id": np.arange(5)}, batch_size=2)
    with pytest.raises(RunError, match=r"cannot open file '.*no_such_dir/out\.tsv' for writing"):
        run_into(ws, src, TextFileWriter(path, tsv_schema((("id", np.int64),))), 1)


def test_tsv_writer_refuses_unsupported_schema(tmp_path):
    with pytest.raises(GraphError, match=r"field 'b'.*bool"):
        TextFileWriter(str(tmp_path / "o.tsv"), tsv_schema((("b", np.bool_),)))
    with pytest.raises(ArgumentError, match="filename"):
        TextFileWriter("", tsv_schema((("a", np.int64),)))


@pytest.mark.parametrize("make", [
    lambda d: TextFileWriter(os.path.join(d, "o.tsv"), tsv_schema((("id", np.int64),))),
    lambda d: NpyShardWriter(d, ["id"])])
def test_a_writer_is_set_up_in_one_task_group_only(tmp_path, make):
    writer = make(str(tmp_path))
    with task.TaskGroup():
        pipeline.pipe(sources.ArrayReader({"id": np.arange(3)}), writer)
    with task.TaskGroup():
        with pytest.raises(GraphError, match="another TaskGroup"):
            pipeline.pipe(sources.ArrayReader({"id": np.arange(3)}), writer)
