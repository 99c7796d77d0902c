"""The report's PNG figures (jdjudge.evaluation.plots): which files and panels are written, that
they are valid, non-blank PNGs, and that degenerate inputs (N=1, one-hot p, zeros in q, empty
reliability bins, nan training values) still draw."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jdjudge.evaluation.plots import entropy, write_plots

NAN = float("nan")
ALL = ["reliability.png", "entropy.png", "per_label.png", "item_kl.png"]
RELIABILITY = "panels: Accuracy vs confidence (top label); Items per confidence bin"


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    ratio = np.log(np.where(p > 0, p, 1.0)) - np.log(np.maximum(q, 1e-300))
    return np.sum(np.where(p > 0, p * ratio, 0.0), axis=1)


def _bins(p: np.ndarray, q: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """Top-label reliability bins, as the evaluation computes them (empty bins hold nan)."""
    conf, hit = q.max(1), (q.argmax(1) == p.argmax(1)).astype(float)
    index = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out = []
    for b in range(n_bins):
        m = index == b
        count = int(m.sum())
        out.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "confidence": float(conf[m].mean()) if count else NAN,
                "accuracy": float(hit[m].mean()) if count else NAN,
            }
        )
    return out


def _inputs(k: int, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    alpha = rng.dirichlet(np.ones(k), n)
    p = np.array([rng.multinomial(5, a) for a in alpha]) / 5.0
    q = 0.7 * alpha + 0.3 * rng.dirichlet(np.ones(k), n)
    labels = ["A is better", "B is better", "tie", "both bad"][:k]
    return {"labels": labels, "p": p, "q": q, "item_kl": _kl(p, q), "reliability": _bins(p, q)}


ROBUSTNESS = {
    "perturbed": [{"delta": d, "kl": 0.2 + d, "low": 0.18 + d, "high": 0.22 + d} for d in (0, 0.1)],
    "subsampled": [{"n": n, "kl": 0.2 + 1 / n, "low": 0.2, "high": 0.3 + 1 / n} for n in (1, 3, 9)],
}
TRAINING = [
    {"step": 0, "split": "eval", "loss": 0.9, "kl": 0.6, "accuracy": 0.3},
    *(
        {"step": s, "split": "train", "loss": 1 / s, "kl": 0.5 / s, "accuracy": 0.5, "lr": 1e-4}
        for s in range(10, 110, 10)
    ),
    {"step": 50, "split": "eval", "loss": 0.5, "kl": 0.3, "accuracy": 0.7},
    {"step": 100, "split": "eval", "loss": 0.4, "kl": 0.25, "accuracy": 0.8},
    {"step": 100, "split": "test", "loss": 0.4, "kl": 0.26, "accuracy": 0.8},
]


def _description(path: Path) -> str:
    with Image.open(path) as img:
        return img.text["Description"]


def _panels(path: Path) -> list[str]:
    text = _description(path)
    assert text.startswith("panels: ")
    return text.removeprefix("panels: ").split("; ")


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("plots") / "report" / "plots"  # parents are created
    names = write_plots(
        out, **_inputs(3, 300, 0), robustness=ROBUSTNESS, training=TRAINING, title="runs/t · test"
    )
    return out, names


def test_writes_every_figure_in_order(full):
    out, names = full
    assert names == [*ALL, "robustness.png", "training.png"]
    # Atomic writes leave no temporaries behind.
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_files_are_valid_pngs_with_title_and_panels(full):
    out, names = full
    for name in names:
        with Image.open(out / name) as img:
            assert img.format == "PNG"
            img.verify()
        with Image.open(out / name) as img:
            width, height = img.size
            assert 300 <= width <= 2500 and 300 <= height <= 2500, (name, img.size)
            assert img.text["Title"] == "runs/t · test"
    assert _description(out / "reliability.png") == RELIABILITY
    (entropy_panel,) = _panels(out / "entropy.png")
    assert entropy_panel.startswith("H(q) vs H(p) · Pearson r = 0.")
    assert _panels(out / "per_label.png") == [
        "label: A is better",
        "label: B is better",
        "label: tie",
    ]
    assert _panels(out / "item_kl.png") == ["Per-item KL(p‖q)"]
    assert _panels(out / "robustness.png") == ["KL vs δ", "KL vs annotators n"]
    assert _panels(out / "training.png") == [
        "Loss (train)",
        "KL (train, eval)",
        "Accuracy (eval)",
        "Learning rate (train)",
    ]


def test_pixels_are_not_blank(full):
    out, names = full
    for name in names:
        with Image.open(out / name) as img:
            rgb = np.asarray(img.convert("RGB"))
        inked = (rgb < 240).any(axis=-1).mean()
        assert 0.02 < inked < 0.9, (name, inked)


def test_rendering_is_deterministic(full, tmp_path):
    out, _ = full
    names = write_plots(
        tmp_path, **_inputs(3, 300, 0), robustness=None, training=None, title="runs/t · test"
    )
    for name in names:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.parametrize("robustness", [None, {}, {"perturbed": [], "subsampled": []}])
def test_missing_robustness_and_training_are_skipped(tmp_path, robustness):
    names = write_plots(
        tmp_path, **_inputs(2, 40, 1), robustness=robustness, training=None, title="t"
    )
    assert names == ALL
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL)
    assert _panels(tmp_path / "per_label.png") == ["label: A is better", "label: B is better"]


def test_panels_without_data_are_omitted(tmp_path):
    # Only subsampled robustness; training without lr, with eval accuracy only as "nan" strings
    # and no train kl: those panels go, the rest stay.
    robustness = {"perturbed": [], "subsampled": ROBUSTNESS["subsampled"]}
    training = [
        {"step": 0, "split": "eval", "kl": 0.5, "accuracy": "nan"},
        {"step": 10, "split": "train", "loss": 0.7, "kl": "nan", "accuracy": 0.5},
        {"step": 20, "split": "train", "loss": None},
        {"step": 20, "split": "eval", "kl": 0.4, "accuracy": "nan"},
    ]
    names = write_plots(
        tmp_path, **_inputs(2, 40, 2), robustness=robustness, training=training, title="t"
    )
    assert names == [*ALL, "robustness.png", "training.png"]
    assert _panels(tmp_path / "robustness.png") == ["KL vs annotators n"]
    assert _panels(tmp_path / "training.png") == ["Loss (train)", "KL (eval)"]
    # No numeric training value at all: no file.
    assert "training.png" not in write_plots(
        tmp_path / "b", **_inputs(2, 10, 3), robustness=None, training=training[2:3], title="t"
    )


def test_degenerate_inputs_still_draw(tmp_path):
    """N=1, K=2, one-hot p, zeros in q, KL all zero, every bin but one empty (nan)."""
    bins = [{"lower": b / 5, "upper": (b + 1) / 5, "count": 0, "confidence": NAN,
             "accuracy": NAN} for b in range(5)]  # fmt: skip
    bins[-1] = {"lower": 0.8, "upper": 1.0, "count": 1, "confidence": 1.0, "accuracy": 1.0}
    one = np.array([[1.0, 0.0]])
    names = write_plots(
        tmp_path,
        labels=["yes", "no"],
        p=one,
        q=one,
        item_kl=np.zeros(1),
        reliability=bins,
        robustness=None,
        training=None,
        title="one item",
    )
    assert names == ALL
    assert _description(tmp_path / "reliability.png") == RELIABILITY
    assert _panels(tmp_path / "entropy.png") == ["H(q) vs H(p) · Pearson r = n/a"]
    assert len(_panels(tmp_path / "per_label.png")) == 2
    # Item KLs spanning decades, with exact zeros and a non-finite value.
    kl = np.array([0.0, 0.0, 1e-5, 1e-3, 0.1, 2.0, np.inf])
    p = np.eye(2)[[0, 1, 0, 1, 0, 1, 0]]
    names = write_plots(
        tmp_path / "spread",
        labels=["yes", "no"],
        p=p,
        q=np.full_like(p, 0.5),
        item_kl=kl,
        reliability=[],
        robustness=None,
        training=None,
        title="spread",
    )
    assert _panels(tmp_path / "spread" / "item_kl.png") == [
        "Per-item KL(p‖q) (1 non-finite dropped)"
    ]


def test_shapes_are_checked(tmp_path):
    data = _inputs(3, 5, 4)
    with pytest.raises(ValueError, match="must both be"):
        write_plots(
            tmp_path, **{**data, "labels": ["a", "b"]}, robustness=None, training=None, title="t"
        )
    with pytest.raises(ValueError, match="item_kl"):
        write_plots(
            tmp_path, **{**data, "item_kl": np.zeros(4)}, robustness=None, training=None, title="t"
        )
    assert list(tmp_path.iterdir()) == []


def test_entropy_uses_zero_log_zero():
    h = entropy(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))
    assert np.allclose(h, [0.0, math.log(3), math.log(2)])
