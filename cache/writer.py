"""The single writer of one shard of a store: the commit protocol, written once for both kinds
of storage (a POSIX folder, object storage) against :class:`cache.shardlog.ShardLog`.

A segment is written whole and published (renamed into place, or put under a unique prefix)
and only then journalled together with the videos it finishes, so a kill at any moment leaves
a consistent shard (docs/cache.md, docs/object-storage.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cache.layout import StoreLayout
from cache.objectlog import LEASE_TTL_S
from cache.segments import checksum, chunk_checksums, features_digest
from cache.shardlog import ShardLockedError, shard_log
from cache.storage import store_location
from cache.store import read_store_attrs

__all__ = ["ShardLockedError", "ShardWriter"]

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """Frames of one video waiting in the current (uncommitted) segment buffer."""

    video_id: str
    attempt: str
    video_start: int
    tokens: list[np.ndarray] = field(default_factory=list)
    pts: list[np.ndarray] = field(default_factory=list)
    source: dict[str, Any] | None = None
    started: bool = False  # its start record (source fingerprint) is journalled

    @property
    def frames(self) -> int:
        return sum(len(t) for t in self.tokens)


class ShardWriter:
    """Writes videos into shard ``shard`` of the store at ``root``.

    Usage: ``start(video_id)`` returns the frame to start from (non-zero when an earlier run
    already committed the first frames of this video), then ``write()`` frames in order, then
    ``finish()`` or ``fail()``. ``close()`` commits what is buffered. Only one writer per shard
    may exist at a time (an advisory lock enforces it).
    """

    COMMIT_INTERVAL_S = 60.0  # the default: commit at least this often

    def __init__(
        self,
        root: str | Path,
        shard: int,
        *,
        commit_interval_s: float = COMMIT_INTERVAL_S,
        provenance: dict[str, Any] | None = None,
        lease_ttl_s: float = LEASE_TTL_S,
        break_lease: bool = False,
        stop_check: Callable[[], None] | None = None,
    ) -> None:
        self.root = store_location(root)
        self.shard = shard
        attrs = read_store_attrs(self.root)
        self.layout = StoreLayout.from_dict(attrs["layout"])
        self._features = features_digest(attrs["features"])
        self.commit_interval_s = commit_interval_s
        self.restarted: dict[str, str] = {}  # video id -> why its partial frames were dropped
        self.run_id = uuid.uuid4().hex[:12]
        run = {
            "kind": "run",
            "run_id": self.run_id,
            "started_at": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "provenance": provenance or {},
        }
        self._log = shard_log(
            self.root,
            shard,
            lease_ttl_s=lease_ttl_s,
            break_lease=break_lease,
            stop_check=stop_check,
        )
        opened = self._log.open(run)
        self._open = True
        self.repairs = opened.repairs
        self._next_seq = opened.next_seq
        self._partial = {v: p for v, p in opened.index.partial.items() if p.shard == shard}
        self._pending: dict[str, _Pending] = {}
        self._flushing: list[_Pending] = []  # finished videos whose frames are still buffered
        self._finals: list[dict[str, Any]] = []
        self._buffered = 0
        self._last_commit = time.monotonic()

    # -- per video -------------------------------------------------------------------------

    def start(self, video_id: str, source: dict[str, Any] | None = None) -> int:
        """Begin (or resume) a video; returns how many of its frames are already committed.

        ``source``: the source file's fingerprint (:func:`fingerprint`), journalled with the
        attempt; committed frames of an attempt whose source differs are not resumed from.
        """
        partial = self._partial.get(video_id)
        if partial is not None and partial.frames > 0:
            if source is None or partial.source is None or partial.source == source:
                self._pending[video_id] = _Pending(
                    video_id, partial.attempt, partial.frames, source=partial.source or source
                )
                return partial.frames
            why = _changed(partial.source, source)
            self.restarted[video_id] = f"source changed since it began ({why}): restarted"
            log.warning("%s: %s", video_id, self.restarted[video_id])
        self._pending[video_id] = _Pending(video_id, uuid.uuid4().hex[:12], 0, source=source)
        return 0

    def write(self, video_id: str, tokens: np.ndarray, pts_seconds: np.ndarray) -> None:
        """Buffer frames of a started video (in order). ``tokens``: (n, tokens, dim)."""
        lay = self.layout
        want = (lay.tokens_per_frame, lay.dim)
        if tokens.ndim != 3 or tokens.shape[1:] != want or len(pts_seconds) != len(tokens):
            raise ValueError(
                f"tokens must be (n, {want[0]}, {want[1]}) with n pts, got {tokens.shape} "
                f"and {len(pts_seconds)} pts"
            )
        dtype = np.uint16 if lay.dtype == "bfloat16" else np.float16
        if tokens.dtype != dtype:
            raise ValueError(f"tokens dtype must be {np.dtype(dtype)}, got {tokens.dtype}")
        pending = self._pending[video_id]
        pending.tokens.append(tokens)
        pending.pts.append(np.asarray(pts_seconds, dtype=np.float64))
        self._buffered += len(tokens)
        self._maybe_commit()  # also inside a long video: at least every commit_interval_s

    def finish(self, video_id: str, record: dict[str, Any]) -> None:
        """Mark a video complete; ``record`` holds its metadata (num_frames, fps, ...)."""
        pending = self._pending.pop(video_id)
        done = pending.video_start + pending.frames
        if record.get("num_frames") != done:
            # e.g. a source replaced by a shorter one: this video fails, the shard goes on
            self._pending[video_id] = pending
            return self.fail(
                video_id,
                record,
                f"record says {record.get('num_frames')} frames, wrote {done} (source changed?"
                " a rerun restarts it)",
            )
        if pending.source is not None:
            record = {**record, "source": pending.source}
        if pending.frames:
            self._flushing.append(pending)
        self._finals.append(self._final(video_id, pending.attempt, "done", record))
        self._maybe_commit()

    def fail(self, video_id: str, record: dict[str, Any], error: str) -> None:
        """Record a video as failed with ``error``; its buffered frames are dropped."""
        pending = self._pending.pop(video_id, None)
        if pending is not None:
            self._buffered -= pending.frames
        attempt = pending.attempt if pending else uuid.uuid4().hex[:12]
        self._finals.append(self._final(video_id, attempt, "failed", {**record, "error": error}))
        self._maybe_commit()

    def _final(self, video_id: str, attempt: str, status: str, record: dict[str, Any]) -> dict:
        return {
            **record,
            "kind": "video",
            "video_id": video_id,
            "attempt": attempt,
            "status": status,
            "run_id": self.run_id,
            "shard": self.shard,
            "committed_at": 0.0,  # set at commit
        }

    def _maybe_commit(self) -> None:
        if (
            self._buffered >= self.layout.segment_frames
            or time.monotonic() - self._last_commit >= self.commit_interval_s
        ):
            self.commit()

    # -- commit ----------------------------------------------------------------------------

    def commit(self) -> None:
        """Write buffered frames as one segment, then journal it with finished videos."""
        groups = [*self._flushing, *(p for p in self._pending.values() if p.frames)]
        records: list[dict[str, Any]] = []
        now = time.time()
        for final in self._finals:
            final["committed_at"] = now
        self._log.check_owner()
        seg = self._log.segment_name(self._next_seq)
        try:
            if groups:
                records += self._write_segment(seg, groups, self._finals)
            records += self._finals
            self._log.commit(records)  # all or nothing
        except BaseException:
            if groups:  # not journalled: the frames stay buffered
                self._log.discard(seg)
            raise
        self._next_seq += bool(groups)
        for g in groups:
            g.started = True
        # What is journalled is now durable: reset the buffers.
        for p in self._pending.values():
            p.video_start += p.frames
            p.tokens.clear()
            p.pts.clear()
        self._flushing = []
        self._finals = []
        self._buffered = 0
        self._last_commit = time.monotonic()

    def _write_segment(
        self, seg: str, groups: list[_Pending], finals: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Write and publish one segment; its journal lines. The segment's attributes
        repeat those lines (and the videos it completes) so a lost journal can be rebuilt."""
        lay = self.layout
        tokens = np.concatenate([t for g in groups for t in g.tokens])
        pts = np.concatenate([t for g in groups for t in g.pts])
        n = len(tokens)
        pieces, start = [], 0
        for g in groups:
            pieces.append(
                {
                    "kind": "piece",
                    "video_id": g.video_id,
                    "attempt": g.attempt,
                    "segment": seg,
                    "segment_start": start,
                    "video_start": g.video_start,
                    "frames": g.frames,
                }
            )
            start += g.frames
        starts = [
            {"kind": "start", "video_id": g.video_id, "attempt": g.attempt, "source": g.source}
            for g in groups
            if not g.started and g.source is not None
        ]
        chunk = min(lay.chunk_frames, n)
        segment = {
            "kind": "segment",
            "segment": seg,
            "frames": n,
            "shape": list(tokens.shape),
            "dtype": lay.dtype,
            "crc32c": {"tokens": checksum(tokens), "pts": checksum(pts)},
        }
        attrs = {
            "pieces": [{k: v for k, v in p.items() if k != "kind"} for p in pieces],
            "segment": {k: v for k, v in segment.items() if k not in ("kind", "segment")},
            "starts": [{k: v for k, v in r.items() if k != "kind"} for r in starts],
            "videos": [{k: v for k, v in r.items() if k != "kind"} for r in finals],
            # Which store's features these are (a segment of another encoder is refused).
            "features_sha256": self._features,
            # crc32c of each run of ``frames`` rows: the reader checks the runs it reads, so a
            # file swapped with another of the same size is an error, not wrong numbers.
            "chunks": {"frames": chunk, "tokens_crc32c": chunk_checksums(tokens, chunk)},
        }
        segment.update(self._log.publish(seg, lambda to: self._stage(to, attrs, tokens, pts)))
        return [segment, *starts, *pieces]

    def _stage(
        self, staging: Path | Any, attrs: dict[str, Any], tokens: np.ndarray, pts: np.ndarray
    ) -> None:
        import zarr
        from zarr.codecs import Crc32cCodec

        lay, n = self.layout, len(tokens)
        group = zarr.open_group(staging, mode="w", zarr_format=3, attributes=attrs)  # type: ignore[arg-type]
        chunk = attrs["chunks"]["frames"]
        shard = min(lay.file_frames, -(-n // chunk) * chunk)
        arr = group.create_array(
            "tokens",
            shape=tokens.shape,
            chunks=(chunk, lay.tokens_per_frame, lay.dim),
            shards=(shard, lay.tokens_per_frame, lay.dim),
            dtype=tokens.dtype,
            compressors=[Crc32cCodec()],  # per chunk, checked on every read
            fill_value=0,
            config={"write_empty_chunks": True},  # every chunk on disk: missing = lost
            dimension_names=("frame", "token", "channel"),
            attributes={"streamfeat_dtype": lay.dtype},
        )
        arr[...] = tokens
        parr = group.create_array(
            "pts",
            shape=(n,),
            chunks=(n,),
            dtype="float64",
            compressors=[Crc32cCodec()],
            fill_value=0.0,
            config={"write_empty_chunks": True},
            dimension_names=("frame",),
        )
        parr[...] = pts

    def close(self) -> None:
        """Commit what is buffered (unfinished videos keep their committed frames for resume)."""
        if not self._open:
            return
        try:
            self.commit()
        finally:
            self.abort()

    def abort(self) -> None:
        """Release the shard without committing buffered frames."""
        self._open = False
        self._log.release()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        # Even on an error, what is buffered is consistent: finished videos are worth keeping.
        try:
            self.close()
        except OSError:
            if not disk_full(exc):
                raise
            # Still full: the buffered frames are dropped (a rerun redoes them) and the first
            # error, which says why, is the one that propagates.
        finally:
            self.abort()


def disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` is a write refused for lack of space (a full disk or an exhausted quota)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def shard_locked(root: str | Path, shard: int) -> bool:
    """Whether a live writer holds shard ``shard`` of the store at ``root`` (its lock is released
    when the writer closes or its process dies, so a killed writer's shard reads as free). On
    object storage: whether its lease is unreleased and was renewed within its time-to-live."""
    return shard_log(root, shard).held()


def fingerprint(path: str | Path, *, content: bool = True) -> dict[str, Any]:
    """What identifies a source file's content cheaply: size, mtime and a crc32c of its first
    and last 64 KiB (catches a same-size replacement that kept the mtime). ``content=False``:
    size and mtime only (a stat, no read)."""
    import google_crc32c

    path = Path(path)
    st = path.stat()
    if not content:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with open(path, "rb") as f:
        head = f.read(1 << 16)
        f.seek(max(0, st.st_size - (1 << 16)))
        tail = f.read(1 << 16)
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "crc32c_ends": int(google_crc32c.value(head + tail)),
    }


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys)


@contextlib.contextmanager
def holding_shard(root: str | Path, shard: int) -> Iterator[None]:
    """Hold shard ``shard``'s writer lock (for repairs outside a writer); on object storage its
    lease (waiting for a dead writer's lease to lapse)."""
    with shard_log(root, shard).hold():
        yield


def mark_damaged(
    root: str | Path, shard: int, attempts: dict[str, str], why: str | dict[str, str]
) -> None:
    """Journal that these videos' attempts (video id -> attempt) are damaged (``why``: one
    reason, or one per video id): the index no longer counts them done (their status reads
    ``damaged``), so the next extract redoes exactly those. A copy is kept beside the shard's
    segments, so the marks survive a rebuilt journal. Raises :class:`ShardLockedError` while a
    writer holds the shard."""
    now = time.time()
    marks = [
        {"kind": "damaged", "video_id": v, "attempt": a,
         "why": why if isinstance(why, str) else why[v], "at": now}
        for v, a in attempts.items()
    ]  # fmt: skip
    backend = shard_log(root, shard)
    with backend.hold():
        backend.mark(marks)
