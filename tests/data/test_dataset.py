"""The frame rate of training samples comes from the store (data/dataset.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from cache import ShardWriter, StoreLayout, init_store
from data import Conversation, DataConfig, StreamDataset, StreamTurn, read_samples, store_fps

N, D = 2, 4


def make_store(root: Path, fps: dict[str, float], features: dict[str, object]) -> Path:
    """Videos of 6 s whose frames are sampled at ``fps[video]`` (frame k at k / fps)."""
    init_store(root, layout=StoreLayout(N, D), features=features, provenance={})
    with ShardWriter(root, 0) as w:
        for vid, rate in fps.items():
            n = round(6 * rate)
            w.start(vid)
            w.write(vid, np.zeros((n, N, D), np.float16), np.arange(n) / rate)
            w.finish(vid, {"num_frames": n, "fps": rate})
    return root


def write_chat(path: Path, video: str) -> Path:
    """A question at 0 s and replies at 2.2 s and 3.8 s (on no frame grid)."""
    conversation = [
        {"role": "user", "content": "What is happening?", "time": 0.0},
        {"role": "assistant", "content": "Something.", "time": 2.2},
        {"role": "assistant", "content": "Something else.", "time": 3.8},
    ]
    path.write_text(json.dumps([{"video_uid": video, "conversation": conversation}]))
    return path


def recording_encoder(seen: list[Conversation]) -> Callable[[Conversation], Any]:
    """An ``encode`` that keeps the conversations it is given (no tokenizer needed)."""

    def encode(conv: Conversation) -> SimpleNamespace:
        seen.append(conv)
        empty = torch.zeros(1)
        return SimpleNamespace(input_ids=empty, labels=empty, weights=empty)

    return encode


def test_store_fps_comes_from_the_features_else_from_the_videos(tmp_path: Path) -> None:
    one = make_store(tmp_path / "one.zarr", {"v": 1.0}, {"encoder": "x", "fps": 1.0})
    assert store_fps(one) == store_fps(str(one)) == 1.0
    # A store written without features.fps: every done video records the same rate.
    per_video = make_store(tmp_path / "per_video.zarr", {"a": 2.0, "b": 2.0}, {"encoder": "x"})
    assert store_fps(per_video) == 2.0
    mixed = make_store(tmp_path / "mixed.zarr", {"a": 1.0, "b": 2.0}, {"encoder": "x"})
    with pytest.raises(ValueError, match=r"mixed\.zarr' records no frame rate.*\[1\.0, 2\.0\]"):
        store_fps(mixed)


def test_a_1_fps_store_aligns_annotations_at_1_fps(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"v": 1.0}, {"encoder": "x", "fps": 1.0})
    cfg = DataConfig(format="chat", annotations=str(write_chat(tmp_path / "chat.json", "v")))
    (sample,) = read_samples(cfg, fps=store_fps(store))
    # Replies rounded up to the 1 FPS grid: 2.2 s -> 3 s, 3.8 s -> 4 s; the window ends after 4 s.
    assert [t.time_seconds for t in sample.turns] == [0.0, 3.0, 4.0]
    assert (sample.start_seconds, sample.stop_seconds) == (0.0, 5.0)
    seen: list[Conversation] = []
    ds = StreamDataset(str(store), [sample], recording_encoder(seen))
    assert ds.fps == 1.0 and len(ds[0]["frames"]) == 5
    # Frame k is the one at k s: the question follows frame 0, the replies frames 3 and 4.
    runs = [t.num_frames for t in seen[0].turns if isinstance(t, StreamTurn)]
    assert runs == [1, 3, 1]


def test_samples_read_at_another_rate_are_refused_naming_the_store_fps(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"v": 1.0}, {"encoder": "x", "fps": 1.0})
    cfg = DataConfig(format="chat", annotations=str(write_chat(tmp_path / "chat.json", "v")))
    at_2_fps = read_samples(cfg, fps=2.0)  # window [0, 4.5) s: not on the 1 FPS grid
    assert at_2_fps[0].stop_seconds == 4.5
    with pytest.raises(ValueError, match=r"not on the frame grid of store .*s\.zarr.* at 1 fps"):
        StreamDataset(str(store), at_2_fps, recording_encoder([]))
