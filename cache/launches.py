"""Launch records: one JSON line per submission, kept in the launcher's folder, found by the store.

A launcher appends its records to ``FOLDER/launches.jsonl`` and registers FOLDER in the store's
``launch_folders.jsonl``, so ``job=status`` finds them wherever the folder is (docs/cache.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cache.journal import append_records, read_journal, repair_tail

LAUNCHES = "launches.jsonl"  # in a launcher's folder
FOLDERS = "launch_folders.jsonl"  # in the store: the folders that hold its launch records
# Stores made before FOLDERS existed kept their launch records only in this folder.
DEFAULT_FOLDER = "logs/slurm"


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))  # absolute and without ``..``, symlinks left as they are


def _registered(root: Path) -> list[Path]:
    """The folders registered in the store at ``root`` (relative entries are under the store)."""
    return [_absolute(root / r["folder"]) for r in read_journal(root / FOLDERS)]


def _append(path: Path, record: dict[str, Any]) -> None:
    repair_tail(path)  # a submitter killed mid-line must not glue its torn line to this one
    append_records(path, [record])


def register_launch_folder(store: str | Path, folder: str | Path) -> None:
    """Record in ``store`` that ``folder`` holds launch records of it.

    The store folder is created if it does not exist yet (a launch precedes the first writer, and
    ``init_store`` accepts the folder holding this record). A folder inside the store is kept
    relative to it, so the store can be moved with its records.
    """
    root, folder = _absolute(store), _absolute(folder)
    if folder in _registered(root):
        return
    try:
        entry = folder.relative_to(root).as_posix()
    except ValueError:
        entry = str(folder)
    root.mkdir(parents=True, exist_ok=True)
    _append(root / FOLDERS, {"folder": entry})


def record_launch(
    folder: str | Path, record: dict[str, Any], *, store: str | Path | None = None
) -> None:
    """Append ``record`` to ``folder``'s launch records; with ``store``, register ``folder`` there
    first (so a crash in between leaves no record that the store cannot find)."""
    if store is not None:
        register_launch_folder(store, folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    _append(Path(folder) / LAUNCHES, record)


def launch_folders(store: str | Path) -> list[Path]:
    """The folders holding launch records of ``store``: those registered, and the default one."""
    root = _absolute(store)
    folders: list[Path] = []
    for folder in [root / DEFAULT_FOLDER, *_registered(root)]:
        if folder not in folders and (folder / LAUNCHES).is_file():
            folders.append(folder)
    return folders


def read_launches(store: str | Path) -> list[dict[str, Any]]:
    """Every launch record of ``store``, oldest submission first."""
    records = [r for f in launch_folders(store) for r in read_journal(f / LAUNCHES)]
    return sorted(records, key=lambda r: float(r.get("submitted_at", 0.0)))
