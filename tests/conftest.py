from __future__ import annotations

import os

# No model hub is reachable from tests: fail hub lookups at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

from tests.models import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))
