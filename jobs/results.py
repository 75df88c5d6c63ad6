"""An eval run's result lines, merged over its shards (what eval, the benchmark evaluation and the
reports read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cache import read_journal


def read_results(output_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every sample's result in an eval run, merged over its shards' ``results/shard-*.jsonl``:
    by sample id, in the order first seen; a later line of the same sample replaces an earlier."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(output_dir) / "results").glob("shard-*.jsonl")):
        for r in read_journal(path):
            records[r["sample_id"]] = r
    return records
