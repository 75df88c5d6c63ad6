"""Launch records: one JSON line per submission, kept in the launcher's folder, found by the store.

A launcher appends its records to ``FOLDER/launches.jsonl`` and registers FOLDER in the store's
``launch_folders.jsonl``, so ``job=status`` finds them wherever the folder is (docs/cache.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cache.journal import append_records, read_journal, repair_tail
from cache.storage import is_url, open_storage

LAUNCHES = "launches.jsonl"  # in a launcher's folder
FOLDERS = "launch_folders.jsonl"  # in the store: the folders that hold its launch records
FOLDERS_PREFIX = "launch_folders"  # the same on object storage: one object per folder
# Stores made before FOLDERS existed kept their launch records only in this folder.
DEFAULT_FOLDER = "logs/slurm"


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(path))  # absolute and without ``..``, symlinks left as they are


def _registered(root: Path) -> list[Path]:
    """The folders registered in the store at ``root`` (relative entries are under the store)."""
    return [_absolute(root / r["folder"]) for r in read_journal(root / FOLDERS)]


def _registered_remote(url: str) -> list[Path]:
    """The folders registered in a store on object storage: one object each under
    ``launch_folders/``, named by a digest of the folder (registering twice is one object)."""
    storage = open_storage(url)
    keys = storage.list(f"{FOLDERS_PREFIX}/")
    folders = []
    for data in storage.get_many(keys):
        try:
            folders.append(Path(json.loads(data or b"")["folder"]))
        except (ValueError, KeyError, TypeError):
            continue  # not written by this code: ignored
    return folders


def _append(path: Path, record: dict[str, Any]) -> None:
    repair_tail(path)  # a submitter killed mid-line must not glue its torn line to this one
    append_records(path, [record])


def register_launch_folder(store: str | Path, folder: str | Path) -> None:
    """Record in ``store`` that ``folder`` holds launch records of it.

    The store folder is created if it does not exist yet (a launch precedes the first writer, and
    ``init_store`` accepts the folder holding this record). A folder inside the store is kept
    relative to it, so the store can be moved with its records.
    """
    if is_url(store):  # the folder is on the submitting machine; the registry in the bucket
        folder = _absolute(folder)
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
        key = f"{FOLDERS_PREFIX}/{digest}.json"
        open_storage(str(store)).create(key, json.dumps({"folder": str(folder)}).encode())
        return
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
    """The folders holding launch records of ``store``: those registered, and the default one
    (on object storage: those registered that exist on this machine)."""
    if is_url(store):
        candidates = _registered_remote(str(store))
    else:
        root = _absolute(store)
        candidates = [root / DEFAULT_FOLDER, *_registered(root)]
    folders: list[Path] = []
    for folder in candidates:
        if folder not in folders and (folder / LAUNCHES).is_file():
            folders.append(folder)
    return folders


def read_launches(store: str | Path) -> list[dict[str, Any]]:
    """Every launch record of ``store``, oldest submission first."""
    records = [r for f in launch_folders(store) for r in read_journal(f / LAUNCHES)]
    return sorted(records, key=lambda r: float(r.get("submitted_at", 0.0)))
