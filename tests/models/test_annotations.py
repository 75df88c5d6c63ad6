from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from models.annotations import (
    COIN_STEP_INSTRUCTIONS,
    COIN_TASK_QUESTION,
    LIVE_SYSTEM_PROMPT,
    NARRATION_INSTRUCTION,
    REFINED_NARRATION_INSTRUCTION,
    AnnotationError,
    StreamSample,
    TimedTurn,
    clean_narration,
    coin_step_text,
    coin_task_text,
    ego4d_split_uids,
    frames_for_window,
    read_chat,
    read_coin,
    read_ego4d_narrations,
    to_second_person,
    turn_frame_index,
)
from tests.models import annotation_fixtures as fx


def user(text: str, t: float) -> TimedTurn:
    return TimedTurn("user", text, t, learn=False)


def bot(text: str, t: float, learn: bool = True) -> TimedTurn:
    return TimedTurn("assistant", text, t, learn=learn)


def sample(
    sample_id: str, video_id: str, start: float, stop: float, *turns: TimedTurn
) -> StreamSample:
    return StreamSample(sample_id, video_id, start, stop, tuple(turns), LIVE_SYSTEM_PROMPT)


# --- Ego4D narrations -------------------------------------------------------------------------

A, B = fx.EGO4D_A, fx.EGO4D_B
EXPECTED_EGO4D = [
    sample(
        f"{A}/narration_pass_1/0",
        A,
        1.0,  # first narration 0.83 s -> ceil(1.66) / 2
        5.5,  # last narration on 5.0 s, exclusive stop one frame later
        user(NARRATION_INSTRUCTION, 1.0),
        bot("C picks up the knife.", 1.0),
        bot("C cuts the onion with the knife.", 1.5),
        bot("C puts in the pan.", 3.5),  # "#unsure" stripped as the reference code does
        bot("C stirs the soup.", 4.5),  # replaced "X opens the fridge." on the same frame
        bot("C washes the plate.", 5.0),
    ),
    sample(
        f"{A}/narration_pass_2/0",
        A,
        0.0,
        1.0,
        user(NARRATION_INSTRUCTION, 0.0),
        bot("C looks around.", 0.0),
        bot("C walks to the sink.", 0.5),
    ),
    sample(
        f"{B}/narration_pass_2/0",  # video B has no pass 1
        B,
        10.5,
        12.5,
        user(NARRATION_INSTRUCTION, 10.5),
        bot("C opens the door.", 10.5),
        bot("C closes the door.", 12.0),
    ),
]


def test_ego4d_narrations_follow_the_reference(tmp_path: Path) -> None:
    assert read_ego4d_narrations(fx.ego4d_narrations_file(tmp_path)) == EXPECTED_EGO4D


def test_ego4d_skips_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = fx.ego4d_narrations_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="models.annotations"):
        read_ego4d_narrations(path)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{path}: 3 Ego4D narration samples from 2 videos;")
    for part in (
        "2 narrations under 2 words",
        "1 narrations repeating the previous one",
        "1 narrations replaced by a later one on the same frame",
        "1 videos without a narration pass",
    ):
        assert part in message


def test_ego4d_unsure_drop_mode_drops_tagged_narrations(tmp_path: Path) -> None:
    samples = read_ego4d_narrations(fx.ego4d_narrations_file(tmp_path), unsure="drop")
    texts = [t.text for t in samples[0].turns]
    assert "C puts in the pan." not in texts
    assert texts[1:] == [
        "C picks up the knife.",
        "C cuts the onion with the knife.",
        "C stirs the soup.",
        "C washes the plate.",
    ]


