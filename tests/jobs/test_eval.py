"""Eval (sharded + merged), streaming inference and the report, on a real store + tiny Llama."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from data import DataConfig
from jobs.eval import EvalJob, merge
from jobs.launchers import LocalLauncher
from jobs.report import ReportJob
from jobs.train import train_rank
from tests.jobs.cli import run_cli
from tests.jobs.test_train import make_store, spec_for, write_chat

METRICS = ("lm_ppl", "time_diff", "fluency", "lm_correctness", "lm_accuracy")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llm: Path) -> tuple[Path, Path, Path]:
    """A store, chat annotations and an adapter trained for a few steps on them."""
    d = tmp_path_factory.mktemp("eval")
    vids = ["a", "b", "c", "d", "e"]
    store = make_store(d / "feats.zarr", vids)
    ann = write_chat(d / "chat.json", vids)
    spec = spec_for(store, ann, tiny_llm, d / "train", max_steps=3, grad_accum=1)
    train_rank(spec, 0, 1)
    return store, ann, d / "train" / "checkpoints" / "step-0000003" / "adapter"


def eval_job(
    store: Path, ann: Path, adapter: Path, out: Path, launcher: object, report: bool = False
) -> EvalJob:
    return EvalJob(
        store=str(store),
        data=DataConfig(format="chat", annotations=str(ann)),
        adapter=str(adapter),
        llm=None,
        launcher=launcher,  # type: ignore[arg-type]
        output_dir=str(out),
        report=report,
    )


def means(summary: dict) -> list[float]:
    return [summary[m]["mean"] for m in METRICS]


def test_sharded_eval_merges_to_the_single_process_result(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    store, ann, adapter = trained
    assert eval_job(store, ann, adapter, tmp_path / "one", LocalLauncher()).run() == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    sharded = eval_job(store, ann, adapter, tmp_path / "three", LocalLauncher(shards=3))
    assert sharded.run() == 0
    three = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert len(list((tmp_path / "three" / "results").glob("shard-*.jsonl"))) == 3
    assert one["samples"] == three["samples"] == 5
    np.testing.assert_allclose(means(three), means(one), rtol=1e-6)
    assert all(one[m]["n"] == 5 for m in ("lm_ppl", "time_diff", "fluency"))
    lo, hi = one["lm_ppl"]["ci95"]
    assert lo <= one["lm_ppl"]["mean"] <= hi
    # Resumable: a rerun finds every sample done and evaluates nothing again.
    lines = (tmp_path / "three" / "results" / "shard-00000.jsonl").read_text()
    from jobs.eval import eval_shard

    assert eval_shard(sharded.spec, 0, 3) == 0
    assert (tmp_path / "three" / "results" / "shard-00000.jsonl").read_text() == lines
    assert means(merge(tmp_path / "three")) == means(three)


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_sharded_eval_on_slurm_equals_single_process(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    store, ann, adapter = trained
    eval_job(store, ann, adapter, tmp_path / "local", LocalLauncher()).run()
    r = run_cli(
        "job=eval", f"store={store}", "data=chat", f"data.annotations={ann}",
        f"job.adapter={adapter}", "job.threshold=0.0", f"job.output_dir={tmp_path / 'slurm'}",
        "launcher=slurm", "launcher.shards=2", "launcher.partition=debug",
        "launcher.cpus_per_task=1", "launcher.mem_gb=3", f"launcher.folder={tmp_path / 'logs'}",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    remote = json.loads((tmp_path / "slurm" / "summary.json").read_text())
    np.testing.assert_allclose(means(remote), means(local), rtol=1e-6)
    assert (tmp_path / "slurm" / "report.html").exists()


def test_stream_job_inserts_queries_and_records_latency(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    store, _, adapter = trained
    out = tmp_path / "stream"
    r = run_cli(
        "job=stream", f"store={store}", "video_id=b", f"job.adapter={adapter}",
        "job.threshold=0.725", "job.kv=bounded", "job.window_tokens=120",
        "job.max_reply_tokens=4",
        "job.queries=[{t: 2.0, text: 'What am I doing?'}]", f"job.output_dir={out}",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    timeline = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert {"time": 2.0, "role": "user", "text": "What am I doing?"} in timeline
    latency = json.loads((out / "latency.json").read_text())
    assert latency["frames"] == 24 and len(latency["per_frame_ms"]) == 24


def test_report_renders_in_headless_chromium(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    store, ann, adapter = trained
    out = tmp_path / "run"
    assert eval_job(store, ann, adapter, out, LocalLauncher(), report=True).run() == 0
    page = out / "report.html"
    # job=report re-renders it at the rate the eval run recorded.
    assert json.loads((out / "summary.json").read_text())["fps"] == 2.0
    first = page.read_text()
    assert ReportJob(output_dir=str(out)).run() == 0 and page.read_text() == first
    text = page.read_text()
    assert '<table id="metrics">' in text and "frame_diff.png" in text
    for src in [s.split('"')[0] for s in text.split('src="')[1:]]:
        assert (out / src).stat().st_size > 1000, src  # every image exists and has content
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/install.sh installs it)"
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    r = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and shot.stat().st_size > 10_000, r.stderr[-2000:]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "Streaming evaluation" in dom and 'id="metrics"' in dom
    artifacts = Path(__file__).resolve().parents[2] / ".test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "eval-report.png")  # the screenshot, kept for people to look at
