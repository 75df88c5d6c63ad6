"""Training from a real Zarr store with the tiny random Llama (CPU, offline)."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cache import ShardWriter, StoreLayout, init_store, open_store
from data import DataConfig, StreamDataset, StreamTurn, read_samples, store_fps
from extract.samples import make_video
from jobs.launch.launchers import LocalLauncher
from jobs.train import DataContent, TrainSpec, check_resume, train_rank
from models.live import LiveConfig, build_live, load_trainable
from models.prompt import encode_conversation
from tests.jobs.cli import run_cli

D, N, FRAMES = 16, 10, 24  # store: 10 tokens x 16 dims, 24 frames (12 s at 2 FPS) per video


def make_store(root: Path, videos: list[str]) -> Path:
    """Videos whose frame k carries value k (+ a video offset) in every token."""
    init_store(root, layout=StoreLayout(N, D), features={"encoder": "synthetic"}, provenance={})
    with ShardWriter(root, 0) as w:
        for v, vid in enumerate(videos):
            w.start(vid)
            tok = (np.arange(FRAMES)[:, None, None] / 8 + v + np.zeros((FRAMES, N, D))) / 4
            w.write(vid, tok.astype(np.float16), np.arange(FRAMES) / 2.0)
            w.finish(vid, {"num_frames": FRAMES, "fps": 2.0})
    return root


def write_chat(path: Path, videos: list[str]) -> Path:
    """VideoLLM-online chat format: a user question, then timed assistant replies."""
    samples = [
        {
            "video_uid": vid,
            "conversation": [
                {"role": "user", "content": "What is happening?", "time": 0.0},
                {"role": "assistant", "content": f"Step one of {vid}.", "time": 2.2},
                {"role": "assistant", "content": "Now the next step.", "time": 6.0},
            ],
        }
        for vid in videos
    ]
    path.write_text(json.dumps(samples))
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    vids = ["a", "b", "c", "d"]
    store = make_store(tmp_path / "feats.zarr", vids)
    ann = write_chat(tmp_path / "chat.json", [*vids, "not_in_store"])
    return store, ann


def spec_for(store: Path, ann: Path, llm: Path, out: Path, **kw: object) -> TrainSpec:
    base = TrainSpec(
        store=str(store),
        data=DataConfig(format="chat", annotations=str(ann)),
        model=LiveConfig(llm=str(llm), vision_dim=D, frame_tokens=N, lora_r=4, lora_alpha=8),
        output_dir=str(out),
        max_steps=4,
        grad_accum=2,
        lr=1e-3,
        save_every=2,
        num_workers=0,
        progress=False,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_samples_read_their_window_from_the_store(
    setup: tuple[Path, Path], tiny_llm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, ann = setup
    _, tok = build_live(LiveConfig(llm=str(tiny_llm), vision_dim=D, frame_tokens=N, lora_r=2))
    samples = read_samples(DataConfig(format="chat", annotations=str(ann)), fps=2.0)
    encode = functools.partial(
        encode_conversation, tok, frame_tokens=N, v_token="<v>", stream_loss_weight=1.0
    )
    with caplog.at_level(logging.WARNING):
        ds = StreamDataset(str(store), samples, encode)
    assert "1 samples: video not in the store" in caplog.text  # "not_in_store", skipped
    assert [s.video_id for s in ds.samples] == ["a", "b", "c", "d"]
    item = ds[1]
    assert ds._store.index is ds._index  # the worker's reader reuses the loaded index
    s = ds.samples[1]
    want, pts = open_store(store).read("b")
    lo = int(np.searchsorted(pts, s.start_seconds - 0.5 + 1e-6, side="right"))
    hi = lo + len(item["frames"])
    np.testing.assert_array_equal(item["frames"].numpy(), want[lo:hi].astype(np.float32))
    n_v = int((item["input_ids"] == tok.convert_tokens_to_ids("<v>")).sum())
    assert n_v == N * len(item["frames"])
    # The question at 0 s comes after frame 0 (its last <v> targets "]"); the reply at 2.2 s is
    # ceiled to the 2 FPS grid (2.5 s, as the reference does) and comes after frame 5: frames
    # 1-4 target "," and frame 5 "]".
    ids = item["input_ids"].tolist()
    v_id = tok.convert_tokens_to_ids("<v>")
    last_v = [i for i in range(len(ids) - 1) if ids[i] == v_id and ids[i + 1] != v_id]
    targets = [tok.decode([int(item["labels"][i])]) for i in last_v]
    assert lo == 0 and targets[:6] == ["]", ",", ",", ",", ",", "]"]


def test_conversation_frames_cover_the_window(setup: tuple[Path, Path]) -> None:
    from data import frames_for_window, to_conversation

    store, ann = setup
    pts = open_store(store).pts_seconds("a")
    sample = read_samples(DataConfig(format="chat", annotations=str(ann)), fps=2.0)[0]
    lo, hi = frames_for_window(pts, sample.start_seconds, sample.stop_seconds, fps=2.0)
    conv = to_conversation(sample, pts, lo, hi)
    assert sum(t.num_frames for t in conv.turns if isinstance(t, StreamTurn)) == hi - lo
    kinds = [type(t).__name__ for t in conv.turns]
    assert kinds[:4] == ["StreamTurn", "UserTurn", "StreamTurn", "AssistantTurn"]


def losses(history: list[dict[str, float]]) -> list[float]:
    return [h["loss"] for h in history]


def test_two_process_ddp_matches_one_process(
    setup: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    """2 ranks x grad_accum 1 == 1 rank x grad_accum 2 (same samples per step, gloo on CPU).
    LoRA dropout is off: its random masks would differ between the two layouts."""
    store, ann = setup
    spec = spec_for(store, ann, tiny_llm, tmp_path / "one", max_steps=3)
    spec = replace(spec, model=replace(spec.model, lora_dropout=0.0))
    one = train_rank(spec, 0, 1)
    two_spec = replace(spec, output_dir=str(tmp_path / "two"), grad_accum=1, world_size=2)
    two = LocalLauncher(workers=2).run_ranks(
        __import__("functools").partial(train_rank, two_spec), 2
    )
    assert two is not None
    np.testing.assert_allclose(losses(two["history"]), losses(one["history"]), rtol=1e-4)
    assert losses(one["history"])[-1] != losses(one["history"])[0]


def test_resume_reproduces_the_uninterrupted_run(
    setup: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    store, ann = setup
    full = train_rank(spec_for(store, ann, tiny_llm, tmp_path / "full", num_workers=1), 0, 1)
    interrupted = spec_for(store, ann, tiny_llm, tmp_path / "resumed", num_workers=1)
    first = train_rank(replace(interrupted, stop_after=2), 0, 1)  # "preempted" after step 2
    assert first["step"] == 2
    assert (tmp_path / "resumed" / "checkpoints" / "step-0000002" / "trainer.pt").exists()
    second = train_rank(interrupted, 0, 1)  # the same command again: resumes from step 2
    assert second["step"] == 4
    np.testing.assert_allclose(losses(second["history"]), losses(full["history"]), rtol=1e-5)


def test_train_cli_writes_a_loadable_adapter(
    setup: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    store, ann = setup
    out = tmp_path / "run"
    r = run_cli(
        "job=train", f"store={store}", "data=chat", f"data.annotations={ann}",
        f"model.llm={tiny_llm}", "model.lora_r=4", "model.lora_alpha=8", "job.max_steps=2",
        "job.grad_accum=1", "job.num_workers=2", f"job.output_dir={out}", "job.progress=false",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoints" / "step-0000002"
    assert (ckpt / "adapter" / "adapter_model.safetensors").exists()
    assert list((out / "tensorboard").iterdir())
    model, _ = load_trainable(ckpt / "adapter")  # peft PeftModel.from_pretrained underneath
    assert model.cfg.vision_dim == D and model.cfg.frame_tokens == N
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    for name, p in model.named_parameters():
        if name in state["trainable"]:
            torch.testing.assert_close(p.detach(), state["trainable"][name])


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm")
def test_training_run_on_slurm(setup: tuple[Path, Path], tiny_llm: Path, tmp_path: Path) -> None:
    store, ann = setup
    out = tmp_path / "run"
    r = run_cli(
        "job=train", f"store={store}", "data=chat", f"data.annotations={ann}",
        f"model.llm={tiny_llm}", "model.lora_r=4", "model.lora_alpha=8", "job.max_steps=2",
        "job.grad_accum=1", "job.num_workers=0", f"job.output_dir={out}",
        "launcher=slurm", "launcher.partition=debug", "launcher.cpus_per_task=1",
        "launcher.mem_gb=3", f"launcher.folder={tmp_path / 'slurm'}",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "slurm: submitted job" in r.stderr
    assert (out / "checkpoints" / "step-0000002" / "adapter" / "adapter_config.json").exists()


def test_train_on_a_store_extracted_at_1_fps(
    tmp_path: Path, tiny_siglip: Path, tiny_llm: Path
) -> None:
    """Annotations are in seconds: on a 1 FPS store they land on the 1 FPS frame grid (a reply
    at 2.2 s after the frame at 3 s, not the 2 FPS grid's 2.5 s, which is after frame 2)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "cook.mp4", seconds=5.0, width=64, height=48)
    store = tmp_path / "feats.zarr"
    r = run_cli(
        "job=extract", f"videos={videos}", f"store={store}", f"encoder.pretrained={tiny_siglip}",
        "job.decode.fps=1", "job.progress=false", hydra_dir=tmp_path / "h1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ann = tmp_path / "chat.json"
    conversation = [
        {"role": "user", "content": "What is happening?", "time": 0.0},
        {"role": "assistant", "content": "Cooking.", "time": 2.2},
        {"role": "assistant", "content": "Still cooking.", "time": 3.8},
    ]
    ann.write_text(json.dumps([{"video_uid": "cook", "conversation": conversation}]))
    out, losses_file = tmp_path / "run", tmp_path / "losses.jsonl"
    r = run_cli(
        "job=train", f"store={store}", "data=chat", f"data.annotations={ann}",
        f"model.llm={tiny_llm}", "model.lora_r=4", "model.lora_alpha=8", "job.max_steps=2",
        "job.grad_accum=1", "job.num_workers=0", f"job.output_dir={out}", "job.progress=false",
        f"job.losses_file={losses_file}", hydra_dir=tmp_path / "h2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(line) for line in losses_file.read_text().splitlines()]
    assert [s["frames"] for s in steps] == [5, 5]  # the window [0, 5) s at 1 FPS
    assert (out / "checkpoints" / "step-0000002" / "adapter").is_dir()

    # The samples job=train built, through the real store.
    s = open_store(store)
    assert store_fps(s) == 1.0
    np.testing.assert_allclose(s.pts_seconds("cook"), [0, 1, 2, 3, 4])
    (sample,) = read_samples(DataConfig(format="chat", annotations=str(ann)), fps=store_fps(s))
    assert [t.time_seconds for t in sample.turns] == [0.0, 3.0, 4.0]
    tokens, _ = s.read("cook")
    model_cfg = LiveConfig(
        llm=str(tiny_llm), vision_dim=tokens.shape[2], frame_tokens=tokens.shape[1], lora_r=2
    )
    _, tok = build_live(model_cfg)
    encode = functools.partial(encode_conversation, tok, frame_tokens=tokens.shape[1])
    item = StreamDataset(s, [sample], encode)[0]
    np.testing.assert_array_equal(item["frames"].numpy(), tokens.astype(np.float32))
    # Each frame's last <v> targets "," (stay silent) or "]" (a turn follows that frame): the
    # question follows frame 0, the replies frames 3 and 4.
    ids = item["input_ids"].tolist()
    v_id = tok.convert_tokens_to_ids("<v>")
    last_v = [i for i in range(len(ids) - 1) if ids[i] == v_id and ids[i + 1] != v_id]
    assert [tok.decode([int(item["labels"][i])]) for i in last_v] == ["]", ",", ",", "]", "]"]


def test_resume_ignores_an_interrupted_save_and_refuses_other_settings(
    setup: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    store, ann = setup
    spec = spec_for(store, ann, tiny_llm, tmp_path / "run", max_steps=2)
    assert train_rank(spec, 0, 1)["step"] == 2
    ckpts = tmp_path / "run" / "checkpoints"
    half = ckpts / "step-0000015.tmp"  # what Ctrl-C during a save leaves
    shutil.copytree(ckpts / "step-0000002", half)
    assert train_rank(replace(spec, max_steps=3), 0, 1)["step"] == 3  # resumed from step 2
    other_model = replace(spec, max_steps=4, model=replace(spec.model, lora_r=8))
    with pytest.raises(ValueError, match=r"cannot resume .*job\.model: .*lora_r"):
        train_rank(other_model, 0, 1)
    shutil.copytree(store, tmp_path / "elsewhere.zarr")  # the same tokens, another store
    other_store = replace(spec, max_steps=4, store=str(tmp_path / "elsewhere.zarr"))
    with pytest.raises(ValueError, match=r"job\.store: "):
        train_rank(other_store, 0, 1)


# -- batches above 1 and a resume that checks the store's content ------------------------------

VIDEOS5 = ["a", "b", "c", "d", "e"]  # 5 samples: batches of 2 span the epochs' ends


@pytest.fixture(scope="module")
def store5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One store for the module's batch tests (read only); its annotations also name "late",
    which is not extracted (tests that extract it copy the store first)."""
    d = tmp_path_factory.mktemp("batches")
    return make_store(d / "feats.zarr", VIDEOS5), write_chat(d / "chat.json", [*VIDEOS5, "late"])


def cli_train(store: Path, ann: Path, llm: Path, out: Path, hydra: Path, *extra: str) -> Any:
    return run_cli(
        "job=train", f"store={store}", "data=chat", f"data.annotations={ann}", f"model.llm={llm}",
        "model.lora_r=4", "model.lora_alpha=8", "model.lora_dropout=0.0", "job.lr=1e-3",
        "job.num_workers=0", "job.save_every=2", f"job.output_dir={out}", "job.progress=false",
        *extra, hydra_dir=hydra,
    )  # fmt: skip


def read_losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_batch_2_resumes_and_equals_batch_1_with_accumulation(
    store5: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    """``job.batch_size=2`` through the CLI, preempted after step 2 and rerun, gives the losses
    of an uninterrupted batch 1 x grad_accum 2 run: same samples per step, in the same order
    across epochs (5 samples: step 3 takes the last of epoch 0 and the first of epoch 1), each
    sample's loss normalised by its own labels."""
    store, ann = store5
    ref_spec = spec_for(store, ann, tiny_llm, tmp_path / "ref", grad_accum=2, batch_size=1)
    ref = train_rank(replace(ref_spec, model=replace(ref_spec.model, lora_dropout=0.0)), 0, 1)
    out, losses_file = tmp_path / "run", tmp_path / "losses.jsonl"
    args = (
        "job.batch_size=2",
        "job.grad_accum=1",
        "job.max_steps=4",
        f"job.losses_file={losses_file}",
    )
    r = cli_train(store, ann, tiny_llm, out, tmp_path / "h1", *args, "job.stop_after=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_losses(losses_file) == pytest.approx(losses(ref["history"])[:2], rel=1e-4)
    r = cli_train(store, ann, tiny_llm, out, tmp_path / "h2", *args)  # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "at step 2" in r.stderr
    steps = [json.loads(line) for line in losses_file.read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    np.testing.assert_allclose(read_losses(losses_file), losses(ref["history"]), rtol=1e-4)
    assert [s["frames"] for s in steps] == [h["frames"] for h in ref["history"]]  # 2 windows
    state = torch.load(out / "checkpoints" / "step-0000004" / "trainer.pt", weights_only=False)
    assert state["spec"]["batch_size"] == 2
    assert state["content"] == {
        "done_videos": 5, "frames": 5 * FRAMES, "digest": state["content"]["digest"], "samples": 5
    }  # fmt: skip


def test_resume_after_the_store_changed_is_one_error_line(
    store5: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    """One more video extracted into the store since the checkpoint: the order of the samples
    changed, so the resume is refused, naming the store content and the samples."""
    store = tmp_path / "feats.zarr"
    shutil.copytree(store5[0], store)
    out = tmp_path / "run"
    args = ("job.batch_size=2", "job.grad_accum=1", "job.max_steps=1")
    r = cli_train(store, store5[1], tiny_llm, out, tmp_path / "h1", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    with ShardWriter(store, 1) as w:  # what job=extract does for a video it had not done
        w.start("late")
        w.write("late", np.zeros((FRAMES + 2, N, D), np.float16), np.arange(FRAMES + 2) / 2.0)
        w.finish("late", {"num_frames": FRAMES + 2, "fps": 2.0})
    r = cli_train(store, store5[1], tiny_llm, out, tmp_path / "h2", "job.batch_size=2",
                  "job.grad_accum=1", "job.max_steps=2")  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "cannot resume from" in errors[0]
    assert (
        "job.store content: 5 done videos / 120 frames in the checkpoint, 6 / 146 now" in errors[0]
    )
    assert "samples built from job.data: 5 in the checkpoint, 6 now" in errors[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001"]


def test_resume_check_of_batch_size_and_content_keeps_old_checkpoints(tmp_path: Path) -> None:
    """Checkpoints written before ``batch_size`` and the content were saved ran at batch 1 and
    are still resumable; the same counts with other videos are named by their digest."""
    store = make_store(tmp_path / "s.zarr", ["a", "b"])
    spec = TrainSpec(
        store=str(store),
        data=DataConfig(format="chat", annotations="x.json"),
        model=LiveConfig(llm="m", vision_dim=D, frame_tokens=N),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
    )
    old = {k: v for k, v in asdict(spec).items() if k != "batch_size"}
    now = DataContent.of(open_store(store), samples=2)
    check_resume(old, spec, tmp_path, content=now, saved_content=None)  # no content: not compared
    with pytest.raises(ValueError, match=r"job\.batch_size: 1 in the checkpoint, 2 now"):
        check_resume(old, replace(spec, batch_size=2), tmp_path, content=now)
    other = DataContent.of(open_store(make_store(tmp_path / "o.zarr", ["a", "z"])), samples=2)
    with pytest.raises(ValueError, match=r"2 done videos / 48 frames in both, but other videos"):
        check_resume(asdict(spec), spec, tmp_path, content=now, saved_content=asdict(other))
    with pytest.raises(ValueError, match=r"job\.batch_size must be an integer >= 1, got 0"):
        replace(spec, batch_size=0)


def test_benchmark_questions_train_in_batches(
    store5: tuple[Path, Path], tiny_llm: Path, tmp_path: Path
) -> None:
    """``data=coin_benchmarks`` trains too (build_dataset): questions over frame windows of
    several lengths, batched with padding."""
    segments = [{"id": "1", "segment": [0.0, 4.0], "label": "open the slot"}]
    segments += [{"id": "2", "segment": [5.0, 9.0], "label": "insert the card"}]
    entry = {"class": "Replace sim card", "recipe_type": 1, "subset": "training"}
    entry |= {"start": 0.0, "end": 12.0, "duration": 12.0, "annotation": segments}
    (tmp_path / "COIN.json").write_text(json.dumps({"database": dict.fromkeys(VIDEOS5, entry)}))
    spec = spec_for(store5[0], store5[1], tiny_llm, tmp_path / "run", max_steps=1, batch_size=3)
    data = DataConfig(format="coin_benchmarks", annotations=str(tmp_path), split="train")
    result = train_rank(replace(spec, data=data, grad_accum=1), 0, 1)
    assert result["step"] == 1 and np.isfinite(result["history"][0]["loss"])
    assert result["history"][0]["frames"] > 0
