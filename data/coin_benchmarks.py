"""COIN's five benchmark tasks (step, next, task, procedure, taskprocedure) as questions over a
video's stored frames, under two protocols. Scoring: ``models.coin_metrics``.

Which videos (both protocols; VideoLLM-online ``data/coin/coin.py``, ProVideLLM
``data/coin/coin.py``): an entry of ``COIN.json`` belongs to the split when ``split`` occurs in its
``subset`` lower-cased (``"train"`` in ``"training"``), and it is used only when the store holds
its features (``frames``); the rest are counted in ``BenchmarkSet.skipped``. Every entry's
shape is checked, used or not. The categories an answer snaps to are the lower-cased step texts
(after the two label fixes of :mod:`data.coin`) or task names of the used videos of the split
only. Steps stay in file order.

``protocol="videollm_online"`` (VideoLLM-online ``data/coin/benchmarks.py``, newest version;
times from ``data/utils.py`` ``ceil_time_by_fps``, the cap from ``data/stream.py``
``max_frames_clip``): a video lasts ``(stored frames - 1) / fps`` seconds; a time is rounded up
to the frame grid of ``fps`` and clamped into ``[0, duration]``; a window holds the frames from
its start time to its end time, both included. step: step i's segment, answered by step i.
next: step i's segment (no history), answered by step i + 1. task: the video's ``start``/``end``.
procedure / taskprocedure: step i's segment, answered by the next (at most 5) steps as numbered
lines; one remaining step reuses the next-action question (taskprocedure: its "To <task>," form).
Answers are ``str.capitalize`` plus ``"."``. An inverted segment gives an empty window (kept); a
window over ``window_frames`` frames is dropped whole: the question is asked with no frames (the
answer stays on the sample; training skips questions without frames, as the reference learns
nothing from them).
We compute on integer frame slots, rounding up as ``data.align.ceil_slot`` does (a time within
1e-6 frame above a grid point stays on it); the reference's float arithmetic
(``int(ceil(t * fps) / fps * fps)``) agrees with that for ``fps = 2`` (its setting), where every
grid time is exact in binary.

``protocol="providellm"`` (ProVideLLM ``data/coin/benchmarks.py`` and ``data/utils.py``
``fixed_sampling``): times become frame numbers of an assumed 30 fps source,
``int(seconds * 30)`` (Python truncation, float noise included), the first one at least 1.
step: step i's segment; next / procedure / taskprocedure: from the video's ``start`` to the end of
step i (history from the video start); task: ``start`` to ``end``. An end not after its start
becomes start + 1. ``num_samples`` frame numbers are picked by ``fixed_sampling``'s evaluation
rule (the centre of each of ``num_samples`` equal parts, or ``numpy.linspace`` when the window is
shorter) — for both splits: the reference draws a random frame of each part at every training
step, a fixed sample list cannot, so training here always sees the centres. Answers: step and
next the cleaned step text, task the task name (case kept), procedure and taskprocedure the
lower-cased steps joined by ``"; "`` (one step: just it).

The frame-rate change (providellm): ProVideLLM decodes the picked frames from the source video
(frame number ``k`` of the 30 fps grid -> ``int(k * source_fps / 30)``, clipped to
``[1, source frames - 1]``), i.e. the frame on screen at ``k / 30`` s. Our store holds one frame
per ``1 / fps`` s, so we take the stored frame on screen at that time, ``floor(k * fps / 30)``,
clipped to the last stored frame. The picked times are the reference's, but at ``fps = 2`` up to
15 consecutive picks land on the same stored frame: short windows then repeat frames (kept, so the
model still sees ``num_samples`` frames) where the source would give distinct ones. The
reference's lower clip (source frame 1) is frame 0 of the store, which shows it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

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
from data.align import GRID_EPS, floor_slot
from data.benchmarks import BenchmarkSample, BenchmarkSet, store_skip_reason
from data.coin import (
    _COIN_ACRONYMS,
    _COIN_STEP_FIXES,
    COIN_TASK_QUESTION,
    coin_step_text,
    coin_task_text,
)
from data.types import LIVE_SYSTEM_PROMPT, AnnotationError

log = logging.getLogger(__name__)

#: The five tasks, by the names ``BenchmarkSample.task`` carries.
COIN_BENCHMARK_TASKS: tuple[str, ...] = ("step", "next", "task", "procedure", "taskprocedure")
#: The two protocols: VideoLLM-online's and ProVideLLM's ``data/coin/benchmarks.py``.
COIN_PROTOCOLS: tuple[str, ...] = ("videollm_online", "providellm")
#: At most this many future steps are asked for (both references' ``max_num_steps``).
MAX_NEXT_STEPS = 5
#: ProVideLLM turns seconds into frame numbers at this rate (its ``anno_fps``).
PROVIDELLM_ANNOTATION_FPS = 30

STEP_QUESTION = (
    "What is the action in the video? Format your answer concisely. No extra text output."
)
NEXT_QUESTION = (
    "What is the next action for the video? Format your answer concisely. No extra text output."
)
TASK_QUESTION = COIN_TASK_QUESTION

# Adjustment reasons (BenchmarkSet.adjusted).
OVER_CAP = "stream over the frame cap: question without frames (reference rule)"
INVERTED = "segment ends before it starts: question without frames (reference rule)"
CLAMPED_END = "time after the last stored frame: clamped to it (reference rule)"
CLAMPED_START = "time before 0 s: clamped to 0 (reference rule)"
WIDENED = "window end not after its start: end set to start + 1 frame of 30 fps (ProVideLLM rule)"
CLIPPED = "sampled frames after the last stored frame: clipped to it (ProVideLLM rule)"


def coin_task_name(cls: str) -> str:
    """A COIN class as the reference's task name, acronyms kept: ``"ReplaceSIMCard"`` ->
    ``"replace SIM card"`` (the taskprocedure question's form; ``data.coin.coin_task_text`` is
    its capitalised answer)."""
    out = "".join(f" {ch.lower()}" if ch.isupper() else ch for ch in cls)
    for letters, acronym in _COIN_ACRONYMS:
        out = out.replace(letters, acronym)
    return out.strip()


def coin_step_name(label: str) -> str:
    """A COIN step label after the reference's two label fixes, case kept."""
    return _COIN_STEP_FIXES.get(label, label)


