"""The settings of ``job=eval``, apart from the job so that the modules it uses (evaluation by
generation, the run's identity) can read them without importing the job."""

from __future__ import annotations

from dataclasses import dataclass

from data import DataConfig


@dataclass(frozen=True)
class EvalSpec:
    """The settings of ``job=eval`` (``job.*``), declared and checked here once, and all an eval
    shard needs (plain values)."""

    store: str
    data: DataConfig
    output_dir: str  # results/shard-*.jsonl, summary.json, report.html
    adapter: str | None = None  # job=train's adapter/ folder, or a VideoLLM-online dir / hub id
    llm: str | None = None  # override the base LLM the adapter was trained on (e.g. a local copy)
    threshold: float = 0.0  # θ on P(","); 0 = plain argmax, as the released evaluation
    max_samples: int | None = None
    report: bool = True  # write report.html after the merge
    # Evaluation by generation (data=coin_benchmarks, data=ego4d_lta):
    batch_size: int = 8  # questions generated at once (left-padded, one KV cache)
    max_new_tokens: int = 512  # the reference's evaluators
    num_beams: int | None = None  # None: greedy for COIN, 5 beams (5 returned) for LTA

    def __post_init__(self) -> None:
        if not self.adapter:
            raise ValueError("job=eval needs a trained checkpoint: set job.adapter=<dir>")
        if self.batch_size < 1:
            raise ValueError(f"job.batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"job.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams is not None and self.num_beams < 1:
            raise ValueError(f"job.num_beams must be >= 1 (or null), got {self.num_beams}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"job.max_samples must be >= 1 (or null), got {self.max_samples}")
