"""Videos on object storage (``s3://``, ``gs://``, ``az://``, ``https://``): listing them, and
downloading each one whole to local scratch ahead of the decoder.

A remote video is downloaded once, whole, then decoded from the local copy as any other file:
decoding straight from the store would read it two to three times over in range requests (the
demux pass, the sampled decode, torchcodec's metadata). :class:`Prefetcher` keeps the next
``prefetch`` videos downloading in input order, never holds more than ``scratch_gb`` on disk
(a single bigger video is still fetched, alone) and removes each copy once it is decoded. Every
download is conditional on the ETag seen when the video was listed, so a source replaced since
fails that video alone, with both ETags in its reason.

Credentials, region and endpoint come the standard way: ``AWS_*`` variables (``AWS_ENDPOINT_URL``
for MinIO, Ceph or R2; ``AWS_SKIP_SIGNATURE=true`` for a public bucket), ``GOOGLE_*``,
``AZURE_*``, as obstore reads them. Nothing here knows about jobs or clusters.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from extract.pipeline import VideoTask

SCHEMES = frozenset({"s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "http", "https"})
LISTABLE = SCHEMES - {"http", "https"}  # a plain web server has no listing
DOWNLOAD_CHUNK_BYTES = 8 << 20


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names an object (``s3://bucket/key``, ``https://host/path``...)."""
    scheme, sep, _ = str(text).partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


class RemoteAccessError(ValueError):
    """Object storage cannot be used at all (credentials refused, no such bucket, endpoint
    unreachable): the run stops before any work with this one line."""