def read_coin_benchmarks(
    path: str | Path,
    *,
    split: Literal["train", "test"],
    tasks: Sequence[str],
    protocol: str,
    fps: float,
    frames: Mapping[str, int | None],
    window_frames: int = 1200,
    num_samples: int = 8,
    system: str = LIVE_SYSTEM_PROMPT,
) -> BenchmarkSet:
    """The questions of ``tasks`` (of :data:`COIN_BENCHMARK_TASKS`) for the ``split`` videos of
    ``COIN.json`` (``{"database": {video_id: {"class", "subset", "start", "end", "annotation":
    [{"segment": [start_s, end_s], "label"}]}}}``) whose features the store holds (``frames``:
    :func:`data.benchmarks.stored_frames`, at ``fps``), under ``protocol`` (of
    :data:`COIN_PROTOCOLS`; rules in the module docstring).

    Samples come task by task in the order of ``tasks``, then videos and steps in file order; ids
    are ``"{task}/{video_id}/{i}"`` (i: the step index, 0 for task). ``categories[task]`` are the
    sorted lower-case texts that task's answers snap to. ``window_frames`` is the
    videollm_online frame cap; ``num_samples`` the frames per providellm question. A malformed
    file raises :class:`~data.types.AnnotationError` naming the file and entry."""
    check_choice("split", split, ("train", "test"))
    check_choice("protocol", protocol, COIN_PROTOCOLS)
    check_rate(fps, window_frames)
    tasks = tuple(tasks)
    for task in tasks:
        check_choice("tasks entry", task, COIN_BENCHMARK_TASKS)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={list(tasks)}: each task may be named once")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    path = Path(path)
    out = BenchmarkSet(samples=[])
    videos = _read_videos(path, split, frames, out)
    steps = tuple(sorted({s.name.lower() for v in videos for s in v.steps}))
    names = tuple(sorted({v.task.lower() for v in videos}))
    maker: _VideoLLMOnline | _ProVideLLM = (
        _VideoLLMOnline(fps, window_frames)
        if protocol == "videollm_online"
        else _ProVideLLM(fps, num_samples)
    )
    for task in tasks:
        out.categories[task] = names if task == "task" else steps
        for video in videos:
            made = maker.samples(task, video, out)
            out.samples += [
                BenchmarkSample(
                    sample_id=f"{task}/{video.video_id}/{q.index}",
                    task=task,
                    video_id=video.video_id,
                    first_frame=q.first_frame,
                    stop_frame=q.stop_frame,
                    question=q.question,
                    answer=q.answer,
                    labels=q.labels,
                    system=system,
                    frame_indices=q.frame_indices,
                    meta={"protocol": protocol},
                )
                for q in made
            ]
    log.info(
        "%s: %d COIN %s questions (%s, %s) from %d videos; skipped: %s; adjusted: %s",
        path,
        len(out.samples),
        split,
        protocol,
        "/".join(tasks),
        len(videos),
        _counts(out.skipped),
        _counts(out.adjusted),
    )
    return out


