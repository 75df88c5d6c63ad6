"""COIN benchmark questions (data/coin_benchmarks.py) against expectations worked out by hand
from the references' rules: VideoLLM-online and ProVideLLM ``data/coin/benchmarks.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data.benchmarks import NOT_DONE_IN_STORE, NOT_IN_STORE, BenchmarkSample
from data.coin import coin_task_text
from data.coin_benchmarks import (
    CLAMPED_END,
    CLAMPED_START,
    CLIPPED,
    INVERTED,
    OVER_CAP,
    WIDENED,
    coin_task_name,
    read_coin_benchmarks,
)
from data.types import LIVE_SYSTEM_PROMPT, AnnotationError

ALL = ("step", "next", "task", "procedure", "taskprocedure")
STEP_Q = "What is the action in the video? Format your answer concisely. No extra text output."
NEXT_Q = (
    "What is the next action for the video? Format your answer concisely. No extra text output."
)
TASK_Q = (
    "What is the overall activity in the video? Format your answer concisely. No extra text output."
)
LINES = "Format your answer concisely, listing each action on a new line with a number prefix."
SEMI = "Format your answer concisely, listing each action separated by a ';'."
END = " No extra text output."

# Stored frames per video at 2 fps (the last frame of A is 19, at 9.5 s; of B 7; of E 4).
FRAMES: dict[str, int | None] = {"vidA": 20, "vidB": 8, "vidD": None, "vidE": 5}


def step(start_s: float, end_s: float, label: str) -> dict[str, Any]:
    return {"id": "1", "segment": [start_s, end_s], "label": label}


def video(cls: str, subset: str, start: float, end: float, steps: list[Any]) -> dict[str, Any]:
    return {
        "recipe_type": 1,
        "class": cls,
        "subset": subset,
        "start": start,
        "end": end,
        "duration": 100.0,
        "annotation": steps,
        "video_url": "https://example.invalid",
    }


def coin_json(tmp_path: Path, database: dict[str, Any] | None = None) -> Path:
    """A (train): steps not in time order, one inverted, one past the stored end, both label
    fixes, class with an acronym. B (test): a step before 0 s. C (train): not in the store.
    D (train): failed in the store. E (test): TV acronym, one step."""
    if database is None:
        database = {
            "vidA": video(
                "ReplaceSIMCard",
                "training",
                0.3,
                9.0,
                [
                    step(5.25, 6.0, "insert the new card"),
                    step(4.1, 4.9, "take out the old SIM card"),
                    step(7.0, 6.0, "try to press gun head, spray residual old grease"),
                    step(9.2, 30.0, "process (crop, fold) paper"),
                ],
            ),
            "vidB": video(
                "MakeSandwich",
                "testing",
                0.0,
                3.0,
                [step(-1.0, 1.0, "cut bread"), step(1.5, 2.5, "spread butter")],
            ),
            "vidC": video("ChangeTire", "training", 0.0, 5.0, [step(1.0, 2.0, "c only step")]),
            "vidD": video("ChangeTire", "training", 0.0, 5.0, [step(1.0, 2.0, "d only step")]),
            "vidE": video("InstallTVBracket", "testing", 0.0, 2.0, [step(0.5, 1.0, "drill holes")]),
        }
    path = tmp_path / "COIN.json"
    path.write_text(json.dumps({"database": database}))
    return path


def q(
    sample_id: str,
    first: int,
    stop: int,
    question: str,
    answer: str,
    labels: tuple[str, ...],
    frame_indices: tuple[int, ...] | None = None,
    protocol: str = "videollm_online",
) -> BenchmarkSample:
    task, video_id, _ = sample_id.split("/")
    return BenchmarkSample(
        sample_id=sample_id,
        task=task,
        video_id=video_id,
        first_frame=first,
        stop_frame=stop,
        question=question,
        answer=answer,
        labels=labels,
        system=LIVE_SYSTEM_PROMPT,
        frame_indices=frame_indices,
        meta={"protocol": protocol},
    )


# Names after the fixes, as labels (lower-case) and as VideoLLM-online answers.
INSERT, TAKE = "insert the new card", "take out the old sim card"
GREASE = "try to press gun head to spray residual old grease"
PAPER = "crop and fold paper"
A_INSERT, A_TAKE = "Insert the new card.", "Take out the old sim card."
A_GREASE, A_PAPER = "Try to press gun head to spray residual old grease.", "Crop and fold paper."


def test_task_names_keep_acronyms() -> None:
    assert coin_task_name("ReplaceSIMCard") == "replace SIM card"
    assert coin_task_name("InstallTVBracket") == "install TV bracket"
    assert coin_task_name("PutOnHair") == "put on hair"
    assert coin_task_text("ReplaceSIMCard") == "Replace sim card."


def test_videollm_online_train(tmp_path: Path) -> None:
    found = read_coin_benchmarks(
        coin_json(tmp_path),
        split="train",
        tasks=ALL,
        protocol="videollm_online",
        fps=2.0,
        frames=FRAMES,
        window_frames=10,
    )
    three = f"What is the next 3 actions for the video? {LINES}{END}"
    two = f"What is the next 2 actions for the video? {LINES}{END}"
    t_three = f"To replace SIM card, what is the next 3 actions for the video? {LINES}{END}"
    t_two = f"To replace SIM card, what is the next 2 actions for the video? {LINES}{END}"
    t_one = (
        "To replace SIM card, what is the next action for the video?"
        " Format your answer concisely. No extra text output."
    )
    assert found.samples == [
        # step i: its own segment; 5.25 s -> ceil(10.5) = frame 11, 6.0 s -> frame 12 included
        q("step/vidA/0", 11, 13, STEP_Q, A_INSERT, (INSERT,)),
        q("step/vidA/1", 9, 11, STEP_Q, A_TAKE, (TAKE,)),  # 4.1 -> 9, 4.9 -> 10
        q("step/vidA/2", 14, 14, STEP_Q, A_GREASE, (GREASE,)),  # 7.0 -> 14 > 6.0 -> 12: empty
        q("step/vidA/3", 19, 20, STEP_Q, A_PAPER, (PAPER,)),  # 9.2 -> 19; 30 s -> 19 (9.5 s)
        # next: step i's segment, step i + 1's answer, in file order
        q("next/vidA/0", 11, 13, NEXT_Q, A_TAKE, (TAKE,)),
        q("next/vidA/1", 9, 11, NEXT_Q, A_GREASE, (GREASE,)),
        q("next/vidA/2", 14, 14, NEXT_Q, A_PAPER, (PAPER,)),
        # task: 0.3 s -> 1 .. 9.0 s -> 18 is 18 frames > 10: dropped whole
        q("task/vidA/0", 1, 1, TASK_Q, "Replace sim card.", ("replace sim card",)),
        q(
            "procedure/vidA/0",
            11,
            13,
            three,
            f"1. {A_TAKE}\n2. {A_GREASE}\n3. {A_PAPER}",
            (TAKE, GREASE, PAPER),
        ),
        q("procedure/vidA/1", 9, 11, two, f"1. {A_GREASE}\n2. {A_PAPER}", (GREASE, PAPER)),
        q("procedure/vidA/2", 14, 14, NEXT_Q, A_PAPER, (PAPER,)),  # one step left
        q(
            "taskprocedure/vidA/0",
            11,
            13,
            t_three,
            f"1. {A_TAKE}\n2. {A_GREASE}\n3. {A_PAPER}",
            (TAKE, GREASE, PAPER),
        ),
        q("taskprocedure/vidA/1", 9, 11, t_two, f"1. {A_GREASE}\n2. {A_PAPER}", (GREASE, PAPER)),
        q("taskprocedure/vidA/2", 14, 14, t_one, A_PAPER, (PAPER,)),
    ]
    steps = (PAPER, INSERT, TAKE, GREASE)  # sorted; C's and D's steps are not in the store
    assert found.categories == {
        "step": steps,
        "next": steps,
        "task": ("replace sim card",),
        "procedure": steps,
        "taskprocedure": steps,
    }
    assert found.skipped == {
        NOT_IN_STORE: 1,
        NOT_DONE_IN_STORE: 1,
    }
    # inverted: step, next, procedure, taskprocedure windows of step 2; clamp: step 3's window
    assert found.adjusted == {INVERTED: 4, CLAMPED_END: 1, OVER_CAP: 1}


def test_videollm_online_test_split(tmp_path: Path) -> None:
    found = read_coin_benchmarks(
        coin_json(tmp_path),
        split="test",
        tasks=("task", "taskprocedure", "step"),
        protocol="videollm_online",
        fps=2.0,
        frames=FRAMES,
    )
    assert found.samples == [
        q("task/vidB/0", 0, 7, TASK_Q, "Make sandwich.", ("make sandwich",)),  # 0 .. 3.0 s
        q("task/vidE/0", 0, 5, TASK_Q, "Install tv bracket.", ("install tv bracket",)),
        q(
            "taskprocedure/vidB/0",
            0,  # -1.0 s -> clamped to 0
            3,
            "To make sandwich, what is the next action for the video?"
            " Format your answer concisely. No extra text output.",
            "Spread butter.",
            ("spread butter",),
        ),
        q("step/vidB/0", 0, 3, STEP_Q, "Cut bread.", ("cut bread",)),
        q("step/vidB/1", 3, 6, STEP_Q, "Spread butter.", ("spread butter",)),
        q("step/vidE/0", 1, 3, STEP_Q, "Drill holes.", ("drill holes",)),
    ]
    assert found.categories == {
        "task": ("install tv bracket", "make sandwich"),
        "taskprocedure": ("cut bread", "drill holes", "spread butter"),
        "step": ("cut bread", "drill holes", "spread butter"),
    }
    assert found.skipped == {}  # the other split's videos are not this split's questions
    assert found.adjusted == {CLAMPED_START: 2}


def test_videollm_online_cap_and_five_steps(tmp_path: Path) -> None:
    steps = [step(0.0, 2.0, "s0"), step(0.0, 2.5, "s1")]
    steps += [step(k, k + 0.5, f"s{k}") for k in range(2, 7)]
    path = coin_json(tmp_path, {"v": video("MakeCoffee", "training", 0.0, 10.0, steps)})
    found = read_coin_benchmarks(
        path,
        split="train",
        tasks=("step", "procedure"),
        protocol="videollm_online",
        fps=2.0,
        frames={"v": 30},
        window_frames=5,
    )
    got = [(s.sample_id, s.first_frame, s.stop_frame) for s in found.samples]
    assert got == [
        ("step/v/0", 0, 5),  # 0 .. 2.0 s: 5 frames, at the cap
        ("step/v/1", 0, 0),  # 0 .. 2.5 s: 6 frames, over it
        ("step/v/2", 4, 6),
        ("step/v/3", 6, 8),
        ("step/v/4", 8, 10),
        ("step/v/5", 10, 12),
        ("step/v/6", 12, 14),
        ("procedure/v/0", 0, 5),
        ("procedure/v/1", 0, 0),
        ("procedure/v/2", 4, 6),
        ("procedure/v/3", 6, 8),
        ("procedure/v/4", 8, 10),
        ("procedure/v/5", 10, 12),
    ]
    proc = found.samples[7:]
    assert [s.question.split(" for")[0] for s in proc] == [
        "What is the next 5 actions",
        "What is the next 5 actions",
        "What is the next 4 actions",
        "What is the next 3 actions",
        "What is the next 2 actions",
        "What is the next action",
    ]
    assert proc[0].answer == "1. S1.\n2. S2.\n3. S3.\n4. S4.\n5. S5."
    assert proc[0].labels == ("s1", "s2", "s3", "s4", "s5")
    assert proc[1].labels == ("s2", "s3", "s4", "s5", "s6")
    assert found.adjusted == {OVER_CAP: 2}


PV = "providellm"


def test_providellm_train(tmp_path: Path) -> None:
    found = read_coin_benchmarks(
        coin_json(tmp_path),
        split="train",
        tasks=ALL,
        protocol=PV,
        fps=2.0,
        frames=FRAMES,
        num_samples=4,
    )
    grease_paper = f"{GREASE}; {PAPER}"
    all3 = f"{TAKE}; {grease_paper}"

    def pv(sid: str, idx: tuple[int, ...], question: str, answer: str, labels: Any) -> Any:
        return q(sid, idx[0], idx[-1] + 1, question, answer, labels, idx, protocol=PV)

    # Frame numbers at 30 fps, int(seconds * 30), then the stored frame on screen at k / 30 s:
    # floor(k / 15). Video A starts at 0.3 s -> 9.
    hist_6 = (2, 4, 7, 10)  # 9..180: 172 frames, parts of 43, centres 30 73 116 159
    hist_49 = (1, 4, 6, 8)  # 9..int(4.9 * 30) = 147: parts of 34, centres 26 60 94 128
    assert found.samples == [
        # 157..180: parts of 6, centres 160 166 172 178
        pv("step/vidA/0", (10, 11, 11, 11), STEP_Q, INSERT, (INSERT,)),
        # int(4.1 * 30) = 122 (float noise), ..147: parts of 6, centres 125 131 137 143
        pv("step/vidA/1", (8, 8, 9, 9), STEP_Q, "take out the old SIM card", (TAKE,)),
        # 210 >= 180: end becomes 211; 2 frames -> linspace 0 0 0 1
        pv("step/vidA/2", (14, 14, 14, 14), STEP_Q, GREASE, (GREASE,)),
        # 276..900: centres 354 510 666 822 -> 23 34 44 54, clipped to the last frame 19
        pv("step/vidA/3", (19, 19, 19, 19), STEP_Q, PAPER, (PAPER,)),
        pv("next/vidA/0", hist_6, NEXT_Q, "take out the old SIM card", (TAKE,)),
        pv("next/vidA/1", hist_49, NEXT_Q, GREASE, (GREASE,)),
        pv("next/vidA/2", hist_6, NEXT_Q, PAPER, (PAPER,)),
        # 9..270: parts of 65, centres 41 106 171 236
        pv("task/vidA/0", (2, 7, 11, 15), TASK_Q, "replace SIM card", ("replace sim card",)),
        pv(
            "procedure/vidA/0",
            hist_6,
            f"What are the next 3 actions for the video? {SEMI}{END}",
            all3,
            (TAKE, GREASE, PAPER),
        ),
        pv(
            "procedure/vidA/1",
            hist_49,
            f"What are the next 2 actions for the video? {SEMI}{END}",
            grease_paper,
            (GREASE, PAPER),
        ),
        pv("procedure/vidA/2", hist_6, NEXT_Q, PAPER, (PAPER,)),
        pv(
            "taskprocedure/vidA/0",
            hist_6,
            f"To replace sim card, what is the next 3 actions for the video? {SEMI}{END}",
            all3,
            (TAKE, GREASE, PAPER),
        ),
        pv(
            "taskprocedure/vidA/1",
            hist_49,
            f"To replace sim card, what is the next 2 actions for the video? {SEMI}{END}",
            grease_paper,
            (GREASE, PAPER),
        ),
        pv(
            "taskprocedure/vidA/2",
            hist_6,
            "To replace sim card, what is the next action for the video?"
            " Format your answer concisely. No extra text output.",
            PAPER,
            (PAPER,),
        ),
    ]
    assert found.categories["task"] == ("replace sim card",)
    assert found.categories["procedure"] == (PAPER, INSERT, TAKE, GREASE)
    assert found.adjusted == {WIDENED: 1, CLIPPED: 1}
    assert found.skipped == {
        NOT_IN_STORE: 1,
        NOT_DONE_IN_STORE: 1,
    }


def test_providellm_test_split_first_frame(tmp_path: Path) -> None:
    found = read_coin_benchmarks(
        coin_json(tmp_path),
        split="test",
        tasks=("step",),
        protocol=PV,
        fps=2.0,
        frames=FRAMES,
        num_samples=4,
    )
    assert [(s.sample_id, s.frame_indices, s.answer) for s in found.samples] == [
        # int(-30.0) -> at least 1; 1..30: parts of 7, centres 4 11 18 25
        ("step/vidB/0", (0, 0, 1, 1), "cut bread"),
        ("step/vidB/1", (3, 3, 4, 4), "spread butter"),  # 45..75: centres 48 55 62 69
        ("step/vidE/0", (1, 1, 1, 1), "drill holes"),  # 15..30: centres 17 21 25 29
    ]
    assert [(s.first_frame, s.stop_frame, s.num_frames) for s in found.samples] == [
        (0, 2, 4),
        (3, 5, 4),
        (1, 2, 4),
    ]
    assert found.adjusted == {}


def test_annotation_errors_name_file_and_entry(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        split="train", tasks=ALL, protocol="videollm_online", fps=2.0, frames=FRAMES
    )
    missing = tmp_path / "nope.json"
    with pytest.raises(AnnotationError, match="nope.json: no such file"):
        read_coin_benchmarks(missing, **kw)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"videos": {}}))
    with pytest.raises(AnnotationError, match=r"bad.json: top level: missing key 'database'"):
        read_coin_benchmarks(bad, **kw)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"class": 3}, r"database\.vidC\.class: expected a string"),
        ({"annotation": {}}, r"database\.vidC\.annotation: expected a list"),
        (
            {"annotation": [{"segment": [1.0], "label": "x"}]},
            r"database\.vidC\.annotation\[0\]\.segment: expected \[start_s, end_s\]",
        ),
        (
            {"annotation": [{"segment": [1.0, 2.0], "label": None}]},
            r"database\.vidC\.annotation\[0\]\.label: expected a string",
        ),
    ]
    for change, message in cases:
        entry = video("ChangeTire", "training", 0.0, 5.0, [step(1.0, 2.0, "x")])
        entry.update(change)
        path = coin_json(tmp_path, {"vidC": entry})  # checked although not in the store
        with pytest.raises(AnnotationError, match=message):
            read_coin_benchmarks(path, **kw)
    no_end = video("ChangeTire", "training", 0.0, 5.0, [])
    del no_end["end"]
    with pytest.raises(AnnotationError, match=r"database\.vidA: missing key 'end'"):
        read_coin_benchmarks(coin_json(tmp_path, {"vidA": no_end}), **kw)


def test_bad_arguments_list_choices(tmp_path: Path) -> None:
    path = coin_json(tmp_path)
    kw: dict[str, Any] = dict(split="train", protocol="videollm_online", fps=2.0, frames=FRAMES)
    with pytest.raises(ValueError, match="Valid choices"):
        read_coin_benchmarks(path, tasks=("steps",), **kw)
    with pytest.raises(ValueError, match="named once"):
        read_coin_benchmarks(path, tasks=("step", "step"), **kw)
    with pytest.raises(ValueError, match="Valid choices"):
        read_coin_benchmarks(path, **{**kw, "protocol": "live", "tasks": ALL})
    with pytest.raises(ValueError, match="num_samples"):
        read_coin_benchmarks(path, tasks=ALL, num_samples=0, **{**kw, "protocol": PV})
