"""The sample types validate themselves (data/types.py)."""

from __future__ import annotations

import pytest

from data import TimedTurn
from tests.data.annotation_fixtures import bot, sample


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
