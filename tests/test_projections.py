"""Projections onto Δ_K ∩ ball against cvxpy, plus feasibility/idempotence properties."""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jdjudge.objective.projections import (
    project_simplex,
    project_simplex_l1_ball,
    project_simplex_l2_ball,
    project_simplex_linf_ball,
    project_uncertainty_set,
    support_point,
)

BALLS = ("l2", "l1", "linf")
RADII = (0.0, 1e-4, 0.01, 0.1, 0.3, 1.0, 3.0)
project = jax.jit(project_uncertainty_set, static_argnames="ball")
simplex = jax.jit(project_simplex)
support = jax.jit(support_point, static_argnames=("ball", "scale"))


def _norm(expr: cp.Expression, ball: str) -> cp.Expression:
    return cp.norm(expr, {"l2": 2, "l1": 1, "linf": "inf"}[ball])


def _solve(problem: cp.Problem) -> None:
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert problem.status == cp.OPTIMAL, problem.status


def cvxpy_projection(v: np.ndarray, c: np.ndarray, r: float, ball: str) -> np.ndarray:
    x = cp.Variable(v.shape[0])
    cons = [x >= 0, cp.sum(x) == 1, _norm(x - c, ball) <= r]
    _solve(cp.Problem(cp.Minimize(cp.sum_squares(x - v)), cons))
    return x.value


def random_center(rng: np.random.Generator, k: int) -> np.ndarray:
    """A point of the simplex, sometimes with zeros or a vertex (annotators agree)."""
    c = rng.dirichlet(np.full(k, rng.choice([0.3, 1.0, 5.0])))
    if rng.random() < 0.3:
        c = np.where(rng.random(k) < 0.4, 0.0, c)
        c = c / c.sum() if c.sum() > 0 else np.eye(k)[rng.integers(k)]
    return c


def random_cases(seed: int, n: int = 30):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = 2 + i % 9  # K = 2..10
        c = random_center(rng, k)
        v = rng.normal(size=k) * rng.choice([0.1, 1.0, 5.0]) + (c if i % 2 else 0.0)
        yield v, c, float(rng.choice(RADII[1:]))


def padded(rows: list[np.ndarray], fill: float, width: int = 10) -> np.ndarray:
    """Stack rows of different K into one batch; extra coordinates get ``fill``.

    A coordinate with center 0 and a very negative v is 0 in every projection (and in every
    support point), so one batched call solves problems of all sizes K = 2..10 at once.
    """
    out = np.full((len(rows), width), fill)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


DIRECT = {
    "l2": jax.jit(project_simplex_l2_ball),
    "l1": jax.jit(project_simplex_l1_ball),
    "linf": jax.jit(project_simplex_linf_ball),
}


@pytest.mark.parametrize("ball", BALLS)
def test_projection_matches_cvxpy(ball):
    """30 random problems, K = 2..10, radii from tiny to inactive, plus radius 0 rows."""
    cases = list(random_cases(seed=list(BALLS).index(ball)))
    cases += [(v, c, 0.0) for v, c, _ in cases[:3]]
    vs, cs, radii = zip(*cases, strict=True)
    with jax.enable_x64(True):
        got = np.asarray(DIRECT[ball](padded(vs, -1e3), padded(cs, 0.0), np.array(radii)))
        free = np.asarray(simplex(padded(vs, -1e3)))
    active = inactive = 0
    for (v, c, r), x, x_free in zip(cases, got, free, strict=True):
        k = len(v)
        assert np.all(x[k:] == 0)
        ref = c if r == 0 else cvxpy_projection(v, c, r, ball)
        np.testing.assert_allclose(x[:k], ref, atol=1e-5, rtol=0)
        dist = ball_distance(x_free[:k] - c, ball)
        active += dist > r + 1e-9
        inactive += dist < r - 1e-9
    assert active >= 5 and inactive >= 3  # both regimes are exercised


def ball_distance(d: np.ndarray, ball: str) -> float:
    return {"l2": np.linalg.norm(d), "l1": np.abs(d).sum(), "linf": np.abs(d).max()}[ball]


def test_simplex_projection_matches_numpy_sort_reference():
    """Both code paths (pairwise for small K, sort for large K) against a plain sort."""
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        for k in (1, 2, 7, 16, 17, 40):
            v = rng.normal(size=(20, k)) * 3
            u = -np.sort(-v, axis=-1)
            css = np.cumsum(u, axis=-1) - 1
            ind = np.arange(1, k + 1)
            rho = np.sum(u - css / ind > 0, axis=-1)
            theta = css[np.arange(20), rho - 1] / rho
            ref = np.maximum(v - theta[:, None], 0)
            np.testing.assert_allclose(np.asarray(simplex(v)), ref, atol=1e-12)


def test_unknown_ball_is_named():
    with pytest.raises(ValueError, match="'l3'"):
        project_uncertainty_set(jnp.ones(3), jnp.ones(3) / 3, 0.2, "l3")
    with pytest.raises(ValueError, match="'l3'"):
        support_point(jnp.ones(3), jnp.ones(3) / 3, 0.2, "l3")


@pytest.mark.parametrize("ball", BALLS)
def test_support_point_maximizes_the_linear_objective(ball):
    """support_point(g) attains max ⟨g, x⟩ over U (the adversary's step), vs a cvxpy LP."""
    rng = np.random.default_rng(11)
    cases = []
    for i in range(12):
        k = 2 + i % 5
        cases.append((rng.normal(size=k), random_center(rng, k), rng.choice([0.05, 0.25, 1.0])))
    gs, cs, radii = zip(*cases, strict=True)
    with jax.enable_x64(True):
        got = support(padded(gs, -1e3, 6), padded(cs, 0.0, 6), np.array(radii), ball=ball)
        got = np.asarray(got)
    for (g, c, r), x in zip(cases, got, strict=True):
        k = len(g)
        y = cp.Variable(k)
        cons = [y >= 0, cp.sum(y) == 1, _norm(y - c, ball) <= r]
        problem = cp.Problem(cp.Maximize(g @ y), cons)
        _solve(problem)
        assert np.all(x[k:] == 0)
        assert g @ x[:k] >= problem.value - 1e-5
        assert_feasible(x[:k], c, r, ball)


def assert_feasible(x: np.ndarray, c: np.ndarray, r: float, ball: str, tol: float = 1e-5):
    assert abs(x.sum() - 1) <= tol and x.min() >= -1e-6
    assert ball_distance(x - c, ball) <= r + tol


@st.composite
def problems(draw):
    k = draw(st.sampled_from([2, 3, 5]))
    v = np.array(draw(st.lists(st.floats(-20, 20), min_size=k, max_size=k)), np.float32)
    w = np.array(draw(st.lists(st.floats(0, 1), min_size=k, max_size=k)))
    c = w / w.sum() if w.sum() > 1e-3 else np.eye(k)[0]
    r = draw(st.sampled_from([0.0, 1e-6]) | st.floats(1e-4, 2.5))
    return v, c.astype(np.float32), np.float32(r)


@pytest.mark.parametrize("ball", BALLS)
@settings(max_examples=40, deadline=None)
@given(problem=problems())
def test_projection_is_feasible_and_idempotent(ball, problem):
    v, c, r = problem
    x = np.asarray(project(v, c, r, ball=ball))
    assert np.all(np.isfinite(x))
    assert_feasible(x.astype(np.float64), c.astype(np.float64), float(r), ball)
    again = np.asarray(project(x, c, r, ball=ball))
    np.testing.assert_allclose(again, x, atol=1e-5)
