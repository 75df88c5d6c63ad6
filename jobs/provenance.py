"""What produced a store: package versions and the machine."""

from __future__ import annotations

import platform
import socket
import time
from importlib import metadata
from typing import Any

PACKAGES = ("torch", "torchcodec", "transformers", "open_clip_torch", "zarr", "numpy", "hydra-core")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict[str, Any]:
    return {"versions": package_versions(), "host": socket.gethostname(), "time": time.time()}