def _counts(counter: Mapping[str, int]) -> str:
    return "; ".join(f"{n} x {reason}" for reason, n in counter.items()) or "none"


@dataclass(frozen=True)
class _Step:
    start_s: float
    end_s: float
    name: str  # label after the fixes, case kept


@dataclass(frozen=True)
class _Video:
    video_id: str
    cls: str  # COIN's class, "ReplaceSIMCard"
    task: str  # its coin_task_name, "replace SIM card"
    start_s: float
    end_s: float
    steps: tuple[_Step, ...]
    num_frames: int


@dataclass(frozen=True)
class _Question:
    index: int
    first_frame: int
    stop_frame: int
    question: str
    answer: str
    labels: tuple[str, ...]
    frame_indices: tuple[int, ...] | None = None


def _read_videos(
    path: Path, split: str, frames: Mapping[str, int | None], out: BenchmarkSet
) -> list[_Video]:
    """The split's videos that the store can serve, in file order (others counted as skipped).
    Every entry is checked, used or not."""
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file (the COIN annotations, COIN.json)")
    top = as_object(load_json(path), path, "top level")
    database = as_object(get_field(top, "database", path, "top level"), path, "database")
    videos = []
    for video_id, entry in database.items():
        where = at("database", video_id)
        entry = as_object(entry, path, where)
        subset = as_string(get_field(entry, "subset", path, where), path, where + ".subset")
        video = _parse_video(path, where, video_id, entry, frames.get(video_id) or 0)
        if split not in subset.lower():  # another split's video: not a question of this one
            continue
        reason = store_skip_reason(video_id, frames)
        if reason is not None:
            out.skipped[reason] += 1
            continue
        videos.append(video)
    return videos


