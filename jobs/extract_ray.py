"""Extraction on Ray (``launcher=ray``, designed by ``job.ray``): decode in Ray tasks, encode in
a pool of Ray actors.

The driver creates ``encoder_actors`` actors that each load the model once; each shard task
runs the usual pipeline with a ``RemoteEncoder`` (batches go to the actors) and a ``RaySource``
(each video is probed, then decoded in tasks of one chunk, at most ``max_in_flight`` per shard at
a time). Same code, chunks and batches as the local launcher, so the same bits. See docs/ray.md.

Videos on object storage need no shared file system: a probe or decode task fetches the video to
its own node's scratch (one copy per node, shared by every task there; ``extract.remote``) and
the copies are removed from those nodes once the video's last piece has ended.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
from extract.remote import (
    RemoteObject,
    RemoteOptions,
    remove_shared_copy,
    scratch_folder,
    shared_copy,
)
from jobs.launch.ray_launcher import RayLauncher, cause_of, import_ray, remote


class RaySpec(Protocol):
    """What the Ray design needs of an extraction's settings (``jobs.extract.ExtractSpec`` is
    one), so this module does not import the extract job that uses it."""

    @property
    def encoder(self) -> Any: ...
    @property
    def encode_threads(self) -> int | None: ...
    @property
    def decode(self) -> DecodeOptions: ...
    @property
    def remote(self) -> RemoteOptions: ...
    @property
    def videos(self) -> Sequence[VideoTask]: ...


log = logging.getLogger(__name__)

R = TypeVar("R")


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
    ``frames_per_call`` is the reader's memory-capped chunk, so remote chunks match local ones.
    """
    reader = open_reader(path, size, opts)
    record = probe_record(VideoTask(video_id, Path(path)), reader.probe, opts.fps)
    record["num_frames"] = reader.num_frames
    # keyframe-aligned pieces (from the start; a resumed video is cut again from its resume
    # point by RayVideo.pieces): the shard's idle decoder threads take them
    return {
        "record": record,
        "frames_per_call": reader.frames_per_call,
        "keyframe_starts": [lo for lo, _ in reader.pieces(1)] if opts.piece_frames else [],
    }


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


# -- videos on object storage: a copy on each node that decodes them ---------------------------


def _node_id() -> str:
    return str(import_ray().get_runtime_context().get_node_id())


def probe_remote(
    obj: RemoteObject, remote_opts: RemoteOptions, scratch: str, video_id: str, size: int,
    opts: DecodeOptions,
) -> dict[str, Any]:  # fmt: skip
    """``probe_video`` on this node's copy of ``obj`` (fetched on first use, ETag-checked), with
    the node's id, where the shard removes the copy once the video ends. The copy of a video
    that cannot be opened is removed at once: no piece of it will be decoded."""
    folder = scratch_folder(remote_opts, scratch)
    path = shared_copy(obj, folder, remote_opts)
    try:
        info = probe_video(str(path), video_id, size, opts)
    except Exception:
        remove_shared_copy(obj, folder)
        raise
    info["record"]["source_path"] = obj.url
    info["node"] = _node_id()
    return info


def decode_remote(
    decode_fn: DecodeFn, obj: RemoteObject, remote_opts: RemoteOptions, scratch: str, size: int,
    opts: DecodeOptions, lo: int, hi: int,
) -> tuple[np.ndarray, np.ndarray, str]:  # fmt: skip
    """``decode_fn`` on this node's copy of ``obj`` (the probe's, or fetched here if this task
    runs on another node), and the node's id."""
    path = shared_copy(obj, scratch_folder(remote_opts, scratch), remote_opts)
    frames, pts = decode_fn(str(path), size, opts, lo, hi)
    return frames, pts, _node_id()


def remove_copy(obj: RemoteObject, remote_opts: RemoteOptions, scratch: str) -> None:
    """Remove this node's copy of ``obj`` (a task pinned to the node)."""
    remove_shared_copy(obj, scratch_folder(remote_opts, scratch))


def remove_scratch(remote_opts: RemoteOptions, scratch: str) -> None:
    """Remove a run's whole scratch folder from this node (a task pinned to the node)."""
    shutil.rmtree(scratch_folder(remote_opts, scratch), ignore_errors=True)


