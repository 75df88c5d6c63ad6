"""What the store's checksums cost, as a share of extraction time.

Checksums are a crc32c per chunk (Zarr's ``crc32c`` codec inside the sharding codec, checked on
every read) plus a crc32c per segment array recorded in the journal (checked by ``job=verify``).
This bench writes and reads the same segments with and without them and reports the extra
seconds per frame, divided by the seconds per frame of extraction (encoder throughput, measured
here with the bench encoder of ``bench.extract`` unless ``--extract-fps`` is given). The last line
is one JSON object.

    .venv/bin/python -m bench.checksums [--frames 4096] [--tokens 10] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cache.segments import checksum


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def write(path: Path, tokens: np.ndarray, crc: bool, chunk: int, shard: int) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec

    shutil.rmtree(path, ignore_errors=True)
    arr = zarr.create_array(
        path,
        shape=tokens.shape,
        chunks=(chunk, *tokens.shape[1:]),
        shards=(shard, *tokens.shape[1:]),
        dtype=tokens.dtype,
        compressors=[Crc32cCodec()] if crc else None,
        fill_value=0,
    )
    arr[...] = tokens
    if crc:
        checksum(tokens)  # the segment's journal checksum


def read(path: Path, crc: bool, window: int) -> None:
    import zarr

    arr = zarr.open_array(path, mode="r")
    total = 0
    for lo in range(0, arr.shape[0], window):
        part = arr[lo : lo + window]
        if crc:
            total = checksum(part, total)


def extract_fps(encoder: str, batch: int) -> float:
    """Encode-only frames/s of the bench encoder on this machine (random weights)."""
    import torch

    from extract.encoders import ClipConfig, build_encoder

    enc = build_encoder(ClipConfig(model=encoder, pretrained=None, device="cpu"))
    x = torch.randint(0, 255, (batch, 3, enc.image_size, enc.image_size), dtype=torch.uint8)
    enc.encode(x)  # warm up
    return batch / best_of(2, lambda: enc.encode(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4096, help="frames per segment")
    ap.add_argument("--tokens", type=int, default=10, help="tokens per frame (pool 3: 10)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--encoder", default="ViT-M-32", help="open_clip bench encoder")
    ap.add_argument("--extract-fps", type=float, default=None, help="skip measuring it")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((args.frames, args.tokens, args.dim)).astype(np.float16)
    fps = args.extract_fps or extract_fps(args.encoder, 32)
    out: dict[str, Any] = {"frames": args.frames, "extract_fps": round(fps, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        plain, summed = Path(tmp) / "plain", Path(tmp) / "crc"
        w0 = best_of(args.repeats, lambda: write(plain, tokens, False, 8, 1024))
        w1 = best_of(args.repeats, lambda: write(summed, tokens, True, 8, 1024))
        r0 = best_of(args.repeats, lambda: read(plain, False, 1024))
        r1 = best_of(args.repeats, lambda: read(summed, True, 1024))
    per_frame = 1.0 / fps
    for name, with_, without in (("write", w1, w0), ("verify", r1, r0)):
        extra = max(0.0, with_ - without) / args.frames
        out[f"{name}_seconds_per_frame_extra"] = extra
        out[f"{name}_cost_ratio"] = round(extra / per_frame, 6)
        print(
            f"{name}: {without * 1e3:.1f} ms -> {with_ * 1e3:.1f} ms for {args.frames} frames "
            f"({extra * 1e6:.2f} us/frame) = {100 * extra / per_frame:.3f}% of extraction "
            f"at {fps:.1f} frames/s"
        )
    # The same extra cost at a GPU's extraction rate (what-if, not measured here).
    for gpu_fps in (500.0, 2000.0):
        out[f"write_cost_ratio_at_{int(gpu_fps)}_fps"] = round(
            out["write_seconds_per_frame_extra"] * gpu_fps, 6
        )
    out["target"] = "< 0.05"
    out["targets_met"] = bool(out["write_cost_ratio"] < 0.05 and out["verify_cost_ratio"] < 0.05)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
