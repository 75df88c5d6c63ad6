"""The extract job: videos -> tokens in a store, sharded, resumable, never losing work."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cache import ShardWriter, StoreLayout, VideoEntry, init_store, load_index
from extract.encoders import (
    ClipConfig,
    Encoder,
    EncoderConfig,
    SiglipConfig,
    build_encoder,
    describe,
)
from extract.frames import SeekMode
from extract.pipeline import (
    Batching,
    DecodeOptions,
    ExtractPipeline,
    FrameEncoder,
    FrameSource,
    VideoTask,
)
from jobs.extract_ray import RayExtraction
from jobs.inputs import VideoInput, resolve_videos
from jobs.launchers import Launcher
from jobs.provenance import provenance
from jobs.ray_launcher import RayLauncher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSpec:
    """Everything a shard task needs: plain, picklable values (sent to workers as is)."""

    store: str
    videos: tuple[VideoInput, ...]
    encoder: EncoderConfig
    decode: DecodeOptions
    batch_frames: int
    dtype: Literal["float16", "bfloat16"]
    chunk_frames: int
    shard_frames: int
    segment_frames: int
    commit_interval_s: float
    retry_failed: bool
    encode_threads: int | None
    progress: bool = True
    batching: Batching = "dynamic"


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


@functools.lru_cache(maxsize=2)
def cached_encoder(cfg: EncoderConfig) -> Encoder:
    """The encoder ``cfg`` describes, loaded once per process however many shards it runs (the
    two most recent configs are kept); ``run_shard`` uses it, and so can a caller that wants the
    very object the shards encode with (bench/extract.py times it)."""
    return build_encoder(cfg)


def features_of(spec: ExtractSpec, encoder: FrameEncoder) -> dict[str, Any]:
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
        "dtype": spec.dtype,
    }


def indexed_videos(store: str | Path) -> dict[str, VideoEntry]:
    """The store's index entries by video id (none before the store exists)."""
    root = Path(store)
    return load_index(root).videos if (root / "zarr.json").exists() else {}


