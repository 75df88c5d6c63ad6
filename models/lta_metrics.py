"""Ego4D LTA scoring: generated answers -> ``(verb_id, noun_id)`` sequences, edit distances over
them, and the challenge's submission file. Pure functions over numbers and text.

Where each rule comes from:

- Parsing (:func:`parse_lta`): showlab/videollm-online ``data/ego4d/lta.py``
  (``Ego4DLTA.text_to_verb_noun_ids``, ``map_action_to_verb_label``).
- :func:`edit_distance` and :func:`aued`: the same file's ``edit_distance`` and ``AUED``, which
  simplify Ego4D's ``ego4d_forecasting/evaluation/lta_metrics.py`` (EGO4D/forecasting): for each
  question the lowest normalised edit distance over its K beams, averaged over questions; AUED is
  the trapezoid area under ED@1..Z divided by Z - 1. (Ego4D's arrays are N x Z x K; these take
  N x K x Z, as VideoLLM-online's.)
- The action column (:func:`lta_scores`): Ego4D's paper and challenge score an action as the
  ``(verb, noun)`` pair; the reference code reports verb and noun AUED only.
- :func:`lta_submission`: ``Ego4DLTA.compute_metrics`` on ``test_unannotated`` (keys
  ``{clip_uid}_{last_visible_action_idx}``, as EGO4D/forecasting's ``outputs.json``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import editdistance
import numpy as np

from data.ego4d_lta import LtaTaxonomy

# A numbered line: "3. ..." or "Step 3. ..." anywhere in the line; the text after it is the action.
_NUMBERED = re.compile(r"(?:\d+\.|\S+\s\d+\.)\s*(.*)")
# numpy >= 2.0 names it trapezoid (trapz is gone in 2.4); older numpy has only trapz.
_trapezoid: Any = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009 (mypy)


def parse_lta(text: str, taxonomy: LtaTaxonomy, num_actions: int = 20) -> list[tuple[int, int]]:
    """The ``(verb_id, noun_id)`` of each action a generated answer lists, exactly ``num_actions``.

    As the reference: the text is stripped of spaces and newlines at both ends and read line by
    line; a line counts when it has ``"N."`` or ``"word N."`` in it (the first such place), the
    rest of the line after it (and any spaces) being the action, lower-cased, trailing ``.``
    removed; other lines are dropped. An action not in the taxonomy becomes the nearest one
    (:meth:`LtaTaxonomy.nearest_action`: Levenshtein, ties alphabetical). Extra actions are cut,
    a short list is padded with its last action, and an answer without any counted line is
    ``num_actions`` times the taxonomy's most common action."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    ids: list[tuple[int, int]] = []
    for line in text.strip(" \n").split("\n"):
        match = _NUMBERED.search(line)
        if match is None:
            continue
        action = match.group(1).lower().rstrip(".")
        ids.append(taxonomy.action_ids[taxonomy.nearest_action(action)])
    ids = ids[:num_actions]
    if not ids:
        return [taxonomy.action_ids[taxonomy.most_common_action]] * num_actions
    return ids + [ids[-1]] * (num_actions - len(ids))


