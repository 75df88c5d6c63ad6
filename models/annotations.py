"""Annotation files users already have -> timed streaming samples for LIVE training.

Readers for Ego4D narrations, COIN and VideoLLM-online's chat data. They know nothing about
tokenizers or the feature store: a :class:`StreamSample` is a window ``[start_seconds,
stop_seconds)`` of one video plus dialogue turns at absolute times in that video's timeline.
:func:`frames_for_window` and :func:`turn_frame_index` then map those times onto the stored
frames of a video (their ``pts_seconds``).

Time semantics (the same in every reader):

- All times sit on the frame grid ``k / fps`` (``k = 0, 1, ...``). Assistant turns are rounded
  *up* (``ceil(t * fps) / fps``: a reply may only use frames shown at or before it), user turns
  of chat data *down* (``floor``: the question was asked while that frame was on screen), as in
  VideoLLM-online. A tolerance of 1e-6 frame keeps float noise (``1.0000000000000002``) on the
  grid point it means.
- A turn at time ``t`` comes after every frame of the window up to and including the frame on
  screen at ``t``; turns with equal times keep their order (a user instruction at the window's
  first frame precedes a reply on that same frame).
- ``stop_seconds`` is exclusive: the window holds the frames shown at ``start``,
  ``start + 1/fps``, ..., ``stop - 1/fps``, i.e. ``round((stop - start) * fps)`` frames.
- Windows hold at most ``max_frames`` frames (1,200 = 10 min at 2 FPS, as VideoLLM-online).

Skipped entries (unusable texts, repeated narrations, filtered subsets, ...) are counted with their
reasons and logged once per file at INFO level by the ``models.annotations`` logger. A malformed
file raises :class:`AnnotationError` naming the file and the offending entry.

Where the wording and rules come from: the seeds (the VideoLLM-online paper, slides and README)
describe the data only loosely, so the exact rules, the system prompt and the instructions follow
the public VideoLLM-online code (``data/ego4d/narration.py``, ``data/coin/benchmarks.py``,
``data/ego4d/livechat.py``, ``models/arguments_live.py``), which is what existing checkpoints were
trained on. Deviations are listed in each reader's docstring.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")

#: VideoLLM-online's default system prompt (``models/arguments_live.py``).
LIVE_SYSTEM_PROMPT = (
    "A multimodal AI assistant is helping users with some activities. Below is their"
    " conversation, interleaved with the list of video frames received by the assistant."
)
#: The user instruction of the Ego4D narration stream (``data/ego4d/narration.py``).
NARRATION_INSTRUCTION = (
    "Please concisely narrate the video in real time. Use the tag 'C' to denote the camera"
    " wearer, and other letter tags, such as 'X', to denote other individuals in the scene."
)
#: The first instruction of the refined narration stream (no letter tags in refined texts).
REFINED_NARRATION_INSTRUCTION = "Please concisely narrate the video in real time."
#: COIN task recognition question (``data/coin/benchmarks.py``, ``COINTask``).
COIN_TASK_QUESTION = (
    "What is the overall activity in the video? Format your answer concisely. No extra text output."
)
#: COIN step-stream instructions: our own wording (the reference has per-step clips, no stream).
COIN_STEP_INSTRUCTIONS: dict[str, str] = {
    "start": "Please tell me each step of the activity in real time, as soon as it begins.",
    "end": "Please tell me each step of the activity in real time, as soon as it is done.",
}

# Frame-grid tolerance, in frames (see the module docstring).
_GRID_EPS = 1e-6
# Frames are matched to times with this slack, in seconds (pts are float64 from integer ticks).
_PTS_TOLERANCE_SECONDS = 1e-6
# The reference's fixes of two COIN step labels (``data/coin/coin.py``).
_COIN_STEP_FIXES = {
    "process (crop, fold) paper": "crop and fold paper",
    "try to press gun head, spray residual old grease": (
        "try to press gun head to spray residual old grease"
    ),
}
# The reference's acronym joins after splitting a COIN class at capitals (``data/coin/coin.py``).
_COIN_ACRONYMS = (
    (" t v", " TV"),
    (" c d", " CD"),
    ("s i m", "SIM"),
    ("n b a", "NBA"),
    ("s s d", "SSD"),
    ("r j45", "RJ45"),
)
# Ego4D benchmark files list their items under one of these keys (VideoLLM-online reads
# goalstep/nlq/moments/av/vq: "videos", fho_lta/fho_oscc-pnr: "clips", fho_sta: "annotations").
EGO4D_SPLIT_KEYS = ("videos", "clips", "annotations")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the offending entry."""


