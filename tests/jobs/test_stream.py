"""job=stream live from a video file equals extract -> store -> stream; realtime pacing; the
player page in headless Chromium; every bad setting is one error before any model loads; a stream
writes as it goes and a signal or a decode error keeps what was streamed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from extract.encoders import SiglipConfig
from extract.frames import DecodeOptions
from extract.samples import make_bad_inputs, make_video
from jobs.stream import StreamJob
from models.tiny import save_tiny_videollm_online
from tests.jobs.cli import ROOT, run_cli

QUERY = "What am I doing?"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path, tiny_llm: Path) -> dict:
    """A generated video, its store (tiny SigLIP, fixed batches of one frame; ``broken``: a
    failed video) and a tiny checkpoint in VideoLLM-online's layout (10 tokens of width 64 per
    frame)."""
    d = tmp_path_factory.mktemp("stream")
    (d / "videos").mkdir()
    video = make_video(d / "videos" / "clip.mp4", seconds=3.0, fps=10, width=96, height=64).path
    (d / "videos" / "broken.mp4").write_text("not a video\n")
    ckpt = save_tiny_videollm_online(d / "tiny-videollm-online-v1plus", tiny_llm, vision_dim=64)
    r = run_cli(
        "job=extract", f"videos={d / 'videos'}", f"store={d / 'feats.zarr'}",
        f"encoder.pretrained={tiny_siglip}", "encoder.device=cpu",
        "job.batching=fixed", "job.batch_frames=1",  # the live path encodes one frame at a time
        "job.progress=false", hydra_dir=d / "h-extract",
    )  # fmt: skip
    assert r.returncode == 1 and "1 done, 0 skipped (already complete), 1 failed" in r.stdout, (
        r.stdout[-3000:] + r.stderr[-3000:]
    )
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


# --- every setting is checked before any model loads ------------------------------------------


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"video_id": "clpi"}, r"video_id='clpi' is not in store .*feats\.zarr; closest: clip "),
        ({"video_id": "broken"}, r"video_id='broken' is failed in store .*\(cannot open as a"),
        ({"fps": 0}, r"job\.fps must be > 0 and <= 240 \(frames fed per second\), got 0"),
        ({"queries": [{"text": QUERY}]}, r"job\.queries\[0\] needs t, its time in seconds"),
        ({"queries": [{"t": 1.0, "text": QUERY}, {"t": 2.0}]}, r"job\.queries\[1\] needs text"),
        ({"queries": [{"t": 1, "txt": "hi"}]}, r"job\.queries\[0\] must be \{t: seconds, text"),
        (
            {"queries": [{"t": 2.6, "text": QUERY}]},
            r"job\.queries\[0\]\.t=2\.6 is after the end of the stream \(the video's last frame"
            r" is at 2\.500 s\), so it would never be asked",
        ),
        (
            {"queries": [{"t": 1.2, "text": QUERY}], "stop_after_frames": 2},
            r"job\.stop_after_frames=2 ends the stream at 0\.500 s",
        ),
        ({"kv": "half"}, r"job\.kv='half' is not one of full, bounded"),
        ({"threshold": 72.5}, r"job\.threshold is a probability in \[0, 1\], got 72\.5"),
        ({"max_reply_tokens": 0}, r"job\.max_reply_tokens must be >= 1, got 0"),
        ({"output_dir": "FILE"}, r"job\.output_dir='.*out' is a file, not a folder"),
        ({"video": "MISSING"}, r"video='.*missing\.mp4': missing path"),
        ({"video": "VIDEO", "fps": 0}, r"job\.fps must be > 0"),
        ({"video": "VIDEO", "queries": [{"t": 3.5, "text": QUERY}]}, r"last frame is at 2\.500"),
    ],
    ids=[
        "unknown-video-id", "failed-video", "fps-zero", "query-without-t",
        "query-without-text", "query-unknown-key", "query-after-the-end",
        "query-after-stop", "kv-unknown", "threshold-percent", "max-reply-tokens-zero",
        "output-dir-is-a-file", "live-missing-video", "live-fps-zero",
        "live-query-after-the-end",
    ],
)  # fmt: skip
def test_a_bad_setting_is_refused_before_any_model_loads(
    world: dict, tmp_path: Path, settings: dict[str, Any], error: str
) -> None:
    # No model could load here: a checkpoint or an encoder that was loaded first would fail with
    # its own error, so seeing the setting's error proves it was checked before.
    (tmp_path / "out").write_text("a file where the outputs would go\n")
    output_dir = tmp_path / ("out" if settings.get("output_dir") == "FILE" else "new")
    source: dict[str, Any] = {"store": str(world["store"]), "video_id": "clip"}
    if "video" in settings:
        video = world["video"] if settings["video"] == "VIDEO" else tmp_path / "missing.mp4"
        encoder = SiglipConfig(pretrained=str(tmp_path / "no-encoder"), device="cpu")
        source = {"video": str(video), "encoder": encoder}
    rest = {k: v for k, v in settings.items() if k not in ("video", "output_dir")}
    no_checkpoint = str(tmp_path / "no-checkpoint")
    with pytest.raises(ValueError, match=error):
        StreamJob(**(source | rest), output_dir=str(output_dir), adapter=no_checkpoint).run()
    assert not (tmp_path / "new").exists()  # nothing was made either


def test_an_unknown_video_id_is_one_error_line(world: dict, tmp_path: Path) -> None:
    r = run_cli(
        "job=stream", f"store={world['store']}", "video_id=clip.mp4", "job.adapter=nowhere",
        f"job.output_dir={tmp_path / 'out'}", hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: video_id='clip.mp4' is not in store {world['store']}; closest: clip (python"
        f" run.py job=status store={world['store']} lists them)"
    ]
    assert not (tmp_path / "out").exists()


# --- a stream writes as it goes; a stop keeps what was streamed ---------------------------------


def complete_rows(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a file being written (``[]`` while it is being replaced)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_mid_stream_keeps_what_was_streamed(
    world: dict, tiny_siglip: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    video = make_video(tmp_path / "long.mp4", seconds=20.0, fps=10, width=64, height=48).path
    out = tmp_path / "out"
    out.mkdir()
    for name in ("frames.jsonl", "timeline.jsonl", "latency.json", "player.html"):
        (out / name).write_text('{"earlier": "run"}\n' * 50)  # an earlier run's outputs
    (out / "notes.txt").write_text("not the job's")
    cmd = [
        sys.executable, str(ROOT / "run.py"), "job=stream", f"video={video}",
        f"encoder.pretrained={tiny_siglip}", "encoder.device=cpu", f"job.adapter={world['ckpt']}",
        "job.realtime=true", "job.threshold=1.0", "job.max_reply_tokens=2",
        f"job.output_dir={out}", f"job.queries=[{{t: 0.0, text: '{QUERY}'}}]",
        f"hydra.run.dir={tmp_path / 'h'}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # 40 frames paced over 20 s: frames.jsonl grows while the stream runs.
        deadline = time.monotonic() + 300
        while len([r for r in complete_rows(out / "frames.jsonl") if "index" in r]) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no frame was written while streaming"
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    frames = lines(out / "frames.jsonl")
    n = len(frames)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert stderr.splitlines()[-1] == f"stopped after {n} frames; outputs in {out}", stderr[-3000:]
    assert not re.search("commit|resume|Traceback", stderr), stderr[-3000:]
    assert [f["index"] for f in frames] == list(range(n)) and 2 <= n < 40
    latency = json.loads((out / "latency.json").read_text())
    assert latency["frames"] == n and len(latency["lag_ms"]) == n
    # Every turn up to the stop: the query, its reply, then a reply per (fired) frame.
    timeline = lines(out / "timeline.jsonl")
    assert timeline[:2] == [
        {"time": 0.0, "role": "user", "text": QUERY},
        {"time": 0.0, "role": "assistant", "text": timeline[1]["text"]},
    ]
    assert all(f["fired"] for f in frames)
    assert [(e["role"], e["time"]) for e in timeline[2:]] == [
        ("assistant", f["time"]) for f in frames
    ]
    assert len([ln for ln in stdout.splitlines() if re.match(r"\[\d+\.\d s\] ", ln)]) == len(
        timeline
    )
    page = (out / "player.html").read_text()
    assert f"of {len(timeline)}</p>" in page and 'src="../long.mp4"' in page
    assert (out / "notes.txt").read_text() == "not the job's"  # only its own files are replaced


def test_a_decode_error_mid_video_keeps_what_was_streamed(
    world: dict, tiny_siglip: Path, tmp_path: Path
) -> None:
    # Cut mid-packet at 60 %: opens (approximate mode trusts the header), decodes 0.8 s, fails.
    video = make_bad_inputs(tmp_path / "bad")["fails_midway"]
    out = tmp_path / "out"
    job = StreamJob(
        video=str(video), encoder=SiglipConfig(pretrained=str(tiny_siglip), device="cpu"),
        adapter=str(world["ckpt"]), output_dir=str(out), fps=10, threshold=1.0,
        decode=DecodeOptions(seek_mode="approximate", frames_per_call=1), max_reply_tokens=2,
    )  # fmt: skip
    stopped = f"; stopped after 8 frames; outputs in {out}"
    with pytest.raises(
        ValueError, match=r"^video='.*fails_midway\.mp4': decoding failed at 0\.800"
    ) as e:
        job.run()
    assert str(e.value).endswith(stopped)
    frames = lines(out / "frames.jsonl")
    assert [f["time"] for f in frames] == pytest.approx([k / 10 for k in range(8)])
    assert json.loads((out / "latency.json").read_text())["frames"] == 8
    assert len(lines(out / "timeline.jsonl")) == 8  # a reply per frame (threshold 1)
    assert 'src="../bad/fails_midway.mp4"' in (out / "player.html").read_text()


def test_the_realtime_lag_includes_the_first_decode(
    world: dict, tiny_siglip: Path, tmp_path: Path
) -> None:
    # 40 frames of 720p decoded in one call before the first frame can be fed.
    video = make_video(tmp_path / "hd.mp4", seconds=4.0, fps=30, width=1280, height=720).path
    job = StreamJob(
        video=str(video), encoder=SiglipConfig(pretrained=str(tiny_siglip), device="cpu"),
        adapter=str(world["ckpt"]), output_dir=str(tmp_path / "out"), realtime=True, fps=10,
        decode=DecodeOptions(frames_per_call=40), stop_after_frames=4, threshold=1.0,
        max_reply_tokens=1, player=False,
    )  # fmt: skip
    assert job.run() == 0
    latency = json.loads((tmp_path / "out" / "latency.json").read_text())
    times = [f["time"] for f in lines(tmp_path / "out" / "frames.jsonl")]
    # The clock starts when the stream does, before the first decode: the wall time is the
    # video time streamed plus the last frame's lag, and nothing else.
    unexplained = latency["wall_s"] - (times[-1] - times[0]) - latency["lag_ms"][-1] / 1e3
    assert abs(unexplained) < 0.05, unexplained
    first = latency["decode_ms"][0] + latency["encode_ms"][0] + latency["per_frame_ms"][0]
    assert latency["decode_ms"][0] > 50 and latency["lag_ms"][0] >= first - 0.01
    assert latency["decode_ms"][1:] == [0.0] * 3  # one decode call for the chunk
