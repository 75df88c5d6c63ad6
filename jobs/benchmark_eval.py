"""Evaluation by generation: COIN's five benchmark tasks and Ego4D LTA (``job=eval`` on
``data=coin_benchmarks`` or ``data=ego4d_lta``), batched, sharded, resumable, merged.

Each shard generates answers for its questions ``shard::shard_count`` in batches of
``job.batch_size`` (greedy, ``max_new_tokens=512`` for COIN; beam search with 5 beams and 5
returned sequences for LTA, as the reference's evaluators) and appends one JSON line per question
to ``OUT/results/shard-NNNNN.jsonl``: the task, the video, the window's first and last stored
frame, the question, the reference answer and labels, the generated text(s) and the score, so
every metric can be recomputed from the lines. The merge writes ``summary.json`` (per task its
metric, sample count and 95% interval; how many questions were built, evaluated and skipped, and
why) and ``report.html``. Rules and sources: docs/benchmarks.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache import Store, open_store, read_journal
from data import BenchmarkDataset, BenchmarkSample, BenchmarkSet, read_benchmarks
from jobs.results import read_results

if TYPE_CHECKING:
    from jobs.eval_spec import EvalSpec

COIN_ORDER = ("step", "task", "next", "procedure", "taskprocedure")
COIN_HEADERS = {
    "step": "Step",
    "task": "Task",
    "next": "Next",
    "procedure": "Proc.",
    "taskprocedure": "Proc.+",
}
LTA_METRICS = ("verb_ed20", "noun_ed20", "action_ed20", "verb_aued", "noun_aued", "action_aued")
LTA_FUTURE = 20  # Z
LTA_BEAMS = 5  # K


def generation_settings(spec: EvalSpec) -> dict[str, int]:
    """The reference's evaluator settings for the data (``job.num_beams`` overrides the beams;
    LTA returns as many sequences as beams)."""
    lta = spec.data.format == "ego4d_lta"
    beams = spec.num_beams if spec.num_beams is not None else (LTA_BEAMS if lta else 1)
    return {
        "max_new_tokens": spec.max_new_tokens,
        "num_beams": beams,
        "num_return_sequences": beams if lta else 1,
    }


def build(spec: EvalSpec, store: Store) -> BenchmarkSet:
    """The questions of ``spec.data`` over ``store`` (at most ``job.max_samples``)."""
    found = read_benchmarks(spec.data, store)
    if spec.max_samples is not None:
        found.samples = found.samples[: spec.max_samples]
    return found


def _load(spec: EvalSpec) -> tuple[Any, Any, BenchmarkSet, BenchmarkDataset]:
    from extract.encoders import hub_access
    from models.checkpoints import load_checkpoint
    from models.live import check_features

    assert spec.adapter  # checked by EvalSpec
    store = open_store(spec.store)
    per_frame, dim = int(store.layout["tokens_per_frame"]), int(store.layout["dim"])
    with hub_access():
        model, tokenizer = load_checkpoint(spec.adapter, llm=spec.llm, frame_tokens=per_frame)
    check_features(model, per_frame, dim, f"store {spec.store}")
    found = build(spec, store)
    ds = prompt_dataset(store, found.samples, tokenizer, model.frame_tokens, model.cfg.v_token)
    return model, tokenizer, found, ds


def prompt_dataset(
    store: Store,
    samples: Sequence[BenchmarkSample],
    tokenizer: Any,
    frame_tokens: int,
    v_token: str,
) -> BenchmarkDataset:
    """The questions as generation prompts: question, frames, then ``\nAssistant:`` (never the
    answer)."""
    from models.prompt import encode_prompt

    encode = functools.partial(encode_prompt, tokenizer, frame_tokens=frame_tokens, v_token=v_token)
    return BenchmarkDataset(store, samples, encode, with_answer=False)


def benchmark_shard(spec: EvalSpec, shard: int, shard_count: int) -> int:
    """Answer questions ``shard::shard_count`` by generation, appending a result line per
    question (a rerun skips those already there); returns how many were new."""
    from models.generate import generate_texts

    model, tokenizer, found, ds = _load(spec)
    path = Path(spec.output_dir) / "results" / f"shard-{shard:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {r["sample_id"] for r in read_journal(path)}
    todo = [i for i in range(shard, len(ds), shard_count) if ds.samples[i].sample_id not in done]
    device = next(model.parameters()).device
    settings = generation_settings(spec)
    new = 0
    for start in range(0, len(todo), spec.batch_size):
        batch = [ds[i] for i in todo[start : start + spec.batch_size]]
        texts = generate_texts(
            model,
            tokenizer,
            [item["input_ids"].to(device) for item in batch],
            [item["frames"].to(device) for item in batch],
            **settings,
        )
        lines = []
        for i, item, outs in zip(todo[start:], batch, texts, strict=False):
            s = ds.samples[i]
            assert item["sample_id"] == s.sample_id
            lines.append(json.dumps(result_line(s, outs, found, protocol=spec.data.protocol)))
        with open(path, "a") as f:  # a kill loses at most this batch
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        new += len(lines)
    return new


def result_line(
    s: BenchmarkSample, outputs: Sequence[str], found: BenchmarkSet, *, protocol: str
) -> dict[str, Any]:
    """A question's result: everything needed to recompute its score, and the score."""
    line: dict[str, Any] = {
        "sample_id": s.sample_id,
        "task": s.task,
        "video_id": s.video_id,
        "first_frame": s.first_frame if s.num_frames else None,
        "last_frame": (
            (s.frame_indices[-1] if s.frame_indices else s.stop_frame - 1) if s.num_frames else None
        ),
        "num_frames": s.num_frames,
        "question": s.question,
        "answer": s.answer,
        "labels": list(s.labels),
        "meta": dict(s.meta),
    }
    if s.task == "lta":
        line["prediction"] = list(outputs)
        line["score"] = score_lta(s, outputs, found)
    else:
        from models.coin_metrics import score_coin

        line["prediction"] = outputs[0]
        line["score"] = score_coin(
            s.task,
            outputs[0],
            s.labels,
            found.categories[s.task],
            protocol=protocol,
        )
    return line


