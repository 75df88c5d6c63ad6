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
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

from cache import Store, open_store, read_journal
from data import StreamDataset, read_samples, store_fps
from jobs.eval_spec import EvalSpec
from jobs.launch.launchers import Launcher
from jobs.results import read_results
from jobs.run_identity import claim_output, eval_identity

METRICS = ("lm_ppl", "time_diff", "fluency", "lm_correctness", "lm_accuracy")


def _load(spec: EvalSpec) -> tuple[Any, Any, StreamDataset]:
    from extract.encoders import hub_access
    from models.checkpoints import load_checkpoint
    from models.live import check_features
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


def merge(
    output_dir: str | Path,
    *,
    fps: float | None = None,
    counts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every shard's results and write ``summary.json``: per metric the mean, count and a
    95% normal confidence interval of the mean (1.96 standard errors); ``fps``, the frame rate
    the samples were evaluated at, is recorded for ``job=report``; ``counts``: how many samples
    the annotations built and how many were skipped or adjusted, by reason (:func:`counts`)."""
    out = Path(output_dir)
    records = read_results(out)
    summary: dict[str, Any] = {"samples": len(records)}
    if counts is not None:
        summary["counts"] = {**counts, "evaluated": len(records)}
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


def counts(ds: StreamDataset) -> dict[str, Any]:
    """How many samples the annotations built, and the skips and adjustments by reason."""
    return {
        "built": ds.built,
        "usable": len(ds.samples),
        "skipped": dict(sorted(ds.skipped.items())),
        "adjusted": dict(sorted(ds.adjusted.items())),
    }


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
        store = open_store(spec.store)
        if spec.data.is_benchmark:
            return self._run_benchmark(store)
        fps = store_fps(store)  # the rate the samples were aligned at
        samples = read_samples(spec.data, fps=fps)[: spec.max_samples]
        built = counts(StreamDataset(store, samples, encode=None))
        # Results in the folder must come from this very evaluation (checked before any work).
        claim_output(spec.output_dir, eval_identity(spec, store))
        for reason, n in sorted({**built["skipped"], **built["adjusted"]}.items()):
            print(f"eval: {n} x {reason}", file=sys.stderr)
        shards = self.launcher.shard_count
        print(f"eval: {shards} shard(s) -> {spec.output_dir}", file=sys.stderr)
        if self.launcher.run(functools.partial(eval_shard, spec), shards) is None:
            print("eval: submitted; merge later with python run.py job=eval ... (same command)")
            return 0
        summary = merge(spec.output_dir, fps=fps, counts=built)
        line = ", ".join(
            f"{m} {summary[m]['mean']:.4g}" for m in METRICS if summary[m]["mean"] is not None
        )
        skipped = sum(built["skipped"].values())
        print(f"eval: {summary['samples']}/{built['built']} samples ({skipped} skipped): {line}")
        if spec.report:
            from jobs.report import write_report

            page = write_report(spec.output_dir, fps=fps)
            print(f"eval: report {page}")
        print(f"eval: summary {Path(spec.output_dir).absolute() / 'summary.json'}")
        return 0

    def _run_benchmark(self, store: Store) -> int:
        from jobs.benchmark_eval import benchmark_shard, build, merge_benchmarks, summary_line

        spec = self.spec
        found = build(spec, store)  # checked here, before any shard starts
        for reason, n in sorted({**found.skipped, **found.adjusted}.items()):
            print(f"eval: {n} x {reason}", file=sys.stderr)
        if not found.samples:
            raise ValueError(
                f"no {spec.data.format} question from {spec.data.annotations} has its video done"
                f" in {spec.store}: nothing to evaluate"
            )
        claim_output(spec.output_dir, eval_identity(spec, store))
        shards = self.launcher.shard_count
        print(
            f"eval: {len(found.samples)} questions, {shards} shard(s) -> {spec.output_dir}",
            file=sys.stderr,
        )
        if self.launcher.run(functools.partial(benchmark_shard, spec), shards) is None:
            print("eval: submitted; merge later with python run.py job=eval ... (same command)")
            return 0
        summary = merge_benchmarks(spec, found)
        print(f"eval: {summary_line(summary)}")
        if spec.report:
            from jobs.benchmark_report import write_benchmark_report

            print(f"eval: report {write_benchmark_report(spec.output_dir)}")
        print(f"eval: summary {Path(spec.output_dir).absolute() / 'summary.json'}")
        missing = summary["samples"]["not evaluated"]
        if missing:
            print(f"eval: {missing} questions have no result (a shard failed?): rerun to finish")
            return 1
        return 0
