"""The harness's cache folder (`HARNESS_CACHE`, else ~/.cache/peft-harness): sha256 of large files, GGUF
conversions, downloads. A leaf module, so that what writes there imports nothing above it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "peft-harness"))
