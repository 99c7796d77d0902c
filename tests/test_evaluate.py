"""End to end: ``python -m jdjudge.evaluate`` on tiny runs — the report, its plots, the raw
HF baseline, ``--compare`` and the API baseline against a loopback server."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jdjudge import evaluate, export, train
from jdjudge.checkpoint.metrics_log import read_metrics
from jdjudge.evaluation import api_http
from tests.conftest import PROJECT_ROOT
from tests.openai_server import OpenAIStub

TINY = str(PROJECT_ROOT / "configs" / "tiny.py")
DATA = ["--config.data.num_items=1000"]
METHODS = {  # the three of the paper's Table 1 that the tiny task can tell apart
    "single": ["--config.objective.alpha=0", "--config.objective.adversarial.epsilon=0"],
    "klce": ["--config.objective.adversarial.epsilon=0"],
    "adv": [],
}
PANELS = {
    "reliability.png": ["Accuracy vs confidence (top label)", "Items per confidence bin"],
    "per_label.png": ["label: positive", "label: neutral", "label: negative"],
    "robustness.png": ["KL vs δ", "KL vs annotators n"],
    "training.png": ["Loss (train)", "KL (train, eval)", "Accuracy (eval)",
                     "Learning rate (train)"],
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny runs (200 steps), each evaluated on its test split (best checkpoint)."""
    root = tmp_path_factory.mktemp("eval-runs")
    for name, flags in METHODS.items():
        workdir = root / name
        common = [f"--config={TINY}", f"--config.workdir={workdir}", *DATA]
        args = ["--config.steps=200", "--config.eval_every=100", "--config.log_every=50"]
        assert train.main(["jdjudge.train", *common, *args, *flags]) == 0
        assert evaluate.main(["jdjudge.evaluate", *common, "--bootstrap=400"]) == 0
    return root


def _metrics(directory):
    return json.loads((directory / "metrics.json").read_text())


def test_report_of_a_tiny_run(runs, tmp_path, capsys):
    """The latest checkpoint's scores equal the training loop's own test evaluation (a
    different code path: the jitted eval step over packed-or-padded batches), and the
    report, predictions and plots are complete."""
    workdir = runs / "adv"
    out = tmp_path / "latest"
    argv = ["jdjudge.evaluate", f"--config={TINY}", f"--config.workdir={workdir}", *DATA,
            "--checkpoint=latest", f"--output={out}", "--bootstrap=300"]  # fmt: skip
    assert evaluate.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("jdjudge.evaluate: 192 items; kl ")  # fmt: skip
    result = _metrics(out)
    test_event = [e for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "test"][-1]
    scores = result["scores"]
    for key, name in (("kl", "kl"), ("accuracy", "accuracy"), ("js", "js"), ("tv", "tv"),
                      ("brier", "brier"), ("kl_truth", "kl")):  # fmt: skip
        reference = scores["truth" if key == "kl_truth" else "annotators"][name]
        assert reference["value"] == pytest.approx(test_event[key], abs=2e-5), key
        assert reference["low"] < reference["value"] < reference["high"]
    assert result["about"] | {"checkpoint": None} == {
        "model": str(workdir), "checkpoint": None, "method": "KL+CE+adv",
        "dataset": "synthetic", "split": "test", "labels": ["positive", "neutral", "negative"],
        "task": "synthetic",
    }  # fmt: skip
    assert result["about"]["checkpoint"] == "checkpoint step 200 (the latest)"
    assert [r["delta"] for r in result["robustness"]["perturbed"]] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]  # fmt: skip
    assert result["robustness"]["perturbed"][0]["kl"] == pytest.approx(scores["annotators"]["kl"]["value"])  # fmt: skip
    assert [r["n"] for r in result["robustness"]["subsampled"]] == [1, 3, 5, 10]
    # predictions.jsonl: one line per test item whose KL recomputes from its p and q
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == result["items"] == 192
    p, q = np.array([x["p"] for x in lines]), np.array([x["q"] for x in lines])
    recomputed = [sum(a * math.log(a / b) for a, b in zip(pi, qi, strict=True) if a > 0) for pi, qi in zip(p, q, strict=True)]  # fmt: skip
    np.testing.assert_allclose([x["kl"] for x in lines], recomputed, rtol=1e-9)
    assert np.mean(recomputed) == pytest.approx(scores["annotators"]["kl"]["value"])
    report = (out / "report.md").read_text()
    assert "| KL(p‖q) ↓ |" in report and "| δ | 0.00 | 0.05 |" in report
    for name in ("reliability.png", "entropy.png", "per_label.png", "item_kl.png",
                 "robustness.png", "training.png"):  # fmt: skip
        assert f"![{name}]({name})" in report
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
            panels = image.text["Description"].removeprefix("panels: ").split("; ")
            assert panels == PANELS.get(name, panels), name


def test_training_writes_tensorboard_events(runs):
    """TensorBoard's own reader sees the run's train and eval scalars, including the cheap
    metrics and the learning rate, at the steps of metrics.jsonl."""
    workdir = runs / "klce"
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/step_time_s", "train/tokens_per_s", "eval/kl",
            "eval/js", "eval/tv", "eval/brier", "test/kl"} <= tags  # fmt: skip
    logged = {e["step"]: e for e in read_metrics(workdir / "metrics.jsonl") if e["split"] == "eval"}
    seen = {s.step: s.value for s in events.Scalars("eval/kl")}
    assert seen.keys() == logged.keys() == {0, 100, 200}
    for step, value in seen.items():
        assert value == pytest.approx(logged[step]["kl"], rel=1e-6)

    # the rate of each logged step's update, by hand: 50 warmup steps from 0 to 3e-3, then a
    # cosine to 10% of it over the remaining 150 (update n uses the schedule at n - 1)
    def by_hand(step: int) -> float:
        if step - 1 < 50:
            return 3e-3 * (step - 1) / 50
        t = (step - 1 - 50) / 150
        return 3e-3 * (0.9 * 0.5 * (1 + math.cos(math.pi * t)) + 0.1)

    lr = {s.step: s.value for s in events.Scalars("train/lr")}
    assert lr.keys() == {50, 100, 150, 200}
    for step, value in lr.items():
        assert value == pytest.approx(by_hand(step), rel=1e-6), step