def test_ego4d_refined_rewrites_to_second_person(tmp_path: Path) -> None:
    samples = read_ego4d_narrations(fx.ego4d_narrations_file(tmp_path), refined=True)
    first = samples[0]
    assert first.turns[0] == user(REFINED_NARRATION_INSTRUCTION, 1.0)
    assert [(t.text, t.time_seconds) for t in first.turns[1:]] == [
        ("You pick up the knife.", 1.0),
        ("You cut the onion with the knife.", 1.5),
        ("You put in the pan.", 3.5),
        ("You stir the soup.", 4.5),
        ("You wash the plate.", 5.0),
    ]


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("#C C picks up the knife", "C picks up the knife."),
        ("#c c washes the plate.", "C washes the plate."),
        ("#O  X   opens the fridge ,", "X opens the fridge."),
        ("#C C puts #unsure in the pan", "C puts in the pan."),
        ("#unsure", "."),
        ("#C C", "C."),
    ],
)
def test_clean_narration(raw: str, cleaned: str) -> None:
    assert clean_narration(raw) == cleaned


@pytest.mark.parametrize(
    ("text", "refined"),
    [
        ("C picks up the knife.", "You pick up the knife."),
        ("C does the dishes.", "You do the dishes."),
        ("C is in the kitchen.", "You are in the kitchen."),
        ("C has a cup.", "You have a cup."),
        ("C carries a box.", "You carry a box."),
        ("C touches the tap.", "You touch the tap."),
        ("C presses the button.", "You press the button."),
        ("C fixes a pipe.", "You fix a pipe."),
        ("C unties the rope.", "You untie the rope."),
        ("C sits.", "You sit."),
        ("C then opens the door.", "You then open the door."),
        ("C slowly closes the lid.", "You slowly close the lid."),
        ("X gives C the cup.", "X gives you the cup."),
        ("C's hand holds the phone.", "Your hand holds the phone."),
        ("Man A approaches C.", "Man A approaches you."),
        ("A woman walks in.", "A woman walks in."),
    ],
)
def test_to_second_person(text: str, refined: str) -> None:
    assert to_second_person(text) == refined


def test_ego4d_other_layouts_give_the_same_streams(tmp_path: Path) -> None:
    # all_narrations_redacted.json: the passes are the _annotation_uid groups.
    redacted = read_ego4d_narrations(fx.ego4d_redacted_file(tmp_path))
    assert [s.sample_id for s in redacted] == [
        f"{A}/{fx.PASS_1_UID}/0",
        f"{A}/{fx.PASS_2_UID}/0",
        f"{B}/{fx.PASS_2_UID}/0",
    ]
    same_ids = [
        dataclasses.replace(s, sample_id=e.sample_id)
        for s, e in zip(redacted, EXPECTED_EGO4D, strict=True)
    ]
    assert same_ids == EXPECTED_EGO4D

    (stream,) = read_ego4d_narrations(fx.ego4d_stream_file(tmp_path), refined=True)
    assert stream == dataclasses.replace(
        EXPECTED_EGO4D[2],
        sample_id=f"{B}/{fx.PASS_2_UID}/0",
        turns=(
            user(REFINED_NARRATION_INSTRUCTION, 10.5),
            bot("You open the door.", 10.5),
            bot("You close the door.", 12.0),
        ),
    )


def test_ego4d_long_stream_is_split_into_windows(tmp_path: Path) -> None:
    samples = read_ego4d_narrations(fx.ego4d_long_file(tmp_path))
    uid = fx.EGO4D_LONG
    # Frames 20 .. 3801 (10.0 s .. 1900.5 s) in windows of 1200 frames; the third window
    # [1210 s, 1810 s) has no narration and is dropped.
    assert samples == [
        sample(
            f"{uid}/narration_pass_1/0",
            uid,
            10.0,
            610.0,
            user(NARRATION_INSTRUCTION, 10.0),
            bot("C enters the garage.", 10.0),
            bot("C picks up a wrench.", 500.0),
        ),
        sample(
            f"{uid}/narration_pass_1/1",
            uid,
            610.0,
            1210.0,
            user(NARRATION_INSTRUCTION, 610.0),
            bot("C tightens the bolt.", 650.0),
        ),
        sample(
            f"{uid}/narration_pass_1/3",
            uid,
            1810.0,
            1901.0,
            user(NARRATION_INSTRUCTION, 1810.0),
            bot("C closes the garage door.", 1900.5),
        ),
    ]
    assert all(round((s.stop_seconds - s.start_seconds) * 2) <= 1200 for s in samples)
    short = read_ego4d_narrations(fx.ego4d_long_file(tmp_path), fps=1.0, max_frames=100_000)
    assert [(s.start_seconds, s.stop_seconds, len(s.turns)) for s in short] == [(10.0, 1902.0, 5)]


