"""The store on object storage (moto's S3 server on 127.0.0.1): the commit protocol's
guarantees, proved by sequenced tests (moto checks a condition, then stores, without a lock)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import ShardWriter, StoreLayout, init_store, load_index, open_store
from cache.storage import LocalStorage, Storage, Version, open_storage
from tests.cache.test_store import D, N, frames, write_video


def make(root: str | Path, **layout: int | str) -> str | Path:
    lay = StoreLayout(tokens_per_frame=N, dim=D, **layout)  # type: ignore[arg-type]
    init_store(root, layout=lay, features={"encoder": "test"}, provenance={})
    return root


def test_round_trip(store_root: str | Path) -> None:
    root = make(store_root, chunk_frames=4, file_frames=8, segment_frames=16)
    with ShardWriter(root, 0) as w:
        for v, n in [(1, 3), (2, 40)]:
            write_video(w, v, n)
    s = open_store(root)
    assert s.video_ids() == ["v1", "v2"]
    np.testing.assert_array_equal(s.read("v2", 13, 35)[0], frames(2, 13, 22)[0])
    assert load_index(root).videos["v1"].status == "done"
