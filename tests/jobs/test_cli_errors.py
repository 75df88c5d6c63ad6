"""A wrong setting or command line is one ``error:`` line and exit 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jobs.cli import run_cli

CASES = {
    "pool-100": ("encoder.pool=100", "encoder.pool"),
    "pool-minus-1": ("encoder.pool=-1", "encoder.pool"),
    "fps-absurd": ("job.decode.fps=1e9", "job.decode.fps"),
    "fps-zero": ("job.decode.fps=0", "job.decode.fps"),
    "fps-not-a-number": ("job.decode.fps=abc", "job.decode.fps"),
    "seek-mode": ("job.decode.seek_mode=bogus", "job.decode.seek_mode"),
    "batch-frames": ("job.batch_frames=0", "job.batch_frames"),
    "frames-per-call": ("job.decode.frames_per_call=0", "job.decode.frames_per_call"),
    "unknown-encoder": ("encoder=nosuch", "encoder/nosuch"),
    "unknown-key": ("job.nonsense=1", "job.nonsense"),
}


def assert_one_error_line(r: object, needle: str) -> None:
    err = r.stderr  # type: ignore[attr-defined]
    assert r.returncode == 2, err[-3000:]  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err


@pytest.mark.parametrize(("override", "key"), list(CASES.values()), ids=list(CASES))
def test_bad_setting_is_one_line_before_any_work(tmp_path: Path, override: str, key: str) -> None:
    (tmp_path / "v").mkdir()
    store = tmp_path / "s"
    r = run_cli(
        "job=extract", f"videos={tmp_path / 'v'}", f"store={store}", override,
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert_one_error_line(r, key)
    assert not store.exists()  # refused before the store is touched


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    r = run_cli("job=extract", f"videos={tmp_path}", hydra_dir=tmp_path / "h")
    assert_one_error_line(r, "job.store")


def test_store_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = run_cli("job=extract", f"videos={tmp_path}", f"store={f}", hydra_dir=tmp_path / "h")
    assert_one_error_line(r, "is a file")
    assert f.read_text() == "x"


def test_damaged_store_file_is_named(tmp_path: Path) -> None:
    store = tmp_path / "s"
    store.mkdir()
    (store / "zarr.json").write_text("{ garbage")
    r = run_cli("job=extract", f"videos={tmp_path}", f"store={store}", hydra_dir=tmp_path / "h")
    assert_one_error_line(r, str(store / "zarr.json"))
    assert (store / "zarr.json").read_text() == "{ garbage"


def test_full_error_keeps_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    r = run_cli(
        "job=extract", "encoder=nosuch", f"store={tmp_path / 's'}", "videos=x",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode != 0 and "Traceback" in r.stderr
