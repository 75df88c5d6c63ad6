"""Training from a real Zarr store with the tiny random Llama (CPU, offline)."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cache import ShardWriter, StoreLayout, init_store, open_store
from data import DataConfig, StreamDataset, StreamTurn, read_samples, store_fps
from extract.samples import make_video
from jobs.launchers import LocalLauncher
from jobs.train import TrainSpec, train_rank
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
    assert "1 of 5 annotated videos are not done" in caplog.text and "not_in_store" in caplog.text
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
