"""Time -> frame alignment: annotation times onto the frame grid ``k / fps``, and windows and turns
onto a store's frames (their ``pts_seconds``). The rules are in docs/data.md ("Times")."""

from __future__ import annotations

import math

import numpy as np

#: Frame-grid tolerance, in frames: keeps float noise (``1.0000000000000002``) on its grid point.
GRID_EPS = 1e-6
# Frames are matched to times with this slack, in seconds (pts are float64 from integer ticks).
_PTS_TOLERANCE_SECONDS = 1e-6


def ceil_slot(time_seconds: float, fps: float) -> int:
    """The first grid slot ``k`` (time ``k / fps``) at or after ``time_seconds``."""
    return max(0, math.ceil(time_seconds * fps - GRID_EPS))


def floor_slot(time_seconds: float, fps: float) -> int:
    """The last grid slot ``k`` (time ``k / fps``) at or before ``time_seconds``."""
    return max(0, math.floor(time_seconds * fps + GRID_EPS))


def on_grid(time_seconds: float, fps: float) -> bool:
    """Whether ``time_seconds`` is a grid time ``k / fps`` (within :data:`GRID_EPS` frames)."""
    slots = time_seconds * fps
    return abs(slots - round(slots)) <= GRID_EPS


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
    sampling rate (the rate the annotations were read at).

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
