"""Reading a store: the index, per-video info and frame windows."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
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
        if isinstance(self.tokens, _ShardedTokens):
            data = self.tokens.read(lo, hi)
        else:
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


@dataclass(frozen=True)
class _ShardedTokens:
    """The tokens array of a segment on object storage, read without Zarr: Zarr 3.1's sharding
    codec asks for each inner chunk of a shard file with its own request, one after another (150
    requests for a 1,200-frame window). Here each shard file's index is fetched once (and kept:
    the segment is cached by ``Store._segment``) and all the chunks a read needs from a file
    with one ``obstore.get_ranges`` (adjacent ranges are coalesced into one request).

    The layout is what ``ShardWriter._stage`` writes and :func:`_sharded_tokens` checks in the
    array's ``zarr.json``: chunks of ``chunk`` whole frames, ``file`` frames per shard file
    (``tokens/c/<i>/0/0``); each chunk encoded as its little-endian bytes followed by their
    crc32c; the file's index at its end (Zarr's sharding spec): one little-endian ``uint64``
    (offset, nbytes) per chunk (2**64 - 1 twice: no chunk), then the index's own crc32c."""

    storage: Any  # cache.storage.ObjectStorage
    key: str  # the array's key, ``shards/<shard>/<segment>/tokens``
    where: str  # its URL, for messages
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk: int
    file: int
    indexes: dict[int, np.ndarray] = field(default_factory=dict)  # file -> (chunks, 2)

    def _fetch(self, f: int, fn: Any, **kwargs: Any) -> Any:
        """``fn(store, <file f's key>, **kwargs)``; a file gone since the open is lost data."""
        key = f"{self.key}/c/{f}/0/0"
        try:
            return self.storage._call("read", key, fn, key, **kwargs)
        except FileNotFoundError:
            raise MissingDataError(f"missing {self.where}/c/{f}/0/0 (the data is lost)") from None

    def _index(self, f: int) -> np.ndarray:
        """The index of shard file ``f``, its (offset, nbytes) per chunk: fetched once."""
        if f not in self.indexes:
            import obstore

            size = 16 * (self.file // self.chunk) + 4
            raw = bytes(self._fetch(f, obstore.get, options={"range": {"suffix": size}}).bytes())
            if len(raw) != size or _crc(raw[:-4]) != raw[-4:]:
                raise DamagedDataError(f"{self.where}/c/{f}/0/0: its shard index is corrupt")
            self.indexes[f] = np.frombuffer(raw[:-4], "<u8").reshape(-1, 2)
        return self.indexes[f]

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)``, ``lo`` at a chunk's start: one request per shard file touched (two
        the first time a file is touched: its index)."""
        import obstore

        c, frame = self.chunk, self.shape[1:]
        nbytes = c * int(np.prod(frame)) * self.dtype.itemsize + 4  # every chunk is whole
        out = []
        for f in range(lo // self.file, -(-hi // self.file)):
            base = f * self.file  # the file's first row; ids: its chunks that [lo, hi) needs
            ids = range((max(lo, base) - base) // c, -(-(min(hi, base + self.file) - base) // c))
            index = self._index(f)[ids.start : ids.stop]
            if (index[:, 1] != nbytes).any():  # an absent chunk (2**64 - 1) included
                raise DamagedDataError(f"{self.where}/c/{f}/0/0: its index has a chunk absent "
                                       f"or not of {nbytes} bytes")  # fmt: skip
            starts = [int(o) for o in index[:, 0]]
            got = self._fetch(f, obstore.get_ranges, starts=starts, lengths=[nbytes] * len(ids))
            for i, blob in zip(ids, got, strict=True):
                raw = memoryview(blob)
                if _crc(raw[:-4]) != bytes(raw[-4:]):  # as Zarr's crc32c codec checks it
                    at = base + i * c
                    raise DamagedDataError(f"{self.where}: rows {at}..{at + c} are corrupt "
                                           "(their chunk's crc32c differs)")  # fmt: skip
                out.append(np.frombuffer(raw[:-4], self.dtype).reshape(c, *frame))
        data = np.concatenate(out) if out else np.zeros((0, *frame), self.dtype)
        return data[: hi - lo]  # a segment's last chunk is whole, padded with zeros


def _crc(data: Any) -> bytes:
    """crc32c as Zarr's crc32c codec appends it: 4 bytes, little-endian."""
    import google_crc32c

    return int(google_crc32c.value(bytes(data))).to_bytes(4, "little")


