"""ExtractPipeline batching: what reaches the encoder, in which order, and what the sink gets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from extract.encoders import SiglipConfig, build_encoder
from extract.pipeline import Batching, DecodeOptions, ExtractPipeline, VideoTask
from extract.samples import make_video

SIZE = 4


class FakeVideo:
    """``num_frames`` frames whose pixels all equal the global frame number, in chunks."""

    def __init__(self, base: int, num_frames: int, chunk: int, delay: float) -> None:
        self.base, self.chunk, self.delay = base, chunk, delay
        self.record: dict[str, Any] = {"num_frames": num_frames, "fps": 2.0}

    def chunks(self, start_frame: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        n = self.record["num_frames"]
        for lo in range(start_frame, n, self.chunk):
            time.sleep(self.delay)
            idx = torch.arange(lo, min(lo + self.chunk, n)) + self.base
            frames = idx.view(-1, 1, 1, 1).expand(-1, 3, SIZE, SIZE).to(torch.uint8)
            yield frames.contiguous(), idx.numpy() / 2.0


class FakeEncoder:
    """Token = the frame's pixel value; ``delay`` seconds per call."""

    image_size, dim, pool, tokens_per_frame = SIZE, 2, 1, 2
    autocast = "off"
    mean = torch.zeros(3)
    std = torch.ones(3)

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.provenance: dict[str, Any] = {}

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return pixels[:, 0, 0, 0].float().view(-1, 1, 1).expand(-1, 2, 2)


class ListSink:
    def __init__(self) -> None:
        self.frames: dict[str, list[float]] = {}
        self.events: list[tuple[str, str]] = []
        self.errors: dict[str, str] = {}

    def start(self, video_id: str) -> int:
        self.frames[video_id] = []
        return 0

    def write(self, video_id: str, tokens: np.ndarray, pts_seconds: np.ndarray) -> None:
        assert tokens.shape[1:] == (2, 2) and len(tokens) == len(pts_seconds)
        self.frames[video_id].extend(tokens[:, 0, 0].tolist())

    def finish(self, video_id: str, record: dict[str, Any]) -> None:
        self.events.append(("done", video_id))

    def fail(self, video_id: str, record: dict[str, Any], error: str) -> None:
        self.events.append(("failed", video_id))
        self.errors[video_id] = error


def run_fake(
    batching: Batching, *, decode_delay: float, encode_delay: float, lengths: list[int]
) -> tuple[ExtractPipeline, ListSink]:
    bases = np.cumsum([0, *lengths])
    videos = {f"v{i}": FakeVideo(int(bases[i]), n, 2, decode_delay) for i, n in enumerate(lengths)}
    sink = ListSink()
    pipe = ExtractPipeline(
        FakeEncoder(encode_delay),
        sink,
        decode=DecodeOptions(frames_per_call=2, queue_chunks=64),
        batch_frames=8,
        batching=batching,
        source=lambda task, size: videos[task.video_id],
    )
    pipe.run([VideoTask(vid, Path(vid)) for vid in videos])
    # Every frame reaches the sink once, in order, with its own tokens; each video then finishes.
    for i, vid in enumerate(videos):
        assert sink.frames[vid] == list(range(bases[i], bases[i + 1])), vid
    assert sink.events == [("done", vid) for vid in videos]
    assert sum(pipe.batch_sizes) == sum(lengths) and max(pipe.batch_sizes) <= 8
    return pipe, sink


def test_dynamic_batching_does_not_wait_for_a_full_batch_when_decode_is_slow() -> None:
    pipe, _ = run_fake("dynamic", decode_delay=0.2, encode_delay=0.0, lengths=[7, 12, 1])
    # The encoder is free and nothing more is decoded: each chunk is encoded as it arrives.
    assert pipe.batch_sizes[0] <= 2 < pipe.batch_frames
    assert len(pipe.batch_sizes) > 20 // 8 + 1


