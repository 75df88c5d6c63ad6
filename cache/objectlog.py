"""The store's commit protocol on object storage (no rename, append, lock or fsync there),
written against :class:`cache.storage.Storage` only. The rules and why they are safe are in
docs/object-storage.md; in short:

- a shard's journal is a run of immutable numbered records (``index/shard-S/N.json``, one per
  commit), each written create-if-absent: a writer whose record is refused has lost its shard
  and stops, so a fenced writer never commits after another took the shard over;
- one writer per shard by a lease object (``shards/S/lease.json``) renewed by
  replace-if-unchanged; a lease is taken over only after it has not changed for its
  time-to-live, judged on the taker's own clock, and the taker's first act is a record;
- segments go under unique prefixes and are listed, with their files, in the record that
  commits them; what no record names is garbage that the lease holder removes;
- every ``CHECKPOINT_RECORDS`` records the lease holder writes a checkpoint, all the shard's
  records so far in one object, so a reader fetches that and the records after it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cache.storage import Storage, StorageError, Version

log = logging.getLogger(__name__)

LEASE_TTL_S = 30.0  # the default: a lease unchanged this long is taken over
# The lease holder writes a checkpoint of its shard's journal every this many records.
CHECKPOINT_RECORDS = 50


class ShardFencedError(RuntimeError):
    """This writer's commit was refused: another writer took its shard over (its lease had
    lapsed). Nothing it writes after that is ever committed."""


def records_prefix(shard: int) -> str:
    return f"index/shard-{shard:05d}/"


def record_key(shard: int, number: int) -> str:
    return f"{records_prefix(shard)}{number:010d}.json"


def lease_key(shard: int) -> str:
    return f"shards/{shard:05d}/lease.json"


def segment_prefix(shard: int, segment: str) -> str:
    return f"shards/{shard:05d}/{segment}/"


def _number(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    stem = name[: -len(".json")] if name.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None


def record_numbers(storage: Storage, shard: int) -> list[int]:
    """The numbers of shard ``shard``'s committed records, in order (one list)."""
    nums = (_number(k) for k in storage.list(records_prefix(shard)))
    return sorted(n for n in nums if n is not None)


def checkpoint_key(shard: int, number: int) -> str:
    """The checkpoint of shard ``shard``'s records 1..``number`` (all of them, in order)."""
    return f"{records_prefix(shard)}checkpoint-{number:010d}.json"


