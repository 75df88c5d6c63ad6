"""Sample videos made with the ffmpeg CLI, for the demo, the benchmarks and the tests.

``lavfi_video`` encodes one of ffmpeg's test sources; ``make_video`` / ``make_vfr_video`` write
videos whose frames show their own index (``read_index`` reads it back); ``make_bad_inputs``
writes the broken files the extract job must survive. Frame code, rotation, odd sizes and what
torchcodec does with each bad input: docs/samples.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

Codec = Literal["h264", "hevc", "vp9", "mpeg4"]

# Frame code layout (docs/samples.md): the top half of the frame is a grid of
# _ROWS x _COLS cells, each fully black or white.
_ROWS = 2
_COLS = 12
_CELLS = _ROWS * _COLS
_INDEX_BITS = _CELLS - 4  # cells: marker 1, marker 0, index bits (MSB first), parity, marker 0
MAX_FRAMES = 1 << _INDEX_BITS
MIN_WIDTH = 2 * _COLS  # >= 2 px per cell column so there is an interior pixel to sample
MIN_HEIGHT = 4 * _ROWS

# Encoder settings: high quality (the code survives any sane setting, but the gradient
# should not look like mush) and fast presets so the whole test suite stays quick.
_ENCODER_ARGS: dict[str, list[str]] = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18"],
    "hevc": [
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-crf",
        "20",
        "-x265-params",
        "log-level=error",
    ],
    "vp9": [
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-crf",
        "30",
        "-b:v",
        "0",
        "-row-mt",
        "1",
    ],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "2"],
}
_CONTAINERS: dict[str, tuple[str, ...]] = {
    "h264": (".mp4",),
    "hevc": (".mp4",),
    "vp9": (".webm", ".mp4"),
    "mpeg4": (".mp4",),
}
# Stored frame = display frame turned R degrees clockwise: a decoder honouring the display
# matrix written for `rotate=R` turns it R degrees counter-clockwise, back upright.
_PRE_ROTATE = {0: "", 90: "transpose=clock", 180: "hflip,vflip", 270: "transpose=cclock"}


@dataclass(frozen=True)
class GeneratedVideo:
    """A video written by this module; ``command`` is the exact argv that made it (an ffmpeg
    call, or for rotated videos a ``bash -o pipefail -c`` pipeline of two ffmpeg calls)."""

    path: Path
    command: list[str]
    fps: float | None  # None for variable frame rate
    num_frames: int
    width: int  # display width (after rotation)
    height: int  # display height (after rotation)
    pts_seconds: tuple[float, ...] | None


def _esc(expr: str) -> str:
    """Escape commas so an expression survives the filtergraph parser."""
    return expr.replace(",", r"\,")


def _source_graph(width: int, height: int, rate: Fraction | int) -> str:
    """Filtergraph (no inputs) of upright gray frames: frame code on top, moving blur below.

    geq is an interpreter and costs ~10 ms per 320x240 frame, so it only draws the code at one
    pixel per cell (12x2) and a 32x16 sine field; both are upscaled (nearest-neighbour keeps
    the cells hard-edged, bilinear makes the lower half a smooth moving gradient).
    """
    last = _INDEX_BITS + 1  # cell number of the least significant index bit
    parity = "+".join(f"mod(floor(N/{1 << i}),2)" for i in range(_INDEX_BITS))
    # ffmpeg's if() is lazy, so the long parity sum is only evaluated for the parity cell.
    bit = (
        f"if(eq(ld(0),0),1,"
        f"if(between(ld(0),2,{last}),mod(floor(N/pow(2,{last}-ld(0))),2),"
        f"if(eq(ld(0),{last + 1}),mod({parity},2),0)))"
    )
    code = _esc(f"st(0,X+{_COLS}*Y);255*{bit}")
    wave = _esc("128+100*sin(6.2832*(X/W+Y/H)+0.3*N)")
    top = height // 2
    return (
        f"nullsrc=s={_COLS}x{_ROWS}:r={rate},format=gray,geq=lum='{code}',"
        f"scale={width}:{top}:flags=neighbor[code];"
        f"nullsrc=s=32x16:r={rate},format=gray,geq=lum='{wave}',"
        f"scale={width}:{height - top}:flags=bilinear[wave];"
        "[code][wave]vstack"
    )


def _parse_fps(fps: float | str) -> Fraction:
    rate = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, str) else Fraction(fps)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def _ffmpeg(*args: str) -> list[str]:
    """The argv of a quiet ffmpeg call that never reads stdin and overwrites its output."""
    return [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def _check_size(width: int, height: int, codec: str, pix_fmt: str) -> None:
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"frame must be at least {MIN_WIDTH}x{MIN_HEIGHT}, got {width}x{height}")
    # H.264/HEVC crop in whole chroma samples, so 4:2:0/4:2:2 cannot represent odd sizes.
    subsampled = pix_fmt.startswith(("yuv420", "yuv422", "yuvj420", "yuvj422", "nv12"))
    if codec in ("h264", "hevc") and subsampled and (width % 2 or height % 2):
        raise ValueError(
            f"{codec} cannot encode odd size {width}x{height} in {pix_fmt}; use pix_fmt='yuv444p'"
        )


def lavfi_video(
    path: str | os.PathLike[str],
    source: str,
    seconds: float,
    *,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Encode ``seconds`` of the ffmpeg test source ``source`` (a lavfi graph such as
    ``"testsrc2=size=640x360:rate=30"``) to H.264 (x264 veryfast, yuv420p) at ``path``; returns
    the argv it ran. ``extra_args`` are output options placed after the encoder options (e.g.
    ``["-g", "250"]``). The demo and the benchmarks make their inputs with it."""
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds)]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", *extra_args]
    cmd.append(str(path))
    _run(cmd)
    return cmd


