"""Window reads from a store on object storage (moto's S3 server on 127.0.0.1): the reader
fetches a segment's tokens itself (each shard file's index once, the chunks of a file in one
request), so these check it against the local store bit for bit, its checks against damage,
and how few requests it makes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bench.object_store import RequestCounter
from cache import DamagedDataError, MissingDataError, ShardWriter, open_store
from cache.storage import open_storage
from tests.cache.test_object_store import make
from tests.cache.test_store import D, N, write_video

SMALL = {"chunk_frames": 4, "file_frames": 8, "segment_frames": 16}  # files and segments cross


def _write_random(root: str | Path, dtype: str, videos: list[tuple[str, int]]) -> None:
    """Random token bits (any bfloat16 pattern, NaNs included), 5 frames per write."""
    make(root, dtype=dtype, **SMALL)
    rng = np.random.default_rng(7)
    with ShardWriter(root, 0) as w:
        for vid, n in videos:
            w.start(vid)
            for lo in range(0, n, 5):
                hi = min(lo + 5, n)
                bits = rng.integers(0, 2**16, (hi - lo, N, D), dtype=np.uint16)
                w.write(vid, bits if dtype == "bfloat16" else bits.view(np.float16),
                        np.arange(lo, hi) / 3.0)  # fmt: skip
            w.finish(vid, {"num_frames": n, "fps": 3.0})


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_windows_equal_the_local_stores_bit_for_bit(
    s3_bucket: str, tmp_path: Path, dtype: str
) -> None:
    videos = [("a", 3), ("b", 45), ("c", 1), ("d", 17)]
    local, url = tmp_path / "s.zarr", f"{s3_bucket}/s.zarr"
    for root in (local, url):
        _write_random(root, dtype, videos)
    a, b = open_store(local), open_store(url)
    assert len(b.info("b")["pieces"]) > 2  # across segments (and their files)
    windows = [(None, None), (13, 35), (5, 6), (0, 1), (44, 45), (3, 4), (7, 9), (1, 42),
               (8, 16), (15, 17), (40, 100), (5, 5)]  # fmt: skip
    for vid, _ in videos:
        for lo, hi in windows:
            (ta, pa), (tb, pb) = a.read(vid, lo, hi), b.read(vid, lo, hi)
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, (vid, lo, hi)
            bits = np.uint32 if dtype == "bfloat16" else np.uint16
            np.testing.assert_array_equal(ta.view(bits), tb.view(bits), err_msg=f"{vid}[{lo}:{hi}]")
            np.testing.assert_array_equal(pa, pb)


def _store_of_one_segment(s3_bucket: str) -> tuple[str, str]:
    """One video of 16 frames in one segment of two files of two chunks each: (url, the
    segment's tokens prefix)."""
    url = make(f"{s3_bucket}/s.zarr", **SMALL)
    assert isinstance(url, str)
    with ShardWriter(url, 0) as w:
        write_video(w, 1, 16)
    (piece,) = open_store(url).info("v1")["pieces"]
    return url, piece["array"]


def _edit(url: str, key: str, fn: object) -> None:
    storage = open_storage(url)
    got = storage.get(key)
    assert got is not None
    storage.put(key, fn(bytearray(got[0])))  # type: ignore[operator]


def test_a_flipped_byte_in_a_chunk_is_damage_found_by_its_crc32c(s3_bucket: str) -> None:
    url, tokens = _store_of_one_segment(s3_bucket)

    def flip(b: bytearray) -> bytes:
        b[484 + 10] ^= 0x01  # in the second chunk (each: 4 x 10 x 6 x 2 + 4 = 484 bytes)
        return bytes(b)

    _edit(url, f"{tokens}/c/1/0/0", flip)  # rows 12..16
    s = open_store(url)
    assert s.read("v1", 0, 12)[0].shape[0] == 12  # the rest reads, checked
    with pytest.raises(DamagedDataError, match=r"rows 12\.\.16 are corrupt") as e:
        s.read("v1", 13, 14)
    assert not isinstance(e.value, MissingDataError)


def test_a_chunk_swapped_with_another_is_damage(s3_bucket: str) -> None:
    """Two chunks of a file exchanged (each with a right crc32c of its own), and two files
    exchanged: only the segment's per-chunk checksums can tell."""
    url, tokens = _store_of_one_segment(s3_bucket)

    def swap(b: bytearray) -> bytes:
        return bytes(b[484:968] + b[:484] + b[968:])

    _edit(url, f"{tokens}/c/0/0/0", swap)
    with pytest.raises(DamagedDataError, match=r"rows 0\.\.4 are not the data written"):
        open_store(url).read("v1", 2, 3)
    url, tokens = _store_of_one_segment(f"{s3_bucket}/2")
    storage = open_storage(url)
    f0, f1 = (storage.get(f"{tokens}/c/{i}/0/0") for i in (0, 1))
    assert f0 is not None and f1 is not None and len(f0[0]) == len(f1[0])
    storage.put(f"{tokens}/c/0/0/0", f1[0])
    storage.put(f"{tokens}/c/1/0/0", f0[0])
    with pytest.raises(DamagedDataError, match="not the data written") as e:
        open_store(url).read("v1", 9, 10)
    assert not isinstance(e.value, MissingDataError)


def test_a_corrupt_shard_index_is_damage(s3_bucket: str) -> None:
    url, tokens = _store_of_one_segment(s3_bucket)

    def flip(b: bytearray) -> bytes:
        b[-10] ^= 0x01
        return bytes(b)

    _edit(url, f"{tokens}/c/0/0/0", flip)
    with pytest.raises(DamagedDataError, match="shard index is corrupt"):
        open_store(url).read("v1")


def test_a_file_deleted_after_the_open_is_missing_data(s3_bucket: str) -> None:
    url, tokens = _store_of_one_segment(s3_bucket)
    s = open_store(url)
    assert s.read("v1", 0, 4)[0].shape[0] == 4  # segment open, file 0's index kept
    open_storage(url).delete(f"{tokens}/c/1/0/0")
    with pytest.raises(MissingDataError, match="tokens/c/1/0/0"):
        s.read("v1", 10, 12)
    with pytest.raises(MissingDataError, match="tokens/c/1/0/0"):  # and before any open
        open_store(url).read("v1", 0, 2)


def test_a_window_read_makes_a_handful_of_requests(s3_bucket: str) -> None:
    """40 frames over two 32-frame files of one segment (10 chunks; Zarr's sharding codec
    asks for each one apart): one list and three GETs open the segment, then per file its
    index and its chunks, one request each; with the segment open, one per file."""
    url = make(f"{s3_bucket}/s.zarr", chunk_frames=4, file_frames=32, segment_frames=4096)
    with ShardWriter(url, 0) as w:
        write_video(w, 1, 64)
    want = open_store(url).read("v1", 20, 60)
    with RequestCounter(os.environ["AWS_ENDPOINT_URL"]) as counter:
        s = open_store(url)
        counter.take()
        cold = s.read("v1", 20, 60)
        got = counter.take()
        assert dict(got.kinds) == {"LIST": 1, "GET": 3, "GET range": 4}, got.summary()
        warm = s.read("v1", 20, 60)
        assert dict(counter.take().kinds) == {"GET range": 2}
        chunk = 4 * N * D * 2 + 4
        assert got.bytes < 10 * chunk + 2 * (8 * 16 + 4) + 5_000  # chunks, indexes, metadata
    for w in (cold, warm):
        np.testing.assert_array_equal(w[0], want[0])
        np.testing.assert_array_equal(w[1], want[1])
