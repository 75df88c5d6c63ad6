"""job=stream live from a video file equals extract -> store -> stream; realtime pacing; the
player page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from extract.samples import make_video
from jobs.stream import StreamJob
from models.tiny import save_tiny_videollm_online
from tests.jobs.cli import ROOT, run_cli

QUERY = "What am I doing?"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path, tiny_llm: Path) -> dict:
    """A generated video, its store (tiny SigLIP, fixed batches of one frame) and a tiny
    checkpoint in VideoLLM-online's layout (10 tokens of width 64 per frame)."""
    d = tmp_path_factory.mktemp("stream")
    (d / "videos").mkdir()
    video = make_video(d / "videos" / "clip.mp4", seconds=3.0, fps=10, width=96, height=64).path
    ckpt = save_tiny_videollm_online(d / "tiny-videollm-online-v1plus", tiny_llm, vision_dim=64)
    r = run_cli(
        "job=extract", f"videos={d / 'videos'}", f"store={d / 'feats.zarr'}",
        f"encoder.pretrained={tiny_siglip}", "encoder.device=cpu",
        "job.batching=fixed", "job.batch_frames=1",  # the live path encodes one frame at a time
        "job.progress=false", hydra_dir=d / "h-extract",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return {"dir": d, "video": Path(video), "store": d / "feats.zarr", "ckpt": ckpt}


def store_stream(world: dict, out: Path, threshold: float) -> None:
    job = StreamJob(
        store=str(world["store"]), video_id="clip", adapter=str(world["ckpt"]),
        output_dir=str(out), threshold=threshold, max_reply_tokens=3,
        queries=[{"t": 1.2, "text": QUERY}],
    )  # fmt: skip
    assert job.run() == 0


def test_live_stream_equals_extract_then_stream(world: dict, tiny_siglip: Path) -> None:
    d = world["dir"]
    theta = 0.725  # the demo's; the random tiny model fires on every frame (argmax is never ",")
    store_stream(world, d / "from-store", theta)
    r = run_cli(
        "job=stream", f"video={world['video']}", f"job.adapter={world['ckpt']}",
        f"encoder.pretrained={tiny_siglip}", "encoder.device=cpu", f"job.threshold={theta}",
        "job.max_reply_tokens=3", f"job.output_dir={d / 'live'}",
        f"job.queries=[{{t: 1.2, text: '{QUERY}'}}]", hydra_dir=d / "h-live",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    live, stored = d / "live", d / "from-store"
    frames = lines(live / "frames.jsonl")
    # The same decisions from the same P(,) (equal to the last bit: the same features).
    assert len(frames) == 6 and frames == lines(stored / "frames.jsonl")
    timeline = lines(live / "timeline.jsonl")
    assert timeline == lines(stored / "timeline.jsonl")
    assert {"time": 1.2, "role": "user", "text": QUERY} in timeline
    # Replies are printed as they happen, in the timeline's order.
    printed = [ln for ln in r.stdout.splitlines() if re.match(r"\[\d+\.\d s\] ", ln)]
    want = [f"[{e['time']:.1f} s] {e['role'].capitalize()}: {e['text']}" for e in timeline]
    assert printed == want
    latency = json.loads((live / "latency.json").read_text())
    assert latency["source"] == "video" and len(latency["encode_ms"]) == 6
    assert latency["real_time_factor"] > 0 and latency["video_s"] == pytest.approx(3.0)
    rtf, mean = latency["real_time_factor"], latency["mean_ms"]
    print(f"live: real-time factor {rtf:.3f}, mean {mean:.1f} ms/frame")


def test_realtime_paces_by_the_video_clock_and_reports_lag(
    world: dict, tiny_siglip: Path, tmp_path: Path
) -> None:
    from extract.encoders import SiglipConfig

    job = StreamJob(
        video=str(world["video"]), encoder=SiglipConfig(pretrained=str(tiny_siglip), device="cpu"),
        adapter=str(world["ckpt"]), output_dir=str(tmp_path), realtime=True, threshold=0.0,
        max_reply_tokens=2, stop_after_frames=4, player=False,
    )  # fmt: skip
    assert job.run() == 0
    latency = json.loads((tmp_path / "latency.json").read_text())
    assert latency["realtime"] and len(latency["lag_ms"]) == 4
    assert latency["max_lag_ms"] == max(latency["lag_ms"])
    assert latency["wall_s"] >= 1.5 - 0.05  # 4 frames at 2 fps: the last arrives at 1.5 s


def test_player_shows_the_turns_up_to_the_seek_time(world: dict, tmp_path: Path) -> None:
    page = world["dir"] / "live" / "player.html"
    timeline = lines(world["dir"] / "live" / "timeline.jsonl")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/install.sh installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    for t in (0.0, 1.2, 3.0):
        dom = subprocess.run(
            [chromium, *flags, "--dump-dom", f"{page.as_uri()}#t={t}"],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        shown = re.findall(r'<li class="(user|assistant)" data-t="([0-9.]+)">', dom)
        want = [e for e in timeline if e["time"] <= t + 1e-6]
        assert [(r, float(x)) for r, x in shown] == [(e["role"], e["time"]) for e in want], t
        assert f'data-shown="{len(want)}"' in dom
    assert 'src="../videos/clip.mp4"' in page.read_text()  # found from the page on disk
    shot = tmp_path / "player.png"
    r = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1100,700",
         f"{page.as_uri()}#t=3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and shot.stat().st_size > 10_000, r.stderr[-2000:]
    artifacts = ROOT / ".test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "stream-player.png")


def test_a_checkpoint_that_does_not_fit_the_store_is_refused(
    world: dict, tiny_llm: Path, tmp_path: Path
) -> None:
    live1 = save_tiny_videollm_online(tmp_path / "tiny-videollm-online-v1", tiny_llm, vision_dim=64)
    job = StreamJob(store=str(world["store"]), video_id="clip", adapter=str(live1))
    with pytest.raises(ValueError, match=r"tokens per frame: model 1, store .*feats.zarr 10"):
        job.run()
    wide = save_tiny_videollm_online(tmp_path / "tiny-videollm-online-v1plus", tiny_llm)
    job = StreamJob(store=str(world["store"]), video_id="clip", adapter=str(wide))
    with pytest.raises(ValueError, match=r"token width: model 1024, store .*feats.zarr 64"):
        job.run()
