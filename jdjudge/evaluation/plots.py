"""Headless PNG figures for the evaluation report.

Built on ``matplotlib.figure.Figure`` with the Agg canvas, never ``pyplot``: no global figure
registry, no display needed, and safe to call from a worker thread. Inputs are plain arrays and
mappings, and the only project import is ``outputs.atomic_file`` (no JAX is imported).
Every PNG carries its title and panel titles as text chunks, so a reader (or a test) can tell
which panels a file holds without looking at pixels.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from jdjudge.outputs import atomic_file

DPI = 110
_LABEL_CHARS = 32  # long label names are shortened in panel titles


def _num(value: Any) -> float | None:
    """A finite float, or None for anything else (bools, strings such as "nan", None)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def entropy(x: np.ndarray) -> np.ndarray:
    """Natural-log entropy of each row, with 0·log 0 = 0 (one-hot rows have entropy 0)."""
    x = np.asarray(x, dtype=np.float64)
    safe = np.where(x > 0, x, 1.0)
    return -np.sum(np.where(x > 0, x * np.log(safe), 0.0), axis=-1)


def _scatter_style(n: int) -> dict[str, Any]:
    """Fewer, larger, more opaque points for small N; no jitter, so output is deterministic."""
    return {
        "s": 28 if n <= 50 else 12 if n <= 2000 else 5,
        "alpha": float(np.clip(25 / math.sqrt(max(n, 1)), 0.15, 0.8)),
        "linewidths": 0,
    }


def _diagonal(ax: Axes, hi: float = 1.0) -> None:
    ax.plot([0, hi], [0, hi], color="0.45", linestyle="--", linewidth=1, label="y = x")


def _save(fig: Figure, path: Path, title: str, panels: list[str]) -> None:
    """Write ``fig`` as a PNG atomically (a reader never sees a half-written file), with the
    panel titles in its text chunks."""
    metadata = {"Title": title, "Description": "panels: " + "; ".join(panels)}
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata=metadata)
    finally:
        fig.clear()


def _figure(width: float, height: float, title: str) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    # Wrap long titles to the figure's width (about 11 characters per inch at 11 pt).
    fig.suptitle(textwrap.fill(title, max(30, int(width * 11))), fontsize=11)
    return fig


def _reliability(fig: Figure, bins: Sequence[Mapping[str, float]]) -> list[str]:
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    rows = sorted(bins, key=lambda b: _num(b.get("lower")) or 0.0)
    total = sum(_num(b.get("count")) or 0.0 for b in rows)
    ece, first = 0.0, True
    for b in rows:
        lo, hi, count = _num(b.get("lower")), _num(b.get("upper")), _num(b.get("count")) or 0.0
        if lo is None or hi is None:
            continue
        bottom.bar(lo, count, hi - lo, align="edge", color="C0", edgecolor="white")
        acc, conf = _num(b.get("accuracy")), _num(b.get("confidence"))
        if count <= 0 or acc is None:  # empty bins carry nan confidence/accuracy
            continue
        label = "accuracy" if first else None
        top.bar(lo, acc, hi - lo, align="edge", color="C0", edgecolor="white", label=label)
        if conf is not None:
            label = "gap to mean confidence" if first else None
            gap = {"color": "C3", "alpha": 0.35, "hatch": "//", "edgecolor": "C3", "linewidth": 0}
            top.bar(lo, abs(acc - conf), hi - lo, min(acc, conf), align="edge", label=label, **gap)
            ece += count / total * abs(acc - conf)
        first = False
    _diagonal(top)
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy of top label")
    legend_title = f"ECE {ece:.3f} · {int(total)} items"
    top.legend(loc="upper left", fontsize=8, title=legend_title, title_fontsize=8)
    bottom.set(xlabel="confidence (top-label probability)", ylabel="items")
    titles = ["Accuracy vs confidence (top label)", "Items per confidence bin"]
    top.set_title(titles[0], fontsize=10)
    bottom.set_title(titles[1], fontsize=10)
    return titles


