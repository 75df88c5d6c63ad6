"""COIN step streams and task questions (data/coin.py) against hand-written expectations."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data import AnnotationError, read_coin
from data.coin import COIN_STEP_INSTRUCTIONS, COIN_TASK_QUESTION, coin_step_text, coin_task_text
from tests.data import annotation_fixtures as fx
from tests.data.annotation_fixtures import bot, sample, user

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
    steps = read_coin(path, subset="training", window_frames=40)
    sandwich = [s for s in steps if s.video_id == SANDWICH]
    assert [(s.sample_id, s.start_seconds, s.stop_seconds) for s in sandwich] == [
        (f"{SANDWICH}/step/0", 12.5, 32.5),
        (f"{SANDWICH}/step/1", 32.5, 52.5),
    ]
    assert sandwich[1].turns == (user(START, 32.5), bot("Put the ingredients together.", 40.5))
    with caplog.at_level(logging.INFO, logger="data.coin"):
        tasks = read_coin(path, subset="training", mode="task", window_frames=40)
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
