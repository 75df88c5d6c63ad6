"""Decode -> encode -> sink, with decoding of the next frames overlapping encoding of these.

A producer thread decodes videos in order into a bounded queue (so memory stays flat); the
calling thread batches frames across videos (short clips fill a batch together), encodes them and
hands tokens to a sink. One video failing (unreadable, decode error mid-way, non-finite tokens)
is reported to the sink and never stops the others.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from extract.frames import DecodeOptions, FrameReader, VideoProbe

OutDtype = Literal["float16", "bfloat16"]
Batching = Literal["dynamic", "fixed"]


@dataclass(frozen=True)
class VideoTask:
    """One input video: its id in the store and its path (``jobs.inputs`` resolves them)."""

    video_id: str
    path: Path


class FrameEncoder(Protocol):
    """What the pipeline needs of an encoder (``extract.encoders.Encoder`` or a remote proxy)."""

    image_size: int
    dim: int
    pool: int
    tokens_per_frame: int
    autocast: str
    provenance: dict[str, Any]
    mean: torch.Tensor
    std: torch.Tensor

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> float ``(B, tokens_per_frame, dim)``."""
        ...


class Sink(Protocol):
    """Where the pipeline sends results (``cache.ShardWriter`` behind a thin adapter)."""

    def start(self, video_id: str) -> int:
        """Begin a video; return how many leading frames are already stored (resume point)."""
        ...

    def write(self, video_id: str, tokens: np.ndarray, pts_seconds: np.ndarray) -> None: ...

    def finish(self, video_id: str, record: dict[str, Any]) -> None: ...

    def fail(self, video_id: str, record: dict[str, Any], error: str) -> None: ...


@dataclass
class _Frames:
    video_id: str
    frames: torch.Tensor
    pts: np.ndarray
    record: dict[str, Any]


@dataclass
class _End:
    video_id: str
    record: dict[str, Any]


@dataclass
class _Fail:
    video_id: str
    record: dict[str, Any]
    error: str


_DONE = object()


def probe_record(task: VideoTask, probe: VideoProbe | None, fps: float) -> dict[str, Any]:
    """The index fields known about a video from its probe."""
    rec: dict[str, Any] = {"source_path": str(task.path), "fps": fps}
    if probe is not None:
        rec.update(
            width=probe.width,
            height=probe.height,
            rotation=probe.rotation,
            codec=probe.codec,
            source_fps=probe.average_fps,
            begin_seconds=probe.begin_stream_seconds,
            end_seconds=probe.end_stream_seconds,
            duration_seconds=probe.duration_seconds,
        )
    return rec


def to_storage(tokens: torch.Tensor, dtype: OutDtype) -> np.ndarray:
    """float tokens -> float16, or bfloat16 bit patterns as uint16 (NumPy lacks bfloat16)."""
    if dtype == "float16":
        return tokens.to(torch.float16).cpu().numpy()
    return tokens.to(torch.bfloat16).view(torch.uint16).cpu().numpy()


class OpenedVideo(Protocol):
    """A video ready to decode: its index fields (incl. ``num_frames``) and its frame chunks."""

    record: dict[str, Any]

    def chunks(self, start_frame: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]: ...


FrameSource = Callable[[VideoTask, int], OpenedVideo]
"""``source(task, frame_size)`` opens a video (raising ``ValueError`` with the reason)."""


def open_reader(path: str | Path, size: int, opts: DecodeOptions) -> FrameReader:
    """A :class:`FrameReader` for ``path`` with the decode options of a run."""
    return FrameReader(path, size=size, decode=opts)