def make_video(
    path: str | os.PathLike[str],
    *,
    seconds: float,
    fps: float | str = 30,
    width: int = 320,
    height: int = 240,
    codec: Codec = "h264",
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
    faststart: bool = True,
    gop: int | None = None,
    extra_args: Sequence[str] = (),
) -> GeneratedVideo:
    """Encode a constant-frame-rate video whose frame k shows index k (see ``read_index``).

    ``num_frames = max(1, round(seconds * fps))``; frame k has pts ``k / fps`` exactly
    (``fps`` may be a rational string such as ``"30000/1001"``). ``width``/``height`` are the
    display size; ``rotation`` (a multiple of 90, mp4 only) writes a display matrix and stores
    pre-rotated frames so that what a rotation-aware decoder returns is upright
    (docs/samples.md). ``gop=None`` keeps the encoder's default keyframe interval.
    ``faststart`` only applies to mp4. ``extra_args`` are output options placed after the
    encoder options (so they can override them, e.g. ``["-crf", "40"]``) and before the output
    path.
    """
    path = Path(path)
    rotation = _check_container(path, codec, rotation)
    rate = _parse_fps(fps)
    num_frames = max(1, round(seconds * rate))
    if num_frames > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames can be indexed, got {num_frames}")
    # The stored (coded) frame has swapped dims for 90/270 rotations.
    coded_w, coded_h = (height, width) if rotation in (90, 270) else (width, height)
    _check_size(width, height, codec, pix_fmt)
    _check_size(coded_w, coded_h, codec, pix_fmt)

    post = ",".join(f for f in (_PRE_ROTATE[rotation], f"format={pix_fmt}") if f)
    cmd = _ffmpeg("-filter_complex", f"{_source_graph(width, height, rate)},{post}[v]",
                  "-map", "[v]", "-frames:v", str(num_frames), *_ENCODER_ARGS[codec],
                  "-pix_fmt", pix_fmt, "-an")  # fmt: skip
    if gop is not None:
        cmd += ["-g", str(gop)]
    cmd += list(extra_args)
    mux = ["-movflags", "+faststart"] if path.suffix.lower() == ".mp4" and faststart else []
    if codec == "hevc":
        mux += ["-tag:v", "hvc1"]  # the tag Apple players need; a muxer option, not for NUT
    cmd = _rotated(cmd, rotation, mux, path) if rotation else [*cmd, *mux, str(path)]
    _run(cmd)
    pts = tuple(float(k / rate) for k in range(num_frames))
    return GeneratedVideo(path, cmd, float(rate), num_frames, width, height, pts)


