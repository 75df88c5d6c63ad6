"""The extract job: videos -> tokens in a store, sharded, resumable, never losing work."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from cache import (
    ShardWriter,
    StoreLayout,
    StoreMismatchError,
    VideoEntry,
    disk_full,
    fingerprint,
    init_store,
    is_url,
    load_index,
    read_store_attrs,
    store_exists,
)
from cache.objectlog import LEASE_TTL_S
from cache.storage import check_conditional_writes, open_storage
from extract.encoders import Encoder, EncoderConfig, build_encoder, describe
from extract.frames import stream_duration
from extract.pipeline import (
    Batching,
    DecodeOptions,
    ExtractPipeline,
    FrameEncoder,
    FrameSource,
    VideoTask,
)
from extract.remote import Prefetcher, RemoteOptions
from jobs.assign import assignment_of, longest_first, shard_videos, with_durations
from jobs.extract_ray import RayExtraction
from jobs.inputs import resolve_inputs
from jobs.launch import signals
from jobs.launch.launchers import Launcher
from jobs.launch.ray_launcher import RayLauncher
from jobs.provenance import provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSpec:
    """The settings of ``job=extract`` (``job.*``), declared and checked here once, and all a
    shard task needs: plain, picklable values (sent to workers as is). The job fills ``videos``.

    ``layout`` builds the store's :class:`cache.StoreLayout` once the encoder gives the token
    shape (``job.layout``: dtype, chunk_frames, file_frames, segment_frames).
    """

    store: str
    encoder: EncoderConfig
    videos: tuple[VideoTask, ...] = ()
    videos_root: str | None = None  # ids are paths relative to this (default: the input dir)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    layout: Callable[..., StoreLayout] = field(
        default_factory=lambda: functools.partial(StoreLayout)
    )
    batch_frames: int = ExtractPipeline.BATCH_FRAMES  # most frames per encoder call
    # dynamic: encode what is decoded as soon as the encoder is free;
    # fixed: always wait for batch_frames (bit-reproducible tokens)
    batching: Batching = ExtractPipeline.BATCHING
    encode_threads: int | None = None  # torch intra-op threads (None = torch default)
    # seconds: also commit at least this often (bounds work lost to a kill)
    commit_interval_s: float = ShardWriter.COMMIT_INTERVAL_S
    retry_failed: bool = True  # a rerun retries videos that failed before
    progress: bool = True
    # store on object storage only (docs/object-storage.md): a shard's lease lapses after this
    # long without a heartbeat; break_lease takes a dead writer's lease without waiting
    lease_ttl_s: float = LEASE_TTL_S
    break_lease: bool = False
    # videos on object storage: prefetch, scratch folder and cap, timeouts (extract.remote)
    remote: RemoteOptions = field(default_factory=RemoteOptions)
    # launcher=ray only: how extraction uses the cluster (docs/ray.md); None = each shard task
    # decodes and encodes in its own process, as with the other launchers
    ray: RayExtraction | None = field(default_factory=RayExtraction)

    def __post_init__(self) -> None:
        object.__setattr__(self, "videos", tuple(self.videos))
        if self.batching not in ("dynamic", "fixed"):
            raise ValueError(f"job.batching must be dynamic or fixed, got {self.batching!r}")
        if self.batch_frames < 1:
            raise ValueError(f"job.batch_frames must be >= 1, got {self.batch_frames}")
        if self.encode_threads is not None and self.encode_threads < 0:
            raise ValueError(f"job.encode_threads must be >= 0 or null, got {self.encode_threads}")
        if self.commit_interval_s < 0:
            raise ValueError(f"job.commit_interval_s must be >= 0, got {self.commit_interval_s}")
        if self.lease_ttl_s <= 0:
            raise ValueError(f"job.lease_ttl_s must be > 0, got {self.lease_ttl_s}")
        store = Path(self.store).expanduser()
        if store.exists() and not store.is_dir():
            raise ValueError(f"store={self.store!r} is a file, not a store folder")
        if store.is_dir() and (store / "zarr.json").is_file():
            check_store_file(store / "zarr.json")
        self.store_layout(1, 1)  # the chosen geometry fails now, not after the encoder loads

    def store_layout(self, tokens_per_frame: int, dim: int) -> StoreLayout:
        """The store's layout for the encoder's token shape."""
        try:
            return self.layout(tokens_per_frame=tokens_per_frame, dim=dim)
        except ValueError as e:
            raise ValueError(f"job.layout: {e}") from None


def check_store_file(path: Path) -> None:
    """Refuse a damaged store root file, naming it (before any model loads)."""
    import json

    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"store file {path} is damaged (not JSON: {e})") from None


@dataclass
class ShardResult:
    shard: int
    shard_count: int
    assigned: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    started_at: float = 0.0  # wall clock (time.time) when the task began
    first_frame_at: float | None = None  # wall clock when its first frames were encoded
    error: str | None = None  # why the shard stopped early (a full disk); its work is kept


@functools.lru_cache(maxsize=2)
def cached_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder for ``cfg``, loaded once per process however many shards it runs."""
    return build_encoder(cfg)