def test_ego4d_split_filtering(tmp_path: Path) -> None:
    val = [
        fx.ego4d_benchmark_file(tmp_path / "goalstep_val.json", "videos", [B]),
        fx.ego4d_benchmark_file(tmp_path / "fho_lta_val.json", "clips", ["not-narrated"]),
        fx.ego4d_benchmark_file(tmp_path / "fho_sta_val.json", "annotations", [B]),
    ]
    uids_file = fx.write_json(tmp_path / "narration_stream_video_uids_val.json", [A])
    assert ego4d_split_uids(val) == {B, "not-narrated"}
    assert ego4d_split_uids([uids_file]) == {A}

    path = fx.ego4d_narrations_file(tmp_path)
    val_uids = ego4d_split_uids(val)
    assert read_ego4d_narrations(path, split_uids=val_uids) == EXPECTED_EGO4D[2:]
    assert read_ego4d_narrations(path, exclude_uids=val_uids) == EXPECTED_EGO4D[:2]


def test_ego4d_split_file_without_items_is_an_error(tmp_path: Path) -> None:
    path = fx.write_json(tmp_path / "odd.json", {"version": "v2", "items": []})
    with pytest.raises(AnnotationError, match=r"odd\.json: top level: no list of items under"):
        ego4d_split_uids([path])
    bad = fx.write_json(tmp_path / "bad.json", {"videos": [{"video_uid": 7}]})
    with pytest.raises(AnnotationError, match=r"bad\.json: videos\[0\]\.video_uid: expected a str"):
        ego4d_split_uids([bad])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "top level: expected an object, got list"),
        (
            {A: {"narration_pass_1": {"narrations": [{"narration_text": "#C C sits"}]}}},
            rf"\['{A}'\]\.narration_pass_1\.narrations\[0\]: missing key 'timestamp_sec'",
        ),
        (
            {
                A: {
                    "narration_pass_1": {
                        "narrations": [{"timestamp_sec": 1.0, "narration_text": None}]
                    }
                }
            },
            rf"\['{A}'\]\.narration_pass_1\.narrations\[0\]\.narration_text: expected a string, "
            "got NoneType null",
        ),
        (
            {
                A: {
                    "narration_pass_1": {
                        "narrations": [{"timestamp_sec": "1.0", "narration_text": "x"}]
                    }
                }
            },
            r"narrations\[0\]\.timestamp_sec: expected a finite number, got str",
        ),
        (
            {A: {"narration_pass_1": {"summaries": []}}},
            rf"\['{A}'\]\.narration_pass_1: missing key 'narrations' "
            r"\(keys present: \['summaries'\]\)",
        ),
        (
            {"videos": {A: {"narrations": [{"time": 1.0, "text": "#C C sits"}]}}},
            rf"videos\['{A}'\]\.narrations\[0\]: missing key '_annotation_uid'",
        ),
    ],
)
def test_ego4d_malformed_files_name_the_entry(tmp_path: Path, data: object, message: str) -> None:
    path = fx.write_json(tmp_path / "narration.json", data)
    with pytest.raises(AnnotationError, match=message) as info:
        read_ego4d_narrations(path)
    assert str(info.value).startswith(f"{path}: ")


