"""Scaling of extraction with 1 vs 2 workers on the local, Ray and SLURM launchers.

For each launcher, the same inputs are extracted into a fresh store with 1 worker and with 2,
side by side in one run; each worker gets one core (decode and encode threads = 1), so on this
2-core machine 2 workers can at best double throughput. Prints frames/s, scaling efficiency =
fps(2) / (2 x fps(1)), and the fixed overhead per shard: seconds from submitting to the first
encoded frame. The last line is one JSON object.

    python -m bench.cluster [--launchers local,ray,slurm] [--videos 8] [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from extract.samples import lavfi_video

ROOT = Path(__file__).resolve().parent.parent


def make_inputs(out: Path, n: int, seconds: float) -> Path:
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = videos / f"clip{i:02d}.mp4"
        if path.exists():
            continue
        lavfi_video(path, f"testsrc2=size=640x360:rate=30,noise=alls={8 + i}:allf=t", seconds)
    return videos


def launcher_for(name: str, workers: int, store: Path) -> Any:
    if name == "local":
        from jobs.launch.launchers import LocalLauncher

        return LocalLauncher(workers=workers, shards=workers)
    if name == "ray":
        from jobs.launch.ray_launcher import RayLauncher

        return RayLauncher(shards=2, num_cpus=workers)
    if name == "slurm":
        from jobs.launch.slurm import SlurmLauncher

        return SlurmLauncher(
            folder=str(store / "logs" / "slurm"),
            shards=workers,
            partition="debug",
            cpus_per_task=1,
            mem_gb=3,
            timeout_min=30,
        )
    raise ValueError(f"unknown launcher {name!r}; valid: local, ray, slurm")


def measure(name: str, workers: int, videos: Path, work: Path, encoder: Any) -> dict[str, Any]:
    from extract.pipeline import DecodeOptions
    from jobs.extract import ExtractJob
    from jobs.extract_ray import RayExtraction

    store = work / f"{name}-{workers}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    # A "worker" is one CPU of the embedded Ray, shared by the encoder actor and decode tasks.
    ray = RayExtraction(
        encoder_actors=1,
        encoder_num_cpus=workers / 2,
        decode_num_cpus=workers / 2,
        max_in_flight=2,
    )
    job = ExtractJob(
        videos=str(videos),
        store=str(store),
        encoder=encoder,
        launcher=launcher_for(name, workers, store),
        decode=DecodeOptions(threads=1),
        encode_threads=1,
        batch_frames=16,
        progress=False,
        ray=ray,
    )
    t0 = time.perf_counter()
    summary = job.execute()
    wall = time.perf_counter() - t0
    assert summary is not None and summary["failed"] == 0 and not summary["missing"], summary
    first = summary["seconds_to_first_frame"]
    return {
        "frames": summary["frames"],
        "seconds": round(wall, 2),
        "fps": round(summary["frames"] / wall, 2),
        "seconds_to_first_frame": first,
        # Throughput once every worker is up (start-up cost excluded).
        "steady_fps": round(summary["frames"] / (wall - first), 2) if first else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launchers", default="local,ray,slurm")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model, random weights")
    ap.add_argument("--work", default=str(ROOT / ".bench" / "cluster"))
    args = ap.parse_args()

    from extract.encoders import ClipConfig

    work = Path(args.work)
    videos = make_inputs(work, args.videos, args.seconds)
    encoder = ClipConfig(model=args.model, pretrained=None, device="cpu")
    print(
        f"inputs: {args.videos} x {args.seconds:g} s 640x360 H.264 at 30 fps; encoder "
        f"{args.model} (random init); 1 decode + 1 encode thread per worker"
    )
    out: dict[str, Any] = {"encoder": args.model, "videos": args.videos}
    for name in args.launchers.split(","):
        if name == "slurm":
            subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "up.sh")], check=True)
        runs = {w: measure(name, w, videos, work, encoder) for w in (1, 2)}
        eff = runs[2]["fps"] / (2 * runs[1]["fps"])
        steady = runs[2]["steady_fps"] / (2 * runs[1]["steady_fps"])
        out[name] = {
            "1": runs[1],
            "2": runs[2],
            "scaling_efficiency": round(eff, 3),
            "steady_scaling_efficiency": round(steady, 3),
        }
        print(
            f"{name:6s} 1 worker {runs[1]['fps']:6.2f} frames/s | 2 workers {runs[2]['fps']:6.2f} "
            f"frames/s | scaling efficiency {eff:.2f} (after start-up {steady:.2f}) | submit -> "
            f"first frame {runs[1]['seconds_to_first_frame']} s / "
            f"{runs[2]['seconds_to_first_frame']} s"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
