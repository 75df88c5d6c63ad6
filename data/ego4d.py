"""Ego4D narrations -> narration streams, as VideoLLM-online builds them (``data/ego4d/``).

Also the narration text rules (:func:`clean_narration`, :func:`to_second_person`) and the
benchmark-file splits (:func:`ego4d_split_uids`). Where the rules come from: docs/data.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

from data._build import SlotTurn, Tally, add_turn, windows
from data._parse import (
    as_list,
    as_number,
    as_object,
    as_string,
    at,
    check_choice,
    check_rate,
    get_field,
    load_json,
)
from data.align import ceil_slot
from data.types import LIVE_SYSTEM_PROMPT, AnnotationError, StreamSample

log = logging.getLogger(__name__)

#: The user instruction of the Ego4D narration stream (``data/ego4d/narration.py``).
NARRATION_INSTRUCTION = (
    "Please concisely narrate the video in real time. Use the tag 'C' to denote the camera"
    " wearer, and other letter tags, such as 'X', to denote other individuals in the scene."
)
#: The first instruction of the refined narration stream (no letter tags in refined texts).
REFINED_NARRATION_INSTRUCTION = "Please concisely narrate the video in real time."
# Ego4D benchmark files list their items under one of these keys (VideoLLM-online reads
# goalstep/nlq/moments/av/vq: "videos", fho_lta/fho_oscc-pnr: "clips", fho_sta: "annotations").
EGO4D_SPLIT_KEYS = ("videos", "clips", "annotations")

# ---------------------------------------------------------------------------------------------
# Narration texts


def clean_narration(text: str) -> str:
    """Clean an Ego4D narration exactly as VideoLLM-online does: drop the ``#C``/``#c``/``@c``,
    ``#O``/``#o`` and ``#Unsure``/``#unsure`` tags and any other ``#``, strip spaces, dots and
    commas at both ends, end with one ``.``, capitalise the first word (Python's
    ``str.capitalize``) and collapse inner whitespace. ``"#C C picks up the knife"`` ->
    ``"C picks up the knife."``; ``"#unsure"`` -> ``"."``."""
    out = text
    for tag in ("#C", "#c", "@c", "#O", "#o", "#Unsure", "#unsure"):
        out = out.replace(tag, "")
    out = out.replace("#", "").strip(".,\n ") + "."
    words = out.split()
    words[0] = words[0].capitalize()
    return " ".join(words)


# Third person singular -> base form, for the verb after the subject "C".
_IRREGULAR_VERBS = {"is": "are", "was": "were", "has": "have", "does": "do", "goes": "go"}
_IES_KEEP_IE = {"unties": "untie"}
_ADVERBS = {"then", "also", "still", "again", "just", "now", "first", "slowly", "quickly"}
_LEADING_C = re.compile(r"^C\s+(.*)$", re.DOTALL)
_C_POSSESSIVE = re.compile(r"\bC's\b")
_C_WORD = re.compile(r"\bC\b(?!')")


def _base_form(word: str) -> str:
    m = re.match(r"^([A-Za-z]+)(.*)$", word, re.DOTALL)
    if not m:
        return word
    return _verb_base_form(m.group(1)) + m.group(2)


def _verb_base_form(verb: str) -> str:
    low = verb.lower()
    if low in _IRREGULAR_VERBS:
        return _IRREGULAR_VERBS[low]
    if low in _IES_KEEP_IE:
        return _IES_KEEP_IE[low]
    if low.endswith("ies") and len(low) > 4:
        return verb[:-3] + "y"
    if low.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")):
        return verb[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return verb[:-1]
    return verb


def to_second_person(text: str) -> str:
    """Rewrite a cleaned narration about the camera wearer ``C`` into the second person.

    VideoLLM-online's refined narrations (the paper's "changing 'C does...' to 'You do...'", the
    slides' "C does ... -> You are ...") were rewritten by Llama-3; this is a deterministic rule
    for that step: a leading subject ``C`` becomes ``You`` and the verb after it (after an
    optional adverb such as "then") loses its third-person ending (``picks`` -> ``pick``,
    ``washes`` -> ``wash``, ``carries`` -> ``carry``, ``is`` -> ``are``, ``has`` -> ``have``,
    ``does`` -> ``do``); any other ``C's`` becomes ``your`` and any other standalone ``C``
    ``you``. Other person tags (``X``, ``O``, ...) and verbs later in the sentence are left
    as they are (``"C picks a cup and washes it."`` -> ``"You pick a cup and washes it."``).
    """
    out = text
    m = _LEADING_C.match(out)
    if m:
        words = m.group(1).split(" ")
        i = 1 if len(words) > 1 and (words[0].lower() in _ADVERBS or words[0].endswith("ly")) else 0
        words[i] = _base_form(words[i])
        out = "You " + " ".join(words)
    elif out.startswith("C's "):
        out = "Your " + out[4:]
    out = _C_POSSESSIVE.sub("your", out)
    return _C_WORD.sub("you", out)


# ---------------------------------------------------------------------------------------------
# Files


def ego4d_split_uids(paths: Collection[str | Path]) -> set[str]:
    """The ``video_uid`` values listed in Ego4D benchmark annotation files.

    VideoLLM-online makes its narration-stream splits from the other benchmarks: the uids in their
    ``*_val.json`` files are the validation videos, those in ``*_test_unannotated.json`` (minus
    validation) the test videos, and every other narrated video trains. Each file is an object
    with a list of items under ``"videos"`` (goalstep, nlq, moments, av, vq), ``"clips"``
    (fho_lta, fho_oscc-pnr) or ``"annotations"`` (fho_sta), each item having a ``"video_uid"``;
    a plain JSON list of uid strings (VideoLLM-online's ``narration_stream_video_uids_*.json``)
    is read as it is. Use the result as ``split_uids`` or ``exclude_uids`` of
    :func:`read_ego4d_narrations`.
    """
    uids: set[str] = set()
    for p in paths:
        path = Path(p)
        data = load_json(path)
        if isinstance(data, list):
            uids.update(as_string(u, path, f"[{i}]") for i, u in enumerate(data))
            continue
        obj = as_object(data, path, "top level")
        keys = [k for k in EGO4D_SPLIT_KEYS if k in obj]
        if not keys:
            raise AnnotationError(
                f"{path}: top level: no list of items under any of {EGO4D_SPLIT_KEYS}"
                f" (keys present: {sorted(obj)[:12]})"
            )
        for key in keys:
            for i, item in enumerate(as_list(obj[key], path, key)):
                where = at(key, i)
                uid = get_field(as_object(item, path, where), "video_uid", path, where)
                uids.add(as_string(uid, path, at(where, "video_uid")))
    return uids


_Streams = Iterator[tuple[str, str, list[tuple[float, str]]]]


def _ego4d_streams(data: Any, path: Path, tally: Tally) -> _Streams:
    """``(video_uid, stream name, [(time, raw text)])`` for each annotation pass of each video,
    from any of the three layouts (docs/data.md, "Ego4D narration files")."""
    top = as_object(data, path, "top level")
    if isinstance(top.get("videos"), dict):  # all_narrations_redacted.json as Ego4D ships it
        yield from _redacted_streams(top["videos"], path, tally)
        return
    for uid, video in top.items():
        where = f"[{uid!r}]"
        video = as_object(video, path, where)
        passes = sorted(k for k in video if k.startswith("narration_pass"))
        if passes:  # narration.json layout: one object per annotation pass
            for name in passes:
                w = at(where, name)
                narrations = get_field(as_object(video[name], path, w), "narrations", path, w)
                keys = ("timestamp_sec", "narration_text")
                yield uid, name, _timed_texts(narrations, path, at(w, "narrations"), *keys)
        elif video and all(isinstance(v, list) for v in video.values()):
            # VideoLLM-online's narration_stream_*.json: {annotation_uid: [{"time", "text"}]}
            for ann, narrations in video.items():
                yield uid, ann, _timed_texts(narrations, path, at(where, ann), "time", "text")
        else:
            tally.add("videos without a narration pass")


def _redacted_streams(videos: dict[str, Any], path: Path, tally: Tally) -> _Streams:
    """The ``_annotation_uid`` groups of each video of ``all_narrations_redacted.json``."""
    for uid, video in videos.items():
        where = at("videos", uid)
        video = as_object(video, path, where)
        groups: dict[str, list[tuple[float, str]]] = {}
        for i, n in enumerate(as_list(video.get("narrations", []), path, where + ".narrations")):
            w = at(at(where, "narrations"), i)
            n = as_object(n, path, w)
            ann = as_string(get_field(n, "_annotation_uid", path, w), path, w + "._annotation_uid")
            t = as_number(get_field(n, "time", path, w), path, w + ".time")
            text = as_string(get_field(n, "text", path, w), path, w + ".text")
            groups.setdefault(ann, []).append((t, text))
        if not groups:
            tally.add("videos without narrations")
        for ann, items in groups.items():
            yield uid, ann, items


def _timed_texts(
    narrations: Any, path: Path, where: str, time_key: str, text_key: str
) -> list[tuple[float, str]]:
    """``[(time, text)]`` of a list of narration objects found at ``where``."""
    items = []
    for i, n in enumerate(as_list(narrations, path, where)):
        wi = at(where, i)
        n = as_object(n, path, wi)
        t = as_number(get_field(n, time_key, path, wi), path, at(wi, time_key))
        items.append((t, as_string(get_field(n, text_key, path, wi), path, at(wi, text_key))))
    return items


def read_ego4d_narrations(
    path: str | Path,
    *,
    fps: float = 2.0,
    split_uids: Collection[str] | None = None,
    exclude_uids: Collection[str] | None = None,
    refined: bool = False,
    unsure: Literal["strip", "drop"] = "strip",
    window_frames: int = 1200,
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """Ego4D narration streams, one per annotation pass, as VideoLLM-online builds them.

    Reads (detected per file) Ego4D's ``narration.json`` and ``all_narrations_redacted.json``
    and VideoLLM-online's ``(refined_)narration_stream_*.json``: layouts in docs/data.md.

    Per pass, as the reference: narrations sorted by time; each text cleaned by
    :func:`clean_narration` (``unsure="strip"`` removes the ``#unsure`` tag and keeps the rest,
    as the reference code does; ``"drop"`` drops such narrations); texts under 2 words dropped;
    ``refined=True`` then applies :func:`to_second_person`; a text equal to the previous kept one
    is dropped; each time is rounded up to the frame grid, and a narration on the same frame as
    the previous one replaces it. The stream runs from the first narration's frame to the last
    one's, with :data:`NARRATION_INSTRUCTION` (or :data:`REFINED_NARRATION_INSTRUCTION`) as an
    unlearned user turn at its first frame, and every narration a learned assistant turn.

    Deviations from the reference: a stream longer than ``window_frames`` is split into
    consecutive windows (each starting with the instruction; windows with no narration are
    dropped) where the reference keeps only the first ``window_frames`` frames; times are not
    clamped to the video's duration (unknown here; :func:`~data.align.frames_for_window` clamps to
    the stored frames). ``split_uids`` keeps only those videos, ``exclude_uids`` drops those
    (train = all minus the :func:`ego4d_split_uids` of the val and test files).
    """
    check_rate(fps, window_frames)
    check_choice("unsure", unsure, ("strip", "drop"))
    path = Path(path)
    tally = Tally(log)
    samples: list[StreamSample] = []
    streams = _ego4d_streams(load_json(path), path, tally)
    for uid, stream, items in _kept(streams, split_uids, exclude_uids, tally):
        turns = _narration_turns(items, fps, refined=refined, unsure=unsure, tally=tally)
        if not turns:
            tally.add("passes without usable narrations")
            continue
        samples += windows(
            base_id=f"{uid}/{stream}",
            video_id=uid,
            start_slot=turns[0].slot,
            stop_slot=turns[-1].slot + 1,
            turns=turns,
            instruction=REFINED_NARRATION_INSTRUCTION if refined else NARRATION_INSTRUCTION,
            window_frames=window_frames,
            fps=fps,
            system=system,
            tally=tally,
            what="narration",
        )
    tally.report(path, "Ego4D narration", samples)
    return samples


def _kept(
    streams: _Streams,
    split_uids: Collection[str] | None,
    exclude_uids: Collection[str] | None,
    tally: Tally,
) -> _Streams:
    """The ``streams`` of videos in ``split_uids`` (None: all) and not in ``exclude_uids``; the
    videos left out are counted once the streams are exhausted."""
    keep = None if split_uids is None else set(split_uids)
    drop = set() if exclude_uids is None else set(exclude_uids)
    filtered: set[str] = set()
    for uid, stream, items in streams:
        if (keep is not None and uid not in keep) or uid in drop:
            filtered.add(uid)
            continue
        yield uid, stream, items
    tally.add("videos filtered out by split_uids/exclude_uids", len(filtered))


def _narration_turns(
    items: list[tuple[float, str]], fps: float, *, refined: bool, unsure: str, tally: Tally
) -> list[SlotTurn]:
    """One pass's narrations as learned assistant turns on the frame grid (the rules of
    :func:`read_ego4d_narrations`)."""
    turns: list[SlotTurn] = []
    last_text = None
    for time, raw in sorted(items, key=lambda item: item[0]):
        if unsure == "drop" and "#unsure" in raw.lower():
            tally.add("narrations tagged #unsure")
            continue
        text = clean_narration(raw)
        if len(text.split()) < 2:
            tally.add("narrations under 2 words")
            continue
        if refined:
            text = to_second_person(text)
        if text == last_text:
            tally.add("narrations repeating the previous one")
            continue
        last_text = text
        add_turn(
            turns,
            SlotTurn(ceil_slot(time, fps), "assistant", text, True),
            tally,
            "narrations replaced by a later one on the same frame",
        )
    return turns