def test_invalid_json_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "narration.json"
    path.write_text('{"a": [1, 2,]}')
    with pytest.raises(AnnotationError, match=r"narration\.json: not valid JSON .* line 1"):
        read_ego4d_narrations(path)
    good = fx.ego4d_narrations_file(tmp_path)
    with pytest.raises(ValueError, match=r"unsure='keep' is not valid. Valid choices"):
        read_ego4d_narrations(good, unsure="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fps must be a finite number > 0"):
        read_ego4d_narrations(good, fps=0)
    with pytest.raises(ValueError, match="max_frames must be an int >= 1"):
        read_ego4d_narrations(good, max_frames=0)


# --- COIN -------------------------------------------------------------------------------------

SANDWICH, SIM, PAPER = fx.COIN_SANDWICH, fx.COIN_SIM, fx.COIN_PAPER
START = COIN_STEP_INSTRUCTIONS["start"]


def test_coin_step_stream_at_step_starts(tmp_path: Path) -> None:
    samples = read_coin(fx.coin_file(tmp_path), subset="training")
    assert samples == [
        sample(
            f"{SANDWICH}/step/0",
            SANDWICH,
            12.5,  # start 12.4 -> ceil(24.8) / 2
            59.0,  # end 58.2 -> 58.5, the frame at the end included
            user(START, 12.5),
            bot("Cut bread.", 12.5),
            bot("Spread butter.", 21.5),
            bot("Put the ingredients together.", 40.5),
        ),
        sample(
            f"{PAPER}/step/0",
            PAPER,
            0.0,
            30.5,  # no start/end: [0, duration 30.3) -> last frame at 30.0 s
            user(START, 0.0),
            bot("Crop and fold paper.", 3.5),  # the reference's label fix
        ),
    ]


def test_coin_step_stream_at_step_ends_and_subsets(tmp_path: Path) -> None:
    path = fx.coin_file(tmp_path)
    (sandwich, _) = read_coin(path, subset="training", step_time="end")
    assert [(t.text, t.time_seconds) for t in sandwich.turns] == [
        (COIN_STEP_INSTRUCTIONS["end"], 12.5),
        ("Cut bread.", 21.0),
        ("Spread butter.", 40.0),
        ("Put the ingredients together.", 58.5),
    ]
    (sim,) = read_coin(path, subset="testing")
    assert sim == sample(
        f"{SIM}/step/0",
        SIM,
        0.0,
        10.5,
        user(START, 0.0),
        bot("Take out the old card.", 1.0),
        bot("Insert the new card.", 4.0),
    )
    assert [s.video_id for s in read_coin(path, subset=None)] == [SANDWICH, SIM, PAPER]


def test_coin_task_mode(tmp_path: Path) -> None:
    samples = read_coin(fx.coin_file(tmp_path), subset=None, mode="task")
    assert samples == [
        sample(
            f"{SANDWICH}/task",
            SANDWICH,
            12.5,
            59.0,
            user(COIN_TASK_QUESTION, 12.5),
            bot("Make sandwich.", 58.5),
        ),
        sample(
            f"{SIM}/task",
            SIM,
            0.0,
            10.5,
            user(COIN_TASK_QUESTION, 0.0),
            bot("Replace sim card.", 10.0),
        ),
        sample(
            f"{PAPER}/task",
            PAPER,
            0.0,
            30.5,
            user(COIN_TASK_QUESTION, 0.0),
            bot("Make paper wind mill.", 30.0),
        ),
    ]
    assert coin_task_text("MakeRJ45Cable") == "Make rj45 cable."
    assert coin_step_text("pour the water") == "Pour the water."


