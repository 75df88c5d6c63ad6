"""The feature cache: a Zarr v3 store of per-frame tokens plus a journalled index.

Everything other packages need about a store's layout is exported here (docs/cache.md).
A store is a folder or an object-storage URL (``s3://``, ``gs://``, ``az://``): see
docs/object-storage.md. Imports nothing from the other streamfeat packages.
"""

from cache.ids import validate_video_id, video_id_for
from cache.journal import Index, JournalDamageWarning, VideoEntry, load_index, read_journal
from cache.launches import launch_folders, read_launches, record_launch, register_launch_folder
from cache.layout import (
    StoreLayout,
    journal_path,
    journal_paths,
    lock_path,
    shard_dir,
    shard_folders,
    shard_of_journal,
)
from cache.objectlog import ShardFencedError
from cache.reader import Store, open_store
from cache.segments import (
    DamagedDataError,
    MissingDataError,
    adopt_segments,
    check_segment,
    layout_mismatch,
    piece_mismatches,
    segment_attrs,
    stray_entries,
    unindexed_segments,
)
from cache.storage import StorageError, is_url, open_storage
from cache.store import StoreMismatchError, init_store, read_store_attrs, store_exists
from cache.writer import (
    ShardLockedError,
    ShardWriter,
    disk_full,
    fingerprint,
    holding_shard,
    mark_damaged,
    shard_locked,
)

__all__ = [
    "DamagedDataError",
    "Index",
    "JournalDamageWarning",
    "MissingDataError",
    "ShardFencedError",
    "ShardLockedError",
    "ShardWriter",
    "StorageError",
    "Store",
    "StoreLayout",
    "StoreMismatchError",
    "VideoEntry",
    "adopt_segments",
    "check_segment",
    "disk_full",
    "fingerprint",
    "holding_shard",
    "init_store",
    "is_url",
    "journal_path",
    "journal_paths",
    "launch_folders",
    "layout_mismatch",
    "load_index",
    "lock_path",
    "mark_damaged",
    "open_storage",
    "open_store",
    "piece_mismatches",
    "read_journal",
    "read_launches",
    "read_store_attrs",
    "record_launch",
    "register_launch_folder",
    "segment_attrs",
    "shard_dir",
    "shard_folders",
    "shard_locked",
    "shard_of_journal",
    "store_exists",
    "stray_entries",
    "unindexed_segments",
    "validate_video_id",
    "video_id_for",
]