def _check_container(path: Path, codec: str, rotation: int) -> int:
    """Refuse an unknown codec, a container it cannot go in, or a rotation that is not a
    multiple of 90 (or not in an mp4); returns the rotation in [0, 360)."""
    if codec not in _ENCODER_ARGS:
        raise ValueError(f"unknown codec {codec!r}")
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS[codec]:
        raise ValueError(f"{codec} needs a path ending in one of {_CONTAINERS[codec]}: {path}")
    rotation %= 360
    if rotation not in _PRE_ROTATE:
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    if rotation and suffix != ".mp4":
        raise ValueError("rotation metadata is only supported for .mp4 output")
    return rotation


def _rotated(cmd: list[str], rotation: int, mux: list[str], path: Path) -> list[str]:
    """``cmd`` (an ffmpeg encode without its output) written to ``path`` with a display matrix.

    ffmpeg 5.1 has no -display_rotation, and its CLI turns a `rotate` tag into a display matrix
    only when stream-copying. So encode to NUT on a pipe and remux with -c copy."""
    remux = _ffmpeg("-f", "nut", "-i", "pipe:0", "-c", "copy",
                    "-metadata:s:v:0", f"rotate={rotation}", *mux, str(path))  # fmt: skip
    script = f"{shlex.join([*cmd, '-f', 'nut', 'pipe:1'])} | {shlex.join(remux)}"
    return ["bash", "-o", "pipefail", "-c", script]