def _parse_video(
    path: Path, where: str, video_id: str, entry: dict[str, Any], num_frames: int
) -> _Video:
    cls = as_string(get_field(entry, "class", path, where), path, where + ".class")
    start_s = as_number(get_field(entry, "start", path, where), path, where + ".start")
    end_s = as_number(get_field(entry, "end", path, where), path, where + ".end")
    w_ann = where + ".annotation"
    steps = []
    for i, step in enumerate(as_list(get_field(entry, "annotation", path, where), path, w_ann)):
        w = at(w_ann, i)
        step = as_object(step, path, w)
        segment = get_field(step, "segment", path, w)
        if not (isinstance(segment, list) and len(segment) == 2):
            raise AnnotationError(
                f"{path}: {w}.segment: expected [start_s, end_s], got {describe(segment)}"
            )
        seg_start, seg_end = (as_number(s, path, f"{w}.segment") for s in segment)
        label = as_string(get_field(step, "label", path, w), path, w + ".label")
        steps.append(_Step(seg_start, seg_end, coin_step_name(label)))
    return _Video(video_id, cls, coin_task_name(cls), start_s, end_s, tuple(steps), num_frames)


class _VideoLLMOnline:
    """VideoLLM-online's questions: windows on the frame grid of the store."""

    def __init__(self, fps: float, window_frames: int) -> None:
        self.fps = fps
        self.window_frames = window_frames

    def slot(self, time_s: float, last: int, clamped: set[str]) -> int:
        """``ceil_time_by_fps`` as a frame index: rounded up to the grid, clamped to [0, last]."""
        raw = math.ceil(time_s * self.fps - GRID_EPS)
        if raw < 0:
            clamped.add(CLAMPED_START)
            return 0
        if raw > last:
            clamped.add(CLAMPED_END)
            return last
        return raw

    def window(self, start_s: float, end_s: float, video: _Video, out: BenchmarkSet) -> range:
        """Frames from the start time's to the end time's, both included (empty when inverted or
        over the cap); each kind of clamp counted once per window."""
        last = video.num_frames - 1
        clamped: set[str] = set()
        first = self.slot(start_s, last, clamped)
        stop = self.slot(end_s, last, clamped) + 1
        for reason in sorted(clamped):
            out.adjusted[reason] += 1
        if stop <= first:
            out.adjusted[INVERTED] += 1
            return range(first, first)
        if stop - first > self.window_frames:
            out.adjusted[OVER_CAP] += 1
            return range(first, first)
        return range(first, stop)

    def samples(self, task: str, video: _Video, out: BenchmarkSet) -> list[_Question]:
        steps = video.steps
        if task == "task":
            frames = self.window(video.start_s, video.end_s, video, out)
            answer = coin_task_text(video.cls)
            return [
                _Question(
                    0, frames.start, frames.stop, TASK_QUESTION, answer, (video.task.lower(),)
                )
            ]
        made = []
        for i in range(len(steps) if task == "step" else len(steps) - 1):
            frames = self.window(steps[i].start_s, steps[i].end_s, video, out)
            if task == "step":
                question, answer_steps = STEP_QUESTION, steps[i : i + 1]
            elif task == "next":
                question, answer_steps = NEXT_QUESTION, steps[i + 1 : i + 2]
            else:
                answer_steps = steps[i + 1 : i + 1 + MAX_NEXT_STEPS]
                question = _vo_procedure_question(task, video.task, len(answer_steps))
            # coin_step_text's fixes leave a fixed name as it is: capitalize() + "."
            texts = [coin_step_text(s.name) for s in answer_steps]
            if len(texts) == 1:
                answer = texts[0]
            else:
                answer = "\n".join(f"{k}. {text}" for k, text in enumerate(texts, 1))
            labels = tuple(s.name.lower() for s in answer_steps)
            made.append(_Question(i, frames.start, frames.stop, question, answer, labels))
        return made


def _vo_procedure_question(task: str, task_name: str, num_steps: int) -> str:
    """VideoLLM-online's procedure questions ("What is the next N actions", sic)."""
    if task == "procedure":
        if num_steps == 1:
            return NEXT_QUESTION
        return (
            f"What is the next {num_steps} actions for the video? Format your answer concisely,"
            " listing each action on a new line with a number prefix. No extra text output."
        )
    if num_steps == 1:
        return (
            f"To {task_name}, what is the next action for the video? Format your answer"
            " concisely. No extra text output."
        )
    return (
        f"To {task_name}, what is the next {num_steps} actions for the video? Format your answer"
        " concisely, listing each action on a new line with a number prefix. No extra text output."
    )


