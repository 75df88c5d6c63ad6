"""The data layer, between the feature cache and the model: annotation files -> timed samples
(one module per format) -> conversations aligned with a store's frames. See docs/data.md.

Imports ``cache`` and nothing else of ours (never ``models`` or ``jobs``).
"""

from data.align import frames_for_window, turn_frame_index
from data.benchmarks import BenchmarkDataset, BenchmarkSample, BenchmarkSet
from data.chat import read_chat
from data.coin import read_coin
from data.dataset import (
    DataConfig,
    StreamDataset,
    build_dataset,
    read_benchmarks,
    read_samples,
    store_fps,
    to_conversation,
)
from data.ego4d import clean_narration, ego4d_split_uids, read_ego4d_narrations, to_second_person
from data.types import (
    LIVE_SYSTEM_PROMPT,
    AnnotationError,
    AssistantTurn,
    Conversation,
    StreamSample,
    StreamTurn,
    TimedTurn,
    Turn,
    UserTurn,
    conversation_from_messages,
)

__all__ = [
    "LIVE_SYSTEM_PROMPT",
    "AnnotationError",
    "AssistantTurn",
    "BenchmarkDataset",
    "BenchmarkSample",
    "BenchmarkSet",
    "Conversation",
    "DataConfig",
    "StreamDataset",
    "StreamSample",
    "StreamTurn",
    "TimedTurn",
    "Turn",
    "UserTurn",
    "build_dataset",
    "clean_narration",
    "conversation_from_messages",
    "ego4d_split_uids",
    "frames_for_window",
    "read_benchmarks",
    "read_chat",
    "read_coin",
    "read_ego4d_narrations",
    "read_samples",
    "store_fps",
    "to_conversation",
    "to_second_person",
    "turn_frame_index",
]
