"""KL/CE/label distributions against numpy/scipy, the objective's gradient in closed form."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, rel_entr
from scipy.stats import entropy

from jdjudge.objective.adversarial import adversarial_target
from jdjudge.objective.losses import (
    ObjectiveConfig,
    cross_entropy,
    judge_objective,
    kl_divergence,
    label_log_probs,
    majority_label,
)

objective = jax.jit(judge_objective, static_argnames="cfg")
adversary = jax.jit(
    adversarial_target, static_argnames=("epsilon", "steps", "step_size", "ball", "solver")
)
kl_jit = jax.jit(kl_divergence)


def random_distributions(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Dirichlet rows, plus one-hot rows, rows with zeros, and near-degenerate rows."""
    p = rng.dirichlet(np.full(k, 0.7), n)
    p[0] = np.eye(k)[rng.integers(k)]
    p[1, : k // 2] = 0
    p[2] = np.full(k, 1e-7)
    p[2, 0] = 1.0
    p[3] = np.full(k, (1 - 0.999999) / (k - 1))
    p[3, -1] = 0.999999
    return p / p.sum(-1, keepdims=True)


def test_kl_and_cross_entropy_match_scipy():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for k in range(2, 11):
            p = random_distributions(rng, 8, k)
            q = random_distributions(rng, 8, k)[::-1]
            q = np.clip(q, 1e-12, None)  # q near 0 and near 1, but a distribution
            q /= q.sum(-1, keepdims=True)
            log_q = np.log(q)
            kl = np.asarray(kl_jit(p, log_q))
            np.testing.assert_allclose(kl, rel_entr(p, q).sum(-1), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(kl, entropy(p, q, axis=-1), rtol=1e-9, atol=1e-12)
            labels = rng.integers(k, size=8)
            ce = np.asarray(jax.jit(cross_entropy)(labels, log_q))
            np.testing.assert_allclose(ce, -np.log(q[np.arange(8), labels]), rtol=1e-12)


def test_kl_gradient_is_finite_where_p_is_zero():
    p = jnp.array([0.0, 0.3, 0.7])
    log_q = jnp.array([-jnp.inf, -1.0, -0.5])
    gp, gq = jax.grad(lambda a, b: kl_divergence(a, b), argnums=(0, 1))(p, log_q)
    assert np.all(np.isfinite(gp)) and np.all(np.isfinite(gq))
    np.testing.assert_allclose(gq, -p)
    assert np.isfinite(float(kl_divergence(p, log_q)))


def test_label_log_probs_matches_numpy_with_synonyms():
    rng = np.random.default_rng(1)
    k, s = 4, 3
    logits = rng.normal(size=(5, k, s)) * 4
    mask = rng.random((k, s)) < 0.5
    mask[np.arange(k), rng.integers(s, size=k)] = True  # every label has a token
    merged = logsumexp(np.where(mask, logits, -np.inf), axis=-1)
    ref = merged - logsumexp(merged, axis=-1, keepdims=True)
    garbage = np.where(mask, logits, rng.choice([np.inf, -np.inf, 1e30], size=logits.shape))
    with jax.enable_x64(True):
        got = label_log_probs(garbage, mask)
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12, atol=1e-12)
        grad = jax.grad(lambda z: jnp.sum(label_log_probs(z, mask)[:, 0]))(garbage)
    assert np.all(np.isfinite(grad)) and not np.any(np.asarray(grad)[:, ~mask])


def test_label_without_tokens_gets_zero_probability():
    logits = jnp.array([[[1.0, 2.0], [0.5, 9.0], [3.0, -1.0]]])
    mask = jnp.array([[True, True], [False, False], [True, False]])
    log_q = label_log_probs(logits, mask)
    assert float(log_q[0, 1]) == -np.inf
    np.testing.assert_allclose(jnp.exp(log_q).sum(), 1.0, rtol=1e-6)


def test_majority_label_breaks_ties_toward_the_lowest_index():
    p = jnp.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(majority_label(p), [0, 1, 0, 2])


def test_objective_config_modes_and_validation():
    assert ObjectiveConfig().mode == "kl_ce_adversarial"
    assert ObjectiveConfig(alpha=0.0).mode == "single_point"
    assert ObjectiveConfig(alpha=1.0, epsilon=0.0).mode == "kl"
    assert ObjectiveConfig(epsilon=0.0).mode == "kl_ce"
    assert ObjectiveConfig(alpha=1.0).mode == "kl_adversarial"
    bad = {
        "alpha": 1.5,
        "epsilon": -0.1,
        "adversarial_steps": -1,
        "step_size": 0.0,
        "ball": "l3",
        "solver": "cvxpy",
    }
    for field, value in bad.items():
        cfg = dataclasses.replace(ObjectiveConfig(), **{field: value})
        with pytest.raises(ValueError, match=field if field != "step_size" else "step_size"):
            cfg.validate()
    ObjectiveConfig(epsilon=0.0, step_size=0.0).validate()  # unused step size is fine
    hash(ObjectiveConfig())  # static jit argument


def _batch(seed: int, b: int = 6, k: int = 3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(b, k)).astype(np.float32) * 2
    p = random_distributions(rng, b, k).astype(np.float32)
    return z, p


PGD = ObjectiveConfig()
WORST = ObjectiveConfig(alpha=0.5, solver="worst_case")
CONFIGS = [
    ObjectiveConfig(epsilon=0.0),
    PGD,
    WORST,
    ObjectiveConfig(alpha=0.0),
    ObjectiveConfig(alpha=1.0, ball="linf"),
]


@functools.partial(jax.jit, static_argnames="cfg")
def loss_grad_target(z, p, cfg):
    """Loss, aux and ∂loss/∂z for log q = log_softmax(z), plus the adversary's target.

    The target is recomputed outside the loss on identical inputs (XLA merges the two).
    """
    (loss, aux), grad = jax.value_and_grad(
        lambda z_: judge_objective(jax.nn.log_softmax(z_), p, cfg), has_aux=True
    )(z)
    target = p
    if cfg.adversarial:
        kw = {"steps": cfg.adversarial_steps, "step_size": cfg.step_size, "ball": cfg.ball}
        log_q = jax.nn.log_softmax(z)
        target = adversarial_target(p, log_q, epsilon=cfg.epsilon, solver=cfg.solver, **kw)
    return loss, aux, grad, target


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.mode}-{c.solver}-{c.ball}")
def test_objective_gradient_matches_closed_form(cfg):
    """∂L/∂z = [α(q − p̃) + (1 − α)(q − onehot(r))] / B, with p̃ the returned target."""
    z, p = _batch(seed=2)
    _, _, grad, target = loss_grad_target(z, p, cfg)
    q = np.exp(np.asarray(jax.nn.log_softmax(z), np.float64))
    target = np.asarray(target, np.float64)
    if cfg.adversarial:
        assert np.abs(target - p).max() > 1e-3  # the adversary moved something
    onehot = np.eye(3)[np.argmax(p, axis=-1)]
    expected = (cfg.alpha * (q - target) + (1 - cfg.alpha) * (q - onehot)) / len(z)
    np.testing.assert_allclose(grad, expected, atol=2e-6)