@dataclass(frozen=True)
class RemoteOptions:
    """How videos on object storage are fetched (``job.remote`` of ``job=extract``).

    ``prefetch``: videos downloading or downloaded ahead of the decoders; ``scratch_dir``: where
    the copies go (null: the system's temporary folder); ``scratch_gb``: most bytes of copies on
    disk at once (a single bigger video is still fetched, alone); ``connect_timeout_s`` and
    ``max_retries`` bound how long an unreachable endpoint takes to report (retries back off
    exponentially from ``backoff_s``).
    """

    prefetch: int = 2
    scratch_dir: str | None = None
    scratch_gb: float = 20.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3
    backoff_s: float = 0.2

    def __post_init__(self) -> None:
        if self.prefetch < 1:
            raise ValueError(f"job.remote.prefetch must be >= 1, got {self.prefetch}")
        if not self.scratch_gb > 0:
            raise ValueError(f"job.remote.scratch_gb must be > 0, got {self.scratch_gb}")
        if not self.connect_timeout_s > 0:
            raise ValueError(
                f"job.remote.connect_timeout_s must be > 0, got {self.connect_timeout_s}"
            )
        if self.max_retries < 0:
            raise ValueError(f"job.remote.max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0:
            raise ValueError(f"job.remote.backoff_s must be >= 0, got {self.backoff_s}")

    @property
    def scratch_bytes(self) -> int:
        return int(self.scratch_gb * 1e9)


@dataclass(frozen=True)
class RemoteObject:
    """A video on object storage as listed: its URL, size and ETag (what its fingerprint is)."""

    url: str
    size: int
    etag: str

    def fingerprint(self) -> dict[str, Any]:
        """The source fingerprint a store records for it (a change restarts or flags it)."""
        return {"size": self.size, "etag": self.etag, "url": self.url}


# -- stores and errors -------------------------------------------------------------------------


def split_url(url: str) -> tuple[str, str]:
    """``(store URL, key)``: ``s3://bucket/a/b.mp4`` -> ``("s3://bucket", "a/b.mp4")``."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{url!r} names no bucket or host")
    return f"{parts.scheme.lower()}://{parts.netloc}", parts.path.lstrip("/")


def pseudo_path(url: str) -> Path:
    """A path standing for ``url`` in id arithmetic: ``/s3/bucket/a/b.mp4`` (never opened)."""
    parts = urlsplit(url)
    return Path("/", parts.scheme.lower(), parts.netloc, *PurePosixPath(parts.path).parts[1:])


def _endpoint(scheme: str) -> str | None:
    if scheme in ("s3", "s3a"):
        return next(
            (os.environ[k] for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
             if os.environ.get(k)),
            None,
        )  # fmt: skip
    return None


@functools.lru_cache(maxsize=64)
def _store(base: str, opts: RemoteOptions, env: tuple[str | None, ...]) -> Any:
    from obstore.store import from_url

    scheme = base.split("://", 1)[0]
    endpoint = _endpoint(scheme) or ""
    client: dict[str, Any] = {"connect_timeout": timedelta(seconds=opts.connect_timeout_s)}
    if scheme == "http" or endpoint.startswith("http://"):
        client["allow_http"] = True
    backoff = timedelta(seconds=opts.backoff_s)
    retry: dict[str, Any] = {
        "max_retries": opts.max_retries,
        "backoff": {"init_backoff": backoff, "max_backoff": backoff * 16, "base": 2.0},
        "retry_timeout": timedelta(seconds=opts.connect_timeout_s * (opts.max_retries + 1) * 4),
    }
    if scheme == "s3a":
        base = "s3" + base[3:]
    try:
        return from_url(base, client_options=client, retry_config=retry)  # type: ignore[call-overload]
    except Exception as e:  # noqa: BLE001 - a malformed URL or configuration, named
        raise RemoteAccessError(f"cannot use {base}: {_reason(e, base)}") from None


def store_for(url: str, opts: RemoteOptions) -> tuple[Any, str]:
    """The obstore store holding ``url`` (one per bucket or host, reused) and the key in it."""
    base, key = split_url(url)
    env = tuple(os.environ.get(k) for k in _ENV_KEYS)  # a changed environment, a new client
    return _store(base, opts, env), key


_ENV_KEYS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_SKIP_SIGNATURE", "AWS_PROFILE",
)  # fmt: skip
_CODE = re.compile(r"<Code>(\w+)</Code>")
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
            "InvalidToken", "AuthorizationHeaderMalformed")  # fmt: skip


def _reason(e: BaseException, where: str) -> str:
    """One short line for an obstore error: what went wrong and which setting to check."""
    text = str(e)
    code = _CODE.search(text)
    if code and code.group(1) in ("NoSuchBucket", "ContainerNotFound"):
        return f"the bucket does not exist ({code.group(1)})"
    refused = code and code.group(1) in _REFUSED
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    if refused or isinstance(e, PermissionDeniedError | UnauthenticatedError):
        what = code.group(1) if code else type(e).__name__
        return (
            f"the credentials were refused ({what}): check AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); AWS_SKIP_SIGNATURE=true for a public bucket"
        )
    if "error sending request" in text or "Connect" in text or "timed out" in text.lower():
        endpoint = _endpoint(where.split("://", 1)[0]) or where
        return f"cannot reach {endpoint} (AWS_ENDPOINT_URL; network, proxy or timeout)"
    if "credential" in text.lower():
        return f"no usable credentials: {text.splitlines()[0][:200]}"
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


# -- listing -----------------------------------------------------------------------------------


def list_objects(url: str, extensions: Iterable[str], opts: RemoteOptions) -> list[RemoteObject]:
    """Every object under the folder ``url`` (recursively) whose name ends in one of
    ``extensions`` (case-insensitive). Raises :class:`RemoteAccessError` when the bucket
    cannot be listed."""
    import obstore

    scheme = url.split("://", 1)[0].lower()
    if scheme not in LISTABLE:
        raise ValueError(
            f"videos={url!r}: an {scheme}:// folder cannot be listed; name its videos in a list "
            "file (one URL a line)"
        )
    store, key = store_for(url, opts)
    prefix = key.rstrip("/")
    base, _ = split_url(url)
    exts = {e.lower() for e in extensions}
    out = []
    try:
        for batch in obstore.list(store, prefix or None, chunk_size=1000):
            for meta in batch:
                path = str(meta["path"])
                if PurePosixPath(path).suffix.lower() in exts:
                    out.append(RemoteObject(f"{base}/{path}", int(meta["size"]), _etag(meta)))
    except Exception as e:  # noqa: BLE001 - every listing failure is the whole run's
        raise RemoteAccessError(f"cannot list videos={url!r}: {_reason(e, url)}") from None
    return out


def _etag(meta: Any) -> str:
    """The object's ETag ("" where the server gives none: a plain web server may not)."""
    return str(meta.get("e_tag") or "")


def head_objects(urls: Sequence[str], opts: RemoteOptions) -> dict[str, RemoteObject | str]:
    """Size and ETag of each of ``urls`` (or, for one that does not exist, why). Each bucket is
    listed once first, so a refused credential, a missing bucket or an unreachable endpoint
    raises :class:`RemoteAccessError` instead of failing every video."""
    import obstore

    first: dict[str, str] = {}
    for url in urls:
        base, key = split_url(url)
        first.setdefault(base, url)
    for base, url in first.items():
        store, key = store_for(url, opts)
        if base.split("://", 1)[0] not in LISTABLE:
            continue
        try:
            next(iter(obstore.list(store, key, chunk_size=1)), None)
        except Exception as e:  # noqa: BLE001 - the bucket is unusable: the run stops
            raise RemoteAccessError(f"cannot read {base}: {_reason(e, url)}") from None

    def head(url: str) -> RemoteObject | str:
        store, key = store_for(url, opts)
        try:
            meta = obstore.head(store, key)
        except FileNotFoundError:
            return "missing object (not found)"
        except Exception as e:  # noqa: BLE001 - e.g. an endpoint that went away
            raise RemoteAccessError(f"cannot read {url}: {_reason(e, url)}") from None
        return RemoteObject(url, int(meta["size"]), _etag(meta))

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(urls, pool.map(head, urls), strict=True))


