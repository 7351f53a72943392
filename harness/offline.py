"""Fail fast, with a clear message, when a hub id cannot be fetched (no network, or HF_HUB_OFFLINE).

transformers and datasets retry and wait on an unreachable hub; a harness run must instead stop within
seconds and say how to point at a local copy.
"""

from __future__ import annotations

import os

from harness.errors import HarnessError

HUB_PROBE_TIMEOUT_S = 5.0


class HubUnavailableError(HarnessError, RuntimeError):
    pass


def offline_flag() -> bool:
    """HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set: nothing is fetched."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _is_cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
        return True
    except Exception:
        return False


def ensure_hub_available(repo_id: str, repo_type: str = "model", what: str = "model.path") -> None:
    """Returns if `repo_id` is in the local HF cache or the hub answers; raises HubUnavailableError otherwise."""
    if _is_cached(repo_id, repo_type):
        return
    hint = (
        f"Download it on a connected machine (`hf download {repo_id}{' --repo-type dataset' if repo_type == 'dataset' else ''}`) "
        f"and copy the HF cache, or point the config at a local copy: "
        + ("`model.source=local model.path=/path/to/dir`" if repo_type == "model" else f"`{what}=/path/to/file.json`")
    )
    if offline_flag():
        raise HubUnavailableError(
            f"{what}={repo_id!r} is a hub id, it is not in the local cache, and HF_HUB_OFFLINE is set. {hint}"
        )
    import requests
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/api/{repo_type}s/{repo_id}"
    try:
        requests.head(url, timeout=HUB_PROBE_TIMEOUT_S, allow_redirects=True)
    except requests.RequestException as exc:
        raise HubUnavailableError(
            f"{what}={repo_id!r} is a hub id, it is not in the local cache, and the hub at {constants.ENDPOINT} "
            f"cannot be reached within {HUB_PROBE_TIMEOUT_S:.0f}s ({type(exc).__name__}): this machine looks "
            f"offline. {hint}"
        ) from None
