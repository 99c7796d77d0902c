"""Evaluation on ../shared/data: ChaosNLI scored against its 100-annotator distributions
behind a 5-annotation subsample; MT-Bench's swapped copies and SummEval's Likert labels
reach their task metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from jdjudge import evaluate, train
from jdjudge.config.cli import load_config
from jdjudge.data.pipeline import load_splits
from jdjudge.evaluation.bootstrap import Bootstrap
from jdjudge.evaluation.predictions import Predictions
from jdjudge.evaluation.scoring import evaluate_predictions
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.shared_data
TINY = str(PROJECT_ROOT / "configs" / "tiny.py")


def test_chaosnli_scored_against_the_dense_distribution(shared_data, tmp_path):
    path = shared_data / "chaosnli" / "chaosNLI_snli.jsonl"
    workdir = tmp_path / "snli"
    common = [f"--config={TINY}:chaosnli_snli", f"--config.data.path={path}",
              f"--config.workdir={workdir}", "--config.data.subsample=5"]  # fmt: skip
    short = ["--config.steps=4", "--config.eval_every=4", "--config.checkpoint_every=4"]
    assert train.main(["jdjudge.train", *common, *short]) == 0
    assert evaluate.main(["jdjudge.evaluate", *common, "--bootstrap=200"]) == 0
    result = json.loads((workdir / "eval" / "metrics.json").read_text())
    lines = [json.loads(x) for x in (workdir / "eval" / "predictions.jsonl").read_text().splitlines()]  # fmt: skip
    dense = {}  # the file's own 100-annotator distributions, read independently
    for row in map(json.loads, path.read_text().splitlines()):
        dense[row["uid"]] = np.array(row["label_count"]) / sum(row["label_count"])
    assert len(lines) == result["items"] > 200
    for line in lines:
        uid = line["id"].split("/", 1)[1]  # "<subset>/<uid>"
        np.testing.assert_allclose(line["truth"], dense[uid], atol=1e-12)
        assert line["annotators"] == 5
    truth, q = np.array([x["truth"] for x in lines]), np.array([x["q"] for x in lines])
    kl_truth = stats.entropy(truth.T, q.T)
    assert result["scores"]["truth"]["kl"]["value"] == pytest.approx(kl_truth.mean())
    subsampled = result["robustness"]["subsampled"]
    assert [(r["n"], r["items"], r["source"]) for r in subsampled] == [
        (n, len(lines), "counts") for n in (1, 3, 5, 10)
    ]
    # fewer annotators, noisier targets: the KL to them falls as n grows
    kls = [r["kl"] for r in subsampled]
    assert kls == sorted(kls, reverse=True)


def _split(shared_data, config_arg: str, *overrides: str):
    config = load_config(["x", f"--config={TINY}:{config_arg}", *overrides])
    return load_splits(config.data)["test"]


def test_mtbench_swapped_copies_reach_swap_consistency(shared_data):
    records = _split(shared_data, "mtbench", f"--config.data.path={shared_data / 'mtbench_human'}",
                     "--config.data.options.swap_positions=true")  # fmt: skip
    ids = [r.id for r in records]
    pairs = sum(f"{i}/swapped" in set(ids) for i in ids)
    assert pairs > 10
    # a judge that always prefers the first answer is perfectly inconsistent under the swap
    q = np.tile([0.8, 0.1, 0.1], (len(records), 1))
    scores = evaluate_predictions(Predictions(records, q), Bootstrap(100, 0))["scores"]["annotators"]  # fmt: skip
    assert scores["swap_consistency"] == {"value": 0.0, "items": pairs}
    p = np.stack([r.distribution for r in records])
    decided = p[:, 0] != p[:, 1]
    assert scores["pairwise_agreement"]["items"] == int(decided.sum())
    assert scores["pairwise_agreement"]["value"] == pytest.approx(np.mean(p[decided, 0] > p[decided, 1]))  # fmt: skip


def test_summeval_likert_gets_ordinal_metrics(shared_data):
    records = _split(shared_data, "summeval", f"--config.data.path={shared_data / 'summeval'}")
    p = np.stack([r.distribution for r in records])
    q = 0.5 * p + 0.5 / 5  # a blurred copy: high correlation, small but positive distance
    scores = evaluate_predictions(Predictions(records, q), Bootstrap(100, 0))["scores"]["annotators"]  # fmt: skip
    assert scores["expected_score_pearson"]["value"] == pytest.approx(1.0)  # an affine map
    values = np.arange(1, 6)
    w1 = np.mean([stats.wasserstein_distance(values, values, a, b) for a, b in zip(p, q, strict=True)])  # fmt: skip
    assert scores["wasserstein"]["value"] == pytest.approx(w1)
