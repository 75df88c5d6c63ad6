"""Several videos decoded in parallel into one encoder: same tokens, same failures, kill-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cache import load_index, open_store
from extract.encoders import SiglipConfig, build_encoder
from extract.frames import DecodeOptions, default_workers, usable_cpus
from extract.pipeline import ExtractPipeline, VideoTask
from extract.samples import make_bad_inputs, make_video
from jobs.extract import ExtractSpec, run_shard
from jobs.status import format_status, store_status
from tests.jobs.cli import ROOT, run_cli


def videos(d: Path, n: int = 5) -> list[VideoTask]:
    d.mkdir(parents=True, exist_ok=True)
    return [
        VideoTask(
            f"v{i}",
            make_video(d / f"v{i}.mp4", seconds=1.0 + 0.7 * i, width=64 + 8 * i, height=48).path,
        )
        for i in range(n)
    ]


def spec(
    store: Path, tasks: list[VideoTask], tiny: Path, workers: int, **kw: object
) -> ExtractSpec:
    return ExtractSpec(
        store=str(store), encoder=SiglipConfig(pretrained=str(tiny)), videos=tuple(tasks),
        decode=DecodeOptions(workers=workers, frames_per_call=3), batching="fixed",
        batch_frames=5, progress=False, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def stored(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    s = open_store(store)
    return {v: s.read(v) for v in s.video_ids()}


def test_default_workers_follow_the_affinity() -> None:
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert default_workers(1, cpus=8) == 7 and default_workers(4, cpus=2) == 1
    with pytest.raises(ValueError, match="workers"):
        DecodeOptions(workers=0)


def test_tokens_identical_across_decode_parallelism(tmp_path: Path, tiny_siglip: Path) -> None:
    tasks = videos(tmp_path / "in")
    got = {}
    for w in (1, 3):
        res = run_shard(spec(tmp_path / f"w{w}.zarr", tasks, tiny_siglip, w), 0, 1)
        assert res.done == len(tasks) and not res.failed
        got[w] = stored(tmp_path / f"w{w}.zarr")
        status = store_status(tmp_path / f"w{w}.zarr")  # job=status shows what bounds the run
        rates = status["rates"]
        assert rates["decode_workers"] == w and rates["bound"] in ("decode", "encode")
        assert rates["decode_fps_per_decoder"] > 0 and rates["encode_fps"] > 0
        assert f"x {w} decoders" in format_status(status)
    assert list(got[1]) == list(got[3]) == [t.video_id for t in tasks]
    for vid in got[1]:
        for a, b in zip(got[1][vid], got[3][vid], strict=True):
            np.testing.assert_array_equal(a, b)  # bit-identical tokens and pts


def test_bad_inputs_recorded_with_reasons_when_parallel(tmp_path: Path, tiny_siglip: Path) -> None:
    bad = make_bad_inputs(tmp_path / "bad")
    tasks = [VideoTask(name, p) for name, p in bad.items()] + videos(tmp_path / "in", 2)
    readable = os.geteuid() == 0  # root reads a chmod 0 file
    reasons = {}
    for w in (1, 3):
        store = tmp_path / f"w{w}.zarr"
        res = run_shard(replace(spec(store, tasks, tiny_siglip, w), batching="dynamic"), 0, 1)
        assert (res.done, res.failed) == (2 + readable, len(bad) - readable)
        index = load_index(store)
        reasons[w] = {v: e.record.get("error") for v, e in index.videos.items()}
    assert reasons[1] == reasons[3]
    assert all(reasons[3][name] for name in bad if name != "unreadable" or not readable)
    assert "truncated or damaged" in reasons[3]["fails_midway"]


def test_kill_9_during_parallel_decoding_then_rerun_equals_a_clean_run(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    vdir = tmp_path / "videos"
    vdir.mkdir()
    for i in range(6):
        make_video(vdir / f"v{i}.mp4", seconds=4.0, width=64, height=48)
    args = [
        "job=extract", f"videos={vdir}", f"encoder.pretrained={tiny_siglip}",
        "job.commit_interval_s=0", "job.batch_frames=1", "job.batching=fixed",
        "job.decode.workers=3", "job.decode.frames_per_call=2", "job.progress=false",
    ]  # fmt: skip
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"store={store}",
           f"hydra.run.dir={tmp_path / 'h'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (store / "zarr.json").exists() and len(load_index(store).videos) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(load_index(store).videos) < 6  # killed mid-run
    again = run_cli(*args, f"store={store}", hydra_dir=tmp_path / "h2")
    assert again.returncode == 0, again.stderr[-3000:]
    clean = tmp_path / "clean.zarr"
    r = run_cli(*args, f"store={clean}", hydra_dir=tmp_path / "h3")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = stored(store), stored(clean)
    assert list(a) == list(b) == [f"v{i}" for i in range(6)]
    for vid in a:
        for x, y in zip(a[vid], b[vid], strict=True):
            np.testing.assert_array_equal(x, y)


def test_resize_in_the_encoders_batch_gives_the_same_tokens(
    tmp_path: Path, tiny_siglip: Path
) -> None:
    """The GPU code path (native-size frames, resize+pad in the encoder's batch) run on CPU."""
    tasks = videos(tmp_path / "in", 3)  # three display sizes in one batch
    encoder = build_encoder(SiglipConfig(pretrained=str(tiny_siglip)))
    got = {}
    for where in ("decode", "encoder"):
        sink = TokenSink()
        pipe = ExtractPipeline(
            encoder, sink, decode=DecodeOptions(frames_per_call=3, workers=2), batch_frames=7,
            batching="fixed", resize_on=where,
        )  # fmt: skip
        assert pipe.native == (where == "encoder")
        pipe.run(tasks)
        got[where] = sink.tokens
    assert got["decode"].keys() == got["encoder"].keys() == {t.video_id for t in tasks}
    for vid, tokens in got["decode"].items():
        np.testing.assert_array_equal(np.concatenate(tokens), np.concatenate(got["encoder"][vid]))


class TokenSink:
    def __init__(self) -> None:
        self.tokens: dict[str, list[np.ndarray]] = {}

    def start(self, video_id: str) -> int:
        self.tokens[video_id] = []
        return 0

    def write(self, video_id: str, tokens: np.ndarray, pts_seconds: np.ndarray) -> None:
        self.tokens[video_id].append(tokens)

    def finish(self, video_id: str, record: dict[str, Any]) -> None:
        assert record["decode_seconds"] > 0

    def fail(self, video_id: str, record: dict[str, Any], error: str) -> None:
        raise AssertionError(f"{video_id}: {error}")
