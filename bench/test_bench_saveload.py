"""Save and Load of 256 MiB of float32 tensors (16 blobs of 16 MiB) in MB/s,
beside numpy.save / numpy.load of the same arrays to the same directory.

fastpipe's Save is durable: it writes a temporary file, fsyncs it, renames
it over the target and fsyncs the directory, and checksums every payload
(CRC-32C).  numpy.save does none of that, so the save group has two
baselines: plain ``numpy.save`` (page cache only) and ``numpy.save`` +
``os.fsync`` of each file (the same durability).  Load reads one file of
16 records and verifies each checksum; ``numpy.load`` reads 16 ``.npy``
files.  Files are in the page cache for loads (written just before).
Contents are checked after timing.  Run:

    python -m pytest bench/test_bench_saveload.py --benchmark-only
"""
import os

import numpy as np
import pytest

from fastpipe import core, workspace

NBLOBS = 16
PER_BLOB = 16 << 20                  # bytes
TOTAL_MB = NBLOBS * PER_BLOB / 1e6   # 268 MB = 256 MiB
NAMES = ["w%02d" % i for i in range(NBLOBS)]


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return [rng.random(PER_BLOB // 4, dtype=np.float32).reshape(-1, 1024) for _ in range(NBLOBS)]


@pytest.fixture(scope="module")
def fed_ws(arrays):
    ws = workspace.C.Workspace()
    for n, a in zip(NAMES, arrays):
        ws.feed_blob(n, a)
    return ws


def _save_net(path):
    net = core.Net("bench_save")
    net.Save(NAMES, [], db=str(path), db_type="minidb", absolute_path=True)
    return net


def _load_net(path):
    net = core.Net("bench_load")
    net.Load([], NAMES, db=str(path), db_type="minidb", absolute_path=True)
    return net


def _mbps(benchmark):
    return round(TOTAL_MB / benchmark.stats.stats.median, 1)


@pytest.mark.benchmark(group="checkpoints: save 256 MiB float32 (16 x 16 MiB)")
def test_fastpipe_save(benchmark, record, fed_ws, arrays, tmp_path):
    path = tmp_path / "ckpt.minidb"
    ws = fed_ws
    net = _save_net(path)

    def run():
        ws.run(net)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert path.stat().st_size > NBLOBS * PER_BLOB
    check = workspace.C.Workspace()
    check.run(_load_net(path))
    assert all(np.array_equal(check.fetch_blob(n), a) for n, a in zip(NAMES, arrays))
    record("fastpipe Save (minidb: CRC-32C, fsync, rename)", MB_per_s=_mbps(benchmark))


@pytest.mark.benchmark(group="checkpoints: save 256 MiB float32 (16 x 16 MiB)")
def test_numpy_save_baseline(benchmark, record, arrays, tmp_path):
    def run():
        for n, a in zip(NAMES, arrays):
            np.save(tmp_path / (n + ".npy"), a)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert np.array_equal(np.load(tmp_path / "w03.npy"), arrays[3])
    record("numpy.save x16 (no fsync)", MB_per_s=_mbps(benchmark))


@pytest.mark.benchmark(group="checkpoints: save 256 MiB float32 (16 x 16 MiB)")
def test_numpy_save_fsync_baseline(benchmark, record, arrays, tmp_path):
    def run():
        for n, a in zip(NAMES, arrays):
            with open(tmp_path / (n + ".npy"), "wb") as f:
                np.save(f, a)
                f.flush()
                os.fsync(f.fileno())
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert np.array_equal(np.load(tmp_path / "w03.npy"), arrays[3])
    record("numpy.save x16 + fsync each", MB_per_s=_mbps(benchmark))


@pytest.mark.benchmark(group="checkpoints: load 256 MiB float32 (16 x 16 MiB)")
def test_fastpipe_load(benchmark, record, fed_ws, arrays, tmp_path):
    path = tmp_path / "ckpt.minidb"
    fed_ws.run(_save_net(path))
    ws = workspace.C.Workspace()
    net = _load_net(path)

    def run():
        ws.run(net)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert all(np.array_equal(ws.fetch_blob(n), a) for n, a in zip(NAMES, arrays))
    record("fastpipe Load (minidb, checksums verified)", MB_per_s=_mbps(benchmark))


@pytest.mark.benchmark(group="checkpoints: load 256 MiB float32 (16 x 16 MiB)")
def test_numpy_load_baseline(benchmark, record, arrays, tmp_path):
    for n, a in zip(NAMES, arrays):
        np.save(tmp_path / (n + ".npy"), a)
    out = {}

    def run():
        for n in NAMES:
            out[n] = np.load(tmp_path / (n + ".npy"))
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert all(np.array_equal(out[n], a) for n, a in zip(NAMES, arrays))
    record("numpy.load x16", MB_per_s=_mbps(benchmark))
