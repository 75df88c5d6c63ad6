"""Load a LIVE checkpoint for inference in either layout: ours (``models.live.save_trainable``)
or VideoLLM-online's released one (``models.videollm_online``). The one module that knows both,
so neither of them imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.live import CONFIG_FILE, LiveModel, load_trainable
from models.videollm_online import is_videollm_online, load_videollm_online, resolve


def load_checkpoint(
    ref: str | Path,
    *,
    llm: str | None = None,
    frame_tokens: int | None = None,
    llm_key: str = "job.llm",
) -> tuple[LiveModel, Any]:
    """A checkpoint for inference, in either layout: ours (``save_trainable``) or
    VideoLLM-online's released one (a directory or a hub id; ``frame_tokens``: the store's
    tokens per frame, used when the checkpoint's name does not tell): models.videollm_online.
    It loads whole or not at all: missing, extra or mis-shaped tensors are refused, naming them;
    errors name ``job.adapter`` and ``llm_key`` (the setting that overrides the base LLM)."""
    path = Path(ref).expanduser()
    if not (path / CONFIG_FILE).is_file():
        path = resolve(ref)
        if is_videollm_online(path):
            return load_videollm_online(ref, llm=llm, frame_tokens=frame_tokens, llm_key=llm_key)
    return load_trainable(path, llm=llm, llm_key=llm_key)