def _shard_encoder(spec: ExtractSpec, encoder: FrameEncoder | None) -> FrameEncoder:
    """``encoder``, or else the one loaded in this process; torch gets the run's threads."""
    if spec.encode_threads:
        import torch

        torch.set_num_threads(spec.encode_threads)
    return encoder or cached_encoder(spec.encoder)


def features_of(spec: ExtractSpec, encoder: FrameEncoder, layout: StoreLayout) -> dict[str, Any]:
    """What determines the numbers in the store (a store refuses runs that differ)."""
    return {
        "encoder": describe(spec.encoder),
        "weights": encoder.provenance.get("weights"),
        "architecture": encoder.provenance.get("architecture"),
        "fps": spec.decode.fps,
        "frame_size": encoder.image_size,
        "frames": "frame displayed at begin + k/fps, k >= 0, while < end of stream",
        "resize": "long side to frame_size, bicubic antialiased, centred zero padding on uint8",
        "normalize": {
            "mean": encoder.mean.flatten().tolist(),
            "std": encoder.std.flatten().tolist(),
        },
        "tokens": f"[CLS] + {encoder.pool}x{encoder.pool} avg-pooled patch grid, row-major",
        "tokens_per_frame": encoder.tokens_per_frame,
        "dim": encoder.dim,
        "dtype": layout.dtype,
        "compute": compute_kind(spec.encoder),
    }


def compute_kind(cfg: EncoderConfig) -> dict[str, str]:
    """The effective compute of an encoder setting: device kind and autocast dtype (``auto``
    resolved), so a store begun in fp32 on CPU is not continued in bf16 on a GPU."""
    import torch

    from extract.encoders import resolve_autocast

    name = getattr(cfg, "device", "auto")
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if name == "auto"
        else (torch.device(name))
    )
    return {"device": device.type, "autocast": resolve_autocast(cfg.autocast, device)}


def check_store_settings(spec: ExtractSpec) -> None:
    """Refuse a run whose settings differ from an existing store's, before anything is skipped:
    one error naming the setting (the encoder's weights are compared once it is loaded)."""
    if not store_exists(spec.store):
        return
    stored = read_store_attrs(spec.store)["features"]
    run = {
        "encoder": describe(spec.encoder),
        "fps": spec.decode.fps,
        "dtype": spec.store_layout(1, 1).dtype,
        "compute": compute_kind(spec.encoder),
    }
    run = json.loads(json.dumps(run))
    for key, value in run.items():
        if key in stored and stored[key] != value:
            old = stored[key]
            if isinstance(value, dict) and isinstance(old, dict):  # name the inner setting
                key, old, value = next(
                    (f"{key}.{k}", old.get(k), value.get(k))
                    for k in sorted(set(old) | set(value))
                    if old.get(k) != value.get(k)
                )
            raise StoreMismatchError(
                f"store {spec.store!r} was made with other settings: {key}: store has "
                f"{old!r}, this run has {value!r}; use the same settings or another store="
            )


def balanced_store(store: str | Path) -> bool:
    """Whether a run's shards are balanced by duration: a new store, or one that says so. A
    store made before keeps shards by count, so its videos (and their partial frames) stay
    in the shards that hold them."""
    try:
        attrs = read_store_attrs(store)  # a folder or an object-storage URL
    except FileNotFoundError:
        return True
    return attrs.get("shard_assignment") == "duration"