def make_vfr_video(
    path: str | os.PathLike[str],
    *,
    pts_seconds: Sequence[float],
    width: int = 320,
    height: int = 240,
    last_duration: float = 1 / 30,
    gop: int | None = None,
) -> GeneratedVideo:
    """Encode a variable-frame-rate H.264 mp4 where frame k shows index k at pts_seconds[k].

    Built in one ffmpeg call: a CFR source is retimed with ``setpts`` (an expression in N that
    looks up the wanted pts on a 1/90000 timebase), passed through unchanged with
    ``-fps_mode passthrough`` and muxed with a 90 kHz track timescale, so pts are exact up to
    1/90000 s. No B-frames, so dts == pts and there is no edit list. The last frame lasts
    ``last_duration`` (the muxer derives a missing packet duration from the source rate, set to
    1/last_duration), so the stream ends at ``pts_seconds[-1] + last_duration``; with B-frames
    it got duration 0 and was unreachable by ``get_frames_played_at``. Requires strictly
    increasing, non-negative pts.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"VFR video must be .mp4: {path}")
    ticks = [round(t * 90_000) for t in pts_seconds]
    if not ticks or ticks[0] < 0 or any(b <= a for a, b in itertools.pairwise(ticks)):
        raise ValueError("pts_seconds must be non-empty, non-negative and strictly increasing")
    if len(ticks) > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames can be indexed, got {len(ticks)}")
    _check_size(width, height, "h264", "yuv420p")
    if last_duration <= 0:
        raise ValueError(f"last_duration must be positive, got {last_duration}")
    src_rate = 1 / Fraction(last_duration).limit_denominator(90_000)
    # Sum of eq(N,k)*tick_k: a flat lookup table (a nested if() chain would recurse deeply).
    lookup = _esc("+".join(f"eq(N,{k})*{t}" for k, t in enumerate(ticks)))
    graph = f"{_source_graph(width, height, src_rate)},settb=1/90000,setpts='{lookup}'"
    graph += ",format=yuv420p"
    cmd = _ffmpeg("-filter_complex", f"{graph}[v]", "-map", "[v]", "-frames:v", str(len(ticks)),
                  "-fps_mode", "passthrough", "-enc_time_base", "1:90000",
                  "-video_track_timescale", "90000", *_ENCODER_ARGS["h264"], "-bf", "0",
                  "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart")  # fmt: skip
    cmd += [*(["-g", str(gop)] if gop is not None else []), str(path)]
    _run(cmd)
    pts = tuple(t / 90_000 for t in ticks)
    return GeneratedVideo(path, cmd, None, len(ticks), width, height, pts)


def _to_luma(frame: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = frame if isinstance(frame, np.ndarray) else frame.detach().cpu().numpy()
    if arr.ndim == 2:
        return arr.astype(np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected a CHW/HWC/HW frame, got shape {arr.shape}")
    if arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    elif arr.shape[-1] not in (1, 3):
        raise ValueError(f"cannot tell channel axis of frame with shape {arr.shape}")
    return arr.astype(np.float32).mean(axis=-1)


def read_index(frame: torch.Tensor | np.ndarray) -> int:
    """Decode the frame index drawn by ``make_video``/``make_vfr_video``.

    Accepts an upright (display-orientation) uint8 RGB frame, CHW or HWC (or HW gray). Each
    code cell is averaged over its central half in both directions, which is immune to
    compression ringing at cell edges and to 4:2:0 chroma (the code is pure gray). Raises
    ``ValueError`` if the code is not clean/valid (wrong orientation, not our video, ...).
    """
    luma = _to_luma(frame)
    h, w = luma.shape
    cell_w, cell_h = w / _COLS, h / (2 * _ROWS)
    bits: list[int] = []
    for cell in range(_CELLS):
        r, c = divmod(cell, _COLS)
        y0, y1 = math.ceil((r + 0.25) * cell_h), math.floor((r + 0.75) * cell_h)
        x0, x1 = math.ceil((c + 0.25) * cell_w), math.floor((c + 0.75) * cell_w)
        # Tiny frames: fall back to the single pixel nearest the cell centre.
        y0, y1 = (y0, y1) if y1 >= y0 else (int((r + 0.5) * cell_h),) * 2
        x0, x1 = (x0, x1) if x1 >= x0 else (int((c + 0.5) * cell_w),) * 2
        mean = float(luma[y0 : y1 + 1, x0 : x1 + 1].mean())
        if 64 < mean < 192:
            raise ValueError(f"frame code cell {cell} is not clean black/white (mean {mean:.0f})")
        bits.append(int(mean >= 128))
    index_bits = bits[2 : 2 + _INDEX_BITS]
    if bits[0] != 1 or bits[1] != 0 or bits[-1] != 0 or bits[-2] != sum(index_bits) % 2:
        raise ValueError(f"invalid frame code (markers/parity): {bits}")
    return int("".join(map(str, index_bits)), 2)


def read_indices(frames: torch.Tensor | np.ndarray) -> list[int]:
    """``read_index`` over a batch (NCHW or NHWC)."""
    return [read_index(f) for f in frames]


def make_bad_inputs(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the bad inputs described in docs/samples.md into ``directory``; returns them by
    name (``missing`` names a path that does not exist)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    out["zero_bytes"] = d / "zero_bytes.mp4"
    out["zero_bytes"].write_bytes(b"")

    # Without faststart the moov atom is at the end, so the first 40% has no index at all.
    full = make_video(
        d / "_full_nofaststart.mp4", seconds=2, width=64, height=48, faststart=False
    ).path
    data = full.read_bytes()
    out["truncated"] = d / "truncated.mp4"
    out["truncated"].write_bytes(data[: int(len(data) * 0.4)])
    full.unlink()

    out["text_as_mp4"] = d / "text_as_mp4.mp4"
    out["text_as_mp4"].write_text("this is not a video, just text pretending to be one\n" * 20)

    out["audio_only"] = d / "audio_only.mp4"
    _run(_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1",
                 "-c:a", "aac", "-vn", str(out["audio_only"])))  # fmt: skip

    out["missing"] = d / "missing.mp4"
    out["missing"].unlink(missing_ok=True)

    out["unreadable"] = d / "unreadable.mp4"
    make_video(out["unreadable"], seconds=1, width=64, height=48)
    out["unreadable"].chmod(0)

    fm = make_video(d / "_full_faststart.mp4", seconds=2, width=64, height=48, gop=10).path
    data = fm.read_bytes()
    out["fails_midway"] = d / "fails_midway.mp4"
    out["fails_midway"].write_bytes(data[: _mid_packet_offset(fm, 0.6)])
    fm.unlink()
    return out


def _mid_packet_offset(path: Path, fraction: float) -> int:
    """Byte offset in the middle of the video packet at ``fraction`` of the file.

    Cutting mid-packet (not on a packet boundary by chance) guarantees a damaged last packet, so
    decoding near the cut raises instead of merely ending early.
    """
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "packet=pos,size", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    packets = sorted((int(p["pos"]), int(p["size"])) for p in json.loads(probe.stdout)["packets"])
    target = path.stat().st_size * fraction
    pos, size = next((p for p in packets if p[0] + p[1] > target), packets[-1])
    return pos + max(1, size // 2)


@contextlib.contextmanager
def unprivileged(uid: int = 65534, gid: int = 65534) -> Iterator[None]:
    """Temporarily drop the *effective* uid/gid (to nobody) when running as root.

    As root, ``chmod 000`` does not stop reads (CAP_DAC_OVERRIDE), so a test of the
    "unreadable" input must run the open inside this context. The real uid stays 0, so the
    effective ids (and capabilities) are restored on exit. No-op when not root. Note that every
    directory on the path must be searchable by ``uid`` (pytest's tmp dirs are 0700), else the
    open fails for that reason instead.
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# Stream structures the skip decoder must get right (tests/extract/test_frames.py): name ->
# (container suffix, codec, extra encoder options).
DECODE_KINDS: dict[str, tuple[str, Codec, tuple[str, ...]]] = {
    "h264_bpyramid": (".mp4", "h264", ("-bf", "3", "-x264-params", "b-pyramid=normal")),
    "h264_open_gop": (".mp4", "h264", ("-bf", "3", "-x264-params", "open-gop=1:keyint=24")),
    "h264_no_bframes": (".mp4", "h264", ("-bf", "0")),
    "hevc": (".mp4", "hevc", ("-x265-params", "log-level=error:bframes=4:keyint=24")),
    "vp9": (".webm", "vp9", ()),
}


def make_decode_kinds(
    directory: str | os.PathLike[str], *, seconds: float = 3, fps: int = 30, gop: int | None = None
) -> dict[str, GeneratedVideo]:
    """One video per ``DECODE_KINDS`` entry plus ``vfr`` (variable frame rate), 160x120;
    ``gop`` sets every file's keyframe interval (``-g``; None: each kind's own)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (suffix, codec, extra) in DECODE_KINDS.items():
        path = d / f"{name}{suffix}"
        out[name] = make_video(
            path, seconds=seconds, fps=fps, width=160, height=120, codec=codec,
            extra_args=(*extra, *(("-g", str(gop)) if gop is not None else ())),
        )  # fmt: skip
    pts, t = [], 0.0
    for k in range(int(seconds * fps)):
        pts.append(round(t, 4))
        t += (1 if k % 3 else 2.5) / fps  # irregular gaps
    out["vfr"] = make_vfr_video(d / "vfr.mp4", pts_seconds=pts, width=160, height=120, gop=gop)
    return out