class _LocalVideo:
    def __init__(self, task: VideoTask, size: int, opts: DecodeOptions) -> None:
        self.reader = open_reader(task.path, size, opts)
        self.record = {**probe_record(task, self.reader.probe, opts.fps)}
        self.record["num_frames"] = self.reader.num_frames

    def chunks(self, start_frame: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        return self.reader.chunks(start_frame)


def local_source(opts: DecodeOptions) -> FrameSource:
    """Decode in this process with torchcodec (the default source)."""
    return lambda task, size: _LocalVideo(task, size, opts)


class ExtractPipeline:
    """Runs tasks through decode and ``encoder`` into ``sink``, reporting to ``on_event``.

    ``on_event(kind, video_id, frames)`` is called with kind ``"done"``/``"failed"``/``"frames"``.

    ``batching="dynamic"`` (default) encodes whatever has been decoded as soon as the encoder is
    free (at most ``batch_frames`` per call): the encoder never waits for a full batch at the
    start of a run or after a slow video, and the last frames are not held back. Batches then
    depend on timing, and encoders give results that differ in the last bits with batch
    composition. ``batching="fixed"`` waits for ``batch_frames`` frames (in stream order) before
    each encode, so tokens are bit-for-bit reproducible across runs and launchers.
    """

    BATCH_FRAMES = 32  # the defaults (job=extract's too)
    BATCHING: Batching = "dynamic"

    def __init__(
        self,
        encoder: FrameEncoder,
        sink: Sink,
        *,
        decode: DecodeOptions,
        batch_frames: int = BATCH_FRAMES,
        batching: Batching = BATCHING,
        out_dtype: OutDtype = "float16",
        on_event: Any = None,
        source: FrameSource | None = None,
        stop_check: Callable[[], None] | None = None,
    ) -> None:
        self.encoder = encoder
        self.sink = sink
        self.decode = decode
        self.source = source or local_source(decode)
        self.size = decode.size or encoder.image_size
        if self.size != encoder.image_size:
            raise ValueError(
                f"frame size {self.size} != encoder input size {encoder.image_size}; "
                f"leave the frame size unset to use the encoder's"
            )
        if batching not in ("dynamic", "fixed"):
            raise ValueError(f"batching must be 'dynamic' or 'fixed', got {batching!r}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        self.batch_frames = batch_frames
        self.batching = batching
        # frames per encoder call, the latest 4096 in order (for tests and benchmarks)
        self.batch_sizes: deque[int] = deque(maxlen=4096)
        self.out_dtype = out_dtype
        self.on_event = on_event or (lambda kind, vid, n: None)
        # called between items; raises to stop taking work (what the sink holds is its to commit)
        self.stop_check = stop_check or (lambda: None)
        self._failed: set[str] = set()  # videos already reported failed mid-stream
        self._sink_lock = threading.Lock()  # the producer starts videos while we write others

    # -- producer --------------------------------------------------------------------------

    def _produce(self, tasks: Sequence[VideoTask], out: queue.Queue, stop: threading.Event) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for task in tasks:
                if stop.is_set():
                    return
                self._produce_one(task, put)
        finally:
            put(_DONE)

    def _produce_one(self, task: VideoTask, put: Any) -> None:
        record = probe_record(task, None, self.decode.fps)
        try:
            with self._sink_lock:
                start = self.sink.start(task.video_id)
            video = self.source(task, self.size)
            record = video.record
            chunks = video.chunks(start)
            for frames, pts in chunks:
                if not put(_Frames(task.video_id, frames, pts, record)):
                    return
            put(_End(task.video_id, record))
        except Exception as e:  # noqa: BLE001 - every per-video failure is recorded, not raised
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            put(_Fail(task.video_id, record, msg))

    # -- consumer --------------------------------------------------------------------------

    def run(self, tasks: Iterable[VideoTask]) -> None:
        """Process every task; returns when all are finished or failed."""
        tasks = list(tasks)
        q: queue.Queue = queue.Queue(maxsize=max(1, self.decode.queue_chunks))
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(tasks, q, stop), daemon=True)
        producer.start()
        pending: list[Any] = []
        pending_frames = 0
        try:
            while True:
                item = self._next(q)
                if item is _DONE:
                    break
                # A chunk that overfills the batch is split: every encoder call but the last
                # of a run gets exactly batch_frames frames (fixed batching).
                while isinstance(item, _Frames):
                    room = self.batch_frames - pending_frames
                    if len(item.frames) <= room:
                        break
                    pending.append(_Frames(item.video_id, item.frames[:room], item.pts[:room],
                                           item.record))  # fmt: skip
                    self._flush(pending)
                    pending, pending_frames = [], 0
                    item = _Frames(item.video_id, item.frames[room:], item.pts[room:], item.record)
                pending.append(item)
                if isinstance(item, _Frames):
                    pending_frames += len(item.frames)
                eager = self.batching == "dynamic" and q.empty()  # nothing more decoded yet
                if pending_frames >= self.batch_frames or eager:
                    self._flush(pending)
                    pending, pending_frames = [], 0
            self._flush(pending)
        finally:
            stop.set()
            producer.join()

    def _next(self, q: queue.Queue) -> Any:
        while True:
            self.stop_check()
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def _flush(self, events: list[Any]) -> None:
        """Encode the frames in ``events`` (at most a batch), then deliver events in order."""
        frame_events = [e for e in events if isinstance(e, _Frames)]
        failed: dict[str, str] = {}
        tokens: dict[int, np.ndarray] = {}
        if frame_events:
            allframes = torch.cat([e.frames for e in frame_events])
            owners = np.repeat(np.arange(len(frame_events)), [len(e.frames) for e in frame_events])
            self.batch_sizes.append(len(allframes))
            try:
                encoded: torch.Tensor | None = self.encoder.encode(allframes)
            except Exception as e:  # noqa: BLE001 - an encoder error fails these videos only
                for ev in frame_events:
                    failed[ev.video_id] = f"encoder failed: {type(e).__name__}: {e}"
                encoded = None
            if encoded is not None:
                for i, ev in enumerate(frame_events):
                    mine = encoded[owners == i]
                    out = to_storage(mine, self.out_dtype)
                    # float16 overflows where float32 did not; bfloat16 keeps float32's range
                    finite = (
                        np.isfinite(out).all()
                        if self.out_dtype == "float16"
                        else bool(torch.isfinite(mine).all())  # on the encoder's device
                    )
                    if not finite:
                        failed.setdefault(
                            ev.video_id,
                            "non-finite token values after casting to float16 (overflow?); "
                            "try job.layout.dtype=bfloat16"
                            if self.out_dtype == "float16"
                            else "the encoder returned non-finite token values (NaN or inf)",
                        )
                    tokens[i] = out
        with self._sink_lock:
            self._deliver(events, tokens, failed)

    def _deliver(
        self, events: list[Any], tokens: dict[int, np.ndarray], failed: dict[str, str]
    ) -> None:
        k = 0
        for ev in events:
            vid = ev.video_id
            i = -1
            if isinstance(ev, _Frames):
                i, k = k, k + 1
            if vid in self._failed:
                continue  # reported already; drop what its decoder had queued
            if vid in failed or isinstance(ev, _Fail):
                error = failed.get(vid) or ev.error
                self._failed.add(vid)
                self.sink.fail(vid, ev.record, error)
                self.on_event("failed", vid, 0)
            elif isinstance(ev, _Frames):
                self.sink.write(vid, tokens[i], ev.pts)
                self.on_event("frames", vid, len(ev.pts))
            else:
                self.sink.finish(vid, ev.record)
                self.on_event("done", vid, ev.record["num_frames"])
