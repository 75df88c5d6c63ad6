"""kill -9 at random moments during a multi-video extraction, repeated: the store ends equal to a
clean run's, and work committed before a kill is never redone (resumed, not restarted)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache import load_index, open_store, read_journal
from extract.samples import make_video
from jobs.verify import verify_store
from tests.jobs.cli import ROOT, run_cli


def _args(videos: Path, store: Path, model: Path) -> list[str]:
    return [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={model}",
        "job.commit_interval_s=2",
        "job.decode.fps=8",
        "job.batch_frames=4",
        "job.batching=fixed",
        "job.progress=false",
    ]


def _committed_segments(store: Path) -> int:
    journal = store / "index" / "shard-00000.jsonl"
    return sum(r.get("kind") == "segment" for r in read_journal(journal))


def _soak(tmp_path: Path, model: Path, kills: int, seed: int) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"v{i}.mp4", seconds=6.0 + i, width=64, height=48)
    clean, store = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    r = run_cli(*_args(videos, clean, model), hydra_dir=tmp_path / "h0")
    assert r.returncode == 0, r.stderr[-2000:]
    rng = random.Random(seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "run.py"), *_args(videos, store, model)]
    killed = 0
    for k in range(kills):
        before = _committed_segments(store) if store.exists() else 0
        proc = subprocess.Popen(
            [*cmd, f"hydra.run.dir={tmp_path / f'h{k + 1}'}"], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if store.exists() and _committed_segments(store) > before:
                break  # it has made progress: kill it a random moment later
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
    assert killed >= 1
    r = run_cli(*_args(videos, store, model), hydra_dir=tmp_path / "hz")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = open_store(clean), open_store(store)
    assert a.video_ids(status="done") == b.video_ids(status="done") == ["v0", "v1", "v2"]
    for vid in a.video_ids():
        (ta, pa), (tb, pb) = a.read(vid), b.read(vid)
        np.testing.assert_array_equal(pa, pb)
        # fixed batching; a resume shifts batch boundaries, which moves float32 sums in the
        # last bits only (a few float16 ulps at most)
        np.testing.assert_allclose(
            tb.astype(np.float32), ta.astype(np.float32), rtol=2e-3, atol=2e-3
        )
    # Committed frames were never redone: every committed piece belongs to the final attempt.
    index = load_index(store)
    finals = {e.record["attempt"] for e in index.videos.values()}
    pieces = [r for r in read_journal(store / "index/shard-00000.jsonl") if r["kind"] == "piece"]
    assert {p["attempt"] for p in pieces} <= finals
    assert sum(p["frames"] for p in pieces) == sum(
        int(e.record["num_frames"]) for e in index.videos.values()
    )
    assert verify_store(store)["problems"] == {}


def test_kill_9_once_gives_the_clean_store(tmp_path: Path, tiny_siglip: Path) -> None:
    """The short variant (the only default test of it; the soak below is marked slow)."""
    _soak(tmp_path, tiny_siglip, kills=1, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_kill_9_soak(tmp_path: Path, tiny_siglip: Path, seed: int) -> None:
    _soak(tmp_path, tiny_siglip, kills=6, seed=seed)
