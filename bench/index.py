"""Opening a store's index at "millions of short clips" scale.

Writes journals for ``--videos`` one-segment clips over ``--shards`` shards (the records a real
run writes: a segment, a piece and a done line per clip, with the usual index fields), then
times ``cache.load_index`` against a plain baseline reading the same files (one ``json.loads``
per line, garbage collector on), side by side. The last line printed is one JSON object.

    .venv/bin/python -m bench.index [--videos 300000] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from cache.journal import build_index, load_index, shard_of_journal

ROOT = Path(__file__).resolve().parent.parent


def write_journals(root: Path, videos: int, shards: int) -> int:
    (root / "index").mkdir(parents=True)
    per = -(-videos // shards)
    size = 0
    for shard in range(shards):
        lines = [{"kind": "run", "run_id": f"r{shard}", "started_at": 0.0, "pid": 1}]
        for i in range(shard * per, min(videos, (shard + 1) * per)):
            seg, vid, frames = f"seg-{i:06d}", f"clips/{i // 1000:04d}/{i:07d}", 20
            lines += [
                {"kind": "segment", "segment": seg, "frames": frames},
                {"kind": "piece", "video_id": vid, "attempt": f"a{i}", "segment": seg,
                 "segment_start": 0, "video_start": 0, "frames": frames},
                {"kind": "video", "video_id": vid, "attempt": f"a{i}", "status": "done",
                 "run_id": f"r{shard}", "committed_at": 1.0 + i, "num_frames": frames,
                 "fps": 2.0, "source_path": f"/data/clips/{i:07d}.mp4", "width": 640,
                 "height": 360, "rotation": 0, "codec": "h264", "source_fps": 30.0,
                 "begin_seconds": 0.0, "end_seconds": 10.0, "duration_seconds": 10.0},
            ]  # fmt: skip
        path = root / "index" / f"shard-{shard:05d}.jsonl"
        path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines))
        size += path.stat().st_size
    return size


def baseline(root: Path) -> int:
    journals = {}
    for p in sorted((root / "index").glob("shard-*.jsonl")):
        journals[shard_of_journal(p)] = [
            json.loads(line) for line in p.read_bytes().split(b"\n") if line.strip()
        ]
    return len(build_index(journals).videos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench" / "index")
    args = ap.parse_args()
    shutil.rmtree(args.cache, ignore_errors=True)
    size = write_journals(args.cache, args.videos, args.shards)
    ours, base = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n = len(load_index(args.cache).videos)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nb = baseline(args.cache)
        base.append(time.perf_counter() - t0)
        assert n == nb == args.videos, (n, nb)
    out = {
        "videos": args.videos,
        "shards": args.shards,
        "journal_bytes_per_video": round(size / args.videos, 1),
        "load_index_s": round(min(ours), 3),
        "baseline_s": round(min(base), 3),
        "videos_per_s": round(args.videos / min(ours)),
        "speedup_vs_baseline": round(min(base) / min(ours), 2),
    }
    print(f"{args.videos} videos in {args.shards} journals ({size / 1e6:.0f} MB): load_index "
          f"{out['load_index_s']} s ({out['videos_per_s']} videos/s), per-line json.loads "
          f"baseline {out['baseline_s']} s: {out['speedup_vs_baseline']}x")  # fmt: skip
    print(json.dumps(out))
    shutil.rmtree(args.cache)


if __name__ == "__main__":
    main()
