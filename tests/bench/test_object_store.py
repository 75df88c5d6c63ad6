"""bench.object_store's store-side measurements at a tiny size, against the test S3 server
(moto on 127.0.0.1): the counting proxy counts real requests, the window and open measurements
return well-formed, positive numbers. No timing thresholds: those are the bench's."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pytest

from bench import object_store as bench
from cache import open_store


def test_proxy_counts_every_request_and_body_byte(s3_server: str, s3_bucket: str) -> None:
    """What goes through the proxy is what the server answered: one PUT, one GET of the whole
    object, one ranged GET, one listing; bytes are the answers' bodies."""
    import os

    from cache.storage import ObjectStorage

    with bench.RequestCounter(os.environ["AWS_ENDPOINT_URL"]) as counter:
        storage = ObjectStorage(f"{s3_bucket}/p")  # opened while the proxy is the endpoint
        storage.put("a/x.bin", b"0123456789" * 100)
        counter.take()
        assert storage.get("a/x.bin") is not None
        got = counter.take()
        assert (got.requests, got.bytes, dict(got.kinds)) == (1, 1000, {"GET": 1})
        assert storage.list("a/") == ["a/x.bin"]
        listed = counter.take()
        assert listed.requests == 1 and listed.kinds["LIST"] == 1 and listed.bytes > 0
        assert storage.get("a/missing") is None
        assert dict(counter.take().kinds) == {"GET 404": 1}
        import obstore

        assert bytes(obstore.get_range(storage.store, "a/x.bin", start=10, end=30)) == (
            b"0123456789" * 2
        )
        ranged = counter.take()
        assert (ranged.requests, ranged.bytes, dict(ranged.kinds)) == (1, 20, {"GET range": 1})
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server  # restored on exit


def test_window_reads_are_counted_apart_from_the_open(s3_bucket: str) -> None:
    import os

    url = f"{s3_bucket}/w.zarr"
    # 512 frames written at a time, a segment committed at 256: video00's frames 0-511 are in
    # one segment, 512-599 in the next
    ids = bench.write_synthetic(url, videos=2, frames=600, n=2, d=16, segment_frames=256)
    assert open_store(url).video_ids() == ids
    with bench.RequestCounter(os.environ["AWS_ENDPOINT_URL"]) as counter:
        got = bench.window_reads(url, counter, window=100, trials=3)
    assert got["trials"] == 3 and len(got["per_trial"]) == 3
    assert got["window_bytes"] == 100 * (2 * 16 * 2 + 8)
    first = got["per_trial"][0]
    assert (first["video"], first["start"], first["segments"]) == ("video00", 462, 2)
    for p in got["per_trial"]:
        assert p["open"].requests >= 3  # the store's zarr.json, one list of index/, its records
        assert p["cold"].requests >= 1 and p["cold"].bytes > 0
        assert p["cold"].requests >= p["warm"].requests >= 1
        assert 0 <= p["start"] <= 500 and p["segments"] >= 1
    assert got["bytes_ratio"] >= 1.0  # at least the window itself came over the wire
    assert got["requests_max"] >= got["requests_mean"] > 0


def test_many_videos_open_on_both_backends(s3_bucket: str, tmp_path: Path) -> None:
    url, local = f"{s3_bucket}/o.zarr", tmp_path / "o.zarr"
    for root in (local, url):
        bench.write_many(root, videos=30, shards=2, commits=3)
    a, b = open_store(local), open_store(url)
    assert a.video_ids() == b.video_ids() and len(a.video_ids()) == 30
    assert {a.info(v)["num_frames"] for v in a.video_ids()} == {1, 2}
    np.testing.assert_array_equal(a.read("clips/000007")[0], b.read("clips/000007")[0])
    # 3 commits per shard (30 / 2 / 3 = 5 videos each) + each shard's run record
    keys = boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:], Prefix="o.zarr/index/")
    assert len(keys["Contents"]) == 2 * (3 + 1)
    times = bench.open_times({"local": local, "s3": url}, repeats=2, videos=30)
    assert {k: len(v) for k, v in times.items()} == {"local": 2, "s3": 2}
    assert all(r.seconds > 0 and cpu >= 0 for v in times.values() for r, cpu in v)


def test_main_window_and_open_parts(
    s3_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The quick mode's store-side parts, end to end at a tiny size: the last line is JSON with
    every ratio and whether each target was met."""
    out = bench.main(["--quick", "--only", "window,open", "--cache", str(tmp_path),
                      "--window", "64", "--window-frames", "200", "--trials", "2",
                      "--open-videos", "40", "--open-commits", "2,4", "--open-repeats", "1",
                      "--settle", "0"])  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(out))
    w = out["window"]
    assert w["window_bytes_ratio"] > 0 and w["window_requests"] > 0 and w["open_requests"] > 0
    assert set(w["targets_met"]) == {"window_bytes_ratio", "window_requests"}
    assert [o["commits_per_shard"] for o in out["open"]] == [2, 4]
    for o in out["open"]:
        assert o["videos"] == 40 and o["records"] == 4 * (o["commits_per_shard"] + 1)
        assert o["local_seconds"] > 0 and o["s3_seconds"] > 0 and o["open_s3_vs_local"] > 0
        assert set(o["targets_met"]) == {"open_s3_vs_local"}
    assert "sources" not in out and "store" not in out


def test_parse_args_quick_defaults_and_parts() -> None:
    quick = bench.parse_args(["--quick"])
    assert (quick.repeats, quick.tries, quick.open_videos, quick.open_commits) == (2, 1, 2000, [5])
    full = bench.parse_args([])
    assert (full.open_videos, full.open_commits) == (10_000, [5, 250])
    assert full.parts == list(bench.PARTS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "nothing"])


def test_request_kinds() -> None:
    assert bench.request_kind("GET", "/b?list-type=2&prefix=x", {}) == "LIST"
    assert bench.request_kind("GET", "/b/k", {"Range": "bytes=0-9"}) == "GET range"
    assert bench.request_kind("GET", "/b/k", {}) == "GET"
    assert bench.request_kind("PUT", "/b/k", {}) == "PUT"
