"""The closed-model API baseline (jdjudge.evaluation.api) against the loopback stub in
tests/openai_server.py: the request sent, the label mapping (recomputed here by hand), the
cache, retries, errors and the concurrency limit."""

from __future__ import annotations

import hashlib
import json
import math
import urllib.error
import urllib.request

import numpy as np
import pytest

from jdjudge.data.records import JudgmentRecord
from jdjudge.data.synthetic import SyntheticTaskConfig, generate_records
from jdjudge.entry import RunFailed, UsageError
from jdjudge.evaluation import api_http
from jdjudge.evaluation.api import ApiSettings, judge_with_api
from tests.openai_server import OpenAIStub, Reply, default_answer, error_reply

KEY_ENV = "JDJUDGE_TEST_API_KEY"
SYNTHETIC_WORDS = {"positive": 0, "neutral": 1, "negative": 2}


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """No key set; cache_dir=None lands in $XDG_CACHE_HOME under tmp_path, not the real home."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def waits(monkeypatch):
    """Backoff pauses, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(api_http, "wait", lambda stop, seconds: seen.append(seconds))
    return seen


def synthetic(n: int = 12, seed: int = 3) -> list[JudgmentRecord]:
    return generate_records(SyntheticTaskConfig(num_items=n, num_annotators=3, seed=seed))


def settings(stub: OpenAIStub, tmp_path, **overrides) -> ApiSettings:
    base = {"base_url": stub.base_url, "model": "gpt-test", "key_env": KEY_ENV}
    base |= {"top_logprobs": 6, "concurrency": 3, "cache_dir": tmp_path / "cache"}
    return ApiSettings(**(base | overrides))


def expected_synthetic(stub: OpenAIStub, records, k: int):
    """Label mass, top-k total and per-label mass, from what the stub served for each text."""
    rows = []
    for record in records:
        top = stub.served["Review: " + record.fields["text"]]
        assert top == default_answer("Review: " + record.fields["text"], k)
        per_label = [0.0, 0.0, 0.0]
        total = 0.0
        for entry in top:
            p = math.exp(entry["logprob"])
            total += p
            word = entry["token"].lower().strip()
            if word in SYNTHETIC_WORDS:
                per_label[SYNTHETIC_WORDS[word]] += p
        rows.append((per_label, total))
    return rows


def raw(item: str, prompt: str, labels=("alpha", "beta", "gamma")) -> JudgmentRecord:
    return JudgmentRecord(item, "raw", {"prompt": prompt}, labels, counts=(1,) * len(labels))


def test_end_to_end_matches_recomputation_from_the_served_answers(tmp_path):
    records = synthetic()
    with OpenAIStub() as stub:
        got = judge_with_api(records, settings(stub, tmp_path), progress=False)
    assert stub.requests == got.requests == 12 and got.cached == 0
    assert sorted(b["messages"][0]["content"] for b in stub.bodies) == sorted(
        f"Review: {r.fields['text']}" for r in records
    )
    assert stub.bodies[0] | {"messages": None} == {
        "model": "gpt-test",
        "messages": None,
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 6,
    }
    assert stub.authorization == [None] * 12  # loopback, no key set: no header at all
    assert got.q.shape == (12, 3) and got.q.dtype == np.float64
    for i, (per_label, total) in enumerate(expected_synthetic(stub, records, 6)):
        mass = sum(per_label)
        assert got.label_mass[i] == pytest.approx(mass, abs=1e-12)
        assert got.outside_mass[i] == pytest.approx(1 - total, abs=1e-12)
        assert got.no_label[i] == (mass == 0)
        # A label absent from the top k gets the most the answer allows: at most the least
        # likely token served, and the absent ones together at most the outside mass.
        served = min(
            math.exp(e["logprob"]) for e in stub.served["Review: " + records[i].fields["text"]]
        )
        absent = [m == 0 for m in per_label]
        bound = max(min(served, (1 - total) / max(sum(absent), 1)), 1e-9)
        filled = [bound if a else m for m, a in zip(per_label, absent, strict=True)]
        want = [1 / 3] * 3 if mass == 0 else [m / sum(filled) for m in filled]
        np.testing.assert_allclose(got.q[i], want, atol=1e-12)
        assert got.filled[i] == (0 if mass == 0 else sum(absent))
    np.testing.assert_allclose(got.q.sum(axis=1), 1.0, atol=1e-12)
    assert (got.outside_mass > 0.04).all()
    # The data exercise the mapping: some items mix label and other tokens.
    assert ((got.label_mass > 0) & (got.label_mass < 1 - got.outside_mass - 1e-9)).sum() >= 3


