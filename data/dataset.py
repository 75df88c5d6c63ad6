"""Annotations + a feature store -> training samples: which annotations (:class:`DataConfig`), at
the store's frame rate (:func:`store_fps`), each sample reading only its window of frames."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from cache import Store, open_store, read_store_attrs
from data.align import frames_for_window, on_grid, turn_frame_index
from data.benchmarks import (
    NOT_DONE_IN_STORE,
    NOT_IN_STORE,
    BenchmarkDataset,
    BenchmarkSet,
    stored_frames,
)
from data.chat import read_chat
from data.coin import read_coin
from data.ego4d import ego4d_split_uids, read_ego4d_narrations
from data.types import AssistantTurn, Conversation, StreamSample, StreamTurn, UserTurn

log = logging.getLogger(__name__)

DataFormat = Literal["ego4d_narration", "coin", "chat", "coin_benchmarks", "ego4d_lta"]
FORMATS: tuple[str, ...] = ("ego4d_narration", "coin", "chat", "coin_benchmarks", "ego4d_lta")
#: Formats whose samples are questions answered by generation (data.benchmarks).
BENCHMARK_FORMATS: tuple[str, ...] = ("coin_benchmarks", "ego4d_lta")
DEFAULT_FILES = {
    "ego4d_narration": "all_narrations_redacted.json",
    "coin": "COIN.json",
    "coin_benchmarks": "COIN.json",
}
COIN_TASKS: tuple[str, ...] = ("step", "next", "task", "procedure", "taskprocedure")
PROTOCOLS: tuple[str, ...] = ("videollm_online", "providellm")


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
    tasks: tuple[str, ...] = COIN_TASKS  # coin_benchmarks: which of the five tasks
    protocol: str = "videollm_online"  # coin_benchmarks: videollm_online | providellm
    num_samples: int = 8  # coin_benchmarks, protocol=providellm: frames sampled per question

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r}; valid: {FORMATS}")
        object.__setattr__(self, "split_files", tuple(self.split_files))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        unknown = [t for t in self.tasks if t not in COIN_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"data.tasks={list(self.tasks)}: each must be one of {COIN_TASKS}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol={self.protocol!r}; valid: {PROTOCOLS}")
        if self.num_samples < 1:
            raise ValueError(f"data.num_samples must be >= 1, got {self.num_samples}")
        if self.window_frames < 1:
            raise ValueError(f"data.window_frames must be >= 1, got {self.window_frames}")

    @property
    def is_benchmark(self) -> bool:
        """Questions answered by generation (COIN benchmarks, Ego4D LTA), not streams."""
        return self.format in BENCHMARK_FORMATS


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


def read_benchmarks(cfg: DataConfig, store: Store) -> BenchmarkSet:
    """Read a benchmark format's annotations (``data=coin_benchmarks``, ``data=ego4d_lta``) into
    questions over the store's frames (the reference derives each video's duration from its
    stored frames, so the store is needed here)."""
    from data.coin_benchmarks import read_coin_benchmarks
    from data.ego4d_lta import read_ego4d_lta

    if not cfg.is_benchmark:
        raise ValueError(f"data.format={cfg.format!r} is not a benchmark: use read_samples")
    path = Path(cfg.annotations).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.annotations={cfg.annotations!r}: {path} does not exist")
    fps, frames = store_fps(store), stored_frames(store)
    if cfg.format == "ego4d_lta":
        return read_ego4d_lta(
            path, split=cfg.split or "val", fps=fps, frames=frames, window_frames=cfg.window_frames
        )
    if path.is_dir():
        path = path / DEFAULT_FILES[cfg.format]
        if not path.exists():
            raise FileNotFoundError(f"data.annotations={cfg.annotations!r}: {path} does not exist")
    split = {"training": "train", "testing": "test", "val": "test"}.get(cfg.split or "", cfg.split)
    if split not in ("train", "test"):
        raise ValueError(f"data.split={cfg.split!r}: coin_benchmarks has splits train and test")
    return read_coin_benchmarks(
        path,
        split="train" if split == "train" else "test",
        tasks=cfg.tasks,
        protocol=cfg.protocol,
        fps=fps,
        frames=frames,
        window_frames=cfg.window_frames,
        num_samples=cfg.num_samples,
    )


def read_samples(cfg: DataConfig, *, fps: float) -> list[StreamSample]:
    """Read the annotations into timed samples on the frame grid of ``fps`` (the store's:
    :func:`store_fps`), in windows of at most ``cfg.window_frames`` frames."""
    if cfg.is_benchmark:
        raise ValueError(
            f"data.format={cfg.format!r} holds questions answered by generation, not streams:"
            " use read_benchmarks"
        )
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
    (the model's prompt: jobs pass ``models.prompt.encode_conversation`` with the tokenizer;
    None builds a dataset that only selects and counts samples).
    The samples must be on the store's frame grid (read at :func:`store_fps`). Samples the
    store cannot serve whole are skipped or adjusted, counted by reason (``skipped``,
    ``adjusted``, logged once): no sample is ever used with zero frames."""

    def __init__(
        self,
        store: str | Path | Store,
        samples: list[StreamSample],
        encode: Callable[[Conversation], Encoded] | None,
    ) -> None:
        index = store if isinstance(store, Store) else open_store(store)
        self.store_path = str(index.root)
        self.fps = store_fps(index)
        check_on_grid(samples, self.fps, self.store_path)
        self.skipped: Counter[str] = Counter()
        self.adjusted: Counter[str] = Counter()
        self.samples = self._inside_videos(index, samples)
        self.built = len(samples)
        for reason, n in sorted({**self.skipped, **self.adjusted}.items()):
            log.warning("%s: %d samples: %s", self.store_path, n, reason)
        if not self.samples:
            raise ValueError(
                f"no annotated sample has frames in {self.store_path}: nothing to use"
                f" ({', '.join(f'{n} x {r}' for r, n in self.skipped.items()) or 'no samples'})"
            )
        self.encode = encode
        self._index = index.index  # reused by the workers: journals are read once
        self._store: Any = None  # opened lazily in each DataLoader worker (its own arrays)

    def _inside_videos(self, index: Store, samples: list[StreamSample]) -> list[StreamSample]:
        """The samples the store can serve whole: a video not done in the store, or a window
        with no stored frame, skips its sample; a turn after the video's last stored frame is
        dropped (never moved onto the last frame), and a sample left with no assistant turn is
        skipped. Every skip and adjustment is counted in ``skipped`` / ``adjusted``."""
        done = set(index.video_ids(status="done"))
        pts_of: dict[str, np.ndarray] = {}
        kept = []
        for s in samples:
            if s.video_id not in done:
                in_index = s.video_id in index.index.videos
                self.skipped[NOT_DONE_IN_STORE if in_index else NOT_IN_STORE] += 1
                continue
            if s.video_id not in pts_of:
                pts_of[s.video_id] = index.pts_seconds(s.video_id)
            pts = pts_of[s.video_id]
            lo, hi = frames_for_window(pts, s.start_seconds, s.stop_seconds, fps=self.fps)
            if hi <= lo:
                self.skipped["window outside the video's stored frames"] += 1
                continue
            # A turn needs the frame sampled at its time (the first of a window starting there).
            step = 1.0 / self.fps
            turns = tuple(
                t
                for t in s.turns
                if frames_for_window(pts, t.time_seconds, t.time_seconds + step, fps=self.fps)[0]
                < hi
            )
            if len(turns) < len(s.turns):
                self.adjusted["turns after the video's last stored frame dropped"] += len(
                    s.turns
                ) - len(turns)
                if not any(t.role == "assistant" for t in turns):
                    self.skipped["no reply inside the video's stored frames"] += 1
                    continue
                s = replace(s, turns=turns)
            kept.append(s)
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._store is None:
            self._store = Store(self.store_path, index=self._index)
        s = self.samples[i]
        pts = self._store.pts_seconds(s.video_id)
        lo, hi = frames_for_window(pts, s.start_seconds, s.stop_seconds, fps=self.fps)
        if self.encode is None:
            raise ValueError("this StreamDataset was built without encode: it only counts samples")
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


def build_dataset(
    cfg: DataConfig, store: str | Path | Store, encode: Callable[[Conversation], Encoded]
) -> StreamDataset | BenchmarkDataset:
    """The training dataset of ``cfg`` over ``store``: streams (:class:`StreamDataset`) or, for a
    benchmark format, its questions with their answers learned (:class:`BenchmarkDataset`; the
    skipped entries are logged with their reasons and counts)."""
    index = store if isinstance(store, Store) else open_store(store)
    if not cfg.is_benchmark:
        return StreamDataset(index, read_samples(cfg, fps=store_fps(index)), encode)
    found = read_benchmarks(cfg, index)
    usable = [s for s in found.samples if s.answer is not None and s.num_frames > 0]
    dropped = len(found.samples) - len(usable)
    for reason, n in sorted({**found.skipped, **found.adjusted}.items()):
        log.info("train: %d x %s", n, reason)
    if dropped:
        log.info("train: %d questions with no frames or no answer are not trained on", dropped)
    if not usable:
        raise ValueError(f"no {cfg.format} question can be trained on from {index.root}")
    return BenchmarkDataset(index, usable, encode, with_answer=True)