@dataclass(frozen=True)
class TimedTurn:
    """One dialogue turn at ``time_seconds`` (absolute, in the video's timeline).

    ``learn`` says whether the turn's text carries the language-modelling loss."""

    role: Role
    text: str
    time_seconds: float
    learn: bool = True

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"TimedTurn.role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"TimedTurn.text must be a str, got {self.text!r}")
        if not (math.isfinite(self.time_seconds) and self.time_seconds >= 0):
            raise ValueError(
                f"TimedTurn.time_seconds must be finite and >= 0, got {self.time_seconds}"
            )
        if not isinstance(self.learn, bool):
            raise TypeError(f"TimedTurn.learn must be a bool, got {self.learn!r}")


@dataclass(frozen=True)
class StreamSample:
    """The window ``[start_seconds, stop_seconds)`` of video ``video_id`` whose frames the model
    sees, the dialogue ``turns`` at their times (sorted, inside the window) and the system text."""

    sample_id: str
    video_id: str
    start_seconds: float
    stop_seconds: float
    turns: tuple[TimedTurn, ...]
    system: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_seconds) and 0 <= self.start_seconds < self.stop_seconds):
            raise ValueError(
                f"StreamSample {self.sample_id!r}: need 0 <= start_seconds < stop_seconds, got"
                f" [{self.start_seconds}, {self.stop_seconds})"
            )
        last = self.start_seconds
        for i, turn in enumerate(self.turns):
            if not isinstance(turn, TimedTurn):
                raise TypeError(f"StreamSample {self.sample_id!r}: turn {i} is not a TimedTurn")
            if not (last <= turn.time_seconds < self.stop_seconds):
                raise ValueError(
                    f"StreamSample {self.sample_id!r}: turn {i} at {turn.time_seconds} s is out of"
                    f" order or outside [{self.start_seconds}, {self.stop_seconds})"
                )
            last = turn.time_seconds


# ---------------------------------------------------------------------------------------------
# Aligning times with stored frames


def _check_pts(pts_seconds: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts_seconds, dtype=np.float64)
    if pts.ndim != 1:
        raise ValueError(f"pts_seconds must be 1-D, got shape {pts.shape}")
    if len(pts) > 1 and not bool(np.all(pts[1:] >= pts[:-1])):
        bad = int(np.argmax(pts[1:] < pts[:-1]))
        raise ValueError(
            f"pts_seconds must be sorted; pts[{bad}] = {pts[bad]} > pts[{bad + 1}] = {pts[bad + 1]}"
        )
    return pts


def turn_frame_index(pts_seconds: np.ndarray, time_seconds: float) -> int:
    """Index of the last stored frame at or before ``time_seconds``: the largest ``i`` with
    ``pts_seconds[i] <= time_seconds`` (1e-6 s slack), or -1 if the time precedes every frame.

    Frames ``0..i`` are seen before a turn at that time. The store samples, for each grid time
    ``t_k = begin + k / fps``, the frame displayed at ``t_k`` (its pts is ``<= t_k`` and, for a
    source faster than ``fps``, ``> t_(k-1)``), so for a grid time ``t_k`` this is exactly frame
    ``k`` even when the source's pts are not on the grid (29.97 fps, VFR). Caveat: a source slower
    than ``fps`` repeats frames (equal pts); the index is then that of the last repeat.
    """
    pts = _check_pts(pts_seconds)
    return int(np.searchsorted(pts, time_seconds + _PTS_TOLERANCE_SECONDS, side="right")) - 1