def read_text(url: str, opts: RemoteOptions) -> str:
    """The text of a (list) file on object storage."""
    import obstore

    store, key = store_for(url, opts)
    try:
        return bytes(obstore.get(store, key).bytes()).decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"videos={url!r}: no such object") from None
    except Exception as e:  # noqa: BLE001
        raise RemoteAccessError(f"cannot read videos={url!r}: {_reason(e, url)}") from None


def remote_changed(source: dict[str, Any], opts: RemoteOptions | None = None) -> str | None:
    """Why a remote source differs from its recorded fingerprint ``{size, etag, url}`` (None:
    the same, or it cannot be asked; a removed object says so)."""
    import obstore

    url = source.get("url")
    if not isinstance(url, str) or not is_url(url):
        return None
    try:
        store, key = store_for(url, opts or RemoteOptions())
        meta = obstore.head(store, key)
    except FileNotFoundError:
        return "source removed since extraction"
    except Exception:  # noqa: BLE001 - unreachable now: not evidence of a change
        return None
    now = {"size": int(meta["size"]), "etag": _etag(meta)}
    diff = [k for k in now if k in source and source[k] != now[k]]
    return f"source changed since extraction ({', '.join(diff)})" if diff else None


# -- download ----------------------------------------------------------------------------------


def download(obj: RemoteObject, dest: Path, opts: RemoteOptions) -> None:
    """Copy ``obj`` to ``dest``, only if it still has the ETag it was listed with (else a
    ``ValueError`` naming both ETags; ``dest`` is then removed)."""
    import obstore
    from obstore.exceptions import PreconditionError

    store, key = store_for(obj.url, opts)
    try:
        try:
            # without an ETag (a plain web server), only the size is checked after
            got = obstore.get(store, key, options={"if_match": obj.etag} if obj.etag else None)
        except PreconditionError:
            now = _etag(obstore.head(store, key))
            raise ValueError(
                f"source changed during download: ETag {obj.etag} then {now}; a rerun takes "
                "the new one"
            ) from None
        with open(dest, "wb") as f:
            for chunk in got.stream(min_chunk_size=DOWNLOAD_CHUNK_BYTES):
                f.write(chunk)
        size = dest.stat().st_size
        if size != obj.size:
            raise ValueError(
                f"source changed during download: {obj.size} bytes listed, {size} read"
            )
    except FileNotFoundError:
        dest.unlink(missing_ok=True)
        raise ValueError(f"missing object: {obj.url} was removed after it was listed") from None
    except ValueError:
        dest.unlink(missing_ok=True)
        raise
    except Exception as e:  # noqa: BLE001 - the video fails with the reason, the run goes on
        dest.unlink(missing_ok=True)
        raise ValueError(f"download of {obj.url} failed: {_reason(e, obj.url)}") from None


# -- a copy shared by the processes of one machine ------------------------------------------------


def scratch_folder(opts: RemoteOptions, name: str) -> Path:
    """``name`` under this machine's scratch (``opts.scratch_dir``, else the temporary folder)."""
    parent = opts.scratch_dir or tempfile.gettempdir()
    return Path(parent).expanduser() / name


def _copy_key(obj: RemoteObject) -> str:
    # the ETag is part of the key: a replaced object is another copy, never the old one reused
    return hashlib.sha256(f"{obj.url}\0{obj.etag}\0{obj.size}".encode()).hexdigest()[:32]


