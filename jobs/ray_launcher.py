"""Run extract shards on Ray: decode in Ray tasks, encode in a pool of Ray actors.

Who does what (``launcher=ray``):

- the driver (``run.py``) starts or joins Ray, creates ``encoder_actors`` encoder actors and
  submits one task per shard (``run_shard`` with a ``RemoteEncoder`` and a ``RaySource``);
- a shard task runs the usual ``ExtractPipeline`` and writes its own shard of the store (one
  writer per shard, as with the local launcher); it mostly waits, so it holds no CPU by default;
- a ``RaySource`` probes each video in a small task and decodes it in tasks of one chunk each,
  at most ``max_in_flight`` per shard at a time, so memory stays flat whatever the video length;
- an encoder actor loads the model once and turns uint8 frames into float32 tokens.

Frames are decoded and encoded by the same code as the local launcher (``FrameReader``,
``Encoder.encode``) in the same chunks and batches, so with the same shard count the tokens are
the same bits. See docs/ray.md.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from extract.encoders import EncoderConfig, build_encoder
from extract.frames import FrameReader
from extract.pipeline import (
    DecodeOptions,
    FrameEncoder,
    FrameSource,
    VideoTask,
    probe_record,
)
from extract.pipeline import open_reader as open_frame_reader

log = logging.getLogger(__name__)

R = TypeVar("R")

INSTALL_HINT = "pip install 'ray==2.60.0'"


def import_ray() -> Any:
    """Import Ray on first use (it is a heavy import), naming the install command if missing."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"launcher=ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


_REMOTE: dict[Callable[..., Any], Any] = {}


def _remote(fn: Callable[..., Any]) -> Any:
    """``ray.remote(fn)``, made once per process (each one is exported to the cluster)."""
    cached = _REMOTE.get(fn)
    if cached is None:
        cached = _REMOTE[fn] = import_ray().remote(fn)
    return cached


def _cause(err: Exception) -> Exception:
    """The exception a remote task raised, without Ray's wrapper and its remote traceback."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


# -- decoding in Ray tasks ---------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _cached_reader(
    path: str, size: int, opts: DecodeOptions, stamp: tuple[int, int]
) -> FrameReader:
    return open_frame_reader(path, size, opts)


def open_reader(path: str, size: int, opts: DecodeOptions) -> FrameReader:
    """A ``FrameReader`` for ``path``, reused by later tasks on the same worker process.

    Opening costs a scan of the whole file in exact seek mode; a worker usually gets several
    chunks of the same video in a row, so the last few readers are kept (keyed on the file's
    mtime and size, so a replaced file is opened afresh).
    """
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None:
        # Let FrameReader word the reason (missing, permission denied, ...); nothing to cache.
        return _cached_reader.__wrapped__(path, size, opts, (0, 0))
    return _cached_reader(path, size, opts, (st.st_mtime_ns, st.st_size))


def probe_video(path: str, video_id: str, size: int, opts: DecodeOptions) -> dict[str, Any]:
    """Open a video as a decode task would and return its index record and chunk size.

    Runs as a Ray task: the record (incl. ``num_frames``) is what the local source gives, and
    ``chunk_frames`` is the reader's memory-capped chunk, so remote chunks match local ones.
    """
    reader = open_reader(path, size, opts)
    record = probe_record(VideoTask(video_id, Path(path)), reader.probe, opts.fps)
    record["num_frames"] = reader.num_frames
    return {"record": record, "chunk_frames": reader.frames_per_call}


def decode_range(
    path: str, size: int, opts: DecodeOptions, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode sampled frames ``[lo, hi)`` of a video: (uint8 ``(n, 3, size, size)``, pts ``(n,)``).

    Runs as a Ray task. It goes through ``FrameReader.chunks`` (same decode calls, resize and
    error messages as the local source) and stops at ``hi``.
    """
    reader = open_reader(path, size, opts)
    frames: list[torch.Tensor] = []
    pts: list[np.ndarray] = []
    got = 0
    for f, p in reader.chunks(lo):
        take = min(len(f), hi - lo - got)
        frames.append(f[:take])
        pts.append(p[:take])
        got += take
        if got >= hi - lo:
            break
    # NumPy arrays travel through the object store without pickling the pixels.
    return torch.cat(frames).numpy(), np.concatenate(pts)


