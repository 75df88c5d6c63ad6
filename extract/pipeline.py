"""Decode -> encode -> sink, with decoding of the next frames overlapping encoding of these.

A producer thread decodes videos in order into a bounded queue (so memory stays flat); the
calling thread batches frames across videos (short clips fill a batch together), encodes them and
hands tokens to a sink. One video failing (unreadable, decode error mid-way, non-finite tokens)
is reported to the sink and never stops the others.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from extract.frames import DecodeOptions, FrameReader, VideoProbe, default_workers, resize_pad
from extract.remote import RemoteObject

OutDtype = Literal["float16", "bfloat16"]
Batching = Literal["dynamic", "fixed"]
ResizeOn = Literal["auto", "decode", "encoder"]  # auto: the encoder's device if a GPU


@dataclass(frozen=True)
class VideoTask:
    """One input video: its id in the store and its path (``jobs.inputs`` resolves them).
    ``remote``: the object it is on storage (its copy in scratch is then ``path`` once fetched)."""

    video_id: str
    path: Path
    remote: RemoteObject | None = None
    # the video stream's duration from the header (``jobs.assign``); None = not read
    duration_seconds: float | None = None


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


@dataclass
class _Decoders:
    queues: list[queue.Queue]
    threads: list[threading.Thread]
    count: int


def probe_record(task: VideoTask, probe: VideoProbe | None, fps: float) -> dict[str, Any]:
    """The index fields known about a video from its probe."""
    source = task.remote.url if task.remote is not None else str(task.path)
    rec: dict[str, Any] = {"source_path": source, "fps": fps}
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
    """A video ready to decode: its index fields (incl. ``num_frames``) and its frame chunks.
    One that holds something until it is decoded has a ``close()``, called once its last
    piece has ended."""

    record: dict[str, Any]

    def chunks(
        self, start_frame: int, stop_frame: int | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Chunks of sampled frames ``[start_frame, stop_frame)`` (to the end by default)."""
        ...


FrameSource = Callable[[VideoTask, int], OpenedVideo]
"""``source(task, frame_size)`` opens a video (raising ``ValueError`` with the reason)."""

Fetch = Callable[[VideoTask], AbstractContextManager[VideoTask]]
"""``with fetch(task) as local:`` makes a task's file readable here for the time of its decode
(``extract.remote.Prefetcher.fetch`` downloads a remote one; raises ``ValueError`` why not)."""


def open_reader(path: str | Path, size: int, opts: DecodeOptions) -> FrameReader:
    """A :class:`FrameReader` for ``path`` with the decode options of a run."""
    return FrameReader(path, size=size, decode=opts)


