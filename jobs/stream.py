"""``job=stream``: frame-by-frame streaming inference over one video, from a store's cached
frames (``store=S video_id=V``) or live from a video file (``video=PATH``: decoded and encoded
frame by frame as extraction would). docs/streaming.md."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from cache import open_store
from extract.encoders import EncoderConfig
from extract.frames import DecodeOptions

WINDOW_FRAMES = 256  # frames read from the store at a time (never the whole video)
FeaturesDtype = Literal["float16", "bfloat16", "float32"]


@dataclass(frozen=True)
class StreamSpec:
    """The settings of ``job=stream`` (``job.*``), declared and checked here once."""

    store: str | None = None  # stream a store's cached frames (with video_id=)
    video_id: str | None = None  # which video (the top-level video_id=)
    video: str | None = None  # or stream this video file live (top-level video=; no store)
    encoder: EncoderConfig | None = None  # video=: the encoder (the top-level encoder group)
    decode: DecodeOptions = field(default_factory=DecodeOptions)  # video=: sampling, as extract
    # video=: tokens rounded as a store of this dtype holds them (the store default: float16)
    features_dtype: FeaturesDtype = "float16"
    realtime: bool = False  # pace frames by the video clock; report lag (else: real-time factor)
    adapter: str | None = None  # a job=train adapter/ folder, or a VideoLLM-online dir / hub id
    llm: str | None = None  # override the base LLM the adapter was trained on
    output_dir: str = "runs/stream"  # timeline.jsonl, frames.jsonl, latency.json, player.html
    threshold: float = 0.725  # the demo's θ
    fps: float | None = None  # frames fed per second; store: must divide its rate; video: decode
    kv: Literal["full", "bounded"] = "full"  # full (the reference) | bounded (sinks + window)
    window_tokens: int = 4096  # kv=bounded: recent tokens kept
    max_reply_tokens: int = 100
    queries: tuple[dict[str, Any], ...] = ()  # [{t: seconds, text: "..."}]
    stop_after_frames: int | None = None  # stop after feeding this many frames
    player: bool = True  # write player.html (the video with the turns at their times)

    def __post_init__(self) -> None:
        object.__setattr__(self, "queries", tuple(self.queries))
        if not self.adapter:
            raise ValueError("job=stream needs a trained checkpoint: set job.adapter=<dir>")
        if self.video:
            if self.encoder is None:
                raise ValueError("job=stream video=PATH needs an encoder (encoder=siglip ...)")
        elif not (self.store and self.video_id):
            raise ValueError(
                "job=stream needs video=<file> (live), or store=<S> and video_id=<id> (see"
                " python run.py job=status)"
            )


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


class Pacer:
    """With ``realtime``, hold each frame until its time on the video clock (as a camera would
    deliver it) and measure how far behind its processing ends (``lags``, seconds)."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.start: float | None = None
        self.t0 = 0.0
        self.lags: list[float] = []

    def arrive(self, t: float) -> float:
        """Wait for the frame at video time ``t``; returns its arrival (perf_counter)."""
        now = time.perf_counter()
        if self.start is None:
            self.start, self.t0 = now, t
        due = self.start + (t - self.t0)
        if self.realtime and due > now:
            time.sleep(due - now)
        return due if self.realtime else time.perf_counter()

    def done(self, arrival: float) -> None:
        self.lags.append(max(0.0, time.perf_counter() - arrival))