def score_lta(s: BenchmarkSample, beams: Sequence[str], found: BenchmarkSet) -> dict[str, Any]:
    """Parse each beam into Z (verb, noun) ids; with labels, the edit distances at Z and AUED
    (min over beams) for verbs, nouns and actions."""
    from models.lta_metrics import lta_sample_scores, parse_lta

    ids = [parse_lta(text, found.taxonomy, LTA_FUTURE) for text in beams]
    score: dict[str, Any] = {
        "verb_ids": [[v for v, _ in b] for b in ids],
        "noun_ids": [[n for _, n in b] for b in ids],
    }
    verbs, nouns = s.meta.get("verb_labels"), s.meta.get("noun_labels")
    if verbs is not None and nouns is not None:
        score.update(lta_sample_scores(ids, list(zip(verbs, nouns, strict=True)), found.taxonomy))
    return score


# ---------------------------------------------------------------------------------------------
# Merge


def wilson(correct: float, total: float, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval of a proportion (95% by default); None without trials."""
    if total <= 0:
        return None
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, count and a 95% normal interval of the mean (1.96 standard errors)."""
    n = len(values)
    if not n:
        return {"mean": None, "n": 0, "ci95": None}
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "n": n, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return {"mean": mean, "n": n, "ci95": [mean - half, mean + half]}


def table(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per COIN task: top-1 accuracy (correct over scored steps, a micro average for the
    procedure tasks, as the reference), samples, steps and a 95% Wilson interval; for LTA the
    mean per-question edit distances and AUED with 95% intervals."""
    out: dict[str, Any] = {}
    for task in COIN_ORDER:
        scores = [r["score"] for r in records if r["task"] == task]
        if not scores:
            continue
        correct = sum(int(x["correct"]) for x in scores)
        total = sum(int(x["total"]) for x in scores)
        out[task] = {
            "accuracy": correct / total if total else None,
            "samples": len(scores),
            "steps": total,
            "correct": correct,
            "ci95": wilson(correct, total),
        }
    lta = [r["score"] for r in records if r["task"] == "lta"]
    scored = [x for x in lta if "verb_ed20" in x]
    if lta:
        out["lta"] = {"samples": len(lta), "scored": len(scored)}
        for m in LTA_METRICS:
            out["lta"][m] = mean_ci([float(x[m]) for x in scored])
    return out


def submission(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The Ego4D LTA challenge's JSON (``models.lta_metrics.lta_submission``) from result
    lines: each line's meta and its beams' parsed (verb, noun) ids."""
    from models.lta_metrics import lta_submission

    return lta_submission(
        {
            **r["meta"],
            "beams": [
                list(zip(v, n, strict=True))
                for v, n in zip(r["score"]["verb_ids"], r["score"]["noun_ids"], strict=True)
            ],
        }
        for r in records
        if r["task"] == "lta"
    )


def merge_benchmarks(spec: EvalSpec, found: BenchmarkSet) -> dict[str, Any]:
    """Write ``summary.json`` (and, on ``test_unannotated``, the challenge's submission JSON)
    from every shard's lines, for the questions built now; returns the summary."""
    out = Path(spec.output_dir)
    lines = read_results(out)
    wanted = [s.sample_id for s in found.samples]
    records = [lines[k] for k in wanted if k in lines]
    summary: dict[str, Any] = {
        "kind": "benchmark",
        "data": spec.data.format,
        "split": spec.data.split,
        "generation": generation_settings(spec),
        "samples": {
            "built": len(wanted),
            "evaluated": len(records),
            "not evaluated": len(wanted) - len(records),
            "skipped": dict(sorted(found.skipped.items())),
            "adjusted": dict(sorted(found.adjusted.items())),
            "without frames": sum(1 for r in records if not r["num_frames"]),
        },
        "metrics": table(records),
    }
    if spec.data.format == "ego4d_lta" and spec.data.split == "test_unannotated":
        path = out / f"{spec.data.split}_predictions.json"
        path.write_text(json.dumps(submission(records)) + "\n")
        summary["submission"] = str(path.absolute())
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out / "summary.json")
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line: each task's headline number and its sample count."""
    parts = []
    metrics = summary["metrics"]
    for task in COIN_ORDER:
        if task in metrics and metrics[task]["accuracy"] is not None:
            m = metrics[task]
            parts.append(f"{COIN_HEADERS[task]} {100 * m['accuracy']:.1f}% (n={m['samples']})")
    if "lta" in metrics:
        m = metrics["lta"]
        for key in ("verb_ed20", "noun_ed20", "action_ed20"):
            if m[key]["mean"] is not None:
                parts.append(f"{key} {m[key]['mean']:.3f}")
        parts.append(f"(n={m['samples']})")
    counts = summary["samples"]
    skipped = sum(counts["skipped"].values())
    head = f"{counts['evaluated']}/{counts['built']} questions evaluated, {skipped} skipped"
    return head + (": " + ", ".join(parts) if parts else "")
