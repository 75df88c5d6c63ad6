"""Benchmark samples (COIN's five tasks, Ego4D LTA): a question over a window of a video's stored
frames, the reference answer, and the label(s) a generated answer is scored against.

The readers (``data.coin_benchmarks``, ``data.ego4d_lta``) build them from annotations and the
store's frame counts; :class:`BenchmarkDataset` reads each sample's frames from the store for
training (question, frames, learned answer) and evaluation by generation (question, frames, then
the generation prompt). Rules and their sources: docs/benchmarks.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache import Store, open_store
from data.types import AssistantTurn, Conversation, StreamTurn, UserTurn

log = logging.getLogger(__name__)

#: Skip reasons every reader uses for a video the store cannot serve.
NOT_IN_STORE = "video not in the store"
NOT_DONE_IN_STORE = "video failed (or unfinished) in the store"


@dataclass(frozen=True)
class BenchmarkSample:
    """One benchmark question.

    The frames are the store's frames ``[first_frame, stop_frame)`` of ``video_id`` (an empty
    range when the reference drops the stream, e.g. over the frame cap), or, when
    ``frame_indices`` is set (sampled protocols), exactly those frames (sorted, inside the range).
    ``answer`` is the reference's response (the training target; None where the split has no
    labels); ``labels`` what the metric compares with (COIN: lower-case step or task texts; LTA:
    ``"verb_id noun_id"`` strings, empty on ``test_unannotated``); ``meta`` anything else a
    result line or a metric needs (LTA: ``clip_uid``, ``last_visible_action_idx``)."""

    sample_id: str
    task: str
    video_id: str
    first_frame: int
    stop_frame: int
    question: str
    answer: str | None
    labels: tuple[str, ...]
    system: str
    frame_indices: tuple[int, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.first_frame <= self.stop_frame):
            raise ValueError(
                f"BenchmarkSample {self.sample_id!r}: need 0 <= first_frame <= stop_frame, got"
                f" [{self.first_frame}, {self.stop_frame})"
            )
        if self.frame_indices is not None:
            idx = list(self.frame_indices)
            if idx != sorted(idx) or any(
                not (self.first_frame <= i < self.stop_frame) for i in idx
            ):
                raise ValueError(
                    f"BenchmarkSample {self.sample_id!r}: frame_indices must be sorted and inside"
                    f" [{self.first_frame}, {self.stop_frame})"
                )

    @property
    def num_frames(self) -> int:
        """How many frames the model sees."""
        if self.frame_indices is not None:
            return len(self.frame_indices)
        return self.stop_frame - self.first_frame

    def conversation(self, *, with_answer: bool) -> Conversation:
        """The reference's layout: the question, then the frames (a learned stream), then the
        answer (learned) when ``with_answer`` (training); without it the prompt ends after the
        frames and generation starts from ``\\nAssistant:``."""
        turns: list[StreamTurn | UserTurn | AssistantTurn] = [
            UserTurn(self.question),
            StreamTurn(self.num_frames, learn=True),
        ]
        if with_answer:
            if self.answer is None:
                raise ValueError(f"sample {self.sample_id!r} has no answer to train on")
            turns.append(AssistantTurn(self.answer, learn=True))
        return Conversation(turns=turns, system=self.system)


@dataclass
class BenchmarkSet:
    """What a reader built: the samples, the categories each task's answers snap to (COIN), the
    taxonomy a parser maps text onto (LTA), and how many entries were skipped or adjusted, by
    reason (every one counted, never dropped in silence)."""

    samples: list[BenchmarkSample]
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    taxonomy: Any = None
    skipped: Counter[str] = field(default_factory=Counter)
    adjusted: Counter[str] = field(default_factory=Counter)


def stored_frames(store: Store) -> dict[str, int | None]:
    """Every indexed video of ``store``: its number of stored frames when done, None when it
    failed (or is unfinished). A video missing here is not in the store at all."""
    out: dict[str, int | None] = {}
    for video_id, entry in store.index.videos.items():
        out[video_id] = int(entry.record.get("num_frames", 0)) if entry.status == "done" else None
    return out


def store_skip_reason(video_id: str, frames: Mapping[str, int | None]) -> str | None:
    """Why a video cannot give samples (:data:`NOT_IN_STORE`, :data:`NOT_DONE_IN_STORE`), or
    None when it is done with at least one frame."""
    if video_id not in frames:
        return NOT_IN_STORE
    n = frames[video_id]
    if n is None or n < 1:
        return NOT_DONE_IN_STORE
    return None


class BenchmarkDataset(torch.utils.data.Dataset):
    """Benchmark samples whose frames come from the store, one window each.

    ``encode`` turns a :class:`Conversation` into token ids, labels and weights
    (``models.prompt.encode_conversation`` with the tokenizer). Items have the keys of
    ``data.StreamDataset``'s: ``sample_id``, ``input_ids``, ``labels``, ``weights``, ``frames``
    (float32, (F, tokens, D)), ``encoded``. ``with_answer=False`` encodes the prompt only
    (``encode`` is then ``models.prompt.encode_prompt``: labels and weights are None)."""

    def __init__(
        self,
        store: str | Path | Store,
        samples: Sequence[BenchmarkSample],
        encode: Callable[[Conversation], Any],
        *,
        with_answer: bool = True,
    ) -> None:
        index = store if isinstance(store, Store) else open_store(store)
        self.store_path = str(index.root)
        self.samples = list(samples)
        self.encode = encode
        self.with_answer = with_answer
        self._index = index.index
        self._store: Any = None

    def __len__(self) -> int:
        return len(self.samples)

    def frames(self, sample: BenchmarkSample) -> torch.Tensor:
        """The sample's frames, float32 (F, tokens, D); F = ``sample.num_frames``."""
        if self._store is None:
            self._store = Store(self.store_path, index=self._index)
        if sample.num_frames == 0:
            layout = self._store.layout
            shape = (0, int(layout["tokens_per_frame"]), int(layout["dim"]))
            return torch.zeros(shape, dtype=torch.float32)
        tokens, _ = self._store.read(sample.video_id, sample.first_frame, sample.stop_frame)
        if sample.frame_indices is not None:
            tokens = tokens[np.asarray(sample.frame_indices) - sample.first_frame]
        return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        enc = self.encode(s.conversation(with_answer=self.with_answer))
        return {
            "sample_id": s.sample_id,
            "input_ids": enc.input_ids,
            "labels": getattr(enc, "labels", None),  # None for a prompt (with_answer=False)
            "weights": getattr(enc, "weights", None),
            "frames": self.frames(s),
            "encoded": enc,
        }
