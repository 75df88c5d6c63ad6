"""Checkpoints load whole or not at all, through the command line users run (issue #22, item 5).

Every case is a real ``run.py`` process on real files: a doctored ``job=train`` checkpoint, a base
LLM folder that is gone, a local-looking path that does not exist. Each must end in one ``error:``
line naming what is wrong and the setting to change, exit 2, and write no results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.live import LiveConfig, build_live, save_trainable
from tests.jobs.cli import run_cli
from tests.jobs.test_train import D, N, make_store, write_chat

VIDEOS = ["a", "b"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llm: Path) -> dict[str, Path]:
    """A store, chat annotations, a copy of the tiny LLM and an (untrained) checkpoint on it."""
    d = tmp_path_factory.mktemp("ckpts")
    llm = Path(shutil.copytree(tiny_llm, d / "llm"))
    torch.manual_seed(0)
    model, _ = build_live(LiveConfig(llm=str(llm), vision_dim=D, frame_tokens=N, lora_r=4))
    return {
        "store": make_store(d / "feats.zarr", VIDEOS),
        "ann": write_chat(d / "chat.json", VIDEOS),
        "llm": llm,
        "ckpt": save_trainable(model, d / "ckpt"),
    }


def one_error_line(r: object, *needles: str) -> str:
    """The single ``error:`` line of a finished run (exit 2, no traceback), holding ``needles``."""
    stderr = r.stderr  # type: ignore[attr-defined]
    assert r.returncode == 2, stderr[-3000:]  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def eval_args(world: dict[str, Path], adapter: Path | str, out: Path, *extra: str) -> list[str]:
    return [
        "job=eval",
        f"store={world['store']}",
        "data=chat",
        f"data.annotations={world['ann']}",
        f"job.adapter={adapter}",
        f"job.output_dir={out}",
        *extra,
    ]


def doctored(world: dict[str, Path], dest: Path, file: str, edit: str) -> tuple[Path, str]:
    """A copy of the checkpoint with one tensor of ``file`` dropped, added or reshaped;
    returns it and the tensor's name."""
    ckpt = Path(shutil.copytree(world["ckpt"], dest))
    tensors = load_file(str(ckpt / file))
    name = sorted(tensors)[0]
    if edit == "missing":
        del tensors[name]
    elif edit == "extra":
        name = f"{name}_stray"
        tensors[name] = torch.zeros(2)
    else:
        tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(ckpt / file))
    return ckpt, name


@pytest.mark.parametrize(
    ("file", "edit"),
    [
        ("adapter_model.safetensors", "missing"),  # today: loads, leaving a random LoRA factor
        ("adapter_model.safetensors", "mis-shaped"),  # today: a RuntimeError traceback
        ("connector.safetensors", "extra"),  # today: a RuntimeError traceback
    ],
)
def test_a_partial_checkpoint_is_refused_naming_the_tensor(
    world: dict[str, Path], tmp_path: Path, file: str, edit: str
) -> None:
    ckpt, name = doctored(world, tmp_path / "ckpt", file, edit)
    out = tmp_path / "out"
    r = run_cli(*eval_args(world, ckpt, out), hydra_dir=tmp_path / "h")
    one_error_line(r, f"{ckpt / file} does not fit the model", f"{edit} {name}")
    assert not (out / "results").exists()  # nothing was evaluated with a half-loaded model


def test_eval_names_job_llm_when_the_saved_base_llm_is_gone(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The checkpoint names its base LLM by path; that folder moved away. The fix is job.llm
    (model.llm is not a key of job=eval), and the path is not taken for a hub id."""
    ckpt = Path(shutil.copytree(world["ckpt"], tmp_path / "ckpt"))
    config = ckpt / "live_config.json"
    gone = tmp_path / "moved" / "llm"
    config.write_text(config.read_text().replace(str(world["llm"]), str(gone)))
    r = run_cli(*eval_args(world, ckpt, tmp_path / "out"), hydra_dir=tmp_path / "h")
    line = one_error_line(r, f"job.llm='{gone}'", "no such folder", "set job.llm=")
    assert "model.llm" not in line and "Repo id" not in line
    # job.llm given on the command line and also missing: named the same way.
    r = run_cli(
        *eval_args(world, world["ckpt"], tmp_path / "out2", "job.llm=./no/such/llm"),
        hydra_dir=tmp_path / "h2",
    )
    one_error_line(r, "job.llm='./no/such/llm': no such folder")


def test_stream_names_job_llm_and_job_adapter(world: dict[str, Path], tmp_path: Path) -> None:
    stream = ["job=stream", f"store={world['store']}", "video_id=a"]
    r = run_cli(
        *stream,
        f"job.adapter={world['ckpt']}",
        f"job.llm={tmp_path / 'nowhere'}",
        f"job.output_dir={tmp_path / 'o1'}",
        hydra_dir=tmp_path / "h1",
    )
    one_error_line(r, f"job.llm='{tmp_path / 'nowhere'}': no such folder")
    r = run_cli(
        *stream,
        "job.adapter=./no/such/ckpt",
        f"job.output_dir={tmp_path / 'o2'}",
        hydra_dir=tmp_path / "h2",
    )
    one_error_line(r, "job.adapter='./no/such/ckpt': no such folder")


def test_train_names_model_llm(world: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-llm"
    r = run_cli(
        "job=train", f"store={world['store']}", "data=chat", f"data.annotations={world['ann']}",
        f"model.llm={missing}", "model.lora_r=4", "job.max_steps=1", "job.num_workers=0",
        f"job.output_dir={tmp_path / 'run'}", "job.progress=false",
        hydra_dir=tmp_path / "h",
    )  # fmt: skip
    line = one_error_line(r, f"model.llm='{missing}': no such folder", "set model.llm=")
    assert "job.llm" not in line