def frames_for_window(
    pts_seconds: np.ndarray, start_seconds: float, stop_seconds: float, *, fps: float
) -> tuple[int, int]:
    """The stored frames ``[lo, hi)`` of the window ``[start_seconds, stop_seconds)``: those with
    ``start - 1/fps < pts <= stop - 1/fps`` (1e-6 s slack), where ``fps`` is the store's
    sampling rate (the annotations' ``fps``).

    That is exactly the frames the store sampled at grid times in ``[start, stop)``: a frame
    sampled at ``t_k`` has ``t_k - 1/fps < pts <= t_k`` (it is the frame on screen at ``t_k``, and
    a source faster than ``fps`` shows a newer one at each grid time). The grid step is needed
    because the pts alone cannot tell the frame sampled for ``stop`` from the one before it: a
    29.97 fps video stores the frame at 0.967 s for the grid time 1.0 s. So a window holds
    ``round((stop - start) * fps)`` frames unless the video ends first (a window past the end is
    empty), frame ``lo`` is the one on screen at ``start`` (``turn_frame_index(pts, start)``), and
    a turn at ``t`` comes right after window row ``turn_frame_index(pts, t) - lo``. With repeated
    frames (a source slower than ``fps``) the pts no longer identify grid times; windows then
    lose the repeats at their edges.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be finite and > 0, got {fps}")
    pts = _check_pts(pts_seconds)
    step = 1.0 / fps
    lo = int(np.searchsorted(pts, start_seconds - step + _PTS_TOLERANCE_SECONDS, side="right"))
    hi = int(np.searchsorted(pts, stop_seconds - step + _PTS_TOLERANCE_SECONDS, side="right"))
    return lo, max(lo, hi)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _ceil_slot(time_seconds: float, fps: float) -> int:
    return max(0, math.ceil(time_seconds * fps - _GRID_EPS))


def _floor_slot(time_seconds: float, fps: float) -> int:
    return max(0, math.floor(time_seconds * fps + _GRID_EPS))


class _Turn(NamedTuple):
    slot: int  # frame-grid index: time = slot / fps
    role: Role
    text: str
    learn: bool


def _add_turn(turns: list[_Turn], turn: _Turn, tally: _Tally, replaced: str) -> None:
    """Append ``turn``; one on the same frame as the last replaces it (counted as ``replaced``)."""
    if turns and turns[-1].slot == turn.slot:
        turns[-1] = turn
        tally.add(replaced)
    else:
        turns.append(turn)


class _Tally:
    """Counts of skipped or adjusted entries by reason; logged once per file."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def report(self, path: Path, what: str, samples: list[StreamSample]) -> None:
        videos = len({s.video_id for s in samples})
        skipped = "; ".join(f"{n} {reason}" for reason, n in self.counts.most_common()) or "none"
        log.info(
            "%s: %d %s samples from %d videos; skipped or adjusted: %s",
            path,
            len(samples),
            what,
            videos,
            skipped,
        )


def _check_rate(fps: float, max_frames: int) -> None:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be an int >= 1, got {max_frames!r}")


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid. Valid choices: {choices}")


def _load_json(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None


def _load_records(path: Path) -> list[tuple[str, Any]]:
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
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(
            f"{path}: expected a JSON list of samples (or a .jsonl file), got {_kind(data)}"
        )
    return [(f"[{i}]", record) for i, record in enumerate(data)]


def _kind(value: object) -> str:
    text = json.dumps(value)[:60] if _jsonable(value) else repr(value)[:60]
    return f"{type(value).__name__} {text}"


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    if key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{key!r}]"


