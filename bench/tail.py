"""The tail of a 64-GPU extraction: a simulation of the node model in bench/README.md.

    .venv/bin/python -m bench.tail [--sigma 1.0] [--mean-min 8] [--seed 0]

Video lengths: log-normal with mean ``--mean-min`` minutes and log-space spread ``--sigma``,
drawn until they add up to the Ego4D total (26.4 M frames at 2 FPS = 3,667 h; see README).
Every GPU task has ``--decoders`` CPU decoders at ``--frames-per-s`` sampled frames/s each
(720p30 x264, measured: bench/README.md) and its GPU encodes faster than they decode (the
model's bound), so a task's wall time is when its decoders finish. Four schedules:

- today: shards by count (``videos[i::64]``, ids in random order w.r.t. length), each decoder
  takes the next video in input order and decodes it whole;
- longest first: the same shards, each task starting its longest videos first;
- balanced + longest first: shards of equal total duration (jobs/assign.py), longest first;
- + pieces: as above, and a decoder with no video left takes ``--piece-s`` pieces of the video
  with the most left (extract/pipeline.py), the owner keeping its own video's pieces in order.

The bound: total frames / (GPUs x decoders x frames/s), every core busy to the end.
The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import heapq
import json

import numpy as np

FRAMES = 26.4e6
FPS = 2.0


def lengths(mean_min: float, sigma: float, seed: int) -> np.ndarray:
    """Video lengths in seconds, log-normal, adding up to ``FRAMES / FPS`` seconds."""
    rng = np.random.default_rng(seed)
    mu = np.log(mean_min * 60) - sigma**2 / 2  # so that the mean is mean_min
    target = FRAMES / FPS
    n = int(target / (mean_min * 60) * 1.2) + 100
    out = rng.lognormal(mu, sigma, size=n)
    keep = np.searchsorted(np.cumsum(out), target) + 1
    out = out[:keep]
    out[-1] -= out.sum() - target  # the last one trimmed: the total is exact
    return out


def whole(durations: list[float], decoders: int, rate: float) -> float:
    """Wall seconds: each decoder takes the next video when free and decodes it whole."""
    free = [0.0] * decoders
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d / rate)
    return max(free)


def pieces(durations: list[float], decoders: int, rate: float, piece_s: float) -> float:
    """Wall seconds with pieces: a decoder keeps its video's next piece, else opens the next
    video, else takes a piece of the video with the most left."""
    cuts = [
        [piece_s] * (int(d // piece_s) - 1) + [d - piece_s * (int(d // piece_s) - 1)]
        if d >= 2 * piece_s
        else [d]
        for d in durations
    ]
    left = [sum(c) for c in cuts]
    nxt = [0] * len(cuts)
    todo = iter(range(len(cuts)))
    busy = [(0.0, k, -1) for k in range(decoders)]  # (free at, decoder, video it owns)
    open_: set[int] = set()
    end = 0.0
    while busy:
        t, k, own = heapq.heappop(busy)
        end = max(end, t)
        v = own if own >= 0 and nxt[own] < len(cuts[own]) else next(todo, -1)
        if v >= 0:
            open_.add(v)
        elif open_:
            v = max(open_, key=lambda i: left[i])
        else:
            continue  # nothing left for this decoder
        p = cuts[v][nxt[v]]
        nxt[v] += 1
        left[v] -= p
        if nxt[v] == len(cuts[v]):
            open_.discard(v)
        heapq.heappush(busy, (t + p / rate, k, v))  # a helper keeps helping that video
    return end


def balanced(durations: np.ndarray, shards: int) -> list[list[float]]:
    """Shards of equal total duration: longest first to the least loaded (jobs/assign.py)."""
    heap = [(0.0, 0, s) for s in range(shards)]
    out: list[list[float]] = [[] for _ in range(shards)]
    for d in sorted(durations.tolist(), reverse=True):
        total, count, s = heapq.heappop(heap)
        out[s].append(d)
        heapq.heappush(heap, (total + d, count + 1, s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--decoders", type=int, default=12, help="per GPU task (13 cores, 1 encoder)")
    ap.add_argument("--frames-per-s", type=float, default=26.1, help="per decoder, 720p30")
    ap.add_argument("--mean-min", type=float, default=8.0)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--piece-s", type=float, default=8.0, help="16 sampled frames at 2 FPS")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    durs = lengths(a.mean_min, a.sigma, a.seed)
    rate = a.frames_per_s / FPS  # seconds of video per second, per decoder
    rng = np.random.default_rng(a.seed + 1)
    order = durs[rng.permutation(len(durs))]  # input order (ids) says nothing about length
    by_count = [order[s :: a.gpus].tolist() for s in range(a.gpus)]
    by_time = balanced(durs, a.gpus)
    d, g = a.decoders, a.gpus
    runs = {
        "today (by count, input order, whole videos)": max(whole(s, d, rate) for s in by_count),
        "longest first (by count)": max(whole(sorted(s, reverse=True), d, rate) for s in by_count),
        "balanced by duration + longest first": max(whole(s, d, rate) for s in by_time),
        "balanced + longest first + pieces": max(pieces(s, d, rate, a.piece_s) for s in by_time),
    }
    bound = durs.sum() / (g * d * rate)
    q = np.percentile(durs, [50, 90, 99]) / 60
    print(f"{len(durs)} videos, {durs.sum() / 3600:,.0f} h ({FRAMES / 1e6:.1f} M frames at "
          f"{FPS:g} FPS): log-normal mean {a.mean_min:g} min, sigma {a.sigma:g}; median "
          f"{q[0]:.1f} min, p90 {q[1]:.1f}, p99 {q[2]:.1f}, "
          f"longest {durs.max() / 3600:.2f} h")  # fmt: skip
    print(f"{g} GPUs x {d} decoders x {a.frames_per_s:g} frames/s; pieces of {a.piece_s:g} s")
    print(f"{'schedule':46s} {'hours':>6s} {'x bound':>8s}")
    for name, secs in {**runs, "perfect balance (bound)": bound}.items():
        print(f"{name:46s} {secs / 3600:6.2f} {secs / bound:8.2f}")
    print(json.dumps({"videos": len(durs), "sigma": a.sigma, "mean_min": a.mean_min,
                      "hours": {k: round(v / 3600, 3) for k, v in runs.items()},
                      "bound_hours": round(bound / 3600, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
