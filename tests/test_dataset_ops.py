"""Dataset operator kernels: CreateTreeCursor, ResetCursor, ReadNextBatch,
ComputeOffset, SortAndShuffle, ReadRandomBatch, CheckDatasetConsistency.

Expectations are computed by hand from the spec (runtime §5.1); every
scenario here also ran on the real Caffe2 in /tmp/caffe2-venv with the same
results (the SortAndShuffle permutations are Caffe2's, bit for bit).
"""
import itertools
import threading

import numpy as np
import pytest

from fastpipe import core, workspace
from fastpipe.errors import RunError

pytestmark = pytest.mark.timeout(120, method="thread")

# ---- a nested dataset: 5 records -------------------------------------------------
#
#   record  a   b (list)             b:c (list of lists)
#   0       0   [0, 10]              [[p], [q, r]]
#   1       1   []                   []
#   2       2   [20]                 [[]]
#   3       3   [30, 40, 50]         [[s], [t], []]
#   4       4   [60]                 [[u, v]]

FIELDS = ["a", "b:lengths", "b:values", "b:c:lengths", "b:c:values"]
BLOBS = ["a", "bl", "bv", "bcl", "bcv"]
OUTS = ["o_a", "o_bl", "o_bv", "o_bcl", "o_bcv"]


def nested_data():
    return {
        "a": np.arange(5, dtype=np.float32),
        "bl": np.array([2, 0, 1, 3, 1], dtype=np.int32),
        "bv": np.arange(7, dtype=np.int64) * 10,
        "bcl": np.array([1, 2, 0, 1, 1, 0, 2], dtype=np.int32),
        "bcv": np.array([b"p", b"q", b"r", b"s", b"t", b"u", b"v"], dtype=object),
    }


def feed(data):
    for k, v in data.items():
        workspace.FeedBlob(k, v)


def fetch(names):
    return [workspace.FetchBlob(n) for n in names]


def create_cursor(name="cur", fields=FIELDS):
    net = core.Net("create_" + name)
    net.CreateTreeCursor([], [name], fields=fields)
    workspace.RunNetOnce(net)


def reader_net(name, batch_size, enforce=False, cursor="cur", blobs=BLOBS, outs=OUTS):
    net = core.Net(name)
    net.ReadNextBatch([cursor] + blobs, outs, batch_size=batch_size,
                      enforce_batch_size=enforce)
    return net


def as_lists(arrays):
    return [a.tolist() for a in arrays]


@pytest.fixture
def nested():
    feed(nested_data())
    create_cursor()


# ---- ReadNextBatch ------------------------------------------------------------------

def test_read_next_batch_nested_slices(nested):
    net = reader_net("read2", 2)
    workspace.RunNetOnce(net)
    assert as_lists(fetch(OUTS)) == [[0.0, 1.0], [2, 0], [0, 10], [1, 2], [b"p", b"q", b"r"]]
    workspace.RunNetOnce(net)
    assert as_lists(fetch(OUTS)) == [[2.0, 3.0], [1, 3], [20, 30, 40, 50], [0, 1, 1, 0],
                                     [b"s", b"t"]]
    workspace.RunNetOnce(net)     # a short tail is returned as is
    assert as_lists(fetch(OUTS)) == [[4.0], [1], [60], [2], [b"u", b"v"]]


def test_read_next_batch_keeps_dtypes_and_inner_dims():
    feed({"m": np.arange(12, dtype=np.int16).reshape(4, 3),
          "s": np.array([[b"a", b"b"], [b"c", b"d"], [b"e", b"f"], [b"g", b"h"]], dtype=object)})
    create_cursor(fields=["m", "s"])
    net = reader_net("read3", 3, blobs=["m", "s"], outs=["mo", "so"])
    workspace.RunNetOnce(net)
    mo, so = fetch(["mo", "so"])
    assert mo.dtype == np.int16 and mo.shape == (3, 3)
    np.testing.assert_array_equal(mo, np.arange(9).reshape(3, 3))
    assert so.shape == (3, 2) and so.tolist() == [[b"a", b"b"], [b"c", b"d"], [b"e", b"f"]]
    workspace.RunNetOnce(net)
    assert fetch(["mo"])[0].tolist() == [[9, 10, 11]]
    workspace.RunNetOnce(net)
    mo, so = fetch(["mo", "so"])
    assert mo.shape == (0, 3) and mo.dtype == np.int16 and so.shape == (0, 2)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 7])
