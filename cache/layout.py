"""Where things are in a streamfeat cache (format version 1): shard folders, journals, locks.

The whole on-disk layout, with a picture, is in docs/cache.md.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

FORMAT_NAME = "streamfeat-cache"
FORMAT_VERSION = 1
ATTRS_KEY = "streamfeat"

StoreDtype = Literal["float16", "bfloat16"]


@dataclass(frozen=True)
class StoreLayout:
    """Array geometry shared by every segment of one store.

    ``tokens_per_frame`` and ``dim`` are the encoder's token shape; the rest is chosen when the
    store is created. ``chunk_frames`` is the Zarr chunk, the read granularity (a window read
    touches at most one extra chunk at each end); ``file_frames`` is how many frames go in one
    file of the sharding codec (stored as ``shard_frames``, the format's name); ``segment_frames``
    is the most frames a writer buffers before committing a segment.
    """

    tokens_per_frame: int
    dim: int
    dtype: StoreDtype = "float16"  # float16 | bfloat16 (stored as uint16 bit patterns)
    chunk_frames: int = 8
    file_frames: int = 1024
    segment_frames: int = 4096

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "bfloat16"):
            raise ValueError(f"dtype must be 'float16' or 'bfloat16', got {self.dtype!r}")
        for name in ("tokens_per_frame", "dim", "chunk_frames", "file_frames", "segment_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.file_frames % self.chunk_frames:
            raise ValueError(
                f"file_frames ({self.file_frames}) must be a multiple of "
                f"chunk_frames ({self.chunk_frames})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The layout as the store records it (format version 1 names)."""
        return {_STORED.get(k, k): v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> StoreLayout:
        """The layout a store records (see :meth:`to_dict`)."""
        names = {v: k for k, v in _STORED.items()}
        return cls(**{names.get(k, k): v for k, v in stored.items()})


_STORED = {"file_frames": "shard_frames"}  # field name -> the name stores hold


def shard_dir(root: Path, shard: int) -> Path:
    """The folder of writer shard ``shard``: its segments and its lock."""
    return root / "shards" / f"{shard:05d}"


def lock_path(root: Path, shard: int) -> Path:
    """The advisory lock that the writer of shard ``shard`` holds while it runs."""
    return shard_dir(root, shard) / ".lock"


def journal_path(root: Path, shard: int) -> Path:
    """The journal of writer shard ``shard``."""
    return root / "index" / f"shard-{shard:05d}.jsonl"


def shard_of_journal(path: Path) -> int:
    """The shard number of a journal (the inverse of ``journal_path``)."""
    return int(path.stem.split("-")[1])


def journal_paths(root: Path) -> dict[int, Path]:
    """Every shard journal of the store at ``root``, by shard number, in shard order."""
    return {shard_of_journal(p): p for p in sorted((root / "index").glob("shard-*.jsonl"))}


def segment_name(seq: int) -> str:
    return f"seg-{seq:06d}"


_SHARD_NAME = re.compile(r"[0-9]{5,}")
_SEGMENT_NAME = re.compile(r"seg-([0-9]{6,})")  # as segment_name makes them
# What a shard folder holds besides its segments (staging folders are a writer's work).
SHARD_FILES = frozenset({"zarr.json", ".lock", "damaged.jsonl"})


def segment_seq(name: str) -> int | None:
    """The sequence number of a segment folder's name (``None``: not a segment's name)."""
    m = _SEGMENT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def shard_folders(root: Path) -> tuple[dict[int, Path], list[Path]]:
    """The shard folders of the store at ``root`` by shard number, and what else is in
    ``shards/`` (a stray file or folder: named by ``job=verify``, never read as a shard)."""
    folders: dict[int, Path] = {}
    strays: list[Path] = []
    base = root / "shards"
    for child in sorted(base.iterdir()) if base.is_dir() else []:
        if child.name == "zarr.json":
            continue
        if (
            _SHARD_NAME.fullmatch(child.name)
            and child.name == f"{int(child.name):05d}"  # as shard_dir names it
            and child.is_dir()
            and not child.is_symlink()
        ):
            folders[int(child.name)] = child
        else:
            strays.append(child)
    return folders, strays


def damaged_path(root: Path, shard: int) -> Path:
    """A copy of shard ``shard``'s damage marks, kept beside its segments so that a rebuilt
    journal keeps them (the journal's own ``damaged`` lines are the ones readers use)."""
    return shard_dir(root, shard) / "damaged.jsonl"