def test_synonyms_merge_and_label_names_count():
    answer = [("Yes", 0.3), (" yes", 0.1), ("YES", 0.05), ("No", 0.2), (" maybe", 0.05)]
    answer += [("Contradiction", 0.05), ("yes!", 0.1), ("The", 0.05)]
    top = [{"token": t, "logprob": math.log(p)} for t, p in answer]
    nli = JudgmentRecord(
        "n1", "nli", {"premise": "It rains.", "hypothesis": "It is wet."},
        ("entailment", "neutral", "contradiction"), counts=(2, 1, 0),
    )  # fmt: skip
    with OpenAIStub(answer=lambda content, k: top) as stub:
        got = judge_with_api([nli], ApiSettings(stub.base_url, "m", cache_dir=None), False)
    assert got.label_mass[0] == pytest.approx(0.75)
    assert got.outside_mass[0] == pytest.approx(0.1)
    np.testing.assert_allclose(got.q[0], [0.45 / 0.75, 0.05 / 0.75, 0.25 / 0.75])
    assert "Premise: It rains." in stub.bodies[0]["messages"][0]["content"]


def test_second_call_is_served_from_the_cache(tmp_path):
    records = synthetic()
    with OpenAIStub() as stub:
        first = judge_with_api(records, settings(stub, tmp_path), progress=False)
        second = judge_with_api(records, settings(stub, tmp_path), progress=False)
        body = stub.bodies[0]
        url = stub.base_url
    assert (second.requests, second.cached, stub.requests) == (0, 12, 12)
    for name in ("q", "label_mass", "outside_mass", "no_label"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    canonical = json.dumps(
        {"base_url": url, "model": "gpt-test", "request": body},
        sort_keys=True,
        separators=(",", ":"),
    )
    key = hashlib.sha256(canonical.encode()).hexdigest()
    entry = json.loads((tmp_path / "cache" / key[:2] / f"{key}.json").read_text())
    assert entry["top_logprobs"] == stub.served[body["messages"][0]["content"]]
    assert len(list((tmp_path / "cache").glob("*/*.json"))) == 12
    assert not list((tmp_path / "cache").glob("*/.*"))  # no temporaries left behind


def test_default_cache_dir_is_under_xdg_cache_home(tmp_path):
    with OpenAIStub() as stub:
        judge_with_api(synthetic(2), settings(stub, tmp_path, cache_dir=None), progress=False)
    assert len(list((tmp_path / "xdg" / "jdjudge" / "api").glob("*/*.json"))) == 2


def test_corrupt_cache_entries_are_refetched(tmp_path):
    records = synthetic()
    with OpenAIStub() as stub:
        first = judge_with_api(records, settings(stub, tmp_path), progress=False)
        files = sorted((tmp_path / "cache").glob("*/*.json"))
        files[0].write_text('{"top_logprobs": [{"tok')
        files[1].write_text(json.dumps({"top_logprobs": "nope"}))
        again = judge_with_api(records, settings(stub, tmp_path), progress=False)
    assert (again.requests, again.cached, stub.requests) == (2, 10, 14)
    np.testing.assert_array_equal(first.q, again.q)
    assert all(json.loads(f.read_text())["top_logprobs"] for f in files[:2])


def test_identical_requests_are_sent_once(tmp_path):
    records = [raw("a", "Same prompt"), raw("b", "Same prompt"), raw("c", "Other")]
    with OpenAIStub() as stub:
        got = judge_with_api(records, settings(stub, tmp_path), progress=False)
    assert got.requests == stub.requests == 2
    np.testing.assert_array_equal(got.q[0], got.q[1])


def test_429_and_500_are_retried_and_counted(tmp_path, waits):
    records = synthetic(1)
    replies = (error_reply(429, "Rate limit reached", Retry_After="0"), error_reply(500, "oops"))
    with OpenAIStub(replies=replies) as stub:
        got = judge_with_api(records, settings(stub, tmp_path), progress=False)
        ((per_label, _),) = expected_synthetic(stub, records, 6)
    assert got.requests == stub.requests == 3
    assert waits[0] == 0.0  # Retry-After honoured
    assert 1.0 <= waits[1] <= 1.1  # second retry: 0.5 s doubled, plus at most 10% jitter
    if sum(per_label):
        np.testing.assert_allclose(got.q[0], np.array(per_label) / sum(per_label))


def test_dropped_connections_and_timeouts_are_retried(tmp_path, waits):
    replies = (Reply(drop=True), Reply(stall_s=0.6), error_reply(503, "busy"))
    with OpenAIStub(replies=replies) as stub:
        got = judge_with_api(synthetic(1), settings(stub, tmp_path, timeout_s=0.3), progress=False)
    assert got.requests == stub.requests == 4
    assert len(waits) == 3 and 2.0 <= waits[2] <= 2.2


def test_too_many_failures_fail_the_run(tmp_path, waits):
    replies = tuple(error_reply(503, "overloaded") for _ in range(3))
    with (
        OpenAIStub(replies=replies) as stub,
        pytest.raises(RunFailed, match=r"after 3 attempts.*HTTP 503 \(overloaded\)"),
    ):
        judge_with_api(synthetic(1), settings(stub, tmp_path, max_retries=2), progress=False)
    assert stub.requests == 3 and len(waits) == 2
    assert not list((tmp_path / "cache").glob("*/*.json"))


def test_a_bad_request_is_not_retried(tmp_path, waits):
    with (
        OpenAIStub(replies=(error_reply(400, "top_logprobs must be <= 20"),)) as stub,
        pytest.raises(RunFailed, match=r"HTTP 400: top_logprobs must be <= 20"),
    ):
        judge_with_api(synthetic(1), settings(stub, tmp_path), progress=False)
    assert stub.requests == 1 and waits == []


def test_a_wrong_endpoint_is_a_404_with_the_server_message(tmp_path):
    with (
        OpenAIStub() as stub,
        pytest.raises(RunFailed, match=r"HTTP 404: no route POST /chat/completions"),
    ):
        judge_with_api(synthetic(1), settings(stub, tmp_path, base_url=stub.root_url), False)


def test_the_stub_rejects_a_request_without_messages():
    with OpenAIStub() as stub:
        request = urllib.request.Request(f"{stub.base_url}/chat/completions", b'{"model": "m"}')
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
    assert raised.value.code == 400
    assert "messages" in json.loads(raised.value.read())["error"]["message"]


def test_a_refused_key_is_a_usage_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with OpenAIStub(api_key="sk-right") as stub:
        with pytest.raises(UsageError, match=rf"HTTP 401: Incorrect API key.*{KEY_ENV}"):
            judge_with_api(synthetic(1), settings(stub, tmp_path), progress=False)
        assert stub.requests == 1 and stub.authorization == ["Bearer sk-wrong"]
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(UsageError, match=rf"no key was sent; set .*{KEY_ENV}"):
            judge_with_api(synthetic(1), settings(stub, tmp_path), progress=False)
        assert stub.authorization[-1] is None
        monkeypatch.setenv(KEY_ENV, "sk-right")
        got = judge_with_api(synthetic(1), settings(stub, tmp_path), progress=False)
    assert got.requests == 1 and stub.authorization[-1] == "Bearer sk-right"


def test_a_missing_key_for_a_remote_api_is_refused_before_any_request(tmp_path, monkeypatch):
    def no_fetch(*args):
        raise AssertionError("a request was attempted")

    monkeypatch.setattr(api_http.Client, "fetch", no_fetch)
    remote = ApiSettings("https://api.example.invalid/v1", "gpt-4o", KEY_ENV, cache_dir=tmp_path)
    with pytest.raises(UsageError, match=rf"set the environment variable {KEY_ENV}"):
        judge_with_api(synthetic(1), remote, progress=False)
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(UsageError, match=KEY_ENV):
        judge_with_api(synthetic(1), remote, progress=False)


def test_a_response_without_logprobs_fails_naming_the_item(tmp_path):
    records = synthetic(1)
    with (
        OpenAIStub(malformed=True) as stub,
        pytest.raises(RunFailed, match=rf"item {records[0].id!r} has no choices\[0\]\.logpr"),
    ):
        judge_with_api(records, settings(stub, tmp_path), progress=False)


def test_a_non_json_response_fails_naming_the_item(tmp_path):
    with (
        OpenAIStub(replies=(Reply(body=b"<html>gateway</html>"),)) as stub,
        pytest.raises(RunFailed, match=r"item 'x' is not JSON"),
    ):
        judge_with_api([raw("x", "p")], settings(stub, tmp_path), progress=False)


@pytest.mark.parametrize("concurrency", [2, 4])
def test_at_most_concurrency_requests_are_in_flight(tmp_path, concurrency):
    with OpenAIStub(delay_s=0.08) as stub:
        got = judge_with_api(
            synthetic(16), settings(stub, tmp_path, concurrency=concurrency), progress=False
        )
    assert got.requests == 16
    if concurrency == 2:
        assert stub.max_in_flight == 2
    else:
        assert 2 < stub.max_in_flight <= 4


def test_no_label_token_gives_a_flagged_uniform_row(tmp_path, capsys):
    records = [raw("none", "Pick a Greek letter."), *synthetic(1)]
    with OpenAIStub() as stub:
        got = judge_with_api(records, settings(stub, tmp_path), progress=False)
    assert got.no_label[0] and got.label_mass[0] == 0.0
    np.testing.assert_array_equal(got.q[0], [1 / 3] * 3)
    total = sum(math.exp(e["logprob"]) for e in stub.served["Pick a Greek letter."])
    assert got.outside_mass[0] == pytest.approx(1 - total)
    assert f"{int(got.no_label.sum())} of 2 items had no label token" in capsys.readouterr().err


def test_labels_that_share_an_answer_word_are_refused():
    records = [raw("x", "p", labels=("Yes", "yes"))]
    with pytest.raises(UsageError, match="could not tell them apart"):
        judge_with_api(records, ApiSettings("http://127.0.0.1:9/v1", "m"), progress=False)
