"""Reading a store: the index, per-video info and frame windows."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cache.journal import Index, VideoEntry, load_index
from cache.layout import shard_dir
from cache.objectlog import segment_prefix
from cache.segments import (
    DamagedDataError,
    MissingDataError,
    checksum,
    read_attrs,
    require_files,
)
from cache.storage import open_storage, store_location
from cache.store import read_store_attrs


@dataclass(frozen=True)
class _Segment:
    """One opened segment: its tokens array, its (checked) pts, its per-chunk checksums."""

    path: Path | str  # a folder, or an object-storage URL
    tokens: Any  # a zarr array
    pts: np.ndarray
    chunk_frames: int = 0
    chunk_sums: tuple[int, ...] = ()  # empty: written before per-chunk checksums

    def read_tokens(self, rows: slice) -> np.ndarray:
        """Rows of the tokens; each run of ``chunk_frames`` rows a read touches must have the
        crc32c it was written with (a file swapped with another of the same size passes Zarr's
        own per-chunk check, which knows nothing of positions)."""
        if not self.chunk_sums:
            return np.asarray(self.tokens[rows])
        c = self.chunk_frames
        lo, hi = rows.start // c * c, min(len(self.pts), -(-rows.stop // c) * c)
        data = np.asarray(self.tokens[lo:hi])
        for at in range(lo, hi, c):
            if checksum(data[at - lo : at - lo + c]) != self.chunk_sums[at // c]:
                raise DamagedDataError(
                    f"{self.path}/tokens: rows {at}..{min(at + c, hi)} are not the data "
                    "written there (crc32c differs: a chunk file swapped, replaced or corrupt); "
                    "job=verify job.mark_damaged=true marks its videos to redo"
                )
        return data[rows.start - lo : rows.stop - lo]


class Store:
    """A read-only view of a store, as of when it was opened (``refresh()`` re-reads the index).

    ``read()`` touches only the chunks that hold the requested window, never the whole video.
    """

    def __init__(self, root: str | Path, index: Index | None = None) -> None:
        self.root = store_location(root)
        self.attrs = read_store_attrs(self.root)
        self.layout = self.attrs["layout"]
        # ``index``: one already loaded from this store (a DataLoader worker reuses its
        # parent's instead of re-reading every journal).
        self.index: Index = index if index is not None else load_index(self.root)

    def refresh(self) -> None:
        self.index = load_index(self.root)
        self._segment.cache_clear()

    def video_ids(self, status: str | None = None) -> list[str]:
        """Every indexed video id (done and failed), sorted; ``status`` filters."""
        return sorted(v for v, e in self.index.videos.items() if status in (None, e.status))

    def _entry(self, video_id: str) -> VideoEntry:
        try:
            return self.index.videos[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the index of {self.root}") from None

    def info(self, video_id: str) -> dict[str, Any]:
        """The index record of a video plus where its frames are (``pieces``).

        Keys include ``video_id``, ``source_path``, ``status`` (``"done"``, ``"failed"``, or
        ``"damaged"``: marked by ``job=verify``, to be redone by the next extract), ``error``
        (``None`` unless failed or damaged: why), ``num_frames``, ``fps``,
        ``duration_seconds``; a damaged video's ``damaged`` holds its mark.
        """
        e = self._entry(video_id)
        info = {k: v for k, v in e.record.items() if k not in ("kind",)}
        info.setdefault("error", None)
        info.setdefault("num_frames", 0)
        info["pieces"] = [
            {
                "array": f"shards/{p.shard:05d}/{p.segment}/tokens",
                "rows": [p.segment_start, p.segment_start + p.frames],
                "frames": [p.video_start, p.video_start + p.frames],
            }
            for p in e.pieces
        ]
        return info

    def pts_seconds(self, video_id: str) -> np.ndarray:
        return self.read(video_id, tokens=False)[1]

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Store per process, bounded cache
    def _segment(self, shard: int, segment: str) -> _Segment:
        """A segment, once its files are all there: a missing file is an error
        (:class:`cache.MissingDataError`), never Zarr's fill value. Each chunk carries a crc32c
        that Zarr checks on every read; the pts are checked whole against the journal, and the
        tokens a read touches against the per-chunk checksums of the segment's attributes, so
        data moved from elsewhere is an error too (:class:`cache.DamagedDataError`). Segments
        written before checksums may lack all-fill chunks legitimately (Zarr did not write
        them) and are read unchecked."""
        import zarr

        record = self.index.segments.get((shard, segment), {})
        if isinstance(self.root, str):
            return _object_segment(self.root, shard, segment, record)
        path = shard_dir(self.root, shard) / segment
        sums = record.get("crc32c")
        if sums is None:
            tok = zarr.open_array(path / "tokens", mode="r")
            return _Segment(path, tok, np.asarray(zarr.open_array(path / "pts", mode="r")[...]))
        require_files(path)
        tok = zarr.open_array(path / "tokens", mode="r")
        pts = np.asarray(zarr.open_array(path / "pts", mode="r")[...])
        if checksum(pts) != sums["pts"]:
            raise DamagedDataError(
                f"{path / 'pts'}: not the data written there (crc32c differs from the journal's: "
                "a file swapped, replaced or corrupt); job=verify names its videos"
            )
        try:
            chunks = read_attrs(path).get("chunks")
        except (OSError, ValueError) as e:
            raise DamagedDataError(f"{path / 'zarr.json'}: the segment's attributes are "
                                   f"unreadable ({type(e).__name__}: {e})") from None  # fmt: skip
        if not chunks:  # written before per-chunk checksums
            return _Segment(path, tok, pts)
        c, chunk_sums = int(chunks["frames"]), tuple(int(x) for x in chunks["tokens_crc32c"])
        if c < 1 or len(chunk_sums) != -(-len(pts) // c) or tok.shape[0] != len(pts):
            raise DamagedDataError(f"{path / 'zarr.json'}: per-chunk checksums do not fit the "
                                   f"segment's {len(pts)} frames")  # fmt: skip
        return _Segment(path, tok, pts, c, chunk_sums)

    def read(
        self,
        video_id: str,
        start: int | None = None,
        stop: int | None = None,
        *,
        tokens: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``[start, stop)`` of a done video: ``(tokens (T, N, D), pts_seconds (T,))``.

        Tokens are float16 (or float32 for a bfloat16 store: NumPy has no bfloat16, and float32
        holds every bfloat16 value exactly). ``start``/``stop`` follow Python slice rules.
        """
        e = self._entry(video_id)
        if e.status != "done":
            raise ValueError(
                f"video {video_id!r} is {e.status}: {e.record.get('error')}; nothing to read"
            )
        n = int(e.record["num_frames"])
        start, stop, _ = slice(start, stop).indices(n)
        stop = max(start, stop)
        toks, pts = [], []
        for p in e.pieces:
            lo, hi = max(start, p.video_start), min(stop, p.video_start + p.frames)
            if lo >= hi:
                continue
            rows = slice(p.segment_start + lo - p.video_start, p.segment_start + hi - p.video_start)
            seg = self._segment(p.shard, p.segment)
            if tokens:
                toks.append(seg.read_tokens(rows))
            pts.append(seg.pts[rows])
        lay = self.layout
        shape = (0, lay["tokens_per_frame"], lay["dim"])
        dtype = np.uint16 if lay["dtype"] == "bfloat16" else np.float16
        out = np.concatenate(toks) if toks else np.zeros(shape, dtype)
        if lay["dtype"] == "bfloat16":
            out = bf16_bits_to_float32(out)
        pts_out = np.concatenate(pts) if pts else np.zeros((0,), np.float64)
        return out, pts_out


