"""Annotations + a feature store -> training samples: which annotations (:class:`DataConfig`), at
the store's frame rate (:func:`store_fps`), each sample reading only its window of frames."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from cache import Store, open_store, read_store_attrs
from data.align import frames_for_window, on_grid, turn_frame_index
from data.chat import read_chat
from data.coin import read_coin
from data.ego4d import ego4d_split_uids, read_ego4d_narrations
from data.types import AssistantTurn, Conversation, StreamSample, StreamTurn, UserTurn

log = logging.getLogger(__name__)

DataFormat = Literal["ego4d_narration", "coin", "chat"]
FORMATS: tuple[str, ...] = ("ego4d_narration", "coin", "chat")
DEFAULT_FILES = {"ego4d_narration": "all_narrations_redacted.json", "coin": "COIN.json"}


@dataclass(frozen=True)
class DataConfig:
    """Which annotations to train on. ``annotations`` is the file, or a folder holding the
    format's usual file name. ``split``: COIN's subset (training/testing); for Ego4D the uids
    listed in ``split_files`` (other Ego4D benchmark files) are kept (``split=keep``) or
    dropped (``split=exclude``, the train split). ``window_frames`` caps a sample's window, in
    frames of the store (whose rate, not this config, decides the times: :func:`store_fps`)."""

    format: DataFormat
    annotations: str
    split: str | None = None
    split_files: tuple[str, ...] = ()
    window_frames: int = 1200
    refined: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r}; valid: {FORMATS}")
        object.__setattr__(self, "split_files", tuple(self.split_files))


def store_fps(store: str | Path | Store) -> float:
    """The frame rate the store sampled its frames at: its ``features.fps`` (``job=extract``
    records it), else the one ``fps`` that all its done videos record."""
    attrs = store.attrs if isinstance(store, Store) else read_store_attrs(store)
    root = store.root if isinstance(store, Store) else store
    fps = attrs.get("features", {}).get("fps")
    if fps is None:
        index = store if isinstance(store, Store) else open_store(store)
        rates = {e.record.get("fps") for e in index.index.videos.values() if e.status == "done"}
        if len(rates) != 1:
            raise ValueError(
                f"store {str(root)!r} records no frame rate: no features.fps, and its done videos"
                f" record fps {sorted(rates, key=str)} (need exactly one)"
            )
        fps = rates.pop()
    if (
        isinstance(fps, bool)
        or not isinstance(fps, int | float)
        or not (math.isfinite(fps) and fps > 0)
    ):
        raise ValueError(f"store {str(root)!r} records fps={fps!r}, not a frame rate > 0")
    return float(fps)


def read_samples(cfg: DataConfig, *, fps: float) -> list[StreamSample]:
    """Read the annotations into timed samples on the frame grid of ``fps`` (the store's:
    :func:`store_fps`), in windows of at most ``cfg.window_frames`` frames."""
    path = Path(cfg.annotations).expanduser()
    if path.is_dir() and cfg.format in DEFAULT_FILES:
        path = path / DEFAULT_FILES[cfg.format]
    if not path.exists():
        raise FileNotFoundError(f"data.annotations={cfg.annotations!r}: {path} does not exist")
    if cfg.format == "ego4d_narration":
        uids = ego4d_split_uids(cfg.split_files) if cfg.split_files else None
        keep = uids if cfg.split in (None, "keep") else None
        exclude = uids if cfg.split == "exclude" else None
        return read_ego4d_narrations(
            path,
            fps=fps,
            split_uids=keep,
            exclude_uids=exclude,
            refined=cfg.refined,
            window_frames=cfg.window_frames,
        )
    if cfg.format == "coin":
        subset = {"train": "training", "val": "testing", "test": "testing"}.get(
            cfg.split or "", cfg.split
        )
        return read_coin(path, subset=subset, fps=fps, window_frames=cfg.window_frames)  # type: ignore[arg-type]
    return read_chat(path, fps=fps, window_frames=cfg.window_frames)


def to_conversation(
    sample: StreamSample, pts_seconds: np.ndarray, lo: int, hi: int
) -> Conversation:
    """Interleave the window's frames ``[lo, hi)`` with the sample's turns: a turn at time t comes
    right after the last frame on screen at t. Every stream run is learned (the model learns when
    to stay silent and when to speak); turns keep their own ``learn`` flags."""
    turns: list[StreamTurn | UserTurn | AssistantTurn] = []
    cursor = lo
    for t in sample.turns:
        end = min(max(turn_frame_index(pts_seconds, t.time_seconds) + 1, lo), hi)
        if end > cursor:
            turns.append(StreamTurn(end - cursor, learn=True))
            cursor = end
        if t.role == "user":
            turns.append(UserTurn(t.text))
        else:
            turns.append(AssistantTurn(t.text, learn=t.learn))
    if hi > cursor:
        turns.append(StreamTurn(hi - cursor, learn=True))
    return Conversation(turns=turns, system=sample.system)


class Encoded(Protocol):
    """What ``encode`` returns (``models.prompt.EncodedSample`` is one)."""

    @property
    def input_ids(self) -> torch.Tensor: ...
    @property
    def labels(self) -> torch.Tensor: ...
    @property
    def weights(self) -> torch.Tensor: ...


def check_on_grid(samples: list[StreamSample], fps: float, store: str | Path) -> None:
    """Refuse samples whose windows are not on the store's frame grid ``k / fps``: they were
    read at another frame rate, and their windows cannot be cut from the store's frames."""
    for s in samples:
        if not (on_grid(s.start_seconds, fps) and on_grid(s.stop_seconds, fps)):
            raise ValueError(
                f"sample {s.sample_id!r}: its window [{s.start_seconds}, {s.stop_seconds}) s is"
                f" not on the frame grid of store {str(store)!r}, which holds frames at"
                f" {fps:g} fps: the annotations were read at another frame rate; read them at"
                f" the store's (read_samples(cfg, fps=store_fps(store)))"
            )


