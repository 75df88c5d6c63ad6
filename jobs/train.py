"""The train job: the LIVE model from cached features, single process or DDP, resumable.

``python run.py job=train store=S data=ego4d_narration data.annotations=DIR model.llm=ID``
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cache import Store, open_store, read_store_attrs
from data import DataConfig, build_dataset
from data.benchmarks import stored_frames
from extract.encoders import autocast_context
from jobs.launch.launchers import Launcher
from models.collate import batch_loss, collate
from models.live import LiveConfig, build_live, save_trainable, trainable_parameters
from models.prompt import IGNORE_INDEX, encode_conversation


@dataclass(frozen=True)
class TrainSpec:
    """The settings of ``job=train`` (``job.*``), declared and checked here once, and all a
    training rank needs (plain values, picklable to workers and SLURM tasks)."""

    store: str
    data: DataConfig
    model: LiveConfig
    output_dir: str  # checkpoints/, tensorboard/; rerunning resumes from here
    max_steps: int
    lr: float = 2e-4
    warmup_ratio: float = 0.05  # cosine schedule after a linear warmup
    weight_decay: float = 0.0
    batch_size: int = 1  # samples per forward per rank (the reference: 1; ProVideLLM COIN: 16)
    grad_accum: int = 8  # forwards per optimizer step: batch_size * grad_accum samples per rank
    max_grad_norm: float = 1.0
    save_every: int = 500  # optimizer steps between checkpoints
    log_every: int = 10  # TensorBoard scalars every N steps
    num_workers: int = 2  # DataLoader workers reading Zarr windows concurrently
    seed: int = 42
    world_size: int = 1  # DDP ranks (local: processes; SLURM: tasks of one job, one GPU each)
    autocast: str = "auto"  # auto (bf16 on GPU, off on CPU) | off | bfloat16 | float16
    progress: bool = True
    losses_file: str | None = None  # also append per-step losses as JSON lines (tests, sweeps)
    stop_after: int | None = None  # stop at this step as if preempted (tests)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "world_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"job.{name} must be an integer >= 1, got {value!r}")


@dataclass
class TrainState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


_CHECKPOINT = re.compile(r"step-(\d+)")
# What a resumed run must share with its checkpoint (the rest, e.g. max_steps, may change).
RESUME_KEYS = ("store", "data", "model", "seed", "batch_size", "grad_accum", "world_size")
# What checkpoints written before a key existed ran with (they are still resumable).
LEGACY_VALUES: dict[str, Any] = {"batch_size": 1}


@dataclass(frozen=True)
class DataContent:
    """What decides the order of the samples besides the settings: the store's done videos with
    their frame counts (``digest``: a hash of the sorted ``(video id, frames)`` pairs) and the
    number of samples built from them. Saved in each checkpoint; a resume compares it."""

    done_videos: int
    frames: int
    digest: str
    samples: int

    @classmethod
    def of(cls, store: Store, samples: int) -> DataContent:
        done = sorted((v, n) for v, n in stored_frames(store).items() if n is not None)
        digest = hashlib.sha256(json.dumps(done).encode()).hexdigest()[:16]
        return cls(len(done), sum(n for _, n in done), digest, samples)

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """How ``saved`` (an earlier ``asdict``) differs from this content, for an error."""
        out = []
        if (saved["done_videos"], saved["frames"]) != (self.done_videos, self.frames):
            out.append(
                f"job.store content: {saved['done_videos']:,} done videos /"
                f" {saved['frames']:,} frames in the checkpoint,"
                f" {self.done_videos:,} / {self.frames:,} now"
            )
        elif saved["digest"] != self.digest:
            out.append(
                f"job.store content: {self.done_videos:,} done videos / {self.frames:,} frames"
                f" in both, but other videos or frame counts (digest {saved['digest']} in the"
                f" checkpoint, {self.digest} now)"
            )
        if saved["samples"] != self.samples:
            out.append(
                f"samples built from job.data: {saved['samples']:,} in the checkpoint,"
                f" {self.samples:,} now"
            )
        return out


def _latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (an interrupted save's ``step-N.tmp`` is ignored)."""
    found = [
        (int(m.group(1)), p)
        for p in (out / "checkpoints").glob("step-*")
        if (m := _CHECKPOINT.fullmatch(p.name)) and (p / "trainer.pt").exists()
    ]
    return max(found)[1] if found else None


