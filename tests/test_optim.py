"""The optimizer against hand computations: warmup, decay end points, clipping, decay mask."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdjudge.config.schema import OptimizerConfig
from jdjudge.training.optim import clip_by_global_norm, learning_rate_schedule, make_optimizer

PEAK, END = 1e-2, 0.1


def _schedule(kind: str, warmup: int = 10, total: int = 110):
    cfg = OptimizerConfig(learning_rate=PEAK, warmup_steps=warmup, schedule=kind, end_lr_factor=END)
    return learning_rate_schedule(cfg, total)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_warmup_is_linear_from_zero_to_the_peak(kind):
    schedule = _schedule(kind)
    for step, want in [(0, 0.0), (1, 1e-3), (5, 5e-3), (10, PEAK)]:
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_decay_end_points_and_midpoints():
    """100 decay steps after 10 of warmup: cosine and linear both reach peak·end_lr_factor
    (1e-3) at step 110 and pass the midpoint 5.5e-3 at step 60 (cos(π/2) = 0); constant
    stays at the peak."""
    for kind, mid, end in [("cosine", 5.5e-3, 1e-3), ("linear", 5.5e-3, 1e-3),
                           ("constant", PEAK, PEAK)]:  # fmt: skip
        schedule = _schedule(kind)
        assert float(schedule(60)) == pytest.approx(mid, rel=1e-5), kind
        assert float(schedule(110)) == pytest.approx(end, rel=1e-5), kind
    quarter = 1e-3 + (PEAK - 1e-3) * 0.5 * (1 + math.cos(math.pi / 4))
    assert float(_schedule("cosine")(35)) == pytest.approx(quarter, rel=1e-5)


def test_warmup_longer_than_the_run_still_reaches_the_peak():
    """5 steps with 10 warmup steps: warmup is cut to 4, so the last step trains at the peak."""
    assert float(_schedule("linear", warmup=10, total=5)(4)) == pytest.approx(PEAK, rel=1e-6)


def _first_moment_after_one_step(grad_norm: float, clip: float) -> tuple[np.ndarray, np.ndarray]:
    direction = np.array([3.0, -4.0], np.float32) / 5.0
    grads = {"kernel": jnp.asarray(direction * grad_norm).reshape(1, 2)}
    cfg = OptimizerConfig(grad_clip_norm=clip, warmup_steps=0, weight_decay=0.0)
    optimizer = make_optimizer(cfg, total_steps=10)
    params = {"kernel": jnp.zeros((1, 2))}
    _, state = optimizer.update(grads, optimizer.init(params), params)
    mu = optax.tree_utils.tree_get(state, "mu")["kernel"]
    return np.asarray(mu).ravel(), direction


@pytest.mark.parametrize(("norm", "clip", "kept"), [(10.0, 1.0, 1.0), (0.5, 1.0, 0.5),
                                                    (10.0, 0.0, 10.0)])  # fmt: skip
def test_gradients_are_clipped_to_the_global_norm(norm, clip, kept):
    """Adam's first moment after one step is (1 − β₁)·g of the gradient it saw: the clipped
    one (norm 1) when ‖g‖ = 10 > 1, the original below the bound or with clipping off."""
    mu, direction = _first_moment_after_one_step(norm, clip)
    np.testing.assert_allclose(mu, 0.1 * kept * direction, rtol=1e-6)


def test_weight_decay_applies_to_matrices_and_embeddings_only():
    """With zero gradients Adam's step is 0, so one update is exactly −lr·wd·w on decayed
    leaves: w·(1 − 1e-2·0.1) for a kernel and an embedding, nothing for norm scales and
    biases."""
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant",
                          weight_decay=0.1, grad_clip_norm=0.0)  # fmt: skip
    optimizer = make_optimizer(cfg, total_steps=10)
    params = {
        "kernel": jnp.full((2, 3), 2.0),
        "embedding": jnp.full((4, 2), -1.0),
        "scale": jnp.full((3,), 2.0),
        "bias": jnp.full((3,), 0.5),
    }
    zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 2.0 * (1 - 1e-3), rtol=1e-6)
    np.testing.assert_allclose(new["embedding"], -1.0 * (1 - 1e-3), rtol=1e-6)
    np.testing.assert_array_equal(new["scale"], params["scale"])
    np.testing.assert_array_equal(new["bias"], params["bias"])


def test_clip_matches_optax_clip_by_global_norm():
    """The multiplicative clip against optax's ``clip_by_global_norm`` (the reference) on a
    tree above the bound and one below it: the same gradients to float32 rounding."""
    rng = np.random.default_rng(0)
    for scale in (10.0, 0.01):
        grads = {"w": jnp.asarray(rng.normal(size=(5, 3)) * scale, jnp.float32),
                 "b": jnp.asarray(rng.normal(size=(3,)) * scale, jnp.float32)}  # fmt: skip
        ours, _ = clip_by_global_norm(1.0).update(grads, optax.EmptyState())
        reference, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
        for key in grads:
            np.testing.assert_allclose(ours[key], reference[key], rtol=2e-6, atol=1e-9)
        norm = float(optax.tree.norm(ours))
        assert norm == pytest.approx(min(1.0, float(optax.tree.norm(grads))), rel=1e-5)
