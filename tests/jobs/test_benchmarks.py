"""COIN benchmarks and Ego4D LTA end to end: train, then evaluate by generation, through the CLI
on a real store with a tiny Llama, locally and on the test SLURM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cache import open_store
from data import DataConfig, read_benchmarks
from jobs.eval import EvalJob
from jobs.launch.launchers import LocalLauncher
from models.coin_metrics import score_coin
from tests.jobs.cli import run_cli
from tests.jobs.test_train import make_store


def step(start: float, end: float, label: str) -> dict:
    return {"id": label[:3], "segment": [start, end], "label": label}


COIN = {
    "database": {
        "a": {"class": "ReplaceSIMCard", "subset": "testing", "start": 0.0, "end": 11.0,
              "duration": 12.0, "annotation": [
                  step(0.0, 3.2, "open the card slot"), step(3.5, 6.0, "take out the old card"),
                  step(6.4, 9.0, "put in the new card")]},
        "b": {"class": "PutOnHair", "subset": "testing", "start": 1.0, "end": 8.0,
              "duration": 12.0, "annotation": [
                  step(1.0, 4.0, "comb the hair"), step(4.2, 7.9, "put on the hair clip")]},
        "c": {"class": "ReplaceSIMCard", "subset": "training", "start": 0.0, "end": 10.0,
              "duration": 12.0, "annotation": [
                  step(0.5, 3.0, "open the card slot"), step(3.0, 6.5, "take out the old card"),
                  step(6.5, 9.5, "put in the new card")]},
        "d": {"class": "PutOnHair", "subset": "training", "start": 0.0, "end": 9.0,
              "duration": 12.0, "annotation": [
                  step(0.0, 4.5, "comb the hair"), step(4.5, 8.5, "put on the hair clip")]},
        "gone": {"class": "PutOnHair", "subset": "testing", "start": 0.0, "end": 5.0,
                 "duration": 6.0, "annotation": [step(0.0, 2.0, "comb the hair")]},
    }
}  # fmt: skip
# Test questions: step 3 + 2, next 2 + 1, task 1 + 1, procedure 2 + 1, taskprocedure 2 + 1.
TEST_QUESTIONS = 16


@pytest.fixture(scope="module")
def coin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("coin")
    store = make_store(d / "feats.zarr", ["a", "b", "c", "d"])
    ann = d / "COIN.json"
    ann.write_text(json.dumps(COIN))
    return store, ann


def train_cli(store: Path, ann: Path, llm: Path, out: Path, *extra: str, hydra: Path) -> Path:
    r = run_cli(
        "job=train", f"store={store}", "data=coin_benchmarks", f"data.annotations={ann}",
        "data.split=train", f"model.llm={llm}", "model.lora_r=4", "model.lora_alpha=8",
        "job.max_steps=2", "job.grad_accum=1", "job.batch_size=2", "job.num_workers=0",
        f"job.output_dir={out}", "job.progress=false", *extra, hydra_dir=hydra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    adapter = out / "checkpoints" / "step-0000002" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    return adapter


def eval_cli(store: Path, ann: Path, adapter: Path, out: Path, *extra: str, hydra: Path) -> str:
    r = run_cli(
        "job=eval", f"store={store}", "data=coin_benchmarks", f"data.annotations={ann}",
        "data.split=test", f"job.adapter={adapter}", "job.max_new_tokens=6", "job.batch_size=4",
        f"job.output_dir={out}", *extra, hydra_dir=hydra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def lines(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((out / "results").glob("shard-*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            found[rec["sample_id"]] = rec
    return found


def test_eval_prompts_end_at_the_generation_prompt(coin: tuple[Path, Path], tiny_llm: Path) -> None:
    """Evaluation prompts hold the question and the frames, then ``\nAssistant:``, never the
    answer; training items hold the answer, learned."""
    from data import build_dataset
    from jobs.benchmark_eval import prompt_dataset
    from models.live import LiveConfig, build_live
    from models.prompt import encode_conversation
    from tests.jobs.test_train import D, N

    store, ann = coin
    _, tok = build_live(LiveConfig(llm=str(tiny_llm), vision_dim=D, frame_tokens=N, lora_r=2))
    cfg = DataConfig(format="coin_benchmarks", annotations=str(ann), split="test")
    found = read_benchmarks(cfg, open_store(store))
    ds = prompt_dataset(open_store(store), found.samples, tok, N, "<v>")
    for i, s in enumerate(ds.samples):
        item = ds[i]
        text = item["encoded"].text
        assert text.endswith("]\nAssistant:") and s.answer not in text, text[-80:]
        assert text.count("<v>") == N * s.num_frames == N * len(item["frames"])
        assert item["labels"] is None
    import functools

    train = build_dataset(
        DataConfig(format="coin_benchmarks", annotations=str(ann), split="train"),
        store,
        functools.partial(encode_conversation, tok, frame_tokens=N),
    )
    item = train[0]
    assert item["encoded"].text.endswith(train.samples[0].answer + tok.eos_token)
    assert int((item["labels"] != -100).sum()) > 0


@pytest.fixture(scope="module")
def trained(
    coin: tuple[Path, Path], tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    store, ann = coin
    d = tmp_path_factory.mktemp("train")
    return train_cli(store, ann, tiny_llm, d / "run", hydra=d / "h")


def test_coin_benchmarks_train_then_eval_on_the_cli(
    coin: tuple[Path, Path], trained: Path, tmp_path: Path
) -> None:
    store, ann = coin
    out = tmp_path / "eval"
    stdout = eval_cli(store, ann, trained, out, hydra=tmp_path / "h")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"]["built"] == TEST_QUESTIONS
    assert summary["samples"]["evaluated"] == TEST_QUESTIONS
    assert summary["samples"]["skipped"] == {"video not in the store": 1}
    assert summary["generation"] == {"max_new_tokens": 6, "num_beams": 1, "num_return_sequences": 1}
    records = lines(out)
    assert len(records) == TEST_QUESTIONS
    by_task: dict[str, list[dict]] = {}
    for r in records.values():
        by_task.setdefault(r["task"], []).append(r)
    assert {t: len(v) for t, v in by_task.items()} == {
        "step": 5, "next": 3, "task": 2, "procedure": 3, "taskprocedure": 3,
    }  # fmt: skip
    task_a = next(r for r in by_task["task"] if r["video_id"] == "a")
    assert task_a["answer"] == "Replace sim card."
    assert (task_a["first_frame"], task_a["last_frame"]) == (0, 22)  # 0 s .. 11 s at 2 fps
    # Every metric can be recomputed from the lines alone.
    found = read_benchmarks(
        DataConfig(format="coin_benchmarks", annotations=str(ann), split="test"), open_store(store)
    )
    for task, recs in by_task.items():
        scores = [
            score_coin(task, r["prediction"], r["labels"], found.categories[task]) for r in recs
        ]
        assert [s["correct"] for s in scores] == [r["score"]["correct"] for r in recs]
        correct = sum(s["correct"] for s in scores)
        total = sum(s["total"] for s in scores)
        assert summary["metrics"][task]["accuracy"] == pytest.approx(correct / total)
        assert summary["metrics"][task]["samples"] == len(recs)
        lo, hi = summary["metrics"][task]["ci95"]
        assert 0.0 <= lo <= correct / total <= hi <= 1.0
    assert "Step" in stdout and "16/16 questions evaluated, 1 skipped" in stdout
    page = (out / "report.html").read_text()
    assert 'id="table2"' in page and "Proc.+" in page and "video not in the store" in page
    assert (out / "predictions.html").read_text().count("<tr") == TEST_QUESTIONS + 1
    # A rerun skips every finished question.
    before = {p.name: p.read_text() for p in (out / "results").glob("*.jsonl")}
    eval_cli(store, ann, trained, out, hydra=tmp_path / "h2")
    assert {p.name: p.read_text() for p in (out / "results").glob("*.jsonl")} == before


def test_lta_eval_scores_beams_and_writes_the_submission(
    tiny_llm: Path, trained: Path, tmp_path: Path
) -> None:
    """Ego4D LTA through the eval job: 5 beams per question, ED@20 and AUED for verbs, nouns
    and actions, and on test_unannotated the challenge's submission keyed clip_action."""
    store = make_store(tmp_path / "feats.zarr", ["v1"])
    ann = tmp_path / "annotations"
    ann.mkdir()
    verbs, nouns = ["take", "put", "cut_(slice)"], ["knife", "pot_(planter)", "onion"]
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": verbs, "nouns": nouns}))
    clips = [
        {"clip_uid": "clip1", "video_uid": "v1", "clip_parent_start_sec": 0.0,
         "action_clip_start_sec": 0.4 * i, "action_clip_end_sec": 0.4 * i + 0.3,
         "action_idx": i, "verb_label": i % 3, "noun_label": (i + 1) % 3, "clip_idx": 0}
        for i in range(29)
    ]  # fmt: skip
    (ann / "fho_lta_val.json").write_text(json.dumps({"clips": clips}))
    unlabelled = [
        {k: v for k, v in c.items() if k not in ("verb_label", "noun_label")} for c in clips
    ]
    (ann / "fho_lta_test_unannotated.json").write_text(json.dumps({"clips": unlabelled}))
    for split in ("val", "test_unannotated"):
        job = EvalJob(
            store=str(store),
            data=DataConfig(format="ego4d_lta", annotations=str(ann), split=split),
            adapter=str(trained),
            launcher=LocalLauncher(shards=2),
            output_dir=str(tmp_path / split),
            max_new_tokens=8,
            batch_size=2,
            report=True,
        )
        assert job.run() == 0
        summary = json.loads((tmp_path / split / "summary.json").read_text())
        assert summary["samples"]["built"] == summary["samples"]["evaluated"] == 2
        records = lines(tmp_path / split)
        assert all(len(r["prediction"]) == 5 for r in records.values())
        assert all(len(r["score"]["verb_ids"]) == 5 for r in records.values())
        assert all(len(b) == 20 for r in records.values() for b in r["score"]["noun_ids"])
    lta = json.loads((tmp_path / "val" / "summary.json").read_text())["metrics"]["lta"]
    for key in ("verb_ed20", "noun_ed20", "action_ed20", "verb_aued", "noun_aued", "action_aued"):
        assert lta[key]["n"] == 2 and 0.0 <= lta[key]["mean"] <= 1.0
    sub = json.loads(
        (tmp_path / "test_unannotated" / "test_unannotated_predictions.json").read_text()
    )
    assert sorted(sub) == ["clip1_7", "clip1_8"]  # the last visible action of each window
    assert all(len(v["verb"]) == 5 and len(v["verb"][0]) == 20 for v in sub.values())


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_coin_benchmarks_train_and_eval_on_slurm(
    coin: tuple[Path, Path], trained: Path, tiny_llm: Path, tmp_path: Path
) -> None:
    """The same commands on the test SLURM: training as one task, evaluation as two shards that
    give the same lines as one local process."""
    store, ann = coin
    slurm = ("launcher=slurm", "launcher.partition=debug", "launcher.cpus_per_task=1",
             "launcher.mem_gb=3", f"launcher.folder={tmp_path / 'logs'}")  # fmt: skip
    train_cli(store, ann, tiny_llm, tmp_path / "train", *slurm, hydra=tmp_path / "h1")
    eval_cli(store, ann, trained, tmp_path / "local", hydra=tmp_path / "h2")
    eval_cli(
        store, ann, trained, tmp_path / "remote", *slurm, "launcher.shards=2", hydra=tmp_path / "h3"
    )
    local, remote = lines(tmp_path / "local"), lines(tmp_path / "remote")
    assert len(list((tmp_path / "remote" / "results").glob("shard-*.jsonl"))) == 2
    assert sorted(local) == sorted(remote)
    assert all(local[k]["prediction"] == remote[k]["prediction"] for k in local)
    left = json.loads((tmp_path / "local" / "summary.json").read_text())["metrics"]
    right = json.loads((tmp_path / "remote" / "summary.json").read_text())["metrics"]
    assert left == right


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "COIN.json"),
        ('{"database": []}', "database"),
        (
            '{"database": {"a": {"subset": "testing", "annotation": [{"segment": [1]}]}}}',
            "database.a: missing key",
        ),
    ],
    ids=["missing-file", "not-json", "wrong-shape", "bad-entry"],
)
def test_an_annotation_problem_is_one_error_line(
    coin: tuple[Path, Path], trained: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    """A missing or malformed COIN.json stops before any model loads with one line naming the
    file and the entry; the output folder gets no results, and a corrected rerun into it works."""
    store, good = coin
    ann = tmp_path / "COIN.json"
    if content is not None:
        ann.write_text(content)
    out = tmp_path / "eval"
    r = run_cli(
        "job=eval", f"store={store}", "data=coin_benchmarks", f"data.annotations={ann}",
        f"job.adapter={trained}", f"job.output_dir={out}", hydra_dir=tmp_path / "h",
    )  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert message in errors[0] and "Traceback" not in r.stderr
    assert not list(out.glob("results/*.jsonl"))