def _on_nodes(ray: Any, fn: Callable[..., None], nodes: Sequence[str], *args: Any) -> None:
    """``fn(*args)`` once on each of ``nodes`` (no CPU held, so it never waits behind decoding),
    waiting up to 30 s; a node that is gone is skipped (its scratch went with it)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = [
        remote(fn)
        .options(
            num_cpus=0, max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        )
        .remote(*args)
        for node in nodes
    ]  # fmt: skip
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=30.0)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a lost node or a copy already gone
            log.warning("scratch clean-up on a node failed: %s", e)


def _get_decoded(ray: Any, ref: Any) -> Any:
    """``ray.get`` for probe/decode tasks: every failure becomes a ``ValueError`` with a reason.

    The pipeline records a ``ValueError``'s text as the video's failure reason, so the reason
    FrameReader gave (``empty file (0 bytes): ...``) must come through unwrapped.
    """
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = cause_of(e)
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
        frames_per_call: int,
        keyframe_starts: Sequence[int] = (),
    ) -> None:
        self.source = source
        self.task = task
        self.size = size
        self.record = record
        self.frames_per_call = frames_per_call
        self.keyframe_starts = list(keyframe_starts)
        self.in_flight: collections.deque[Any] = collections.deque()
        self.submitted = 0
        self.peak_in_flight = 0
        self.nodes: set[str] = set()  # nodes holding a copy of a remote video

    def pieces(self, piece_frames: int, start_frame: int) -> list[tuple[int, int]]:
        """Ranges of at least ``piece_frames`` sampled frames from ``start_frame``, cut where a
        keyframe starts (as ``FrameReader.pieces``), for the shard's decoder threads to take;
        each piece's chunks are decoded by Ray tasks as a whole video's are."""
        n = int(self.record["num_frames"])
        out, lo = [], start_frame
        if piece_frames and n - start_frame >= 2 * piece_frames:
            for cut in self.keyframe_starts:
                if cut - lo >= piece_frames and n - cut >= piece_frames:
                    out.append((lo, cut))
                    lo = cut
        return [*out, (lo, n)] if lo < n else out

    def chunks(
        self, start_frame: int, stop_frame: int | None = None
    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Yield ``(frames, pts)`` chunks from ``start_frame`` on (to ``stop_frame``), in order.

        At most ``max_in_flight`` decode tasks are outstanding (submitted, result not yet taken);
        a finished chunk's slot is refilled before the chunk is handed over, so decoding goes on
        while the caller encodes it.
        """
        ray = import_ray()
        src = self.source
        obj = self.task.remote
        decode = remote(src.decode_fn if obj is None else decode_remote).options(
            num_cpus=src.decode_num_cpus, max_retries=src.max_retries
        )
        n = int(self.record["num_frames"])
        if stop_frame is not None:
            n = min(n, stop_frame)
        starts = iter(range(start_frame, n, self.frames_per_call))
        path = str(self.task.path)
        # one window per call: the pieces of one video are decoded by several threads at once
        in_flight: collections.deque[Any] = collections.deque()
        self.in_flight = in_flight

        def fill() -> None:
            while len(in_flight) < src.max_in_flight:
                lo = next(starts, None)
                if lo is None:
                    return
                hi = min(lo + self.frames_per_call, n)
                args = (self.size, src.opts, lo, hi)
                in_flight.append(
                    decode.remote(path, *args)
                    if obj is None
                    else decode.remote(src.decode_fn, obj, src.remote_opts, src.scratch, *args)
                )
                self.submitted += 1
                self.peak_in_flight = max(self.peak_in_flight, len(in_flight))

        try:
            fill()
            while in_flight:
                got = _get_decoded(ray, in_flight[0])
                frames, pts = got[0], got[1]
                if obj is not None:
                    self.nodes.add(got[2])
                in_flight.popleft()
                fill()
                # Copies: object-store arrays are read-only, and a copy frees the store's buffer.
                yield torch.from_numpy(np.array(frames)), np.array(pts, dtype=np.float64)
        finally:
            if in_flight:  # the caller stopped early (a failure, a shutdown)
                _abandon(ray, list(in_flight))
                in_flight.clear()

    def close(self) -> None:
        """Remove a remote video's copies from the nodes that made one (the pipeline calls this
        once every piece of the video has ended)."""
        obj, nodes = self.task.remote, sorted(self.nodes)
        self.nodes.clear()
        if obj is not None and nodes:
            src = self.source
            _on_nodes(import_ray(), remove_copy, nodes, obj, src.remote_opts, src.scratch)