class _LocalVideo:
    def __init__(self, task: VideoTask, size: int, opts: DecodeOptions, native: bool) -> None:
        self.reader = open_reader(task.path, size, opts)
        self.native = native
        self.record = {**probe_record(task, self.reader.probe, opts.fps)}
        self.record["num_frames"] = self.reader.num_frames

    def pieces(self, piece_frames: int, start_frame: int) -> list[tuple[int, int]]:
        return self.reader.pieces(piece_frames, start_frame)

    def chunks(
        self, start_frame: int, stop_frame: int | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        if self.native:  # resized in the encoder's batch (on its GPU)
            return self.reader.native_chunks(start_frame, stop_frame)
        return self.reader.chunks(start_frame, stop_frame)


def local_source(opts: DecodeOptions, native: bool = False) -> FrameSource:
    """Decode in this process (PyAV with the skip, or torchcodec; the default source).
    ``native``: frames at their display size, for :func:`to_encoder` to resize."""
    return lambda task, size: _LocalVideo(task, size, opts, native)


def encoder_device(encoder: Any) -> torch.device:
    """The device an encoder computes on (CPU for encoders that do not say)."""
    return torch.device(getattr(encoder, "device", "cpu"))


def to_encoder(chunks: Sequence[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """Native-size uint8 chunks (one per video, sizes may differ) -> one resized, padded batch
    on ``device``: host memory is pinned so the copies are asynchronous (non_blocking) and
    overlap with the work already queued on the GPU; resize and pad then run there."""
    out = []
    for frames in chunks:
        if device.type == "cuda" and not frames.is_pinned():
            frames = frames.pin_memory()
        out.append(resize_pad(frames.to(device, non_blocking=True), size))
    return torch.cat(out)


def decode_workers(decode: DecodeOptions, encoder: Any) -> int:
    """``decode.workers``, or every usable CPU less the encoder's: its torch threads when it
    runs on CPU, one feeding thread when on a GPU."""
    if decode.workers:
        return decode.workers
    device = str(getattr(encoder, "device", "cpu"))
    return default_workers(torch.get_num_threads() if device == "cpu" else 1)


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


class _Pieces:
    """One video being decoded as pieces (sampled-frame ranges, see ``FrameReader.pieces``).

    Decoders claim pieces in order; the items of the lowest piece not yet ended (the head)
    go straight to ``put``, those of later pieces wait in a buffer and follow once every piece
    before has ended. So the frames leave in order whoever decoded them, and the encoder and
    the store see the same stream as from one decoder. Memory: a helper claims a piece only
    while fewer than ``lookahead`` pieces past the head are taken, so at most that many pieces
    of a video wait in buffers. A failed piece stops further claims; its failure follows the
    frames before it, as with one decoder.
    """

    def __init__(
        self,
        task: VideoTask,
        video: OpenedVideo,
        ranges: list[tuple[int, int]],
        put: Callable[[object], bool],
        lookahead: int,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.task, self.video, self.ranges, self.put = task, video, ranges, put
        self.lookahead = lookahead
        self.release = release  # frees the video's file (a remote copy) once all pieces ended
        self.cond = threading.Condition()
        self.claimed = 0  # pieces [0, claimed) are taken (so the head always has a decoder)
        self.head = 0
        self.buffers: list[list[object]] = [[] for _ in ranges]
        self.ended = [False] * len(ranges)
        self.failed = False

    def unclaimed_frames(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges[self.claimed :])

    def claimable(self) -> bool:
        """Whether a helper may take a piece now (one is left, within the lookahead)."""
        return (
            not self.failed
            and self.claimed < len(self.ranges)
            and self.claimed - self.head < self.lookahead
        )

    def claim(self, helper: bool = False) -> int | None:
        """The next piece (the owner takes its video's pieces regardless of the lookahead)."""
        with self.cond:
            if self.failed or self.claimed >= len(self.ranges):
                return None
            if helper and not self.claimable():
                return None
            self.claimed += 1
            return self.claimed - 1

    def emit(self, i: int, item: object, stop: threading.Event) -> bool:
        with self.cond:
            if i != self.head:
                self.buffers[i].append(item)
                return not stop.is_set()
        return self.put(item)  # only piece i's decoder emits while piece i is the head

    def end(self, i: int, failed: bool = False) -> bool | None:
        """Piece ``i`` is decoded: release the buffered pieces that are now next, and after the
        last one the video's end. Returns whether the whole video has left (``None``: stopped
        while releasing). The end is put before anyone can see the video finished: with
        ``fixed`` batching its owner then puts its next video (or its last item) in the same
        queue, which must come after it."""
        with self.cond:
            self.ended[i] = True
            if failed:
                self.failed = True
                for j in range(self.claimed, len(self.ranges)):  # never to be decoded
                    self.ended[j] = True
                self.claimed = len(self.ranges)
            while self.head < len(self.ranges) and self.ended[self.head]:
                self.head += 1
                if self.head < len(self.ranges):
                    for item in self.buffers[self.head]:
                        if not self.put(item):
                            return None
                    self.buffers[self.head] = []
            done = self.head == len(self.ranges)
            # A failed video's last item is its failure.
            put = not done or self.failed or self.put(_End(self.task.video_id, self.video.record))
            self.cond.notify_all()
        if done:  # no decoder reads the file any more
            self.release()
        return done if put else None

    def wait_finished(self, stop: threading.Event) -> None:
        with self.cond:
            while self.head < len(self.ranges) and not stop.is_set():
                self.cond.wait(0.1)


class _Board:
    """The videos the decoders of one pipeline have open, for idle decoders to help with."""

    def __init__(self, owners: int) -> None:
        self.cond = threading.Condition()
        self.videos: list[_Pieces] = []
        self.owners = owners  # decoders still taking videos of their own
        self.lookahead = max(1, owners)  # pieces past a video's head its helpers may take

    def add(self, video: _Pieces) -> _Pieces:
        with self.cond:
            if len(video.ranges) > 1:
                self.videos.append(video)
                self.cond.notify_all()
        return video

    def owner_done(self) -> None:
        with self.cond:
            self.owners -= 1
            self.cond.notify_all()

    def take(self, stop: threading.Event) -> tuple[_Pieces, int] | None:
        """The next piece of the video with the most frames not yet claimed; ``None`` once no
        decoder can open another video and every piece is claimed."""
        with self.cond:
            while not stop.is_set():
                self.videos = [v for v in self.videos if v.claimed < len(v.ranges) and not v.failed]
                free = [v for v in self.videos if v.claimable()]
                if free:
                    video = max(free, key=_Pieces.unclaimed_frames)
                    i = video.claim(helper=True)
                    if i is not None:
                        return video, i
                    continue
                if self.owners <= 0 and not self.videos:
                    return None
                self.cond.wait(0.05)  # a head moves on, or a decoder opens another video
        return None


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
        resize_on: ResizeOn = "auto",
        stop_check: Callable[[], None] | None = None,
        fetch: Fetch | None = None,
    ) -> None:
        self.encoder = encoder
        self.fetch: Fetch = fetch or contextlib.nullcontext
        self.sink = sink
        self.decode = decode
        self.workers = decode_workers(decode, encoder)
        self.device = encoder_device(encoder)
        # On a GPU encoder, decoders hand over native-size frames and resize+pad run on the
        # GPU in the encoder's batch (``resize_on="encoder"``; a given ``source`` resizes).
        if resize_on == "auto":
            resize_on = "encoder" if self.device.type == "cuda" and source is None else "decode"
        self.native = resize_on == "encoder"
        if self.native and source is not None:
            raise ValueError("resize_on='encoder' needs the local source")
        # The decoders share the budget of full-size pixels; native-size chunks also wait in
        # the queue, so then every chunk that may be held at once shares it.
        held = self.workers + (max(1, decode.queue_chunks) if self.native else 0)
        self.source = source or local_source(
            replace(decode, budget_mb=decode.budget_mb / held), native=self.native
        )
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
        # per video: seconds its decoder worked and its share of encoder time (job=status)
        self._rates: dict[str, dict[str, float]] = {}

    # -- decoders (several videos in parallel, each video's frames in order) ---------------

    def _decoders(self, tasks: Sequence[VideoTask], stop: threading.Event) -> _Decoders:
        """Start the decode threads. ``fixed`` batching: thread k decodes ``tasks[k::n]`` into
        its own queue, read back in task order (so batches do not depend on timing);
        ``dynamic``: the threads take the next task as they free up, into one shared queue.
        A thread that has no video of its own left takes pieces of the others' (see
        :class:`_Pieces`), so one long video at the end still keeps every decoder busy."""
        pieces = self.decode.piece_frames > 0
        n = max(1, self.workers if pieces else min(self.workers, len(tasks)))
        total = max(1, self.decode.queue_chunks)
        fixed = self.batching == "fixed"
        queues: list[queue.Queue] = [
            queue.Queue(maxsize=max(1, total // n)) for _ in range(n if fixed else 1)
        ]
        shared = iter(tasks)
        lock = threading.Lock()
        board = _Board(n)

        def next_task(k: int) -> Iterator[VideoTask]:
            if fixed:
                yield from tasks[k::n]
                return
            while True:
                with lock:
                    task = next(shared, None)
                if task is None:
                    return
                yield task

        threads = []
        for k in range(n):
            args = (next_task(k), queues[k if fixed else 0], board, stop)
            threads.append(threading.Thread(target=self._produce, args=args, daemon=True))
        for t in threads:
            t.start()
        return _Decoders(queues, threads, n)

    def _produce(
        self, tasks: Iterable[VideoTask], out: queue.Queue, board: _Board, stop: threading.Event
    ) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        owner = True
        try:
            for task in tasks:
                if stop.is_set():
                    return
                video = self._open(task, put, board)
                if video is None:
                    continue
                while (i := video.claim()) is not None:
                    if not self._decode_piece(video, i, stop):
                        return
                if self.batching == "fixed":  # its queue holds its videos in order
                    video.wait_finished(stop)
            board.owner_done()
            owner = False
            while (got := board.take(stop)) is not None:  # help the videos still decoding
                if not self._decode_piece(*got, stop):
                    return
        finally:
            if owner:
                board.owner_done()
            put(_DONE)

    def _open(
        self, task: VideoTask, put: Callable[[object], bool], board: _Board
    ) -> _Pieces | None:
        """Start a video in the sink and open it, cut into pieces (``None``: it failed)."""
        record = probe_record(task, None, self.decode.fps)
        fetched = contextlib.ExitStack()
        try:
            # A remote video is downloaded here and its copy removed once every piece of it
            # has been decoded (``_Pieces.release``), whichever decoder ends last.
            local = fetched.enter_context(self.fetch(task))
            with self._sink_lock:
                start = self.sink.start(task.video_id)
            video = self.source(local, self.size)
            close = getattr(video, "close", None)  # what an opened video holds (node copies)
            if close is not None:
                fetched.callback(close)
            record = video.record
            cut = getattr(video, "pieces", None)  # a source without pieces: one decoder
            ranges = (
                cut(self.decode.piece_frames, start)
                if cut is not None and self.decode.piece_frames
                else [(start, int(record["num_frames"]))]
            )
        except Exception as e:  # noqa: BLE001 - every per-video failure is recorded, not raised
            fetched.close()
            put(_Fail(task.video_id, record, _reason(e)))
            return None
        if not ranges:  # every frame already committed
            ranges = [(start, start)]
        pieces = _Pieces(task, video, ranges, put, board.lookahead, release=fetched.close)
        return board.add(pieces)

    def _decode_piece(self, video: _Pieces, i: int, stop: threading.Event) -> bool:
        """Decode piece ``i`` of ``video`` into its place in the order; False once stopped."""
        vid, record = video.task.video_id, video.video.record
        lo, hi = video.ranges[i]
        try:
            # one piece: the reader's own pass (a resumed Ray or local reader continues it)
            one = len(video.ranges) == 1
            chunks = video.video.chunks(lo) if one else video.video.chunks(lo, hi)
            for frames, pts in self._timed_chunks(vid, chunks):
                if not video.emit(i, _Frames(vid, frames, pts, record), stop):
                    return False
            finished = video.end(i)
        except Exception as e:  # noqa: BLE001 - every per-video failure is recorded, not raised
            if not video.emit(i, _Fail(vid, record, _reason(e)), stop):
                return False
            finished = video.end(i, failed=True)
        return finished is not None

    def _timed_chunks(
        self, video_id: str, chunks: Iterator[tuple[torch.Tensor, np.ndarray]]
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """``chunks``, adding the seconds spent decoding them to the video's rates."""
        rate = self._rates.setdefault(video_id, {"decode_seconds": 0.0, "encode_seconds": 0.0})
        while True:
            t0 = time.perf_counter()
            item = next(chunks, None)
            rate["decode_seconds"] += time.perf_counter() - t0
            if item is None:
                return
            yield item

    def _decoded(self, dec: _Decoders, tasks: Sequence[VideoTask]) -> Iterator[tuple[Any, bool]]:
        """Decoded items in the order the encoder takes them, each with whether more is
        already waiting (dynamic batching encodes early when nothing is)."""
        if len(dec.queues) == 1:
            q, done = dec.queues[0], 0
            while done < dec.count:
                item = self._next(q)
                if item is _DONE:
                    done += 1
                else:
                    yield item, not q.empty()
            return
        for i, task in enumerate(tasks):
            q = dec.queues[i % dec.count]
            while True:
                item = self._next(q)
                if item is _DONE:
                    raise RuntimeError(f"decode thread {i % dec.count} ended early")
                yield item, True
                if isinstance(item, _End | _Fail) and item.video_id == task.video_id:
                    break

    # -- consumer --------------------------------------------------------------------------

    def run(self, tasks: Iterable[VideoTask]) -> None:
        """Process every task; returns when all are finished or failed."""
        tasks = list(tasks)
        stop = threading.Event()
        dec = self._decoders(tasks, stop)
        pending: list[Any] = []
        pending_frames = 0
        try:
            for item, more in self._decoded(dec, tasks):
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
                eager = self.batching == "dynamic" and not more  # nothing more decoded yet
                if pending_frames >= self.batch_frames or eager:
                    self._flush(pending)
                    pending, pending_frames = [], 0
            self._flush(pending)
        finally:
            stop.set()
            for t in dec.threads:
                t.join()

    def _next(self, q: queue.Queue) -> Any:
        """The next decoded item; a requested stop (a signal) raises here, between items."""
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
            if self.native:
                allframes = to_encoder([e.frames for e in frame_events], self.size, self.device)
            else:
                allframes = torch.cat([e.frames for e in frame_events])
            owners = np.repeat(np.arange(len(frame_events)), [len(e.frames) for e in frame_events])
            self.batch_sizes.append(len(allframes))
            t0 = time.perf_counter()
            try:
                encoded: torch.Tensor | None = self.encoder.encode(allframes)
            except Exception as e:  # noqa: BLE001 - an encoder error fails these videos only
                for ev in frame_events:
                    failed[ev.video_id] = f"encoder failed: {type(e).__name__}: {e}"
                encoded = None
            share = (time.perf_counter() - t0) / len(allframes)
            for ev in frame_events:
                rate = self._rates.setdefault(ev.video_id, {"decode_seconds": 0.0})
                rate["encode_seconds"] = rate.get("encode_seconds", 0.0) + share * len(ev.frames)
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
                rates = {k: round(v, 4) for k, v in self._rates.pop(vid, {}).items()}
                self.sink.finish(vid, {**ev.record, **rates, "decode_workers": self.workers})
                self.on_event("done", vid, ev.record["num_frames"])
