"""``job=stream``: frame-by-frame streaming inference over one video's cached frames."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cache import open_store

WINDOW_FRAMES = 256  # frames read from the store at a time (never the whole video)


class StreamJob:
    """Feed a video's frames at ``fps`` through one continuous KV cache, inserting user queries
    at their times; write ``timeline.jsonl`` (time, role, text) and ``latency.json``."""

    def __init__(
        self,
        *,
        store: str,
        video_id: str,
        adapter: str | None,
        llm: str | None,
        output_dir: str,
        threshold: float = 0.725,
        fps: float = 2.0,
        kv: Literal["full", "bounded"] = "full",
        window_tokens: int = 4096,
        max_reply_tokens: int = 100,
        queries: list[dict[str, Any]] | None = None,
        max_frames: int | None = None,
    ) -> None:
        if not adapter:
            raise ValueError("job=stream needs a trained checkpoint: set model.adapter=<dir>")
        if not video_id:
            raise ValueError("job=stream needs video_id=<id> (see python run.py job=status)")
        self.store, self.video_id, self.adapter, self.llm = store, video_id, adapter, llm
        self.output_dir = Path(output_dir)
        self.threshold, self.fps, self.kv = threshold, fps, kv
        self.window_tokens, self.max_reply_tokens = window_tokens, max_reply_tokens
        self.max_frames = max_frames
        self.queries: list[tuple[float, str]] = sorted(
            (float(q["t"]), str(q["text"])) for q in (queries or [])
        )

    def run(self) -> int:
        from models.live import load_trainable
        from models.streaming import StreamingSession

        s = open_store(self.store)
        info = s.info(self.video_id)
        step = info["fps"] / self.fps
        if step < 1 or abs(step - round(step)) > 1e-6:
            raise ValueError(
                f"stream.fps={self.fps} must divide the store's {info['fps']} fps "
                "(frames can be skipped, not invented)"
            )
        model, tokenizer = load_trainable(self.adapter, llm=self.llm)
        session = StreamingSession(
            model,
            tokenizer,
            threshold=self.threshold,
            max_reply_tokens=self.max_reply_tokens,
            kv=self.kv,
            window_tokens=self.window_tokens,
            history=None,
        )
        n = int(info["num_frames"])
        if self.max_frames is not None:
            n = min(n, self.max_frames * round(step))
        pending = list(self.queries)
        for lo in range(0, n, WINDOW_FRAMES):
            tokens, pts = s.read(self.video_id, lo, min(n, lo + WINDOW_FRAMES))
            for k in range(0, len(tokens)):
                if (lo + k) % round(step):
                    continue
                t = float(pts[k])
                while pending and pending[0][0] <= t:
                    q_time, q_text = pending.pop(0)
                    session.add_user(q_text, q_time)
                session.push_frame(torch.from_numpy(tokens[k].astype(np.float32)), t)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "timeline.jsonl", "w") as f:
            for event in session.timeline:
                f.write(json.dumps(event) + "\n")
        lat = session.latencies
        stats = {
            "frames": len(lat),
            "kv": self.kv,
            "mean_ms": 1e3 * float(np.mean(lat)) if lat else None,
            "p95_ms": 1e3 * float(np.percentile(lat, 95)) if lat else None,
            "per_frame_ms": [round(1e3 * x, 3) for x in lat],
        }
        (self.output_dir / "latency.json").write_text(json.dumps(stats))
        for event in session.timeline:
            print(f"{event['time']:8.2f}s {event['role']:>9}: {event['text']}")
        print(
            f"stream: {len(lat)} frames, {len(session.timeline)} turns, mean "
            f"{stats['mean_ms']:.1f} ms/frame; timeline in {self.output_dir / 'timeline.jsonl'}",
            file=sys.stderr,
        )
        return 0
