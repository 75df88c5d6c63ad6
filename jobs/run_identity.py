"""What produced an eval output folder, so its result lines are never reused by another run.

``job=eval`` records in ``OUT/run.json`` the content hash of its checkpoint, the base LLM
override, the threshold, the store (its path and a digest of its committed content), the data
settings and the generation settings. A rerun into the same folder with any of them different is
refused naming what differs; the same run resumes (its lines are skipped, not recomputed).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache import Store, is_url

if TYPE_CHECKING:
    from jobs.eval_spec import EvalSpec

RUN_FILE = "run.json"
_CHUNK = 1 << 20


def checkpoint_digest(ref: str) -> str:
    """sha256 over every file of the checkpoint folder ``ref`` resolves to (a local folder, or a
    hub id in the local cache), names and contents, in a fixed order."""
    from extract.encoders import hub_access
    from models.videollm_online import resolve

    with hub_access():
        root = resolve(ref)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".cache/"):  # huggingface_hub's download bookkeeping
            continue
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _location(store: str) -> str:
    """A store's location as identity: a URL as given, a folder made absolute."""
    return store.rstrip("/") if is_url(store) else str(Path(store).absolute())


def store_digest(store: Store) -> dict[str, Any]:
    """The store's committed content in brief: its layout and encoder, and a digest of every
    indexed video's status, frame count and source fingerprint (a re-extracted or added video
    changes it)."""
    h = hashlib.sha256()
    frames = done = 0
    for video_id in sorted(store.index.videos):
        entry = store.index.videos[video_id]
        rec = entry.record
        item = [video_id, entry.status, rec.get("num_frames"), rec.get("source")]
        h.update(json.dumps(item, sort_keys=True, default=str).encode() + b"\n")
        if entry.status == "done":
            done += 1
            frames += int(rec.get("num_frames", 0))
    settings = {k: store.attrs.get(k) for k in ("layout", "encoder", "features")}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return {"done_videos": done, "frames": frames, "sha256": h.hexdigest()}


def eval_identity(spec: EvalSpec, store: Store) -> dict[str, Any]:
    """Everything that decides an eval run's result lines."""
    from jobs.benchmark_eval import generation_settings

    assert spec.adapter
    ident: dict[str, Any] = {
        "checkpoint": {"ref": spec.adapter, "sha256": checkpoint_digest(spec.adapter)},
        "llm": spec.llm,
        "store": {"path": _location(spec.store), **store_digest(store)},
        "data": json.loads(json.dumps(asdict(spec.data))),
    }
    if spec.data.is_benchmark:
        ident["generation"] = generation_settings(spec)
    else:
        ident["threshold"] = spec.threshold
    return ident


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if old == new else [f"{where}: {old!r} there, {new!r} now"]


def claim_output(output_dir: str | Path, identity: dict[str, Any]) -> None:
    """Record ``identity`` in a folder without results, or check that the folder's recorded
    run is this one. A folder with results but another identity, or results and no record, is
    refused with a ValueError naming what differs."""
    out = Path(output_dir)
    path = out / RUN_FILE
    has_results = any((out / "results").glob("shard-*.jsonl"))
    if path.exists() and has_results:
        old = json.loads(path.read_text())
        # The checkpoint's name may change (a copied folder); its content may not.
        old.get("checkpoint", {}).pop("ref", None)
        new = json.loads(json.dumps(identity))
        new["checkpoint"].pop("ref", None)
        diff = _differences(old, new)
        if diff:
            raise ValueError(
                f"job.output_dir={str(output_dir)!r} holds results of another evaluation ("
                + "; ".join(diff[:6])
                + ("; ..." if len(diff) > 6 else "")
                + "): set a new job.output_dir (or remove that folder)"
            )
        return
    if has_results:
        raise ValueError(
            f"job.output_dir={str(output_dir)!r} holds results with no record of what produced"
            f" them ({RUN_FILE} is missing): set a new job.output_dir (or remove that folder)"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(identity, indent=1) + "\n")
    os.replace(tmp, path)