def _object_segment(url: str, shard: int, segment: str, record: dict[str, Any]) -> _Segment:
    """A segment on object storage: one list of its prefix checks that every file its record
    names is there (a missing one is an error, never Zarr's fill value), then the same checks
    as on disk (pts whole, tokens per chunk)."""
    import zarr

    storage = open_storage(url)
    prefix = segment_prefix(shard, segment)
    where = f"{url}/{prefix.rstrip('/')}"
    have = {k[len(prefix) :] for k in storage.list(prefix)}
    missing = [f for f in record.get("files", ["zarr.json"]) if f not in have]
    if missing:
        raise MissingDataError(f"missing {where}/{missing[0]} (the data is lost)")
    zs = storage.zarr_store(prefix, read_only=True)
    # Zarr v3 named: without it each open also asks for v2's .zarray and .zattrs (two 404s).
    tok = zarr.open_array(store=zs, path="tokens", mode="r", zarr_format=3)
    pts = np.asarray(zarr.open_array(store=zs, path="pts", mode="r", zarr_format=3)[...])
    sums = record.get("crc32c") or {}
    if checksum(pts) != sums.get("pts"):
        raise DamagedDataError(
            f"{where}/pts: not the data written there (crc32c differs from the journal's); "
            "job=verify names its videos"
        )
    got = storage.get(f"{prefix}zarr.json")
    try:
        chunks = json.loads(got[0] if got else b"")["attributes"]["chunks"]
        c, chunk_sums = int(chunks["frames"]), tuple(int(x) for x in chunks["tokens_crc32c"])
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedDataError(f"{where}/zarr.json: the segment's attributes are unreadable "
                               f"({type(e).__name__}: {e})") from None  # fmt: skip
    if c < 1 or len(chunk_sums) != -(-len(pts) // c) or tok.shape[0] != len(pts):
        raise DamagedDataError(f"{where}/zarr.json: per-chunk checksums do not fit the "
                               f"segment's {len(pts)} frames")  # fmt: skip
    return _Segment(where, tok, pts, c, chunk_sums)


def check_object_segment(
    url: str,
    shard: int,
    segment: str,
    record: dict[str, Any],
    layout: dict[str, Any],
    window: int = 1024,
) -> list[str]:
    """Problems of one committed segment on object storage (``job=verify``): its files (one
    list), its metadata against the index and the layout, the checksums of its data."""
    try:
        seg = _object_segment(url, shard, segment, record)
        n = int(record["frames"])
        want = (n, int(layout["tokens_per_frame"]), int(layout["dim"]))
        if tuple(seg.tokens.shape) != want:
            return [f"metadata: tokens {seg.tokens.shape}; the index says {want}"]
        crc = 0
        for lo in range(0, n, window):
            crc = checksum(seg.tokens[lo : lo + window], crc)
    except Exception as e:  # noqa: BLE001 - any failure here is a finding
        return [str(e) if isinstance(e, DamagedDataError) else f"{type(e).__name__}: {e}"]
    return [] if crc == record["crc32c"]["tokens"] else ["checksum mismatch in tokens"]


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 stored as uint16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def open_store(path: str | Path) -> Store:
    """Open the store at ``path`` for reading: a folder, or a URL (``s3://bucket/prefix.zarr``,
    ``gs://``, ``az://``, ``file://``)."""
    return Store(path)