def test_objective_weights_padding_and_aux():
    z, p = _batch(seed=3)
    log_q = jax.nn.log_softmax(z)
    loss, aux = objective(log_q, p, PGD)
    np.testing.assert_allclose(loss, np.mean(aux["loss"]), rtol=1e-6)
    np.testing.assert_allclose(aux["kl"], rel_entr(p, np.exp(log_q)).sum(-1), rtol=1e-4)
    assert np.all(aux["kl_adversarial"] >= aux["kl"] - 1e-6)
    np.testing.assert_allclose(aux["loss"], 0.8 * aux["kl_adversarial"] + 0.2 * aux["ce"])
    np.testing.assert_array_equal(aux["correct"], np.argmax(z, -1) == np.argmax(p, -1))
    # Padding: zero-weight items (garbage targets, even NaN) change nothing.
    padded_p = np.concatenate([p[:3], np.zeros_like(p[:3])])
    padded_p[-1] = np.nan
    weights = np.r_[np.ones(3), np.zeros(3)].astype(np.float32)
    padded, _ = objective(log_q, padded_p, PGD, weights)
    np.testing.assert_allclose(padded, np.mean(objective(log_q, p, PGD)[1]["loss"][:3]), rtol=1e-6)
    grad = jax.grad(lambda lq: objective(lq, padded_p, PGD, weights)[0])(log_q)
    assert np.all(np.isfinite(grad)) and not np.any(np.asarray(grad)[3:])
    empty, _ = objective(log_q, p, PGD, np.zeros(6, np.float32))
    assert float(empty) == 0.0


