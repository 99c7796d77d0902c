"""Closed-model baseline: a chat model behind an OpenAI-compatible API judges each record, and
the top-k logprobs of its first answer token become a label distribution.

Only one token is asked for (``max_tokens=1``, temperature 0) and only its k most likely
alternatives come back, so the distribution is what lies inside the top k: ``label_mass`` is
how much of the model's probability the label tokens hold and ``outside_mass`` how much the
top k missed altogether. A label with no token in the top k gets the most the answer allows
it (``fill_absent``), never a zero that would make its KL infinite. Answers are cached per request (``api_cache``), so a rerun, or a change
of the label mapping, sends nothing. The standard library speaks HTTP: no client dependency.
"""

from __future__ import annotations

import math
import os
import sys
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jdjudge.data.prompts import instruction, verbalizers
from jdjudge.data.records import JudgmentRecord
from jdjudge.entry import UsageError
from jdjudge.evaluation import api_cache
from jdjudge.evaluation.api_http import ApiSettings, Client, is_loopback
from jdjudge.outputs import check_writable_dir

ABSENT_FLOOR = 1e-9


@dataclass(frozen=True)
class ApiJudgments:
    """Per item (input order): q float64[N, K] renormalized over the labels, the label and
    outside-the-top-k masses before that, which items had no label token at all, and how
    many labels were absent from the top k (filled in by ``fill_absent``)."""

    q: np.ndarray
    label_mass: np.ndarray
    outside_mass: np.ndarray
    no_label: np.ndarray
    filled: np.ndarray  # int[N]: labels absent from the top k, given their bound (fill_absent)
    requests: int
    cached: int


def request_body(record: JudgmentRecord, settings: ApiSettings) -> dict[str, Any]:
    """The chat request whose first answer token is the judgment."""
    try:
        content = record.fields["prompt"] if record.task == "raw" else instruction(record)[0]
    except ValueError as error:  # e.g. a likert dimension with no criteria text
        raise UsageError(f"record {record.id!r}: {error}") from None
    return {
        "model": settings.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": settings.top_logprobs,
    }


def label_table(task: str, labels: Sequence[str]) -> dict[str, int]:
    """Normalized surface (stripped, casefolded) -> label index: each label's answer words and
    its own name, so "Yes", " yes" and "YES" all count for the label answered by "yes"."""
    table: dict[str, int] = {}
    for k, surfaces in enumerate(verbalizers(task, labels, chat_template=True)):
        for surface in [*surfaces, labels[k]]:
            word = surface.strip().casefold()
            if word and table.setdefault(word, k) != k:
                raise UsageError(
                    f"task {task!r}: labels {labels[table[word]]!r} and {labels[k]!r} are both "
                    f"answered by {word!r}; an API answer could not tell them apart"
                )
    return table


def label_masses(
    top: Sequence[dict[str, Any]], table: dict[str, int], k: int
) -> tuple[np.ndarray, float]:
    """(probability per label float64[K], total probability of the returned top k)."""
    masses = np.zeros(k)
    total = 0.0
    for entry in top:
        p = math.exp(min(float(entry["logprob"]), 0.0))
        total += p
        index = table.get(entry["token"].strip().casefold())
        if index is not None:
            masses[index] += p
    return masses, total


def fill_absent(masses: np.ndarray, top: Sequence[dict[str, Any]], outside: float) -> np.ndarray:
    """Labels with no token in the top k get the largest mass the answer allows them: no more
    than the least likely token returned (else it would be in the top k), and together no more
    than the mass outside the top k. A zero would make KL(p ‖ q) infinite wherever a human
    chose that label; the floor of 1e-9 only keeps it finite when the top k held everything."""
    absent = masses == 0
    if not absent.any():
        return masses
    smallest = min(math.exp(min(float(e["logprob"]), 0.0)) for e in top)
    bound = max(min(smallest, outside / int(absent.sum())), ABSENT_FLOOR)
    return np.where(absent, bound, masses)


