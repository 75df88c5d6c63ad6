"""The feature cache: a Zarr v3 store of per-frame tokens plus a journalled index.

Imports nothing from the other streamfeat packages.
"""

from cache.ids import validate_video_id, video_id_for
from cache.journal import Index, VideoEntry, load_index
from cache.layout import StoreLayout
from cache.reader import Store, open_store
from cache.store import StoreMismatchError, init_store, read_store_attrs
from cache.writer import ShardLockedError, ShardWriter

__all__ = [
    "Index",
    "ShardLockedError",
    "ShardWriter",
    "Store",
    "StoreLayout",
    "StoreMismatchError",
    "VideoEntry",
    "init_store",
    "load_index",
    "open_store",
    "read_store_attrs",
    "validate_video_id",
    "video_id_for",
]
