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