def indexed_videos(store: str | Path) -> dict[str, VideoEntry]:
    """The store's index entries by video id (none before the store exists)."""
    return load_index(store).videos if store_exists(store) else {}


def shard_todo(
    spec: ExtractSpec, shard: int, shard_count: int, known: dict[str, VideoEntry] | None = None
) -> tuple[list[VideoTask], int]:
    """The videos of a shard still to extract, and how many it skips as already handled.

    ``known``: the index entries if already loaded (else the index is read).
    """
    if known is None:
        known = indexed_videos(spec.store)
    todo, skipped = [], 0
    for v in shard_videos(spec.videos, shard, shard_count):
        entry = known.get(v.video_id)
        if entry is not None and (
            entry.status == "done" or (entry.status == "failed" and not spec.retry_failed)
        ):
            skipped += 1
        else:
            todo.append(v)
    return todo, skipped


def run_shard(
    spec: ExtractSpec,
    shard: int,
    shard_count: int,
    *,
    encoder: FrameEncoder | None = None,
    source: FrameSource | None = None,
) -> ShardResult:
    """Extract shard ``shard`` of ``shard_count``: a pure function of its index.

    Writes only its own shard of the store; skips videos the index already has as done (and
    failed ones unless ``retry_failed``); resumes a video mid-way where frames were committed.
    ``encoder``/``source`` replace the in-process encoder and decoder (the Ray launcher passes
    remote ones); by default both run here.
    """
    t0, started_at = time.perf_counter(), time.time()
    check_store_settings(spec)
    todo, skipped = shard_todo(spec, shard, shard_count)
    result = ShardResult(shard, shard_count, len(todo) + skipped, skipped, started_at=started_at)
    if not todo:
        return result
    enc = _shard_encoder(spec, encoder)
    layout = spec.store_layout(enc.tokens_per_frame, enc.dim)
    prov = {**provenance(), "encoder": enc.provenance, "autocast": enc.autocast}
    # From here on a signal only requests a stop: the pipeline stops taking work and the
    # writer commits what it holds on the way out (jobs/launch/signals.py).
    with signals.deferred():
        tally = _Tally(result, _progress(len(todo), shard, shard_count, enabled=spec.progress))
        try:
            init_store(
                spec.store,
                layout=layout,
                features=features_of(spec, enc, layout),
                provenance=prov,
                stop_check=signals.check,  # a signal stops a wait for the creation lock
                shard_assignment=assignment_of(spec.videos),
            )
            with (
                contextlib.ExitStack() as stack,
                ShardWriter(
                    spec.store,
                    shard,
                    commit_interval_s=spec.commit_interval_s,
                    provenance=prov,
                    lease_ttl_s=spec.lease_ttl_s,
                    break_lease=spec.break_lease,
                    stop_check=signals.check,  # a signal stops a wait for a lapsing lease
                ) as writer,
            ):
                # Re-read under the shard's lock: another run may have just finished some.
                # Longest first: a long video started last would be the task's tail.
                todo = longest_first(with_durations(shard_todo(spec, shard, shard_count)[0]))
                # A source that fetches remote videos where it decodes them (Ray's decode tasks,
                # each on its own node) needs no prefetch here.
                fetch = getattr(source, "fetch", None)
                if fetch is None:
                    fetch = stack.enter_context(Prefetcher(todo, spec.remote)).fetch
                pipe = ExtractPipeline(
                    enc,
                    _FingerprintedSink(writer, todo),
                    decode=spec.decode,
                    batch_frames=spec.batch_frames,
                    batching=spec.batching,
                    out_dtype=layout.dtype,
                    on_event=tally,
                    source=source,
                    stop_check=signals.check,
                    fetch=fetch,
                )
                pipe.run(todo)
        except signals.StopRequested as stop:
            stop.frames += result.frames  # what this shard handed the writer, now committed
            raise
        except OSError as e:
            if not disk_full(e):
                raise
            # Not a video's fault: the shard stops, keeps what was committed, and says why.
            result.error = f"{e.strerror} writing {e.filename or spec.store}"
        finally:
            tally.bar.close()
    result.seconds = time.perf_counter() - t0
    return result


