"""Ego4D narration streams (data/ego4d.py) against hand-written expectations."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from data import (
    AnnotationError,
    clean_narration,
    ego4d_split_uids,
    read_ego4d_narrations,
    to_second_person,
)
from data.ego4d import NARRATION_INSTRUCTION, REFINED_NARRATION_INSTRUCTION
from tests.data import annotation_fixtures as fx
from tests.data.annotation_fixtures import bot, sample, user

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
    with caplog.at_level(logging.INFO, logger="data.ego4d"):
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
    short = read_ego4d_narrations(fx.ego4d_long_file(tmp_path), fps=1.0, window_frames=100_000)
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
    with pytest.raises(ValueError, match="window_frames must be an int >= 1"):
        read_ego4d_narrations(good, window_frames=0)