def test_coin_long_video_windows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = fx.coin_file(tmp_path)
    # 40 frames = 20 s: sandwich frames 25..117 -> [12.5, 32.5), [32.5, 52.5), [52.5, 59.0).
    steps = read_coin(path, subset="training", max_frames=40)
    sandwich = [s for s in steps if s.video_id == SANDWICH]
    assert [(s.sample_id, s.start_seconds, s.stop_seconds) for s in sandwich] == [
        (f"{SANDWICH}/step/0", 12.5, 32.5),
        (f"{SANDWICH}/step/1", 32.5, 52.5),
    ]
    assert sandwich[1].turns == (user(START, 32.5), bot("Put the ingredients together.", 40.5))
    with caplog.at_level(logging.INFO, logger="models.annotations"):
        tasks = read_coin(path, subset="training", mode="task", max_frames=40)
    assert tasks[0] == sample(
        f"{SANDWICH}/task",
        SANDWICH,
        12.5,
        32.5,
        user(COIN_TASK_QUESTION, 12.5),
        bot("Make sandwich.", 32.0),
    )
    # The sandwich (93 frames) and the paper windmill (61 frames) are both over 40.
    assert "2 videos over 40 frames answered at frame 40" in caplog.records[-1].getMessage()
    assert "1 videos not in subset 'training'" in caplog.records[-1].getMessage()