def check_resume(
    saved: dict[str, Any],
    spec: TrainSpec,
    ckpt: Path,
    *,
    content: DataContent | None = None,
    saved_content: dict[str, Any] | None = None,
) -> None:
    """Refuse to resume ``ckpt`` with settings that change the model, the store or the data, or
    when the store's content (``content`` now, ``saved_content`` at the save) has changed
    since: either changes the order of the samples. A key the checkpoint lacks (written before
    it existed) is taken at :data:`LEGACY_VALUES`, or not compared."""
    now = asdict(spec)
    differ = []
    for k in RESUME_KEYS:
        if k not in saved and not (saved and k in LEGACY_VALUES):  # no spec saved: none
            continue
        old = saved.get(k, LEGACY_VALUES.get(k))
        if _plain_value(old) != _plain_value(now[k]):
            differ.append(f"job.{k}: {old!r} in the checkpoint, {now[k]!r} now")
    if content is not None and saved_content is not None:
        differ += content.differences(saved_content)
    if differ:
        raise ValueError(
            f"cannot resume from {ckpt}: " + "; ".join(differ) + " (use another job.output_dir)"
        )


def _plain_value(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


class Trainer:
    """One rank of a training run: ``setup()``, then ``loop()``; rank 0 saves and logs."""

    def __init__(self, spec: TrainSpec, rank: int, world: int) -> None:
        self.spec, self.rank, self.world = spec, rank, world
        self.out = Path(spec.output_dir)
        self.device = torch.device(
            f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )

    # -- setup ----------------------------------------------------------------------------

    def setup(self) -> None:
        spec = self.spec
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=self.rank, world_size=self.world)
        self._seed(spec.seed)
        self.model, self.tokenizer = build_live(spec.model)
        self.model.to(self.device)
        self.ddp: Any = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.params = trainable_parameters(self.model)
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, weight_decay=spec.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(spec.warmup_ratio * spec.max_steps), spec.max_steps
        )
        store = open_store(spec.store)
        # Streams or benchmark questions; annotations in seconds land on the store's grid.
        self.dataset = build_dataset(
            spec.data,
            store,
            functools.partial(
                encode_conversation,
                self.tokenizer,
                frame_tokens=self.model.frame_tokens,
                v_token=spec.model.v_token,
                stream_loss_weight=spec.model.stream_loss_weight,
            ),
        )
        self.content = DataContent.of(store, len(self.dataset))
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        if self.pad_token_id == self.model.v_token_id:
            raise ValueError(
                f"the tokenizer of {spec.model.llm!r} pads with {spec.model.v_token!r}, the"
                " frame placeholder: padded batches would take frames"
            )
        from torch.utils.data.distributed import DistributedSampler

        # The same sampler on 1 or N ranks: N ranks see the 1-rank order interleaved, so a step
        # covers the same samples whatever the world size (given world * grad_accum constant).
        self.sampler: DistributedSampler[int] = DistributedSampler(
            self.dataset, num_replicas=self.world, rank=self.rank, seed=spec.seed, drop_last=True
        )
        if len(self.sampler) == 0:
            raise ValueError(f"{len(self.dataset)} samples cannot feed {self.world} ranks")
        self.state = TrainState()
        self._resume()
        self.tb = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))

    def _seed(self, seed: int) -> None:
        random.seed(seed + self.rank)
        np.random.seed(seed + self.rank)
        torch.manual_seed(seed + self.rank)

    def _resume(self) -> None:
        ckpt = _latest_checkpoint(self.out)
        if ckpt is None:
            return
        state = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
        check_resume(
            state.get("spec", {}),
            self.spec,
            ckpt,
            content=self.content,
            saved_content=state.get("content"),  # None: saved before it was recorded
        )
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = TrainState(step=state["step"], history=state["history"])
        rng = torch.load(ckpt / f"rng-rank{self.rank}.pt", map_location="cpu", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if self.rank == 0:
            print(f"train: resumed from {ckpt} at step {self.state.step}", file=sys.stderr)

    # -- loop -----------------------------------------------------------------------------

    def order(self) -> Iterator[int]:
        """This rank's dataset indices in the fixed order, epoch after epoch, starting after
        the samples the ``state.step`` steps consumed (``batch_size * grad_accum`` each)."""
        spec = self.spec
        consumed = self.state.step * spec.grad_accum * spec.batch_size
        epoch, skip = divmod(consumed, len(self.sampler))
        while True:
            self.sampler.set_epoch(epoch)
            yield from list(self.sampler)[skip:]
            epoch, skip = epoch + 1, 0

    def batches(self) -> Iterator[dict[str, Any]]:
        """Padded batches of ``batch_size`` consecutive samples of :meth:`order` (a batch may
        span an epoch's end: every batch is full, so batch B x accumulation A sees the samples
        of batch 1 x accumulation A*B, step for step). Workers read and collate."""
        order, size = self.order(), self.spec.batch_size
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_Chunks(order, size),
            collate_fn=functools.partial(collate, pad_token_id=self.pad_token_id),
            num_workers=self.spec.num_workers,
            # Its own generator: starting the loader must not draw from the global RNG, which
            # (restored on resume) drives dropout — a resumed run must draw as the full one.
            generator=torch.Generator().manual_seed(self.spec.seed + self.rank),
        )
        yield from loader

    def step(self, micro: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` batches: each batch's loss is the mean of its
        samples' LIVE losses and the batches are averaged, so gradients are the mean over
        ``batch_size * grad_accum`` samples of their own losses' gradients."""
        totals = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "frames": 0.0}
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = self.ddp.no_sync() if self.world > 1 and not sync else nullcontext()
            with ctx, autocast_context(self.spec.autocast, self.device):
                input_ids = batch["input_ids"].to(self.device)
                labels = batch["labels"].to(self.device)
                out = self.ddp(
                    input_ids,
                    batch["frames"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                )
                stream_mask = (input_ids == self.model.v_token_id) & (labels != IGNORE_INDEX)
                loss = batch_loss(out.logits, labels, batch["weights"].to(self.device), stream_mask)
                (loss.total / len(micro)).backward()
            totals["loss"] += float(loss.total.detach()) / len(micro)
            totals["lm_loss"] += float(loss.lm.detach()) / len(micro)
            totals["stream_loss"] += float(loss.stream.detach()) / len(micro)
            totals["frames"] += len(batch["frames"])
        if self.spec.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._reduce(totals)

    def _reduce(self, totals: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return totals
        import torch.distributed as dist

        t = torch.tensor(list(totals.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        means = (t / self.world).tolist()
        out = dict(zip(totals, means, strict=True))
        out["frames"] *= self.world  # frames are summed, not averaged
        return out

    def loop(self) -> TrainState:
        spec = self.spec
        from tqdm import tqdm

        bar = tqdm(
            total=spec.max_steps,
            initial=self.state.step,
            desc="train",
            disable=not (spec.progress and self.rank == 0),
        )
        it = self.batches()
        t0 = time.perf_counter()
        while self.state.step < spec.max_steps:
            micro = [next(it) for _ in range(spec.grad_accum)]
            metrics = self.step(micro)
            self.state.step += 1
            elapsed = time.perf_counter() - t0
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            metrics["frames_per_second"] = metrics["frames"] / max(elapsed, 1e-9)
            t0 = time.perf_counter()
            self.state.history.append({"step": self.state.step, **metrics})
            self._log(metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
            if self.state.step % spec.save_every == 0 or self.state.step == spec.max_steps:
                self.save()
            if spec.stop_after is not None and self.state.step >= spec.stop_after:
                break
        bar.close()
        return self.state

    def _log(self, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        step = self.state.step
        if self.tb is not None and (step % self.spec.log_every == 0 or step == 1):
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.spec.losses_file:
            with open(self.spec.losses_file, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def save(self) -> None:
        """Checkpoint to ``checkpoints/step-N`` (adapter + connector in safetensors, optimizer,
        scheduler, RNG per rank), written to a temp folder and renamed: never half-written."""
        step = self.state.step
        final = self.out / "checkpoints" / f"step-{step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        rng = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        torch.save(rng, tmp / f"rng-rank{self.rank}.pt")
        if self.rank == 0:
            save_trainable(self.model, tmp / "adapter")
            trainable = {
                n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad
            }
            torch.save(
                {
                    "trainable": trainable,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "step": step,
                    "history": self.state.history,
                    "spec": asdict(self.spec),
                    "content": asdict(self.content),  # a resume refuses a changed store
                },
                tmp / "trainer.pt",
            )
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            print(f"train: saved {final}", file=sys.stderr)
        self._barrier()

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def cleanup(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Chunks:
    """An endless batch sampler: consecutive ``size``-long chunks of ``order``."""

    def __init__(self, order: Iterator[int], size: int) -> None:
        self.order, self.size = order, size

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield [next(self.order) for _ in range(self.size)]


def train_rank(spec: TrainSpec, rank: int, world: int) -> dict[str, Any]:
    """Run one rank (MASTER_ADDR/MASTER_PORT set by the launcher when world > 1)."""
    trainer = Trainer(spec, rank, world)
    trainer.setup()
    try:
        state = trainer.loop()
    finally:
        trainer.cleanup()
    return {"step": state.step, "history": state.history}


class TrainJob:
    """``python run.py job=train store=... data=<format> data.annotations=... model.llm=...``

    ``launcher``: where the ranks run; every other key is a field of :class:`TrainSpec`.
    """

    Spec: ClassVar[type[TrainSpec]] = TrainSpec

    def __init__(self, *, launcher: Launcher, **settings: Any) -> None:
        self.launcher = launcher
        self.settings = TrainSpec(**settings)

    def spec(self) -> TrainSpec:
        """The settings with the model's input shape taken from the store's features."""
        attrs = read_store_attrs(self.settings.store)["layout"]  # not the whole index
        model = self.settings.model
        # The cached features decide the connector's input: take them from the store.
        model = replace(
            model,
            vision_dim=model.vision_dim or attrs["dim"],
            frame_tokens=model.frame_tokens or attrs["tokens_per_frame"],
        )
        if (model.vision_dim, model.frame_tokens) != (attrs["dim"], attrs["tokens_per_frame"]):
            raise ValueError(
                f"model.vision_dim/frame_tokens = {model.vision_dim}/{model.frame_tokens} "
                f"but the store holds {attrs['tokens_per_frame']} x {attrs['dim']} tokens per frame"
            )
        return replace(self.settings, model=model)

    def run(self) -> int:
        spec = self.spec()
        Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
        print(f"train: {spec.world_size} rank(s) -> {spec.output_dir}", file=sys.stderr)
        result = self.launcher.run_ranks(functools.partial(train_rank, spec), spec.world_size)
        if result is None:
            print(f"train: submitted; checkpoints will appear in {spec.output_dir}/checkpoints")
            return 0
        last = result["history"][-1] if result["history"] else {}
        print(
            f"train: {result['step']} steps, last loss {last.get('loss', float('nan')):.4f}; "
            f"checkpoints in {Path(spec.output_dir).absolute() / 'checkpoints'}"
        )
        return 0
