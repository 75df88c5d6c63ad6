"""Videos on object storage, against a real S3 API on 127.0.0.1 (moto's server): an s3://
folder gives the tokens local files give, list files name objects, a source replaced after
it was listed fails alone, scratch stays under its cap, and refused credentials, a missing
bucket or an unreachable endpoint stop the run with one line before any work."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache import open_store
from extract.encoders import SiglipConfig
from extract.frames import DecodeOptions
from extract.remote import RemoteOptions
from extract.samples import make_video
from jobs.extract import ExtractSpec, run_shard
from jobs.inputs import resolve_inputs
from jobs.verify import source_changed
from tests.jobs.cli import run_cli

FAST = RemoteOptions(connect_timeout_s=1.0, max_retries=1, backoff_s=0.05)


def s3() -> Any:
    import boto3

    return boto3.client("s3")


def bucket(name: str) -> str:
    client = s3()
    if name not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=name)
    return name


def upload(local: Path, name: str, prefix: str) -> list[str]:
    """Every file under ``local`` to ``s3://name/prefix/<relative path>``; their URLs."""
    client, urls = s3(), []
    for p in sorted(x for x in local.rglob("*") if x.is_file()):
        key = f"{prefix}/{p.relative_to(local).as_posix()}"
        client.upload_file(str(p), name, key)
        urls.append(f"s3://{name}/{key}")
    return urls


def videos(d: Path) -> Path:
    """Four small videos, one in a subfolder and one WebM, and a text file to be ignored."""
    (d / "sub").mkdir(parents=True, exist_ok=True)
    make_video(d / "a.mp4", seconds=1.2, width=64, height=48)
    make_video(d / "b.mp4", seconds=2.0, width=80, height=48)
    make_video(d / "sub" / "c.mp4", seconds=1.5, width=64, height=64)
    make_video(d / "sub" / "d.webm", seconds=1.0, fps=24, codec="vp9", width=64, height=48)
    (d / "notes.txt").write_text("not a video\n")
    return d


@pytest.fixture(scope="module")
def local_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return videos(tmp_path_factory.mktemp("remote") / "videos")


def spec(store: Path, tasks: Any, tiny: Path, **kw: Any) -> ExtractSpec:
    return ExtractSpec(
        store=str(store), encoder=SiglipConfig(pretrained=str(tiny)), videos=tuple(tasks),
        decode=DecodeOptions(workers=2, frames_per_call=3), batching="fixed", batch_frames=5,
        progress=False, **kw,
    )  # fmt: skip


def extract_args(videos: str, store: Path, tiny: Path, *more: str) -> list[str]:
    return [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={tiny}",
        "job.batching=fixed",
        "job.batch_frames=5",
        "job.progress=false",
        *more,
    ]


