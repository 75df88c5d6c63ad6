"""VideoLLM-online chat samples (data/chat.py) against hand-written expectations."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from data import AnnotationError, read_chat
from tests.data import annotation_fixtures as fx
from tests.data.annotation_fixtures import bot, sample, user

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
    with caplog.at_level(logging.INFO, logger="data.chat"):
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


def test_chat_is_cut_at_window_frames(tmp_path: Path) -> None:
    first = read_chat(fx.chat_file(tmp_path), window_frames=100)[0]
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
