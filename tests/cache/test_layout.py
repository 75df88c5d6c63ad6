"""What ``cache`` exports about a store's layout: journals by shard, writer locks seen from
another process, and launch records found from the store wherever their folder is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from cache import (
    ShardWriter,
    StoreLayout,
    init_store,
    journal_path,
    journal_paths,
    launch_folders,
    load_index,
    lock_path,
    read_launches,
    record_launch,
    register_launch_folder,
    shard_dir,
    shard_locked,
    shard_of_journal,
)

REPO = Path(__file__).resolve().parents[2]
LAYOUT = StoreLayout(tokens_per_frame=2, dim=4)


def make_store(root: Path) -> Path:
    init_store(root, layout=LAYOUT, features={"encoder": "test"}, provenance={})
    return root


def launch(submitted_at: float, **jobs: str) -> dict:
    return {"launcher": "slurm", "submitted_at": submitted_at, "jobs": jobs}


def test_journals_are_numbered_by_shard(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    assert journal_paths(root) == {}
    for shard in (12, 0, 3):
        ShardWriter(root, shard).close()
    paths = journal_paths(root)
    assert list(paths) == [0, 3, 12]  # in shard order
    for shard, path in paths.items():
        assert path == journal_path(root, shard) and path.is_file()
        assert shard_of_journal(path) == shard
    assert shard_of_journal(journal_path(root, 54321)) == 54321
    assert len(load_index(root).runs) == 3  # one writer start journalled per shard
    assert lock_path(root, 3) == shard_dir(root, 3) / ".lock" and lock_path(root, 3).is_file()


def _writer_process(root: Path, shard: int) -> subprocess.Popen[str]:
    """A second process that holds shard ``shard``'s writer until its stdin closes."""
    code = (
        "import sys; from cache import ShardWriter\n"
        f"w = ShardWriter({str(root)!r}, {shard})\n"
        "print('ready', flush=True); sys.stdin.read(); w.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_shard_locked_sees_a_live_writer_in_another_process(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    assert not shard_locked(root, 3)  # no lock file yet
    proc = _writer_process(root, 3)
    try:
        assert shard_locked(root, 3)
        assert not shard_locked(root, 4)
        assert shard_locked(root, 3)  # asking twice: the check leaves the writer's lock alone
    finally:
        proc.communicate("", timeout=60)  # closing stdin lets the writer close
    assert proc.returncode == 0
    assert lock_path(root, 3).exists() and not shard_locked(root, 3)
    ShardWriter(root, 3).close()  # the check took no lock of its own


def test_a_killed_writer_does_not_read_as_writing(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s.zarr")
    proc = _writer_process(root, 0)
    assert shard_locked(root, 0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not shard_locked(root, 0)
    ShardWriter(root, 0).close()  # and a new writer can take the shard


def test_launch_records_follow_the_launcher_folder(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "s.zarr", tmp_path / "logs" / "slurm-elsewhere"
    first, second = launch(10.0, **{"0": "7_0", "1": "7_1"}), launch(20.0, **{"1": "9_0"})
    # Submitted before any writer ran: the store folder does not exist yet.
    record_launch(elsewhere, first, store=store)
    assert read_launches(store) == [first]
    assert launch_folders(store) == [elsewhere]
    assert not (store / "logs").exists()  # nothing in the store's default folder
    make_store(store)  # the first writer creates the store around the record
    record_launch(elsewhere, second, store=store)  # registered once, however many launches
    assert read_launches(store) == [first, second]
    assert len((store / "launch_folders.jsonl").read_text().splitlines()) == 1
    assert read_launches(tmp_path / "other.zarr") == []


def test_records_in_several_folders_come_oldest_first(tmp_path: Path) -> None:
    store, elsewhere = make_store(tmp_path / "s.zarr"), tmp_path / "elsewhere"
    inside = store / "logs" / "slurm"
    late, early, middle = launch(30.0, a="3"), launch(10.0, a="1"), launch(20.0, a="2")
    record_launch(elsewhere, late, store=store)
    record_launch(inside, early, store=store)
    record_launch(elsewhere, middle, store=store)
    assert read_launches(store) == [early, middle, late]
    registry = [json.loads(line) for line in (store / "launch_folders.jsonl").read_text().split()]
    assert registry == [{"folder": str(elsewhere)}, {"folder": "logs/slurm"}]
    # A folder inside the store is registered relative to it, so it moves with the store.
    moved = shutil.move(store, tmp_path / "moved.zarr")
    assert launch_folders(moved) == [Path(moved) / "logs" / "slurm", elsewhere]


def test_a_store_from_before_the_registry_still_shows_its_launches(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    old = store / "logs" / "slurm"  # where launcher=slurm kept them, with no registry
    old.mkdir(parents=True)
    records = [launch(1.0, **{"0": "5_0"}), launch(2.0, **{"0": "6_0"})]
    (old / "launches.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert not (store / "launch_folders.jsonl").exists()
    assert read_launches(store) == records
    register_launch_folder(store, old)  # registering the default folder does not double it
    assert read_launches(store) == records


def test_a_torn_registry_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    store, folder, other = make_store(tmp_path / "s.zarr"), tmp_path / "f", tmp_path / "g"
    record_launch(folder, launch(1.0, a="1"), store=store)
    with open(store / "launch_folders.jsonl", "a") as f:
        f.write('{"folder": "/x')  # a submitter killed mid-line
    with open(folder / "launches.jsonl", "a") as f:
        f.write('{"launcher": "slu')
    assert launch_folders(store) == [folder]
    assert read_launches(store) == [launch(1.0, a="1")]
    record_launch(other, launch(2.0, a="2"), store=store)
    record_launch(folder, launch(3.0, a="3"), store=store)
    assert launch_folders(store) == [folder, other]
    assert read_launches(store) == [launch(float(i), a=str(i)) for i in (1, 2, 3)]
