from __future__ import annotations

import os

# No model hub is reachable from tests: fail hub lookups at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from extract.tiny import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer (GPT-2 pre-tokenizer: ``]`` and ``\\n``
    are separate tokens) saved like a hub checkpoint."""
    from models.tiny import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A real SLURM on localhost (scripts/slurm/up.sh). Fails loudly, never skips: CI must
    notice when SLURM cannot start. At the end, stops every service this session started:
    the SLURM daemons, and munged and MariaDB too when they were not running before."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def running(name: str) -> bool:
        return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0

    was_up = shutil.which("sinfo") is not None and (
        subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode == 0
    )
    helpers_up = {"--munge": running("munged"), "--mariadb": running("mariadbd")}
    up = subprocess.run(
        ["bash", str(root / "scripts" / "slurm" / "up.sh")], capture_output=True, text=True
    )
    if up.returncode != 0:
        pytest.fail(f"SLURM did not start:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    yield
    if not was_up:
        down = [flag for flag, was in helpers_up.items() if not was]
        subprocess.run(
            ["bash", str(root / "scripts" / "slurm" / "down.sh"), *down], capture_output=True
        )
