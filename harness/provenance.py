"""Where a run's data and weights came from, and the content identity that enters its run id.

A task (and a model config) lists the sources it reads before reading them: local files, hub datasets or
models, or data bundled with an installed package. For the result file each source is described (a local
file's path, size and sha256; a hub id with its resolved revision; a package and its version); for the run id
only the content counts (the sha256, the hub revision, the package version), never the path, so a result is
found again from another checkout or data folder, and a hub run and a local run with different rows never
share one.

sha256 of large files (a 7B checkpoint, a 170K-record json) is cached by (path, size, mtime) under the harness
cache, so hashing costs once per file version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class LocalFile:
    role: str          # what the file is to the run: "train/boolq", "test/gsm8k", "weights"
    path: Path

    def describe(self) -> dict:
        stat = self.path.stat()
        return {"role": self.role, "kind": "file", "path": str(self.path.resolve()), "size": stat.st_size,
                "sha256": sha256_file(self.path)}

    def content_id(self) -> str:
        return f"sha256:{sha256_file(self.path)}"


@dataclass(frozen=True)
class Hub:
    role: str
    repo: str
    repo_type: str = "dataset"      # or "model"
    config: str | None = None
    split: str | None = None
    revision: str | None = None     # a pinned revision; None: the hub's current one, resolved once
    # the config key that points at a local copy instead (`task.train_file`), named when the hub cannot be reached
    local_key: str | None = None

    def resolved_revision(self) -> str:
        return self.revision or hub_revision(self.repo, self.repo_type, self.local_key)

    def describe(self) -> dict:
        return {"role": self.role, "kind": f"hub_{self.repo_type}", "id": self.repo, "config": self.config,
                "split": self.split, "revision": self.resolved_revision()}

    def content_id(self) -> str:
        return f"hub:{self.repo}:{self.config or ''}:{self.split or ''}@{self.resolved_revision()}"


@dataclass(frozen=True)
class Packaged:
    """Data bundled with an installed package (scikit-learn's digits)."""

    role: str
    package: str

    def describe(self) -> dict:
        return {"role": self.role, "kind": "package", "package": self.package, "version": metadata.version(self.package)}

    def content_id(self) -> str:
        return f"package:{self.package}=={metadata.version(self.package)}"


@dataclass(frozen=True)
class PinnedUrl:
    """A file at a URL that names a commit (RoSA's SQL data): the URL is its content identity."""

    role: str
    url: str

    def describe(self) -> dict:
        return {"role": self.role, "kind": "url", "url": self.url}

    def content_id(self) -> str:
        return f"url:{self.url}"


Source = LocalFile | Hub | Packaged | PinnedUrl


def describe(sources: list[Source]) -> list[dict]:
    return [s.describe() for s in sources]


def fingerprint(sources: list[Source]) -> dict[str, str]:
    """role -> content id: what enters the run id."""
    return {s.role: s.content_id() for s in sources}


# --- hashing -------------------------------------------------------------------------------------------------

_CACHE_LOCK = threading.Lock()


def _cache_file() -> Path:
    from harness.cache import cache_dir

    return cache_dir() / "sha256.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    key = f"{path}|{size}|{mtime_ns}"
    cached = _read_cache().get(key)
    if cached:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    with _CACHE_LOCK:  # read-modify-write of a small JSON map, written atomically (concurrent runs may race: last wins)
        cache = _read_cache()
        cache[key] = value
        target = _cache_file()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, target)
    return value


def sha256_file(path: str | Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


# --- hub revisions -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def hub_revision(repo: str, repo_type: str = "dataset", local_key: str | None = None) -> str:
    """The commit a hub id resolves to now: the local cache's when offline or cached, else the hub's answer.

    `ensure_hub_available` runs first, so an unreachable, uncached id fails with its clear message."""
    from huggingface_hub import snapshot_download

    from harness.offline import HUB_PROBE_TIMEOUT_S, ensure_hub_available, offline_flag

    ensure_hub_available(repo, repo_type, what=local_key or f"{repo_type} {repo}")
    try:
        cached = Path(snapshot_download(repo, repo_type=repo_type, local_files_only=True))
        if cached.parent.name == "snapshots":
            return cached.name
    except Exception:  # not in the hub cache (datasets may keep their own cache): ask the hub
        pass
    if offline_flag():
        return "unresolved"
    from huggingface_hub import HfApi

    try:
        return HfApi().repo_info(repo, repo_type=repo_type, timeout=HUB_PROBE_TIMEOUT_S).sha or "unresolved"
    except Exception:
        return "unresolved"
