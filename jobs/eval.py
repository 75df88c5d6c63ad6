"""The eval job: teacher-forced streaming metrics per sample, sharded, resumable, merged.

``python run.py job=eval store=S data=ego4d_narration data.split=val job.adapter=CKPT
job.threshold=0.0 launcher=slurm launcher.shards=32``

Each shard appends one JSON line per finished sample to ``OUT/results/shard-NNNNN.jsonl`` (a rerun
skips the samples already there); the merge step reads every shard's lines and writes
``OUT/summary.json`` (means, counts, 95% confidence intervals) and the HTML report.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from cache import open_store, read_journal
from data import DataConfig, StreamDataset, read_samples, store_fps
from jobs.launchers import Launcher
from jobs.report import read_results

METRICS = ("lm_ppl", "time_diff", "fluency", "lm_correctness", "lm_accuracy")


@dataclass(frozen=True)
class EvalSpec:
    """The settings of ``job=eval`` (``job.*``), declared and checked here once, and all an eval
    shard needs (plain values)."""

    store: str
    data: DataConfig
    output_dir: str  # results/shard-*.jsonl, summary.json, report.html
    adapter: str | None = None  # job=train's adapter/ folder, or a VideoLLM-online dir / hub id
    llm: str | None = None  # override the base LLM the adapter was trained on (e.g. a local copy)
    threshold: float = 0.0  # θ on P(","); 0 = plain argmax, as the released evaluation
    max_samples: int | None = None
    report: bool = True  # write report.html after the merge

    def __post_init__(self) -> None:
        if not self.adapter:
            raise ValueError("job=eval needs a trained checkpoint: set job.adapter=<dir>")


def _load(spec: EvalSpec) -> tuple[Any, Any, StreamDataset]:
    from extract.encoders import hub_access
    from models.live import check_features, load_checkpoint
    from models.prompt import encode_conversation

    assert spec.adapter  # checked by EvalSpec
    store = open_store(spec.store)
    per_frame, dim = int(store.layout["tokens_per_frame"]), int(store.layout["dim"])
    with hub_access():  # an unreachable hub: the local cache at once, as for every hub id
        model, tokenizer = load_checkpoint(spec.adapter, llm=spec.llm, frame_tokens=per_frame)
    check_features(model, per_frame, dim, f"store {spec.store}")
    samples = read_samples(spec.data, fps=store_fps(store))[: spec.max_samples]
    encode = functools.partial(
        encode_conversation,
        tokenizer,
        frame_tokens=model.frame_tokens,
        v_token=model.cfg.v_token,
        stream_loss_weight=model.cfg.stream_loss_weight,
    )
    return model, tokenizer, StreamDataset(store, samples, encode)


def eval_shard(spec: EvalSpec, shard: int, shard_count: int) -> int:
    """Evaluate samples ``shard::shard_count``, appending results; returns how many were new."""
    from models.evaluate import evaluate_sample

    model, _, ds = _load(spec)
    path = Path(spec.output_dir) / "results" / f"shard-{shard:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["sample_id"] for r in read_journal(path)}
    device = next(model.parameters()).device
    new = 0
    for i in range(shard, len(ds), shard_count):
        s = ds.samples[i]
        if s.sample_id in done:
            continue
        item = ds[i]
        metrics = evaluate_sample(
            model,
            item["encoded"],
            item["frames"].to(device),
            fps=ds.fps,
            threshold=spec.threshold,
        )
        record = {
            "sample_id": s.sample_id,
            "video_id": s.video_id,
            "start_seconds": s.start_seconds,
            **metrics.reference_values(),
            "lm_accuracy": metrics.lm_accuracy,
            "turns": [asdict(t) for t in metrics.turns],
        }
        with open(path, "a") as f:  # one line per sample: a kill loses at most this sample
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        new += 1
    return new


def merge(output_dir: str | Path, *, fps: float | None = None) -> dict[str, Any]:
    """Read every shard's results and write ``summary.json``: per metric the mean, count and a
    95% normal confidence interval of the mean (1.96 standard errors); ``fps``, the frame rate
    the samples were evaluated at, is recorded for ``job=report``."""
    out = Path(output_dir)
    records = read_results(out)
    summary: dict[str, Any] = {"samples": len(records)}
    if fps is not None:
        summary["fps"] = fps
    for m in METRICS:
        values = [float(r[m]) for r in records.values() if r.get(m) is not None]
        n = len(values)
        mean = sum(values) / n if n else None
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 and mean else 0.0
        half = 1.96 * sd / math.sqrt(n) if n > 1 else None
        summary[m] = {
            "mean": mean,
            "n": n,
            "ci95": [mean - half, mean + half] if half is not None and mean is not None else None,
        }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out / "summary.json")
    return summary


class EvalJob:
    """``python run.py job=eval store=... data=... job.adapter=CKPT job.threshold=0.0``

    ``launcher``: where the shards run; every other key is a field of :class:`EvalSpec`.
    """

    Spec: ClassVar[type[EvalSpec]] = EvalSpec

    def __init__(self, *, launcher: Launcher, **settings: Any) -> None:
        self.spec = EvalSpec(**settings)
        self.launcher = launcher

    def run(self) -> int:
        spec = self.spec
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        shards = self.launcher.shard_count
        print(f"eval: {shards} shard(s) -> {spec.output_dir}", file=sys.stderr)
        if self.launcher.run(functools.partial(eval_shard, spec), shards) is None:
            print("eval: submitted; merge later with python run.py job=eval ... (same command)")
            return 0
        fps = store_fps(spec.store)  # the rate the samples were aligned at
        summary = merge(spec.output_dir, fps=fps)
        line = ", ".join(
            f"{m} {summary[m]['mean']:.4g}" for m in METRICS if summary[m]["mean"] is not None
        )
        print(f"eval: {summary['samples']} samples: {line}")
        if spec.report:
            from jobs.report import write_report

            page = write_report(spec.output_dir, fps=fps)
            print(f"eval: report {page}")
        print(f"eval: summary {Path(spec.output_dir).absolute() / 'summary.json'}")
        return 0