class _FingerprintedSink:
    """The shard writer, given each source's fingerprint (size, mtime, crc32c of its ends,
    stream duration) when its video starts: a changed source restarts the video instead of
    resuming it; ``job=verify`` compares it later."""

    def __init__(self, writer: ShardWriter, tasks: Sequence[VideoTask]) -> None:
        self.writer = writer
        self.tasks = {t.video_id: t for t in tasks}
        self.write, self.finish, self.fail = writer.write, writer.finish, writer.fail

    def start(self, video_id: str) -> int:
        path, remote = self.tasks[video_id].path, self.tasks[video_id].remote
        try:
            source = remote.fingerprint() if remote else fingerprint(path)  # {size, etag, url}
        except OSError:
            source = None  # unreadable: the decoder says why
        if not remote and source is not None and (duration := stream_duration(path)) is not None:
            source["duration_seconds"] = duration  # a re-cut replacement of the same size
        start = self.writer.start(video_id, source=source)
        if video_id in self.writer.restarted:
            print(f"extract: {video_id}: {self.writer.restarted[video_id]}", file=sys.stderr)
        return start


class _Tally:
    """Counts the pipeline's events into a :class:`ShardResult` and a progress bar."""

    def __init__(self, result: ShardResult, bar: Any) -> None:
        self.result, self.bar = result, bar
        self.t0 = time.perf_counter()

    def __call__(self, kind: str, video_id: str, frames: int) -> None:
        result, bar = self.result, self.bar
        if kind == "frames":
            if result.first_frame_at is None:
                result.first_frame_at = time.time()
            result.frames += frames
            bar.set_postfix(
                fps=f"{result.frames / max(1e-9, time.perf_counter() - self.t0):.1f}",
                failed=result.failed,
                refresh=False,
            )
        elif kind == "done":
            result.done += 1
            bar.update(1)
        else:
            result.failed += 1
            bar.set_postfix(failed=result.failed, refresh=False)
            bar.update(1)


def _progress(total: int, shard: int, shard_count: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    desc = "extract" if shard_count == 1 else f"extract shard {shard}/{shard_count}"
    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, mininterval=1.0)


class ExtractJob:
    """``python run.py job=extract videos=... store=... encoder=siglip|clip``.

    ``launcher``: where shards run; ``videos``: the ``videos=`` argument (a directory, a list file
    or a glob); every other key is a field of :class:`ExtractSpec`.
    """

    Spec: ClassVar[type[ExtractSpec]] = ExtractSpec

    def __init__(self, *, launcher: Launcher, videos: str, **settings: Any) -> None:
        self.launcher = launcher
        self.videos = videos
        self.spec = ExtractSpec(**settings)
        if is_url(self.spec.store):  # credentials, bucket, endpoint, conditional writes
            check_conditional_writes(open_storage(self.spec.store))

    def run(self) -> int:
        summary = self.execute()
        if summary is None:
            return 0
        print(format_summary(summary))
        for why in dict.fromkeys(r["error"] for r in summary["shards"] if r.get("error")):
            print(
                f"error: extraction stopped: {why}; what was committed is kept: "
                "free space, then rerun the same command",
                file=sys.stderr,
            )
        return 1 if summary["failed"] or summary["missing"] else 0

    def execute(self) -> dict[str, Any] | None:
        """Run the extraction; the summary (``None`` when the launcher only submitted)."""
        t0, submitted_at = time.perf_counter(), time.time()
        found = resolve_inputs(self.videos, self.spec.videos_root, self.spec.remote)
        inputs = found.tasks
        if balanced_store(self.spec.store):  # shards get equal durations (jobs/assign.py)
            inputs = with_durations(inputs)
        spec = replace(self.spec, videos=tuple(inputs))
        check_store_settings(spec)  # before any decision to skip
        known = indexed_videos(spec.store)  # read once here, not once per shard
        before = {vid: e.status for vid, e in known.items()}
        shards = min(self._shard_count(), len(inputs))
        # Rerunning resubmits only shards with something left to do.
        pending = [i for i in range(shards) if shard_todo(spec, i, shards, known)[0]]
        print(
            f"extract: {len(inputs)} videos -> {spec.store} ({shards} shard(s), "
            f"{len(pending)} with work left, {type(self.launcher).__name__})",
            file=sys.stderr,
        )
        results = self._launch(spec, shards, pending)
        if results is None:  # only submitted
            print(
                f"extract: submitted {len(pending)} shard(s); follow with: "
                f"python run.py job=status store={spec.store}"
            )
            return None
        summary = summarize(
            spec.store, inputs, before, results, time.perf_counter() - t0, found.rejected
        )
        firsts = [r.first_frame_at for r in results if r is not None and r.first_frame_at]
        summary["seconds_to_first_frame"] = round(min(firsts) - submitted_at, 3) if firsts else None
        return summary

    def _shard_count(self) -> int:
        if self.spec.ray is not None and isinstance(self.launcher, RayLauncher):
            return self.spec.ray.shard_count(self.launcher)
        return self.launcher.shard_count

    def _launch(
        self, spec: ExtractSpec, shards: int, pending: list[int]
    ) -> list[ShardResult | None] | None:
        """Run the pending shards (``None``: only submitted). With nothing pending, nothing is
        started (no cluster, no model to load). On Ray, ``job.ray`` says how shards decode and
        encode; elsewhere (or ``job.ray=null``) each shard does both in its own process."""
        fn = functools.partial(run_shard, spec)
        if spec.ray is not None and isinstance(self.launcher, RayLauncher):
            return spec.ray.run(self.launcher, fn, spec, shards, pending)
        return self.launcher.run(fn, shards, pending)


