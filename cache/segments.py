"""What a committed segment must hold, checked against its journal record, and recovery of a
shard's journal from its segments (segments describe themselves in their attributes)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cache.journal import JournalDamageWarning, append_records, read_journal, repair_tail
from cache.layout import StoreLayout, journal_path, shard_dir

log = logging.getLogger(__name__)


class MissingDataError(OSError):
    """A file that a committed segment must have is gone (never read as Zarr's fill value)."""


def checksum(data: Any, crc: int = 0) -> int:
    """crc32c of an array's C-order bytes, continuing ``crc`` (windows chain to the whole)."""
    import google_crc32c

    return int(google_crc32c.extend(crc, np.ascontiguousarray(data).tobytes()))


def storage_dtype(layout: StoreLayout | dict[str, Any]) -> np.dtype:
    dtype = layout.dtype if isinstance(layout, StoreLayout) else layout["dtype"]
    return np.dtype(np.uint16 if dtype == "bfloat16" else np.float16)


def chunk_files(array_dir: Path) -> list[Path]:
    """The files a segment array must have: one per shard (or chunk) along the frame axis."""
    meta = json.loads((array_dir / "zarr.json").read_text())
    frames = int(meta["shape"][0])
    outer = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    rest = ["0"] * (len(meta["shape"]) - 1)
    return [array_dir.joinpath("c", str(i), *rest) for i in range(-(-frames // outer))]


def require_files(segment_dir: Path) -> None:
    """Raise :class:`MissingDataError` unless every chunk file of the segment exists."""
    for name in ("tokens", "pts"):
        arr = segment_dir / name
        if not (arr / "zarr.json").is_file():
            raise MissingDataError(f"missing array metadata {arr / 'zarr.json'}")
        for f in chunk_files(arr):
            if not f.is_file():
                raise MissingDataError(f"missing chunk file {f} (the data is lost)")


def check_segment(
    segment_dir: Path, record: dict[str, Any], layout: dict[str, Any], window: int = 1024
) -> list[str]:
    """Problems of one committed segment: files, metadata against the index and the layout,
    and (when the journal has one) the checksum of its data. Empty when it is sound."""
    import zarr

    try:
        if "crc32c" in record:  # older segments omit all-fill chunks (Zarr's default)
            require_files(segment_dir)
        tok = zarr.open_array(segment_dir / "tokens", mode="r")
        pts = zarr.open_array(segment_dir / "pts", mode="r")
    except Exception as e:  # noqa: BLE001 - any failure here is a finding
        return [f"{type(e).__name__}: {e}"]
    n = int(record["frames"])
    want = (n, int(layout["tokens_per_frame"]), int(layout["dim"]))
    issues = []
    if tuple(tok.shape) != want or pts.shape != (n,):
        issues.append(f"metadata: tokens {tok.shape}, pts {pts.shape}; the index says {want}")
    if tok.dtype != storage_dtype(layout) or pts.dtype != np.float64:
        issues.append(f"metadata: dtype {tok.dtype}/{pts.dtype}, the layout says {layout['dtype']}")
    if issues:
        return issues
    sums = record.get("crc32c")
    try:
        got = {"tokens": 0, "pts": checksum(pts[...])}
        for lo in range(0, n, window):
            got["tokens"] = checksum(tok[lo : lo + window], got["tokens"])
    except Exception as e:  # noqa: BLE001
        return [f"unreadable: {type(e).__name__}: {e}"]
    if sums is None:
        return ["not checksummed (written before checksums; readable, unverified)"]
    return [f"checksum mismatch in {k}" for k in ("tokens", "pts") if got[k] != sums[k]]


def segment_attrs(segment_dir: Path) -> dict[str, Any] | None:
    """The attributes of a segment that looks committed (complete arrays), else ``None``."""
    try:
        attrs = json.loads((segment_dir / "zarr.json").read_text()).get("attributes", {})
        if "pieces" not in attrs:
            return None
        if "segment" in attrs:  # written with checksums: every chunk file is there
            require_files(segment_dir)
        elif not all((segment_dir / a / "zarr.json").is_file() for a in ("tokens", "pts")):
            return None
    except (OSError, ValueError):
        return None
    return dict(attrs)


def segment_record(name: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The journal line of a segment, from its attributes (older segments lack checksums)."""
    rec = attrs.get("segment") or {"frames": sum(p["frames"] for p in attrs["pieces"])}
    return {**rec, "kind": "segment", "segment": name}


def repair_journal(path: Path) -> list[str]:
    """Cut a torn tail and drop damaged lines (atomically); returns what was dropped."""
    repair_tail(path)
    damaged: list[str] = []
    with warnings.catch_warnings():  # logged below, as a repair
        warnings.simplefilter("ignore", JournalDamageWarning)
        records = read_journal(path, damaged) if path.exists() else []
    if damaged:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".repair-")
        os.close(fd)
        append_records(Path(tmp), records)
        os.replace(tmp, path)
        for d in damaged:
            log.warning("journal repaired: %s", d)
    return damaged


def adopt_segments(root: Path, shard: int) -> list[str]:
    """Journal the committed-looking segments of a shard that no journal line names (a lost or
    damaged journal, or a kill between rename and journal); delete only staging leftovers and
    incomplete segment folders, saying so. The caller holds the shard's lock."""
    journal = journal_path(root, shard)
    messages = [f"shard {shard}: dropped {d}" for d in repair_journal(journal)]
    known = {r["segment"] for r in read_journal(journal) if r.get("kind") == "segment"}
    folder = shard_dir(root, shard)
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.name.startswith(".staging-"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith("seg-") and child.name not in known:
            attrs = segment_attrs(child)
            if attrs is None:
                shutil.rmtree(child, ignore_errors=True)
                messages.append(f"shard {shard}: deleted incomplete segment {child.name}")
                continue
            pieces = [{**p, "kind": "piece", "segment": child.name} for p in attrs["pieces"]]
            starts = [{**s, "kind": "start"} for s in attrs.get("starts", [])]
            finals = [{**v, "kind": "video"} for v in attrs.get("videos", [])]
            append_records(journal, [segment_record(child.name, attrs), *starts, *pieces, *finals])
            messages.append(
                f"shard {shard}: re-indexed segment {child.name} from its attributes "
                f"({len(pieces)} pieces, {len(finals)} video records)"
            )
    for m in messages:
        log.warning("%s", m)
    return messages


def unindexed_segments(root: Path, known: set[tuple[int, str]]) -> list[tuple[int, str]]:
    """Segment folders of the store that no journal names."""
    out = []
    for folder in sorted((root / "shards").glob("[0-9]*")):
        for seg in sorted(folder.glob("seg-*")):
            if (int(folder.name), seg.name) not in known:
                out.append((int(folder.name), seg.name))
    return out
