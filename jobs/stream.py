"""``job=stream``: frame-by-frame streaming inference over one video, from a store's cached
frames (``store=S video_id=V``) or live from a video file (``video=PATH``: decoded and encoded
frame by frame as extraction would). docs/streaming.md."""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, get_args

import numpy as np
import torch

from cache import open_store
from extract.encoders import EncoderConfig
from extract.frames import DecodeOptions
from jobs.launch import signals

WINDOW_FRAMES = 256  # frames read from the store at a time (never the whole video)
FeaturesDtype = Literal["float16", "bfloat16", "float32"]
KvMode = Literal["full", "bounded"]
#: What a run writes in ``job.output_dir`` (and removes there from an earlier run).
OUTPUT_FILES = ("frames.jsonl", "timeline.jsonl", "latency.json", "player.html")
QUERY_KEYS = ("t", "text")


def check_queries(queries: Sequence[Any]) -> list[tuple[float, str]]:
    """``[(t, text)]`` of ``job.queries``; each must be ``{t: seconds >= 0, text: "..."}``."""
    out = []
    for i, q in enumerate(queries):
        where = f"job.queries[{i}]"
        if not isinstance(q, Mapping) or set(q) - set(QUERY_KEYS):
            raise ValueError(f'{where} must be {{t: seconds, text: "..."}}, got {q!r}')
        t, text = q.get("t"), q.get("text")  # user data: a missing key is reported below
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t < math.inf:
            raise ValueError(f"{where} needs t, its time in seconds (a number >= 0): got {q!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where} needs text, the question (a non-empty string): got {q!r}")
        out.append((float(t), text))
    return out


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
    kv: KvMode = "full"  # full (the reference) | bounded (sinks + window)
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
        if self.fps is not None and not 0 < self.fps <= DecodeOptions.MAX_FPS:
            raise ValueError(
                f"job.fps must be > 0 and <= {DecodeOptions.MAX_FPS:g} (frames fed per second),"
                f" got {self.fps}"
            )
        for name, choices in (
            ("kv", get_args(KvMode)),
            ("features_dtype", get_args(FeaturesDtype)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"job.{name}={getattr(self, name)!r} is not one of {', '.join(choices)}"
                )
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"job.threshold is a probability in [0, 1], got {self.threshold}")
        for name in ("max_reply_tokens", "window_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_after_frames is not None and self.stop_after_frames < 1:
            raise ValueError(
                f"job.stop_after_frames must be >= 1 or null, got {self.stop_after_frames}"
            )
        check_queries(self.queries)


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


def unknown_video(video_id: str, ids: Sequence[str], store: str) -> ValueError:
    """The error for a ``video_id`` the store does not hold, naming the closest ids."""
    close = difflib.get_close_matches(video_id, ids, n=5, cutoff=0.5) or list(ids[:5])
    hint = f"closest: {', '.join(close)}" if close else "the store holds no videos"
    return ValueError(
        f"video_id={video_id!r} is not in store {store}; {hint} (python run.py job=status"
        f" store={store} lists them)"
    )


def check_output_dir(folder: Path) -> None:
    """Make ``folder`` (``job.output_dir``) if needed and check this run can write its files."""
    where = f"job.output_dir={str(folder)!r}"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{where} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{where} cannot be made: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{where} is not writable")
    for name in OUTPUT_FILES:
        if (folder / name).exists() and not (folder / name).is_file():
            raise ValueError(f"{where} holds {name}, which is not a file (this run writes it)")


class SourceError(ValueError):
    """Decoding (``video=``) or reading (``store=``) failed after the stream started."""


class Pacer:
    """With ``realtime``, hold each frame until its time on the video clock (as a camera would
    deliver it) and measure how far behind its processing ends (``lags``, seconds). The clock
    starts at :meth:`begin`, before the first frame is decoded, so its lag includes that."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.start: float | None = None
        self.t0: float | None = None
        self.lags: list[float] = []

    def begin(self) -> None:
        """The stream starts now: the first frame is due at once (decoding it is lag)."""
        if self.start is None:
            self.start = time.perf_counter()

    def arrive(self, t: float) -> float:
        """Wait for the frame at video time ``t``; returns its arrival (perf_counter)."""
        self.begin()
        assert self.start is not None
        if self.t0 is None:
            self.t0 = t
        now = time.perf_counter()
        due = self.start + (t - self.t0)
        if self.realtime and due > now:
            time.sleep(due - now)
        return due if self.realtime else time.perf_counter()

    def done(self, arrival: float) -> None:
        self.lags.append(max(0.0, time.perf_counter() - arrival))


class StreamOutputs:
    """The run's files in ``folder``: an earlier run's are removed when the stream starts;
    ``frames.jsonl`` and ``timeline.jsonl`` grow by a flushed line per frame and per turn, so
    a stopped run keeps everything streamed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in OUTPUT_FILES:
            (folder / name).unlink(missing_ok=True)
        # Open for the whole stream (closed by close()): one flushed line per frame and turn.
        self._frames: IO[str] = open(folder / "frames.jsonl", "w")
        self._timeline: IO[str] = open(folder / "timeline.jsonl", "w")
        self.turns = 0  # timeline entries written

    def frame(self, step: Any) -> None:
        """Append one frame's row (a :class:`models.streaming.FrameStep`)."""
        row = {"index": step.index, "time": step.time, "p_interval": step.interval_prob}
        self._frames.write(json.dumps(row | {"fired": step.fired}) + "\n")
        self._frames.flush()

    def sync_turns(self, timeline: Sequence[dict[str, Any]]) -> None:
        """Append the turns of ``timeline`` not written yet."""
        for event in timeline[self.turns :]:
            self._timeline.write(json.dumps(event) + "\n")
        self.turns = len(timeline)
        self._timeline.flush()

    @property
    def closed(self) -> bool:
        return self._frames.closed

    def close(self) -> None:
        self._frames.close()
        self._timeline.close()


class StreamJob:
    """Feed a video's frames through one continuous KV cache, inserting user queries at their
    times; print replies as they happen and write ``timeline.jsonl`` (time, role, text),
    ``frames.jsonl`` (per-frame decisions) as they happen, then ``latency.json`` and
    ``player.html``. Every setting is checked before a model loads; on a stop (Ctrl-C,
    SIGTERM) or a decode error mid-video what was streamed is kept and reported.

    Every key is a field of :class:`StreamSpec`.
    """

    Spec: ClassVar[type[StreamSpec]] = StreamSpec

    def __init__(self, **settings: Any) -> None:
        self.spec = StreamSpec(**settings)
        self.queries = check_queries(self.spec.queries)
        self.output_dir = Path(self.spec.output_dir)
        self.encode_s: list[float] = []  # video=: per-frame encode time
        self.decode_s: list[float] = []  # video=: per-frame decode time (a chunk's: its first)
        self.pacer = Pacer(self.spec.realtime)
        self.source_path: str | None = self.spec.video
        self.arrival = 0.0  # when the frame being fed arrived (perf_counter)
        self.rate = self.spec.fps or self.spec.decode.fps  # frames fed per second
        self.reader: Any = None  # video=: the opened extract.frames.FrameReader
        self.store: Any = None  # store=: the opened store
        self.num_frames = 0  # frames to feed (store=: stored frames to read)
        self.step = 1  # store=: feed every step-th stored frame

    def run(self) -> int:
        spec = self.spec
        session: Any = None
        outputs: StreamOutputs | None = None
        started = time.perf_counter()
        try:
            self.check_settings()  # nothing heavy has loaded yet
            frames, session = self.setup()
            outputs = StreamOutputs(self.output_dir)
            started = time.perf_counter()
            with signals.deferred():  # a signal stops the stream between two frames
                self.feed(session, frames, outputs)
                stats = self.finish(session, outputs, wall_s=time.perf_counter() - started)
        except signals.StopRequested as stop:
            if outputs is None:
                print("stopped before the first frame; nothing was written", file=sys.stderr)
            else:
                self.finish(session, outputs, wall_s=time.perf_counter() - started)
                print(self.stopped_line(session), file=sys.stderr, flush=True)
            return stop.exit_status
        except SourceError as e:
            assert outputs is not None  # raised by the frames, so the stream had started
            self.finish(session, outputs, wall_s=time.perf_counter() - started)
            raise SourceError(f"{e}; {self.stopped_line(session)}") from None
        except Exception:
            if outputs is not None and not outputs.closed:  # a bug mid-stream: keep what was
                # streamed, then report it
                self.finish(session, outputs, wall_s=time.perf_counter() - started)
                print(self.stopped_line(session), file=sys.stderr, flush=True)
            raise
        rate = (
            f"largest lag {stats['max_lag_ms']:.1f} ms"
            if spec.realtime
            else f"real-time factor {stats['real_time_factor']:.3f}"
        )
        print(
            f"stream: {stats['frames']} frames, {len(session.timeline)} turns, mean "
            f"{stats['mean_ms']:.1f} ms/frame, {rate}; timeline in "
            f"{self.output_dir / 'timeline.jsonl'}",
            file=sys.stderr,
        )
        return 0

    def stopped_line(self, session: Any) -> str:
        return f"stopped after {len(session.frames)} frames; outputs in {self.output_dir}"

    # --- before any model ---------------------------------------------------------------------

    def check_settings(self) -> None:
        """Open the source (the store's video, or the video file), check the queries fall within
        what is streamed, and the output folder: every error before a model loads."""
        last_time = self.open_video() if self.spec.video else self.open_store_video()
        for i, q in enumerate(self.spec.queries):
            if float(q["t"]) > last_time + 1e-6:
                until = (
                    f"job.stop_after_frames={self.spec.stop_after_frames} ends the stream at"
                    if self.spec.stop_after_frames is not None
                    else "the video's last frame is at"
                )
                raise ValueError(
                    f"job.queries[{i}].t={q['t']} is after the end of the stream ({until}"
                    f" {last_time:.3f} s), so it would never be asked; use t <= {last_time:.3f}"
                )
        check_output_dir(self.output_dir)

    def open_store_video(self) -> float:
        """Open ``store``'s ``video_id``; returns the time of the last frame to feed."""
        spec = self.spec
        assert spec.store and spec.video_id  # checked by StreamSpec
        s = self.store = open_store(spec.store)
        ids = s.video_ids()
        if spec.video_id not in ids:
            raise unknown_video(spec.video_id, ids, spec.store)
        info = s.info(spec.video_id)
        if info["status"] != "done":
            raise ValueError(
                f"video_id={spec.video_id!r} is {info['status']} in store {spec.store}"
                f" ({info['error']}): nothing to stream"
            )
        self.source_path = info.get("source_path")
        step = self.step = frame_step(info["fps"], spec.fps)
        self.rate = float(info["fps"]) / step
        n = int(info["num_frames"])
        if spec.stop_after_frames is not None:
            n = min(n, spec.stop_after_frames * step)
        if n == 0:
            raise ValueError(f"video_id={spec.video_id!r} has no frames in store {spec.store}")
        self.num_frames = n
        last = (n - 1) // step * step
        return float(s.read(spec.video_id, last, last + 1, tokens=False)[1][0])

    def open_video(self) -> float:
        """Open ``video`` (probing it, as extraction does); returns the sampled time of the last
        frame to feed."""
        from extract.frames import FrameReader

        spec = self.spec
        assert spec.video is not None
        decode = replace(spec.decode, fps=spec.fps) if spec.fps else spec.decode
        try:
            # Frames are resized once the encoder (and its input size) is loaded.
            self.reader = FrameReader(spec.video, size=decode.size or 1, decode=decode)
        except ValueError as e:
            raise ValueError(f"video={spec.video!r}: {e}") from None
        n = self.reader.num_frames
        if spec.stop_after_frames is not None:
            n = min(n, spec.stop_after_frames)
        self.num_frames = n
        return float(self.reader.times[n - 1])

    # --- the models and the stream ------------------------------------------------------------

    def setup(self) -> tuple[Iterator[tuple[torch.Tensor, float]], Any]:
        """Load the encoder (``video=``) and the checkpoint, check they fit; returns the frames
        (a lazy iterator) and the streaming session."""
        from extract.encoders import hub_access
        from models.checkpoints import load_checkpoint
        from models.live import check_features
        from models.streaming import StreamingSession

        spec = self.spec
        if spec.video:
            from extract.encoders import build_encoder

            assert spec.encoder is not None  # checked by StreamSpec
            encoder = build_encoder(spec.encoder)
            frames = self.live_frames(encoder)
            per_frame, dim = encoder.tokens_per_frame, encoder.dim
            source = f"encoder {spec.video}"
        else:
            assert spec.video_id is not None
            layout = self.store.layout
            frames = self.store_frames(self.store, spec.video_id, self.num_frames, self.step)
            per_frame, dim = int(layout["tokens_per_frame"]), int(layout["dim"])
            source = f"store {spec.store}"
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
        return frames, session

    def store_frames(
        self, store: Any, video_id: str, n: int, step: int
    ) -> Iterator[tuple[torch.Tensor, float]]:
        """Every ``step``-th of the first ``n`` frames, read a window at a time."""
        self.pacer.begin()
        for lo in range(0, n, WINDOW_FRAMES):
            hi = min(n, lo + WINDOW_FRAMES)
            try:
                tokens, pts = store.read(video_id, lo, hi)
            except Exception as e:  # noqa: BLE001 - any failure to read ends the stream, reported
                raise SourceError(
                    f"reading video_id={video_id!r} frames {lo}-{hi - 1} from store"
                    f" {self.spec.store} failed: {type(e).__name__}: {e}"
                ) from None
            for k in range(len(tokens)):
                if (lo + k) % step == 0:
                    t = float(pts[k])
                    self.arrival = self.pacer.arrive(t)
                    yield torch.from_numpy(tokens[k].astype(np.float32)), t

    def live_frames(self, encoder: Any) -> Iterator[tuple[torch.Tensor, float]]:
        """Decode ``video`` with extraction's reader and rule, encode each frame as it arrives
        and round its tokens as a ``features_dtype`` store would."""
        from extract.frames import resize_pad

        spec = self.spec
        size = spec.decode.size or encoder.image_size
        self.pacer.begin()  # the clock starts before the first decode: it is part of the lag
        chunks = self.reader.native_chunks()
        fed = 0
        while fed < self.num_frames:
            t_dec = time.perf_counter()
            try:
                chunk, pts = next(chunks)
            except StopIteration:
                return
            except ValueError as e:  # extract.frames words every decode failure as one
                raise SourceError(f"video={spec.video!r}: {e}") from None
            chunk = resize_pad(chunk, size)
            decode_s = time.perf_counter() - t_dec
            for k in range(min(len(chunk), self.num_frames - fed)):
                t = float(pts[k])
                self.arrival = self.pacer.arrive(t)
                t_enc = time.perf_counter()
                tokens = encoder.encode(chunk[k : k + 1])[0]
                tokens = tokens.to(getattr(torch, spec.features_dtype)).float().cpu()
                self.encode_s.append(time.perf_counter() - t_enc)
                self.decode_s.append(decode_s if k == 0 else 0.0)
                fed += 1
                yield tokens, t

    def feed(
        self, session: Any, frames: Iterator[tuple[torch.Tensor, float]], outputs: StreamOutputs
    ) -> None:
        """Push each frame, each query before the first frame at or after its time; print the
        turns as they happen and append them and each frame's decision to the outputs."""
        pending = sorted(self.queries)
        for tokens, t in frames:
            while pending and pending[0][0] <= t:
                self.ask(session, *pending.pop(0), outputs)
            reply = session.push_frame(tokens, t)
            self.pacer.done(self.arrival)
            outputs.frame(session.frames[-1])
            self.say(t, "Assistant", reply)
            outputs.sync_turns(session.timeline)
            signals.check()
        # A frame's pts can fall short of its sampled time: a query between the two (checked to
        # be within the stream) is asked after the last frame, never dropped.
        for q_time, q_text in pending:
            self.ask(session, q_time, q_text, outputs)

    def ask(self, session: Any, t: float, text: str, outputs: StreamOutputs) -> None:
        self.say(t, "User", text)
        self.say(t, "Assistant", session.add_user(text, t))
        outputs.sync_turns(session.timeline)

    @staticmethod
    def say(t: float, role: str, text: str | None) -> None:
        if text is not None:
            print(f"[{t:.1f} s] {role}: {text}", flush=True)

    def finish(self, session: Any, outputs: StreamOutputs, *, wall_s: float) -> dict[str, Any]:
        """Close the line files; write ``latency.json`` and ``player.html`` for what was
        streamed. Returns the latency stats."""
        outputs.sync_turns(session.timeline)
        outputs.close()
        stats = self.latency_stats(session, wall_s)
        (self.output_dir / "latency.json").write_text(json.dumps(stats))
        if self.spec.player:
            from jobs.player import write_player

            write_player(self.output_dir / "player.html", self.source_path, session.timeline)
        return stats

    def latency_stats(self, session: Any, wall_s: float) -> dict[str, Any]:
        """Per-frame model time (+ encode time live), and the real-time factor (wall time /
        video time streamed; < 1 is faster than real time) or, paced, the lag per frame (from
        its time on the clock, which starts before the first decode, to its decision)."""
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
            "decode_ms": [round(1e3 * x, 3) for x in self.decode_s],
            "wall_s": wall_s,
            "video_s": video_s,
            "real_time_factor": wall_s / video_s if video_s else None,
        }
        if self.spec.realtime:
            stats["lag_ms"] = [round(1e3 * x, 3) for x in self.pacer.lags]
            stats["max_lag_ms"] = max(stats["lag_ms"], default=0.0)
        return stats
