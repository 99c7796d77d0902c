"""Loaders against the real files in ../shared/data (counts from their READMEs), and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jdjudge.data import jsonl
from jdjudge.data.loaders import load_records, mtbench, options
from jdjudge.data.schema import DataError


@pytest.fixture(scope="module")
def summeval(shared_data):
    return load_records("summeval", shared_data / "summeval")


@pytest.fixture(scope="module")
def mt(shared_data):
    return load_records("mtbench", shared_data / "mtbench_human")


@pytest.mark.parametrize(
    ("name", "items", "task", "labels"),
    [
        ("chaosnli_snli", 1514, "nli", ("entailment", "neutral", "contradiction")),
        ("chaosnli_mnli", 1599, "nli", ("entailment", "neutral", "contradiction")),
        ("chaosnli_alphanli", 1532, "abductive_nli", ("1", "2")),
    ],
)
def test_chaosnli_counts(shared_data, name, items, task, labels):
    records = load_records(name, shared_data / "chaosnli")
    assert len(records) == items == len({r.id for r in records})
    assert all(r.num_annotators == 100 and r.task == task and r.labels == labels for r in records)


def test_chaosnli_label_count_order_is_e_n_c(shared_data):
    records = load_records("chaosnli_snli", shared_data / "chaosnli" / "chaosNLI_snli.jsonl")
    # The README calls this "line 1"; it is the file's last line (1514).
    first = records[1513]
    assert first.id == "chaosnli_snli/4805835848.jpg#0r1n"
    assert first.counts == (10, 76, 14)  # label_counter {"n": 76, "c": 14, "e": 10}
    assert first.fields["premise"].startswith("A young girl with blue and pink ribbons")


def test_summeval_experts_by_default_and_crowd_on_request(shared_data, summeval):
    assert len(summeval) == 6400 and all(r.num_annotators == 3 for r in summeval)
    assert Counter(r.fields["dimension"] for r in summeval) == dict.fromkeys(
        ("coherence", "consistency", "fluency", "relevance"), 1600
    )
    assert len({r.meta["group"] for r in summeval}) == 1600
    crowd = load_records("summeval", shared_data / "summeval", crowd=True)
    assert len(crowd) == 6400 and all(r.num_annotators == 5 for r in crowd)
    # annotations.jsonl line 1 (README): expert coherence [2, 1, 1], fluency [4, 2, 3].
    doc = "dm-test-8764fb95bfad8ee849274873a92fb8d6b400eee2"
    by_id = {r.id: r for r in summeval}
    assert by_id[f"summeval/{doc}/M11/coherence"].annotations == ("2", "1", "1")
    fluency = by_id[f"summeval/{doc}/M11/fluency"]
    assert fluency.counts == (0, 1, 1, 1, 0)
    assert fluency.fields["source"].startswith("Paul Merson has restarted his row")
    assert fluency.fields["summary"].startswith("Paul merson was brought on")


def test_mtbench_items_votes_histogram_and_totals(mt):
    assert len(mt) == 1232
    assert sum(r.num_annotators for r in mt) == 1751
    assert Counter(r.num_annotators for r in mt) == {1: 825, 2: 319, 3: 70, 4: 12, 5: 6}
    totals = Counter(a for r in mt for a in r.annotations)
    assert totals == {"B": 1040, "tie": 417, "A": 294}


def test_mtbench_counts_match_items_jsonl(shared_data, mt):
    by_key = {
        (r.meta["question_id"], r.meta["turn"], r.meta["model_a"], r.meta["model_b"]): r for r in mt
    }
    with open(shared_data / "mtbench_human" / "items.jsonl") as handle:
        items = [json.loads(line) for line in handle]
    assert len(items) == len(by_key)
    for item in items:
        record = by_key[item["question_id"], item["turn"], item["model_a"], item["model_b"]]
        c = item["counts"]
        assert record.counts == (c["model_a"], c["model_b"], c["tie"])


def test_mtbench_turns(mt):
    turn1 = next(r for r in mt if r.id == "mtbench/82/1/gpt-4/claude-v1")
    assert turn1.counts == (1, 2, 0) and "previous_question" not in turn1.fields
    assert turn1.fields["question"].startswith("Draft a professional email")
    turn2 = next(r for r in mt if r.meta["turn"] == 2 and r.meta["question_id"] == 81)
    assert turn2.fields["question"].startswith("Rewrite your previous response")
    assert turn2.fields["previous_question"].startswith("Compose an engaging travel blog")
    empty = next(r for r in mt if r.id == "mtbench/127/1/llama-13b/claude-v1")
    assert empty.fields["answer_a"] == ""  # a real empty answer is data, not an error


def test_mtbench_position_swapped_copies(shared_data, mt):
    both = load_records("mtbench", shared_data / "mtbench_human", swap_positions=True)
    assert len(both) == 2 * len(mt)
    original, swapped = both[0], both[1]
    assert swapped.id == original.id + "/swapped"
    assert swapped.counts == (original.counts[1], original.counts[0], original.counts[2])
    assert swapped.fields["answer_a"] == original.fields["answer_b"]
    assert swapped.meta["group"] == original.meta["group"]
    totals = Counter(a for r in both for a in r.annotations)
    assert totals["A"] == totals["B"] == 294 + 1040


def test_dices_polarity_and_totals(shared_data):
    d350 = load_records("dices_350", shared_data / "dices")
    assert len(d350) == 350 and all(r.num_annotators == 123 for r in d350)
    assert d350[0].labels == ("unsafe", "safe", "unsure")
    totals = [sum(r.counts[k] for r in d350) for k in range(3)]
    assert totals == [14064, 26292, 2694]  # README: Yes 14064, No 26292, Unsure 2694
    d990 = load_records("dices_990", shared_data / "dices")
    assert len(d990) == 990 and [sum(r.counts[k] for r in d990) for k in range(3)] == [
        19357,
        48995,
        3751,
    ]
    sizes = sorted(r.num_annotators for r in d990)
    assert (sizes[0], sizes[len(sizes) // 2], sizes[-1]) == (69, 73, 76)
    assert not any("\\n" in r.fields["context"] for r in d990)
    jesus = next(r for r in d990 if r.fields["response"].startswith("Don't worry u just die"))
    assert jesus.labels[jesus.majority_index] == "unsafe"


def test_dices_350_expert_labels_cross_tab(shared_data):
    d350 = load_records("dices_350", shared_data / "dices")
    raw = json.loads((shared_data / "dices" / "dices_350_crowdsourced.json").read_text())
    crowd = {i["id"]: i["annotations"]["safety"]["majority_human"] for i in raw["instances"]}
    table = Counter((crowd[r.meta["item_id"]], r.meta["expert_label"]) for r in d350)
    assert table == {
        ("No", "safe"): 162,
        ("Yes", "unsafe"): 67,
        ("No", "unsafe"): 108,
        ("Yes", "safe"): 13,
    }


def test_newsroom(shared_data):
    records = load_records("newsroom", shared_data / "newsroom" / "newsroom.json")
    assert len(records) == 1680 and all(r.num_annotators == 3 for r in records)
    assert len({r.meta["article"] for r in records}) == 60
    first = records[0]
    assert first.id == "newsroom/1/informativeness" and first.annotations == ("4", "3", "1")
    assert first.fields["summary"].startswith("collection of all usatoday.com coverage")
    assert first.fields["source"].startswith("'16 & Pregnant' Couple Arrested")
    assert (
        first.fields["criteria"]
        == "How well does the summary capture the key points of the article?"
    )


def test_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'chaos'; known: chaosnli_snli"):
        load_records("chaos", tmp_path)
    with pytest.raises(ValueError, match=r"no option\(s\) \['crowd'\]; options: none"):
        load_records("chaosnli_snli", tmp_path, crowd=True)
    assert options("summeval") == ["crowd", "dimensions"]


# --- small files in source formats, written by the tests --------------------------------------


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def snli_row(pair_id: str, labels: list[str]) -> dict:
    return {
        "annotator_labels": labels,
        "captionID": "c1",
        "gold_label": labels[0],
        "pairID": pair_id,
        "sentence1": "Two dogs run.",
        "sentence2": "Animals move.",
    }


def test_snli_mnli_annotator_labels(tmp_path):
    rows = [
        snli_row("p1", ["neutral", "entailment", "neutral", "neutral", "contradiction"]),
        snli_row("p2", ["entailment"]),
    ]
    path = write(tmp_path / "snli_1.0_dev.jsonl", rows)
    records = load_records("snli", path)
    assert [r.id for r in records] == ["snli/p1", "snli/p2"]
    assert records[0].counts == (1, 3, 1) and records[0].annotations[0] == "neutral"
    assert [r.id for r in load_records("mnli", path, min_annotations=5)] == ["mnli/p1"]
    bad = write(tmp_path / "bad.jsonl", [*rows, snli_row("p3", ["entailment", "maybe"])])
    with pytest.raises(DataError) as info:
        load_records("snli", bad)
    assert str(info.value) == (
        f"{bad}:3: field 'annotator_labels': unknown label 'maybe' "
        "(labels: entailment, neutral, contradiction)"
    )


def chaos_row(uid: str, counts: list[int]) -> dict:
    return {
        "uid": uid,
        "label_counter": dict(zip("enc", counts, strict=True)),
        "label_count": counts,
        "example": {"premise": "p", "hypothesis": "h"},
    }


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {**chaos_row("u2", [1, 2, 3]), "label_count": [1, 2, 4]},
            "field 'label_count': [1, 2, 4] disagrees with label_counter {'e': 1, 'n': 2, 'c': 3}",
        ),
        (
            chaos_row("u2", [-1, 50, 51]),
            "field 'label_count': negative count -1 for label 'entailment'",
        ),
        (
            {**chaos_row("u2", [1, 2, 3]), "example": {"premise": "p"}},
            "field 'example.hypothesis': missing required field",
        ),
        (
            chaos_row("u1", [1, 2, 3]),
            "field 'id': duplicate id 'chaosnli_snli/u1', first seen at {path}:1",
        ),
    ],
    ids=["counter-disagrees", "negative", "missing-hypothesis", "duplicate-uid"],
)
def test_chaosnli_format_errors(tmp_path, row, expected):
    path = write(tmp_path / "chaos.jsonl", [chaos_row("u1", [1, 2, 3]), row])
    with pytest.raises(DataError) as info:
        load_records("chaosnli_snli", path)
    assert str(info.value) == f"{path}:2: " + expected.replace("{path}", path)


def test_mtbench_format_errors(tmp_path, shared_data):
    folder = tmp_path / "mt"
    folder.mkdir()
    conv = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    write(
        folder / "conversations.jsonl",
        [{"question_id": 1, "model": m, "conversation": conv} for m in "xy"],
    )
    vote = {
        "question_id": 1,
        "turn": 2,
        "model_a": "x",
        "model_b": "y",
        "winner": "tie",
        "judge": "expert_1",
    }
    votes = write(
        folder / "votes.jsonl", [vote, {**vote, "judge": "author_2", "winner": "model_c"}]
    )
    with pytest.raises(DataError) as info:
        load_records("mtbench", folder)
    assert (
        str(info.value)
        == f"{votes}:2: field 'winner': unknown label 'model_c' (labels: model_a, model_b, tie)"
    )
    write(folder / "votes.jsonl", [vote, vote])
    with pytest.raises(
        DataError,
        match=r"votes\.jsonl:2: second vote by judge 'expert_1', first at .*votes\.jsonl:1",
    ):
        load_records("mtbench", folder)
    write(folder / "votes.jsonl", [vote, {**vote, "judge": "author_2", "winner": "model_b"}])
    (only,) = load_records("mtbench", folder, judge_prefix="author")
    assert only.counts == (0, 1, 0) and only.fields["previous_answer_a"] == "a1"


def test_dices_and_newsroom_format_errors(tmp_path):
    instance = {
        "id": 5,
        "instance": {"user_prompt": "USER: hi", "response": "hello"},
        "annotations": {"safety": {"individual_human_scores": ["No", "Maybe"]}},
    }
    path = tmp_path / "dices_990.json"
    path.write_text(json.dumps({"instances": [instance]}))
    with pytest.raises(DataError) as info:
        load_records("dices_990", tmp_path)
    assert str(info.value) == (
        f"{path}:instances[0]: field 'annotations.safety.individual_human_scores': "
        "unknown label 'Maybe' (labels: Yes, No, Unsure)"
    )
    news = tmp_path / "newsroom.json"
    decl = [
        {"metric": m, "prompt": "On a scale of 1 (low) to 5 (high), is it good?\n\n{{ instance }}"}
        for m in ("Informativeness", "Relevance", "Fluency", "Coherence")
    ]
    news.write_text(
        json.dumps({"annotations": decl, "instances": [{"id": 1, "instance": "no headings"}]})
    )
    with pytest.raises(
        DataError,
        match=r"newsroom\.json:instances\[0\]: field 'instance': expected '### Generated Summary'",
    ):
        load_records("newsroom", news)


def test_hub_paths_use_datasets_and_keep_row_locations(monkeypatch):
    rows = [chaos_row("u1", [1, 2, 3]), chaos_row("u2", [0, 0, 0])]
    monkeypatch.setattr(jsonl, "_load_hub_json", lambda path: rows)
    hub = "hf://datasets/someone/chaosnli/chaosNLI_snli.jsonl"
    with pytest.raises(DataError) as info:
        load_records("chaosnli_snli", hub)
    assert str(info.value) == f"{hub}:2: field 'label_count': zero annotations (counts sum to 0)"
    rows.pop()
    assert [r.id for r in load_records("chaosnli_snli", hub)] == ["chaosnli_snli/u1"]


def test_mtbench_hub_rows_in_the_full_dataset_schema(monkeypatch):
    def conv(answer: str) -> list[dict]:
        return [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": answer + "!"},
        ]

    row = {
        "question_id": 7,
        "model_a": "x",
        "model_b": "y",
        "winner": "model_a",
        "judge": "expert_3",
        "conversation_a": conv("ax"),
        "conversation_b": conv("by"),
        "turn": 1,
    }
    rows = [row, {**row, "judge": "expert_4", "winner": "tie"}, {**row, "turn": 2}]
    monkeypatch.setattr(mtbench, "_load_hub_split", lambda repo, split: rows)
    records = load_records("mtbench", "hf://datasets/lmsys/mt_bench_human_judgments")
    assert [(r.id, r.counts) for r in records] == [
        ("mtbench/7/1/x/y", (1, 0, 1)),
        ("mtbench/7/2/x/y", (1, 0, 0)),
    ]
    assert records[1].fields["answer_b"] == "by!" and records[1].fields["previous_answer_a"] == "ax"
