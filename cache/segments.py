"""What a committed segment must hold, checked against its journal record, and recovery of a
shard's journal from its segments (segments describe themselves in their attributes).

Nothing that a journal line or a segment's own attributes say was committed is ever deleted
here: a damaged segment is kept and its videos are marked to redo; a segment of another layout
is refused (kept, not indexed). Only staging folders and segment folders that hold no data go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cache.journal import JournalDamageWarning, append_records, read_journal, repair_tail
from cache.layout import (
    SHARD_FILES,
    StoreLayout,
    damaged_path,
    journal_path,
    segment_seq,
    shard_dir,
    shard_folders,
)
from cache.store import read_store_attrs

log = logging.getLogger(__name__)


class DamagedDataError(OSError):
    """Data of a committed segment is not what was written there (a file swapped, replaced,
    lost or corrupt): an error when it is read, never wrong numbers."""


class MissingDataError(DamagedDataError):
    """A file that a committed segment must have is gone (never read as Zarr's fill value)."""


def checksum(data: Any, crc: int = 0) -> int:
    """crc32c of an array's C-order bytes, continuing ``crc`` (windows chain to the whole)."""
    import google_crc32c

    return int(google_crc32c.extend(crc, np.ascontiguousarray(data).tobytes()))


def chunk_checksums(data: np.ndarray, frames: int) -> list[int]:
    """crc32c of each run of ``frames`` frames (the reader checks the runs a read touches)."""
    return [checksum(data[lo : lo + frames]) for lo in range(0, len(data), frames)]


def features_digest(features: dict[str, Any]) -> str:
    """A short digest of a store's ``features`` (encoder, weights, fps, ...), recorded in each
    segment so that a segment of another store's features is recognised."""
    text = json.dumps(features, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def read_attrs(segment_dir: Path) -> dict[str, Any]:
    """A segment's attributes (raises ``OSError``/``ValueError`` when unreadable)."""
    attrs = json.loads((segment_dir / "zarr.json").read_text()).get("attributes", {})
    if not isinstance(attrs, dict):
        raise ValueError(f"{segment_dir / 'zarr.json'}: attributes are not a mapping")
    return attrs


def segment_attrs(segment_dir: Path) -> dict[str, Any] | None:
    """The attributes of a segment folder when they say what it holds (its ``pieces``), else
    ``None`` (no or unreadable attributes). Its files are not checked here."""
    try:
        attrs = read_attrs(segment_dir)
    except (OSError, ValueError):
        return None
    return attrs if isinstance(attrs.get("pieces"), list) else None


def segment_record(name: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """The journal line of a segment, from its attributes (older segments lack checksums)."""
    rec = attrs.get("segment") or {"frames": sum(p["frames"] for p in attrs["pieces"])}
    return {**rec, "kind": "segment", "segment": name}


def _array_meta(segment_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((segment_dir / name / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def layout_mismatch(segment_dir: Path, attrs: dict[str, Any], store: dict[str, Any]) -> str:
    """Why a segment cannot be one of this store's (its tokens per frame, width, dtype or
    encoder features differ from the store's); empty when it fits."""
    lay = store["layout"]
    seen: list[tuple[list[Any], str | None]] = []  # (shape, store dtype name) as recorded
    rec = attrs.get("segment") or {}
    if "shape" in rec:
        seen.append((list(rec["shape"]), rec.get("dtype")))
    meta = _array_meta(segment_dir, "tokens")
    if meta is not None and "shape" in meta:
        stored = str(meta.get("data_type"))
        named = (meta.get("attributes") or {}).get("streamfeat_dtype")
        dtype = named or {"float16": "float16", "uint16": "bfloat16"}.get(stored, stored)
        seen.append((list(meta["shape"]), dtype))
    if not seen:
        return "its token shape cannot be read (no segment record, no array metadata)"
    diffs = []
    for shape, dtype in seen:
        if len(shape) != 3:
            diffs.append(f"tokens have shape {shape}")
            continue
        if int(shape[1]) != int(lay["tokens_per_frame"]):
            diffs.append(f"{shape[1]} tokens per frame, the store {lay['tokens_per_frame']}")
        if int(shape[2]) != int(lay["dim"]):
            diffs.append(f"width {shape[2]}, the store {lay['dim']}")
        if dtype is not None and dtype != lay["dtype"]:
            diffs.append(f"dtype {dtype}, the store {lay['dtype']}")
    digest = attrs.get("features_sha256")
    if digest is not None and digest != features_digest(store["features"]):
        diffs.append("features of another encoder or settings (its features digest differs)")
    return "; ".join(dict.fromkeys(diffs))


def segment_damage(segment_dir: Path, record: dict[str, Any]) -> list[str]:
    """What is missing or inconsistent in a segment's files and metadata (cheap: no data is
    read); empty when it looks whole. Segments written before checksums may lack all-fill
    chunk files legitimately and are checked for their array metadata only."""
    try:
        if "crc32c" in record:
            require_files(segment_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [str(e) if isinstance(e, MissingDataError) else f"{type(e).__name__}: {e}"]
    issues = []
    n = int(record["frames"])
    for name, width in (("tokens", 3), ("pts", 1)):
        meta = _array_meta(segment_dir, name)
        if meta is None:
            issues.append(
                f"missing or unreadable array metadata {segment_dir / name / 'zarr.json'}"
            )
        elif len(meta.get("shape", [])) != width or int(meta["shape"][0]) != n:
            issues.append(f"metadata: {name} shape {meta.get('shape')}, the segment has {n} frames")
    return issues


def _piece_key(p: dict[str, Any]) -> tuple[str, str, int, int, int]:
    return (
        str(p["video_id"]),
        str(p["attempt"]),
        int(p["segment_start"]),
        int(p["video_start"]),
        int(p["frames"]),
    )


def _describe(k: tuple[str, str, int, int, int]) -> str:
    vid, _, row, start, n = k
    return f"{vid} frames {start}..{start + n} at rows {row}..{row + n}"


def piece_mismatches(segment_dir: Path, pieces: list[dict[str, Any]]) -> dict[str, str]:
    """Videos whose pieces in the journal differ from the segment's own attributes (a swapped
    ``segment_start`` reads another video's rows), by video id; ``{}`` when they agree or the
    segment's attributes list no pieces (an old or an unreadable one: reported elsewhere)."""
    attrs = segment_attrs(segment_dir)
    if attrs is None:
        return {}
    try:
        journal = {_piece_key(p) for p in pieces}
        own = {_piece_key(p) for p in attrs["pieces"]}
    except (KeyError, TypeError, ValueError) as e:
        return {"<index>": f"damaged piece attributes ({type(e).__name__}: {e})"}
    out: dict[str, list[str]] = {}
    for k in sorted(journal - own):
        out.setdefault(k[0], []).append(f"the journal has {_describe(k)}")
    for k in sorted(own - journal):
        out.setdefault(k[0], []).append(f"the segment's attributes have {_describe(k)}")
    return {
        vid: "the segment's attributes disagree with the journal: " + "; ".join(why)
        for vid, why in out.items()
    }


def attribute_issues(segment_dir: Path, record: dict[str, Any]) -> list[str]:
    """Differences between a segment's own record (its attributes) and its journal line."""
    try:
        attrs = read_attrs(segment_dir)
    except (OSError, ValueError) as e:
        if "crc32c" not in record:
            return []  # an old segment: its attributes were never relied upon
        return [f"the segment's attributes are unreadable ({type(e).__name__}: {e})"]
    own = attrs.get("segment")
    if not isinstance(own, dict):
        return ["the segment's attributes hold no segment record"] if "crc32c" in record else []
    return [
        f"the segment's attributes say {k} {own[k]}, the journal {record[k]}"
        for k in ("frames", "shape", "dtype", "crc32c")
        if k in own and k in record and own[k] != record[k]
    ]


def check_segment(
    segment_dir: Path, record: dict[str, Any], layout: dict[str, Any], window: int = 1024
) -> list[str]:
    """Problems of one committed segment: files, metadata against the index and the layout,
    its attributes against its journal line, and (when the journal has one) the checksum of
    its data. Empty when it is sound."""
    import zarr

    issues = attribute_issues(segment_dir, record)
    try:
        if "crc32c" in record:  # older segments omit all-fill chunks (Zarr's default)
            require_files(segment_dir)
        tok = zarr.open_array(segment_dir / "tokens", mode="r")
        pts = zarr.open_array(segment_dir / "pts", mode="r")
    except Exception as e:  # noqa: BLE001 - any failure here is a finding
        return [*issues, f"{type(e).__name__}: {e}"]
    n = int(record["frames"])
    want = (n, int(layout["tokens_per_frame"]), int(layout["dim"]))
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


def write_marks(root: Path, shard: int, marks: list[dict[str, Any]]) -> None:
    """Journal damage marks, and keep a copy beside the shard's segments (a rebuilt journal
    restores them from it). The caller holds the shard's lock."""
    if not marks:
        return
    for path in (journal_path(root, shard), damaged_path(root, shard)):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        append_records(path, marks)


def _holds_data(folder: Path) -> bool:
    """Whether a folder holds any file besides Zarr metadata (chunk data)."""
    return any(f != "zarr.json" for _, _, files in os.walk(folder) for f in files)


def _adopt(root: Path, shard: int, child: Path, store: dict[str, Any]) -> str:
    """Journal one segment folder that no journal line names (see ``adopt_segments``)."""
    journal = journal_path(root, shard)
    attrs = segment_attrs(child)
    if attrs is None:
        if not _holds_data(child):
            shutil.rmtree(child, ignore_errors=True)
            return f"shard {shard}: deleted incomplete segment {child.name} (it held no data)"
        return (
            f"shard {shard}: kept {child.name}, not indexed: its attributes are unreadable, so "
            "what it holds is unknown (restore its zarr.json, or move the folder out)"
        )
    try:
        why = layout_mismatch(child, attrs, store)
        if why:
            return (
                f"shard {shard}: refused segment {child.name}: its layout differs from the "
                f"store's ({why}); not indexed, kept (it is not this store's: move it out)"
            )
        record = segment_record(child.name, attrs)
        pieces = [{**p, "kind": "piece", "segment": child.name} for p in attrs["pieces"]]
        starts = [{**s, "kind": "start"} for s in attrs.get("starts", [])]
        finals = [{**v, "kind": "video"} for v in attrs.get("videos", [])]
        damage = segment_damage(child, record)
    except (KeyError, TypeError, ValueError) as e:
        return (
            f"shard {shard}: kept {child.name}, not indexed: its attributes are damaged "
            f"({type(e).__name__}: {e}); restore its zarr.json, or move the folder out"
        )
    append_records(journal, [record, *starts, *pieces, *finals])
    msg = (
        f"shard {shard}: re-indexed segment {child.name} from its attributes "
        f"({len(pieces)} pieces, {len(finals)} video records)"
    )
    if not damage:
        return msg
    why = f"shard {shard} {child.name}: {damage[0]}"
    attempts = dict.fromkeys((str(p["video_id"]), str(p["attempt"])) for p in pieces)
    now = time.time()
    marks = [
        {"kind": "damaged", "video_id": v, "attempt": a, "why": why, "segment": child.name,
         "at": now}
        for v, a in attempts
    ]  # fmt: skip
    write_marks(root, shard, marks)
    videos = sorted({v for v, _ in attempts})
    return (
        f"{msg}; it is damaged ({damage[0]}): kept, and its {len(videos)} video(s) are marked "
        f"to redo: {', '.join(videos)}"
    )


def _restore_marks(root: Path, shard: int) -> list[str]:
    """Journal the damage marks kept beside the shard's segments that its journal lacks (a
    lost or rebuilt journal)."""
    side = damaged_path(root, shard)
    if not side.is_file():
        return []
    journal = journal_path(root, shard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JournalDamageWarning)
        have = {
            (r.get("video_id"), r.get("attempt"))
            for r in read_journal(journal)
            if r.get("kind") == "damaged"
        }
        kept = [r for r in read_journal(side) if r.get("kind") == "damaged"]
    lost = [r for r in kept if (r.get("video_id"), r.get("attempt")) not in have]
    if not lost:
        return []
    append_records(journal, lost)
    return [f"shard {shard}: restored {len(lost)} damage mark(s) from {side.name}"]


def adopt_segments(root: Path, shard: int) -> list[str]:
    """Journal the segments of a shard that no journal line names (a lost or damaged journal,
    or a kill between rename and journal), from their attributes, and the damage marks kept
    beside them. A segment with a missing file is journalled, kept and its videos marked to
    redo; one of another layout is refused (kept, not indexed). Only staging leftovers and
    segment folders that hold no data are deleted. Returns what was done (also logged). The
    caller holds the shard's lock."""
    journal = journal_path(root, shard)
    messages = [f"shard {shard}: dropped {d}" for d in repair_journal(journal)]
    known = {r["segment"] for r in read_journal(journal) if r.get("kind") == "segment"}
    store = read_store_attrs(root)
    folder = shard_dir(root, shard)
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.name.startswith(".staging-"):
            shutil.rmtree(child, ignore_errors=True)
        elif segment_seq(child.name) is not None and child.name not in known:
            if child.is_dir() and not child.is_symlink():
                messages.append(_adopt(root, shard, child, store))
    messages += _restore_marks(root, shard)
    for m in messages:
        log.warning("%s", m)
    return messages


def unindexed_segments(root: Path, known: set[tuple[int, str]]) -> list[tuple[int, str]]:
    """Segment folders of the store that no journal names."""
    out = []
    for shard, folder in shard_folders(root)[0].items():
        for seg in sorted(folder.glob("seg-*")):
            if segment_seq(seg.name) is not None and (shard, seg.name) not in known:
                out.append((shard, seg.name))
    return out


def stray_entries(root: Path) -> list[Path]:
    """What is in ``shards/`` or a shard folder that the format does not know (a copied or
    renamed folder, a note): readers and writers ignore it; ``job=verify`` names it."""
    folders, strays = shard_folders(root)
    for folder in folders.values():
        for child in sorted(folder.iterdir()):
            name = child.name
            if name in SHARD_FILES or name.startswith(".staging-"):
                continue
            if segment_seq(name) is None or not child.is_dir():
                strays.append(child)
    return strays