def test_objective_rejects_mismatched_shapes():
    z, p = _batch(seed=5)
    with pytest.raises(ValueError, match=r"log_q \(6, 3\), p \(2, 3, 3\)"):
        judge_objective(jax.nn.log_softmax(z), p.reshape(2, 3, 3), PGD)
    with pytest.raises(ValueError, match=r"weights \(3,\)"):
        judge_objective(jax.nn.log_softmax(z), p, PGD, np.ones(3))


def test_single_point_skips_the_kl_term():
    log_q = jnp.log(jnp.array([[0.0, 0.4, 0.6]]))  # q = 0 where p > 0: KL = inf
    p = jnp.array([[0.2, 0.2, 0.6]])
    loss, aux = objective(log_q, p, ObjectiveConfig(alpha=0.0))
    np.testing.assert_allclose(loss, -np.log(0.6), rtol=1e-6)
    assert np.isinf(float(aux["kl"][0]))


def test_objective_jits_and_vmaps_over_groups_and_nested_batches():
    z, p = _batch(seed=4)
    log_q = jax.nn.log_softmax(z)
    groups = jax.jit(jax.vmap(lambda a, b: judge_objective(a, b, WORST)[0]))(
        log_q.reshape(2, 3, 3), p.reshape(2, 3, 3)
    )
    per_item = np.asarray(loss_grad_target(z, p, WORST)[1]["loss"])
    np.testing.assert_allclose(groups, per_item.reshape(2, 3).mean(-1), rtol=1e-5)
    nested, _ = objective(log_q.reshape(2, 3, 3), p.reshape(2, 3, 3), PGD)  # [R, N, K]
    np.testing.assert_allclose(nested, objective(log_q, p, PGD)[0], rtol=1e-6)


distributions = st.lists(st.floats(0, 1), min_size=4, max_size=4).map(
    lambda w: np.asarray(w) / sum(w) if sum(w) > 1e-3 else np.eye(4)[0]
)


@settings(max_examples=50, deadline=None)
@given(p=distributions, q=distributions)
def test_kl_is_nonnegative_and_zero_only_at_equality(p, q):
    q = np.clip(q, 1e-6, None)
    q = q / q.sum()
    kl = float(kl_jit(p.astype(np.float32), np.log(q).astype(np.float32)))
    assert kl >= -1e-6
    self_kl = float(
        kl_jit(p.astype(np.float32), np.log(np.clip(p, 1e-30, None)).astype(np.float32))
    )
    assert abs(self_kl) <= 1e-6
    if np.abs(p - q).sum() > 0.05:
        assert kl > 1e-5


@settings(max_examples=25, deadline=None)
@given(
    p=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    z=st.lists(st.sampled_from([-50.0, 50.0, 0.0]) | st.floats(-50, 50), min_size=9, max_size=9),
    cfg=st.sampled_from([PGD, WORST]),
)
def test_no_nan_for_one_hot_zeros_and_extreme_logits(p, z, cfg):
    p = np.asarray(p) / sum(p) if sum(p) > 1e-3 else np.eye(3)[0]
    targets = np.stack([p, np.eye(3)[2], [0.5, 0.5, 0.0], p, np.eye(3)[0], [0.0, 0.3, 0.7]])
    logits = np.concatenate([np.reshape(z, (3, 3)), [[50, -50, 0], [-50, 50, -50], [50, 50, -50]]])
    loss, aux, grad, target = loss_grad_target(
        logits.astype(np.float32), targets.astype(np.float32), cfg
    )
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad)) and np.all(np.isfinite(target))
    assert all(np.all(np.isfinite(v)) for v in aux.values())
