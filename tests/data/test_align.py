"""Annotation times onto stored frames (data/align.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data import frames_for_window, read_coin, turn_frame_index
from tests.data import annotation_fixtures as fx

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
