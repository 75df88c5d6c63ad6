"""Ego4D long-term action anticipation (``fho_lta_{split}.json`` + ``fho_lta_taxonomy.json``) ->
questions over a clip's stored frames, by VideoLLM-online's rules.

Each rule and the reference file it comes from (showlab/videollm-online):

- ``data/ego4d/lta.py`` (``Ego4DLTA``): the taxonomy words (the first word of each taxonomy row,
  with eight hand-made replacements so that no two words overlap), the ``"verb noun"`` action
  table and its most common action; clips with at least 8 + 20 actions, ordered by
  ``action_idx``; one question per run of 8 visible actions (the next 20 are the answer); times
  on the parent video (``clip_parent_start_sec`` + ``action_clip_{start,end}_sec``), from the start
  of the first visible action to the end of the last; the question's wording and its frame count;
  the numbered answer; no answer on ``test_unannotated``.
- ``data/utils.py`` (``round_time_by_fps``): times go to the nearest frame-grid time with Python's
  ``round`` (ties to even), clamped to ``[0, duration]``.
- ``data/ego4d/ego4d.py``: a video's duration is ``(stored frames - 1) / fps``.
- ``data/stream.py`` (``max_frames_clip``): a question whose window is over the frame cap loses all
  of its frames (the question itself is still asked, with the uncut count in its text).

The metric side (parsing answers, edit distances) is ``models.lta_metrics``. Rules in prose:
docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import Levenshtein

from data._parse import (
    as_list,
    as_number,
    as_object,
    as_string,
    at,
    check_choice,
    check_rate,
    describe,
    get_field,
    load_json,
)
from data.benchmarks import BenchmarkSample, BenchmarkSet, store_skip_reason
from data.types import LIVE_SYSTEM_PROMPT, AnnotationError

log = logging.getLogger(__name__)

#: Visible actions per question and actions to anticipate (``Ego4DLTA``: 8 and Z = 20).
LTA_INPUT_ACTIONS = 8
LTA_FUTURE_ACTIONS = 20
#: Beams per question at evaluation (``Ego4DLTA``: K = 5).
LTA_NUM_BEAMS = 5
LTA_SPLITS: tuple[str, ...] = ("train", "val", "test_unannotated")
TAXONOMY_FILE = "fho_lta_taxonomy.json"

# Taxonomy rows whose first word would collide with another row's (``Ego4DLTA``).
_NO_OVERLAP_WORDS = {
    "pot_(planter)": "flowerpot",
    "bat_(sports)": "sport bat",
    "bat_(tool)": "bat",
    "nut_(food)": "nuts",
    "nut_(tool)": "nut",
    "chip_(food)": "snack",
    "chip_(wood'_metal),": "chips",  # sic: the reference's key (the taxonomy row has a comma)
    "chip_(wood,_metal)": "chip",
}


def lta_question(num_frames: int) -> str:
    """The reference's question for a window of ``num_frames`` frames (the uncut count)."""
    return (
        f"After {num_frames} video frames, anticipate the next {LTA_FUTURE_ACTIONS} actions."
        " Format your answer concisely, listing each action on a new line with a number prefix."
        " No extra text output."
    )


def lta_word(row: str) -> str:
    """A taxonomy row as the word the answers use: the replacement when the row has one, else
    the text before the first ``(`` (one trailing ``_`` dropped) with ``_`` read as a space
    (``"put_(place,_leave,_drop)"`` -> ``"put"``, ``"nut_(food)"`` -> ``"nuts"``)."""
    if row in _NO_OVERLAP_WORDS:
        return _NO_OVERLAP_WORDS[row]
    if "(" in row:
        head = row.split("(")[0]
        return (head[:-1] if head.endswith("_") else head).replace("_", " ")
    return row.replace("_", " ")


@dataclass(frozen=True)
class LtaTaxonomy:
    """Ego4D LTA's verbs and nouns (as :func:`lta_word` writes them; the label ids index these),
    every ``"verb noun"`` action text with its ``(verb_id, noun_id)``, and the most common action
    text (what an answer without a parsable line becomes).

    Built as the reference does: the actions of every verb with every noun in order; when two
    pairs give the same text the later pair's ids win, and the most common action is the first
    text made by the most pairs (with no repeated text: the first verb with the first noun)."""

    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    action_ids: Mapping[str, tuple[int, int]]
    most_common_action: str
    _nearest: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_rows(cls, verb_rows: Sequence[str], noun_rows: Sequence[str]) -> LtaTaxonomy:
        """The taxonomy of ``fho_lta_taxonomy.json``'s ``verbs`` and ``nouns`` rows."""
        if not verb_rows or not noun_rows:
            raise ValueError("an LTA taxonomy needs at least one verb and one noun")
        verbs = tuple(lta_word(r) for r in verb_rows)
        nouns = tuple(lta_word(r) for r in noun_rows)
        action_ids: dict[str, tuple[int, int]] = {}
        made_by: Counter[str] = Counter()
        for i, verb in enumerate(verbs):
            for j, noun in enumerate(nouns):
                text = f"{verb} {noun}"
                action_ids[text] = (i, j)
                made_by[text] += 1
        # max() keeps the first of equal counts, in the order the texts were first made.
        most_common = max(made_by, key=lambda t: made_by[t])
        return cls(verbs, nouns, action_ids, most_common)

    def answer_text(self, verb_noun_ids: Sequence[tuple[int, int]]) -> str:
        """The reference's answer: one ``"{n}. {Verb} {noun}."`` line per action (the verb through
        ``str.capitalize``, the noun as it is)."""
        return "\n".join(
            f"{n}. {self.verbs[v].capitalize()} {self.nouns[o]}."
            for n, (v, o) in enumerate(verb_noun_ids, 1)
        )

    def nearest_action(self, text: str) -> str:
        """``text`` when it is an action, else the action nearest to it by Levenshtein distance,
        ties to the alphabetically first (the reference's ``min`` over ``(distance, action)``).
        Results are cached: answers repeat the same texts."""
        if text in self.action_ids:
            return text
        found = self._nearest.get(text)
        if found is not None:
            return found
        # ~0.1 s over Ego4D's 61k actions, hence the cache.
        found = min((Levenshtein.distance(text, action), action) for action in self.action_ids)[1]
        self._nearest[text] = found
        return found


