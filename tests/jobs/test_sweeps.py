from __future__ import annotations

from pathlib import Path

from cache import open_store
from extract.samples import make_video
from tests.jobs.cli import run_cli


def test_hydra_sweep_with_the_local_launcher(tmp_path: Path, tiny_siglip: Path) -> None:
    (tmp_path / "videos").mkdir()
    make_video(tmp_path / "videos" / "a.mp4", seconds=1.0, width=64, height=48)
    r = run_cli(
        "-m",
        "hydra/launcher=local",
        "job=extract",
        f"videos={tmp_path / 'videos'}",
        f"encoder.pretrained={tiny_siglip}",
        "store=${hydra:sweep.dir}/pool${encoder.pool}.zarr",
        "encoder.pool=0,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "job.progress=false",
        hydra_dir=tmp_path / "h",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert open_store(tmp_path / "sweep" / "pool0.zarr").read("a")[0].shape == (2, 1, 64)
    assert open_store(tmp_path / "sweep" / "pool2.zarr").read("a")[0].shape == (2, 5, 64)
