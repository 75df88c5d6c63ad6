"""``job=stream``: frame-by-frame streaming inference over one video's cached frames."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from cache import open_store

WINDOW_FRAMES = 256  # frames read from the store at a time (never the whole video)


@dataclass(frozen=True)
class StreamSpec:
    """The settings of ``job=stream`` (``job.*``), declared and checked here once."""

    store: str
    video_id: str | None  # which video (the top-level video_id=)
    adapter: str | None = None  # a checkpoint's adapter/ folder (from job=train)
    llm: str | None = None  # override the base LLM the adapter was trained on
    output_dir: str = "runs/stream"  # timeline.jsonl, latency.json
    threshold: float = 0.725  # the demo's θ
    fps: float | None = None  # frames per second fed; None = the store's (else it must divide it)
    kv: Literal["full", "bounded"] = "full"  # full (the reference) | bounded (sinks + window)
    window_tokens: int = 4096  # kv=bounded: recent tokens kept
    max_reply_tokens: int = 100
    queries: tuple[dict[str, Any], ...] = ()  # [{t: seconds, text: "..."}]
    stop_after_frames: int | None = None  # stop after feeding this many frames

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", tuple(self.queries))
        if not self.adapter:
            raise ValueError("job=stream needs a trained checkpoint: set job.adapter=<dir>")
        if not self.video_id:
            raise ValueError("job=stream needs video_id=<id> (see python run.py job=status)")


def frame_step(store_fps: float, fps: float | None) -> int:
    """Feed every ``step``-th stored frame: ``fps`` must divide the store's rate."""
    if fps is None:
        return 1
    step = store_fps / fps
    if step < 1 or abs(step - round(step)) > 1e-6:
        raise ValueError(
            f"job.fps={fps} must divide the store's {store_fps} fps "
            "(frames can be skipped, not invented)"
        )
    return round(step)


class StreamJob:
    """Feed a video's frames at ``fps`` through one continuous KV cache, inserting user queries
    at their times; write ``timeline.jsonl`` (time, role, text) and ``latency.json``.

    Every key is a field of :class:`StreamSpec`.
    """

    Spec: ClassVar[type[StreamSpec]] = StreamSpec

    def __init__(self, **settings: Any) -> None:
        self.spec = StreamSpec(**settings)
        self.output_dir = Path(self.spec.output_dir)

    def run(self) -> int:
        from models.live import load_trainable
        from models.streaming import StreamingSession

        spec = self.spec
        assert spec.video_id and spec.adapter  # checked by StreamSpec
        s = open_store(spec.store)
        info = s.info(spec.video_id)
        step = frame_step(info["fps"], spec.fps)
        model, tokenizer = load_trainable(spec.adapter, llm=spec.llm)
        session = StreamingSession(
            model,
            tokenizer,
            threshold=spec.threshold,
            max_reply_tokens=spec.max_reply_tokens,
            kv=spec.kv,
            window_tokens=spec.window_tokens,
            history=None,
        )
        n = int(info["num_frames"])
        if spec.stop_after_frames is not None:
            n = min(n, spec.stop_after_frames * step)
        self.feed(session, s, spec.video_id, n, step)
        self.write(session)
        return 0

    def feed(self, session: Any, store: Any, video_id: str, n: int, step: int) -> None:
        """Push every ``step``-th of the first ``n`` frames, each query before the first frame at
        or after its time; frames are read from the store a window at a time."""
        pending = sorted((float(q["t"]), str(q["text"])) for q in self.spec.queries)
        for lo in range(0, n, WINDOW_FRAMES):
            tokens, pts = store.read(video_id, lo, min(n, lo + WINDOW_FRAMES))
            for k in range(0, len(tokens)):
                if (lo + k) % step:
                    continue
                t = float(pts[k])
                while pending and pending[0][0] <= t:
                    q_time, q_text = pending.pop(0)
                    session.add_user(q_text, q_time)
                session.push_frame(torch.from_numpy(tokens[k].astype(np.float32)), t)

    def write(self, session: Any) -> None:
        """``timeline.jsonl``, ``latency.json`` and the timeline on stdout."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "timeline.jsonl", "w") as f:
            for event in session.timeline:
                f.write(json.dumps(event) + "\n")
        lat = session.latencies
        stats = {
            "frames": len(lat),
            "kv": self.spec.kv,
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
