"""Frames at an exact rate, by timestamp, with torchcodec, in bounded chunks.

The sampling rule: for ``t = begin + k / fps`` (``k = 0, 1, ...``) while ``t < end`` of the video
stream, take the frame displayed at ``t`` (the last frame whose pts is ``<= t``). No re-encode;
correct for variable frame rate; a video shorter than ``1 / fps`` gives one frame.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch

SeekMode = Literal["exact", "approximate"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOptions:
    """How frames are sampled and decoded (``job.decode`` of ``job=extract``).

    A decode call reads ``frames_per_call`` sampled frames (fewer where ``budget_mb`` of
    full-size pixels would be exceeded); that chunk of frames is the unit queued ahead of the
    encoder (``queue_chunks`` of them) and the unit of a Ray decode task.
    """

    fps: float = 2.0  # frames sampled at begin + k/fps: the one place a rate is chosen
    size: int | None = None  # frame square side; None = the encoder's input size
    frames_per_call: int = 8  # sampled frames decoded per call
    budget_mb: float = 256.0  # cap on full-size decoded pixels held at once
    threads: int = 1  # ffmpeg threads per decoder (0 = ffmpeg decides)
    seek_mode: SeekMode = "exact"  # exact (scans the file, right for VFR) | approximate
    device: str = "cpu"  # cpu | cuda (NVDEC)
    queue_chunks: int = 16  # decoded chunks buffered ahead of the encoder
    # cpu: decode only the frames sampled frames need (PyAV, FFmpeg skip_frame); same bits
    skip: bool = True
    # videos decoded in parallel by one task; None = the CPUs this process may use, less the
    # encoder's (extract.frames.default_workers)
    workers: int | None = None
    # a video of at least twice this many sampled frames is cut at keyframes into pieces of
    # about this many, which idle decoders take (skip decoding only); 0 = one decoder per video
    piece_frames: int = 16

    MAX_FPS: ClassVar[float] = 240.0  # above any camera's rate: a typo, not a setting

    def __post_init__(self) -> None:
        if not 0 < self.fps <= self.MAX_FPS:
            raise ValueError(f"job.decode.fps must be > 0 and <= {self.MAX_FPS:g}, got {self.fps}")
        if self.seek_mode not in get_args(SeekMode):
            raise ValueError(
                f"job.decode.seek_mode must be one of {', '.join(get_args(SeekMode))}, "
                f"got {self.seek_mode!r}"
            )
        for name in ("frames_per_call", "queue_chunks"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.decode.{name} must be >= 1, got {getattr(self, name)}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"job.decode.size must be >= 1 or null, got {self.size}")
        if self.threads < 0:
            raise ValueError(f"job.decode.threads must be >= 0, got {self.threads}")
        if not self.budget_mb > 0:
            raise ValueError(f"job.decode.budget_mb must be > 0, got {self.budget_mb}")
        if self.piece_frames < 0:
            raise ValueError(f"job.decode.piece_frames must be >= 0, got {self.piece_frames}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"job.decode.workers must be >= 1 or null, got {self.workers}")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity (which a SLURM allocation sets), else
    ``SLURM_CPUS_PER_TASK``, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(slurm) if slurm.isdigit() and int(slurm) > 0 else os.cpu_count() or 1


def default_workers(encoder_cpus: int = 1, cpus: int | None = None) -> int:
    """Videos to decode in parallel: every usable CPU less ``encoder_cpus`` (at least one)."""
    return max(1, (cpus or usable_cpus()) - max(0, encoder_cpus))


@dataclass(frozen=True)
class VideoProbe:
    """What the decoder says about a video stream (display dims, after rotation)."""

    width: int
    height: int
    begin_stream_seconds: float
    end_stream_seconds: float
    average_fps: float | None
    codec: str | None
    rotation: float | None

    @property
    def duration_seconds(self) -> float:
        return self.end_stream_seconds - self.begin_stream_seconds


def stream_duration(path: str | Path) -> float | None:
    """The video stream's duration from the file's header (no scan, no decoding); ``None``
    when the file cannot be opened as a video (the decoder then says why)."""
    from torchcodec.decoders import VideoDecoder

    try:
        md = VideoDecoder(str(path), seek_mode="approximate").metadata
    except Exception:  # noqa: BLE001 - not a video, missing, unreadable: reported elsewhere
        return None
    duration = md.duration_seconds_from_header or md.duration_seconds
    return round(float(duration), 6) if duration else None


def sample_times(begin_seconds: float, end_seconds: float, fps: float) -> np.ndarray:
    """The sampling times ``begin + k / fps`` that are ``< end`` (at least one if end > begin)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    span = end_seconds - begin_seconds
    if not span > 0:
        return np.zeros((0,), np.float64)
    # The tolerance keeps an exact multiple (e.g. 10 s at 2 fps) from gaining a frame at t == end.
    n = max(1, math.ceil(span * fps - 1e-9))
    return begin_seconds + np.arange(n, dtype=np.float64) / fps


