from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.tiny import save_tiny_llm


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These models are tiny: with 2 intra-op threads on a shared 2-core machine a training step
    was 25x slower than with 1 (threads wait on each other), so pin 1 and restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llm_llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with Llama-3's pre-tokenizer, which makes ``]\\n`` one token."""
    return save_tiny_llm(tmp_path_factory.mktemp("llm3") / "tiny-llama3", style="llama3")


@pytest.fixture(scope="session")
def tokenizer(tiny_llm: Path) -> Any:
    """The tokenizer ``build_live`` returns for ``tiny_llm`` (``<v>`` added)."""
    from models.live import LiveConfig, build_live

    return build_live(LiveConfig(llm=str(tiny_llm), vision_dim=8, frame_tokens=2, lora_r=2))[1]