def _check_shapes(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(preds), np.asarray(labels)
    if p.ndim != 3 or y.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[2] != y.shape[1]:
        raise ValueError(f"need preds N x K x Z and labels N x Z, got {p.shape} and {y.shape}")
    if 0 in p.shape:
        raise ValueError(f"need N, K, Z >= 1, got preds of shape {p.shape}")
    return p, y


def _sample_ed(beams: np.ndarray, label: np.ndarray) -> float:
    """Lowest edit distance over the beams (K x Z) to the label (Z), divided by Z."""
    z = label.shape[0]
    target = label.tolist()
    return min(editdistance.eval(beam.tolist(), target) / z for beam in beams)


def edit_distance(preds: Any, labels: Any) -> float:
    """ED@Z: for each of N questions the lowest edit distance (insertions, deletions and
    substitutions of whole symbols) over its K beams to its Z labels, divided by Z; averaged
    over the questions. ``preds`` N x K x Z, ``labels`` N x Z, of integer ids."""
    p, y = _check_shapes(preds, labels)
    return float(np.mean([_sample_ed(p[n], y[n]) for n in range(p.shape[0])]))


def aued(preds: Any, labels: Any) -> float:
    """Area under the ED@z curve for z = 1..Z (each on the first z actions), by the trapezoid
    rule, divided by Z - 1: the reference's ``AUED``. Needs Z >= 2."""
    p, y = _check_shapes(preds, labels)
    z_max = y.shape[1]
    if z_max < 2:
        raise ValueError(f"AUED needs Z >= 2 actions, got Z = {z_max}")
    eds = [edit_distance(p[:, :, :z], y[:, :z]) for z in range(1, z_max + 1)]
    return float(_trapezoid(eds)) / (z_max - 1)


def _as_ids(
    predictions: Sequence[Sequence[Sequence[Sequence[int]]]],
    labels: Sequence[Sequence[Sequence[int]]],
) -> tuple[np.ndarray, np.ndarray]:
    """``(verb, noun)`` pairs -> arrays N x K x Z x 2 and N x Z x 2 (ValueError on ragged)."""
    try:
        p = np.asarray(predictions, dtype=np.int64)
        y = np.asarray(labels, dtype=np.int64)
    except ValueError as e:
        raise ValueError(
            f"every question needs the same number of beams of the same length: {e}"
        ) from None
    if p.ndim != 4 or p.shape[-1] != 2 or y.ndim != 3 or y.shape[-1] != 2:
        raise ValueError(
            "need predictions N x K x Z of (verb_id, noun_id) and labels N x Z of (verb_id,"
            f" noun_id), got arrays of shape {p.shape} and {y.shape}"
        )
    return p, y


def _action_symbols(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct ``(verb, noun)`` pair as one integer symbol (same pair, same symbol)."""
    pairs = np.concatenate([p.reshape(-1, 2), y.reshape(-1, 2)])
    _, symbols = np.unique(pairs, axis=0, return_inverse=True)
    symbols = symbols.reshape(-1)
    return symbols[: p[..., 0].size].reshape(p.shape[:-1]), symbols[p[..., 0].size :].reshape(
        y.shape[:-1]
    )


def _kinds(p: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    action_p, action_y = _action_symbols(p, y)
    return {
        "verb": (p[..., 0], y[..., 0]),
        "noun": (p[..., 1], y[..., 1]),
        "action": (action_p, action_y),
    }


def _check_ids(p: np.ndarray, y: np.ndarray, taxonomy: LtaTaxonomy | None) -> None:
    if taxonomy is None:
        return
    for name, ids, size in (
        ("verb", np.concatenate([p[..., 0].ravel(), y[..., 0].ravel()]), len(taxonomy.verbs)),
        ("noun", np.concatenate([p[..., 1].ravel(), y[..., 1].ravel()]), len(taxonomy.nouns)),
    ):
        bad = ids[(ids < 0) | (ids >= size)]
        if bad.size:
            raise ValueError(f"{name} id {int(bad[0])} is not in the taxonomy's [0, {size})")


def lta_scores(
    predictions: Sequence[Sequence[Sequence[Sequence[int]]]],
    labels: Sequence[Sequence[Sequence[int]]],
    taxonomy: LtaTaxonomy | None = None,
) -> dict[str, float]:
    """Verb, noun and action ED@Z and AUED of N questions: ``predictions`` N x K x Z
    ``(verb_id, noun_id)`` pairs (K beams of Z actions each, from :func:`parse_lta`), ``labels``
    N x Z pairs (ids checked against ``taxonomy`` when given).

    The verb sequence is the pairs' verb ids, the noun sequence their noun ids, and the action
    sequence the pairs themselves, each pair one symbol: an action step matches only when both
    its verb and its noun do (Ego4D's action edit distance). Keys (Z = 20): ``verb_ed20``,
    ``noun_ed20``, ``action_ed20``, ``verb_aued``, ``noun_aued``, ``action_aued``; lower is
    better, 0 is perfect. Each is the mean over the questions of :func:`lta_sample_scores`' value
    (AUED too: the trapezoid rule is linear)."""
    p, y = _as_ids(predictions, labels)
    _check_ids(p, y, taxonomy)
    z = y.shape[1]
    out: dict[str, float] = {}
    for kind, (kp, ky) in _kinds(p, y).items():
        out[f"{kind}_ed{z}"] = edit_distance(kp, ky)
        out[f"{kind}_aued"] = aued(kp, ky)
    return out


def lta_sample_scores(
    beams: Sequence[Sequence[Sequence[int]]],
    labels: Sequence[Sequence[int]],
    taxonomy: LtaTaxonomy | None = None,
) -> dict[str, float]:
    """One question's scores for a result line: ``beams`` K x Z and ``labels`` Z ``(verb_id,
    noun_id)`` pairs; the keys and meaning of :func:`lta_scores` (ED@Z the lowest over the
    beams; AUED this question's area under its ED@1..Z). Their means over the questions are
    :func:`lta_scores`' values."""
    return lta_scores([beams], [labels], taxonomy)


def lta_submission(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, list[list[int]]]]:
    """The Ego4D LTA challenge's prediction file: ``{f"{clip_uid}_{last_visible_action_idx}":
    {"verb": K x Z verb ids, "noun": K x Z noun ids}}`` (K = 5, Z = 20 for the challenge).

    Each record has ``clip_uid``, ``last_visible_action_idx`` (a sample's ``meta``) and ``beams``:
    K lists of Z ``(verb_id, noun_id)`` pairs (:func:`parse_lta` of each beam). A key seen twice
    is a ValueError (the file would keep only one)."""
    out: dict[str, dict[str, list[list[int]]]] = {}
    for n, record in enumerate(records):
        missing = [k for k in ("clip_uid", "last_visible_action_idx", "beams") if k not in record]
        if missing:
            raise ValueError(f"LTA record {n}: missing {missing} (keys: {sorted(record)})")
        key = f"{record['clip_uid']}_{record['last_visible_action_idx']}"
        if key in out:
            raise ValueError(f"LTA record {n}: key {key!r} appears twice")
        beams = np.asarray(record["beams"], dtype=np.int64)
        if beams.ndim != 3 or beams.shape[-1] != 2:
            raise ValueError(
                f"LTA record {n} ({key}): beams must be K x Z (verb_id, noun_id) pairs, got an"
                f" array of shape {beams.shape}"
            )
        out[key] = {"verb": beams[..., 0].tolist(), "noun": beams[..., 1].tolist()}
    return out