def shared_copy(obj: RemoteObject, folder: Path, opts: RemoteOptions) -> Path:
    """A local copy of ``obj`` in ``folder``, one per object (URL + ETag) for every process
    of this machine that asks: the first downloads it under a file lock, the others wait for
    it and reuse it (its size checked). A download is conditional on the ETag, so a source
    replaced since it was listed raises ``ValueError`` naming both ETags (as :func:`download`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    key = _copy_key(obj)
    dest = folder / f"{key}{PurePosixPath(obj.url).suffix[:16]}"
    with open(folder / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a kill
        try:
            if dest.stat().st_size == obj.size:
                return dest
        except FileNotFoundError:
            pass
        part = folder / f"{key}.part-{os.getpid()}"
        download(obj, part, opts)  # removes ``part`` when it fails
        os.replace(part, dest)  # whole or absent: a kill mid-download leaves no copy to reuse
    return dest


def remove_shared_copy(obj: RemoteObject, folder: Path) -> None:
    """Remove this machine's copy of ``obj`` from ``folder`` (after a download under way). The
    empty lock file stays (removing it would let two processes lock different files); it goes
    with the folder."""
    key = _copy_key(obj)
    lock_path = folder / f"{key}.lock"
    if not lock_path.exists():
        return
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (folder / f"{key}{PurePosixPath(obj.url).suffix[:16]}").unlink(missing_ok=True)


@dataclass
class _Slot:
    ready: threading.Event
    path: Path
    size: int
    error: str | None = None
    reserved: bool = False  # its bytes count in used_bytes


class Prefetcher:
    """Downloads the remote ones of ``tasks``, in order, into scratch ahead of the decoders.

    ``fetch(task)`` (a context manager) waits for a task's copy and yields the task pointing at
    it; leaving it removes the copy. At most ``opts.prefetch`` copies are downloading or waiting
    to be taken, and at most ``opts.scratch_bytes`` are on disk (space is reserved in input
    order, so the video the decoders need first is never starved by later ones). Local tasks
    pass through. ``close()`` (or leaving the ``with``) stops the downloads and removes the
    scratch folder.
    """

    def __init__(self, tasks: Sequence[VideoTask], opts: RemoteOptions) -> None:
        self.opts = opts
        self.tasks = [(t, t.remote) for t in tasks if t.remote is not None]
        self.slots: dict[str, _Slot] = {}
        self.cond = threading.Condition()
        self.used_bytes = 0  # reserved: downloading, downloaded or being decoded
        self.peak_bytes = 0
        self.ahead = 0  # downloading or downloaded, not yet taken by a decoder
        self.next_reserve = 0
        self.closed = False
        self.dir: Path | None = None
        self.threads: list[threading.Thread] = []
        if not self.tasks:
            return
        parent = Path(opts.scratch_dir).expanduser() if opts.scratch_dir else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="streamfeat-scratch-", dir=parent))
        for i, (t, obj) in enumerate(self.tasks):
            name = f"{i:06d}{PurePosixPath(obj.url).suffix[:16]}"
            self.slots[t.video_id] = _Slot(threading.Event(), self.dir / name, obj.size)
        self._order = iter(enumerate(self.tasks))
        self._order_lock = threading.Lock()
        for k in range(min(opts.prefetch, len(self.tasks))):
            th = threading.Thread(target=self._work, name=f"prefetch-{k}", daemon=True)
            th.start()
            self.threads.append(th)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            with self._order_lock:
                item = next(self._order, None)
            if item is None:
                return
            i, (task, obj) = item
            slot = self.slots[task.video_id]
            with self.cond:
                # in input order; room ahead; room on disk (or nothing else there)
                while not self.closed and not (
                    self.next_reserve == i
                    and self.ahead < self.opts.prefetch
                    and (self.used_bytes + slot.size <= self.opts.scratch_bytes
                         or self.used_bytes == 0)
                ):  # fmt: skip
                    self.cond.wait(0.5)
                if self.closed:
                    return
                self.next_reserve += 1
                self.ahead += 1
                self.used_bytes += slot.size
                slot.reserved = True
                self.peak_bytes = max(self.peak_bytes, self.used_bytes)
                self.cond.notify_all()
            try:
                download(obj, slot.path, self.opts)
            except ValueError as e:
                slot.error = str(e)
            slot.ready.set()

    @contextlib.contextmanager
    def fetch(self, task: VideoTask) -> Iterator[VideoTask]:
        """``task`` with its path on the local copy (waiting for the download); the copy is
        removed on leaving. A failed download raises ``ValueError`` with the reason."""
        slot = self.slots.get(task.video_id)
        if slot is None:
            yield task
            return
        try:
            while not slot.ready.wait(0.2):
                if self.closed:
                    raise ValueError("stopped before the download finished")
            with self.cond:
                self.ahead -= 1
                self.cond.notify_all()
            if slot.error is not None:
                raise ValueError(slot.error)
            yield replace(task, path=slot.path)
        finally:
            self._release(slot)

    def _release(self, slot: _Slot) -> None:
        slot.path.unlink(missing_ok=True)
        with self.cond:
            if slot.reserved:
                self.used_bytes -= slot.size
                slot.reserved = False  # released once
            self.cond.notify_all()

    def close(self) -> None:
        """Stop downloading and remove every copy (the scratch folder)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for th in self.threads:
            th.join(timeout=10)  # a download under way finishes or is abandoned (daemon)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