def read_lta_taxonomy(path: str | Path) -> LtaTaxonomy:
    """``fho_lta_taxonomy.json`` (an object with lists of strings under ``verbs`` and ``nouns``)
    as an :class:`LtaTaxonomy`."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: the Ego4D LTA taxonomy file does not exist")
    top = as_object(load_json(path), path, "top level")
    rows: dict[str, list[str]] = {}
    for key in ("verbs", "nouns"):
        items = as_list(get_field(top, key, path, "top level"), path, key)
        if not items:
            raise AnnotationError(f"{path}: {key}: the list is empty")
        rows[key] = [as_string(r, path, at(key, i)) for i, r in enumerate(items)]
    return LtaTaxonomy.from_rows(rows["verbs"], rows["nouns"])


@dataclass(frozen=True)
class _Action:
    """One entry of ``clips``: where it is in the file and the fields the questions use."""

    where: str
    raw: dict[str, Any]
    clip_uid: str
    video_uid: str
    action_idx: int
    start_seconds: float  # on the parent video
    end_seconds: float


def _lta_files(path: Path, split: str) -> tuple[Path, Path]:
    if path.is_dir():
        anno = path / f"fho_lta_{split}.json"
    else:
        anno = path
    taxonomy = anno.parent / TAXONOMY_FILE
    if not anno.is_file():
        raise AnnotationError(
            f"{anno}: the Ego4D LTA annotation file does not exist (data.annotations is the folder"
            f" holding fho_lta_{split}.json and {TAXONOMY_FILE}, or the split's file itself)"
        )
    return anno, taxonomy


def _read_actions(path: Path) -> dict[str, list[_Action]]:
    """Every entry of ``clips``, grouped by ``clip_uid`` in the order clips first appear."""
    top = as_object(load_json(path), path, "top level")
    entries = as_list(get_field(top, "clips", path, "top level"), path, "clips")
    clips: dict[str, list[_Action]] = {}
    for i, entry in enumerate(entries):
        where = at("clips", i)
        entry = as_object(entry, path, where)

        def text(key: str, entry: dict[str, Any] = entry, where: str = where) -> str:
            return as_string(get_field(entry, key, path, where), path, at(where, key))

        def number(key: str, entry: dict[str, Any] = entry, where: str = where) -> float:
            return as_number(get_field(entry, key, path, where), path, at(where, key))

        parent = number("clip_parent_start_sec")
        idx = get_field(entry, "action_idx", path, where)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise AnnotationError(
                f"{path}: {at(where, 'action_idx')}: expected an integer, got {describe(idx)}"
            )
        action = _Action(
            where=where,
            raw=entry,
            clip_uid=text("clip_uid"),
            video_uid=text("video_uid"),
            action_idx=idx,
            start_seconds=parent + number("action_clip_start_sec"),
            end_seconds=parent + number("action_clip_end_sec"),
        )
        clips.setdefault(action.clip_uid, []).append(action)
    return clips


def _label(action: _Action, key: str, size: int, path: Path) -> int:
    value = get_field(action.raw, key, path, action.where)
    if isinstance(value, bool) or not isinstance(value, int) or not (0 <= value < size):
        raise AnnotationError(
            f"{path}: {at(action.where, key)}: expected a taxonomy index in [0, {size}), got"
            f" {describe(value)}"
        )
    return value


def _round_to_grid(time_seconds: float, fps: float, duration_seconds: float) -> float:
    """The reference's ``round_time_by_fps``: nearest grid time (ties to even), in [0, duration]."""
    return min(max(round(time_seconds * fps) / fps, 0), duration_seconds)