def stored(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    s = open_store(store)
    return {v: s.read(v) for v in s.video_ids(status="done")}


def test_s3_folder_gives_the_tokens_of_local_files(
    s3_server: str, local_videos: Path, tiny_siglip: Path, tmp_path: Path
) -> None:
    upload(local_videos, bucket("media"), "in/set")
    t0 = time.perf_counter()
    local = run_cli(*extract_args(str(local_videos), tmp_path / "local.zarr", tiny_siglip),
                    hydra_dir=tmp_path / "h1")  # fmt: skip
    t1 = time.perf_counter()
    remote = run_cli(
        *extract_args("s3://media/in/set/", tmp_path / "s3.zarr", tiny_siglip),
        hydra_dir=tmp_path / "h2",
    )
    t2 = time.perf_counter()
    assert local.returncode == 0, local.stderr[-3000:]
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert "4 done, 0 skipped" in remote.stdout, remote.stdout
    want, got = stored(tmp_path / "local.zarr"), stored(tmp_path / "s3.zarr")
    assert sorted(got) == sorted(want) == ["a", "b", "sub/c", "sub/d"]
    for vid in want:  # bit-identical tokens and times
        np.testing.assert_array_equal(got[vid][0], want[vid][0])
        np.testing.assert_array_equal(got[vid][1], want[vid][1])
    info = open_store(tmp_path / "s3.zarr").info("sub/c")
    assert info["source_path"] == "s3://media/in/set/sub/c.mp4"
    head = s3().head_object(Bucket="media", Key="in/set/sub/c.mp4")
    assert info["source"] == {
        "size": head["ContentLength"],
        "etag": head["ETag"],
        "url": "s3://media/in/set/sub/c.mp4",
    }
    assert source_changed(info) is None  # job=verify asks the bucket
    # A rerun lists again and skips what is done.
    again = run_cli(*extract_args("s3://media/in/set", tmp_path / "s3.zarr", tiny_siglip),
                    hydra_dir=tmp_path / "h3")  # fmt: skip
    assert again.returncode == 0 and "0 done, 4 skipped" in again.stdout, again.stdout
    print(f"local {t1 - t0:.1f} s, s3 {t2 - t1:.1f} s")


def test_list_files_name_objects(
    s3_server: str, local_videos: Path, tiny_siglip: Path, tmp_path: Path
) -> None:
    urls = upload(local_videos, bucket("lists"), "v")
    vids = [u for u in urls if not u.endswith(".txt")]
    listing = tmp_path / "list.txt"
    gone = "s3://lists/v/never-uploaded.mp4"
    listing.write_text("# videos\n" + "\n".join([*vids, gone, vids[0]]) + "\n")
    found = resolve_inputs(str(listing), remote=FAST)
    assert [t.video_id for t in found.tasks] == ["a", "b", "sub/c", "sub/d"]
    assert found.tasks[0].remote is not None and found.tasks[0].remote.url == vids[0]
    assert found.rejected == {gone: "missing object (not found)"}
    # The same list on the bucket; ids relative to job.videos_root given as a URL.
    s3().put_object(Bucket="lists", Key="lists/all.txt", Body=listing.read_bytes())
    on_s3 = resolve_inputs("s3://lists/lists/all.txt", root="s3://lists/v/sub", remote=FAST)
    assert [t.video_id for t in on_s3.tasks] == ["c", "d"]
    assert set(on_s3.rejected) == {gone, vids[0], vids[1]}  # outside the root: no id
    # Through the CLI: the missing object is named in the summary, the rest extracted.
    r = run_cli(*extract_args(str(listing), tmp_path / "out.zarr", tiny_siglip),
                hydra_dir=tmp_path / "h")  # fmt: skip
    assert r.returncode == 1, r.stderr[-3000:]
    assert "4 done, 0 skipped (already complete), 1 failed" in r.stdout, r.stdout
    assert f"FAILED {gone}: missing object (not found)" in r.stdout, r.stdout


def test_a_source_replaced_after_listing_fails_alone(
    s3_server: str, local_videos: Path, tiny_siglip: Path, tmp_path: Path
) -> None:
    upload(local_videos, bucket("swap"), "in")
    tasks = resolve_inputs("s3://swap/in/", remote=FAST).tasks
    old = s3().head_object(Bucket="swap", Key="in/b.mp4")["ETag"]
    # Replaced between listing and download (the shard task downloads after the listing).
    other = make_video(tmp_path / "other.mp4", seconds=3.0, width=96, height=48).path
    s3().upload_file(str(other), "swap", "in/b.mp4")
    new = s3().head_object(Bucket="swap", Key="in/b.mp4")["ETag"]
    assert old != new
    store = tmp_path / "out.zarr"
    res = run_shard(spec(store, tasks, tiny_siglip, remote=FAST), 0, 1)
    assert (res.done, res.failed) == (3, 1)
    s = open_store(store)
    assert s.video_ids(status="failed") == ["b"]
    assert s.info("b")["error"] == (
        f"source changed during download: ETag {old} then {new}; a rerun takes the new one"
    )
    assert s.info("b")["source_path"] == "s3://swap/in/b.mp4"
    # The rerun lists again: it takes the new object and records its ETag.
    tasks = resolve_inputs("s3://swap/in/", remote=FAST).tasks
    res = run_shard(spec(store, tasks, tiny_siglip, remote=FAST), 0, 1)
    assert (res.done, res.failed, res.skipped) == (1, 0, 3)
    s = open_store(store)
    assert s.info("b")["source"]["etag"] == new and s.info("b")["num_frames"] == 6
    # Replaced after extraction: job=verify says so, as for a changed local file.
    s3().upload_file(str(local_videos / "a.mp4"), "swap", "in/b.mp4")
    assert source_changed(s.info("b")) == "source changed since extraction (size, etag)"
    s3().delete_object(Bucket="swap", Key="in/b.mp4")
    assert source_changed(s.info("b")) == "source removed since extraction"


@contextmanager
def moto_auth() -> Iterator[None]:
    """Moto checks credentials only while told to (it accepts any by default); its server runs
    in this process, so its setting is switched here."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("case", ["wrong-credentials", "missing-bucket", "unreachable-endpoint"])
def test_unusable_storage_is_one_line_before_any_work(
    s3_server: str,
    local_videos: Path,
    tiny_siglip: Path,
    tmp_path: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upload(local_videos, bucket("private"), "in")
    videos, want = "s3://private/in/", ""
    if case == "wrong-credentials":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY0000")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        want = "the credentials were refused (InvalidAccessKeyId)"
    elif case == "missing-bucket":
        videos, want = "s3://no-such-bucket/in/", "the bucket does not exist (NoSuchBucket)"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        want = f"cannot reach {os.environ['AWS_ENDPOINT_URL']}"
    store = tmp_path / "out.zarr"
    args = extract_args(videos, store, tiny_siglip, "job.remote.connect_timeout_s=1",
                        "job.remote.max_retries=1", "job.remote.backoff_s=0.05")  # fmt: skip
    with moto_auth() if case == "wrong-credentials" else _nothing():
        t0 = time.perf_counter()
        r = run_cli(*args, hydra_dir=tmp_path / "h")
        seconds = time.perf_counter() - t0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and want in errors[0], r.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot list videos='{videos}': "), errors[0]
    assert "Traceback" not in r.stderr and not store.exists()  # before any work
    assert seconds < 60, seconds  # the CLI's own start-up dominates


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def test_scratch_stays_under_its_cap(
    s3_server: str, local_videos: Path, tiny_siglip: Path, tmp_path: Path
) -> None:
    upload(local_videos, bucket("cap"), "in")
    tasks = resolve_inputs("s3://cap/in/", remote=FAST).tasks
    sizes = sorted(t.remote.size for t in tasks if t.remote is not None)
    for name, cap_bytes, most_files in [
        ("two-fit", sizes[-1] + sizes[-2], 2),  # the two largest fit, never more bytes
        ("each-alone", sizes[0] // 2, 1),  # every video bigger than the cap: one at a time
    ]:
        scratch = tmp_path / name
        opts = replace(FAST, prefetch=4, scratch_dir=str(scratch), scratch_gb=cap_bytes / 1e9)
        seen: list[tuple[int, int]] = []  # (files, bytes) in scratch, polled every ms
        stop = threading.Event()
        watcher = threading.Thread(target=watch_folder, args=(scratch, seen, stop))
        watcher.start()
        try:
            res = run_shard(spec(tmp_path / f"{name}.zarr", tasks, tiny_siglip, remote=opts), 0, 1)
        finally:
            stop.set()
            watcher.join()
        assert (res.done, res.failed) == (4, 0), name
        busy = [s for s in seen if s[0]]
        assert busy, f"{name}: the watcher never saw a download"
        assert max(n for n, _ in busy) <= most_files, (name, max(busy))
        if most_files > 1:
            assert max(b for _, b in busy) <= cap_bytes, (name, max(busy), cap_bytes)
        assert not any(scratch.iterdir()), f"{name}: scratch left behind"
    assert stored(tmp_path / "two-fit.zarr").keys() == stored(tmp_path / "each-alone.zarr").keys()


def watch_folder(folder: Path, seen: list[tuple[int, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
        sizes = []
        for p in files:
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:  # removed after its decode
                pass
        seen.append((len(sizes), sum(sizes)))
        time.sleep(0.001)


def _copy_of(obj: Any, folder: str, start: Any, out: Any) -> None:
    """In a process of its own, once every process is ready: this machine's shared copy of
    ``obj`` (path, inode) into ``out``."""
    from extract.remote import shared_copy

    start.wait(60)
    path = shared_copy(obj, Path(folder), FAST)
    out.put((str(path), path.stat().st_ino))


def test_processes_of_one_machine_share_one_copy(
    s3_server: str, local_videos: Path, tmp_path: Path
) -> None:
    """What Ray's decode tasks on one node use: processes asking at once for the same object get
    one download (the same file, the same inode); on a node without a copy, an object replaced
    since its listing fails with both ETags and leaves nothing; removing a copy removes it."""
    import multiprocessing

    from extract.remote import remove_shared_copy, shared_copy

    upload(local_videos, bucket("shared"), "in")
    obj = next(t.remote for t in resolve_inputs("s3://shared/in/", remote=FAST).tasks
               if t.video_id == "b")  # fmt: skip
    assert obj is not None
    folder, ctx = tmp_path / "node", multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_copy_of, args=(obj, str(folder), start, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        got = [out.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(30)
            proc.kill()
    assert len(set(got)) == 1, got  # one file, downloaded once (a second would be a new inode)
    path = Path(got[0][0])
    assert path.read_bytes() == (local_videos / "b.mp4").read_bytes()
    assert sorted(p.suffix for p in folder.iterdir()) == [".lock", ".mp4"]  # no partial left
    s3().upload_file(str(local_videos / "a.mp4"), "shared", "in/b.mp4")  # replaced
    other = tmp_path / "other-node"  # where no copy was made before the replacement
    with pytest.raises(ValueError, match=rf"source changed during download: ETag {obj.etag} then"):
        shared_copy(obj, other, FAST)
    assert [p.suffix for p in other.iterdir()] == [".lock"]  # no copy, no partial download
    assert shared_copy(obj, folder, FAST) == path  # the copy of the listed version, kept
    remove_shared_copy(obj, folder)
    assert [p.suffix for p in folder.iterdir()] == [".lock"]


def test_remote_settings_are_checked() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"prefetch": 0}, "job.remote.prefetch must be >= 1"),
        ({"scratch_gb": 0}, "job.remote.scratch_gb must be > 0"),
        ({"max_retries": -1}, "job.remote.max_retries must be >= 0"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            RemoteOptions(**kw)
    assert RemoteOptions().prefetch == 2