def _coin_with(tmp_path: Path, **changes: object) -> Path:
    entry = fx.coin_video(
        "vid",
        "MakeTea",
        1,
        "training",
        [fx.coin_step("1", 1.0, 2.0, "boil water")],
        start=0.0,
        end=5.0,
        duration=6.0,
    )
    entry.update(changes)
    for key in [k for k, v in entry.items() if v is None]:
        del entry[key]
    return fx.write_json(tmp_path / "COIN.json", {"database": {"vid": entry}})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"annotation": [{"id": "1", "segment": [5.0], "label": "x"}]},
            r"database\.vid\.annotation\[0\]\.segment: expected \[start_s, end_s\], "
            r"got list \[5\.0\]",
        ),
        (
            {"annotation": [{"id": "1", "segment": [5.0, 4.0], "label": "x"}]},
            r"database\.vid\.annotation\[0\]\.segment: start > end",
        ),
        (
            {"annotation": [{"id": "1", "segment": [1.0, 2.0]}]},
            r"database\.vid\.annotation\[0\]: missing key 'label'",
        ),
        (
            {"start": None, "end": None, "duration": None},
            r"database\.vid: needs 'start' and 'end' or 'duration'",
        ),
        ({"subset": 3}, r"database\.vid\.subset: expected a string, got int 3"),
        ({"annotation": "none"}, r"database\.vid\.annotation: expected a list, got str"),
    ],
)
def test_coin_malformed_entries_name_the_entry(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    path = _coin_with(tmp_path, **changes)
    with pytest.raises(AnnotationError, match=message) as info:
        read_coin(path, subset=None)
    assert str(info.value).startswith(f"{path}: ")


def test_coin_bad_file_and_arguments(tmp_path: Path) -> None:
    path = fx.write_json(tmp_path / "COIN.json", {"taxonomy": {}})
    with pytest.raises(AnnotationError, match=r"top level: missing key 'database'"):
        read_coin(path, subset=None)
    good = fx.coin_file(tmp_path)
    with pytest.raises(ValueError, match=r"subset='train' is not valid. Valid choices: "):
        read_coin(good, subset="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mode='next' is not valid"):
        read_coin(good, subset=None, mode="next")  # type: ignore[arg-type]


# --- Chat -------------------------------------------------------------------------------------

EXPECTED_CHAT = [
    sample(
        "grp-1/0",
        "grp-1",
        0.0,
        150.0,
        user("What am I doing right now?", 6.0),  # floor(12.6) / 2
        bot("You're slicing tomatoes.", 6.5),  # ceil(12.6) / 2
        bot("You've finished slicing the tomatoes.", 136.0),
        user("Is the pepper important?", 149.5),
        bot("Yes, it enhances the flavor.", 149.5, learn=False),
    ),
    sample(
        "grp-2/1",
        "grp-2",
        10.0,
        20.5,
        user("What next?", 10.0),
        bot("Boil the water now.", 10.5),
        bot("Add the noodles.", 20.0),
    ),
    sample("grp-3/2", "grp-3", 0.0, 4.0, user("What do you see?", 2.0), bot("A kitchen.", 3.5)),
]


@pytest.mark.parametrize("jsonl", [False, True])
def test_chat_times_learn_flags_and_windows(
    tmp_path: Path, jsonl: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="models.annotations"):
        assert read_chat(fx.chat_file(tmp_path, jsonl=jsonl)) == EXPECTED_CHAT
    message = caplog.records[-1].getMessage()
    for part in (
        "3 chat samples from 3 videos",
        "2 turns dropped after a turn whose time goes backwards",
        "1 turns outside the sample's [start, end]",
        "1 assistant turns replaced by a later one on the same frame",
        "1 empty turns",
    ):
        assert part in message


def test_chat_is_cut_at_max_frames(tmp_path: Path) -> None:
    first = read_chat(fx.chat_file(tmp_path), max_frames=100)[0]
    assert first == dataclasses.replace(
        EXPECTED_CHAT[0], stop_seconds=50.0, turns=EXPECTED_CHAT[0].turns[:2]
    )


def test_chat_user_turns_never_precede_the_previous_turn(tmp_path: Path) -> None:
    path = fx.write_json(
        tmp_path / "chat.json",
        [
            {
                "video_uid": "v",
                "conversation": [
                    fx.chat_turn("assistant", "Hello.", 3.1),  # ceil -> 3.5
                    fx.chat_turn("user", "Hi?", 3.2),  # floor 3.0, clamped to 3.5
                    fx.chat_turn("assistant", "Yes.", 3.2, learn=False),
                ],
            }
        ],
    )
    assert read_chat(path) == [
        sample("v/0", "v", 0.0, 4.0, bot("Hello.", 3.5), user("Hi?", 3.5), bot("Yes.", 3.5, False))
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"uid": "v", "conversation": []},
            r"\[0\]: no video key; expected one of \('video_uid', 'video_id', 'video'\)",
        ),
        (
            {"video_uid": "v", "conversation": [{"role": "system", "content": "x", "time": 0}]},
            r"\[0\]\.conversation\[0\]\.role: 'system' is not one of \('user', 'assistant'\)",
        ),
        (
            {"video_uid": "v", "conversation": [{"role": "user", "content": "x"}]},
            r"\[0\]\.conversation\[0\]: missing key 'time'",
        ),
        (
            {
                "video_uid": "v",
                "conversation": [{"role": "user", "content": "x", "time": 1, "learn": "yes"}],
            },
            r"\[0\]\.conversation\[0\]\.learn: expected true or false, got str \"yes\"",
        ),
        (
            {"video_uid": "v", "start": 5.0, "end": 1.0, "conversation": []},
            r"\[0\]: need 0 <= start <= end, got \[5\.0, 1\.0\]",
        ),
        ({"video_uid": "v", "start": 1.0, "conversation": []}, r"\[0\]: missing key 'end'"),
    ],
)
def test_chat_malformed_samples_name_the_entry(
    tmp_path: Path, record: dict[str, object], message: str
) -> None:
    path = fx.write_json(tmp_path / "chat.json", [record])
    with pytest.raises(AnnotationError, match=message) as info:
        read_chat(path)
    assert str(info.value).startswith(f"{path}: ")


def test_chat_bad_files(tmp_path: Path) -> None:
    path = fx.write_json(tmp_path / "chat.json", {"video_uid": "v", "conversation": []})
    with pytest.raises(AnnotationError, match=r"chat\.json: expected a JSON list of samples"):
        read_chat(path)
    lines = tmp_path / "chat.jsonl"
    lines.write_text(json.dumps(fx.chat_samples()[0]) + "\n{oops\n")
    with pytest.raises(AnnotationError, match=r"chat\.jsonl: line 2: not valid JSON"):
        read_chat(lines)


