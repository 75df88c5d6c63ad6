"""One small storage interface for the store's commit protocol, with two backends.

The protocol needs five operations (Delta Lake's LogStore contract, reduced): create an object
only if it is absent, replace one only if it is unchanged since it was read, get one with its
version, list a prefix, delete. Nothing else: no rename, no append, no lock. Objects are
addressed by ``/``-separated keys relative to the store's root.

- :class:`LocalStorage`: a folder on a POSIX file system (create-if-absent by ``link(2)`` of a
  fully written temporary file; replace-if-unchanged under an ``flock`` of the object).
- :class:`ObjectStorage`: S3, GCS or Azure through obstore (``PutMode.Create`` and
  ``UpdateVersion`` on the ETag), with retries and backoff. Credentials, region and endpoint
  come the standard way (``AWS_*``, ``AWS_ENDPOINT_URL``, ``GOOGLE_*``, ``AZURE_*``;
  ``AWS_SKIP_SIGNATURE=true`` for a public bucket).

:func:`open_storage` picks the backend from a store location (a path or a URL).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

OBJECT_SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
Keys = list[str]  # (``Storage.list`` shadows the builtin in the class body)
Blobs = list[bytes | None]


class StorageError(OSError):
    """The storage cannot be used (wrong credentials, no such bucket, unreachable endpoint, no
    conditional writes): its message is one line that says what to change."""


@dataclass(frozen=True)
class Version:
    """What identifies one state of an object (its ETag on object storage)."""

    tag: str


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names an object store (``s3://``, ``gs://``, ``az://``...)."""
    return (
        isinstance(location, str)
        and location.split("://", 1)[0] in OBJECT_SCHEMES
        and ("://" in location)
    )


def local_path(location: str | Path) -> Path:
    """The folder of a local store location (a path, or a ``file://`` URL)."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def store_location(location: str | Path) -> str | Path:
    """A store location as the cache package takes it: an object-store URL (kept as a string,
    without a trailing ``/``) or a local :class:`Path` (``file://`` URLs included)."""
    if is_url(location):
        return str(location).rstrip("/")
    return local_path(location)


class Storage(abc.ABC):
    """Objects under one root: the five operations the commit protocol is written against."""

    url: str

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> Version | None:
        """Write ``key`` only if no object is there (atomically, whole); its version, or
        ``None`` when an object already exists (nothing is written)."""

    @abc.abstractmethod
    def replace(self, key: str, data: bytes, version: Version) -> Version | None:
        """Replace ``key`` only if it is still at ``version``; the new version, or ``None``
        when it changed or is gone (nothing is written)."""

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, Version] | None:
        """An object's bytes and version, or ``None`` when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Keys:
        """Every key under ``prefix`` (a folder-like prefix ending in ``/``), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when it is already gone)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``key`` unconditionally (only for keys no one else writes: a segment's files
        under its unique prefix)."""

    @abc.abstractmethod
    def zarr_store(self, prefix: str, *, read_only: bool) -> Any:
        """A Zarr store rooted at ``prefix`` (for a segment's arrays)."""

    def get_many(self, keys: Keys) -> Blobs:
        """The bytes of several objects (``None`` for a missing one), fetched concurrently."""
        if len(keys) < 2:
            return [None if (g := self.get(k)) is None else g[0] for k in keys]
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(self.get, keys))
        return [None if g is None else g[0] for g in got]

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; how many."""
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)


class LocalStorage(Storage):
    """Objects as files under a folder of a POSIX file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _version(self, path: Path) -> Version:
        st = path.stat()
        return Version(f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}")

    def _temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, key: str, data: bytes) -> Version | None:
        path = self._path(key)
        tmp = self._temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and refused when the name exists
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return self._version(path)

    def replace(self, key: str, data: bytes, version: Version) -> Version | None:
        path = self._path(key)
        tmp = self._temp(path, data)
        try:
            with _locked(path.with_name(f".{path.name}.cas")):
                try:
                    if self._version(path) != version:
                        return None
                except FileNotFoundError:
                    return None
                os.replace(tmp, path)
                _fsync_dir(path.parent)
                return self._version(path)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> tuple[bytes, Version] | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
                st = os.fstat(f.fileno())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data, Version(f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}")

    def list(self, prefix: str) -> Keys:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if not name.startswith(".tmp-") and not name.endswith(".cas"):
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._temp(path, data), path)

    def zarr_store(self, prefix: str, *, read_only: bool) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self._path(prefix), read_only=read_only)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Retries with exponential backoff for 5xx answers, dropped connections and timeouts; a
# refused condition (412, 409) is an answer, never retried.
RETRY = {
    "max_retries": 6,
    "retry_timeout": timedelta(seconds=60),
    "backoff": {
        "init_backoff": timedelta(milliseconds=100),
        "max_backoff": timedelta(seconds=10),
        "base": 2,
    },
}


