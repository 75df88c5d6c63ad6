"""COIN benchmark accuracy, one generated answer at a time, exactly as the references score it.

``protocol="videollm_online"`` (VideoLLM-online ``data/coin/benchmarks.py``, newest version,
``COINBenchmark.compute_metrics`` and ``COINProcedure.compute_metrics``):

- step / next / task: the answer is lower-cased and loses its trailing dots
  (``rstrip('.')``; whitespace is kept); it is correct when it equals the label or when the
  category nearest to it by Levenshtein distance is the label.
- procedure / taskprocedure: the answer's lines (``split('\\n')``) are paired with the labels up to
  the shorter of the two lists; each line keeps what follows its last ``". "``
  (``"1. Pour water."`` -> ``"Pour water."``), is NOT lower-cased and keeps its final dot, then is
  compared as above. Accuracy is a micro average over the paired steps, so one line against five
  labels counts 1 of 1.

``protocol="providellm"`` (ProVideLLM ``data/coin/benchmarks.py``): the same, but the single
answers are ``lower().strip()``-ed and procedure answers are split at ``"; "`` with each part
``strip()``-ed (not lower-cased).

The nearest category is the reference's ``min`` over ``(distance, category)`` pairs: ties go to
the smaller string, and an empty answer snaps to the shortest category. Categories are the
``BenchmarkSet.categories[task]`` of ``data.coin_benchmarks``. The references report
``100 * correct / total``; :func:`coin_accuracy` returns ``correct / total``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import Levenshtein

#: Tasks whose answer is one category; the others are lists of steps.
SINGLE_ANSWER_TASKS: tuple[str, ...] = ("step", "next", "task")
PROCEDURE_TASKS: tuple[str, ...] = ("procedure", "taskprocedure")
PROTOCOLS: tuple[str, ...] = ("videollm_online", "providellm")


def nearest_category(text: str, categories: Sequence[str]) -> str:
    """The category at the smallest Levenshtein distance from ``text``; ties go to the smaller
    string (the reference's ``min`` over ``(distance, category)``)."""
    if not categories:
        raise ValueError(f"no categories to match {text!r} against")
    return min((Levenshtein.distance(text, c), c) for c in categories)[1]


def score_coin(
    task: str,
    prediction: str,
    labels: Sequence[str],
    categories: Sequence[str],
    *,
    protocol: str = "videollm_online",
) -> dict[str, Any]:
    """Score one generated answer to a COIN question of ``task``: ``{"correct": int, "total":
    int, "predicted": list[str]}``, where ``predicted`` holds, per scored step, the answer text
    when it equals its label, else its nearest category. ``labels`` and ``categories`` are the
    sample's ``labels`` and the set's ``categories[task]``. A task's accuracy is
    ``sum(correct) / sum(total)`` over its samples (:func:`coin_accuracy`)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not valid. Valid choices: {PROTOCOLS}")
    if task in SINGLE_ANSWER_TASKS:
        if len(labels) != 1:
            raise ValueError(f"a {task!r} question has one label, got {list(labels)}")
        if protocol == "videollm_online":
            texts = [prediction.lower().rstrip(".")]
        else:
            texts = [prediction.lower().strip()]
    elif task in PROCEDURE_TASKS:
        if protocol == "videollm_online":
            texts = [line.split(". ")[-1] for line in prediction.split("\n")]
        else:
            texts = [part.strip() for part in prediction.split("; ")]
    else:
        valid = SINGLE_ANSWER_TASKS + PROCEDURE_TASKS
        raise ValueError(f"task={task!r} is not valid. Valid choices: {valid}")
    correct, predicted = 0, []
    for text, label in zip(texts, labels, strict=False):
        guess = text if text == label else nearest_category(text, categories)
        correct += guess == label
        predicted.append(guess)
    return {"correct": correct, "total": len(predicted), "predicted": predicted}


def coin_accuracy(scores: Sequence[dict[str, Any]]) -> float:
    """Micro accuracy of :func:`score_coin` results: ``sum(correct) / sum(total)``, in [0, 1]."""
    total = sum(int(s["total"]) for s in scores)
    if total == 0:
        raise ValueError(f"no scored steps in {len(scores)} scores: accuracy is undefined")
    return sum(int(s["correct"]) for s in scores) / total
