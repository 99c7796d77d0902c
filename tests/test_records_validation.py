"""Strict validation: a corpus of malformed JSONL inputs, each with its exact located message."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdjudge.data.jsonl import load_jsonl, write_jsonl
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError
from tests.conftest import PROJECT_ROOT

NLI = ["entailment", "neutral", "contradiction"]
GOOD = {
    "id": "r1",
    "task": "nli",
    "fields": {"premise": "A man sleeps on a bench.", "hypothesis": "A person rests."},
    "labels": NLI,
    "counts": [3, 1, 1],
}
LABEL_LIST = "labels: entailment, neutral, contradiction"
TASK_LIST = "nli, abductive_nli, likert, pairwise, safety, raw, synthetic"


def good(i: int, **changes) -> dict:
    return {**GOOD, "id": f"r{i}", **changes}


def without(key: str) -> dict:
    return {k: v for k, v in good(2).items() if k != key}


# (name, bad line text, expected "field ...: reason" after "file:2: "); one case per line.
# fmt: off
CASES = [
    ("invalid JSON", '{"id": "r2", "task": "nli",', "invalid JSON (Expecting property name enclosed in double quotes at column 28)"),
    ("not an object", "[1, 2]", "expected a JSON object, got list"),
    ("missing field", without("labels"), "field 'labels': missing required field"),
    ("no target", without("counts"), "field 'counts': missing (give counts, distribution or annotations)"),
    ("unknown field", good(2, count=[1]), "field 'count': unknown field (known: id, task, fields, labels, counts, distribution, annotations, true_distribution, meta)"),
    ("id wrong type", good(2, id=7), "field 'id': expected a string, got int"),
    ("counts wrong type", good(2, counts="3,1,1"), "field 'counts': expected a list or object of counts, got str"),
    ("text wrong type", good(2, fields={"premise": 5, "hypothesis": "h"}), "field 'fields.premise': expected a string, got int"),
    ("bool count", good(2, counts=[True, 1, 1]), "field 'counts': expected integers, got bool"),
    ("negative count", good(2, counts=[3, -1, 1]), "field 'counts': negative count -1 for label 'neutral'"),
    ("fractional count", good(2, counts=[2.5, 1, 1]), "field 'counts': fractional count 2.5 for label 'entailment'"),
    ("zero annotations", good(2, counts=[0, 0, 0]), "field 'counts': zero annotations (counts sum to 0)"),
    ("empty annotations", {**without("counts"), "annotations": []}, "field 'annotations': zero annotations (empty list)"),
    ("distribution sum", {**without("counts"), "distribution": [0.5, 0.3, 0.1]}, "field 'distribution': sums to 0.9, not 1 (tolerance 1e-06)"),
    ("distribution negative", {**without("counts"), "distribution": [1.2, -0.2, 0.0]}, "field 'distribution': negative probability -0.2 for label 'neutral'"),
    ("counts and distribution", good(2, distribution=[1, 0, 0]), "field 'distribution': give either 'counts' or 'distribution', not both"),
    ("wrong number of labels", good(2, counts=[3, 1]), "field 'counts': 2 entries for 3 labels"),
    ("unknown label in annotations", {**without("counts"), "annotations": ["neutral", "maybe"]}, f"field 'annotations': unknown label 'maybe' ({LABEL_LIST})"),
    ("unknown label in a label dict", good(2, counts={"entailment": 3, "neutrl": 1}), f"field 'counts': unknown label 'neutrl' ({LABEL_LIST})"),
    ("annotations disagree", good(2, annotations=["neutral"]), "field 'annotations': label counts [0, 1, 0] disagree with counts [3, 1, 1]"),
    ("empty text field", good(2, fields={"premise": "  ", "hypothesis": "h"}), "field 'fields.premise': empty text"),
    ("missing text field", good(2, fields={"premise": "p"}), "field 'fields.hypothesis': missing (task 'nli' needs it)"),
    ("stray text field", good(2, fields={"premise": "p", "hypothesis": "h", "premis": "p"}), "field 'fields.premis': not a text field of task 'nli' (expected: premise, hypothesis)"),
    ("unknown task", good(2, task="qa"), f"field 'task': unknown task 'qa' (known: {TASK_LIST})"),
    ("labels not unique", good(2, labels=["yes", "yes", "no"]), "field 'labels': duplicate label 'yes'"),
    ("one label", good(2, labels=["yes"], counts=[1]), "field 'labels': needs at least 2 labels, got 1"),
    ("null target", good(2, counts=None), "field 'counts': null value (leave the field out instead)"),
    ("true distribution", good(2, true_distribution=[0.5, 0.5]), "field 'true_distribution': 2 entries for 3 labels"),
]
# fmt: on


def write_lines(path, lines) -> None:
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("name", "bad", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_line_has_exact_located_message(tmp_path, name, bad, expected):
    path = tmp_path / "data.jsonl"
    write_lines(path, [good(1), bad, good(3)])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}:2: {expected}"


def test_duplicate_id_names_both_lines(tmp_path):
    path = tmp_path / "dup.jsonl"
    write_lines(path, [good(1), good(2), good(3), good(2)])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}:4: field 'id': duplicate id 'r2', first seen at {path}:2"


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert str(info.value) == f"{path}: empty file (no records)"


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: cannot read \(No such file"):
        load_jsonl(tmp_path / "missing.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text"):
        load_jsonl(path)


@pytest.mark.parametrize("bad_line", [1, 37, 80])
def test_a_bad_line_anywhere_raises_before_anything_is_returned(tmp_path, bad_line):
    lines = [good(i) for i in range(1, 81)]
    lines[bad_line - 1] = good(bad_line, counts=[1, -2, 1])
    path = tmp_path / "big.jsonl"
    write_lines(path, lines)
    with pytest.raises(DataError, match=rf"big\.jsonl:{bad_line}: field 'counts': negative"):
        load_jsonl(path)


def test_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    write_lines(path, [good(1), "", good(3, counts=[0, 0, 0])])
    with pytest.raises(DataError, match=r"gaps\.jsonl:3: "):
        load_jsonl(path)


def test_every_message_is_documented_verbatim():
    """docs/data.md lists each message of the corpus exactly as the loader prints it."""
    docs = (PROJECT_ROOT / "docs" / "data.md").read_text()
    for name, _, expected in CASES:
        assert f"`data.jsonl:2: {expected}`" in docs, f"{name}: message not in docs/data.md"
    for message in ("field 'id': duplicate id", "empty file (no records)", "over max_length="):
        assert message in docs


def all_task_records() -> list[JudgmentRecord]:
    likert = {"summary": "s", "source": "a", "dimension": "fluency"}
    pair = {"question": "q", "answer_a": "", "answer_b": "b"}
    return [
        JudgmentRecord("n", "nli", GOOD["fields"], tuple(NLI), (3, 1, 1), meta={"k": [1]}),
        JudgmentRecord(
            "a",
            "abductive_nli",
            dict.fromkeys(("obs1", "obs2", "hyp1", "hyp2"), "x"),
            ("1", "2"),
            distribution=(0.25, 0.75),
        ),
        JudgmentRecord("l", "likert", likert, tuple("12345"), annotations=("5", "4", "5")),
        JudgmentRecord("p", "pairwise", pair, ("A", "B", "tie"), annotations=("B",)),
        JudgmentRecord(
            "s",
            "safety",
            {"context": "c", "response": "r"},
            ("unsafe", "safe", "unsure"),
            (2, 5, 1),
            true_distribution=(0.3, 0.6, 0.1),
        ),
        JudgmentRecord("r", "raw", {"prompt": "Q: 1+1?\nA:"}, ("2", "3"), (9, 1)),
    ]


def test_jsonl_round_trip_gives_equal_records(tmp_path):
    records = all_task_records()
    path = tmp_path / "all.jsonl"
    write_jsonl(records, path)
    assert load_jsonl(path) == records


def test_records_built_in_code_are_validated_with_their_id():
    with pytest.raises(DataError) as info:
        JudgmentRecord("x9", "nli", GOOD["fields"], tuple(NLI), (1, -1, 1))
    assert str(info.value) == "record 'x9': field 'counts': negative count -1 for label 'neutral'"


def test_distribution_follows_counts_through_replace():
    record = all_task_records()[0]
    assert record.distribution.dtype == np.float64 and not record.distribution.flags.writeable
    changed = replace(record, counts=(0, 0, 4))
    np.testing.assert_array_equal(changed.distribution, [0, 0, 1])
    assert changed.num_annotators == 4 and changed.majority_index == 2
    only_dist = all_task_records()[1]
    assert only_dist.counts is None and only_dist.num_annotators is None


def test_prompt_text_only_for_single_field_records():
    records = all_task_records()
    assert records[-1].prompt_text == "Q: 1+1?\nA:"
    with pytest.raises(ValueError, match=r"render it with jdjudge\.data\.prompts\.render_prompt"):
        _ = records[0].prompt_text


def test_majority_ties_go_to_lowest_index():
    record = JudgmentRecord("t", "nli", GOOD["fields"], tuple(NLI), (0, 2, 2))
    assert record.majority_index == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=2, max_size=6).filter(lambda c: sum(c) > 0))
def test_any_valid_counts_give_a_distribution(counts):
    labels = tuple(f"l{k}" for k in range(len(counts)))
    record = JudgmentRecord("h", "raw", {"prompt": "p"}, labels, tuple(counts))
    np.testing.assert_allclose(record.distribution.sum(), 1.0, atol=1e-12)
    assert record.num_annotators == sum(counts)
    again = JudgmentRecord("h", "raw", {"prompt": "p"}, labels, distribution=record.distribution)
    np.testing.assert_allclose(again.distribution, record.distribution)
