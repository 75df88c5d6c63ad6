"""Signals on one machine, with real processes and real signals (jobs/launch/signals.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache import load_index, open_store
from extract.samples import make_video
from tests.jobs.cli import ROOT, run_cli

VIDEOS = 3
# 3 x 30 s at 4 FPS = 360 frames: the tiny encoder is still busy seconds after the writer
# starts, on a quiet machine too (a 5 s clip finished before the signal came)
SECONDS = 30.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sigvideos")
    for i in range(VIDEOS):
        make_video(d / f"v{i}.mp4", seconds=SECONDS, width=64, height=48)
    return d


def extract_args(videos: Path, store: Path, model: Path, *extra: str) -> list[str]:
    return [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={model}",
        "job.batch_frames=2",
        "job.batching=fixed",
        "job.decode.fps=4",
        "job.progress=false",
        "job.layout.segment_frames=1000000",  # nothing committed but by the stop itself
        *extra,
    ]


def start(args: list[str], hydra_dir: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={hydra_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # default SIGINT disposition, as from a shell (Popen restores SIG_DFL-derived defaults)
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        restore_signals=True,
    )


def wait_for_frames(store: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until the writer has started (its run record is journalled) and frames flow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        journal = store / "index" / "shard-00000.jsonl"
        if journal.exists() and journal.stat().st_size:
            time.sleep(1.5)  # frames are being encoded into the writer's buffer
            return
        time.sleep(0.05)
    raise AssertionError("no writer started")


@pytest.fixture(scope="module")
def clean_store(videos: Path, tiny_siglip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sigclean")
    store = tmp / "clean.zarr"
    r = run_cli(*extract_args(videos, store, tiny_siglip), hydra_dir=tmp / "hc")
    assert r.returncode == 0, r.stderr[-3000:]
    return store


@pytest.mark.parametrize(
    ("signals", "status"),
    [((signal.SIGINT,), 130), ((signal.SIGTERM,), 143), ((signal.SIGINT, signal.SIGINT), 130)],
    ids=["sigint", "sigterm", "two-sigints"],
)
def test_signal_commits_says_one_line_and_resumes(
    tmp_path: Path,
    tiny_siglip: Path,
    videos: Path,
    clean_store: Path,
    signals: tuple[int, ...],
    status: int,
) -> None:
    store = tmp_path / "out.zarr"
    args = extract_args(videos, store, tiny_siglip)
    proc = start(args, tmp_path / "h1")
    wait_for_frames(store, proc)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.05)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    # After the signal: one line (before it, the model loader's progress and the run's plan).
    lines = [ln for ln in err.splitlines() if "interrupted" in ln or "rror" in ln]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert "Traceback" not in err
    assert lines[0].startswith("interrupted: committed ") and "rerun the same command" in lines[0]
    committed = int(lines[0].split("committed ")[1].split()[0])
    assert committed > 0, lines  # frames were flowing and nothing committed them but the stop
    index = load_index(store)
    stored = sum(p.frames for p in index.partial.values()) + sum(
        int(e.record["num_frames"]) for e in index.videos.values() if e.status == "done"
    )
    assert stored == committed, (stored, committed)
    assert not index.videos or all(e.status == "done" for e in index.videos.values())
    assert not list(store.glob("**/.staging-*"))
    # The rerun finishes and equals a clean run.
    r = run_cli(*args, hydra_dir=tmp_path / "h2")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = open_store(store), open_store(clean_store)
    assert (
        a.video_ids(status="done") == b.video_ids(status="done") == [f"v{i}" for i in range(VIDEOS)]
    )
    for vid in b.video_ids():
        ta, pa = a.read(vid)
        tb, pb = b.read(vid)
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_allclose(
            np.asarray(ta, np.float32), np.asarray(tb, np.float32), atol=1e-2
        )


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_workers_exit_when_their_driver_is_killed(
    tmp_path: Path, tiny_siglip: Path, videos: Path, clean_store: Path
) -> None:
    store = tmp_path / "out.zarr"
    args = extract_args(videos, store, tiny_siglip, "launcher.workers=2")
    proc = start(args, tmp_path / "h1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both workers have their writer (and its lock)
        journals = list((store / "index").glob("shard-*.jsonl")) if store.exists() else []
        if len([j for j in journals if j.stat().st_size]) == 2:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    workers = children_of(proc.pid)
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    proc.communicate(timeout=10)  # the workers shared its pipes
    assert not left, "workers outlived their driver"
    r = run_cli(*args, hydra_dir=tmp_path / "h2")  # no shard is still locked
    assert r.returncode == 0, r.stderr[-3000:]
    assert open_store(store).video_ids(status="done") == open_store(clean_store).video_ids()