def test_raw_baseline_of_an_exported_model_matches_its_run(runs, tmp_path):
    """--model=<HF directory>: the untrained ("raw") path; exporting the run's best
    checkpoint (in float32) and scoring it as a plain HF model gives the run's own numbers."""
    workdir = runs / "klce"
    hf = tmp_path / "hf"
    assert export.main(["--model", str(workdir), "--output", str(hf), "--dtype=float32"]) == 0
    out = tmp_path / "raw"
    argv = ["jdjudge.evaluate", f"--config={TINY}", f"--config.workdir={workdir}", *DATA,
            f"--model={hf}", f"--output={out}", "--bootstrap=100"]  # fmt: skip
    assert evaluate.main(argv) == 0
    raw, run = _metrics(out), _metrics(workdir / "eval")
    assert raw["about"]["method"] == "raw" and run["about"]["method"] == "KL+CE"
    assert raw["scores"]["annotators"]["kl"]["value"] == pytest.approx(
        run["scores"]["annotators"]["kl"]["value"], abs=1e-5
    )


def test_compare_separates_single_point_from_distributional_training(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    dirs = [str(runs / name) for name in METHODS]
    assert evaluate.main(["jdjudge.evaluate", "--compare", *dirs, f"--output={out}"]) == 0
    printed = capsys.readouterr().out
    assert "| method | synthetic |" in printed
    table = json.loads((out / "compare.json").read_text())
    rows = table["tables"]["annotators"]
    assert list(rows) == ["single-point", "KL+CE", "KL+CE+adv"]
    md_rows = [x for x in (out / "compare.md").read_text().splitlines() if x.startswith("| single-point |")]  # fmt: skip
    assert len(md_rows) == 2  # the annotators' table and the truth's
    kl = {name: _metrics(runs / key / "eval")["scores"] for name, key in
          zip(rows, METHODS, strict=True)}  # fmt: skip
    for reference in ("annotators", "truth"):
        single = kl["single-point"][reference]["kl"]
        for other in ("KL+CE", "KL+CE+adv"):
            assert single["low"] > kl[other][reference]["kl"]["high"], (reference, other)
    paired = [r for r in table["paired"] if r["reference"] == "annotators"]
    assert [r["method"] for r in paired] == ["KL+CE", "KL+CE+adv"]
    assert all(r["high"] < 0 and r["baseline_method"] == "single-point" for r in paired)


def test_api_baseline_end_to_end_then_from_the_cache(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api_http, "wait", lambda stop, seconds: None)
    workdir = tmp_path / "api-run"
    base = ["jdjudge.evaluate", f"--config={TINY}", f"--config.workdir={workdir}", *DATA,
            "--api_model=gpt-test", f"--api_cache={tmp_path / 'cache'}", "--bootstrap=100"]  # fmt: skip
    with OpenAIStub() as stub:
        assert evaluate.main([*base, f"--api={stub.base_url}"]) == 0
        first = stub.requests
        assert first == 192
        assert evaluate.main([*base, f"--api={stub.base_url}"]) == 0  # the rerun
        assert stub.requests == first  # zero new requests: every answer from the cache
    result = _metrics(workdir / "eval")
    assert result["about"]["method"] == "api:gpt-test"
    assert result["api"]["requests"] == 0 and result["api"]["cached"] == 192
    kl = result["scores"]["annotators"]["kl"]
    assert math.isfinite(kl["value"]) and kl["value"] > 0.3  # a random "model": far off
    lines = [json.loads(x) for x in (workdir / "eval" / "predictions.jsonl").read_text().splitlines()]  # fmt: skip
    assert {"label_mass", "outside_mass", "no_label", "absent_labels"} <= lines[0].keys()
    assert "## API judgments" in (workdir / "eval" / "report.md").read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compare", "nowhere"], "--compare nowhere: no metrics.json"),
        (["--api=http://127.0.0.1:1/v1"], "--api needs --api_model"),
        (["--model=x", "--compare", "y"], "--compare reads evaluated runs"),
        ([f"--config={TINY}", "--split=dev"], "invalid choice: 'dev'"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["jdjudge.evaluate", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_refuses_an_output_that_is_not_an_earlier_evaluation(runs, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    argv = ["jdjudge.evaluate", f"--config={TINY}", f"--config.workdir={runs / 'adv'}",
            f"--output={taken}"]  # fmt: skip
    with pytest.raises(SystemExit):
        evaluate.main(argv)
    assert "is not an earlier evaluation" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "mine"


def test_input_records_with_a_bad_line_name_it(runs, tmp_path, capsys):
    bad = tmp_path / "items.jsonl"
    good = {"id": "a", "task": "synthetic", "fields": {"text": "good film"},
            "labels": ["positive", "neutral", "negative"], "counts": [2, 1, 0]}  # fmt: skip
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "counts": [1, -1, 0]}) + "\n")  # fmt: skip
    argv = ["jdjudge.evaluate", f"--model={runs / 'adv'}", f"--input={bad}",
            f"--output={tmp_path / 'out'}"]  # fmt: skip
    with pytest.raises(SystemExit):
        evaluate.main(argv)
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "counts" in err
    assert not (tmp_path / "out").exists()
