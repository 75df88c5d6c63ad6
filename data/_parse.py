"""JSON reading and validation shared by the annotation readers. Every error is an
:class:`~data.types.AnnotationError` naming the file and the offending entry (``where``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from data.types import AnnotationError


def check_rate(fps: float, window_frames: int) -> None:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    if isinstance(window_frames, bool) or not isinstance(window_frames, int) or window_frames < 1:
        raise ValueError(f"window_frames must be an int >= 1, got {window_frames!r}")


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid. Valid choices: {choices}")


def load_json(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None


def load_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs from a JSON list or a JSON-lines file (``.jsonl``)."""
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
        return records
    data = load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(
            f"{path}: expected a JSON list of samples (or a .jsonl file), got {describe(data)}"
        )
    return [(f"[{i}]", record) for i, record in enumerate(data)]


def describe(value: object) -> str:
    """The type and the start of ``value``, for error messages."""
    text = json.dumps(value)[:60] if _jsonable(value) else repr(value)[:60]
    return f"{type(value).__name__} {text}"


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def at(where: str, key: str | int) -> str:
    """The location ``where`` followed by ``key``: ``a.b``, ``a[0]`` or ``a['not an id']``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def as_object(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AnnotationError(f"{path}: {where}: expected an object, got {describe(value)}")
    return value


def as_list(value: Any, path: Path, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: {where}: expected a list, got {describe(value)}")
    return value


def get_field(obj: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in obj:
        raise AnnotationError(
            f"{path}: {where}: missing key {key!r} (keys present: {sorted(obj)[:12]})"
        )
    return obj[key]


def as_number(value: Any, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnnotationError(f"{path}: {where}: expected a finite number, got {describe(value)}")
    return float(value)


def as_string(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{path}: {where}: expected a string, got {describe(value)}")
    return value
