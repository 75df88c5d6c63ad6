from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from extract.frames import DecodeOptions, FrameReader, resize_pad, sample_times
from extract.samples import GeneratedVideo, make_vfr_video, make_video, read_index, unprivileged


def test_sample_times_rule() -> None:
    np.testing.assert_allclose(sample_times(0.0, 10.0, 2.0), np.arange(20) / 2)  # t=10 excluded
    np.testing.assert_allclose(sample_times(0.0, 10.01, 2.0), np.arange(21) / 2)
    np.testing.assert_allclose(sample_times(1.5, 2.2, 2.0), [1.5, 2.0])  # from the stream start
    assert sample_times(0.0, 0.1, 2.0).tolist() == [0.0]  # shorter than 1/fps: one frame
    assert len(sample_times(0.0, 1001 / 30000 * 300, 2.0)) == 21  # 29.97 fps, 10.01 s
    assert len(sample_times(3.0, 3.0, 2.0)) == 0
    with pytest.raises(ValueError):
        sample_times(0, 1, 0)


def test_resize_pad_keeps_aspect_and_centres_on_black() -> None:
    frames = torch.full((2, 3, 240, 320), 200, dtype=torch.uint8)
    out = resize_pad(frames, 384)
    assert out.shape == (2, 3, 384, 384) and out.dtype == torch.uint8
    assert (out[:, :, :48] == 0).all() and (out[:, :, 336:] == 0).all()  # 288 rows of content
    assert (out[:, :, 48:336] == 200).all()
    tall = resize_pad(torch.full((1, 3, 61, 97), 255, dtype=torch.uint8), 384)
    rows = (tall[0, 0] > 0).any(dim=1).nonzero().flatten()
    assert rows[0] == (384 - 241) // 2 and len(rows) == 241  # round(61 * 384 / 97) = 241
    portrait = resize_pad(torch.full((1, 3, 320, 240), 9, dtype=torch.uint8), 384)
    cols = (portrait[0, 0] > 0).any(dim=0).nonzero().flatten()
    assert cols[0] == 48 and len(cols) == 288


def displayed_at(pts: np.ndarray, t: float) -> int:
    """Independent rule: index of the last source frame whose pts <= t."""
    return int(np.searchsorted(pts, t + 1e-9, side="right") - 1)


def content(frame: torch.Tensor, w: int, h: int, size: int) -> torch.Tensor:
    """Crop the padding of a resize_pad'ed frame back off."""
    s = size / max(w, h)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    top, left = (size - nh) // 2, (size - nw) // 2
    return frame[:, top : top + nh, left : left + nw]


def check_sampling(video: GeneratedVideo, size: int = 384) -> None:
    reader = FrameReader(video.path, size=size, decode=DecodeOptions(fps=2.0, frames_per_call=5))
    assert (reader.probe.width, reader.probe.height) == (video.width, video.height)
    src = np.array(video.pts_seconds)
    assert reader.probe.begin_stream_seconds == pytest.approx(src[0], abs=1e-3)
    got_idx, got_pts = [], []
    for frames, pts in reader.chunks():
        assert frames.shape[1:] == (3, size, size) and frames.dtype == torch.uint8
        got_idx += [read_index(content(f, video.width, video.height, size)) for f in frames]
        got_pts += pts.tolist()
    times = reader.times
    want = [displayed_at(src, t) for t in times]
    assert got_idx == want
    np.testing.assert_allclose(got_pts, src[want], atol=1e-3)
    assert times[-1] < reader.probe.end_stream_seconds <= times[-1] + 0.5 + 1e-6


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        (
            "h264_2997_odd.mp4",
            dict(seconds=3.3, fps="30000/1001", width=97, height=61, pix_fmt="yuv444p"),
        ),
        ("hevc_portrait.mp4", dict(seconds=2.0, fps=25, width=120, height=200, codec="hevc")),
        ("vp9.webm", dict(seconds=2.2, fps=24, width=160, height=96, codec="vp9")),
        ("rotated.mp4", dict(seconds=2.0, fps=30, width=96, height=160, rotation=90)),
        ("short.mp4", dict(seconds=0.2, fps=30, width=64, height=48)),
    ],
)
def test_frames_follow_the_sampling_rule(tmp_path: Path, name: str, kwargs: dict) -> None:
    check_sampling(make_video(tmp_path / name, **kwargs))


def test_variable_frame_rate(tmp_path: Path) -> None:
    # Irregular gaps, a long hold (0.9 -> 2.35 s), bursts: round(t * fps) indexing would be wrong.
    pts = [0.0, 0.1, 0.15, 0.6, 0.9, 2.35, 2.4, 2.45, 2.5, 3.1, 3.7, 3.71]
    check_sampling(make_vfr_video(tmp_path / "vfr.mp4", pts_seconds=pts, width=128, height=96))


def test_chunks_resume_from_a_frame(tmp_path: Path) -> None:
    video = make_video(tmp_path / "a.mp4", seconds=4, fps=30, width=64, height=48)
    reader = FrameReader(video.path, size=64, decode=DecodeOptions(fps=2.0, frames_per_call=3))
    tail = [read_index(content(f, 64, 48, 64)) for fr, _ in reader.chunks(5) for f in fr]
    assert tail == [round(k * 15) for k in range(5, 8)]


def test_decode_chunk_is_capped_by_memory_budget(tmp_path: Path) -> None:
    video = make_video(tmp_path / "big.mp4", seconds=1, fps=10, width=640, height=480)
    opts = DecodeOptions(fps=2.0, frames_per_call=32, budget_mb=2.0)
    reader = FrameReader(video.path, size=64, decode=opts)
    assert reader.frames_per_call == 2  # 2 MiB / (640 * 480 * 3 bytes) frames


def test_unreadable_file_is_reported_as_permission_denied() -> None:
    import os
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="streamfeat-perm-"))  # traversable by 'nobody'
    try:
        d.chmod(0o755)
        video = make_video(d / "locked.mp4", seconds=1, width=64, height=48)
        video.path.chmod(0)
        with unprivileged():  # as root, chmod 000 would not stop reads
            assert os.geteuid() != 0, "could not drop privileges"
            with pytest.raises(ValueError, match="permission denied"):
                FrameReader(video.path, size=64, decode=DecodeOptions(fps=2.0))
    finally:
        shutil.rmtree(d)


def test_a_rate_above_the_source_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = make_video(tmp_path / "slow.mp4", seconds=1.0, fps=10, width=64, height=48)
    with caplog.at_level("WARNING"):
        reader = FrameReader(video.path, size=32, decode=DecodeOptions(fps=20.0))
    assert "job.decode.fps=20 is above the video's 10 frames/s: frames repeat" in caplog.text
    assert len(reader.times) == 20  # still sampled as asked
    caplog.clear()
    with caplog.at_level("WARNING"):
        FrameReader(video.path, size=32, decode=DecodeOptions(fps=2.0))
    assert "above the video's" not in caplog.text
