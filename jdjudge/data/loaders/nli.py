"""NLI with several annotators: ChaosNLI (100 labels per item) and SNLI/MNLI originals.

ChaosNLI gives counts (``label_count``, order e/n/c, or 1/2 for αNLI), which are checked
against ``label_counter``. The original SNLI/MNLI JSONL gives ``annotator_labels`` (5 on
dev/test, 1 on most train items), kept as annotations so they can be subsampled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jdjudge.data.jsonl import convert_rows, read_rows, require
from jdjudge.data.loaders.common import dataset_file, renamed
from jdjudge.data.records import JudgmentRecord
from jdjudge.data.schema import TASKS, DataError, check_annotations

NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
ABDUCTIVE_LABELS: tuple[str, ...] = ("1", "2")

# subset -> (file name in the ChaosNLI folder, task, label codes in label_count order, labels)
CHAOSNLI: dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]] = {
    "snli": ("chaosNLI_snli.jsonl", "nli", ("e", "n", "c"), NLI_LABELS),
    "mnli": ("chaosNLI_mnli_m.jsonl", "nli", ("e", "n", "c"), NLI_LABELS),
    "alphanli": ("chaosNLI_alphanli.jsonl", "abductive_nli", ("1", "2"), ABDUCTIVE_LABELS),
}


def _chaosnli_record(obj: Any, subset: str) -> JudgmentRecord:
    _, task, codes, labels = CHAOSNLI[subset]
    uid = require(obj, "uid", str)
    counts = require(obj, "label_count", list)
    counter = require(obj, "label_counter", dict)
    example = require(obj, "example", dict)
    for code in counter:
        if code not in codes:
            raise DataError(
                f"unknown label code {code!r} (codes: {', '.join(codes)})", field="label_counter"
            )
    if [counter.get(code, 0) for code in codes] != counts:
        raise DataError(f"{counts} disagrees with label_counter {counter}", field="label_count")
    fields = {name: require(example, name, str, "example.") for name in TASKS[task].required}
    meta = {"dataset": f"chaosnli_{subset}", "uid": uid, "source": example.get("source")}
    for key in ("old_label", "old_labels"):
        if key in obj:
            meta[key] = obj[key]
    try:
        return JudgmentRecord(
            f"chaosnli_{subset}/{uid}", task, fields, labels, tuple(counts), meta=meta
        )
    except DataError as error:
        field = {"counts": "label_count"}.get(error.field or "", error.field)
        raise DataError(error.reason, field=field) from None


def load_chaosnli(path: str | Path, subset: str) -> list[JudgmentRecord]:
    """ChaosNLI ``subset`` ("snli", "mnli", "alphanli") from its file or the ChaosNLI folder."""
    if subset not in CHAOSNLI:
        raise ValueError(f"unknown ChaosNLI subset {subset!r}; choose from {tuple(CHAOSNLI)}")
    rows = read_rows(dataset_file(path, CHAOSNLI[subset][0]))
    return convert_rows(rows, lambda obj: [_chaosnli_record(obj, subset)])


def _annotated_record(obj: Any, dataset: str) -> JudgmentRecord:
    pair_id = require(obj, "pairID", str)
    raw = require(obj, "annotator_labels", list)
    annotations = renamed("annotator_labels", check_annotations, raw, NLI_LABELS)
    fields = {
        "premise": require(obj, "sentence1", str),
        "hypothesis": require(obj, "sentence2", str),
    }
    meta = {"dataset": dataset, "pair_id": pair_id}
    for key in ("gold_label", "genre", "promptID", "captionID"):
        if key in obj:
            meta[key] = obj[key]
    try:
        return JudgmentRecord(
            f"{dataset}/{pair_id}", "nli", fields, NLI_LABELS, annotations=annotations, meta=meta
        )
    except DataError as error:
        field = {"fields.premise": "sentence1", "fields.hypothesis": "sentence2"}
        raise DataError(error.reason, field=field.get(error.field or "", error.field)) from None


def load_nli_annotated(
    path: str | Path, dataset: str, min_annotations: int = 1
) -> list[JudgmentRecord]:
    """SNLI/MNLI in their original JSONL (``annotator_labels``, ``sentence1/2``, ``pairID``).

    ``min_annotations`` drops items with fewer labels (e.g. 5 keeps only the multiply
    annotated dev/test-style items); malformed lines are errors whatever the threshold.
    """
    records = convert_rows(read_rows(path), lambda obj: [_annotated_record(obj, dataset)])
    kept = [r for r in records if (r.num_annotators or 0) >= min_annotations]
    if not kept:
        raise DataError(
            f"no item has {min_annotations} or more annotator labels", location=str(path)
        )
    return kept
