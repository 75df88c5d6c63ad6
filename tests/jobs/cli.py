"""Run ``run.py`` as users do, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *overrides: str,
    hydra_dir: Path,
    timeout: float = 600,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "run.py"), *overrides, f"hydra.run.dir={hydra_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, **kwargs
    )  # type: ignore[call-overload]


def make_videos(d: Path, n: int, seconds: float) -> Path:
    """``n`` small test videos ``d/v0.mp4`` ... (64x48, 30 fps); returns ``d``."""
    from extract.samples import make_video

    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(d / f"v{i}.mp4", seconds=seconds, width=64, height=48)
    return d
