"""A static HTML report of an eval run: metrics table, frame_diff histogram, reply timelines.

Everything is written next to ``summary.json`` (``report.html`` + ``report/*.png``) and opens in
a browser from disk, no server.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from jobs.results import read_results

MAX_TIMELINES = 12


def reply_times(record: dict[str, Any], fps: float) -> tuple[list[float], list[float]]:
    """Gold and predicted reply times (seconds from the window start) of a sample's turns with
    stream positions: the gold reply follows the turn's last frame; the prediction is
    ``frame_diff`` frames earlier (early > 0, late < 0)."""
    gold, pred, frames = [], [], 0
    for t in record["turns"]:
        frames += t["num_frames"]
        if t["frame_diff"] is None:
            continue
        gold.append(frames / fps)
        pred.append((frames - t["frame_diff"]) / fps)
    return gold, pred


def write_report(output_dir: str | Path, *, fps: float) -> Path:
    """Render ``report.html`` for the eval run in ``output_dir`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")

    out = Path(output_dir)
    summary = json.loads((out / "summary.json").read_text())
    results = read_results(out)
    records = [results[k] for k in sorted(results)]
    figs = out / "report"
    figs.mkdir(exist_ok=True)
    _plot_frame_diffs(records, figs / "frame_diff.png")
    timelines = _plot_timelines(records[:MAX_TIMELINES], figs, fps)
    path = out / "report.html"
    path.write_text(_page(out, summary, records, timelines, fps))
    return path


def _plot_frame_diffs(records: list[dict[str, Any]], path: Path) -> None:
    """A histogram of every turn's ``frame_diff``."""
    import matplotlib.pyplot as plt

    diffs = [t["frame_diff"] for r in records for t in r["turns"] if t["frame_diff"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if diffs:
        lo, hi = min(diffs), max(diffs)
        ax.hist(diffs, bins=range(lo, hi + 2), align="left", color="#3b6ea8", edgecolor="white")
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("frame_diff (frames; > 0 early, < 0 late, 0 on time)")
    ax.set_ylabel("turns")
    ax.set_title(f"Response timing over {len(diffs)} turns")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_timelines(
    records: list[dict[str, Any]], figs: Path, fps: float
) -> list[tuple[dict[str, Any], str]]:
    """One gold-vs-predicted reply timeline per record, as ``figs/timeline-NNN.png``."""
    import matplotlib.pyplot as plt

    timelines = []
    for k, r in enumerate(records):
        gold, pred = reply_times(r, fps)
        fig, ax = plt.subplots(figsize=(7, 1.6))
        ax.scatter(gold, [1] * len(gold), marker="|", s=300, color="#2a7d2a", label="ground truth")
        ax.scatter(pred, [0] * len(pred), marker="|", s=300, color="#c0392b", label="predicted")
        ax.set_yticks([0, 1], ["predicted", "truth"])
        ax.set_ylim(-0.7, 1.7)
        ax.set_xlabel("seconds from window start")
        ax.set_title(f"{r['video_id']} ({r['sample_id']})", fontsize=9)
        fig.tight_layout()
        name = f"timeline-{k:03d}.png"
        fig.savefig(figs / name, dpi=90)
        plt.close(fig)
        timelines.append((r, name))
    return timelines


def _page(
    out: Path,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    timelines: list[tuple[dict[str, Any], str]],
    fps: float,
) -> str:
    """The report's HTML: metrics table, figures (under ``report/``) and one row per sample."""
    rows = "".join(
        f"<tr><td>{m}</td><td>{_fmt(v['mean'])}</td><td>{v['n']}</td>"
        f"<td>{_fmt_ci(v['ci95'])}</td></tr>"
        for m, v in summary.items()
        if isinstance(v, dict) and "mean" in v
    )
    sample_rows = "".join(
        f"<tr><td>{html.escape(r['sample_id'])}</td><td>{html.escape(r['video_id'])}</td>"
        f"<td>{_fmt(r['lm_ppl'])}</td><td>{_fmt(r['time_diff'])}</td>"
        f"<td>{_fmt(r['fluency'])}</td></tr>"
        for r in records
    )
    images = "".join(
        f'<figure><img src="report/{name}" alt="timeline of {html.escape(r["sample_id"])}">'
        f"</figure>"
        for r, name in timelines
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamfeat eval report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}figure{{margin:.5em 0}}</style>
</head><body>
<h1>Streaming evaluation</h1>
<p>{summary["samples"]} samples{_counts(summary)} from
<code>{html.escape(str(out.absolute()))}</code>.
TimeDiff in seconds at {fps:g} FPS; intervals are 95% normal CIs of the mean.</p>
<h2>Metrics</h2>
<table id="metrics"><tr><th>metric</th><th>mean</th><th>n</th><th>95% CI</th></tr>{rows}</table>
<h2>Response timing</h2><img src="report/frame_diff.png" alt="frame_diff histogram">
<h2>Reply timelines (first {len(timelines)})</h2>{images}
<h2>Samples</h2>
<table><tr><th>sample</th><th>video</th><th>LM-PPL</th><th>TimeDiff</th><th>Fluency</th></tr>
{sample_rows}</table>
</body></html>
"""


def _counts(summary: dict[str, Any]) -> str:
    """What the annotations built and what was skipped or adjusted, and why."""
    counts = summary.get("counts")
    if not counts:
        return ""
    parts = [f"{counts['built']} built"]
    parts += [f"{n} skipped: {r}" for r, n in counts["skipped"].items()]
    parts += [f"{n} adjusted: {r}" for r, n in counts["adjusted"].items()]
    return " (" + html.escape("; ".join(parts)) + ")"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{float(v):.4g}"


def _fmt_ci(ci: Any) -> str:
    return "–" if not ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


@dataclass(frozen=True)
class ReportSpec:
    """The settings of ``job=report`` (``job.*``)."""

    output_dir: str  # an eval run's folder (holding summary.json)
    fps: float | None = None  # None: the rate the eval run recorded in summary.json


def recorded_fps(output_dir: str | Path) -> float:
    """The frame rate an eval run was evaluated at (``summary.json``'s ``fps``)."""
    path = Path(output_dir) / "summary.json"
    fps = json.loads(path.read_text()).get("fps")
    if fps is None:
        raise ValueError(f"{path} records no fps (an older eval run): set job.fps=<its rate>")
    return float(fps)


class ReportJob:
    """``python run.py job=report job.output_dir=EVAL_RUN`` re-renders an eval run's report.

    Every key is a field of :class:`ReportSpec`.
    """

    Spec: ClassVar[type[ReportSpec]] = ReportSpec

    def __init__(self, **settings: Any) -> None:
        self.spec = ReportSpec(**settings)

    def run(self) -> int:
        spec = self.spec
        summary = Path(spec.output_dir) / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("kind") == "benchmark":
            from jobs.benchmark_report import write_benchmark_report

            print(f"report: {write_benchmark_report(spec.output_dir)}")
            return 0
        fps = spec.fps if spec.fps is not None else recorded_fps(spec.output_dir)
        print(f"report: {write_report(spec.output_dir, fps=fps)}")
        return 0