@dataclass(frozen=True)
class RaySource:
    """A ``FrameSource`` that probes and decodes in Ray tasks (picklable; shipped to shards).

    ``source(task, size)`` probes the video in a task (raising ``ValueError`` with the reason for
    a bad file) and returns a ``RayVideo``. ``decode_fn`` is what a decode task runs
    (``decode_range``; replaceable to instrument it). A video on object storage is fetched by
    the tasks themselves, into ``scratch`` (a folder name, the run's own) under each node's
    ``remote_opts.scratch_dir``: ``fetch`` passes it through unfetched.
    """

    opts: DecodeOptions
    decode_num_cpus: float = 1.0
    max_in_flight: int = 4
    max_retries: int = 3
    decode_fn: DecodeFn = decode_range
    remote_opts: RemoteOptions = field(default_factory=RemoteOptions)
    scratch: str = "streamfeat-ray"

    def __call__(self, task: VideoTask, size: int) -> RayVideo:
        ray = import_ray()
        # The probe runs where decoding runs, not in the shard task: opening a video scans the
        # file (exact seek mode), real work that should use decode resources, and the worker
        # keeps the opened reader for the video's first chunks.
        obj = task.remote
        probe = remote(probe_video if obj is None else probe_remote).options(
            num_cpus=self.decode_num_cpus, max_retries=self.max_retries
        )
        args = (task.video_id, size, self.opts)
        info = _get_decoded(
            ray,
            probe.remote(str(task.path), *args)
            if obj is None
            else probe.remote(obj, self.remote_opts, self.scratch, *args),
        )
        video = RayVideo(
            self, task, size, info["record"], int(info["frames_per_call"]),
            info.get("keyframe_starts", ()),
        )  # fmt: skip
        if "node" in info:
            video.nodes.add(info["node"])
        return video

    @contextlib.contextmanager
    def fetch(self, task: VideoTask) -> Iterator[VideoTask]:
        """The pipeline's fetch step: nothing to do here, the decode tasks fetch a remote video
        on their own nodes (the shard task's node may share no file system with them)."""
        yield task


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
                raise cause_of(e) from None
            except ray.exceptions.RayActorError as e:
                lost = e  # restarts used up: try the next actor
                continue
            self._next = (i + 1) % n
            return torch.from_numpy(np.array(out))
        raise RuntimeError(f"all {n} encoder actor(s) are dead: {lost}")


# -- the design: what extraction asks of the cluster -------------------------------------------