def test_exhausted_reads_are_empty(nested, batch_size):
    net = reader_net("read", batch_size)
    seen = []
    for _ in range(-(-5 // batch_size)):
        workspace.RunNetOnce(net)
        seen += fetch(["o_a"])[0].tolist()
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    for _ in range(3):
        workspace.RunNetOnce(net)
        outs = fetch(OUTS)
        assert [o.shape[0] for o in outs] == [0, 0, 0, 0, 0]
        assert [o.dtype for o in outs] == [np.float32, np.int32, np.int64, np.int32, object]


@pytest.mark.parametrize("batch_size,full", [(1, 5), (2, 2), (3, 1), (5, 1), (7, 0)])
def test_enforce_batch_size_consumes_short_tail_but_returns_it_empty(nested, batch_size, full):
    net = reader_net("read", batch_size, enforce=True)
    got = []
    for _ in range(full):
        workspace.RunNetOnce(net)
        a = fetch(["o_a"])[0]
        assert a.shape == (batch_size,)
        got += a.tolist()
    assert got == list(range(full * batch_size))
    for _ in range(3):          # the tail is gone: empty from now on
        workspace.RunNetOnce(net)
        assert [o.shape[0] for o in fetch(OUTS)] == [0] * 5
    # the tail was consumed, not left behind: a plain reader sees nothing either
    workspace.RunNetOnce(reader_net("plain", 10))
    assert fetch(["o_a"])[0].shape == (0,)


def test_reset_cursor_rewinds(nested):
    net = reader_net("read", 4)
    workspace.RunNetOnce(net)
    workspace.RunNetOnce(net)
    reset = core.Net("reset")
    reset.ResetCursor(["cur"], [])
    workspace.RunNetOnce(reset)
    workspace.RunNetOnce(net)
    assert fetch(["o_a", "o_bv"])[0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert fetch(["o_bv"])[0].tolist() == [0, 10, 20, 30, 40, 50]


def test_nets_share_one_cursor(nested):
    # two readers over one cursor: each record is read once
    r1 = reader_net("r1", 2, outs=["x%d" % i for i in range(5)])
    r2 = reader_net("r2", 2, outs=["y%d" % i for i in range(5)])
    workspace.RunNetOnce(r1)
    workspace.RunNetOnce(r2)
    assert fetch(["x0", "y0"])[0].tolist() == [0.0, 1.0]
    assert fetch(["y0", "y2"])[0].tolist() == [2.0, 3.0]
    assert fetch(["y2"])[0].tolist() == [20, 30, 40, 50]


# ---- field domains ---------------------------------------------------------------

def compute_offsets(blobs=BLOBS, cursor="cur", name="offsets"):
    net = core.Net("co_" + name)
    net.ComputeOffset([cursor] + blobs, [name])
    workspace.RunNetOnce(net)
    return workspace.FetchBlob(name)


def test_compute_offset_nested(nested):
    off = compute_offsets()
    assert off.dtype == np.int64
    assert off.tolist() == [[0, 0, 0], [1, 2, 3], [2, 2, 3], [3, 3, 3], [4, 6, 5], [5, 7, 7]]


def test_compute_offset_resets_cursor_and_starts_from_zero(nested):
    net = reader_net("read", 2)
    workspace.RunNetOnce(net)
    # Caffe2 starts the table at the cursor's current position (rows then
    # repeat past the end); fastpipe always tabulates from record 0.
    assert compute_offsets()[:2].tolist() == [[0, 0, 0], [1, 2, 3]]
    workspace.RunNetOnce(net)
    assert fetch(["o_a"])[0].tolist() == [0.0, 1.0]


def test_longest_lengths_prefix_wins():
    # domains: root {a:lengths}, a {a:b:lengths, a:d}, a:b {a:b:c}
    fields = ["a:lengths", "a:b:lengths", "a:b:c", "a:d"]
    feed({"al": np.array([2, 1], dtype=np.int32),
          "abl": np.array([1, 3, 0], dtype=np.int32),
          "abc": np.arange(4, dtype=np.int32) + 100,
          "ad": np.array([7.0, 8.0, 9.0])})
    blobs = ["al", "abl", "abc", "ad"]
    create_cursor(fields=fields)
    assert compute_offsets(blobs).tolist() == [[0, 0, 0], [1, 2, 4], [2, 3, 4]]
    net = reader_net("read", 1, blobs=blobs, outs=["o1", "o2", "o3", "o4"])
    workspace.RunNetOnce(net)
    assert as_lists(fetch(["o1", "o2", "o3", "o4"])) == [[2], [1, 3], [100, 101, 102, 103],
                                                        [7.0, 8.0]]
    workspace.RunNetOnce(net)
    assert as_lists(fetch(["o1", "o2", "o3", "o4"])) == [[1], [0], [], [9.0]]


def test_bare_lengths_field_owns_no_fields():
    # "lengths" at the top defines a domain, but "values" has no matching
    # prefix: it stays in the root domain (Caffe2's rule).
    feed({"L": np.array([1, 1], dtype=np.int32), "V": np.array([7, 8], dtype=np.int32)})
    create_cursor(fields=["lengths", "values"])
    assert compute_offsets(["L", "V"]).tolist() == [[0, 0], [1, 1], [2, 2]]
    workspace.RunNetOnce(reader_net("read", 1, blobs=["L", "V"], outs=["lo", "vo"]))
    assert as_lists(fetch(["lo", "vo"])) == [[1], [7]]


# ---- SortAndShuffle -------------------------------------------------------------

KEYS = np.array([5, 3, 9, 1, 7, 2, 8, 6, 4, 0, 3, 3, 1], dtype=np.int32)

# (sort_by_field_idx, batch_size, shuffle_size) -> Caffe2's output for KEYS
CAFFE2_SORT_AND_SHUFFLE = {
    (0, 1, 1): [5, 9, 6, 4, 10, 7, 0, 11, 2, 3, 8, 1, 12],
    (0, 2, 2): [11, 8, 10, 1, 3, 9, 4, 6, 7, 0, 12, 5, 2],
    (-1, 3, 2): [8, 9, 7, 10, 11, 6, 4, 5, 0, 2, 3, 1, 12],
    (-1, 1, 1): [3, 0, 11, 10, 5, 9, 8, 6, 12, 1, 7, 4, 2],
    (0, 4, 1): [4, 6, 7, 0, 12, 5, 3, 9, 11, 8, 10, 1, 2],
    (-1, 2, 100): [11, 0, 4, 9, 10, 6, 5, 3, 1, 8, 2, 7, 12],
    (0, 5, 1): [0, 10, 7, 8, 11, 5, 9, 1, 12, 3, 4, 6, 2],
}


def sort_and_shuffle(sort_by, batch_size, shuffle_size, name="idx"):
    net = core.Net("ss_%s_%d_%d" % (sort_by, batch_size, shuffle_size))
    net.SortAndShuffle(["kc", "k"], [name], sort_by_field_idx=sort_by,
                       batch_size=batch_size, shuffle_size=shuffle_size,
                       seed=1)      # Caffe2's fixed permutation (unseeded: random per run)
    workspace.RunNetOnce(net)
    return workspace.FetchBlob(name)


@pytest.mark.parametrize("args", sorted(CAFFE2_SORT_AND_SHUFFLE))
def test_sort_and_shuffle_matches_caffe2(args):
    workspace.FeedBlob("k", KEYS)
    create_cursor("kc", fields=["k"])
    idx = sort_and_shuffle(*args)
    assert idx.dtype == np.int64
    assert idx.tolist() == CAFFE2_SORT_AND_SHUFFLE[args]
    assert sort_and_shuffle(*args).tolist() == idx.tolist()     # deterministic


# A job that shuffles 500 records (sorted by key, blocks of 5 batches of 4),
# printed as one line: run in this process and in fresh ones.
_SHUFFLE_JOB = """
import numpy as np
from fastpipe import core, workspace
def shuffled(seed=None, name="sidx"):
    workspace.FeedBlob("sk", (np.arange(500, dtype=np.int64) * 7919) % 500)
    init = core.Net("sk_init")
    init.CreateTreeCursor([], ["skc"], fields=["sk"])
    workspace.RunNetOnce(init)
    net = core.Net("sk_" + name)
    kw = {} if seed is None else {"seed": seed}
    net.SortAndShuffle(["skc", "sk"], [name], sort_by_field_idx=-1, batch_size=4,
                       shuffle_size=5, **kw)
    workspace.RunNetOnce(net)
    return workspace.FetchBlob(name).tolist()
"""
_shuffle_ns = {}
exec(_SHUFFLE_JOB, _shuffle_ns)


def _shuffled_in_fresh_process(seed):
    import subprocess
    import sys
    code = _SHUFFLE_JOB + "\nprint(shuffled(%r))\n" % (seed,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_sort_and_shuffle_with_a_seed_is_the_same_permutation_everywhere():
    shuffled = _shuffle_ns["shuffled"]
    a = shuffled(seed=12345, name="s1")
    assert sorted(a) == list(range(500)) and a != list(range(500))
    assert shuffled(seed=12345, name="s2") == a                 # again, same process
    assert _shuffled_in_fresh_process(12345) == a              # another process
    assert shuffled(seed=12346, name="s3") != a                 # another seed, another order


@pytest.mark.timeout(120)
def test_sort_and_shuffle_without_a_seed_differs_per_run_and_per_process():
    shuffled = _shuffle_ns["shuffled"]
    a = shuffled(name="u1")
    b = shuffled(name="u2")
    c = _shuffled_in_fresh_process(None)
    d = _shuffled_in_fresh_process(None)
    for p in (a, b, c, d):
        assert sorted(p) == list(range(500))
    # 500 records: two equal permutations by chance are out of the question
    assert len({tuple(p) for p in (a, b, c, d)}) == 4


@pytest.mark.parametrize("seed", [0, -3, 2147483647])
def test_sort_and_shuffle_seed_out_of_range_is_rejected(seed):
    with pytest.raises(ValueError, match=r"SortAndShuffle.*seed=%d must be in \[1, 2147483646\]" % seed):
        core.Net("bad_seed").SortAndShuffle(["c", "k"], ["i"], seed=seed)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5])
def test_sort_and_shuffle_batches_are_sorted_runs(batch_size):
    # shuffle_size=1: each batch holds a run of the sorted order (shuffled
    # inside), the order of the batches is shuffled, the short tail stays last.
    workspace.FeedBlob("k", KEYS)
    create_cursor("kc", fields=["k"])
    idx = sort_and_shuffle(0, batch_size, 1).tolist()
    assert sorted(idx) == list(range(len(KEYS)))
    keys = KEYS[idx].tolist()
    ordered = sorted(KEYS.tolist())
    n_full = len(KEYS) // batch_size
    batches = sorted(sorted(keys[i * batch_size:(i + 1) * batch_size]) for i in range(n_full))
    assert batches == [ordered[i * batch_size:(i + 1) * batch_size] for i in range(n_full)]
    assert sorted(keys[n_full * batch_size:]) == ordered[n_full * batch_size:]


def test_sort_and_shuffle_errors(nested):
    net = core.Net("ss_nested")
    net.SortAndShuffle(["cur"] + BLOBS, ["idx"], sort_by_field_idx=2)
    with pytest.raises(RunError, match=r"SortAndShuffle.*'b:values'.*not in the root domain"):
        workspace.RunNetOnce(net)
    net = core.Net("ss_float")
    net.SortAndShuffle(["cur"] + BLOBS, ["idx"], sort_by_field_idx=0)
    with pytest.raises(RunError, match=r"SortAndShuffle.*field 0 \('a'\).*expected int32"):
        workspace.RunNetOnce(net)
    net = core.Net("ss_range")
    net.SortAndShuffle(["cur"] + BLOBS, ["idx"], sort_by_field_idx=5)
    with pytest.raises(RunError, match="sort_by_field_idx=5"):
        workspace.RunNetOnce(net)
    net = core.Net("ss_batch")
    net.SortAndShuffle(["cur"] + BLOBS, ["idx"], sort_by_field_idx=1, batch_size=0)
    with pytest.raises(RunError, match="batch_size=0"):
        workspace.RunNetOnce(net)


# ---- ReadRandomBatch -----------------------------------------------------------

@pytest.fixture
def random_setup(nested):
    compute_offsets(name="off")


def random_reader(name, batch_size, enforce=False, loop_over=False):
    net = core.Net(name)
    net.ReadRandomBatch(["cur", "idx", "off"] + BLOBS, OUTS, batch_size=batch_size,
                        enforce_batch_size=enforce, loop_over=loop_over)
    return net


def records(outs):
    """(a values, b values, c strings) of a batch."""
    return [outs[0].tolist(), outs[2].tolist(), outs[4].tolist()]


def test_read_random_batch_gathers_records(random_setup):
    workspace.FeedBlob("idx", np.array([4, 0, 2, 1, 3], dtype=np.int64))
    net = random_reader("rr", 2)
    workspace.RunNetOnce(net)
    assert as_lists(fetch(OUTS)) == [[4.0, 0.0], [1, 2], [60, 0, 10], [2, 1, 2],
                                     [b"u", b"v", b"p", b"q", b"r"]]
    workspace.RunNetOnce(net)
    assert as_lists(fetch(OUTS)) == [[2.0, 1.0], [1, 0], [20], [0], []]
    workspace.RunNetOnce(net)       # a partial final batch
    assert records(fetch(OUTS)) == [[3.0], [30, 40, 50], [b"s", b"t"]]
    for _ in range(2):
        workspace.RunNetOnce(net)
        assert [o.shape[0] for o in fetch(OUTS)] == [0] * 5


def test_read_random_batch_enforce_skips_partial_batch(random_setup):
    workspace.FeedBlob("idx", np.array([4, 0, 2, 1, 3], dtype=np.int64))
    net = random_reader("rr", 2, enforce=True)
    got = []
    for _ in range(4):
        workspace.RunNetOnce(net)
        got.append(fetch(["o_a"])[0].tolist())
    assert got == [[4.0, 0.0], [2.0, 1.0], [], []]


def test_read_random_batch_loop_over_never_wraps_mid_batch(random_setup):
    workspace.FeedBlob("idx", np.array([4, 0, 2, 1, 3], dtype=np.int64))
    net = random_reader("rr", 2, loop_over=True)
    got = []
    for _ in range(6):
        workspace.RunNetOnce(net)
        got.append(fetch(["o_a"])[0].tolist())
    assert got == [[4.0, 0.0], [2.0, 1.0], [3.0], [4.0, 0.0], [2.0, 1.0], [3.0]]


def test_read_random_batch_loop_over_with_enforce(random_setup):
    workspace.FeedBlob("idx", np.array([4, 0, 2, 1, 3], dtype=np.int64))
    net = random_reader("rr", 2, enforce=True, loop_over=True)
    got = []
    for _ in range(5):
        workspace.RunNetOnce(net)
        got.append(fetch(["o_a"])[0].tolist())
    assert got == [[4.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 1.0], [4.0, 0.0]]


def test_read_random_batch_repeated_indices(random_setup):
    workspace.FeedBlob("idx", np.array([3, 3, 1], dtype=np.int64))
    net = random_reader("rr", 3)
    workspace.RunNetOnce(net)
    assert as_lists(fetch(OUTS)) == [[3.0, 3.0, 1.0], [3, 3, 0], [30, 40, 50, 30, 40, 50],
                                     [1, 1, 0, 1, 1, 0], [b"s", b"t", b"s", b"t"]]


def test_read_random_batch_with_sort_and_shuffle(random_setup):
    net = core.Net("ss")
    net.SortAndShuffle(["cur"] + BLOBS, ["idx"], sort_by_field_idx=1, batch_size=2)
    workspace.RunNetOnce(net)
    idx = workspace.FetchBlob("idx").tolist()
    assert sorted(idx) == [0, 1, 2, 3, 4]
    reset = core.Net("reset")
    reset.ResetCursor(["cur"], [])
    workspace.RunNetOnce(reset)
    net = random_reader("rr", 2)
    seen = []
    for _ in range(3):
        workspace.RunNetOnce(net)
        seen += fetch(["o_a"])[0].tolist()
    assert seen == [float(i) for i in idx]


def test_read_random_batch_errors(random_setup):
    workspace.FeedBlob("idx", np.array([0, 5], dtype=np.int64))
    with pytest.raises(RunError, match=r"ReadRandomBatch.*index 5.*'idx'.*'off'.*5 records"):
        workspace.RunNetOnce(random_reader("rr", 2))
    workspace.FeedBlob("idx", np.array([0, -1], dtype=np.int64))
    workspace.RunNetOnce(core.Net("noop"))
    reset = core.Net("reset")
    reset.ResetCursor(["cur"], [])
    workspace.RunNetOnce(reset)
    with pytest.raises(RunError, match=r"index -1"):
        workspace.RunNetOnce(random_reader("rr2", 2))
    workspace.FeedBlob("idx", np.array([0, 1], dtype=np.int32))
    with pytest.raises(RunError, match=r"input 1 \('idx'\) has dtype int32, expected int64"):
        workspace.RunNetOnce(random_reader("rr3", 2))
    workspace.FeedBlob("idx", np.array([0, 1], dtype=np.int64))
    workspace.FeedBlob("off", np.zeros((6, 2), dtype=np.int64))
    with pytest.raises(RunError, match=r"'off'.*int64\[6, 2\].*int64 \[records \+ 1, 3\]"):
        workspace.RunNetOnce(random_reader("rr4", 2))
    # offsets pointing past the data are caught, not read
    off = compute_offsets(name="off")
    off[2, 2] = 100
    workspace.FeedBlob("off", off)
    workspace.RunNetOnce(reset)
    with pytest.raises(RunError, match=r"offsets \('off'\) of record 1 give rows \[3, 100\)"):
        workspace.RunNetOnce(random_reader("rr5", 2))


def test_read_next_batch_after_random_batch_needs_reset(random_setup):
    workspace.FeedBlob("idx", np.array([0, 1], dtype=np.int64))
    workspace.RunNetOnce(random_reader("rr", 1))
    with pytest.raises(RunError, match=r"ReadNextBatch.*cursor \('cur'\) holds 1 offsets for 3 domains"):
        workspace.RunNetOnce(reader_net("read", 1))
    reset = core.Net("reset")
    reset.ResetCursor(["cur"], [])
    workspace.RunNetOnce(reset)
    workspace.RunNetOnce(reader_net("read2", 1))
    assert fetch(["o_a"])[0].tolist() == [0.0]


# ---- CheckDatasetConsistency and inconsistent data ----------------------------------

def check_net(blobs=BLOBS, fields=FIELDS, name="check"):
    net = core.Net(name)
    net.CheckDatasetConsistency(blobs, [], fields=fields)
    return net


def test_check_dataset_consistency_accepts_consistent_data(nested):
    assert workspace.RunNetOnce(check_net()) is True
    feed({k: v[:0] for k, v in nested_data().items()})       # empty is consistent
    assert workspace.RunNetOnce(check_net(name="check_empty")) is True


@pytest.mark.parametrize("blob,value,pattern", [
    ("bcv", np.array([b"x"] * 8, dtype=object),
     r"Inconsistent field length: lengths field 3 \('b:c:lengths'\) sum to 7 but "
     r"field 4 \('b:c:values'\) has 8 rows"),
    ("bcv", np.array([b"x"] * 6, dtype=object),
     r"Inconsistent field length: .* domain of field 3 \('b:c:lengths'\).*sum to 7 but "
     r"field 4 \('b:c:values'\) has 6 rows"),
    ("bl", np.array([2, 0, 1, 2, 1], dtype=np.int32),
     r"Inconsistent field length: lengths field 1 \('b:lengths'\) sum to 6 but "
     r"field 2 \('b:values'\) has 7 rows"),
    ("bv", np.arange(8, dtype=np.int64),
     r"Inconsistent sizes for fields belonging to same domain: field 3 \('b:c:lengths'\) "
     r"has 7 rows but field 2 \('b:values'\) has 8 \(both in the domain of field 1 "
     r"\('b:lengths'\)\)"),
    ("bcl", np.array([1, 2, 0, 1, 1, 0, 3], dtype=np.int32),
     r"Inconsistent field length: .*field 3 \('b:c:lengths'\).*sum to 8 but "
     r"field 4 \('b:c:values'\) has 7 rows"),
    ("a", np.arange(4, dtype=np.float32),
     r"Inconsistent sizes for fields belonging to same domain: field 1 \('b:lengths'\) "
     r"has 5 rows but field 0 \('a'\) has 4"),
    ("bl", np.array([2, 0, 1, 4, 1], dtype=np.int64),
     r"lengths field 1 \('b:lengths'\) \(blob 'bl'\) is int64\[5\], expected int32 1-D"),
    ("bl", np.array([2, 0, -1, 4, 1], dtype=np.int32),
     r"negative length -1 at row 2 of lengths field 1 \('b:lengths'\)"),
    ("bl", np.array(5, dtype=np.int32),
     r"field 1 \('b:lengths'\) \(blob 'bl'\) is int32\[\]; dataset fields need at least 1 dim"),
])
def test_check_dataset_consistency_errors(nested, blob, value, pattern):
    workspace.FeedBlob(blob, value)
    with pytest.raises(RunError, match=r"CheckDatasetConsistency #0 in net 'check[^']*'.*" + pattern):
        workspace.RunNetOnce(check_net())


def test_check_dataset_consistency_field_count(nested):
    with pytest.raises(ValueError, match="fields has 5 names for 4 inputs"):
        workspace.RunNetOnce(check_net(blobs=BLOBS[:4], name="short"))


def test_fields_must_follow_their_lengths():
    feed({"x": np.arange(3, dtype=np.int32), "l": np.array([3], dtype=np.int32)})
    with pytest.raises(RunError, match=r"CheckDatasetConsistency.*field 0 \('a:b'\) depends on "
                                       r"a lengths field defined after it: field 1 \('a:lengths'\)"):
        workspace.RunNetOnce(check_net(["x", "l"], ["a:b", "a:lengths"]))
    net = core.Net("cc")
    net.CreateTreeCursor([], ["c"], fields=["a:b", "a:lengths"])
    with pytest.raises(RunError, match=r"CreateTreeCursor.*field 0 \('a:b'\) depends on"):
        workspace.RunNetOnce(net)


def test_read_next_batch_inconsistent_lengths_names_op_and_field(nested):
    workspace.FeedBlob("bv", np.arange(5, dtype=np.int64))      # lengths need 7
    net = reader_net("read", 4)
    with pytest.raises(RunError, match=r"ReadNextBatch #0 in net 'read[^']*'.*Inconsistent field length: "
                                       r".*field 1 \('b:lengths'\).*sum to 6 but field 2 "
                                       r"\('b:values'\) has 5 rows"):
        workspace.RunNetOnce(net)
    # the failed read did not move the cursor
    feed(nested_data())
    workspace.RunNetOnce(net)
    assert fetch(["o_a"])[0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_compute_offset_inconsistent(nested):
    workspace.FeedBlob("bcv", np.array([b"x"] * 6, dtype=object))
    with pytest.raises(RunError, match=r"ComputeOffset.*'b:c:lengths'.*'b:c:values'\) has 6 rows"):
        compute_offsets()


def test_bad_inputs_are_reported(nested):
    with pytest.raises(RunError, match=r"ReadNextBatch.*cursor \('cur'\) has 5 fields but the op "
                                       r"has 4 field inputs"):
        workspace.RunNetOnce(reader_net("r1", 1, blobs=BLOBS[:4], outs=OUTS[:4]))
    with pytest.raises(RunError, match=r"ReadNextBatch.*input 0 \('a'\) is not a cursor"):
        workspace.RunNetOnce(reader_net("r2", 1, cursor="a", blobs=BLOBS, outs=OUTS))
    with pytest.raises(RunError, match=r"ResetCursor.*input 0 \('bl'\) is not a cursor"):
        net = core.Net("r3")
        net.ResetCursor(["bl"], [])
        workspace.RunNetOnce(net)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        workspace.RunNetOnce(reader_net("r4", 0))


def test_data_shrinking_under_the_cursor(nested):
    net = reader_net("read", 4)
    workspace.RunNetOnce(net)
    feed({k: v[:2] for k, v in nested_data().items()})
    with pytest.raises(RunError, match="Tried to advance past end of cursor: offset 4"):
        workspace.RunNetOnce(net)


# ---- concurrency: one cursor, many readers ------------------------------------------

def big_dataset(n, seed=0):
    """n records: a = id, b = a list of ints, b:c = lists of strings."""
    rng = np.random.RandomState(seed)
    bl = rng.randint(0, 4, size=n).astype(np.int32)
    nb = int(bl.sum())
    bcl = rng.randint(0, 3, size=nb).astype(np.int32)
    nc = int(bcl.sum())
    return {
        "a": np.arange(n, dtype=np.int64),
        "bl": bl,
        "bv": np.arange(nb, dtype=np.int64) + 1000000,
        "bcl": bcl,
        "bcv": np.array([("s%d" % i).encode() for i in range(nc)], dtype=object),
    }


def split_records(a, bl, bv, bcl, bcv):
    """A consistent (a, b, b:c) dataset as a list of hashable records."""
    recs = []
    bo = co = 0
    for i in range(len(a)):
        items = []
        for j in range(bo, bo + int(bl[i])):
            items.append((int(bv[j]), tuple(bcv[co:co + int(bcl[j])].tolist())))
            co += int(bcl[j])
        bo += int(bl[i])
        recs.append((int(a[i]), tuple(items)))
    assert bo == len(bv) and co == len(bcv)
    return recs


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_python_threads_share_a_cursor(threads, batch_size):
    data = big_dataset(600)
    feed(data)
    create_cursor()
    expected = split_records(*[data[b] for b in BLOBS])
    barrier = threading.Barrier(threads)
    results = [[] for _ in range(threads)]
    errors = []

    def reader(t):
        try:
            outs = ["t%d_%s" % (t, o) for o in OUTS]
            net = reader_net("read_t%d" % t, batch_size, outs=outs)
            barrier.wait()
            while True:
                workspace.RunNetOnce(net)
                batch = fetch(outs)
                if batch[0].shape[0] == 0:
                    return
                assert batch[0].shape[0] <= batch_size
                results[t] += split_records(*batch)     # each batch is consistent
        except BaseException as e:  # noqa: B902 - reported by the main thread
            errors.append(e)
            barrier.abort()

    ts = [threading.Thread(target=reader, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
        assert not t.is_alive()
    assert not errors, errors
    got = list(itertools.chain.from_iterable(results))
    assert len(got) == len(expected)
    assert sorted(got) == expected          # every record exactly once
    assert sum(r[0] for r in got) == sum(range(600))


@pytest.mark.parametrize("instances", [1, 4, 8])
@pytest.mark.parametrize("batch_size,enforce", [(1, False), (5, False), (16, True)])
def test_concurrent_instances_read_every_record_once(instances, batch_size, enforce):
    """A plan: N runtime instances (own workspaces) read one shared cursor
    until empty and append their batches to one dataset under a mutex."""
    n = 1000
    data = big_dataset(n, seed=1)
    feed(data)
    acc = ["acc_" + b for b in BLOBS]
    for name, b in zip(acc, BLOBS):
        workspace.FeedBlob(name, data[b][:0])
    init = core.Net("init")
    init.CreateTreeCursor([], ["cur"], fields=FIELDS)
    init.CreateMutex([], ["mutex"])
    read = core.Net("read")
    read.ReadNextBatch(["cur"] + BLOBS, OUTS, batch_size=batch_size, enforce_batch_size=enforce)
    read.IsEmpty([OUTS[0]], ["stop"])
    read.CheckDatasetConsistency(OUTS, [], fields=FIELDS)
    read.AtomicAppend(["mutex"] + acc + OUTS, acc)
    inst = core.ExecutionStep("instance", read)
    inst.SetShouldStopBlob("stop")
    inst.SetCreateWorkspace(True)
    top = core.ExecutionStep("readers")
    top.AddSubstep(inst)
    top.SetNumConcurrentInstances(instances)
    plan = core.Plan("plan")
    plan.AddStep(core.ExecutionStep("init", init))
    plan.AddStep(top)
    workspace.RunPlan(plan)
    got = fetch(acc)
    check = core.Net("check_acc")
    check.CheckDatasetConsistency(acc, [], fields=FIELDS)
    workspace.RunNetOnce(check)
    expected = split_records(*[data[b] for b in BLOBS])
    if enforce:
        # the short tail is consumed by someone and returned empty
        kept = n // batch_size * batch_size
        assert sorted(split_records(*got)) == expected[:kept]
    else:
        assert sorted(split_records(*got)) == expected
    assert int(got[0].sum()) == sum(range(len(got[0])))