def test_dynamic_batching_fills_batches_when_the_encoder_is_the_bottleneck() -> None:
    pipe, _ = run_fake("dynamic", decode_delay=0.0, encode_delay=0.05, lengths=[30, 3, 31])
    full = sum(b == pipe.batch_frames for b in pipe.batch_sizes)
    assert full >= 64 // 8 - 2, pipe.batch_sizes  # at most the first and the last are short


def test_fixed_batching_is_independent_of_timing() -> None:
    sizes = [
        list(run_fake("fixed", decode_delay=d, encode_delay=e, lengths=[7, 12, 1])[0].batch_sizes)
        for d, e in ((0.02, 0.0), (0.0, 0.02))
    ]
    # Exactly batch_frames frames per encoder call (a chunk that overfills a batch is split),
    # the rest in the last: the same batches however fast either side is.
    assert sizes[0] == sizes[1] == [8, 8, 4], sizes


def test_batching_is_checked() -> None:
    with pytest.raises(ValueError, match="batching must be"):
        ExtractPipeline(FakeEncoder(0.0), ListSink(), decode=DecodeOptions(), batching="eager")  # type: ignore[arg-type]


def test_dynamic_and_fixed_tokens_agree_on_a_real_video(tmp_path: Path, tiny_siglip: Path) -> None:
    path = make_video(tmp_path / "v.mp4", seconds=6.0, width=80, height=48).path
    encoder = build_encoder(SiglipConfig(pretrained=str(tiny_siglip)))
    got = {}
    for mode in ("dynamic", "fixed"):
        sink = ArraySink()
        pipe = ExtractPipeline(
            encoder, sink, decode=DecodeOptions(frames_per_call=3), batch_frames=5, batching=mode
        )
        pipe.run([VideoTask("v", path)])
        got[mode] = np.concatenate(sink.tokens)
    assert got["fixed"].shape == (12, 10, 64)
    # Batch composition moves the float16 values by rounding only.
    np.testing.assert_allclose(got["dynamic"], got["fixed"], rtol=2e-3, atol=2e-3)


class ArraySink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[np.ndarray] = []

    def write(self, video_id: str, tokens: np.ndarray, pts_seconds: np.ndarray) -> None:
        self.tokens.append(tokens)


class ScaledEncoder(FakeEncoder):
    """Token = pixel value x ``scale`` (NaN where ``scale`` is NaN)."""

    def __init__(self, scale: float) -> None:
        super().__init__(0.0)
        self.scale = scale

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return super().encode(pixels) * self.scale


@pytest.mark.parametrize(
    ("scale", "dtype", "failed", "why"),
    [
        # v0's values reach 6e4 (finite in float16), v1's 7e4 and more overflow it
        (1e4, "float16", ["v1"], "non-finite token values after casting to float16"),
        (1e4, "bfloat16", [], ""),  # bfloat16 keeps float32's range
        (float("nan"), "bfloat16", ["v0", "v1"], "the encoder returned non-finite token values"),
    ],
)
def test_non_finite_tokens_fail_their_video_only(
    scale: float, dtype: str, failed: list, why: str
) -> None:
    videos = {"v0": FakeVideo(0, 7, 2, 0.0), "v1": FakeVideo(7, 5, 2, 0.0)}
    sink = ListSink()
    ExtractPipeline(
        ScaledEncoder(scale),
        sink,
        decode=DecodeOptions(frames_per_call=2),
        batch_frames=4,
        batching="fixed",
        out_dtype=dtype,  # type: ignore[arg-type]
        source=lambda task, size: videos[task.video_id],
    ).run([VideoTask(vid, Path(vid)) for vid in videos])
    assert sorted(v for kind, v in sink.events if kind == "failed") == failed
    assert sorted(v for kind, v in sink.events if kind == "done") == sorted(
        set(videos) - set(failed)
    )
    assert all(e.startswith(why) for e in sink.errors.values()), sink.errors
