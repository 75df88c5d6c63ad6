"""Each setting has one home: the YAML adds no defaults, nested nodes build their dataclasses, and
unknown keys are refused with the valid ones named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from cache import StoreLayout
from extract.encoders import ClipConfig, SiglipConfig
from extract.pipeline import DecodeOptions
from jobs.config import check_keys
from jobs.eval import EvalJob
from jobs.extract import ExtractJob
from jobs.report import ReportJob, recorded_fps
from jobs.stream import StreamJob, frame_step
from jobs.train import TrainJob, TrainSpec
from models.live import LiveConfig
from tests.jobs.cli import ROOT


def config(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", ["store=s.zarr", "videos=v", *overrides])


def build(*overrides: str) -> Any:
    cfg = config(*overrides)
    check_keys(cfg)
    return hydra.utils.instantiate(cfg.job, _convert_="all")


def test_extract_settings_are_the_dataclass_defaults() -> None:
    job = build("job=extract")
    assert isinstance(job, ExtractJob) and job.videos == "v"
    spec = job.spec
    assert spec.decode == DecodeOptions()
    assert spec.layout(tokens_per_frame=10, dim=4) == StoreLayout(10, 4)
    assert spec.encoder == SiglipConfig()
    assert (spec.batch_frames, spec.batching, spec.retry_failed) == (32, "dynamic", True)
    clip = build("job=extract", "encoder=clip", "job.decode.fps=1", "job.layout.file_frames=64")
    assert clip.spec.encoder == ClipConfig() and clip.spec.decode == DecodeOptions(fps=1)
    assert clip.spec.store_layout(1, 1).file_frames == 64


def test_train_model_takes_the_store_shape_and_no_adapter() -> None:
    job = build("job=train", "data=chat", "data.annotations=a.json", "model.llm=m")
    assert isinstance(job, TrainJob)
    model = job.settings.model
    assert isinstance(model, LiveConfig) and (model.vision_dim, model.frame_tokens) == (None, None)
    assert model.lora_r == LiveConfig("m", None).lora_r
    assert job.settings.max_steps == 1000 and job.settings.lr == TrainSpec.lr
    with pytest.raises(Exception, match="adapter"):  # adapter is a job setting of eval/stream
        config("job=train", "data=chat", "data.annotations=a.json", "model.adapter=x")


def test_eval_and_stream_settings_live_under_job() -> None:
    ev = build("job=eval", "data=chat", "data.annotations=a.json", "job.adapter=ck")
    assert isinstance(ev, EvalJob) and (ev.spec.adapter, ev.spec.threshold) == ("ck", 0.0)
    st = build("job=stream", "video_id=b", "job.adapter=ck", "job.kv=bounded")
    assert isinstance(st, StreamJob) and st.spec.kv == "bounded" and st.spec.fps is None
    for removed in ("eval.threshold=0.5", "stream.threshold=0.5"):
        with pytest.raises(Exception, match="threshold|eval|stream"):
            config("job=eval", removed)
    with pytest.raises(InstantiationException, match="set job.adapter=<dir>"):
        build("job=stream", "video_id=b")


@pytest.mark.parametrize(
    ("job", "override", "valid"),
    [
        ("extract", "+job.bogus=1", "batch_frames"),
        ("extract", "+job.decode.bogus=1", "frames_per_call"),
        ("extract", "+job.layout.bogus=1", "file_frames"),
        ("extract", "+encoder.bogus=1", "pretrained"),
        ("train", "+job.bogus=1", "grad_accum"),
        ("train", "+model.bogus=1", "lora_r"),
        ("stream", "+job.bogus=1", "window_tokens"),
    ],
)
def test_unknown_keys_name_the_valid_ones(job: str, override: str, valid: str) -> None:
    cfg = config(f"job={job}", "data=chat", "data.annotations=a.json", override)
    with pytest.raises(ValueError, match=r"unknown key\(s\) [\w.]*bogus; valid keys") as e:
        check_keys(cfg)
    assert valid in str(e.value)


def test_stream_fps_defaults_to_the_store_rate_and_must_divide_it() -> None:
    assert frame_step(2.0, None) == 1 and frame_step(2.0, 2.0) == 1 and frame_step(6.0, 2.0) == 3
    for fps in (3.0, 4.0):
        with pytest.raises(ValueError, match="must divide the store's 2.0 fps"):
            frame_step(2.0, fps)


def test_report_takes_the_rate_the_eval_run_recorded(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"samples": 0, "fps": 1.0}))
    assert recorded_fps(tmp_path) == 1.0
    (tmp_path / "summary.json").write_text(json.dumps({"samples": 0}))
    with pytest.raises(ValueError, match="records no fps.*job.fps"):
        recorded_fps(tmp_path)
    assert ReportJob(output_dir=str(tmp_path), fps=2.0).spec.fps == 2.0
