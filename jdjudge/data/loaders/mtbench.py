"""MT-Bench human pairwise votes: one item per (question, turn, model_a, model_b).

Votes are grouped into counts over A/B/tie (``winner`` model_a/model_b/tie), one annotation
per vote. Turn 1 shows the first exchange only; turn 2 shows the whole two-turn dialogue
and judges the second answer (MT-Bench's protocol). ``swap_positions`` adds a copy of every
item with the answers and the A/B counts swapped; a copy shares its original's split group.

Local folders hold ``votes.jsonl`` and ``conversations.jsonl``; an ``hf://`` path names the
full Hub dataset (``hf://datasets/lmsys/mt_bench_human_judgments``), whose rows carry the
conversations themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jdjudge.data.jsonl import Row, read_rows, require
from jdjudge.data.loaders.common import index_rows, join
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

LABELS: tuple[str, ...] = ("A", "B", "tie")
WINNERS = {"model_a": "A", "model_b": "B", "tie": "tie"}
_SWAP = {"A": "B", "B": "A", "tie": "tie"}
HUB_PREFIX = "hf://datasets/"

Conversation = list[str]  # message texts: user, assistant, user, assistant


def _conversation(value: Any, field: str) -> Conversation:
    roles = ("user", "assistant") * 2
    if not isinstance(value, list) or len(value) != len(roles):
        raise DataError("expected 4 messages (user, assistant, user, assistant)", field=field)
    texts = []
    for role, message in zip(roles, value, strict=True):
        if not isinstance(message, dict) or message.get("role") != role:
            raise DataError(f"expected a {role} message, got {message!r:.60}", field=field)
        texts.append(require(message, "content", str, f"{field}."))
    return texts


def _load_hub_split(repo: str, split: str) -> list[dict[str, Any]]:
    """The Hub dataset's rows (needs network or a cache)."""
    from datasets import load_dataset

    return list(load_dataset(repo, split=split))


def _read_votes(path: str, split: str) -> tuple[list[Row], dict]:
    """(vote rows, {(question_id, model): (location, conversation)})."""
    if path.startswith(HUB_PREFIX):
        hub_rows = _load_hub_split(path.removeprefix(HUB_PREFIX), split)
        rows = [(f"{path}:{i}", row) for i, row in enumerate(hub_rows, 1)]
        convs: dict = {}
        for location, row in rows:
            for side in ("a", "b"):
                key = (row.get("question_id"), row.get(f"model_{side}"))
                try:
                    conv = _conversation(row.get(f"conversation_{side}"), f"conversation_{side}")
                except DataError as error:
                    raise error.at(location) from None
                convs.setdefault(key, (location, conv))
        return rows, convs
    convs = index_rows(
        read_rows(join(path, "conversations.jsonl")),
        key=lambda o: (require(o, "question_id", int), require(o, "model", str)),
        value=lambda o: _conversation(require(o, "conversation", list), "conversation"),
        what="(question_id, model)",
    )
    return read_rows(join(path, "votes.jsonl")), convs


def _fields(conv_a: Conversation, conv_b: Conversation, turn: int) -> dict[str, str]:
    if conv_a[0::2] != conv_b[0::2]:
        raise DataError("the two conversations have different user questions")
    if turn == 1:
        return {"question": conv_a[0], "answer_a": conv_a[1], "answer_b": conv_b[1]}
    return {
        "previous_question": conv_a[0],
        "previous_answer_a": conv_a[1],
        "previous_answer_b": conv_b[1],
        "question": conv_a[2],
        "answer_a": conv_a[3],
        "answer_b": conv_b[3],
    }


def _swapped(record: JudgmentRecord) -> JudgmentRecord:
    f = dict(record.fields)
    for a, b in (("answer_a", "answer_b"), ("previous_answer_a", "previous_answer_b")):
        if a in f:
            f[a], f[b] = f[b], f[a]
    meta = {**record.meta, "model_a": record.meta["model_b"], "model_b": record.meta["model_a"]}
    return JudgmentRecord(
        f"{record.id}/swapped",
        record.task,
        f,
        record.labels,
        annotations=tuple(_SWAP[x] for x in record.annotations or ()),
        meta={**meta, "swapped": True},
    )


def load_mtbench(
    path: str | Path,
    swap_positions: bool = False,
    judge_prefix: str | None = None,
    split: str = "human",
) -> list[JudgmentRecord]:
    """Items with counts over A/B/tie; ``judge_prefix`` ("expert", "author") filters votes."""
    rows, convs = _read_votes(str(path), split)
    groups: dict[tuple, dict[str, Any]] = {}
    for location, vote in rows:
        try:
            qid = require(vote, "question_id", int)
            turn = require(vote, "turn", int)
            model_a, model_b = require(vote, "model_a", str), require(vote, "model_b", str)
            judge = require(vote, "judge", str)
            winner = require(vote, "winner", str)
            if turn not in (1, 2):
                raise DataError(f"expected 1 or 2, got {turn}", field="turn")
            if winner not in WINNERS:
                labels = ", ".join(WINNERS)
                raise DataError(f"unknown label {winner!r} (labels: {labels})", field="winner")
            for model in (model_a, model_b):
                if (qid, model) not in convs:
                    raise DataError(f"no conversation for question {qid}, model {model!r}")
        except DataError as error:
            raise error.at(location) from None
        if judge_prefix is not None and not judge.startswith(judge_prefix):
            continue
        group = groups.setdefault((qid, turn, model_a, model_b), {"votes": [], "judges": {}})
        if judge in group["judges"]:
            first = group["judges"][judge]
            raise DataError(f"second vote by judge {judge!r}, first at {first}", location=location)
        group["judges"][judge] = location
        group["votes"].append(WINNERS[winner])
        group.setdefault("category", vote.get("category"))
        group.setdefault("location", location)
    if not groups:
        raise DataError(f"no votes (judge_prefix={judge_prefix!r})", location=str(path))
    records = []
    for (qid, turn, model_a, model_b), group in groups.items():
        try:
            fields = _fields(convs[qid, model_a][1], convs[qid, model_b][1], turn)
        except DataError as error:
            raise error.at(group["location"]) from None
        meta = {
            "dataset": "mtbench",
            "question_id": qid,
            "turn": turn,
            "model_a": model_a,
            "model_b": model_b,
            "category": group["category"],
            "judges": list(group["judges"]),
            "group": f"mtbench/{qid}/{turn}/{'/'.join(sorted((model_a, model_b)))}",
        }
        record = JudgmentRecord(
            f"mtbench/{qid}/{turn}/{model_a}/{model_b}",
            "pairwise",
            fields,
            LABELS,
            annotations=tuple(group["votes"]),
            meta=meta,
        )
        records.append(record)
        if swap_positions:
            records.append(_swapped(record))
    return records
