"""extract/samples.py makes what it says, and torchcodec treats its bad inputs as documented in
docs/samples.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchcodec.decoders import VideoDecoder

from extract.samples import (
    GeneratedVideo,
    make_bad_inputs,
    make_vfr_video,
    make_video,
    read_index,
    read_indices,
    unprivileged,
)

NTSC = "30000/1001"


def ffprobe_stream(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json",
         str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stream: dict[str, Any] = json.loads(out)["streams"][0]
    return stream


def check_every_frame(video: GeneratedVideo) -> VideoDecoder:
    dec = VideoDecoder(video.path, seek_mode="exact")
    assert len(dec) == video.num_frames
    frames = dec.get_frames_in_range(0, len(dec))
    assert tuple(frames.data.shape[2:]) == (video.height, video.width)
    assert (dec.metadata.width, dec.metadata.height) == (video.width, video.height)
    assert read_indices(frames.data) == list(range(video.num_frames))
    assert video.pts_seconds is not None
    # webm stores ms timestamps, so 29.97 fps pts are rounded by up to 0.5 ms.
    np.testing.assert_allclose(frames.pts_seconds.numpy(), video.pts_seconds, atol=1e-3)
    return dec


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("h264_odd.mp4", dict(width=97, height=61, pix_fmt="yuv444p")),
        ("hevc_odd.mp4", dict(width=97, height=61, pix_fmt="yuv444p", codec="hevc")),
        ("vp9_odd.webm", dict(width=97, height=61, codec="vp9")),
        ("mpeg4_odd.mp4", dict(width=97, height=61, codec="mpeg4")),
        ("h264_portrait.mp4", dict(width=240, height=320)),
        ("hevc_portrait.mp4", dict(width=240, height=320, codec="hevc")),
        ("vp9_portrait.mp4", dict(width=240, height=320, codec="vp9")),
        ("h264_gop5_nofaststart.mp4", dict(width=64, height=48, gop=5, faststart=False)),
    ],
)
def test_frames_show_their_index_at_2997(tmp_path: Path, name: str, kwargs: Any) -> None:
    video = make_video(tmp_path / name, seconds=1.5, fps=NTSC, **kwargs)
    assert video.num_frames == 45 and video.fps == pytest.approx(29.97003, abs=1e-5)
    assert video.pts_seconds is not None and video.pts_seconds[1] == pytest.approx(1001 / 30000)
    dec = check_every_frame(video)
    assert dec.metadata.average_fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert dec.metadata.rotation in (None, 0)
    # Random access lands on the right frame too (not only sequential decoding).
    assert read_indices(dec.get_frames_at([44, 3, 30]).data) == [44, 3, 30]


@pytest.mark.parametrize(
    ("rotation", "codec", "size", "reported"),
    [
        (90, "h264", (240, 320), 90.0),
        (270, "h264", (96, 160), -90.0),
        (180, "h264", (96, 64), -180.0),
        (90, "hevc", (97, 61), 90.0),
    ],
)
def test_rotation_is_applied_by_the_decoder(
    tmp_path: Path, rotation: int, codec: Any, size: tuple[int, int], reported: float
) -> None:
    w, h = size
    pix_fmt = "yuv444p" if w % 2 or h % 2 else "yuv420p"
    video = make_video(
        tmp_path / "rot.mp4", seconds=1, fps=NTSC, width=w, height=h, rotation=rotation,
        codec=codec, pix_fmt=pix_fmt,
    )  # fmt: skip
    assert video.command[:3] == ["bash", "-o", "pipefail"]
    dec = check_every_frame(video)
    assert dec.metadata.rotation == reported
    # The stored frames really are rotated: coded size is swapped for 90/270, and a frame
    # decoded without autorotation does not read as an index.
    st = ffprobe_stream(video.path)
    coded = (h, w) if rotation in (90, 270) else (w, h)
    assert (st["width"], st["height"]) == coded
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-noautorotate", "-i", str(video.path), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    stored = np.frombuffer(raw, np.uint8).reshape(coded[1], coded[0], 3)
    with pytest.raises(ValueError):
        read_index(stored)
    assert read_index(np.rot90(stored, k=rotation // 90)) == 0  # np.rot90 turns CCW


def test_read_index_layouts_and_rejections(tmp_path: Path) -> None:
    video = make_video(tmp_path / "a.mp4", seconds=0.5, fps=30, width=64, height=48)
    hwc = VideoDecoder(video.path, dimension_order="NHWC").get_frame_at(7).data
    chw = VideoDecoder(video.path).get_frame_at(7).data
    assert read_index(hwc) == read_index(chw) == read_index(chw.numpy()) == 7
    assert read_index(chw[0]) == 7  # a single (gray) plane
    for bad in (
        torch.flip(chw, dims=[2]),  # mirrored
        torch.flip(chw, dims=[1]),  # upside down
        torch.rot90(chw, 1, dims=(1, 2)),
        torch.full_like(chw, 128),
        torch.zeros_like(chw),
    ):
        with pytest.raises(ValueError):
            read_index(bad)
    with pytest.raises(ValueError, match="channel axis"):
        read_index(np.zeros((48, 64, 5), np.uint8))


def test_code_survives_heavy_compression(tmp_path: Path) -> None:
    # extra_args come after the encoder options, so they can override the quality.
    video = make_video(
        tmp_path / "bad_q.mp4", seconds=1, width=48, height=32, extra_args=["-crf", "45"]
    )
    crf = [i for i, a in enumerate(video.command) if a == "-crf"]
    assert len(crf) == 2 and video.command[crf[1] + 1] == "45"
    check_every_frame(video)


def test_command_reproduces_the_video(tmp_path: Path) -> None:
    video = make_video(tmp_path / "a.mp4", seconds=0.5, width=64, height=48, gop=4)
    assert video.command[0].endswith("ffmpeg")
    for flag in ("-g", "-pix_fmt", "-an", "-y", "-loglevel"):
        assert flag in video.command
    first = VideoDecoder(video.path)[:]
    video.path.unlink()
    subprocess.run(video.command, check=True)
    assert torch.equal(VideoDecoder(video.path)[:], first)


def test_make_video_rejects_what_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="yuv444p"):
        make_video(tmp_path / "a.mp4", seconds=1, width=97, height=61)  # odd 4:2:0 H.264
    with pytest.raises(ValueError, match="ending in"):
        make_video(tmp_path / "a.webm", seconds=1, codec="h264")
    with pytest.raises(ValueError, match="multiple of 90"):
        make_video(tmp_path / "a.mp4", seconds=1, rotation=45)
    with pytest.raises(ValueError, match="only supported for .mp4"):
        make_video(tmp_path / "a.webm", seconds=1, codec="vp9", rotation=90)
    with pytest.raises(ValueError, match="at least"):
        make_video(tmp_path / "a.mp4", seconds=1, width=16, height=16)
    assert not list(tmp_path.iterdir())


def test_vfr_pts_are_exact(tmp_path: Path) -> None:
    pts = [0.0, 0.01, 0.05, 0.3, 0.31, 0.5, 1.0, 1.001, 1.7, 2.5]
    video = make_vfr_video(tmp_path / "vfr.mp4", pts_seconds=pts, width=96, height=64)
    assert video.fps is None and video.num_frames == len(pts)
    dec = check_every_frame(video)
    got = dec.get_frames_in_range(0, len(dec)).pts_seconds.numpy()
    np.testing.assert_allclose(got, pts, atol=1 / 90000)
    # Each frame is displayed from its pts until the next one; the last one for 1/30 s.
    assert dec.metadata.end_stream_seconds == pytest.approx(2.5 + 1 / 30, abs=1e-4)
    times = [t + 0.0005 for t in pts] + [0.999, 2.5 + 1 / 30 - 0.001]
    played = dec.get_frames_played_at(seconds=times)
    assert read_indices(played.data) == [*range(len(pts)), 5, 9]
    # ffprobe sees the same timestamps (independent of torchcodec).
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
         "-of", "csv=p=0", str(video.path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    np.testing.assert_allclose([float(t.strip(",")) for t in probe], pts, atol=1e-5)


# --- bad inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad() -> Iterator[dict[str, Path]]:
    # Not pytest's tmp_path: its 0700 parents would deny 'nobody' for the wrong reason.
    d = Path(tempfile.mkdtemp(prefix="streamfeat-bad-"))
    d.chmod(0o755)
    try:
        yield make_bad_inputs(d)
    finally:
        shutil.rmtree(d)


def test_bad_inputs_are_what_they_claim(bad: dict[str, Path]) -> None:
    assert set(bad) == {
        "zero_bytes", "truncated", "text_as_mp4", "audio_only", "missing", "unreadable",
        "fails_midway",
    }  # fmt: skip
    assert all(p.suffix == ".mp4" for p in bad.values())
    assert bad["zero_bytes"].stat().st_size == 0
    assert not bad["missing"].exists()
    assert bad["unreadable"].stat().st_mode & 0o777 == 0
    assert bad["text_as_mp4"].read_bytes().startswith(b"this is not a video")
    assert b"moov" not in bad["truncated"].read_bytes()  # index lost with the tail
    head = bad["fails_midway"].read_bytes()[:4096]
    assert head.index(b"moov") < head.index(b"mdat")  # faststart: index before the data
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json",
         str(bad["audio_only"])],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["streams"] == [{"codec_name": "aac", "codec_type": "audio"}]


@pytest.mark.parametrize(
    ("key", "exc", "message"),
    [
        ("zero_bytes", RuntimeError, "Could not open input file: .* Invalid data found"),
        ("truncated", RuntimeError, "Could not open input file: .* Invalid data found"),
        ("text_as_mp4", RuntimeError, "Could not open input file: .* Invalid data found"),
        ("missing", RuntimeError, "Could not open input file: .* No such file or directory"),
        ("audio_only", ValueError, "The best video stream is unknown"),
    ],
)
def test_bad_input_raises_at_open(
    bad: dict[str, Path], key: str, exc: type[Exception], message: str
) -> None:
    with pytest.raises(exc, match=message) as info:
        VideoDecoder(bad[key], seek_mode="exact")
    assert type(info.value) is exc  # exactly, e.g. not FileNotFoundError for "missing"
    with pytest.raises(exc, match=message):
        VideoDecoder(bad[key], seek_mode="approximate")


def test_unreadable_needs_dropped_privileges(bad: dict[str, Path]) -> None:
    path = bad["unreadable"]
    if os.geteuid() == 0:  # root ignores the mode bits
        assert read_indices(VideoDecoder(path)[:3]) == [0, 1, 2]
    with unprivileged():
        assert os.geteuid() != 0
        with pytest.raises(PermissionError):
            path.open("rb")
        with pytest.raises(RuntimeError, match="Could not open input file: .* Permission denied"):
            VideoDecoder(path, seek_mode="exact")
    assert path.stat().st_mode & 0o777 == 0


def test_fails_midway_opens_then_raises_past_the_cut(bad: dict[str, Path]) -> None:
    dec = VideoDecoder(bad["fails_midway"], seek_mode="exact")
    md = dec.metadata
    # The intact header still describes the whole 2 s / 60 frames ...
    assert md.num_frames_from_header == 60 and md.duration_seconds_from_header == 2.0
    # ... while the exact-mode scan only finds what survived the cut (~0.87 s).
    assert md.num_frames_from_content is not None and 10 < md.num_frames_from_content < 40
    end = md.end_stream_seconds_from_content
    assert end is not None and 0.3 < end < 1.4
    assert len(dec) == md.num_frames_from_content and md.end_stream_seconds == end
    assert read_indices(dec.get_frames_played_at(seconds=[0.0, 0.2]).data) == [0, 6]
    with pytest.raises(RuntimeError, match=r"frame pts is 1\.500000; must be less than"):
        dec.get_frames_played_at(seconds=[1.5])
    with pytest.raises(RuntimeError, match="Could not push packet to decoder"):
        dec.get_frames_in_range(0, len(dec))

    approx = VideoDecoder(bad["fails_midway"], seek_mode="approximate")
    assert len(approx) == 60  # from the header
    assert read_index(approx.get_frames_played_at(seconds=[0.2]).data[0]) == 6
    with pytest.raises(RuntimeError, match="no more frames left to decode"):
        approx.get_frames_played_at(seconds=[1.9])
