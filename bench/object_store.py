"""Extraction from object storage against a local S3 server: videos read from an ``s3://``
bucket vs the same videos read from local files, side by side in one run.

    .venv/bin/python -m bench.object_store [--quick] [--seconds S] [--repeats N]

Without ``AWS_ENDPOINT_URL`` a moto S3 server is started on 127.0.0.1 in its own process (as a
remote store would be: its CPU is not this process's) and stopped at the end. Each round runs
``run_shard`` end to end (decode, encode with the bench encoder, write a local store) once from
local files and once from ``s3://`` (listing included, downloads prefetched to scratch), in
alternating order; the best of the rounds is reported, as in ``bench.extract``. Target:
``s3_vs_local`` (frames/s from s3 over frames/s from local) >= 0.85. The last line printed is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.extract import (
    DEFAULT_ENCODER,
    MODELS,
    ROOT,
    Run,
    best,
    make_videos,
    measure,
)
from extract.encoders import ClipConfig
from extract.pipeline import DecodeOptions, VideoTask
from extract.remote import RemoteOptions
from jobs.extract import ExtractSpec, run_shard
from jobs.inputs import resolve_inputs

TARGETS = {"s3_vs_local": (">=", 0.85)}
BUCKET = "bench-sources"
TEST_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench")
    ap.add_argument("--seconds", type=float, default=None, help="long video length (60)")
    ap.add_argument("--quick", action="store_true", help="20 s long video, 2 rounds")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="open_clip model, random weights")
    ap.add_argument("--threads", type=int, default=1, help="decode threads = torch threads")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefetch", type=int, default=RemoteOptions.prefetch)
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3, quick 2)")
    ap.add_argument("--settle", type=float, default=20.0, help="max s to wait for a quiet CPU")
    ap.add_argument("--tries", type=int, default=3, help="attempts per disturbed measurement")
    return ap.parse_args()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_endpoint() -> Iterator[str]:
    """``AWS_ENDPOINT_URL`` if set; else a moto S3 server of our own on 127.0.0.1 (own process)."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield os.environ["AWS_ENDPOINT_URL"]
        return
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in [*TEST_KEYS, "AWS_ENDPOINT_URL"]}
    os.environ.update({**TEST_KEYS, "AWS_ENDPOINT_URL": endpoint})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server on {endpoint} did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload(paths: list[Path], prefix: str) -> str:
    """The bench videos to ``s3://BUCKET/prefix/``; its URL."""
    import boto3

    client = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    for p in paths:
        client.upload_file(str(p), BUCKET, f"{prefix}/{p.name}")
    return f"s3://{BUCKET}/{prefix}/"


def sources(args: argparse.Namespace) -> dict[str, Any]:
    """Frames/s of run_shard from s3:// vs from local files (same videos, same encoder)."""
    repeats = max(2, args.repeats or (2 if args.quick else 3))
    th = args.threads
    torch.set_num_threads(th)
    paths = make_videos(args.cache, args.seconds or (20.0 if args.quick else 60.0))
    cfg = ClipConfig(model=args.encoder, pretrained=None, model_config=str(MODELS),
                     autocast="off", device="cpu")  # fmt: skip
    remote = RemoteOptions(prefetch=args.prefetch, scratch_dir=str(args.cache / "scratch"))
    base = ExtractSpec(store="", encoder=cfg, decode=DecodeOptions(threads=th),
                       batch_frames=args.batch, encode_threads=th, progress=False,
                       remote=remote)  # fmt: skip
    local_tasks = tuple(VideoTask(p.stem, p) for p in paths)
    total_bytes = sum(p.stat().st_size for p in paths)
    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"inputs: {len(paths)} videos, {total_bytes / 1e6:.1f} MB; encoder open_clip "
          f"{args.encoder} random weights; prefetch {args.prefetch}")  # fmt: skip
    with s3_endpoint() as endpoint:
        url = upload(paths, "videos")
        print(f"s3: {endpoint}, {url}")
        store = args.cache / "store-sources"

        def fresh() -> None:
            shutil.rmtree(store, ignore_errors=True)

        def from_local() -> int:
            return run_shard(replace(base, store=str(store), videos=local_tasks), 0, 1).frames

        def from_s3() -> int:
            tasks = resolve_inputs(url, remote=remote).tasks  # listing is part of the cost
            res = run_shard(replace(base, store=str(store), videos=tuple(tasks)), 0, 1)
            if res.failed or res.done != len(paths):
                raise RuntimeError(f"s3 run failed: {res}")
            return res.frames

        fresh()
        from_local()  # warm-up (untimed): loads the encoder, imports, primes oneDNN
        t0 = time.perf_counter()
        listed = resolve_inputs(url, remote=remote).tasks
        list_s = time.perf_counter() - t0
        runs: dict[str, list[Run]] = {"local": [], "s3": []}
        frames = 0
        for k in range(repeats):
            order = [("local", from_local), ("s3", from_s3)]
            for label, fn in order if k % 2 == 0 else order[::-1]:
                frames, r = measure(fn, args.settle, args.tries, prep=fresh)
                runs[label].append(r)
                print(f"  round {k + 1} {label}: {frames / r.seconds:.2f} frames/s [{r}]")
        fresh()
    shutil.rmtree(args.cache / "scratch", ignore_errors=True)
    fps = {label: frames / best(rs).seconds for label, rs in runs.items()}
    ratio = fps["s3"] / fps["local"]
    op, target = TARGETS["s3_vs_local"]
    met = ratio >= target
    disturbed = any(best(rs).disturbed for rs in runs.values())
    print(f"  s3_vs_local = {ratio:.3f} (target {op} {target}): {'met' if met else 'MISSED'}"
          f"{' (a best run was disturbed by other processes)' if disturbed else ''}")  # fmt: skip
    return {
        "frames": frames,
        "videos": len(listed),
        "bytes": total_bytes,
        "list_seconds": round(list_s, 3),
        "local_fps": round(fps["local"], 3),
        "s3_fps": round(fps["s3"], 3),
        "s3_vs_local": round(ratio, 4),
        "disturbed": disturbed,
        "load_average_end": round(os.getloadavg()[0], 2),
        "targets_met": {"s3_vs_local": met},
    }


def main() -> None:
    args = parse_args()
    out = {"sources": sources(args)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