DecodeFn = Callable[[str, int, DecodeOptions, int, int], tuple[np.ndarray, np.ndarray]]


def _get_decoded(ray: Any, ref: Any) -> Any:
    """``ray.get`` for probe/decode tasks: every failure becomes a ``ValueError`` with a reason.

    The pipeline records a ``ValueError``'s text as the video's failure reason, so the reason
    FrameReader gave (``empty file (0 bytes): ...``) must come through unwrapped.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = _cause(e)
        if isinstance(cause, ValueError):
            raise ValueError(str(cause)) from None
        raise ValueError(f"{type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as e:
        # The worker or node was lost and Ray's own retries of the task were used up.
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"decode task lost: {type(e).__name__}: {first[:300]}") from None


def _abandon(ray: Any, refs: list[Any]) -> None:
    """Cancel decode tasks whose chunks nobody will read, and take their outcomes.

    Taking an outcome marks its error as seen; otherwise Ray logs each failed one as an
    "Unhandled error" with a traceback, for a video the store already records as failed.
    """
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - best effort: it may have finished already
            pass
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10.0)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - cancelled or failed: either way nobody needs it
            pass


class RayVideo:
    """An opened video whose chunks are decoded by Ray tasks, a bounded window ahead."""

    def __init__(
        self,
        source: RaySource,
        task: VideoTask,
        size: int,
        record: dict[str, Any],
        chunk_frames: int,
    ) -> None:
        self.source = source
        self.task = task
        self.size = size
        self.record = record
        self.chunk_frames = chunk_frames
        self.in_flight: collections.deque[Any] = collections.deque()
        self.submitted = 0
        self.peak_in_flight = 0

    def chunks(self, start_frame: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Yield ``(frames, pts)`` chunks from ``start_frame`` on, in order.

        At most ``max_in_flight`` decode tasks are outstanding (submitted, result not yet taken);
        a finished chunk's slot is refilled before the chunk is handed over, so decoding goes on
        while the caller encodes it.
        """
        ray = import_ray()
        src = self.source
        decode = _remote(src.decode_fn).options(
            num_cpus=src.decode_num_cpus, max_retries=src.max_retries
        )
        n = int(self.record["num_frames"])
        starts = iter(range(start_frame, n, self.chunk_frames))
        path = str(self.task.path)

        def fill() -> None:
            while len(self.in_flight) < src.max_in_flight:
                lo = next(starts, None)
                if lo is None:
                    return
                hi = min(lo + self.chunk_frames, n)
                self.in_flight.append(decode.remote(path, self.size, src.opts, lo, hi))
                self.submitted += 1
                self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))

        try:
            fill()
            while self.in_flight:
                frames, pts = _get_decoded(ray, self.in_flight[0])
                self.in_flight.popleft()
                fill()
                # Copies: object-store arrays are read-only, and a copy frees the store's buffer.
                yield torch.from_numpy(np.array(frames)), np.array(pts, dtype=np.float64)
        finally:
            if self.in_flight:  # the caller stopped early (a failure, a shutdown)
                _abandon(ray, list(self.in_flight))
                self.in_flight.clear()


@dataclass(frozen=True)
class RaySource:
    """A ``FrameSource`` that probes and decodes in Ray tasks (picklable; shipped to shards).

    ``source(task, size)`` probes the video in a task (raising ``ValueError`` with the reason for
    a bad file) and returns a ``RayVideo``. ``decode_fn`` is what a decode task runs
    (``decode_range``; replaceable to instrument it).
    """

    opts: DecodeOptions
    decode_num_cpus: float = 1.0
    max_in_flight: int = 4
    max_retries: int = 3
    decode_fn: DecodeFn = decode_range

    def __call__(self, task: VideoTask, size: int) -> RayVideo:
        ray = import_ray()
        # The probe runs where decoding runs, not in the shard task: opening a video scans the
        # file (exact seek mode), real work that should use decode resources, and the worker
        # keeps the opened reader for the video's first chunks.
        probe = _remote(probe_video).options(
            num_cpus=self.decode_num_cpus, max_retries=self.max_retries
        )
        info = _get_decoded(ray, probe.remote(str(task.path), task.video_id, size, self.opts))
        return RayVideo(self, task, size, info["record"], int(info["chunk_frames"]))


# -- encoding in Ray actors --------------------------------------------------------------------