def _entropy(fig: Figure, p: np.ndarray, q: np.ndarray) -> list[str]:
    ax = fig.subplots()
    hp, hq = entropy(p), entropy(q)
    hi = math.log(max(p.shape[1], 2))
    ax.scatter(hp, hq, color="C0", **_scatter_style(hp.size))
    _diagonal(ax, hi)
    # r is undefined for fewer than two items or a constant side (e.g. every p one-hot).
    defined = hp.size > 1 and np.ptp(hp) > 0 and np.ptp(hq) > 0
    r = f"{np.corrcoef(hp, hq)[0, 1]:.3f}" if defined else "n/a"
    title = f"H(q) vs H(p) · Pearson r = {r}"
    lim = (-0.03 * hi, 1.03 * hi)  # a margin, so points at 0 and log K are not cut in half
    ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="H(p), human entropy (nats)")
    ax.set_ylabel("H(q), model entropy (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    return [title]


def _label_cols(k: int) -> int:
    """One row up to 4 labels, then a near-square grid (5 -> 3 + 2, 10 -> 4 x 3)."""
    return k if k <= 4 else math.ceil(math.sqrt(k))


def _per_label(fig: Figure, labels: Sequence[str], p: np.ndarray, q: np.ndarray) -> list[str]:
    k = len(labels)
    cols = _label_cols(k)
    axes = fig.subplots(math.ceil(k / cols), cols, squeeze=False, sharex=True, sharey=True).flat
    style = _scatter_style(p.shape[0])
    titles = []
    for i, ax in enumerate(axes):
        if i >= k:
            ax.set_visible(False)
            continue
        ax.scatter(p[:, i], q[:, i], color=f"C{i % 10}", **style)
        _diagonal(ax)
        mae = float(np.mean(np.abs(q[:, i] - p[:, i]))) if p.shape[0] else float("nan")
        text = {"transform": ax.transAxes, "ha": "right", "va": "bottom", "fontsize": 8}
        ax.text(0.97, 0.04, f"mean |q−p| {mae:.3f}", **text)
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
        # "0" and "1", not "0.0" and "1.0": neighbouring panels' tick labels stay apart.
        ax.xaxis.set_major_formatter("{x:g}")
        ax.yaxis.set_major_formatter("{x:g}")
        name = str(labels[i])
        short = name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"
        titles.append(f"label: {short}")
        ax.set_title(titles[-1], fontsize=10)
        if i % cols == 0:
            ax.set_ylabel("model q")
        if i + cols >= k:  # the lowest visible panel of its column
            ax.set_xlabel("human p")
            ax.xaxis.set_tick_params(labelbottom=True)
    return titles


def _item_kl(fig: Figure, item_kl: np.ndarray) -> list[str]:
    ax = fig.subplots()
    raw = np.asarray(item_kl, dtype=np.float64).ravel()
    kl = np.maximum(raw[np.isfinite(raw)], 0.0)  # rounding can leave tiny negatives
    title = "Per-item KL(p‖q)"
    if raw.size > kl.size:
        title += f" ({raw.size - kl.size} non-finite dropped)"
    ax.set_title(title, fontsize=10)
    if kl.size == 0:
        ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center")
        return [title]
    positive = kl[kl > 0]
    nbins = int(np.clip(math.sqrt(kl.size) * 2, 10, 50))
    # Log-spaced bins when the values span decades (a good judge has many tiny KLs).
    log = positive.size > 1 and positive.max() / positive.min() > 100
    bars = {"color": "C0", "edgecolor": "white"}
    if log:
        zeros = kl.size - positive.size
        label = f"items ({zeros} exact zeros not shown)" if zeros else "items"
        edges = np.geomspace(positive.min(), positive.max(), nbins + 1)
        ax.hist(positive, bins=edges, label=label, **bars)
        ax.set_xscale("log")
    else:  # all zero -> one bar at 0 on a [0, 1] axis
        label = "items" if kl.max() > 0 else "items (all zero)"
        ax.hist(kl, bins=nbins, range=(0, kl.max() or 1.0), label=label, **bars)
    for value, name, color in ((kl.mean(), "mean", "C3"), (np.median(kl), "median", "C2")):
        label = f"{name} {value:.4g}"
        if log and value <= 0:
            ax.plot([], [], color=color, label=label + " (off the log axis)")
        else:
            ax.axvline(value, color=color, linestyle="--", linewidth=1.5, label=label)
    ax.set(xlabel="KL(p‖q) (nats)" + (", log scale" if log else ""), ylabel="items")
    # Below the panel, so it never hides bars or the mean/median lines.
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return [title]


def _points(rows: Any, x_key: str) -> np.ndarray:
    """[M, 4] (x, kl, low, high) of the entries whose x and kl are finite, sorted by x; a
    missing bound becomes nan, which leaves a gap in the band."""
    out = []
    for row in rows or ():
        x, kl = _num(row.get(x_key)), _num(row.get("kl"))
        if x is not None and kl is not None and (x_key != "n" or x > 0):  # n: log axis
            bounds = [_num(row.get(key)) for key in ("low", "high")]
            out.append((x, kl, *(np.nan if b is None else b for b in bounds)))
    return np.array(sorted(out), dtype=np.float64).reshape(-1, 4)


def _robustness_panels(robustness: Mapping[str, Any] | None) -> list[tuple[str, np.ndarray]]:
    """(title, points) of the robustness sweeps that have data, perturbed first."""
    robustness = robustness or {}
    panels = [
        ("KL vs δ", _points(robustness.get("perturbed"), "delta")),
        ("KL vs annotators n", _points(robustness.get("subsampled"), "n")),
    ]
    return [(name, pts) for name, pts in panels if len(pts)]


def _robustness(fig: Figure, panels: list[tuple[str, np.ndarray]]) -> list[str]:
    for ax, (name, pts) in zip(
        fig.subplots(1, len(panels), squeeze=False).flat, panels, strict=True
    ):
        x, kl, low, high = pts.T
        ax.fill_between(x, low, high, color="C0", alpha=0.25, linewidth=0, label="interval")
        ax.plot(x, kl, color="C0", marker="o", markersize=4, label="KL(p‖q)")
        if name == "KL vs annotators n":
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(x, [f"{v:g}" for v in x])  # label the n that were measured
            ax.set_xlabel("annotators per item n (log scale)")
        else:
            ax.set_xlabel("perturbation δ")
        ax.set_ylabel("KL(p‖q) (nats)")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    return [name for name, _ in panels]


# (title, [(split, key), ...]); the KL title gets the splits that have data appended.
_TRAINING = [
    ("Loss (train)", [("train", "loss")]),
    ("KL", [("train", "kl"), ("eval", "kl")]),
    ("Accuracy (eval)", [("eval", "accuracy")]),
    ("Learning rate (train)", [("train", "lr")]),
]


def _series(events: Sequence[Mapping[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    """Panels with at least one numeric point: (title, {split: [steps, values]}). Values that
    are not finite numbers ("nan" strings, None) are skipped; a resumed run's repeated steps
    are kept, sorted by step."""
    out = []
    for title, keys in _TRAINING:
        found = {}
        for split, key in keys:
            pts = [
                (s, v)
                for e in events or ()
                if e.get("split") == split
                and (s := _num(e.get("step"))) is not None
                and (v := _num(e.get(key))) is not None
            ]
            if pts:
                found[split] = np.array(sorted(pts, key=lambda sv: sv[0])).T
        if found:
            out.append((title + (f" ({', '.join(found)})" if title == "KL" else ""), found))
    return out


def _training(fig: Figure, panels: list[tuple[str, dict[str, Any]]]) -> list[str]:
    cols = min(len(panels), 2)
    for i, ax in enumerate(fig.subplots(math.ceil(len(panels) / cols), cols, squeeze=False).flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        title, found = panels[i]
        for split, (steps, values) in found.items():
            marker = "o" if split == "eval" or len(steps) < 30 else None
            style = {"marker": marker, "markersize": 3, "linewidth": 1.2}
            ax.plot(steps, values, color="C0" if split == "train" else "C1", label=split, **style)
        if title.startswith("Learning rate"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return [title for title, _ in panels]


def write_plots(
    out_dir: Path,
    *,
    labels: Sequence[str],
    p: np.ndarray,
    q: np.ndarray,
    item_kl: np.ndarray,
    reliability: Sequence[Mapping[str, float]],
    robustness: Mapping[str, Any] | None,
    training: Sequence[Mapping[str, Any]] | None,
    title: str,
) -> list[str]:
    """Write the report's PNGs into ``out_dir`` and return their names, in a fixed order:
    reliability, entropy, per_label, item_kl, then robustness and training when they have data.

    p and q are [N, K] distributions over ``labels``, item_kl is KL(p‖q) per item, reliability
    the top-label confidence bins; each PNG's Title/Description text chunks name its panels."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.ndim != 2 or p.shape != q.shape or p.shape[1] != len(labels):
        raise ValueError(f"p {p.shape} and q {q.shape} must both be [N, {len(labels)}]")
    if np.shape(item_kl) != (p.shape[0],):
        raise ValueError(f"item_kl has shape {np.shape(item_kl)}, expected ({p.shape[0]},)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = _label_cols(len(labels))
    rows = math.ceil(len(labels) / cols)
    Draw = Callable[[Figure], list[str]]
    jobs: list[tuple[str, tuple[float, float], Draw]] = [
        ("reliability.png", (6.0, 6.6), lambda f: _reliability(f, reliability)),
        ("entropy.png", (5.6, 5.8), lambda f: _entropy(f, p, q)),
        ("per_label.png", (3.1 * cols + 0.5, 3.2 * rows + 0.8), lambda f: _per_label(f, labels, p, q)),
        ("item_kl.png", (6.4, 4.8), lambda f: _item_kl(f, item_kl)),
    ]  # fmt: skip
    if robust := _robustness_panels(robustness):
        size = (4.8 * len(robust) + 0.4, 4.4)
        jobs.append(("robustness.png", size, lambda f: _robustness(f, robust)))
    if series := _series(training):
        cols_t = min(len(series), 2)
        size = (5.0 * cols_t + 0.4, 3.6 * math.ceil(len(series) / cols_t) + 0.6)
        jobs.append(("training.png", size, lambda f: _training(f, series)))
    for name, (width, height), draw in jobs:
        fig = _figure(width, height, title)
        _save(fig, out_dir / name, title, draw(fig))
    return [name for name, _, _ in jobs]
