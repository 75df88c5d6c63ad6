"""Creating a store and checking that a run is compatible with what it already holds."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cache.layout import ATTRS_KEY, FORMAT_NAME, FORMAT_VERSION, StoreLayout
from cache.storage import Storage, check_conditional_writes, is_url, open_storage


class StoreMismatchError(ValueError):
    pass


def read_store_attrs(root: str | Path) -> dict[str, Any]:
    """The ``streamfeat`` attributes of the store at ``root`` (error if it is not a store)."""
    if is_url(root):
        got = open_storage(root).get("zarr.json")
        if got is None:
            raise FileNotFoundError(f"no streamfeat store at {str(root)!r} (missing zarr.json)")
        text = got[0].decode()
    else:
        meta = Path(root) / "zarr.json"
        if not meta.is_file():
            raise FileNotFoundError(f"no streamfeat store at {str(root)!r} (missing {meta})")
        text = meta.read_text()
    attrs = json.loads(text).get("attributes", {}).get(ATTRS_KEY)
    if not attrs or attrs.get("format") != FORMAT_NAME:
        raise ValueError(f"{str(root)!r} is a Zarr store but not a streamfeat cache")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(root)!r} has cache format version {attrs.get('format_version')}; "
            f"this streamfeat reads version {FORMAT_VERSION}"
        )
    return dict(attrs)


def init_store(
    root: str | Path,
    *,
    layout: StoreLayout,
    features: dict[str, Any],
    provenance: dict[str, Any],
    stop_check: Callable[[], None] | None = None,
    shard_assignment: str | None = None,
) -> dict[str, Any]:
    """Create the store at ``root``, or check that an existing one holds the same features.

    ``features`` is everything that changes the numbers (encoder and its weights, fps, frame
    size, pooling, dtype): a run whose ``features`` differ from the store's is refused, so one
    store never mixes features of different encoders. ``provenance`` (package versions, host,
    time) is recorded only when the store is created; each writer run journals its own.
    While another process holds the creation lock, ``stop_check`` (if given) is called every
    50 ms and may raise, so a signal stops a run that waits for the lock (``job=extract``
    passes its stop request). ``shard_assignment`` (how the job gives videos to shards) is
    recorded at creation, so later runs keep the rule the store was begun with.
    """
    import zarr

    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "layout": layout.to_dict(),
        "features": features,
        "provenance": provenance,
    }
    if shard_assignment is not None:
        attrs["shard_assignment"] = shard_assignment
    attrs = json.loads(json.dumps(attrs))  # normalise tuples etc. to what JSON gives back
    if is_url(root):
        return _init_object_store(open_storage(root), attrs)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # Creators of one store (workers, array tasks) take turns: the first creates it, the
    # others then compare their settings with it.
    fd = os.open(root / ".create.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_polling(fd, stop_check or _no_stop)
        if (root / "zarr.json").is_file():
            return _check(root, attrs)
        zarr.open_group(root, mode="a", zarr_format=3, attributes={ATTRS_KEY: attrs})
        for sub in ("shards",):
            zarr.open_group(root / sub, mode="a", zarr_format=3)
        (root / "index").mkdir(exist_ok=True)
        return read_store_attrs(root)
    finally:
        os.close(fd)


def store_exists(root: str | Path) -> bool:
    """Whether a store (its root ``zarr.json``) exists at ``root``, a path or a URL."""
    if is_url(root):
        return open_storage(root).get("zarr.json") is not None
    return (Path(root) / "zarr.json").is_file()


def _init_object_store(storage: Storage, attrs: dict[str, Any]) -> dict[str, Any]:
    """Create a store on object storage: its root metadata is written create-if-absent, so of
    two creators one creates it and the other compares its settings with it (no lock). The
    server is probed first: one that ignores conditional writes is refused."""
    import zarr
    from zarr.storage import MemoryStore

    check_conditional_writes(storage)
    mem: dict[str, Any] = {}
    zarr.open_group(MemoryStore(mem), mode="w", zarr_format=3, attributes={ATTRS_KEY: attrs})
    zarr.open_group(MemoryStore(mem), path="shards", mode="a", zarr_format=3)
    meta = {k: bytes(v.to_bytes()) for k, v in mem.items()}
    if storage.create("zarr.json", meta["zarr.json"]) is None:
        return _check(storage.url, attrs)
    storage.put("shards/zarr.json", meta["shards/zarr.json"])
    return read_store_attrs(storage.url)


def _lock_polling(fd: int, stop_check: Callable[[], None], poll_s: float = 0.05) -> None:
    """``flock(fd, LOCK_EX)``, polled: a blocking flock resumes after a signal whose handler
    only records a stop (inside ``signals.deferred()``), so it would wait for the lock's holder
    for ever; polling lets ``stop_check`` raise between tries."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            stop_check()
            time.sleep(poll_s)


def _no_stop() -> None:
    return None


def _check(root: str | Path, attrs: dict[str, Any]) -> dict[str, Any]:
    existing = read_store_attrs(root)
    for key in ("layout", "features"):
        # Keys a store made by an older streamfeat does not record are not compared.
        have = {k: v for k, v in attrs[key].items() if k in existing[key]}
        if existing[key] != {**existing[key], **have} or set(existing[key]) - set(have):
            diff = _diff(existing[key], have)
            raise StoreMismatchError(
                f"store {str(root)!r} holds features made with different settings "
                f"({key}: {diff}); write to a new store= path or use the same settings"
            )
    return existing


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    parts = [
        f"{k}: store has {old.get(k)!r}, run has {new.get(k)!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]
    return "; ".join(parts)
