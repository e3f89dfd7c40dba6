"""DecodeCache: hits, keys, atomic writes, read-only memory maps, concurrency."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from learner.data.cache import DecodeCache
from learner.errors import DataError


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "scan.npy"
    np.save(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    return path


class CountingBuild:
    """A build callable that counts its calls."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.array


def test_second_get_hits_and_builds_once(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    build = CountingBuild(np.arange(12, dtype=np.float16).reshape(3, 4))
    first = cache.get(source, {"size": 4}, build)
    second = cache.get(source, {"size": 4}, build)
    assert build.calls == 1
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(second, build.array)
    assert first.dtype == second.dtype == np.float16


def test_returns_read_only_memmap(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    array = cache.get(source, {}, lambda: np.ones((2, 2), dtype=np.uint8))
    assert isinstance(array, np.memmap)
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0, 0] = 3


def test_stored_as_plain_npy_under_key_prefix(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    cache.get(source, {"a": 1}, lambda: np.zeros(5, dtype=np.uint8))
    key = cache.key(source, {"a": 1})
    stored = tmp_path / "cache" / key[:2] / f"{key}.npy"
    assert stored.is_file()
    np.testing.assert_array_equal(np.load(stored, allow_pickle=False), np.zeros(5))


def test_key_depends_on_params_not_their_order(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path)
    assert cache.key(source, {"a": 1, "b": 2}) == cache.key(source, {"b": 2, "a": 1})
    assert cache.key(source, {"a": 1}) != cache.key(source, {"a": 2})


def test_key_changes_with_mtime_and_rebuilds(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    build = CountingBuild(np.zeros(3, dtype=np.uint8))
    before = cache.key(source, {})
    cache.get(source, {}, build)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.key(source, {}) != before
    cache.get(source, {}, build)
    assert build.calls == 2


def test_key_of_folder_follows_its_files(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"a")
    cache = DecodeCache(tmp_path / "cache")
    before = cache.key(series, {})
    (series / "2.dcm").write_bytes(b"b")
    after_add = cache.key(series, {})
    (series / "2.dcm").write_bytes(b"bb")
    assert len({before, after_add, cache.key(series, {})}) == 3


def test_missing_source_is_a_data_error(tmp_path: Path) -> None:
    cache = DecodeCache(tmp_path)
    with pytest.raises(DataError, match=r"missing\.mp4"):
        cache.get(tmp_path / "missing.mp4", {}, lambda: np.zeros(1))


def test_failed_build_and_write_leave_no_temp_files(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    cache.get(source, {"ok": 1}, lambda: np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        # Object arrays need pickle: np.save refuses them mid-write.
        cache._write(cache.location("ab" + "0" * 62), np.array([{"a": 1}], dtype=object))
    files = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].endswith(".npy") and not files[0].startswith(".")


def test_object_array_is_refused(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    with pytest.raises(DataError, match="object array"):
        cache.get(source, {}, lambda: np.array([None, 1], dtype=object))


def test_truncated_entry_is_rebuilt(tmp_path: Path, source: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    cache.get(source, {}, lambda: np.arange(100, dtype=np.uint8))
    stored = cache.location(cache.key(source, {}))
    stored.write_bytes(stored.read_bytes()[:40])
    again = cache.get(source, {}, lambda: np.arange(100, dtype=np.uint8))
    np.testing.assert_array_equal(again, np.arange(100))
    assert cache.misses == 2


def test_concurrent_writers_of_one_key(tmp_path: Path, source: Path) -> None:
    cache_root = tmp_path / "cache"
    expected = np.arange(50_000, dtype=np.int32)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker() -> None:
        try:
            start.wait()
            results.append(np.array(DecodeCache(cache_root).get(source, {}, lambda: expected)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 6
    for result in results:
        np.testing.assert_array_equal(result, expected)
    files = [p for p in cache_root.rglob("*") if p.is_file()]
    assert len(files) == 1


# Two jobs sharing one cache folder (docs/scale.md): each decodes every scan, in opposite
# orders, and checks each array it reads; builds are slow enough for the writes to overlap.
TWO_JOBS = """
import sys, time
from pathlib import Path
from typing import Any
import numpy as np
from learner.data.cache import DecodeCache

root, sources, order = Path(sys.argv[1]), sorted(Path(sys.argv[2]).glob("*.npy")), sys.argv[3]
cache = DecodeCache(root)
for _ in range(3):
    for src in (sources if order == "forward" else sources[::-1]):
        def build(src=src):
            time.sleep(0.01)
            return np.load(src).repeat(2000, axis=0)
        got = cache.get(src, {"repeat": 2000}, build)
        assert np.array_equal(got, np.load(src).repeat(2000, axis=0)), src
print(cache.hits, cache.misses)
"""


def test_two_processes_share_one_cache_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    sources = tmp_path / "scans"
    sources.mkdir()
    for i in range(12):
        np.save(sources / f"scan{i:02d}.npy", np.full((4, 64, 64), i, dtype=np.uint8))
    root = tmp_path / "cache"
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_JOBS, str(root), str(sources), order],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in ("forward", "backward")
    ]
    outputs = [job.communicate(timeout=120) for job in jobs]
    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-2000:]
    hits_misses = [tuple(int(v) for v in out.split()) for out, _ in outputs]
    # Every lookup ends in a complete array; each scan is built at least once overall and
    # at most once per job (later rounds hit).
    assert all(h + m == 36 and 1 <= m <= 12 for h, m in hits_misses), hits_misses
    assert sum(m for _, m in hits_misses) >= 12
    files = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert len(files) == 12 and not [f for f in files if f.endswith(".tmp")], files


def test_entries_are_written_through_learner_io(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry is saved to a temporary file that ``is_partial_write`` recognises (so a write
    killed before its rename is known as a leftover), then renamed to its ``.npy`` name."""
    from learner.io import is_partial_write

    written: list[Path] = []
    real_save = np.save

    def spy(handle: Any, array: np.ndarray, **kwargs: Any) -> None:
        written.append(Path(handle.name))
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(np, "save", spy)
    cache = DecodeCache(tmp_path / "cache")
    cache.get(source, {}, lambda: np.arange(10, dtype=np.uint8))
    stored = cache.location(cache.key(source, {}))
    assert len(written) == 1 and written[0].parent == stored.parent
    assert is_partial_write(written[0]) and not written[0].exists()
    np.testing.assert_array_equal(np.load(stored), np.arange(10))


def test_an_entry_read_once_stays_mapped_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later epochs skip re-opening the entry's file. A changed source is a new key, built
    afresh; an entry file changed in place is opened again (the truncation test above);
    a pickled cache (a spawned worker) carries no maps."""
    import pickle

    import learner.data.cache as cache_module

    source = tmp_path / "scan.npy"
    np.save(source, np.arange(4))
    cache = DecodeCache(tmp_path / "cache")
    opens: list[Path] = []
    real_open = cache_module._open_read_only

    def counting_open(path: Path) -> np.ndarray:
        opens.append(path)
        return real_open(path)

    monkeypatch.setattr(cache_module, "_open_read_only", counting_open)
    builds: list[int] = []

    def build() -> np.ndarray:
        builds.append(1)
        return np.load(source) * 2

    first = cache.get(source, {"stage": "x"}, build)
    for _ in range(3):
        assert cache.get(source, {"stage": "x"}, build) is first
    assert len(opens) == 1 and builds == [1] and cache.hits == 3
    np.save(source, np.arange(5))
    os.utime(source, ns=(1, 1))  # a new identity: a new key, built afresh
    changed = cache.get(source, {"stage": "x"}, build)
    assert changed.tolist() == [0, 2, 4, 6, 8] and builds == [1, 1]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.root == cache.root and not clone._opened