def read_ego4d_lta(
    path: str | Path,
    *,
    split: str,
    fps: float,
    frames: Mapping[str, int | None],
    window_frames: int = 1200,
    system: str = LIVE_SYSTEM_PROMPT,
) -> BenchmarkSet:
    """Ego4D LTA questions over the store's frames, by VideoLLM-online's rules.

    ``path`` is the folder holding ``fho_lta_{split}.json`` and ``fho_lta_taxonomy.json`` (or the
    split's file, the taxonomy beside it); ``split`` one of :data:`LTA_SPLITS`; ``frames`` the
    store's frame counts (``data.benchmarks.stored_frames``), sampled at ``fps``.

    A clip with at least 8 + 20 entries gives one question per run of 8 visible actions (in
    ``action_idx`` order): frames from the start of the first to the end of the eighth, each
    time rounded to the nearest frame (ties to even) and clamped to the video's
    ``[0, (frames - 1) / fps]``, both ends included. The answer (train and val) numbers the next
    20 actions (:meth:`LtaTaxonomy.answer_text`); ``labels`` are their ``"verb_id noun_id"``
    strings; ``meta`` has ``clip_uid``, ``last_visible_action_idx``, ``verb_labels`` and
    ``noun_labels`` (the 20 ids each; on ``test_unannotated`` None, as the answer, and no
    ``labels``). A window over ``window_frames`` frames keeps its question (with the uncut count)
    and no frames, as the reference evaluates it; counted in ``adjusted``. Questions on videos
    the store cannot serve and clips with too few actions are counted in ``skipped``.
    ``taxonomy`` is the :class:`LtaTaxonomy`.
    """
    check_rate(fps, window_frames)
    check_choice("split", split, LTA_SPLITS)
    anno_path, taxonomy_path = _lta_files(Path(path), split)
    taxonomy = read_lta_taxonomy(taxonomy_path)
    labelled = split != "test_unannotated"
    span = LTA_INPUT_ACTIONS + LTA_FUTURE_ACTIONS
    samples: list[BenchmarkSample] = []
    skipped: Counter[str] = Counter()
    adjusted: Counter[str] = Counter()
    for clip_uid, actions in _read_actions(anno_path).items():
        if len(actions) < span:
            skipped[f"clips with fewer than {span} actions"] += 1
            continue
        actions = sorted(actions, key=lambda a: a.action_idx)
        for a, b in itertools.pairwise(actions):
            if a.action_idx == b.action_idx:
                raise AnnotationError(
                    f"{anno_path}: {b.where}: clip {clip_uid!r} repeats action_idx"
                    f" {b.action_idx} (also at {a.where}); questions are named by it"
                )
        for i in range(len(actions) - span + 1):
            visible = actions[i : i + LTA_INPUT_ACTIONS]
            future = actions[i + LTA_INPUT_ACTIONS : i + span]
            video_id = visible[0].video_uid
            reason = store_skip_reason(video_id, frames)
            if reason is not None:
                skipped[reason] += 1
                continue
            stored = frames[video_id]
            assert stored is not None  # store_skip_reason said it is done
            duration_seconds = (stored - 1) / fps
            start = _round_to_grid(visible[0].start_seconds, fps, duration_seconds)
            end = _round_to_grid(visible[-1].end_seconds, fps, duration_seconds)
            first_frame = int(start * fps)
            stop_frame = int(end * fps) + 1
            num_frames = stop_frame - first_frame
            if num_frames > window_frames:
                adjusted[
                    f"windows over the {window_frames}-frame cap: asked with no frames (as the"
                    " reference's max_frames_clip)"
                ] += 1
                stop_frame = first_frame
            elif num_frames < 0:
                adjusted["windows ending before they start: asked with no frames"] += 1
                stop_frame = first_frame
            verb_ids: list[int] = []  # none on test_unannotated
            noun_ids: list[int] = []
            if labelled:
                verb_ids = [_label(a, "verb_label", len(taxonomy.verbs), anno_path) for a in future]
                noun_ids = [_label(a, "noun_label", len(taxonomy.nouns), anno_path) for a in future]
            last_idx = visible[-1].action_idx
            samples.append(
                BenchmarkSample(
                    sample_id=f"lta/{clip_uid}/{last_idx}",
                    task="lta",
                    video_id=video_id,
                    first_frame=first_frame,
                    stop_frame=stop_frame,
                    question=lta_question(num_frames),
                    answer=taxonomy.answer_text(list(zip(verb_ids, noun_ids, strict=True)))
                    if labelled
                    else None,
                    labels=tuple(f"{v} {o}" for v, o in zip(verb_ids, noun_ids, strict=True)),
                    system=system,
                    meta={
                        "clip_uid": clip_uid,
                        "last_visible_action_idx": last_idx,
                        "verb_labels": verb_ids if labelled else None,
                        "noun_labels": noun_ids if labelled else None,
                    },
                )
            )
    counts = "; ".join(f"{n} {r}" for r, n in (skipped + adjusted).most_common()) or "none"
    log.info(
        "%s: %d Ego4D LTA questions (%s) from %d videos; skipped or adjusted: %s",
        anno_path,
        len(samples),
        split,
        len({s.video_id for s in samples}),
        counts,
    )
    return BenchmarkSet(samples, taxonomy=taxonomy, skipped=skipped, adjusted=adjusted)