def _dict(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AnnotationError(f"{path}: {where}: expected an object, got {_kind(value)}")
    return value


def _list(value: Any, path: Path, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: {where}: expected a list, got {_kind(value)}")
    return value


def _field(obj: dict[str, Any], key: str, path: Path, where: str) -> Any:
    if key not in obj:
        raise AnnotationError(
            f"{path}: {where}: missing key {key!r} (keys present: {sorted(obj)[:12]})"
        )
    return obj[key]


def _number(value: Any, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnnotationError(f"{path}: {where}: expected a finite number, got {_kind(value)}")
    return float(value)


def _string(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{path}: {where}: expected a string, got {_kind(value)}")
    return value


def _windows(
    *,
    base_id: str,
    video_id: str,
    start_slot: int,
    stop_slot: int,
    turns: list[_Turn],
    instruction: str | None,
    max_frames: int,
    fps: float,
    system: str,
    tally: _Tally,
    what: str,
) -> list[StreamSample]:
    """Split ``[start_slot, stop_slot)`` into consecutive windows of at most ``max_frames``; each
    gets ``instruction`` (a user turn) at its first frame and the turns inside it. Windows without
    a learned turn are dropped."""
    samples = []
    for w, lo in enumerate(range(start_slot, stop_slot, max_frames)):
        hi = min(lo + max_frames, stop_slot)
        inside = [t for t in turns if lo <= t.slot < hi]
        if not any(t.learn for t in inside):
            tally.add(f"{max_frames}-frame windows without any {what}")
            continue
        if instruction is not None:
            inside.insert(0, _Turn(lo, "user", instruction, False))
        samples.append(_sample(f"{base_id}/{w}", video_id, lo, hi, inside, fps, system))
    return samples


def _sample(
    sample_id: str,
    video_id: str,
    start_slot: int,
    stop_slot: int,
    turns: list[_Turn],
    fps: float,
    system: str,
) -> StreamSample:
    return StreamSample(
        sample_id=sample_id,
        video_id=video_id,
        start_seconds=start_slot / fps,
        stop_seconds=stop_slot / fps,
        turns=tuple(TimedTurn(t.role, t.text, t.slot / fps, t.learn) for t in turns),
        system=system,
    )


# ---------------------------------------------------------------------------------------------
# Ego4D narrations


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
        data = _load_json(path)
        if isinstance(data, list):
            uids.update(_string(u, path, f"[{i}]") for i, u in enumerate(data))
            continue
        obj = _dict(data, path, "top level")
        keys = [k for k in EGO4D_SPLIT_KEYS if k in obj]
        if not keys:
            raise AnnotationError(
                f"{path}: top level: no list of items under any of {EGO4D_SPLIT_KEYS}"
                f" (keys present: {sorted(obj)[:12]})"
            )
        for key in keys:
            for i, item in enumerate(_list(obj[key], path, key)):
                where = _at(key, i)
                uid = _field(_dict(item, path, where), "video_uid", path, where)
                uids.add(_string(uid, path, _at(where, "video_uid")))
    return uids


def _ego4d_streams(
    data: Any, path: Path, tally: _Tally
) -> Iterator[tuple[str, str, list[tuple[float, str]]]]:
    """``(video_uid, stream name, [(time, raw text)])`` for each annotation pass of each video,
    from any of the three layouts described in :func:`read_ego4d_narrations`."""
    top = _dict(data, path, "top level")
    if isinstance(top.get("videos"), dict):  # all_narrations_redacted.json as Ego4D ships it
        for uid, video in top["videos"].items():
            where = _at("videos", uid)
            video = _dict(video, path, where)
            groups: dict[str, list[tuple[float, str]]] = {}
            for i, n in enumerate(_list(video.get("narrations", []), path, where + ".narrations")):
                w = _at(_at(where, "narrations"), i)
                n = _dict(n, path, w)
                ann = _string(_field(n, "_annotation_uid", path, w), path, w + "._annotation_uid")
                t = _number(_field(n, "time", path, w), path, w + ".time")
                text = _string(_field(n, "text", path, w), path, w + ".text")
                groups.setdefault(ann, []).append((t, text))
            if not groups:
                tally.add("videos without narrations")
            for ann, items in groups.items():
                yield uid, ann, items
        return
    for uid, video in top.items():
        where = f"[{uid!r}]"
        video = _dict(video, path, where)
        passes = sorted(k for k in video if k.startswith("narration_pass"))
        if passes:  # narration.json layout: one object per annotation pass
            for name in passes:
                w = _at(where, name)
                items = []
                narrations = _field(_dict(video[name], path, w), "narrations", path, w)
                for i, n in enumerate(_list(narrations, path, w + ".narrations")):
                    wi = _at(_at(w, "narrations"), i)
                    n = _dict(n, path, wi)
                    t = _number(_field(n, "timestamp_sec", path, wi), path, wi + ".timestamp_sec")
                    text = _field(n, "narration_text", path, wi)
                    text = _string(text, path, wi + ".narration_text")
                    items.append((t, text))
                yield uid, name, items
        elif video and all(isinstance(v, list) for v in video.values()):
            # VideoLLM-online's narration_stream_*.json: {annotation_uid: [{"time", "text"}]}
            for ann, narrations in video.items():
                w = _at(where, ann)
                items = []
                for i, n in enumerate(narrations):
                    wi = _at(w, i)
                    n = _dict(n, path, wi)
                    t = _number(_field(n, "time", path, wi), path, wi + ".time")
                    items.append((t, _string(_field(n, "text", path, wi), path, wi + ".text")))
                yield uid, ann, items
        else:
            tally.add("videos without a narration pass")


def read_ego4d_narrations(
    path: str | Path,
    *,
    fps: float = 2.0,
    split_uids: Collection[str] | None = None,
    exclude_uids: Collection[str] | None = None,
    refined: bool = False,
    unsure: Literal["strip", "drop"] = "strip",
    max_frames: int = 1200,
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """Ego4D narration streams, one per annotation pass, as VideoLLM-online builds them.

    Layouts read (detected per file): Ego4D's ``narration.json`` layout ``{video_uid:
    {"narration_pass_1": {"narrations": [{"timestamp_sec", "narration_text", ...}], ...},
    "narration_pass_2": ...}}`` (either pass may be missing); the ``all_narrations_redacted.json``
    layout ``{"videos": {video_uid: {"narrations": [{"time", "text", "_annotation_uid"}]}}}``,
    whose passes are its ``_annotation_uid`` groups; and VideoLLM-online's own
    ``(refined_)narration_stream_*.json`` ``{video_uid: {annotation_uid: [{"time", "text"}]}}``.
    Summaries are ignored.

    Per pass, as the reference: narrations sorted by time; each text cleaned by
    :func:`clean_narration` (``unsure="strip"`` removes the ``#unsure`` tag and keeps the rest,
    as the reference code does; ``"drop"`` drops such narrations); texts under 2 words dropped;
    ``refined=True`` then applies :func:`to_second_person`; a text equal to the previous kept one
    is dropped; each time is rounded up to the frame grid, and a narration on the same frame as
    the previous one replaces it. The stream runs from the first narration's frame to the last
    one's, with :data:`NARRATION_INSTRUCTION` (or :data:`REFINED_NARRATION_INSTRUCTION`) as an
    unlearned user turn at its first frame, and every narration a learned assistant turn.

    Deviations from the reference: a stream longer than ``max_frames`` is split into consecutive
    windows (each starting with the instruction; windows with no narration are dropped) where the
    reference keeps only the first ``max_frames`` frames; times are not clamped to the video's
    duration (unknown here; :func:`frames_for_window` clamps to the stored frames).
    ``split_uids`` keeps only those videos, ``exclude_uids`` drops those (train = all minus the
    :func:`ego4d_split_uids` of the val and test files).
    """
    _check_rate(fps, max_frames)
    _check_choice("unsure", unsure, ("strip", "drop"))
    path = Path(path)
    keep = None if split_uids is None else set(split_uids)
    drop = set() if exclude_uids is None else set(exclude_uids)
    instruction = REFINED_NARRATION_INSTRUCTION if refined else NARRATION_INSTRUCTION
    tally = _Tally()
    samples: list[StreamSample] = []
    filtered: set[str] = set()
    for uid, stream, items in _ego4d_streams(_load_json(path), path, tally):
        if (keep is not None and uid not in keep) or uid in drop:
            filtered.add(uid)
            continue
        turns: list[_Turn] = []
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
            _add_turn(
                turns,
                _Turn(_ceil_slot(time, fps), "assistant", text, True),
                tally,
                "narrations replaced by a later one on the same frame",
            )
        if not turns:
            tally.add("passes without usable narrations")
            continue
        samples += _windows(
            base_id=f"{uid}/{stream}",
            video_id=uid,
            start_slot=turns[0].slot,
            stop_slot=turns[-1].slot + 1,
            turns=turns,
            instruction=instruction,
            max_frames=max_frames,
            fps=fps,
            system=system,
            tally=tally,
            what="narration",
        )
    tally.add("videos filtered out by split_uids/exclude_uids", len(filtered))
    tally.report(path, "Ego4D narration", samples)
    return samples


# ---------------------------------------------------------------------------------------------
# COIN


def coin_task_text(cls: str) -> str:
    """A COIN class as the reference's answer: ``"PutOnHair"`` -> ``"Put on hair."``,
    ``"ReplaceSIMCard"`` -> ``"Replace sim card."`` (words split at capitals, the reference's
    acronym joins, then ``str.capitalize``, which lower-cases the acronyms again)."""
    out = "".join(f" {ch.lower()}" if ch.isupper() else ch for ch in cls)
    for letters, acronym in _COIN_ACRONYMS:
        out = out.replace(letters, acronym)
    return out.strip().capitalize() + "."


def coin_step_text(label: str) -> str:
    """A COIN step label as the reference's answer: its two label fixes, ``str.capitalize``, a
    final ``.`` (``"pour the water"`` -> ``"Pour the water."``)."""
    return _COIN_STEP_FIXES.get(label, label).capitalize() + "."


def read_coin(
    path: str | Path,
    *,
    subset: Literal["training", "testing"] | None,
    fps: float = 2.0,
    max_frames: int = 1200,
    mode: Literal["step", "task"] = "step",
    step_time: Literal["start", "end"] = "start",
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """COIN videos (``COIN.json``: ``{"database": {video_id: {"class", "subset", "start", "end",
    "duration", "annotation": [{"segment": [start_s, end_s], "label"}]}}}``) as streams.

    The window is the video's ``[start, end]`` when both are given, else ``[0, duration]``:
    from the frame at ``ceil(start)`` to the frame at ``ceil(end)`` (as the reference's COIN
    benchmarks; with only ``duration``, to the last frame before it). ``subset`` keeps only
    ``"training"`` or ``"testing"`` videos (None keeps all).

    ``mode="step"``: a step stream, split into windows of at most ``max_frames`` frames, each
    opening with an unlearned :data:`COIN_STEP_INSTRUCTIONS` user turn (our wording). Every step
    label (:func:`coin_step_text`) is a learned assistant turn at the frame-grid ceil of the
    segment's start (``step_time="start"``, the default: the paper's COIN stream "should remind
    the user when an action starts") or end (``"end"``: the reference's step recognition answers
    after the segment's frames). Times are clamped into the window; a step on the same frame as
    the previous one replaces it.

    ``mode="task"``: :data:`COIN_TASK_QUESTION` (the reference's wording) as an unlearned user turn
    at the first frame, answered by the class (:func:`coin_task_text`) at the last frame. A video
    longer than ``max_frames`` keeps its first ``max_frames`` frames and is answered at the last
    of them (the reference would cut the answer off).
    """
    _check_rate(fps, max_frames)
    _check_choice("subset", subset, ("training", "testing", None))
    _check_choice("mode", mode, ("step", "task"))
    _check_choice("step_time", step_time, ("start", "end"))
    path = Path(path)
    top = _dict(_load_json(path), path, "top level")
    database = _dict(_field(top, "database", path, "top level"), path, "database")
    tally = _Tally()
    samples: list[StreamSample] = []
    for video_id, entry in database.items():
        where = _at("database", video_id)
        entry = _dict(entry, path, where)
        video_subset = _string(_field(entry, "subset", path, where), path, where + ".subset")
        if subset is not None and video_subset != subset:
            tally.add(f"videos not in subset {subset!r}")
            continue
        start_slot, last_slot = _coin_window(entry, path, where, fps)
        if mode == "task":
            cls = _string(_field(entry, "class", path, where), path, where + ".class")
            answer_slot = last_slot
            if last_slot - start_slot + 1 > max_frames:
                answer_slot = start_slot + max_frames - 1
                tally.add(f"videos over {max_frames} frames answered at frame {max_frames}")
            turns = [
                _Turn(start_slot, "user", COIN_TASK_QUESTION, False),
                _Turn(answer_slot, "assistant", coin_task_text(cls), True),
            ]
            samples.append(
                _sample(
                    f"{video_id}/task", video_id, start_slot, answer_slot + 1, turns, fps, system
                )
            )
            continue
        steps: list[_Turn] = []
        w_ann = where + ".annotation"
        for i, step in enumerate(_list(_field(entry, "annotation", path, where), path, w_ann)):
            w = _at(w_ann, i)
            step = _dict(step, path, w)
            segment = _field(step, "segment", path, w)
            if not (isinstance(segment, list) and len(segment) == 2):
                raise AnnotationError(
                    f"{path}: {w}.segment: expected [start_s, end_s], got {_kind(segment)}"
                )
            seg_start, seg_end = (_number(s, path, f"{w}.segment") for s in segment)
            if seg_start > seg_end:
                raise AnnotationError(f"{path}: {w}.segment: start > end in {segment}")
            label = _string(_field(step, "label", path, w), path, w + ".label")
            slot = _ceil_slot(seg_start if step_time == "start" else seg_end, fps)
            steps.append(_Turn(min(max(slot, start_slot), last_slot), "assistant", label, True))
        turns = []
        for step in sorted(steps, key=lambda s: s.slot):
            _add_turn(
                turns,
                step._replace(text=coin_step_text(step.text)),
                tally,
                "steps replaced by a later one on the same frame",
            )
        if not turns:
            tally.add("videos without steps")
            continue
        samples += _windows(
            base_id=f"{video_id}/step",
            video_id=video_id,
            start_slot=start_slot,
            stop_slot=last_slot + 1,
            turns=turns,
            instruction=COIN_STEP_INSTRUCTIONS[step_time],
            max_frames=max_frames,
            fps=fps,
            system=system,
            tally=tally,
            what="step",
        )
    tally.report(path, f"COIN {mode}", samples)
    return samples


def _coin_window(entry: dict[str, Any], path: Path, where: str, fps: float) -> tuple[int, int]:
    """First and last frame-grid slot of a COIN video's window."""
    if "start" in entry and "end" in entry:
        start = _number(entry["start"], path, where + ".start")
        end = _number(entry["end"], path, where + ".end")
        if not 0 <= start <= end:
            raise AnnotationError(f"{path}: {where}: need 0 <= start <= end, got [{start}, {end}]")
        return _ceil_slot(start, fps), _ceil_slot(end, fps)
    if "duration" not in entry:
        raise AnnotationError(
            f"{path}: {where}: needs 'start' and 'end' or 'duration' for its window"
            f" (keys present: {sorted(entry)[:12]})"
        )
    duration = _number(entry["duration"], path, where + ".duration")
    if not duration > 0:
        raise AnnotationError(f"{path}: {where}.duration: must be > 0, got {duration}")
    return 0, max(0, _ceil_slot(duration, fps) - 1)


# ---------------------------------------------------------------------------------------------
# VideoLLM-online chat data

#: Keys naming a chat sample's video, in the order they are looked up. VideoLLM-online's files
#: (``goalstep_livechat_trainval_filtered_21k.json``) use ``video_uid``; the others are common.
CHAT_VIDEO_KEYS = ("video_uid", "video_id", "video")


def read_chat(
    path: str | Path,
    *,
    fps: float = 2.0,
    max_frames: int = 1200,
    system: str = LIVE_SYSTEM_PROMPT,
) -> list[StreamSample]:
    """VideoLLM-online chat samples (a JSON list, or JSON lines for a ``.jsonl`` path).

    Each sample: the video under one of :data:`CHAT_VIDEO_KEYS`, a ``conversation`` of turns
    ``{"role": "user" | "assistant", "content": str, "time": seconds, "learn": bool (optional)}``
    and optional ``start``/``end`` seconds. ``learn`` defaults to True for assistant and False for
    user turns. User times are rounded down and assistant times up to the frame grid, and never
    before the previous turn's (the reference clamps the same way); an assistant turn on the same
    frame as a preceding assistant turn replaces it; a turn whose time goes backwards ends the
    conversation there (as in the reference); empty turns and turns outside ``[start, end]`` are
    skipped. The window runs from the frame at ``ceil(start)`` (default 0) to the frame at
    ``ceil(end)`` (default: the last turn's frame). A window over ``max_frames`` frames is cut to
    its first ``max_frames`` and the later turns dropped, as the reference does: later windows
    would start in the middle of a dialogue. Samples without a learned turn are skipped.
    Sample ids are ``"{video}/{index in the file}"``.
    """
    _check_rate(fps, max_frames)
    path = Path(path)
    tally = _Tally()
    samples: list[StreamSample] = []
    for index, (where, record) in enumerate(_load_records(path)):
        record = _dict(record, path, where)
        key = next((k for k in CHAT_VIDEO_KEYS if k in record), None)
        if key is None:
            raise AnnotationError(
                f"{path}: {where}: no video key; expected one of {CHAT_VIDEO_KEYS}"
                f" (keys present: {sorted(record)[:12]})"
            )
        video_id = _string(record[key], path, _at(where, key))
        window: tuple[float, float] | None = None
        if "start" in record or "end" in record:
            start = _number(_field(record, "start", path, where), path, where + ".start")
            end = _number(_field(record, "end", path, where), path, where + ".end")
            if not 0 <= start <= end:
                raise AnnotationError(
                    f"{path}: {where}: need 0 <= start <= end, got [{start}, {end}]"
                )
            window = (start, end)
        start_slot = 0 if window is None else _ceil_slot(window[0], fps)
        w_conv = where + ".conversation"
        conversation = _list(_field(record, "conversation", path, where), path, w_conv)
        turns = _chat_turns(conversation, path, w_conv, fps, window, start_slot, tally)
        if not turns:
            tally.add("samples without usable turns")
            continue
        last_slot = (
            turns[-1].slot if window is None else max(_ceil_slot(window[1], fps), start_slot)
        )
        stop_slot = last_slot + 1
        if stop_slot - start_slot > max_frames:
            stop_slot = start_slot + max_frames
            kept = [t for t in turns if t.slot < stop_slot]
            tally.add(f"turns after the first {max_frames} frames", len(turns) - len(kept))
            turns = kept
        if not any(t.learn for t in turns):
            tally.add("samples without a learned turn")
            continue
        samples.append(
            _sample(f"{video_id}/{index}", video_id, start_slot, stop_slot, turns, fps, system)
        )
    tally.report(path, "chat", samples)
    return samples


def _chat_turns(
    conversation: list[Any],
    path: Path,
    where: str,
    fps: float,
    window: tuple[float, float] | None,
    start_slot: int,
    tally: _Tally,
) -> list[_Turn]:
    turns: list[_Turn] = []
    last_time = -math.inf
    for j, turn in enumerate(conversation):
        w = _at(where, j)
        turn = _dict(turn, path, w)
        role = _field(turn, "role", path, w)
        if role not in ROLES:
            raise AnnotationError(f"{path}: {w}.role: {role!r} is not one of {ROLES}")
        content = _string(_field(turn, "content", path, w), path, w + ".content")
        time = _number(_field(turn, "time", path, w), path, w + ".time")
        learn = turn.get("learn", role == "assistant")
        if not isinstance(learn, bool):
            raise AnnotationError(f"{path}: {w}.learn: expected true or false, got {_kind(learn)}")
        if time < last_time:
            tally.add("turns dropped after a turn whose time goes backwards", len(conversation) - j)
            break
        last_time = time
        if not content.strip():
            tally.add("empty turns")
            continue
        if window is not None and not window[0] <= time <= window[1]:
            tally.add("turns outside the sample's [start, end]")
            continue
        slot = _floor_slot(time, fps) if role == "user" else _ceil_slot(time, fps)
        slot = max(slot, turns[-1].slot if turns else 0, start_slot)
        new = _Turn(slot, role, content, learn)
        if (
            role == "assistant"
            and turns
            and turns[-1].role == "assistant"
            and turns[-1].slot == slot
        ):
            turns[-1] = new
            tally.add("assistant turns replaced by a later one on the same frame")
        else:
            turns.append(new)
    return turns