class EncoderActor:
    """Holds one loaded encoder (run as a Ray actor; restarted by Ray if its process dies)."""

    def __init__(self, cfg: EncoderConfig, encode_threads: int | None = None) -> None:
        if encode_threads:
            torch.set_num_threads(encode_threads)
        self.error: Exception | None = None
        try:
            self.encoder = build_encoder(cfg)
        except Exception as e:  # noqa: BLE001 - kept for meta(), so the driver sees the reason
            self.error = e

    def meta(self) -> dict[str, Any]:
        """The encoder's attributes the pipeline reads (raises the load error if it failed)."""
        if self.error is not None:
            raise self.error
        e = self.encoder
        return {
            "image_size": e.image_size,
            "dim": e.dim,
            "pool": e.pool,
            "tokens_per_frame": e.tokens_per_frame,
            "autocast": e.autocast,
            "provenance": dict(e.provenance),
            "mean": e.mean.cpu(),
            "std": e.std.cpu(),
            "device": str(e.device),
        }

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(B, 3, S, S)`` -> float32 ``(B, tokens_per_frame, dim)``."""
        if self.error is not None:
            raise self.error
        # A copy: arrays from the object store are read-only, which torch warns about.
        return self.encoder.encode(torch.from_numpy(np.array(pixels))).cpu().numpy()


class RemoteEncoder:
    """A ``FrameEncoder`` that sends batches to encoder actors (picklable: handles travel).

    Calls go round-robin from a random start, so the copies held by different shard tasks
    spread over the actors. A call to an actor that died is retried by Ray on the restarted
    actor; an actor that is gone for good is skipped in favour of the others.
    """

    def __init__(self, actors: Sequence[Any], meta: dict[str, Any]) -> None:
        if not actors:
            raise ValueError("RemoteEncoder needs at least one encoder actor")
        self.actors = list(actors)
        self.image_size: int = meta["image_size"]
        self.dim: int = meta["dim"]
        self.pool: int = meta["pool"]
        self.tokens_per_frame: int = meta["tokens_per_frame"]
        self.autocast: str = meta["autocast"]
        self.provenance: dict[str, Any] = meta["provenance"]
        self.mean: torch.Tensor = meta["mean"]
        self.std: torch.Tensor = meta["std"]
        self._next: int | None = None  # chosen in the process that encodes, not the driver

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> float32 ``(B, tokens_per_frame, dim)``, on an actor."""
        ray = import_ray()
        n = len(self.actors)
        if self._next is None:
            self._next = random.randrange(n)
        arr = pixels.detach().cpu().contiguous().numpy()
        lost: Exception | None = None
        for k in range(n):
            i = (self._next + k) % n
            try:
                out = ray.get(self.actors[i].encode.remote(arr))
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
            except ray.exceptions.RayActorError as e:
                lost = e  # restarts used up: try the next actor
                continue
            self._next = (i + 1) % n
            return torch.from_numpy(np.array(out))
        raise RuntimeError(f"all {n} encoder actor(s) are dead: {lost}")


# -- the launcher ------------------------------------------------------------------------------


def _call_shard(fn: Callable[[int, int], R], shard: int, shard_count: int) -> R:
    return fn(shard, shard_count)