def _check(settings: ApiSettings) -> None:
    url = urllib.parse.urlsplit(settings.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"API base URL {settings.base_url!r}: expected http(s)://host[:port]/...")
    if not settings.model:
        raise UsageError("API model: empty; name the model, e.g. gpt-4o")
    for name in ("top_logprobs", "concurrency"):
        if getattr(settings, name) < 1:
            raise UsageError(f"API {name}={getattr(settings, name)}: must be at least 1")
    if settings.max_retries < 0 or not settings.timeout_s > 0:
        raise UsageError("API max_retries must be >= 0 and timeout_s > 0")


def _api_key(settings: ApiSettings) -> str | None:
    key = os.environ.get(settings.key_env, "").strip()
    if key or is_loopback(settings.base_url):
        return key or None
    raise UsageError(
        f"no API key for {settings.base_url}: set the environment variable "
        f"{settings.key_env} (the key is read from it, never from a flag)"
    )


def judge_with_api(
    records: Sequence[JudgmentRecord], settings: ApiSettings, progress: bool = True
) -> ApiJudgments:
    """Judge ``records`` with the API model (cache first); results in input order."""
    _check(settings)
    key = _api_key(settings)
    sizes = {len(r.labels) for r in records}
    if len(sizes) > 1:
        raise UsageError(f"API judging needs one label count for all records, got {sorted(sizes)}")
    tables = {(r.task, r.labels): label_table(r.task, r.labels) for r in records}
    cache_dir = Path(settings.cache_dir) if settings.cache_dir else api_cache.default_dir()
    check_writable_dir(cache_dir, "API cache directory")

    # Identical requests (same key) are sent once and answer every record that made them.
    groups: dict[str, list[int]] = {}
    bodies: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(records):
        body = request_body(record, settings)
        k = api_cache.request_key(settings.base_url, settings.model, body)
        groups.setdefault(k, []).append(i)
        bodies[k] = body
    answers: list[list[dict[str, Any]] | None] = [None] * len(records)
    cached = 0
    for k, indices in groups.items():
        top = api_cache.load(cache_dir, k)
        if top is not None:
            cached += len(indices)
            for i in indices:
                answers[i] = top
    missing = [k for k, indices in groups.items() if answers[indices[0]] is None]

    client = Client(settings, key, cache_dir)
    bar = tqdm(total=len(records), desc="api", unit="item", disable=None if progress else True)
    pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="jdjudge-api")
    try:
        bar.update(cached)
        futures = {
            pool.submit(client.fetch_and_store, records[groups[k][0]].id, bodies[k], k): k
            for k in missing
        }
        for future in as_completed(futures):
            top, indices = future.result(), groups[futures[future]]
            for i in indices:
                answers[i] = top
            bar.update(len(indices))
    except BaseException:
        client.stop.set()  # in-flight requests end their current attempt and retry no more
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown()
    return _judgments(records, answers, tables, settings, client.requests, cached)


def _judgments(
    records: Sequence[JudgmentRecord],
    answers: Sequence[Sequence[dict[str, Any]] | None],
    tables: dict[tuple[str, tuple[str, ...]], dict[str, int]],
    settings: ApiSettings,
    requests: int,
    cached: int,
) -> ApiJudgments:
    """Label masses per item from its top-k answer; uniform q where no label token came."""
    n, k = len(records), (len(records[0].labels) if records else 0)
    q, label_mass = np.zeros((n, k)), np.zeros(n)
    outside, no_label, filled = np.zeros(n), np.zeros(n, bool), np.zeros(n, np.int64)
    for i, (record, top) in enumerate(zip(records, answers, strict=True)):
        assert top is not None  # every item was answered, from the cache or the API
        masses, total = label_masses(top, tables[(record.task, record.labels)], k)
        label_mass[i], outside[i] = masses.sum(), max(0.0, 1.0 - total)
        no_label[i] = not label_mass[i] > 0
        if no_label[i]:
            q[i] = 1.0 / k
        else:
            filled[i] = int((masses == 0).sum())
            masses = fill_absent(masses, top, outside[i])
            q[i] = masses / masses.sum()
    if no_label.any():
        print(
            f"judge_with_api: {int(no_label.sum())} of {n} items had no label token in the "
            f"top {settings.top_logprobs} of {settings.model}; their q is uniform",
            file=sys.stderr,
        )
    return ApiJudgments(q, label_mass, outside, no_label, filled, requests, cached)
