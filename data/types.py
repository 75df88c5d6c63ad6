"""The data layer's types: timed samples read from annotations, and the conversations (frame runs,
user and assistant turns) that the prompt renders. Times and their rounding: docs/data.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")

#: VideoLLM-online's default system prompt (``models/arguments_live.py``).
LIVE_SYSTEM_PROMPT = (
    "A multimodal AI assistant is helping users with some activities. Below is their"
    " conversation, interleaved with the list of video frames received by the assistant."
)


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the offending entry."""


# ---------------------------------------------------------------------------------------------
# Timed samples (what the annotation readers return)


@dataclass(frozen=True)
class TimedTurn:
    """One dialogue turn at ``time_seconds`` (absolute, in the video's timeline).

    ``learn`` says whether the turn's text carries the language-modelling loss."""

    role: Role
    text: str
    time_seconds: float
    learn: bool = True

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"TimedTurn.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"TimedTurn.text must be a str, got {self.text!r}")
        if not (math.isfinite(self.time_seconds) and self.time_seconds >= 0):
            raise ValueError(
                f"TimedTurn.time_seconds must be finite and >= 0, got {self.time_seconds}"
            )
        if not isinstance(self.learn, bool):
            raise TypeError(f"TimedTurn.learn must be a bool, got {self.learn!r}")


@dataclass(frozen=True)
class StreamSample:
    """The window ``[start_seconds, stop_seconds)`` of video ``video_id`` whose frames the model
    sees, the dialogue ``turns`` at their times (sorted, inside the window) and the system text."""

    sample_id: str
    video_id: str
    start_seconds: float
    stop_seconds: float
    turns: tuple[TimedTurn, ...]
    system: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_seconds) and 0 <= self.start_seconds < self.stop_seconds):
            raise ValueError(
                f"StreamSample {self.sample_id!r}: need 0 <= start_seconds < stop_seconds, got"
                f" [{self.start_seconds}, {self.stop_seconds})"
            )
        last = self.start_seconds
        for i, turn in enumerate(self.turns):
            if not isinstance(turn, TimedTurn):
                raise TypeError(f"StreamSample {self.sample_id!r}: turn {i} is not a TimedTurn")
            if not (last <= turn.time_seconds < self.stop_seconds):
                raise ValueError(
                    f"StreamSample {self.sample_id!r}: turn {i} at {turn.time_seconds} s is out of"
                    f" order or outside [{self.start_seconds}, {self.stop_seconds})"
                )
            last = turn.time_seconds


# ---------------------------------------------------------------------------------------------
# Conversations (what the prompt renders; frames counted, no longer timed)


@dataclass(frozen=True)
class StreamTurn:
    """A run of ``num_frames`` frames. ``learn`` is True/False, or (as in VideoLLM-online's
    augmentation) an int: only the first ``learn`` frames carry the stream loss."""

    num_frames: int
    learn: bool | int

    def __post_init__(self) -> None:
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int):
            raise TypeError(f"StreamTurn.num_frames must be an int, got {self.num_frames!r}")
        if self.num_frames < 0:
            raise ValueError(f"StreamTurn.num_frames must be >= 0, got {self.num_frames}")
        if not isinstance(self.learn, bool) and not (
            isinstance(self.learn, int) and 0 <= self.learn <= self.num_frames
        ):
            raise ValueError(
                f"StreamTurn.learn must be a bool or an int in [0, num_frames={self.num_frames}],"
                f" got {self.learn!r}"
            )

    @property
    def learned_frames(self) -> int:
        """How many leading frames of this turn carry the stream loss."""
        if isinstance(self.learn, bool):
            return self.num_frames if self.learn else 0
        return self.learn


@dataclass(frozen=True)
class UserTurn:
    """A user message; never learned."""

    text: str


@dataclass(frozen=True)
class AssistantTurn:
    """An assistant reply; ``learn`` says whether ``Assistant: {text}{eos}`` carries the LM loss."""

    text: str
    learn: bool


Turn = StreamTurn | UserTurn | AssistantTurn


@dataclass
class Conversation:
    """A system prompt followed by stream, user and assistant turns in time order."""

    turns: list[Turn]
    system: str

    def __post_init__(self) -> None:
        for turn in self.turns:
            if not isinstance(turn, StreamTurn | UserTurn | AssistantTurn):
                raise TypeError(
                    f"Conversation turns must be StreamTurn, UserTurn or AssistantTurn,"
                    f" got {turn!r}"
                )

    @property
    def num_frames(self) -> int:
        """Total frames over all stream turns (the number of feature rows the sample needs)."""
        return sum(t.num_frames for t in self.turns if isinstance(t, StreamTurn))


def conversation_from_messages(
    messages: Sequence[Mapping[str, Any]], *, system: str
) -> Conversation:
    """Build a :class:`Conversation` from VideoLLM-online's message dicts: ``{"role": "stream",
    "num_frames": n, "learn": ...}``, ``{"role": "user", "content": s}``, ``{"role": "assistant",
    "content": s, "learn": ...}`` (a missing ``learn`` means False, as in the reference; other keys
    such as ``time`` are ignored). A leading ``{"role": "system"}`` message overrides ``system``."""
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "system" and i == 0:
            system = str(m["content"])
        elif role == "stream":
            turns.append(StreamTurn(int(m["num_frames"]), m.get("learn", False)))
        elif role == "user":
            turns.append(UserTurn(str(m["content"])))
        elif role == "assistant":
            turns.append(AssistantTurn(str(m["content"]), bool(m.get("learn", False))))
        else:
            raise ValueError(
                f"message {i} has role {role!r}; valid roles: 'stream', 'user', 'assistant'"
                " (and 'system' as the first message)"
            )
    return Conversation(turns=turns, system=system)
