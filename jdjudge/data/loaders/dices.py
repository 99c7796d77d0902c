"""DICES chatbot-safety ratings (JUDGE-BENCH JSON): 350 items x 123 raters, 990 x ~73.

Polarity: each rater answered DICES ``Q_overall``, "is the last response unsafe?", so a raw
``Yes`` means UNSAFE. Labels are renamed to say what they mean: Yes -> "unsafe",
No -> "safe", Unsure -> "unsure". The ``prompt`` string stored in the files asks the
opposite question ("is it safe?") and is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jdjudge.data.jsonl import convert_rows, require
from jdjudge.data.loaders.common import dataset_file, read_json_instances
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import DataError

LABELS: tuple[str, ...] = ("unsafe", "safe", "unsure")
RAW_TO_LABEL = {"Yes": "unsafe", "No": "safe", "Unsure": "unsure"}
FILES = {"350": "dices_350_crowdsourced.json", "990": "dices_990.json"}
EXPERT_FILE = "dices_350_expert.json"
_SCORES = "annotations.safety.individual_human_scores"


def _labels(raw: Any, field: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise DataError("expected a non-empty list of Yes/No/Unsure", field=field)
    for value in raw:
        if value not in RAW_TO_LABEL:
            raise DataError(
                f"unknown label {value!r} (labels: {', '.join(RAW_TO_LABEL)})", field=field
            )
    return tuple(RAW_TO_LABEL[value] for value in raw)


def _scores(obj: Any) -> Any:
    safety = require(require(obj, "annotations", dict), "safety", dict, "annotations.")
    return require(safety, "individual_human_scores", list, "annotations.safety.")


def _record(obj: Any, variant: str, experts: dict[int, str], unescape: bool) -> JudgmentRecord:
    item_id = require(obj, "id", int)
    instance = require(obj, "instance", dict)
    context = require(instance, "user_prompt", str, "instance.")
    if unescape:  # the 990 file has literal backslash-n pairs where turns end
        context = context.replace("\\n", "\n").rstrip("\n")
    fields = {"context": context, "response": require(instance, "response", str, "instance.")}
    meta = {"dataset": f"dices_{variant}", "item_id": item_id}
    if item_id in experts:
        meta["expert_label"] = experts[item_id]
    try:
        return JudgmentRecord(
            f"dices_{variant}/{item_id}",
            "safety",
            fields,
            LABELS,
            annotations=_labels(_scores(obj), _SCORES),
            meta=meta,
        )
    except DataError as error:
        names = {"fields.context": "instance.user_prompt", "fields.response": "instance.response"}
        raise DataError(error.reason, field=names.get(error.field or "", error.field)) from None


def _expert_labels(path: str | Path) -> dict[int, str]:
    """{item id: expert label} from the expert file beside a DICES-350 folder, if there."""
    folder = Path(path)
    if not (folder.is_dir() and (folder / EXPERT_FILE).is_file()):
        return {}
    _, rows = read_json_instances(folder / EXPERT_FILE)
    out = {}
    for location, obj in rows:
        try:
            (label,) = _labels(_scores(obj), _SCORES)
            out[require(obj, "id", int)] = label
        except ValueError as error:  # DataError, or not exactly one expert label
            raise DataError(str(error), location=location) from None
    return out


def load_dices(
    path: str | Path, variant: str, unescape_newlines: bool = True
) -> list[JudgmentRecord]:
    """DICES ``variant`` ("350" or "990") from its JSON file or the DICES folder.

    For "350" read from the folder, the expert gold label is added as ``meta['expert_label']``.
    ``unescape_newlines`` turns the 990 file's literal ``\\n`` pairs into real line breaks.
    """
    if variant not in FILES:
        raise ValueError(f"unknown DICES variant {variant!r}; choose from {tuple(FILES)}")
    experts = _expert_labels(path) if variant == "350" else {}
    _, rows = read_json_instances(dataset_file(path, FILES[variant]))
    return convert_rows(rows, lambda obj: [_record(obj, variant, experts, unescape_newlines)])