def _checkpoint_number(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    if not (name.startswith("checkpoint-") and name.endswith(".json")):
        return None
    digits = name[len("checkpoint-") : -len(".json")]
    return int(digits) if digits.isdigit() else None


@dataclass
class ShardJournal:
    """One shard's journal as read: its records in commit order, the number of the last
    record they include, and the checkpoint they were read from (0: none)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    last: int = 0
    checkpoint: int = 0


def read_journals(storage: Storage) -> dict[int, ShardJournal]:
    """Every shard's journal: one list of ``index/``, then, per shard, its latest checkpoint
    and the records after it, fetched concurrently (so opening a store costs a few requests
    per shard, not one per commit ever made). A checkpoint deleted since the list (a newer
    one replaced it) means a new list; a damaged one is skipped for the records it covers
    (never deleted). A record that is not a JSON list of objects is skipped with a warning (it
    cannot be torn: an object is written whole or not at all)."""
    for _ in range(8):
        got = _read_journals(storage)
        if got is not None:
            return got
    raise StorageError(f"{storage.url}: its journal checkpoints keep changing while read")


def _read_journals(storage: Storage) -> dict[int, ShardJournal] | None:
    records: dict[int, dict[int, str]] = {}
    checkpoints: dict[int, dict[int, str]] = {}
    for key in storage.list("index/"):
        parts = key.split("/")
        if len(parts) != 3 or not parts[1].startswith("shard-"):
            continue
        digits = parts[1][len("shard-") :]
        if not digits.isdigit():
            continue
        if (num := _number(key)) is not None:
            records.setdefault(int(digits), {})[num] = key
        elif (num := _checkpoint_number(key)) is not None:
            checkpoints.setdefault(int(digits), {})[num] = key
    want: list[tuple[int, int, str]] = []  # (shard, number, key); number 0: its checkpoint
    for shard in sorted(records):
        mine, c = records[shard], max(checkpoints.get(shard, {0: ""}))
        if c and c in mine:  # a checkpoint of records that exist (else: ignore it)
            want.append((shard, 0, checkpoints[shard][c]))
        else:
            c = 0
        want += [(shard, n, mine[n]) for n in sorted(mine) if n > c]
    out = {shard: ShardJournal() for shard in sorted(records)}
    blobs = storage.get_many([k for *_, k in want])
    for (shard, num, key), data in zip(want, blobs, strict=True):
        journal = out[shard]
        if num == 0:  # the checkpoint comes first
            if data is None:
                return None  # replaced by a newer one since the list: list again
            c = _checkpoint_number(key) or 0
            got = _parse_records(storage, key, data)
            if got is None:  # damaged: read the records it covers instead
                got = _records_of(storage, records[shard], c)
            journal.records.extend(got)
            journal.last = journal.checkpoint = c
            continue
        got = _parse_records(storage, key, data)
        journal.records.extend(got or [])
        journal.last = num
    return out


def _parse_records(storage: Storage, key: str, data: bytes | None) -> list[dict[str, Any]] | None:
    try:
        got = json.loads(data or b"")
        if not isinstance(got, list) or not all(isinstance(r, dict) for r in got):
            raise ValueError("not a list of records")
    except ValueError as e:
        log.warning("%s/%s: damaged record skipped (%s)", storage.url, key, e)
        return None
    return got


def _records_of(storage: Storage, keys: dict[int, str], upto: int) -> list[dict[str, Any]]:
    nums = [n for n in sorted(keys) if n <= upto]
    blobs = storage.get_many([keys[n] for n in nums])
    out: list[dict[str, Any]] = []
    for n, data in zip(nums, blobs, strict=True):
        out.extend(_parse_records(storage, keys[n], data) or [])
    return out


def read_records(storage: Storage) -> dict[int, list[dict[str, Any]]]:
    """Every shard's journal records in commit order (see :func:`read_journals`)."""
    return {shard: j.records for shard, j in read_journals(storage).items()}


def write_checkpoint(storage: Storage, shard: int, journal: ShardJournal) -> bool:
    """Write the checkpoint of ``journal`` (records 1..``journal.last`` of shard ``shard``)
    create-if-absent, then delete checkpoints older than the one before it (a reader that
    listed that one may still be reading it). Only the shard's lease holder calls this: the
    records it covers are immutable, so two checkpoints of one number are equal. Whether it
    was written (a failure costs only speed: the records stay the truth)."""
    try:
        storage.create(checkpoint_key(shard, journal.last), _encode(journal.records))
        olds = sorted(
            n
            for k in storage.list(records_prefix(shard))
            if (n := _checkpoint_number(k)) is not None and n < journal.last
        )
        for n in olds[:-1]:
            storage.delete(checkpoint_key(shard, n))
    except StorageError as e:
        log.warning("shard %d: journal checkpoint not written: %s", shard, e)
        return False
    journal.checkpoint = journal.last
    return True


class RecordLog:
    """The numbered records of one shard, appended by its lease holder only."""

    def __init__(self, storage: Storage, shard: int) -> None:
        self.storage = storage
        self.shard = shard
        self.next = 1 + max(record_numbers(storage, shard), default=0)

    def claim(self, records: list[dict[str, Any]]) -> None:
        """Write the first record of a new lease holder: a number refused here was taken by a
        writer that lost the lease just now, so look again and take the next one. Once this
        record stands, every write of an earlier holder is refused (its next number is taken)."""
        for _ in range(1000):
            if self.storage.create(record_key(self.shard, self.next), _encode(records)):
                self.next += 1
                return
            self.next = 1 + max(record_numbers(self.storage, self.shard), default=self.next)
        raise ShardFencedError(f"shard {self.shard}: could not claim its journal")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Commit ``records`` as the next record (one object, whole or not at all). Raises
        :class:`ShardFencedError` when the number is taken: another writer holds the shard."""
        if not records:
            return
        key, payload = record_key(self.shard, self.next), _encode(records)
        if self.storage.create(key, payload) is None and not self._ours(key, payload):
            raise ShardFencedError(
                f"shard {self.shard} of {self.storage.url}: another writer took this shard over "
                f"(journal record {self.next} exists; this writer's lease had lapsed): this "
                "writer stops, its uncommitted work is discarded"
            )
        self.next += 1

    def _ours(self, key: str, payload: bytes) -> bool:
        """Whether a refused record holds exactly what this writer sent: a retried write whose
        first answer was lost (the record then stands; the writer is not fenced)."""
        got = self.storage.get(key)
        return got is not None and got[0] == payload


def _encode(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode()


class ShardLeaseHeld(RuntimeError):
    """A live writer holds the lease (it changed while this one watched it)."""


class Lease:
    """The one-writer-per-shard lease: created if absent, renewed by a heartbeat thread
    (replace-if-unchanged, every ``ttl_s / 4``), released by replacing it with a released mark.

    ``acquire`` takes a free or released lease at once; a held one is watched on this process's
    clock and taken over only when it has not changed for its holder's ``ttl_s`` (a live
    holder renews it sooner: then :class:`ShardLeaseHeld`). ``break_lease``: take it at once
    (the user knows the holder is dead). ``say`` reports the wait.
    """

    def __init__(
        self,
        storage: Storage,
        shard: int,
        *,
        ttl_s: float = LEASE_TTL_S,
        break_lease: bool = False,
        stop_check: Callable[[], None] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be > 0, got {ttl_s}")
        self.storage, self.shard, self.ttl_s = storage, shard, ttl_s
        self.break_lease, self.say = break_lease, say or _say
        self.stop_check = stop_check or (lambda: None)
        self.key = lease_key(shard)
        self.owner = uuid.uuid4().hex[:12]
        self.lost = False  # a renewal was refused: another writer holds the shard now
        self._version: Version | None = None
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, **extra: Any) -> bytes:
        body = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "ttl_s": self.ttl_s,
            "beat": self._beat,
            "at": time.time(),  # the holder's clock, shown only: a taker judges on its own
            **extra,
        }
        return json.dumps(body).encode()

    def acquire(self) -> None:
        while True:
            got = self.storage.get(self.key)
            if got is None:
                self._version = self.storage.create(self.key, self._body())
                if self._version is not None:
                    break
                continue
            data, version = got
            holder = _parse(data)
            if not holder.get("released") and not self.break_lease:
                self._wait_for_lapse(holder, version)
            elif not holder.get("released"):
                self.say(f"shard {self.shard}: breaking the lease of {_who(holder)} "
                         "(job.break_lease=true)")  # fmt: skip
            self._version = self.storage.replace(self.key, self._body(), version)
            if self._version is not None:
                break
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()

    def _wait_for_lapse(self, holder: dict[str, Any], version: Version) -> None:
        ttl = float(holder.get("ttl_s") or LEASE_TTL_S)
        self.say(
            f"shard {self.shard}: waiting up to {ttl:.0f} s for the lease of {_who(holder)} to "
            "lapse (a writer killed without releasing it); job.break_lease=true takes it now "
            "if you know that writer is dead"
        )
        t0 = time.monotonic()
        while time.monotonic() - t0 < ttl:
            self.stop_check()
            time.sleep(min(0.25, ttl / 8))
            now = self.storage.get(self.key)
            if now is None or now[1] != version:
                if now is not None and not _parse(now[0]).get("released"):
                    raise ShardLeaseHeld(
                        f"shard {self.shard} of {self.storage.url} is being written by "
                        f"{_who(holder)} (its lease is renewed); one writer per shard"
                    )
                return  # released or gone: the caller's replace decides
        self.say(f"shard {self.shard}: the lease of {_who(holder)} lapsed; taking it over")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self.renew()

    def renew(self) -> bool:
        """Renew the lease now; ``False`` (and ``lost``) when another writer has taken it."""
        if self.lost or self._version is None:
            return False
        self._beat += 1
        try:
            version = self.storage.replace(self.key, self._body(), self._version)
        except StorageError as e:  # transient: the next beat tries again
            log.warning("shard %d: lease renewal failed: %s", self.shard, e)
            return True
        if version is None:
            self.lost = True
            log.error("shard %d: lost its lease (another writer took the shard)", self.shard)
            return False
        self._version = version
        return True

    def release(self) -> None:
        """Stop renewing and mark the lease released (a next writer takes it at once)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._version is not None and not self.lost:
            try:
                self.storage.replace(self.key, self._body(released=True), self._version)
            except StorageError as e:  # it lapses on its own
                log.warning("shard %d: lease not released: %s", self.shard, e)
        self._version = None