# --- Alignment with stored frames -------------------------------------------------------------


def test_frame_mapping_on_an_exact_grid() -> None:
    pts = np.arange(10) / 2  # a store of a 5 s video at 2 FPS whose source is on the grid
    assert frames_for_window(pts, 1.0, 3.0, fps=2) == (2, 6)
    assert frames_for_window(pts, 0.0, 5.0, fps=2) == (0, 10)
    assert turn_frame_index(pts, 1.0) == 2  # the frame shown at 1.0 s is seen before the turn
    assert turn_frame_index(pts, 1.49) == 2
    assert turn_frame_index(pts, 99.0) == 9


def test_frame_mapping_with_source_pts_off_the_grid() -> None:
    # 29.97 fps source sampled at 2 FPS: the frame on screen at k/2 has pts <= k/2.
    pts = np.array([np.floor(k / 2 * 30000 / 1001) * 1001 / 30000 for k in range(6)])
    assert pts[2] == pytest.approx(0.96763, abs=1e-5)
    assert frames_for_window(pts, 0.5, 1.5, fps=2) == (1, 3)  # not 3 frames: pts[3] < 1.5
    assert frames_for_window(pts, 0.0, 3.0, fps=2) == (0, 6)
    assert turn_frame_index(pts, 1.0) == 2
    assert turn_frame_index(pts, 0.99) == 2  # off-grid time: the frame on screen then
    assert turn_frame_index(pts, 0.96) == 1


def test_frame_mapping_edges() -> None:
    pts = 0.2 + np.arange(4) / 2  # the stream begins at 0.2 s
    assert turn_frame_index(pts, 0.1) == -1  # before every frame
    assert frames_for_window(pts, 0.0, 1.0, fps=2) == (0, 1)  # nothing is shown at 0.0 s
    assert frames_for_window(pts, 1.5, 5.0, fps=2) == (2, 4)  # 1.2 s on screen at 1.5 s; clamped
    assert frames_for_window(pts, 5.0, 6.0, fps=2) == (4, 4)  # past the end: empty
    assert frames_for_window(pts, 1.0, 1.0, fps=2) == (1, 1)  # empty window
    with pytest.raises(ValueError, match=r"pts_seconds must be sorted; pts\[1\] = 1.0 > pts\[2\]"):
        turn_frame_index(np.array([0.0, 1.0, 0.5]), 1.0)
    with pytest.raises(ValueError, match="fps must be finite and > 0"):
        frames_for_window(pts, 0.0, 1.0, fps=0.0)


def test_stream_samples_align_with_a_store(tmp_path: Path) -> None:
    # Every turn of every sample lands inside its window's frames.
    (sandwich, _) = read_coin(fx.coin_file(tmp_path), subset="training")
    pts = np.arange(0, 73.56, 0.5)
    lo, hi = frames_for_window(pts, sandwich.start_seconds, sandwich.stop_seconds, fps=2)
    assert (lo, hi) == (25, 118)
    rows = [turn_frame_index(pts, t.time_seconds) - lo for t in sandwich.turns]
    assert rows == [0, 0, 18, 56]
    assert all(0 <= r < hi - lo for r in rows)


def test_results_validate_themselves() -> None:
    with pytest.raises(ValueError, match="TimedTurn.role must be one of"):
        TimedTurn("system", "x", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time_seconds must be finite and >= 0"):
        TimedTurn("user", "x", float("nan"))
    with pytest.raises(
        ValueError, match=r"turn 0 at 3.0 s is out of order or outside \[0.0, 2.0\)"
    ):
        sample("s", "v", 0.0, 2.0, bot("late", 3.0))
    with pytest.raises(ValueError, match="need 0 <= start_seconds < stop_seconds"):
        sample("s", "v", 2.0, 2.0)