@dataclass(frozen=True)
class RayExtraction:
    """How extraction uses a Ray cluster (``job.ray``, read with ``launcher=ray``).

    ``encoder_actors`` actors hold ``encoder_num_cpus`` and ``encoder_num_gpus`` each; decode
    tasks hold ``decode_num_cpus``, at most ``max_in_flight`` outstanding per shard. Retries of
    decode tasks and restarts of actors follow ``launcher.max_retries``.
    """

    encoder_actors: int = 1
    encoder_num_gpus: float = 0
    encoder_num_cpus: float = 1
    decode_num_cpus: float = 1
    max_in_flight: int = 4

    def __post_init__(self) -> None:
        for name in ("encoder_actors", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"job.ray.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_num_gpus", "encoder_num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"job.ray.{name} must be >= 0, got {getattr(self, name)}")
        if not self.decode_num_cpus > 0:
            # Decoding is the CPU-heavy part: with no reservation Ray would run any number.
            raise ValueError(f"job.ray.decode_num_cpus must be > 0, got {self.decode_num_cpus}")

    def shard_count(self, launcher: RayLauncher) -> int:
        """``launcher.shards``, else two per encoder actor (one shard's frames are encoded while
        another's are decoded)."""
        return launcher.shards or 2 * self.encoder_actors

    def run(
        self,
        launcher: RayLauncher,
        fn: Callable[..., R],
        spec: RaySpec,
        shard_count: int,
        shards: Sequence[int],
    ) -> list[R | None]:
        """``fn(shard, shard_count, encoder=..., source=...)`` (``run_shard``) for each shard, as
        Ray tasks that decode in decode tasks and encode on the actors; results in shard order."""
        if not shards:
            return []  # nothing left: no cluster to start, no model to load
        with self.start(launcher, spec) as remote_parts:
            return launcher.run(
                functools.partial(fn, **remote_parts),
                shard_count,
                shards,
                concurrency=self.concurrent_shards(launcher),
            )

    @contextlib.contextmanager
    def start(self, launcher: RayLauncher, spec: RaySpec) -> Iterator[dict[str, Any]]:
        """Ray up and the encoder actors loaded: yields ``run_shard``'s ``encoder`` and ``source``.

        Waits until every actor has loaded the model, so a bad checkpoint fails here with the
        loader's message, before any shard starts. At the end the actors are killed (and a Ray
        that ``launcher`` started is stopped).
        """
        self._check_spec(spec)
        with launcher.session() as ray:
            self._check_resources(ray, launcher)
            actor = ray.remote(EncoderActor).options(
                num_cpus=self.encoder_num_cpus,
                num_gpus=self.encoder_num_gpus,
                max_restarts=launcher.max_retries,
                max_task_retries=launcher.max_retries,
            )
            actors: list[Any] = []
            scratch = f"streamfeat-ray-{uuid.uuid4().hex[:12]}"  # this run's, on every node
            try:
                for _ in range(self.encoder_actors):
                    actors.append(actor.remote(spec.encoder, spec.encode_threads))
                try:
                    metas = ray.get([a.meta.remote() for a in actors])
                except ray.exceptions.RayTaskError as e:
                    raise cause_of(e) from None
                log.info("encoder actors ready on %s", sorted({m["device"] for m in metas}))
                # Typed as the pipeline's protocols, so mypy checks that the remote versions fit.
                encoder: FrameEncoder = RemoteEncoder(actors, metas[0])
                source: FrameSource = RaySource(
                    spec.decode,
                    decode_num_cpus=self.decode_num_cpus,
                    max_in_flight=self.max_in_flight,
                    max_retries=launcher.max_retries,
                    remote_opts=spec.remote,
                    scratch=scratch,
                )
                yield {"encoder": encoder, "source": source}
            finally:
                _kill(ray, actors)
                if any(v.remote is not None for v in spec.videos):
                    # what a lost shard or a cancelled task left behind
                    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
                    _on_nodes(ray, remove_scratch, nodes, spec.remote, scratch)

    def _check_spec(self, spec: RaySpec) -> None:
        if spec.decode.device != "cpu":
            raise ValueError(
                "job.decode.device must be cpu with launcher=ray (decode tasks request no GPU)"
            )
        if str(getattr(spec.encoder, "device", "auto")).startswith("cuda") and not (
            self.encoder_num_gpus > 0
        ):
            raise ValueError(
                f"encoder.device={spec.encoder.device} needs job.ray.encoder_num_gpus > 0 "
                "(Ray hides GPUs from actors that do not request them)"
            )

    def _check_resources(self, ray: Any, launcher: RayLauncher) -> None:
        # A request the cluster can never meet would leave actors or tasks pending forever.
        gpus = float(ray.cluster_resources().get("GPU", 0))
        need_gpus = self.encoder_actors * self.encoder_num_gpus
        if need_gpus > gpus:
            raise ValueError(
                f"{self.encoder_actors} encoder actor(s) x job.ray.encoder_num_gpus="
                f"{self.encoder_num_gpus:g} need {need_gpus:g} GPUs; the Ray cluster has {gpus:g}"
            )
        self._spare_cpus(launcher)

    def _spare_cpus(self, launcher: RayLauncher) -> float:
        """CPUs of the cluster left to shard and decode tasks once the actors hold theirs."""
        cpus = float(import_ray().cluster_resources().get("CPU", 0))
        spare = cpus - self.encoder_actors * self.encoder_num_cpus
        # A shard that holds its CPUs while its decode tasks cannot get one never finishes (a
        # task blocked in ray.get from a thread does not lend its CPUs back, as measured).
        if spare < launcher.shard_num_cpus + self.decode_num_cpus:
            raise ValueError(
                f"the Ray cluster has {cpus:g} CPUs; {self.encoder_actors} encoder actor(s) x "
                f"job.ray.encoder_num_cpus={self.encoder_num_cpus:g} leave {spare:g}, fewer than "
                f"one shard task (launcher.shard_num_cpus={launcher.shard_num_cpus:g}) plus one "
                f"decode task (job.ray.decode_num_cpus={self.decode_num_cpus:g}) need; "
                "lower those or add CPUs"
            )
        return spare

    def concurrent_shards(self, launcher: RayLauncher) -> int:
        """How many shard tasks run at once: enough to keep the actors and decode CPUs busy.

        Two per encoder actor (one's frames are encoded while the other's are decoded), more if
        that many windows of ``max_in_flight`` decode tasks cannot fill the spare CPUs. Running
        more would only hold memory (a shard task is a process of ~0.7 GB with torch loaded).
        With ``launcher.shard_num_cpus > 0`` it is also capped so that one decode task always
        fits.
        """
        spare = self._spare_cpus(launcher)
        want = max(
            2 * self.encoder_actors, math.ceil(spare / (self.max_in_flight * self.decode_num_cpus))
        )
        if launcher.shard_num_cpus > 0:
            want = min(want, int((spare - self.decode_num_cpus) // launcher.shard_num_cpus))
        return max(1, want)


def _kill(ray: Any, actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or Ray is going down anyway
            pass


__all__ = [
    "EncoderActor",
    "RayExtraction",
    "RaySource",
    "RayVideo",
    "RemoteEncoder",
    "decode_range",
    "decode_remote",
    "probe_remote",
    "probe_video",
]
