"""The on-disk cache of API answers, so re-running a closed-model baseline costs no requests.

One JSON file per request, ``<dir>/<first 2 hex>/<key>.json``. It holds the raw
``top_logprobs`` list, not label masses: changing the label mapping never needs a refetch. The
key covers what determines the answer (endpoint, model, request body) and nothing else (not
the API key). A file that cannot be read back as a valid entry counts as missing and is
overwritten by the next fetch: a crash mid-write or a stray edit must not stop a run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from jdjudge.outputs import atomic_file

FORMAT = 1


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/jdjudge/api``, or ``~/.cache/jdjudge/api`` without that variable."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "jdjudge" / "api"


def request_key(base_url: str, model: str, body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what determines the answer."""
    material = {"base_url": base_url.rstrip("/"), "model": model, "request": body}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.json"


def valid_top_logprobs(value: Any) -> bool:
    """A non-empty list of {token: str, logprob: number (not NaN)} objects."""
    if not isinstance(value, list) or not value:
        return False
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return False
        logprob = entry.get("logprob")
        if isinstance(logprob, bool) or not isinstance(logprob, int | float):
            return False
        if math.isnan(logprob):
            return False
    return True


def load(cache_dir: Path, key: str) -> list[dict[str, Any]] | None:
    """The cached top_logprobs for ``key``; None when absent or unreadable."""
    try:
        data = json.loads(entry_path(cache_dir, key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    top = data.get("top_logprobs")
    return top if valid_top_logprobs(top) else None


def store(cache_dir: Path, key: str, top_logprobs: list[dict[str, Any]], **meta: Any) -> None:
    """Write one entry atomically (a concurrent reader never sees half a file)."""
    path = entry_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "key": key, **meta, "top_logprobs": top_logprobs}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
