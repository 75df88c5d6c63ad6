"""Live streaming from a video file (``job=stream video=PATH``) with tiny models on CPU.

A generated 320x240 video is decoded at 2 FPS with extraction's reader, each frame encoded by a
tiny random SigLIP (384 px, 24x24 patches, 10 tokens) and fed to a tiny random LIVE checkpoint in
VideoLLM-online's layout (replies capped at 1 token: the random model fires on every frame).
Prints the real-time factor (wall time / video time; < 1 is faster than real time), per-frame
latency (encode + model) and, paced by the video clock (``job.realtime=true``), the largest lag.
The last line is one JSON object.

    python -m bench.stream_live [--seconds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch


def run(video: Path, ckpt: Path, siglip: Path, out: Path, realtime: bool) -> dict[str, Any]:
    from extract.encoders import SiglipConfig
    from jobs.stream import StreamJob

    job = StreamJob(
        video=str(video),
        encoder=SiglipConfig(pretrained=str(siglip), device="cpu"),
        adapter=str(ckpt),
        output_dir=str(out),
        realtime=realtime,
        max_reply_tokens=1,
        player=False,
    )
    job.run()
    stats: dict[str, Any] = json.loads((out / "latency.json").read_text())
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from extract.samples import make_video
    from extract.tiny import save_tiny_siglip
    from models.tiny import save_tiny_llm, save_tiny_videollm_online

    d = Path(tempfile.mkdtemp(prefix="bench-stream-live-"))
    video = Path(make_video(d / "clip.mp4", seconds=args.seconds, fps=30).path)
    siglip = save_tiny_siglip(d / "siglip")
    ckpt = save_tiny_videollm_online(d / "vlo-v1plus", save_tiny_llm(d / "llm"), vision_dim=64)
    fast = run(video, ckpt, siglip, d / "fast", realtime=False)
    paced = run(video, ckpt, siglip, d / "paced", realtime=True)
    enc = sorted(fast["encode_ms"])
    result = {
        "frames": fast["frames"],
        "real_time_factor": round(fast["real_time_factor"], 3),
        "mean_ms_per_frame": round(fast["mean_ms"], 1),
        "p95_ms_per_frame": round(fast["p95_ms"], 1),
        "median_encode_ms": enc[len(enc) // 2],
        "realtime_max_lag_ms": paced["max_lag_ms"],
        "realtime_mean_lag_ms": round(sum(paced["lag_ms"]) / len(paced["lag_ms"]), 1),
    }
    print(f"live stream of {args.seconds:.0f} s at 2 FPS, tiny models, {args.threads} thread(s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
