"""Frames at an exact rate, resize/pad, encoders -> per-frame tokens. Knows nothing of the cache."""
