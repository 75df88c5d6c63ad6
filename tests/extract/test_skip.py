"""The skip decoder (PyAV, FFmpeg skip_frame) returns exactly what a full torchcodec decode does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.frames import DecodeOptions, FrameReader, SampledDecoder
from extract.samples import GeneratedVideo, make_decode_kinds, make_video


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GeneratedVideo]:
    return make_decode_kinds(tmp_path_factory.mktemp("kinds"))


def native(path: Path, opts: DecodeOptions, start: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    reader = FrameReader(path, size=64, decode=opts)
    assert (reader.sampler is not None) == (opts.skip and opts.device == "cpu")
    chunks = list(reader.native_chunks(start))
    return torch.cat([f for f, _ in chunks]), np.concatenate([p for _, p in chunks])


@pytest.mark.parametrize(
    "name", ["h264_bpyramid", "h264_open_gop", "h264_no_bframes", "hevc", "vp9", "vfr"]
)
@pytest.mark.parametrize("fps", [2.0, 7.0, 45.0])
def test_skip_is_bit_identical_to_a_full_decode(
    kinds: dict[str, GeneratedVideo], name: str, fps: float
) -> None:
    path = kinds[name].path
    full = DecodeOptions(fps=fps, skip=False, frames_per_call=5)
    ref_frames, ref_pts = native(path, full)
    frames, pts = native(path, replace(full, skip=True))
    assert np.array_equal(pts, ref_pts)  # the same frames chosen, the same stored pts
    assert torch.equal(frames, ref_frames)
    # a resumed reader (seek to a keyframe, then skip) gives the same tail
    start = len(ref_pts) // 2
    frames2, pts2 = native(path, replace(full, skip=True), start)
    assert np.array_equal(pts2, ref_pts[start:])
    assert torch.equal(frames2, ref_frames[start:])


def test_skip_decodes_fewer_frames(kinds: dict[str, GeneratedVideo]) -> None:
    v = kinds["h264_bpyramid"]
    dec = SampledDecoder(v.path)
    assert len(dec.pts) == v.num_frames
    targets = dec.targets(np.arange(0, 3, 0.5))
    assert len(list(dec.frames(targets, 0))) == len(targets)
    assert dec.decoded < 0.8 * v.num_frames  # the non-reference B-frames were skipped


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_skip_honours_rotation(tmp_path: Path, rotation: int) -> None:
    v = make_video(tmp_path / "r.mp4", seconds=1, width=96, height=64, rotation=rotation)
    full = DecodeOptions(fps=5, skip=False)
    a, pa = native(v.path, full)
    b, pb = native(v.path, replace(full, skip=True))
    assert np.array_equal(pa, pb) and torch.equal(a, b)