class StreamDataset(torch.utils.data.Dataset):
    """Samples whose frames come from the store, one window each (never the whole video).

    ``encode`` turns a sample's :class:`Conversation` into token ids, labels and loss weights
    (the model's prompt: jobs pass ``models.prompt.encode_conversation`` with the tokenizer).
    The samples must be on the store's frame grid (read at :func:`store_fps`). Videos missing
    from the store or failed there are reported once and skipped."""

    def __init__(
        self,
        store: str | Path | Store,
        samples: list[StreamSample],
        encode: Callable[[Conversation], Encoded],
    ) -> None:
        index = store if isinstance(store, Store) else open_store(store)
        self.store_path = str(index.root)
        self.fps = store_fps(index)
        check_on_grid(samples, self.fps, self.store_path)
        done = set(index.video_ids(status="done"))
        missing = sorted({s.video_id for s in samples} - done)
        if missing:
            log.warning(
                "%d of %d annotated videos are not done in %s; skipping their samples (e.g. %s)",
                len(missing),
                len({s.video_id for s in samples}),
                self.store_path,
                ", ".join(missing[:5]),
            )
        self.samples = [s for s in samples if s.video_id in done]
        if not self.samples:
            raise ValueError(
                f"no annotated video is done in {self.store_path}: nothing to train on"
            )
        self.encode = encode
        self._index = index.index  # reused by the workers: journals are read once
        self._store: Any = None  # opened lazily in each DataLoader worker (its own arrays)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._store is None:
            self._store = Store(self.store_path, index=self._index)
        s = self.samples[i]
        pts = self._store.pts_seconds(s.video_id)
        lo, hi = frames_for_window(pts, s.start_seconds, s.stop_seconds, fps=self.fps)
        enc = self.encode(to_conversation(s, pts, lo, hi))
        tokens, _ = self._store.read(s.video_id, lo, hi)
        return {
            "sample_id": s.sample_id,
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "weights": enc.weights,
            "frames": torch.from_numpy(tokens.astype(np.float32)),
            "encoded": enc,  # the positions evaluation needs
        }