class StreamJob:
    """Feed a video's frames through one continuous KV cache, inserting user queries at their
    times; print replies as they happen and write ``timeline.jsonl`` (time, role, text),
    ``frames.jsonl`` (per-frame decisions), ``latency.json`` and ``player.html``.

    Every key is a field of :class:`StreamSpec`.
    """

    Spec: ClassVar[type[StreamSpec]] = StreamSpec

    def __init__(self, **settings: Any) -> None:
        self.spec = StreamSpec(**settings)
        self.output_dir = Path(self.spec.output_dir)
        self.encode_s: list[float] = []  # video=: per-frame encode time
        self.pacer = Pacer(self.spec.realtime)
        self.source_path: str | None = self.spec.video
        self.arrival = 0.0  # when the frame being fed arrived (perf_counter)
        self.rate = self.spec.fps or self.spec.decode.fps  # frames fed per second

    def run(self) -> int:
        from extract.encoders import hub_access
        from models.live import check_features, load_checkpoint
        from models.streaming import StreamingSession

        spec = self.spec
        frames, per_frame, dim, source = self.open_source()
        with hub_access():  # an unreachable hub: the local cache at once, as for every hub id
            model, tokenizer = load_checkpoint(
                spec.adapter or "", llm=spec.llm, frame_tokens=per_frame
            )
        check_features(model, per_frame, dim, source)
        session = StreamingSession(
            model,
            tokenizer,
            threshold=spec.threshold,
            max_reply_tokens=spec.max_reply_tokens,
            kv=spec.kv,
            window_tokens=spec.window_tokens,
            history=None,
        )
        started = time.perf_counter()
        self.feed(session, frames)
        self.write(session, wall_s=time.perf_counter() - started)
        return 0

    def open_source(self) -> tuple[Iterator[tuple[torch.Tensor, float]], int, int, str]:
        """``(frames, tokens per frame, width, name)``; frames yields ``(tokens, time)``."""
        spec = self.spec
        if spec.video:
            from extract.encoders import build_encoder

            assert spec.encoder is not None  # checked by StreamSpec
            encoder = build_encoder(spec.encoder)
            frames = self.live_frames(encoder)
            return frames, encoder.tokens_per_frame, encoder.dim, f"encoder {spec.video}"
        assert spec.store and spec.video_id  # checked by StreamSpec
        s = open_store(spec.store)
        info = s.info(spec.video_id)
        self.source_path = info.get("source_path")
        step = frame_step(info["fps"], spec.fps)
        self.rate = float(info["fps"]) / step
        n = int(info["num_frames"])
        if spec.stop_after_frames is not None:
            n = min(n, spec.stop_after_frames * step)
        per_frame, dim = int(s.layout["tokens_per_frame"]), int(s.layout["dim"])
        return self.store_frames(s, spec.video_id, n, step), per_frame, dim, f"store {spec.store}"

    def store_frames(
        self, store: Any, video_id: str, n: int, step: int
    ) -> Iterator[tuple[torch.Tensor, float]]:
        """Every ``step``-th of the first ``n`` frames, read a window at a time."""
        for lo in range(0, n, WINDOW_FRAMES):
            tokens, pts = store.read(video_id, lo, min(n, lo + WINDOW_FRAMES))
            for k in range(len(tokens)):
                if (lo + k) % step == 0:
                    t = float(pts[k])
                    self.arrival = self.pacer.arrive(t)
                    yield torch.from_numpy(tokens[k].astype(np.float32)), t

    def live_frames(self, encoder: Any) -> Iterator[tuple[torch.Tensor, float]]:
        """Decode ``video`` with extraction's reader and rule, encode each frame as it arrives
        and round its tokens as a ``features_dtype`` store would."""
        from extract.frames import FrameReader

        spec = self.spec
        decode = replace(spec.decode, fps=spec.fps) if spec.fps else spec.decode
        assert spec.video is not None
        reader = FrameReader(spec.video, size=decode.size or encoder.image_size, decode=decode)
        fed = 0
        for chunk, pts in reader.chunks():
            for k in range(len(chunk)):
                if spec.stop_after_frames is not None and fed >= spec.stop_after_frames:
                    return
                t = float(pts[k])
                self.arrival = self.pacer.arrive(t)
                t_enc = time.perf_counter()
                tokens = encoder.encode(chunk[k : k + 1])[0]
                tokens = tokens.to(getattr(torch, spec.features_dtype)).float().cpu()
                self.encode_s.append(time.perf_counter() - t_enc)
                fed += 1
                yield tokens, t

    def feed(self, session: Any, frames: Iterator[tuple[torch.Tensor, float]]) -> None:
        """Push each frame, each query before the first frame at or after its time; print the
        turns as they happen."""
        pending = sorted((float(q["t"]), str(q["text"])) for q in self.spec.queries)
        for tokens, t in frames:
            while pending and pending[0][0] <= t:
                q_time, q_text = pending.pop(0)
                self.say(q_time, "User", q_text)
                self.say(q_time, "Assistant", session.add_user(q_text, q_time))
            reply = session.push_frame(tokens, t)
            self.pacer.done(self.arrival)
            if reply is not None:
                self.say(t, "Assistant", reply)

    @staticmethod
    def say(t: float, role: str, text: str | None) -> None:
        if text is not None:
            print(f"[{t:.1f} s] {role}: {text}", flush=True)

    def write(self, session: Any, *, wall_s: float) -> None:
        """``timeline.jsonl``, ``frames.jsonl``, ``latency.json`` and ``player.html``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "timeline.jsonl", "w") as f:
            for event in session.timeline:
                f.write(json.dumps(event) + "\n")
        with open(self.output_dir / "frames.jsonl", "w") as f:
            for s in session.frames:
                row = {"index": s.index, "time": s.time, "p_interval": s.interval_prob}
                f.write(json.dumps(row | {"fired": s.fired}) + "\n")
        stats = self.latency_stats(session, wall_s)
        (self.output_dir / "latency.json").write_text(json.dumps(stats))
        if self.spec.player:
            from jobs.player import write_player

            write_player(self.output_dir / "player.html", self.source_path, session.timeline)
        rate = (
            f"largest lag {stats['max_lag_ms']:.1f} ms"
            if self.spec.realtime
            else f"real-time factor {stats['real_time_factor']:.3f}"
        )
        print(
            f"stream: {stats['frames']} frames, {len(session.timeline)} turns, mean "
            f"{stats['mean_ms']:.1f} ms/frame, {rate}; timeline in "
            f"{self.output_dir / 'timeline.jsonl'}",
            file=sys.stderr,
        )

    def latency_stats(self, session: Any, wall_s: float) -> dict[str, Any]:
        """Per-frame model time (+ encode time live), and the real-time factor (wall time /
        video time streamed; < 1 is faster than real time) or, paced, the lag per frame."""
        lat = session.latencies
        total = [m + e for m, e in zip(lat, self.encode_s, strict=False)] if self.encode_s else lat
        times = [f.time for f in session.frames]
        video_s = (times[-1] - times[0] + 1 / self.rate) if times else 0.0
        stats: dict[str, Any] = {
            "frames": len(lat),
            "kv": self.spec.kv,
            "source": "video" if self.spec.video else "store",
            "realtime": self.spec.realtime,
            "mean_ms": 1e3 * float(np.mean(total)) if total else 0.0,
            "p95_ms": 1e3 * float(np.percentile(total, 95)) if total else 0.0,
            "per_frame_ms": [round(1e3 * x, 3) for x in lat],
            "encode_ms": [round(1e3 * x, 3) for x in self.encode_s],
            "wall_s": wall_s,
            "video_s": video_s,
            "real_time_factor": wall_s / video_s if video_s else None,
        }
        if self.spec.realtime:
            stats["lag_ms"] = [round(1e3 * x, 3) for x in self.pacer.lags]
            stats["max_lag_ms"] = max(stats["lag_ms"], default=0.0)
        return stats
