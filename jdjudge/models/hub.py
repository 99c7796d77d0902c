"""Where a model lives: a local directory, or a Hugging Face Hub id (cached or fetched).

Two failures used to cost a user dearly: a mistyped local path was sent to the Hub (and came
back as a puzzling repo-id error), and an unreachable Hub was retried for about a minute
before failing. Here a path-like name that does not exist fails at once, and an id that is
not in the local cache is only downloaded after a single short probe says the Hub answers.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

# What a hub download needs: weights, config, tokenizer files.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "merges.txt", "vocab.*")
HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = ("1", "true", "yes", "on")


class HubUnavailable(OSError):
    """A hub id that is not cached, with the Hub disabled, unreachable or refusing it."""


def looks_like_local_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything absolute, starting with ``.`` or
    ``~``, or with more components is meant as a directory."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HTTP request to the endpoint (proxies from the environment apply): any answer,
    even an error status, means the Hub is there."""
    try:
        urllib.request.urlopen(hub_endpoint(), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def _cached_snapshot(hub_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                hub_id, revision=revision, allow_patterns=list(HUB_PATTERNS), local_files_only=True
            )
        )
    except Exception:  # not cached, or not a valid id: the online path explains which
        return None


def resolve_model_dir(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is; a hub id from the cache, else fetched.

    Raises FileNotFoundError for a path that is not a directory and HubUnavailable (with the
    reason) for a hub id that cannot be had. The messages name neither the model nor what to
    do: the caller prefixes its flag (``--model=…: ``) and adds the fix that flag allows.
    """
    name = str(path_or_hub_id)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError("is a file, not a model directory")
    if looks_like_local_path(name):
        raise FileNotFoundError("no such directory")
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    if hub_offline():
        raise HubUnavailable(
            "not a local directory nor in the Hugging Face cache, and the Hub is disabled "
            "(HF_HUB_OFFLINE=1)"
        )
    if not hub_reachable():
        raise HubUnavailable(
            "not a local directory nor in the Hugging Face cache, and the Hub "
            f"({hub_endpoint()}) is unreachable"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(name, revision=revision, allow_patterns=list(HUB_PATTERNS))
    except Exception as err:  # unknown repo, invalid id, gated, a dropped connection...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HubUnavailable(
            f"the Hugging Face Hub could not provide it ({type(err).__name__}: {reason})"
        ) from None
    return Path(local)
