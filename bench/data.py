"""The training data path: frames/s read from the store and read amplification.

Builds a store of synthetic SigLIP-L-sized features (10 x 1024 float16 per frame) for long
videos, then measures, side by side in one run:
- read amplification = bytes the process actually read (``/proc/self/io`` rchar) / bytes of the
  requested window, for random 1,200- and 100-frame windows, against loading a whole per-video
  ``.pt`` file as VideoLLM-online does (target <= 1.2);
- training-sample throughput (frames/s) through ``data.StreamDataset`` and a DataLoader
  with 0, 2 and 4 workers (tokenization included, no model).
The last line is one JSON object.

    python -m bench.data [--videos 8] [--frames 3000]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

N, D = 10, 1024


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def build(work: Path, videos: int, frames: int) -> tuple[Path, Path]:
    import torch

    from cache import ShardWriter, StoreLayout, init_store

    store, pts_dir = work / "feats.zarr", work / "pt"
    if (store / "index").exists() and pts_dir.exists():
        return store, pts_dir
    shutil.rmtree(store, ignore_errors=True)
    pts_dir.mkdir(parents=True, exist_ok=True)
    init_store(store, layout=StoreLayout(N, D), features={"encoder": "synthetic"}, provenance={})
    rng = np.random.default_rng(0)
    with ShardWriter(store, 0) as w:
        for v in range(videos):
            vid = f"video{v:02d}"
            tok = rng.standard_normal((frames, N, D), dtype=np.float32).astype(np.float16)
            w.start(vid)
            for lo in range(0, frames, 512):
                w.write(vid, tok[lo : lo + 512], np.arange(lo, min(lo + 512, frames)) / 2.0)
            w.finish(vid, {"num_frames": frames, "fps": 2.0})
            torch.save(torch.from_numpy(tok), pts_dir / f"{vid}.pt")  # VideoLLM-online's layout
    return store, pts_dir


def amplification(store: Path, pts_dir: Path, window: int, trials: int) -> dict[str, float]:
    import torch

    from cache import open_store

    s = open_store(store)
    vids = s.video_ids()
    rng = np.random.default_rng(window)
    want = read = pt_read = 0
    for _ in range(trials):
        vid = vids[rng.integers(len(vids))]
        n = s.info(vid)["num_frames"]
        lo = int(rng.integers(0, n - window))
        before = rchar()
        tok, _ = s.read(vid, lo, lo + window)
        read += rchar() - before
        want += tok.nbytes
        before = rchar()
        whole = torch.load(pts_dir / f"{vid}.pt")
        _ = whole[lo : lo + window]
        pt_read += rchar() - before
    return {"store": round(read / want, 3), "whole_pt_file": round(pt_read / want, 2)}


def throughput(store: Path, videos: int, workers: int, tokenizer: Any) -> float:
    import torch

    from data import StreamDataset, StreamSample, TimedTurn
    from models.prompt import encode_conversation

    samples = []
    for v in range(videos):
        for w in range(2):
            start = w * 600.0
            turns = tuple(
                TimedTurn("assistant", f"Step {k}.", start + 30.0 * k + 1) for k in range(10)
            )
            samples.append(
                StreamSample(f"s{v}-{w}", f"video{v:02d}", start, start + 600.0, turns, "Watch.")
            )
    encode = functools.partial(
        encode_conversation, tokenizer, frame_tokens=N, v_token="<v>", stream_loss_weight=1
    )
    ds = StreamDataset(str(store), samples, encode)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, shuffle=False)
    t0, frames = time.perf_counter(), 0
    for item in loader:
        frames += len(item["frames"])
    return frames / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=2400)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--work", default=str(ROOT / ".bench" / "data"))
    args = ap.parse_args()
    work = Path(args.work)
    store, pts_dir = build(work, args.videos, args.frames)

    from models.live import LiveConfig, build_live
    from models.tiny import save_tiny_llm

    llm = work / "tiny-llm"
    if not (llm / "config.json").exists():
        save_tiny_llm(llm)
    _, tokenizer = build_live(LiveConfig(llm=str(llm), vision_dim=D, frame_tokens=N, lora_r=2))

    out: dict[str, Any] = {"frame_bytes": N * D * 2, "videos": args.videos, "frames": args.frames}
    for window in (1200, 100):
        amp = amplification(store, pts_dir, window, args.trials)
        out[f"read_amplification_{window}"] = amp["store"]
        out[f"read_amplification_{window}_whole_pt"] = amp["whole_pt_file"]
        print(
            f"{window:5d}-frame window: store reads {amp['store']:.3f}x the window's bytes; "
            f"loading the whole .pt file reads {amp['whole_pt_file']:.1f}x"
        )
    for workers in (0, 2, 4):
        fps = throughput(store, args.videos, workers, tokenizer)
        out[f"frames_per_second_{workers}_workers"] = round(fps, 1)
        print(f"StreamDataset + DataLoader, {workers} workers: {fps:,.0f} frames/s")
    out["targets_met"] = {
        "read_amplification_1200<=1.2": out["read_amplification_1200"] <= 1.2,
        "read_amplification_100<=1.2": out["read_amplification_100"] <= 1.2,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
