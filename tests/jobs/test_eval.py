"""Eval (sharded + merged), streaming inference and the report, on a real store + tiny Llama."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data import DataConfig
from jobs.eval import EvalJob, merge
from jobs.launch.launchers import LocalLauncher
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


def test_eval_and_report_on_a_store_in_a_bucket(
    trained: tuple[Path, Path, Path], tmp_path: Path, s3_bucket: str
) -> None:
    """``job=eval store=s3://...`` then ``job=report`` on its output, through the CLI: the same
    numbers as the same store on disk, and a report that re-renders the same."""
    store, ann, adapter = trained
    remote = make_store(f"{s3_bucket}/feats.zarr", ["a", "b", "c", "d", "e"])  # the same content
    assert eval_job(store, ann, adapter, tmp_path / "local", LocalLauncher()).run() == 0
    out = tmp_path / "s3"
    r = run_cli(
        "job=eval", f"store={remote}", "data=chat", f"data.annotations={ann}",
        f"job.adapter={adapter}", f"job.output_dir={out}", hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    got = json.loads((out / "summary.json").read_text())
    assert got["samples"] == local["samples"] == 5
    np.testing.assert_allclose(means(got), means(local), rtol=1e-6)
    assert json.loads((out / "run.json").read_text())["store"]["path"] == remote
    page = out / "report.html"
    first = page.read_text()
    page.unlink()
    rep = run_cli("job=report", f"job.output_dir={out}", hydra_dir=tmp_path / "h2")
    assert rep.returncode == 0 and f"report: {page}" in rep.stdout, rep.stderr[-3000:]
    assert page.read_text() == first and '<table id="metrics">' in first


def test_an_output_folder_of_another_evaluation_is_refused(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Results belong to what produced them: another checkpoint, threshold or data into the
    same folder stops before any work, naming what differs; the same run resumes."""
    store, ann, adapter = trained
    out = tmp_path / "run"
    assert eval_job(store, ann, adapter, out, LocalLauncher()).run() == 0
    lines = (out / "results" / "shard-00000.jsonl").read_text()
    # The same evaluation again: nothing recomputed, nothing refused.
    assert eval_job(store, ann, adapter, out, LocalLauncher()).run() == 0
    assert (out / "results" / "shard-00000.jsonl").read_text() == lines
    earlier = adapter.parents[1] / "step-0000002" / "adapter"
    with pytest.raises(ValueError, match=r"checkpoint\.sha256"):
        eval_job(store, ann, earlier, out, LocalLauncher()).run()
    job = eval_job(store, ann, adapter, out, LocalLauncher())
    job.spec = replace(job.spec, threshold=0.5)
    with pytest.raises(ValueError, match=r"threshold: 0\.0 there, 0\.5 now"):
        job.run()
    # A copy of the same checkpoint elsewhere is the same checkpoint.
    copy = tmp_path / "copied-adapter"
    shutil.copytree(adapter, copy)
    assert eval_job(store, ann, copy, out, LocalLauncher()).run() == 0
    assert (out / "results" / "shard-00000.jsonl").read_text() == lines
    # Through the CLI: one error line, exit 2, and the folder's lines untouched.
    r = run_cli(
        "job=eval", f"store={store}", "data=chat", f"data.annotations={ann}",
        f"job.adapter={earlier}", f"job.output_dir={out}", hydra_dir=tmp_path / "h",
    )  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "holds results of another evaluation" in errors[0] and "job.output_dir" in errors[0]
    assert "Traceback" not in r.stderr
    assert (out / "results" / "shard-00000.jsonl").read_text() == lines
    # A folder with results but no record of their run is refused too.
    (out / "run.json").unlink()
    with pytest.raises(ValueError, match="no record of what produced them"):
        eval_job(store, ann, adapter, out, LocalLauncher()).run()


def test_samples_outside_their_video_are_skipped_and_counted(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A window past the video's end is never scored on zero frames, a reply past the end is
    dropped (not moved onto the last frame), and both are counted in the summary."""
    store, _, adapter = trained
    ask = {"role": "user", "content": "What is happening?", "time": 0.0}

    def reply(text: str, t: float) -> dict:
        return {"role": "assistant", "content": text, "time": t}

    chat = [
        {"video_uid": "a", "conversation": [ask, reply("One.", 2.2)]},
        {"video_uid": "b", "start": 20.0, "end": 22.0,
         "conversation": [{**ask, "time": 20.0}, reply("Late.", 22.0)]},
        {"video_uid": "c", "conversation": [ask, reply("Two.", 3.0), reply("Past it.", 30.0)]},
        {"video_uid": "gone", "conversation": [ask, reply("X.", 1.0)]},
    ]  # fmt: skip
    ann = tmp_path / "chat.json"
    ann.write_text(json.dumps(chat))
    out = tmp_path / "run"
    assert eval_job(store, ann, adapter, out, LocalLauncher()).run() == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 2
    counts = summary["counts"]
    assert counts["built"] == 4 and counts["usable"] == 2 and counts["evaluated"] == 2
    assert counts["skipped"] == {
        "video not in the store": 1,
        "window outside the video's stored frames": 1,
    }
    assert counts["adjusted"] == {"turns after the video's last stored frame dropped": 1}
    records = [
        json.loads(x) for x in (out / "results" / "shard-00000.jsonl").read_text().splitlines()
    ]
    assert sorted(r["video_id"] for r in records) == ["a", "c"]
    c = next(r for r in records if r["video_id"] == "c")
    assert len(c["turns"]) == 1  # only the reply at 3.0 s is scored
    assert all(t["num_frames"] > 0 for r in records for t in r["turns"])
