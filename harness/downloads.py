"""Files fetched by URL at a pinned commit (RoSA's SQL data in its repository), cached once, failing fast offline.

A URL that names a commit cannot change, so the URL itself is the file's content identity (`PinnedUrl` in
harness.provenance) and the cached copy is never fetched again. Neither the hub libraries nor `datasets` fetch
plain repository files, hence this small helper (requests, with a short timeout, as harness.offline probes the
hub). Offline (no network, or harness.offline's flags set) a missing file stops the run at once, naming the URL and the
config key that points at a local copy instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from harness.errors import DataError
from harness.offline import offline_flag

TIMEOUT_S = 10.0


def cache_path(url: str) -> Path:
    from harness.cache import cache_dir

    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "downloads" / digest / url.rsplit("/", 1)[-1]


def fetched(url: str, local_key: str) -> Path:
    """The cached copy of `url`, downloaded the first time; DataError naming `local_key` when it cannot be."""
    path = cache_path(url)
    if path.is_file():
        return path
    hint = f"download it on a connected machine and set {local_key}=/path/to/{url.rsplit('/', 1)[-1]}"
    if offline_flag():
        raise DataError(f"{url} is not cached and this run is offline (HF_HUB_OFFLINE): {hint}")
    import requests

    try:
        response = requests.get(url, timeout=TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DataError(f"{url} cannot be fetched ({type(exc).__name__}): {hint}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as part:  # (atomic: never a half file)
        part.write(response.content)
    os.replace(part.name, path)
    return path