class ObjectStorage(Storage):
    """Objects in a bucket (S3, GCS, Azure) through obstore, under the URL's prefix."""

    def __init__(self, url: str, *, retry: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self._retry = retry or RETRY
        self.store = self._open(self.url)

    def _open(self, url: str) -> Any:
        try:
            from obstore.store import from_url
        except ImportError:  # pragma: no cover - a declared dependency
            raise StorageError(
                "object storage needs obstore: pip install obstore==0.12.1"
            ) from None
        options: dict[str, Any] = {"timeout": timedelta(seconds=30)}
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        if url.startswith("s3://") and endpoint.startswith("http://"):
            options["allow_http"] = True  # a local S3-compatible server (MinIO, Ceph, moto)
        try:
            return from_url(
                url, client_options=cast(Any, options), retry_config=cast(Any, self._retry)
            )
        except Exception as e:  # noqa: BLE001 - a malformed URL or configuration
            raise StorageError(f"cannot use store={url}: {_one_line(e)}") from None

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self.store, *args, **kwargs)
        except FileNotFoundError as e:
            if "NoSuchBucket" in str(e):
                raise StorageError(describe_error(self.url, what, key, e)) from None
            raise
        except Exception as e:
            if type(e).__name__ in ("AlreadyExistsError", "PreconditionError"):
                raise
            raise StorageError(describe_error(self.url, what, key, e)) from None

    def create(self, key: str, data: bytes) -> Version | None:
        import obstore

        try:
            r = self._call("write", key, obstore.put, key, data, mode="create")
        except Exception as e:
            if type(e).__name__ in ("AlreadyExistsError", "PreconditionError"):
                return None
            raise
        return Version(str(r["e_tag"]))

    def replace(self, key: str, data: bytes, version: Version) -> Version | None:
        import obstore

        try:
            r = self._call("write", key, obstore.put, key, data, mode={"e_tag": version.tag})
        except FileNotFoundError:
            return None
        except Exception as e:
            if type(e).__name__ in ("AlreadyExistsError", "PreconditionError"):
                return None
            raise
        return Version(str(r["e_tag"]))

    def get(self, key: str) -> tuple[bytes, Version] | None:
        import obstore

        try:
            r = self._call("read", key, obstore.get, key)
            data = bytes(r.bytes())
        except FileNotFoundError:
            return None
        return data, Version(str(r.meta["e_tag"]))

    def list(self, prefix: str) -> Keys:
        import obstore

        stream = self._call("list", prefix, obstore.list, prefix=prefix.rstrip("/") or None)
        try:
            keys = [m["path"] for batch in stream for m in batch]
        except Exception as e:  # noqa: BLE001
            raise StorageError(describe_error(self.url, "list", prefix, e)) from None
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        import obstore

        with contextlib.suppress(FileNotFoundError):
            self._call("delete", key, obstore.delete, key)

    def put(self, key: str, data: bytes) -> None:
        import obstore

        self._call("write", key, obstore.put, key, data)

    def zarr_store(self, prefix: str, *, read_only: bool) -> Any:
        from zarr.storage import ObjectStore

        return ObjectStore(self._open(f"{self.url}/{prefix.strip('/')}"), read_only=read_only)


def describe_error(url: str, what: str, key: str, e: BaseException) -> str:
    """One line for a failed request: wrong credentials, no bucket, no endpoint, or else."""
    text = str(e)
    name = type(e).__name__
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the provider's default endpoint"
    if "NoSuchBucket" in text:
        return f"store={url}: the bucket does not exist (create it, or fix the URL)"
    # No answer at all first: the request's text names the endpoint, whose port may hold "403".
    if "error sending request" in text or "Connect" in text or "dns error" in text:
        return (
            f"store={url}: cannot reach {endpoint} (after retries); check AWS_ENDPOINT_URL "
            "and the network"
        )
    if (
        name in ("UnauthenticatedError", "PermissionDeniedError")
        or any(c in text for c in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"))
        or re.search(r"(?<![\w.:/-])403(?!\w)", text)  # the status, not in a port, key or name
    ):
        return (
            f"store={url}: access denied ({name}): check the credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, AWS_REGION), or set "
            "AWS_SKIP_SIGNATURE=true for a public bucket"
        )
    return f"store={url}: {what} {key!r} failed: {_one_line(e)}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def open_storage(location: str | Path) -> Storage:
    """The storage of a store location: :class:`ObjectStorage` for ``s3://``, ``gs://`` and
    ``az://`` URLs, :class:`LocalStorage` for a path or a ``file://`` URL."""
    if is_url(location):
        return ObjectStorage(str(location))
    return LocalStorage(local_path(location))


def check_conditional_writes(storage: Storage) -> None:
    """Refuse a server that does not honour create-if-absent and replace-if-unchanged (the
    commit protocol's only guarantees), probing it with a throwaway object. Also the first
    request a run makes: wrong credentials, a missing bucket or an unreachable endpoint fail
    here, as one line, before any work."""
    key = f"_probe/{uuid.uuid4().hex}"
    try:
        first = storage.create(key, b"1")
        second = storage.create(key, b"2")
        stale = storage.replace(key, b"3", Version('"not-its-etag"'))
        got = storage.get(key)
    finally:
        with contextlib.suppress(StorageError):
            storage.delete(key)
    if first is None or second is not None or stale is not None or got is None or got[0] != b"1":
        raise StorageError(
            f"store={storage.url}: the server does not honour conditional writes "
            "(If-None-Match: * and If-Match), which the store's commit protocol needs; use "
            "AWS S3, GCS, Azure, MinIO, or another server that does"
        )