def summarize(
    store: str,
    inputs: list[VideoTask],
    before: dict[str, str],
    results: Sequence[ShardResult | None],
    wall_seconds: float,
    rejected: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Counts for this run's inputs, read back from the index (the source of truth).
    ``rejected``: files that could not become inputs (path -> why), counted as failed."""
    index = indexed_videos(store)
    done = skipped = frames = 0
    failures: dict[str, str] = {}
    missing = []
    for v in inputs:
        e = index.get(v.video_id)
        if e is None:
            missing.append(v.video_id)  # not processed (a worker died before reaching it)
        elif e.status == "done":
            if before.get(v.video_id) == "done":
                skipped += 1
            else:
                done += 1
                frames += int(e.record["num_frames"])
        else:
            failures[v.video_id] = f"{e.record.get('source_path')}: {e.record.get('error')}"
    rejected = dict(rejected or {})
    return {
        "store": store if is_url(store) else str(Path(store).absolute()),
        "videos": len(inputs) + len(rejected),
        "done": done,
        "skipped": skipped,
        "failed": len(failures) + len(rejected),
        "failures": failures,
        "rejected": rejected,
        "missing": missing,
        "frames": frames,
        "wall_seconds": round(wall_seconds, 2),
        "frames_per_second": round(frames / wall_seconds, 2) if wall_seconds > 0 else None,
        "shards": [asdict(r) for r in results if r is not None],
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"extract summary: {s['videos']} videos: {s['done']} done, {s['skipped']} skipped "
        f"(already complete), {s['failed']} failed, {len(s['missing'])} not processed; "
        f"{s['frames']} frames in {s['wall_seconds']:.1f} s ({s['frames_per_second']} frames/s)",
    ]
    for vid, why in sorted(s["failures"].items()):
        lines.append(f"  FAILED {vid}: {why}")
    for path, why in sorted(s.get("rejected", {}).items()):
        lines.append(f"  FAILED {path}: {why} (not in the store)")
    for vid in s["missing"]:
        lines.append(f"  NOT PROCESSED {vid} (rerun the same command to finish)")
    lines.append(f"store: {s['store']}")
    return "\n".join(lines)


def expected_frames(record: dict[str, Any]) -> int:
    """Frames the sampling rule gives for a video's recorded stream bounds."""
    from extract.frames import sample_times

    return len(sample_times(record["begin_seconds"], record["end_seconds"], record["fps"]))


__all__ = ["ExtractJob", "ExtractSpec", "ShardResult", "expected_frames", "run_shard"]