@dataclass
class RayLauncher:
    """Run shards as Ray tasks on an embedded Ray (``address=None``) or an existing cluster.

    ``address``: ``None`` starts Ray in this process for the run (``num_cpus`` caps it),
    ``"auto"`` joins the cluster this node belongs to, ``"host:port"`` or ``"ray://host:port"``
    a given one. ``shards=None`` means two per encoder actor, so one shard's frames are being
    decoded while another's are encoded; ``concurrent_shards()`` of them run at a time.
    Shard tasks hold ``shard_num_cpus`` (none by default: they mostly wait, and Ray does not
    lend a waiting task's CPUs to the decode tasks it waits on, so holding some can deadlock).
    """

    address: str | None = None
    shards: int | None = None
    num_cpus: int | None = None
    encoder_actors: int = 1
    encoder_num_gpus: float = 0
    encoder_num_cpus: float = 1
    decode_num_cpus: float = 1
    max_in_flight: int = 4
    max_retries: int = 3
    shard_num_cpus: float = 0
    _actors: list[Any] = field(default_factory=list, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("shards", "num_cpus"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"launcher.{name} must be >= 1 or null, got {value}")
        if self.encoder_actors < 1:
            raise ValueError(f"launcher.encoder_actors must be >= 1, got {self.encoder_actors}")
        if self.max_in_flight < 1:
            raise ValueError(f"launcher.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise ValueError(f"launcher.max_retries must be >= 0, got {self.max_retries}")
        for name in ("encoder_num_gpus", "encoder_num_cpus", "shard_num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"launcher.{name} must be >= 0, got {getattr(self, name)}")
        if not self.decode_num_cpus > 0:
            # Decoding is the CPU-heavy part: with no reservation Ray would run any number.
            raise ValueError(f"launcher.decode_num_cpus must be > 0, got {self.decode_num_cpus}")

    @property
    def shard_count(self) -> int:
        """How many shards the videos are split into (fixed by config, not by the cluster)."""
        return self.shards or 2 * self.encoder_actors

    @property
    def waits(self) -> bool:
        """Always true: ``run`` returns when every shard has finished or was lost."""
        return True

    def _ensure_ray(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():
            return ray  # someone else's Ray (a test, a notebook): use it, leave it running
        if self.address is None:
            # "local" starts a fresh instance even if a cluster is running on this node.
            ray.init(
                address="local",
                num_cpus=self.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            self._started = True
        else:
            if self.num_cpus is not None:
                log.warning("launcher.num_cpus is ignored when joining a cluster (address set)")
            ray.init(address=self.address, logging_level=logging.WARNING)
        return ray

    def _check_resources(self, ray: Any) -> None:
        # A request the cluster can never meet would leave actors or tasks pending forever.
        total = ray.cluster_resources()
        gpus = float(total.get("GPU", 0))
        need_gpus = self.encoder_actors * self.encoder_num_gpus
        if need_gpus > gpus:
            raise ValueError(
                f"{self.encoder_actors} encoder actor(s) x launcher.encoder_num_gpus="
                f"{self.encoder_num_gpus:g} need {need_gpus:g} GPUs; the Ray cluster has {gpus:g}"
            )
        self._spare_cpus()

    def _spare_cpus(self) -> float:
        """CPUs of the cluster left to shard and decode tasks once the actors hold theirs."""
        ray = import_ray()
        cpus = float(ray.cluster_resources().get("CPU", 0))
        spare = cpus - self.encoder_actors * self.encoder_num_cpus
        # A shard that holds its CPUs while its decode tasks cannot get one never finishes (a
        # task blocked in ray.get from a thread does not lend its CPUs back, as measured).
        if spare < self.shard_num_cpus + self.decode_num_cpus:
            raise ValueError(
                f"the Ray cluster has {cpus:g} CPUs; {self.encoder_actors} encoder actor(s) x "
                f"launcher.encoder_num_cpus={self.encoder_num_cpus:g} leave {spare:g}, fewer than "
                f"one shard task (launcher.shard_num_cpus={self.shard_num_cpus:g}) plus one "
                f"decode task (launcher.decode_num_cpus={self.decode_num_cpus:g}) need; "
                "lower those or add CPUs"
            )
        return spare

    def concurrent_shards(self) -> int:
        """How many shard tasks run at once: enough to keep the actors and decode CPUs busy.

        Two per encoder actor (one's frames are encoded while the other's are decoded), more if
        that many windows of ``max_in_flight`` decode tasks cannot fill the spare CPUs. Running
        more would only hold memory (a shard task is a process of ~0.7 GB with torch loaded).
        With ``shard_num_cpus > 0`` it is also capped so that one decode task always fits.
        """
        spare = self._spare_cpus()
        want = max(
            2 * self.encoder_actors, math.ceil(spare / (self.max_in_flight * self.decode_num_cpus))
        )
        if self.shard_num_cpus > 0:
            want = min(want, int((spare - self.decode_num_cpus) // self.shard_num_cpus))
        return max(1, want)

    def extract_kwargs(self, spec: Any) -> dict[str, Any]:
        """Start Ray if needed and load the encoder actors; returns ``run_shard``'s encoder/source.

        Waits until every actor has loaded the model, so a bad checkpoint fails here with the
        loader's message, before any shard starts.
        """
        if spec.decode.device != "cpu":
            raise ValueError(
                "job.decode.device must be cpu with launcher=ray (decode tasks request no GPU)"
            )
        if str(getattr(spec.encoder, "device", "auto")).startswith("cuda") and not (
            self.encoder_num_gpus > 0
        ):
            raise ValueError(
                f"encoder.device={spec.encoder.device} needs launcher.encoder_num_gpus > 0 "
                "(Ray hides GPUs from actors that do not request them)"
            )
        ray = self._ensure_ray()
        try:
            self._check_resources(ray)
            actor = ray.remote(EncoderActor).options(
                num_cpus=self.encoder_num_cpus,
                num_gpus=self.encoder_num_gpus,
                max_restarts=self.max_retries,
                max_task_retries=self.max_retries,
            )
            self._actors = [
                actor.remote(spec.encoder, spec.encode_threads) for _ in range(self.encoder_actors)
            ]
            try:
                metas = ray.get([a.meta.remote() for a in self._actors])
            except ray.exceptions.RayTaskError as e:
                raise _cause(e) from None
        except BaseException:
            self.close()
            raise
        log.info("encoder actors ready on %s", sorted({m["device"] for m in metas}))
        # Typed as the pipeline's protocols, so mypy checks that the remote versions fit.
        encoder: FrameEncoder = RemoteEncoder(self._actors, metas[0])
        source: FrameSource = RaySource(
            spec.decode,
            decode_num_cpus=self.decode_num_cpus,
            max_in_flight=self.max_in_flight,
            max_retries=self.max_retries,
        )
        return {"encoder": encoder, "source": source}

    def run(
        self, fn: Callable[..., R], shard_count: int, shards: Sequence[int] | None = None
    ) -> list[R | None]:
        """Run ``fn(shard, shard_count)`` for each shard as a Ray task; results in shard order.

        A task whose worker or node dies is retried up to ``max_retries`` times (the retry
        resumes from what the shard committed); one still lost after that gives ``None``. An
        exception raised by ``fn`` is re-raised once every shard has finished. Actors are killed
        and an embedded Ray is shut down at the end.
        """
        ids = list(range(shard_count) if shards is None else shards)
        try:
            if not ids:
                return []
            ray = self._ensure_ray()
            window = min(len(ids), self.concurrent_shards())
            task = _remote(_call_shard)
            fn_ref = ray.put(fn)  # shipped once, not once per shard
            log.info("%d shard(s), %d at a time", len(ids), window)
            todo = collections.deque(ids)
            running: dict[Any, int] = {}
            results: dict[int, R | None] = {}
            error: Exception | None = None
            while todo or running:
                while todo and len(running) < window:
                    i = todo.popleft()
                    ref = task.options(
                        num_cpus=self.shard_num_cpus,
                        max_retries=self.max_retries,
                        retry_exceptions=False,  # an error raised by fn would only happen again
                        name=f"extract-shard-{i}-of-{shard_count}",
                    ).remote(fn_ref, i, shard_count)
                    running[ref] = i
                ready, _ = ray.wait(list(running), num_returns=1)
                i = running.pop(ready[0])
                try:
                    results[i] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    log.error("shard %d/%d raised: %s", i, shard_count, _cause(e))
                    error = error or _cause(e)
                    results[i] = None
                except ray.exceptions.RayError as e:
                    log.error(
                        "shard %d/%d lost after %d retries (%s); what it committed is kept, "
                        "rerun the same command to finish it",
                        i,
                        shard_count,
                        self.max_retries,
                        type(e).__name__,
                    )
                    results[i] = None
            if error is not None:
                raise error
            return [results[i] for i in ids]
        finally:
            self.close()

    def run_ranks(self, fn: Callable[[int, int], R], world_size: int) -> R | None:
        """Not supported: training ranks need a gang-scheduled torch.distributed rendezvous.

        ``launcher=ray`` runs ``job=extract`` only; raising here says so instead of starting a
        cluster for nothing.
        """
        raise NotImplementedError(
            "launcher=ray runs job=extract only; train with launcher=local or launcher=slurm"
        )

    def close(self) -> None:
        """Kill the encoder actors; shut Ray down if this launcher started it."""
        if not self._actors and not self._started:
            return
        ray = import_ray()
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead, or Ray is going down anyway
                pass
        self._actors = []
        if self._started:
            ray.shutdown()
            self._started = False


__all__ = [
    "EncoderActor",
    "RayLauncher",
    "RaySource",
    "RayVideo",
    "RemoteEncoder",
    "decode_range",
    "import_ray",
    "probe_video",
]
