"""Per-frame streaming latency at frame 100, 1,000 and 5,000: full KV vs bounded KV vs naive.

On the tiny random Llama (CPU, 1 thread), with 10 feature tokens per frame:
- ``full``: the reference behaviour, one growing KV cache (``kv="full"``);
- ``bounded``: attention sinks + a sliding window of recent tokens (``kv="bounded"``);
- ``naive``: recompute the whole context every frame (one forward over all tokens so far).
Latency at frame N is the median wall time of the frames just before N (silent frames: the
threshold is set so the model never fires). Prints ratios; the last line is one JSON object
with ``bounded_5000_over_100`` (target <= 1.5).

    python -m bench.streaming [--frames 100,1000,5000] [--window 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

D, N = 32, 10


def session_latencies(model: Any, tok: Any, kv: str, marks: list[int], window: int) -> dict:
    from models.streaming import StreamingSession

    # threshold 0 and an impossible fire: P(",") < 0 never holds, argmax decides; the random
    # tiny model may fire, so replies are capped at 1 token to keep the cost per frame.
    s = StreamingSession(
        model,
        tok,
        threshold=0.0,
        max_reply_tokens=1,
        kv=kv,  # type: ignore[arg-type]  # "full" or "bounded"
        window_tokens=window,
        history=64,
    )
    g = torch.Generator().manual_seed(0)
    out: dict[int, float] = {}
    for k in range(1, max(marks) + 1):
        s.push_frame(torch.randn(N, D, generator=g), k / 2)
        if k in marks:
            recent = [f.latency_s for f in list(s.frames)[-16:]]
            out[k] = statistics.median(recent)
    return {"latency_s": out, "cache_tokens": s.cache_tokens}


def naive_latency(model: Any, tok: Any, frames: int) -> float:
    """One forward over the whole stream up to ``frames`` (what recomputing costs per frame)."""
    ids = tok(
        "System.\n[" + ",".join(["<v>" * N] * frames), return_tensors="pt", add_special_tokens=False
    )["input_ids"][0]
    feats = torch.randn(frames, N, D)
    with torch.inference_mode():
        model(ids, feats)  # warm-up
        t0 = time.perf_counter()
        model(ids, feats)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", default="100,1000,5000")
    ap.add_argument("--window", type=int, default=2048, help="bounded: recent tokens kept")
    ap.add_argument("--work", default=str(ROOT / ".bench" / "streaming"))
    args = ap.parse_args()
    marks = [int(x) for x in args.frames.split(",")]
    torch.set_num_threads(1)

    from models.live import LiveConfig, build_live
    from models.tiny import save_tiny_llm

    llm = Path(args.work) / "tiny-llm"
    if not (llm / "config.json").exists():
        save_tiny_llm(llm)
    model, tok = build_live(LiveConfig(llm=str(llm), vision_dim=D, frame_tokens=N, lora_r=2))
    model.eval()
    print(
        f"tiny Llama (2 layers, width 64), {N} tokens/frame, 1 thread; bounded window "
        f"{args.window} tokens"
    )
    result: dict[str, Any] = {"frames": marks, "window_tokens": args.window}
    for kv in ("full", "bounded"):
        r = session_latencies(model, tok, kv, marks, args.window)
        result[kv] = {str(k): round(v * 1e3, 3) for k, v in r["latency_s"].items()}
        result[f"{kv}_cache_tokens_at_end"] = r["cache_tokens"]
    result["naive"] = {str(k): round(naive_latency(model, tok, k) * 1e3, 3) for k in marks}
    for kv in ("full", "bounded", "naive"):
        cells = " | ".join(f"frame {k}: {result[kv][str(k)]:8.2f} ms" for k in marks)
        print(f"{kv:8s} {cells}")
    first, last = str(marks[0]), str(marks[-1])
    for kv in ("full", "bounded", "naive"):
        result[f"{kv}_{last}_over_{first}"] = round(result[kv][last] / result[kv][first], 2)
    print(
        f"cost at frame {last} / frame {first}: full {result[f'full_{last}_over_{first}']}x, "
        f"bounded {result[f'bounded_{last}_over_{first}']}x (target <= 1.5), "
        f"naive {result[f'naive_{last}_over_{first}']}x"
    )
    result["targets_met"] = {"bounded_ratio<=1.5": result[f"bounded_{last}_over_{first}"] <= 1.5}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
