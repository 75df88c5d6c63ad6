"""What the commit protocol needs of where a shard lives, with one backend per kind of storage.

:class:`cache.ShardWriter` is the commit protocol, written once: it takes its shard, stages a
segment, publishes it, then commits the segment's journal records together with the videos
it finishes, all or nothing; a failed commit discards the segment; every commit checks that the
writer still owns its shard. A :class:`ShardLog` supplies those steps for one shard:

- :class:`FileShardLog`, a POSIX file system (format 1, unchanged): an ``flock`` per shard, an
  appended and fsynced journal, segments staged in a folder and renamed into place;
- :class:`ObjectShardLog`, object storage through :class:`cache.storage.Storage` (create-if-
  absent, replace-if-unchanged, get, list, delete; no rename, append or lock): a lease with a
  heartbeat, immutable numbered journal records, segments under unique prefixes listed in the
  record that commits them (docs/object-storage.md).

:func:`shard_log` picks the backend from a store location.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.journal import Index, append_records, build_index, load_index, read_journal
from cache.layout import journal_path, lock_path, segment_name, segment_seq, shard_dir
from cache.objectlog import (
    CHECKPOINT_RECORDS,
    LEASE_TTL_S,
    Lease,
    RecordLog,
    ShardFencedError,
    ShardJournal,
    ShardLeaseHeld,
    collect_garbage,
    read_journals,
    segment_names,
    segment_prefix,
    shard_leased,
    write_checkpoint,
)
from cache.segments import adopt_segments, write_marks
from cache.storage import is_url, local_path, open_storage

log = logging.getLogger(__name__)

_GROUP_META = b'{"zarr_format":3,"node_type":"group","attributes":{}}'

# Writes one segment's Zarr group into what it is given (a folder, or a Zarr store).
Stage = Callable[[Any], None]


class ShardLockedError(RuntimeError):
    """Another live writer holds the shard (one writer per shard)."""


@dataclass
class Opened:
    """What a writer learns when it takes its shard."""

    index: Index  # the whole store's index (this shard's partial videos resume from it)
    next_seq: int  # the next segment's sequence number
    repairs: list[str] = field(default_factory=list)  # what taking the shard repaired


class ShardLog(abc.ABC):
    """One shard's ownership, journal and segment publication."""

    shard: int

    @abc.abstractmethod
    def open(self, run: dict[str, Any]) -> Opened:
        """Take the shard (raise :class:`ShardLockedError` while another writer holds it),
        repair what a killed writer left, and journal ``run`` as this writer's first record."""

    @abc.abstractmethod
    def segment_name(self, seq: int) -> str:
        """The name of the next segment (never one that exists or existed)."""

    @abc.abstractmethod
    def publish(self, seg: str, stage: Stage) -> dict[str, Any]:
        """Write segment ``seg`` with ``stage`` so that it is whole before any reader can find
        it; what its journal record must add (the files a reader checks on object storage)."""

    @abc.abstractmethod
    def commit(self, records: list[dict[str, Any]]) -> None:
        """Journal ``records``: all of them or none, durably. Raises
        :class:`cache.ShardFencedError` when another writer owns the shard now."""

    @abc.abstractmethod
    def discard(self, seg: str) -> None:
        """Forget a segment whose commit failed (where it can be known not to be committed)."""

    @abc.abstractmethod
    def check_owner(self) -> None:
        """Raise :class:`cache.ShardFencedError` when this writer is known to have lost the
        shard (so it writes nothing more)."""

    @abc.abstractmethod
    def mark(self, marks: list[dict[str, Any]]) -> None:
        """Journal damage marks (the caller holds the shard through :meth:`hold`)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Let the shard go (idempotent)."""

    @abc.abstractmethod
    def held(self) -> bool:
        """Whether a live writer holds the shard now (a display: the taker decides)."""

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the shard outside a writer (repairs), without journalling a run."""
        self.take()
        try:
            yield
        finally:
            self.release()

    @abc.abstractmethod
    def take(self) -> None:
        """Take the shard (raise :class:`ShardLockedError` while another writer holds it)."""


class FileShardLog(ShardLog):
    """A shard in a folder of a POSIX file system (format 1)."""

    def __init__(self, root: Path, shard: int) -> None:
        self.root, self.shard = root, shard
        self.dir = shard_dir(root, shard)
        self.journal = journal_path(root, shard)
        self._fd = -1

    def take(self) -> None:
        if self._fd < 0:
            self._fd = take_lock(self.root, self.shard)

    def open(self, run: dict[str, Any]) -> Opened:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "zarr.json").exists():  # so Zarr clients can walk the hierarchy
            import zarr

            zarr.open_group(self.dir, mode="a", zarr_format=3)
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.take()
        try:
            # Damaged lines dropped (their videos are redone), unjournalled segments indexed.
            repairs = adopt_segments(self.root, self.shard)
            records = read_journal(self.journal)
            # Past every segment name, journalled or on disk (a kept folder is never reused).
            names = [r["segment"] for r in records if r.get("kind") == "segment"]
            names += [c.name for c in self.dir.iterdir()]
            seqs = [q for q in map(segment_seq, names) if q is not None]
            index = load_index(self.root)
            append_records(self.journal, [run])
        except BaseException:
            self.release()
            raise
        return Opened(index, 1 + max(seqs, default=-1), repairs)

    def segment_name(self, seq: int) -> str:
        return segment_name(seq)

    def publish(self, seg: str, stage: Stage) -> dict[str, Any]:
        staging = self.dir / f".staging-{seg}-{uuid.uuid4().hex[:8]}"
        try:
            stage(staging)
            _fsync_tree(staging)
        except BaseException:  # e.g. a full disk: leave no half-written staging folder
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, self.dir / seg)
        _fsync_dir(self.dir)
        return {}

    def commit(self, records: list[dict[str, Any]]) -> None:
        append_records(self.journal, records)  # all or nothing (a torn tail is dropped)

    def discard(self, seg: str) -> None:
        shutil.rmtree(self.dir / seg, ignore_errors=True)  # not journalled: never read

    def check_owner(self) -> None:
        return None  # the flock is held until this process closes it or dies

    def mark(self, marks: list[dict[str, Any]]) -> None:
        write_marks(self.root, self.shard, marks)  # and a side copy a rebuilt journal keeps

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def held(self) -> bool:
        lock = lock_path(self.root, self.shard)
        if not lock.exists():
            return False
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class ObjectShardLog(ShardLog):
    """A shard on object storage: lease, numbered records, uniquely named segments."""

    def __init__(
        self,
        url: str,
        shard: int,
        *,
        ttl_s: float = LEASE_TTL_S,
        break_lease: bool = False,
        stop_check: Callable[[], None] | None = None,
    ) -> None:
        self.storage = open_storage(url)
        self.shard = shard
        self._lease_args: dict[str, Any] = {
            "ttl_s": ttl_s,
            "break_lease": break_lease,
            "stop_check": stop_check,
        }
        self._lease: Lease | None = None
        self._log: RecordLog | None = None
        self._journal = ShardJournal()  # this shard's records, as committed (checkpoints)

    def take(self) -> None:
        if self._lease is not None:
            return
        lease = Lease(self.storage, self.shard, **self._lease_args)
        try:
            lease.acquire()
        except ShardLeaseHeld as e:
            raise ShardLockedError(str(e)) from None
        self._lease = lease

    def open(self, run: dict[str, Any]) -> Opened:
        """Take the lease, then claim the journal with the run's record (from then on an
        earlier holder's commits are refused), then remove segments no record names."""
        self.take()
        try:
            self._log = RecordLog(self.storage, self.shard)
            self._log.claim([run])
            journals = read_journals(self.storage)
            self._journal = journals.get(self.shard, ShardJournal())
            if self._journal.last != self._log.next - 1:  # no record can follow the claim
                raise ShardFencedError(
                    f"shard {self.shard} of {self.storage.url}: its journal changed after this "
                    "writer claimed it (another writer took the shard over)"
                )
            records = self._journal.records
            repairs = collect_garbage(self.storage, self.shard, segment_names(records))
            for m in repairs:
                log.warning("%s", m)
            group = f"shards/{self.shard:05d}/zarr.json"  # so Zarr clients can walk it
            if self.storage.get(group) is None:
                self.storage.put(group, _GROUP_META)
            seqs = [object_segment_seq(r["segment"]) for r in records if r.get("kind") == "segment"]
            next_seq = 1 + max((q for q in seqs if q is not None), default=-1)
            index = build_index({k: j.records for k, j in journals.items()})
            return Opened(index, next_seq, repairs)
        except BaseException:
            self.release()
            raise

    def segment_name(self, seq: int) -> str:
        # A unique prefix: a fenced writer's late segment never lands on a committed one.
        return f"{segment_name(seq)}-{uuid.uuid4().hex[:8]}"

    def publish(self, seg: str, stage: Stage) -> dict[str, Any]:
        prefix = segment_prefix(self.shard, seg)
        stage(self.storage.zarr_store(prefix, read_only=False))
        # Its files, listed in the record: a reader checks them with one list.
        return {"files": [k[len(prefix) :] for k in self.storage.list(prefix)]}

    def commit(self, records: list[dict[str, Any]]) -> None:
        if self._log is None:
            raise RuntimeError(f"shard {self.shard}: commit before open")
        self._log.append(records)  # one object, create-if-absent: all or nothing
        journal = self._journal
        journal.records.extend(records)
        journal.last = self._log.next - 1
        if journal.last - journal.checkpoint >= CHECKPOINT_RECORDS:
            write_checkpoint(self.storage, self.shard, journal)

    def discard(self, seg: str) -> None:
        # A write whose answer was lost may have committed it: an unjournalled segment is
        # garbage that the next lease holder removes.
        return None

    def check_owner(self) -> None:
        if self._lease is not None and self._lease.lost:  # known already: write nothing more
            raise ShardFencedError(
                f"shard {self.shard} of {self.storage.url}: this writer lost its lease "
                "(another writer took the shard over): it stops, its uncommitted work is "
                "discarded"
            )

    def mark(self, marks: list[dict[str, Any]]) -> None:
        # A record of its own (records are immutable: no side copy is needed).
        RecordLog(self.storage, self.shard).claim(marks)

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def held(self) -> bool:
        return shard_leased(self.storage, self.shard)


def shard_log(
    root: str | Path,
    shard: int,
    *,
    lease_ttl_s: float = LEASE_TTL_S,
    break_lease: bool = False,
    stop_check: Callable[[], None] | None = None,
) -> ShardLog:
    """The backend of shard ``shard`` of the store at ``root`` (a path or a URL); the lease
    settings apply on object storage only."""
    if is_url(root):
        return ObjectShardLog(
            str(root), shard, ttl_s=lease_ttl_s, break_lease=break_lease, stop_check=stop_check
        )
    return FileShardLog(local_path(root), shard)


def object_segment_seq(name: str) -> int | None:
    """The sequence number of a segment on object storage (``seg-NNNNNN-UNIQUE``)."""
    return segment_seq(name.rsplit("-", 1)[0]) if name.count("-") == 2 else None


def take_lock(root: Path, shard: int) -> int:
    """Take the shard's writer lock (its fd; closing it releases), or raise ShardLockedError."""
    lock = lock_path(root, shard)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardLockedError(
            f"shard {shard} of {root} is being written by another process "
            f"(lock {lock}); one writer per shard"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    return fd


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
