"""An unreachable ``launcher.address`` fails in seconds with one line (Ray alone retries for
minutes)."""

from __future__ import annotations

import time
from pathlib import Path

from extract.samples import make_video
from tests.jobs.cli import run_cli


def test_unreachable_ray_address_is_one_error_line(tmp_path: Path, tiny_siglip: Path) -> None:
    (tmp_path / "videos").mkdir()
    make_video(tmp_path / "videos" / "a.mp4", seconds=1.0, width=64, height=48)
    t0 = time.monotonic()
    r = run_cli(
        "job=extract",
        f"videos={tmp_path / 'videos'}",
        f"store={tmp_path / 'out.zarr'}",
        f"encoder.pretrained={tiny_siglip}",
        "launcher=ray",
        "launcher.address=127.0.0.1:1",
        hydra_dir=tmp_path / "h",
        timeout=120,
    )
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "launcher.address=127.0.0.1:1" in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and took < 60, (took, r.stderr[-3000:])