def _sharded_tokens(storage: Any, key: str, where: str, text: bytes) -> _ShardedTokens:
    """The tokens of a segment from its ``tokens/zarr.json`` (``text``), which must describe
    the layout :class:`_ShardedTokens` decodes (the only one ``ShardWriter`` writes)."""
    try:
        meta = json.loads(text)
        (shard,) = meta["codecs"]
        conf = shard["configuration"]
        shape, dtype = tuple(meta["shape"]), np.dtype(meta["data_type"]).newbyteorder("<")
        file, chunk = meta["chunk_grid"]["configuration"]["chunk_shape"], conf["chunk_shape"]
        ok = (
            shard["name"] == "sharding_indexed"
            and conf.get("index_location", "end") == "end"
            and [c["name"] for c in conf["codecs"]] == ["bytes", "crc32c"]
            and conf["codecs"][0].get("configuration", {}).get("endian") in ("little", None)
            and [c["name"] for c in conf["index_codecs"]] == ["bytes", "crc32c"]
            and meta["chunk_key_encoding"] == {"name": "default",
                                               "configuration": {"separator": "/"}}
            and len(shape) == 3 and list(file[1:]) == list(chunk[1:]) == list(shape[1:])
            and file[0] % chunk[0] == 0 and dtype.kind in "fu"
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        ok, e_text = False, f" ({type(e).__name__}: {e})"
    else:
        e_text = ""
    if not ok:
        raise DamagedDataError(f"{where}/zarr.json: not the layout a store's writer makes"
                               f"{e_text}")  # fmt: skip
    return _ShardedTokens(storage, key, where, shape, dtype, int(chunk[0]), int(file[0]))


def _object_segment(url: str, shard: int, segment: str, record: dict[str, Any]) -> _Segment:
    """A segment on object storage: one list of its prefix checks that every file its record
    names is there (a missing one is an error, never Zarr's fill value); then its attributes,
    its tokens' metadata and its pts in three concurrent GETs, and the same checks as on disk
    (pts whole, tokens per chunk as they are read)."""
    storage = open_storage(url)
    prefix = segment_prefix(shard, segment)
    where = f"{url}/{prefix.rstrip('/')}"
    have = {k[len(prefix) :] for k in storage.list(prefix)}
    missing = [f for f in record.get("files", ["zarr.json"]) if f not in have]
    if missing:
        raise MissingDataError(f"missing {where}/{missing[0]} (the data is lost)")
    got = storage.get_many([f"{prefix}zarr.json", f"{prefix}tokens/zarr.json", f"{prefix}pts/c/0"])
    if any(g is None for g in got):
        name = ("zarr.json", "tokens/zarr.json", "pts/c/0")[got.index(None)]
        raise MissingDataError(f"missing {where}/{name} (the data is lost)")
    attrs, tok_meta, pts_raw = (bytes(g or b"") for g in got)
    # pts: one chunk of float64, little-endian, then its crc32c (``ShardWriter._stage``); the
    # journal's checksum of the whole catches any other content.
    n = int(record.get("frames", (len(pts_raw) - 4) // 8))
    if len(pts_raw) != 8 * n + 4 or _crc(pts_raw[:-4]) != pts_raw[-4:]:
        raise DamagedDataError(f"{where}/pts/c/0: not {n} frames of pts, or corrupt (crc32c)")
    pts = np.frombuffer(pts_raw[:-4], "<f8").astype(np.float64)
    sums = record.get("crc32c") or {}
    if checksum(pts) != sums.get("pts"):
        raise DamagedDataError(
            f"{where}/pts: not the data written there (crc32c differs from the journal's); "
            "job=verify names its videos"
        )
    try:
        chunks = json.loads(attrs)["attributes"]["chunks"]
        c, chunk_sums = int(chunks["frames"]), tuple(int(x) for x in chunks["tokens_crc32c"])
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedDataError(f"{where}/zarr.json: the segment's attributes are unreadable "
                               f"({type(e).__name__}: {e})") from None  # fmt: skip
    tok = _sharded_tokens(storage, f"{prefix}tokens", f"{where}/tokens", tok_meta)
    if (c < 1 or c != tok.chunk or len(chunk_sums) != -(-len(pts) // c)
            or tok.shape[0] != len(pts)):  # fmt: skip
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
        for lo in range(0, n, window):  # each chunk also checked against its own checksum
            crc = checksum(seg.read_tokens(slice(lo, min(lo + window, n))), crc)
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