def resize_pad(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``(N, 3, H, W)`` frames so the longer side is ``size`` (bicubic, antialiased,
    aspect kept), then centre them on a black ``size x size`` square (padding on uint8 pixels)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    n, c, h, w = frames.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        frames = tvf.resize(
            frames, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
    if nh == nw == size:
        return frames.contiguous()
    out = torch.zeros((n, c, size, size), dtype=frames.dtype, device=frames.device)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, :, top : top + nh, left : left + nw] = frames
    return out


class FrameReader:
    """Decode the sampled frames of one video in chunks that never exceed a memory budget.

    Opening probes the stream (raising a ``ValueError`` with a readable reason for files that
    are not videos); iterating yields ``(frames uint8 (n, 3, size, size), pts_seconds (n,))``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        size: int,
        decode: DecodeOptions,
    ) -> None:
        from torchcodec.decoders import VideoDecoder

        self.path = Path(path)
        self.fps = fps = decode.fps
        self.size = size
        _check_readable(self.path)
        try:
            self.decoder = VideoDecoder(
                str(self.path),
                seek_mode=decode.seek_mode,
                num_ffmpeg_threads=decode.threads,
                device=decode.device,
            )
        except Exception as e:  # noqa: BLE001 - torchcodec raises several types with ffmpeg's text
            if "best video stream" in str(e):
                raise ValueError("no video stream in the file (audio only?)") from None
            raise ValueError(f"cannot open as a video: {_one_line(e, self.path)}") from None
        md = self.decoder.metadata
        _check_not_truncated(md)
        begin = md.begin_stream_seconds
        end = md.end_stream_seconds
        if begin is None or end is None or md.width is None or md.height is None:
            raise ValueError("video stream has no usable duration or size")
        self.probe = VideoProbe(
            width=int(md.width),
            height=int(md.height),
            begin_stream_seconds=float(begin),
            end_stream_seconds=float(end),
            average_fps=float(md.average_fps) if md.average_fps else None,
            codec=md.codec,
            rotation=md.rotation,
        )
        if self.probe.average_fps and fps > self.probe.average_fps:
            log.warning(
                "%s: job.decode.fps=%g is above the video's %.3g frames/s: frames repeat",
                self.path,
                fps,
                self.probe.average_fps,
            )
        self.times = sample_times(
            self.probe.begin_stream_seconds, self.probe.end_stream_seconds, fps
        )
        if len(self.times) == 0:
            raise ValueError(f"video stream is empty (begin {begin} s, end {end} s)")
        frame_bytes = 3 * self.probe.width * self.probe.height
        # Full-size decoded frames are what costs memory (a 4K frame is 25 MB): cap the chunk.
        cap = int(decode.budget_mb * 2**20 // frame_bytes)
        self.frames_per_call = max(1, min(decode.frames_per_call, cap))
        self.sampler: SampledDecoder | None = None
        if decode.skip and decode.device == "cpu":
            try:
                self.sampler = SampledDecoder(self.path, decode.threads)
            except Exception:  # noqa: BLE001 - PyAV cannot index it: torchcodec decodes it all
                self.sampler = None
        self._targets = self.sampler.targets(self.times) if self.sampler else None

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def chunks(
        self, start_frame: int = 0, stop_frame: int | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Yield the sampled frames from ``start_frame`` on (up to ``stop_frame``, exclusive),
        ``frames_per_call`` at a time."""
        for frames, pts in self.native_chunks(start_frame, stop_frame):
            yield resize_pad(frames, self.size), pts

    def native_chunks(
        self, start_frame: int = 0, stop_frame: int | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """As :meth:`chunks`, at the video's display size (before resize and pad).

        With ``stop_frame`` (a piece, see :meth:`pieces`) the frames come from a decoding pass
        of their own, so pieces of one reader may be decoded by several threads at once.
        """
        stop = self.num_frames if stop_frame is None else min(stop_frame, self.num_frames)
        own = None
        if stop_frame is not None and self.sampler is not None and self._targets is not None:
            own = self.sampler.decode(self._targets[start_frame:stop])
        for lo in range(start_frame, stop, self.frames_per_call):
            ts = self.times[lo : min(lo + self.frames_per_call, stop)]
            try:
                yield self._decode_chunk(lo, ts) if own is None else self._take(own, ts)
            except Exception as e:  # noqa: BLE001 - reported as this video's failure
                raise ValueError(
                    f"decoding failed at {ts[0]:.3f}-{ts[-1]:.3f} s "
                    f"(frames {lo}-{lo + len(ts) - 1} of {self.num_frames}): "
                    f"{_one_line(e, self.path)}"
                ) from None

    def pieces(self, piece_frames: int, start_frame: int = 0) -> list[tuple[int, int]]:
        """Sampled-frame ranges ``[lo, hi)`` covering ``start_frame`` to the end, each at least
        ``piece_frames`` long and each but the first starting at the first frame displayed at
        or after a keyframe: a piece decodes from its own keyframe, nothing twice. One range
        when the video is short (under two pieces), when ``piece_frames`` is 0, or without
        the skip decoder (torchcodec's decoder is one per reader)."""
        n = self.num_frames
        if (
            not piece_frames
            or self.sampler is None
            or self._targets is None
            or n - start_frame < 2 * piece_frames
        ):
            return [(start_frame, n)] if start_frame < n else []
        cuts = np.searchsorted(self._targets, self.sampler.keyframe_pts(), side="left")
        out, lo = [], start_frame
        for cut in sorted(set(cuts.tolist())):
            if cut - lo >= piece_frames and n - cut >= piece_frames:
                out.append((lo, int(cut)))
                lo = int(cut)
        out.append((lo, n))
        return out

    def _take(
        self, gen: Iterator[tuple[np.ndarray, int]], ts: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The next ``len(ts)`` frames of a decoding pass, as :meth:`_decode_chunk` gives them."""
        assert self.sampler is not None
        return self._stack([item for _, item in zip(range(len(ts)), gen, strict=False)], ts)

    def _decode_chunk(self, lo: int, ts: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        if self.sampler is None or self._targets is None:
            batch = self.decoder.get_frames_played_at(seconds=ts.tolist())
            return batch.data, batch.pts_seconds.numpy().astype(np.float64)
        gen = self.sampler.frames(self._targets, lo)
        return self._stack([item for _, item in zip(range(len(ts)), gen, strict=False)], ts)

    def _stack(
        self, items: list[tuple[np.ndarray, int]], ts: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray]:
        assert self.sampler is not None
        if len(items) < len(ts):
            raise ValueError(f"{len(ts) - len(items)} sampled frames missing at the end")
        rgb = torch.from_numpy(np.stack([a for a, _ in items])).permute(0, 3, 1, 2)
        pts = self.sampler.to_seconds(np.array([p for _, p in items], dtype=np.int64))
        return _rotate(rgb, self.probe.rotation), pts


class SampledDecoder:
    """Decode only what the sampled frames need, with PyAV (FFmpeg's ``skip_frame``).

    One demux pass (no decoding) lists every frame's pts. Decoding then sends each packet with
    ``skip_frame`` = ``DEFAULT`` when its frame is sampled and ``NONREF`` otherwise: FFmpeg
    drops the non-reference frames that no sampled frame needs, and decodes the rest exactly as
    a full decode would (same bits). Frames come out in display order; a resumed pass seeks to a
    keyframe at or before the first wanted frame. Not thread-safe (one reader, one thread).
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        import av

        self.path = path
        self.threads = threads
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            if stream is None:
                raise ValueError("no video stream in the file (audio only?)")
            self.stream_index = stream.index
            tb = stream.time_base
            self.time_base = (tb.numerator, tb.denominator) if tb else (0, 1)
            raw = [(p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size > 0]
        packets = [(pts, dts, key) for pts, dts, key in raw if pts is not None]
        if not packets or len(packets) < len(raw):
            raise ValueError("packets without pts: cannot sample by timestamp with PyAV")
        #: pts of every frame, in display order, as stream ticks and as seconds
        self.pts = np.array(sorted(p[0] for p in packets), dtype=np.int64)
        self.seconds = self.to_seconds(self.pts)
        self._packets = packets  # decode order
        self._live: tuple[int, Iterator[tuple[np.ndarray, int]]] | None = None
        self.decoded = 0  # frames the decoder produced (the rest it skipped)

    def to_seconds(self, pts: np.ndarray) -> np.ndarray:
        """Stream ticks -> seconds, as torchcodec rounds them (``pts * num / den`` in double)."""
        num, den = self.time_base
        return pts.astype(np.float64) * num / den

    def keyframe_pts(self) -> np.ndarray:
        """The pts of every keyframe (where a decoding pass can start), in decode order."""
        return np.array([pts for pts, _dts, key in self._packets if key], dtype=np.int64)

    def decode(self, targets: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """A decoding pass of its own for ``targets`` (no state shared with other passes)."""
        return self._decode(targets)

    def targets(self, times: np.ndarray) -> np.ndarray:
        """The pts of the frame displayed at each time (the last frame with pts <= t)."""
        idx = np.searchsorted(self.seconds, times, side="right") - 1
        return self.pts[np.clip(idx, 0, len(self.pts) - 1)]

    def frames(self, targets: np.ndarray, first: int) -> Iterator[tuple[np.ndarray, int]]:
        """Yield ``(rgb (H, W, 3) uint8, pts)`` for ``targets[first:]`` (non-decreasing pts),
        continuing the previous pass when it stopped right before ``first``."""
        if self._live is not None and self._live[0] == first:
            gen = self._live[1]
        else:
            gen = self._decode(targets[first:])
        self._live = None
        k = first
        for item in gen:
            k += 1
            self._live = (k, gen)
            yield item

    def _start_packet(self, first_pts: int) -> int:
        """Index (decode order) of the keyframe to start at so that ``first_pts`` decodes."""
        start = 0
        for i, (pts, _dts, key) in enumerate(self._packets):
            if key and pts <= first_pts:
                start = i
            if pts == first_pts:
                break
        return start

    def _decode(self, targets: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        if len(targets):
            start = self._start_packet(int(targets[0]))
            try:
                yield from self._decode_from(targets, start)
            except _SeekMissed:  # the demuxer's seek went past our keyframe: from the start
                yield from self._decode_from(targets, 0)

    def _decode_from(self, targets: np.ndarray, start: int) -> Iterator[tuple[np.ndarray, int]]:
        import av

        wanted = set(targets.tolist())
        with av.open(str(self.path)) as container:
            stream = container.streams.video[self.stream_index]
            ctx = stream.codec_context
            ctx.thread_count = self.threads
            if start > 0:
                container.seek(self._packets[start][0], stream=stream, backward=True)
            j = 0
            started = start == 0
            for packet in container.demux(stream):
                if not started:  # drop what the seek landed on before our keyframe
                    started = (packet.pts, packet.dts) == self._packets[start][:2]
                    if not started:
                        continue
                skip = packet.pts is not None and packet.pts not in wanted
                ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                for frame in ctx.decode(packet):
                    self.decoded += 1
                    pts = frame.pts
                    if pts is None or pts not in wanted or pts < targets[j]:
                        continue
                    if pts > targets[j]:
                        raise ValueError(f"frame at pts {targets[j]} was not decoded")
                    rgb = frame.to_ndarray(format="rgb24")
                    while j < len(targets) and targets[j] == pts:
                        yield rgb, pts
                        j += 1
                    if j == len(targets):
                        return
        if not started:
            raise _SeekMissed
        raise ValueError(f"the stream ended before the frame at pts {targets[j]}")


class _SeekMissed(Exception):
    """The seek landed after the keyframe a resumed pass must start at."""


def _rotate(frames: torch.Tensor, rotation: float | None) -> torch.Tensor:
    """Turn coded frames upright as torchcodec does (rotation: degrees, counter-clockwise).
    The result may be a strided view (channels last, as decoded): the resize reads that layout
    directly, and a copy to channels first cost a tenth of the decode time of a 720p file."""
    turns = round((rotation or 0) / 90) % 4
    return torch.rot90(frames, turns, dims=(2, 3)) if turns else frames


def _check_readable(path: Path) -> None:
    # Clear reasons for the common cases, before ffmpeg turns them into a generic error.
    try:
        st = path.stat()
        if not path.is_file():
            raise ValueError(f"not a regular file: {path}")
        if st.st_size == 0:
            raise ValueError(f"empty file (0 bytes): {path}")
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise ValueError(f"missing path: {path}") from None
    except PermissionError as e:
        raise ValueError(f"permission denied: {path} ({e.strerror})") from None


def _check_not_truncated(md: Any) -> None:
    """Fail a file whose header promises more frames than its content holds (cut-off copy).

    In exact mode torchcodec scans the packets, so a truncated file would otherwise look like a
    shorter, healthy video and quietly lose its end.
    """
    header, content = md.num_frames_from_header, md.num_frames_from_content
    if header and content is not None and content < header:
        raise ValueError(
            f"truncated or damaged: the header lists {header} frames "
            f"({md.duration_seconds_from_header} s) but only {content} are in the file "
            f"(up to {md.end_stream_seconds_from_content:.3f} s)"
        )


_CPP_LOCATION = re.compile(r"(SingleStreamDecoder,\s*)?\S+\.cpp:\d+,\s*")


def _one_line(e: BaseException, path: Path | None = None) -> str:
    """A short one-line reason: no C++ source locations, the path shown once by the caller."""
    text = _CPP_LOCATION.sub("", " ".join(str(e).split()))
    if path is not None:
        text = text.replace(f": {path}", "").replace(str(path), path.name)
    return f"{type(e).__name__}: {text[:300]}"