def shard_todo(
    spec: ExtractSpec, shard: int, shard_count: int, known: dict[str, VideoEntry] | None = None
) -> tuple[list[VideoTask], int]:
    """The videos of a shard still to extract, and how many it skips as already handled.

    ``known``: the index entries if already loaded (else the index is read).
    """
    if known is None:
        known = indexed_videos(spec.store)
    todo, skipped = [], 0
    for v in spec.videos[shard::shard_count]:
        entry = known.get(v.video_id)
        if entry is not None and (
            entry.status == "done" or (entry.status == "failed" and not spec.retry_failed)
        ):
            skipped += 1
        else:
            todo.append(VideoTask(v.video_id, v.path))
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
    todo, skipped = shard_todo(spec, shard, shard_count)
    result = ShardResult(shard, shard_count, assigned=len(todo) + skipped, skipped=skipped)
    result.started_at = started_at
    if not todo:
        return result
    if spec.encode_threads:
        import torch

        torch.set_num_threads(spec.encode_threads)
    enc: FrameEncoder = encoder or cached_encoder(spec.encoder)
    layout = StoreLayout(
        tokens_per_frame=enc.tokens_per_frame,
        dim=enc.dim,
        dtype=spec.dtype,
        chunk_frames=spec.chunk_frames,
        shard_frames=spec.shard_frames,
        segment_frames=spec.segment_frames,
    )
    prov = {**provenance(), "encoder": enc.provenance, "autocast": enc.autocast}
    init_store(spec.store, layout=layout, features=features_of(spec, enc), provenance=prov)
    bar = _progress(len(todo), shard, shard_count, enabled=spec.progress)
    frames_t0 = time.perf_counter()

    def on_event(kind: str, video_id: str, frames: int) -> None:
        if kind == "frames":
            if result.first_frame_at is None:
                result.first_frame_at = time.time()
            result.frames += frames
            bar.set_postfix(
                fps=f"{result.frames / max(1e-9, time.perf_counter() - frames_t0):.1f}",
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

    with ShardWriter(
        spec.store, shard, commit_interval_s=spec.commit_interval_s, provenance=prov
    ) as writer:
        pipe = ExtractPipeline(
            enc,
            writer,
            decode=spec.decode,
            batch_frames=spec.batch_frames,
            batching=spec.batching,
            out_dtype=spec.dtype,
            on_event=on_event,
            source=source,
        )
        pipe.run(todo)
    bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _progress(total: int, shard: int, shard_count: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    desc = "extract" if shard_count == 1 else f"extract shard {shard}/{shard_count}"
    return tqdm(total=total, desc=desc, unit="video", disable=not enabled, mininterval=1.0)


class ExtractJob:
    """``python run.py job=extract videos=... store=... encoder=siglip|clip``."""

    def __init__(
        self,
        *,
        videos: str,
        store: str,
        encoder: SiglipConfig | ClipConfig,
        launcher: Launcher,
        videos_root: str | None = None,
        fps: float = 2.0,
        size: int | None = None,
        batch_frames: int = 32,
        batching: Batching = "dynamic",
        dtype: Literal["float16", "bfloat16"] = "float16",
        decode_threads: int = 1,
        decode_chunk_frames: int = 8,
        decode_budget_mb: float = 256.0,
        decode_device: str = "cpu",
        seek_mode: SeekMode = "exact",
        queue_chunks: int = 16,
        encode_threads: int | None = None,
        chunk_frames: int = 8,
        shard_frames: int = 1024,
        segment_frames: int = 4096,
        commit_interval_s: float = 60.0,
        retry_failed: bool = True,
        progress: bool = True,
        ray: RayExtraction | None = RayExtraction(),  # noqa: B008 - frozen: safe to share
    ) -> None:
        if fps <= 0:
            raise ValueError(f"job.fps must be > 0, got {fps}")
        if dtype not in ("float16", "bfloat16"):
            raise ValueError(f"job.dtype must be float16 or bfloat16, got {dtype!r}")
        if batching not in ("dynamic", "fixed"):
            raise ValueError(f"job.batching must be dynamic or fixed, got {batching!r}")
        self.launcher = launcher
        self.ray = ray  # with launcher=ray: how decode and encode use the cluster (None: in-shard)
        self.videos = videos
        self.videos_root = videos_root
        self.store = store
        self._spec_args = dict(
            store=str(store),
            encoder=encoder,
            decode=DecodeOptions(
                fps=fps,
                size=size,
                chunk_frames=decode_chunk_frames,
                budget_mb=decode_budget_mb,
                threads=decode_threads,
                seek_mode=seek_mode,
                device=decode_device,
                queue_chunks=queue_chunks,
            ),
            batch_frames=batch_frames,
            batching=batching,
            dtype=dtype,
            chunk_frames=chunk_frames,
            shard_frames=shard_frames,
            segment_frames=segment_frames,
            commit_interval_s=commit_interval_s,
            retry_failed=retry_failed,
            encode_threads=encode_threads,
            progress=progress,
        )
        StoreLayout(1, 1, dtype, chunk_frames, shard_frames, segment_frames)  # validate early

    def run(self) -> int:
        summary = self.execute()
        if summary is None:
            return 0
        print(format_summary(summary))
        return 1 if summary["failed"] or summary["missing"] else 0

    def execute(self) -> dict[str, Any] | None:
        """Run the extraction; the summary (``None`` when the launcher only submitted)."""
        t0, submitted_at = time.perf_counter(), time.time()
        inputs = resolve_videos(self.videos, self.videos_root)
        spec = ExtractSpec(videos=tuple(inputs), **self._spec_args)  # type: ignore[arg-type]
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
        summary = summarize(spec.store, inputs, before, results, time.perf_counter() - t0)
        firsts = [r.first_frame_at for r in results if r is not None and r.first_frame_at]
        summary["seconds_to_first_frame"] = round(min(firsts) - submitted_at, 3) if firsts else None
        return summary

    def _shard_count(self) -> int:
        if self.ray is not None and isinstance(self.launcher, RayLauncher):
            return self.ray.shard_count(self.launcher)
        return self.launcher.shard_count

    def _launch(
        self, spec: ExtractSpec, shards: int, pending: list[int]
    ) -> list[ShardResult | None] | None:
        """Run the pending shards (``None``: only submitted). With nothing pending, nothing is
        started (no cluster, no model to load). On Ray, ``job.ray`` says how shards decode and
        encode; elsewhere (or ``job.ray=null``) each shard does both in its own process."""
        fn = functools.partial(run_shard, spec)
        if self.ray is not None and isinstance(self.launcher, RayLauncher):
            return self.ray.run(self.launcher, fn, spec, shards, pending)
        return self.launcher.run(fn, shards, pending)


def summarize(
    store: str,
    inputs: list[VideoInput],
    before: dict[str, str],
    results: Sequence[ShardResult | None],
    wall_seconds: float,
) -> dict[str, Any]:
    """Counts for this run's inputs, read back from the index (the source of truth)."""
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
    return {
        "store": str(Path(store).absolute()),
        "videos": len(inputs),
        "done": done,
        "skipped": skipped,
        "failed": len(failures),
        "failures": failures,
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
    for vid in s["missing"]:
        lines.append(f"  NOT PROCESSED {vid} (rerun the same command to finish)")
    lines.append(f"store: {s['store']}")
    return "\n".join(lines)


def expected_frames(record: dict[str, Any]) -> int:
    """Frames the sampling rule gives for a video's recorded stream bounds."""
    from extract.frames import sample_times

    return len(sample_times(record["begin_seconds"], record["end_seconds"], record["fps"]))


__all__ = ["ExtractJob", "ExtractSpec", "ShardResult", "expected_frames", "run_shard"]
