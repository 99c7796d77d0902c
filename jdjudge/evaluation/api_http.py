"""The HTTP side of the API baseline: one chat request per item, with retries, over urllib.

Transient failures (429, 5xx, lost connections, timeouts) are retried with exponential
backoff, honouring a server's Retry-After; anything else stops the run at once, since
repeating a bad request or a bad key only burns quota. 401/403 are the user's to fix (a
UsageError), the rest are RunFailed, with the server's own error message.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from jdjudge.entry import RunFailed, UsageError
from jdjudge.evaluation import api_cache


@dataclass(frozen=True)
class ApiSettings:
    """Where to send requests and how hard to push; the key itself lives in ``key_env``."""

    base_url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    top_logprobs: int = 20
    concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 60.0
    cache_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"


RETRYABLE = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5  # first retry waits this long, doubling per retry
BACKOFF_CAP_S = 20.0
RETRY_AFTER_CAP_S = 120.0  # a server's Retry-After is honoured, up to this
ANSWER_PATH = ("choices", 0, "logprobs", "content", 0, "top_logprobs")


def wait(stop: threading.Event, seconds: float) -> None:
    """Backoff pause; returns early once the run is stopping. Tests replace it."""
    stop.wait(seconds)


def is_loopback(base_url: str) -> bool:
    """A local server (a test stub, a local vLLM) may be used without an API key."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_delay(retry: int, retry_after: str | None) -> float:
    """Seconds before retry number ``retry`` (0-based): the server's Retry-After when given
    (seconds or an HTTP date), else exponential backoff with a little jitter, so that many
    workers backing off together do not return in lockstep."""
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                when = parsedate_to_datetime(retry_after)
                seconds = when.timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = math.nan
        if not math.isnan(seconds):
            return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)
    delay = min(BACKOFF_BASE_S * 2**retry, BACKOFF_CAP_S)
    return delay * (1 + 0.1 * random.random())


def server_message(payload: bytes) -> str:
    """``error.message`` of an OpenAI error body, else the start of the body."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return text[:200]


def parse_answer(payload: bytes, item: str, model: str) -> list[dict[str, Any]]:
    """The first answer token's top_logprobs; RunFailed naming what is missing."""
    where = f"API response for item {item!r}"
    try:
        node: Any = json.loads(payload)
    except ValueError:
        raise RunFailed(f"{where} is not JSON: {payload[:200]!r}") from None
    path = ""
    for step in ANSWER_PATH:
        path += f"[{step}]" if isinstance(step, int) else f".{step}" if path else step
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
        if node is None:
            raise RunFailed(
                f"{where} has no {path} (does model {model!r} return logprobs on this API?)"
            )
    if not api_cache.valid_top_logprobs(node):
        raise RunFailed(f"{where}: {path} is not a non-empty list of {{token, logprob}}")
    return node


class Client:
    """Sends one item's request with retries; shared by the worker threads."""

    def __init__(self, settings: ApiSettings, key: str | None, cache_dir: Path) -> None:
        self.settings, self.cache_dir = settings, cache_dir
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        # A loopback server is never reached through the environment's HTTP proxy.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(settings.base_url) else []
        self.opener = urllib.request.build_opener(*handlers)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0

    def _fatal(self, item: str, status: int, detail: str) -> None:
        said = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in (401, 403):
            sent = "the key in" if "Authorization" in self.headers else "no key was sent; set"
            raise UsageError(
                f"the API at {self.settings.base_url} refused item {item!r} ({said}); "
                f"check the API key ({sent} the environment variable {self.settings.key_env})"
            )
        raise RunFailed(f"API request for item {item!r} failed ({said})")

    def fetch(self, item: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        data = json.dumps(body).encode("utf-8")
        attempts = self.settings.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if self.stop.is_set():
                raise RunFailed("stopped: another request failed")
            request = urllib.request.Request(self.settings.url, data, self.headers, method="POST")
            with self.lock:
                self.requests += 1
            retry_after = None
            try:
                with self.opener.open(request, timeout=self.settings.timeout_s) as response:
                    payload = response.read()
                return parse_answer(payload, item, self.settings.model)
            except urllib.error.HTTPError as error:
                try:
                    detail = server_message(error.read())
                except (OSError, http.client.HTTPException):
                    detail = ""
                if error.code not in RETRYABLE:
                    self._fatal(item, error.code, detail)
                last = f"HTTP {error.code}" + (f" ({detail})" if detail else "")
                retry_after = error.headers.get("Retry-After") if error.headers else None
            except (OSError, http.client.HTTPException) as error:  # connection lost, timeout
                last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            if attempt + 1 < attempts:
                wait(self.stop, retry_delay(attempt, retry_after))
        raise RunFailed(f"API request for item {item!r} failed after {attempts} attempts: {last}")

    def fetch_and_store(self, item: str, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        """Each answer is cached as it arrives, so an interrupted run keeps what it paid for."""
        top = self.fetch(item, body)
        try:
            api_cache.store(
                self.cache_dir, key, top, base_url=self.settings.base_url, model=body["model"]
            )
        except OSError as error:
            raise RunFailed(f"cannot write the API cache in {self.cache_dir}: {error}") from None
        return top