def _say(message: str) -> None:
    """A wait the user must see (it may last the lease's ttl), whatever logging is set up."""
    print(message, file=sys.stderr, flush=True)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        got = json.loads(data)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def _who(holder: dict[str, Any]) -> str:
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"


def lease_state(storage: Storage, shard: int) -> dict[str, Any] | None:
    """The shard's lease as its holder last wrote it (``None``: never taken)."""
    got = storage.get(lease_key(shard))
    return None if got is None else _parse(got[0])


def shard_leased(storage: Storage, shard: int) -> bool:
    """Whether shard ``shard`` looks held: its lease is not released and its holder renewed it
    within its time-to-live (by the holder's clock: a display, not a decision)."""
    lease = lease_state(storage, shard)
    if not lease or lease.get("released"):
        return False
    return time.time() - float(lease.get("at", 0.0)) < float(lease.get("ttl_s", LEASE_TTL_S))


def segment_names(records: list[dict[str, Any]]) -> set[str]:
    return {str(r["segment"]) for r in records if r.get("kind") == "segment" and "segment" in r}


def collect_garbage(storage: Storage, shard: int, referenced: set[str]) -> list[str]:
    """Delete segment prefixes of shard ``shard`` that no record names (a writer stopped
    between writing a segment and committing it, or fenced). Only the lease holder calls
    this, after its first record: no earlier holder can commit any more."""
    base = f"shards/{shard:05d}/"
    orphans = sorted(
        {
            k[len(base) :].split("/", 1)[0]
            for k in storage.list(base)
            if k.count("/") >= 3 and k[len(base) :].startswith("seg-")
        }
        - referenced
    )
    for seg in orphans:
        storage.delete_prefix(segment_prefix(shard, seg))
    return [f"shard {shard}: deleted unreferenced segment {seg}" for seg in orphans]
