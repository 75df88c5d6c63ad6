"""The report of an evaluation by generation: a table laid out like VideoLLM-online's Table 2 (COIN
Step, Task, Next, Proc., Proc.+ top-1 %; Ego4D LTA verb, noun, action ED@20), each number with
its sample count and 95% interval, what was skipped and why, and a page of per-question
predictions beside their labels, the worst first. Static HTML next to ``summary.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from jobs.benchmark_eval import COIN_HEADERS, COIN_ORDER
from jobs.results import read_results

PREDICTIONS_PAGE = "predictions.html"
_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}"
    "td.n{text-align:right}pre{margin:0;white-space:pre-wrap}.bad{background:#fbeaea}"
)
LTA_COLUMNS = (
    ("verb_ed20", "Verb ED@20"),
    ("noun_ed20", "Noun ED@20"),
    ("action_ed20", "Action ED@20"),
)
LTA_AUED = (("verb_aued", "Verb AUED"), ("noun_aued", "Noun AUED"), ("action_aued", "Action AUED"))


def _e(text: Any) -> str:
    return html.escape(str(text))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ci(ci: list[float] | None, pct: bool) -> str:
    if not ci:
        return "–"
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]" if pct else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(metrics: dict[str, Any]) -> str:
    heads, values, counts, cis = [], [], [], []
    for task in COIN_ORDER:
        if task in metrics:
            m = metrics[task]
            heads.append(COIN_HEADERS[task])
            values.append(_pct(m["accuracy"]))
            counts.append(f"{m['samples']} ({m['steps']} steps)")
            cis.append(_ci(m["ci95"], pct=True))
    if "lta" in metrics:
        for key, head in LTA_COLUMNS + LTA_AUED:
            m = metrics["lta"][key]
            heads.append(head)
            values.append("–" if m["mean"] is None else f"{m['mean']:.3f}")
            counts.append(str(m["n"]))
            cis.append(_ci(m["ci95"], pct=False))
    if not heads:
        return "<p>No question has a score yet.</p>"
    row = "".join

    return (
        '<table id="table2"><tr><th></th>'
        + row(f"<th>{_e(h)}</th>" for h in heads)
        + "</tr><tr><th>value</th>"
        + row(f'<td class="n">{v}</td>' for v in values)
        + "</tr><tr><th>n</th>"
        + row(f'<td class="n">{c}</td>' for c in counts)
        + "</tr><tr><th>95% CI</th>"
        + row(f'<td class="n">{c}</td>' for c in cis)
        + "</tr></table>"
    )


def _counts(samples: dict[str, Any]) -> str:
    items = [
        ("built", samples["built"]),
        ("evaluated", samples["evaluated"]),
        ("not evaluated", samples["not evaluated"]),
        ("evaluated without frames", samples["without frames"]),
    ]
    items += [(f"skipped: {k}", v) for k, v in samples["skipped"].items()]
    items += [(f"adjusted: {k}", v) for k, v in samples["adjusted"].items()]
    return (
        '<table id="counts">'
        + "".join(f'<tr><td>{_e(k)}</td><td class="n">{v}</td></tr>' for k, v in items)
        + "</table>"
    )


def badness(record: dict[str, Any]) -> float:
    """How wrong a question's prediction is, for sorting (higher first): COIN, the share of
    steps missed; LTA, the action edit distance at Z (unscored questions last)."""
    score = record["score"]
    if record["task"] == "lta":
        return float(score.get("action_ed20", -1.0))
    total = int(score["total"])
    return 1.0 - int(score["correct"]) / total if total else 0.0


def _prediction_rows(records: list[dict[str, Any]]) -> str:
    rows = []
    for r in sorted(records, key=lambda r: (-badness(r), r["sample_id"])):
        pred = r["prediction"]
        shown = "\n---\n".join(pred) if isinstance(pred, list) else pred
        frames = "–" if r["first_frame"] is None else f"{r['first_frame']}–{r['last_frame']}"
        cls = ' class="bad"' if badness(r) > 0 else ""
        rows.append(
            f"<tr{cls}><td>{_e(r['task'])}</td><td>{_e(r['video_id'])}</td>"
            f'<td class="n">{frames}</td><td>{_e(r["question"])}</td>'
            f"<td><pre>{_e(shown)}</pre></td><td><pre>{_e(r['answer'] or '')}</pre></td>"
            f'<td class="n">{badness(r):.3f}</td></tr>'
        )
    return "".join(rows)


def write_benchmark_report(output_dir: str | Path) -> Path:
    """Write ``report.html`` (the table and the counts) and ``predictions.html`` (every
    question, the worst first) for the run in ``output_dir``; returns the report's path."""
    out = Path(output_dir)
    summary = json.loads((out / "summary.json").read_text())
    records = list(read_results(out).values())

    def head(title: str) -> str:
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        )

    split = summary.get("split")
    page = (
        head("streamfeat benchmark report")
        + f"<h1>{_e(summary['data'])} ({_e(split)})</h1>"
        + "<p>Top-1 accuracy in % (COIN; 95% Wilson intervals, the procedure tasks counted per"
        " step) and edit distance over the next 20 actions (Ego4D LTA, lower is better; 95%"
        " normal intervals of the mean). Generation: "
        + _e(json.dumps(summary["generation"]))
        + f"</p><h2>Table</h2>{_table(summary['metrics'])}"
        + f"<h2>Questions</h2>{_counts(summary['samples'])}"
        + f'<p><a href="{PREDICTIONS_PAGE}">Every prediction beside its labels</a></p>'
        + "</body></html>\n"
    )
    preds = (
        head("streamfeat predictions")
        + f"<h1>Predictions ({len(records)}), the worst first</h1>"
        + "<table><tr><th>task</th><th>video</th><th>frames</th><th>question</th>"
        + "<th>prediction</th><th>reference</th><th>error</th></tr>"
        + _prediction_rows(records)
        + "</table></body></html>\n"
    )
    (out / PREDICTIONS_PAGE).write_text(preds)
    path = out / "report.html"
    path.write_text(page)
    return path