class _ProVideLLM:
    """ProVideLLM's questions: ``num_samples`` frames picked on a 30 fps grid, read from the
    store's frames on screen at those times."""

    def __init__(self, fps: float, num_samples: int) -> None:
        self.fps = fps
        self.num_samples = num_samples

    def frames(
        self, start_s: float, end_s: float, video: _Video, out: BenchmarkSet
    ) -> tuple[int, ...]:
        first = max(int(start_s * PROVIDELLM_ANNOTATION_FPS), 1)
        last = int(end_s * PROVIDELLM_ANNOTATION_FPS)
        if first >= last:
            out.adjusted[WIDENED] += 1
            last = first + 1
        picks = _fixed_sampling(self.num_samples, first, last)
        last_stored = video.num_frames - 1
        stored = [floor_slot(k / PROVIDELLM_ANNOTATION_FPS, self.fps) for k in picks]
        if stored[-1] > last_stored:
            out.adjusted[CLIPPED] += 1
        return tuple(min(index, last_stored) for index in stored)

    def samples(self, task: str, video: _Video, out: BenchmarkSet) -> list[_Question]:
        steps = video.steps
        if task == "task":
            idx = self.frames(video.start_s, video.end_s, video, out)
            return [_question(0, idx, TASK_QUESTION, video.task, (video.task.lower(),))]
        made = []
        for i in range(len(steps) if task == "step" else len(steps) - 1):
            if task == "step":
                idx = self.frames(steps[i].start_s, steps[i].end_s, video, out)
                made.append(
                    _question(i, idx, STEP_QUESTION, steps[i].name, (steps[i].name.lower(),))
                )
                continue
            idx = self.frames(video.start_s, steps[i].end_s, video, out)
            if task == "next":
                nxt = steps[i + 1].name
                made.append(_question(i, idx, NEXT_QUESTION, nxt, (nxt.lower(),)))
                continue
            answer_steps = steps[i + 1 : i + 1 + MAX_NEXT_STEPS]
            answer = "; ".join(s.name.lower() for s in answer_steps)
            question = _pv_procedure_question(task, video.task.lower(), len(answer_steps))
            # The reference scores against the answer split at "; ".
            made.append(_question(i, idx, question, answer, tuple(answer.split("; "))))
        return made


def _question(
    index: int, idx: tuple[int, ...], question: str, answer: str, labels: tuple[str, ...]
) -> _Question:
    return _Question(index, idx[0], idx[-1] + 1, question, answer, labels, frame_indices=idx)


def _pv_procedure_question(task: str, task_name: str, num_steps: int) -> str:
    """ProVideLLM's procedure questions ("What are", but "what is" with the task)."""
    if num_steps == 1:
        if task == "procedure":
            return NEXT_QUESTION
        return (
            f"To {task_name}, what is the next action for the video? Format your answer"
            " concisely. No extra text output."
        )
    ask = "What are" if task == "procedure" else f"To {task_name}, what is"
    return (
        f"{ask} the next {num_steps} actions for the video? Format your answer concisely,"
        " listing each action separated by a ';'. No extra text output."
    )


def _fixed_sampling(num_samples: int, first: int, last: int) -> list[int]:
    """ProVideLLM's ``fixed_sampling`` for evaluation: of the frame numbers ``first..last``
    (inclusive), the centre of each of ``num_samples`` equal parts (the remainder at the end
    unused), or, when there are not more frames than samples, ``numpy.linspace`` floored."""
    total = last - first + 1
    if total > num_samples:
        part = total // num_samples
        return [first + k * part + part // 2 for k in range(num_samples)]
    spread = np.linspace(0, total - 1, num=num_samples, endpoint=True, dtype=int)
    return [first + int(k) for k in spread]
