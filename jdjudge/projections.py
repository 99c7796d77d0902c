"""Exact Euclidean projections onto the simplex and onto simplex ∩ norm balls.

The adversarial inner loop (DESIGN.md §2) projects K-vectors onto
U(c) = Δ_K ∩ {x : ‖x − c‖ ≤ r}. The paper solved this with CVXPY per item; here every
projection is a fixed-size, vectorized computation (sorts and fixed-iteration bisections) so
it runs inside a jitted train step, batched over any leading axes, under vmap, and exactly
(to floating-point precision) in float32 and float64. ``center`` must lie in the simplex.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

BALLS = ("l2", "l1", "linf")


def project_simplex(v: ArrayLike) -> Array:
    """Project each row (last axis) onto the probability simplex.

    Sort-based threshold (Duchi et al., 2008): x = max(v − θ, 0), where θ is fixed by the
    largest prefix of the sorted row that stays positive. No iteration, so it is exact.
    """
    v = jnp.asarray(v)
    k = v.shape[-1]
    u = -jnp.sort(-v, axis=-1)  # descending
    css = jnp.cumsum(u, axis=-1) - 1.0
    idx = jnp.arange(1, k + 1, dtype=v.dtype)
    # The condition holds on a prefix (always at index 0), so counting it gives rho.
    rho = jnp.sum(u - css / idx > 0, axis=-1, keepdims=True)
    rho = jnp.maximum(rho, 1)
    theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _radius(radius: ArrayLike, v: Array) -> Array:
    """Radius as an array broadcast to the batch shape, in v's dtype."""
    return jnp.broadcast_to(jnp.asarray(radius, dtype=v.dtype), v.shape[:-1])


def _bisect(
    feasible: Callable[[Array], Array], lo: Array, hi: Array, num_iters: int
) -> tuple[Array, Array]:
    """Fixed-iteration bisection keeping ``feasible(lo)`` true and ``feasible(hi)`` false.

    Monotone predicates only; a static iteration count keeps shapes and control flow fixed.
    """

    def body(_: int, bracket: tuple[Array, Array]) -> tuple[Array, Array]:
        a, b = bracket
        mid = 0.5 * (a + b)
        ok = feasible(mid)
        return jnp.where(ok, mid, a), jnp.where(ok, b, mid)

    return jax.lax.fori_loop(0, num_iters, body, (lo, hi))


def _sum_root(point: Callable[[Array], Array], knots: Array) -> Array:
    """Exact λ with Σ point(λ) = 1, for Σ point nonincreasing and piecewise linear in λ.

    ``knots`` [..., M] must contain every breakpoint and two points bracketing the root.
    Evaluating the sum at all knots finds the linear piece holding the root; interpolating
    on that piece is exact (no iteration, O(M·K) per item).
    """
    knots = jnp.sort(knots, axis=-1)
    sums = jnp.sum(jax.vmap(point, in_axes=-1, out_axes=-2)(knots), axis=-1)
    m = knots.shape[-1]
    left = jnp.clip(jnp.sum(sums >= 1.0, axis=-1, keepdims=True) - 1, 0, m - 2)
    a = jnp.take_along_axis(knots, left, axis=-1)[..., 0]
    b = jnp.take_along_axis(knots, left + 1, axis=-1)[..., 0]
    sa = jnp.take_along_axis(sums, left, axis=-1)[..., 0]
    sb = jnp.take_along_axis(sums, left + 1, axis=-1)[..., 0]
    gap = sa - sb
    frac = jnp.clip((sa - 1.0) / jnp.where(gap > 0, gap, 1.0), 0.0, 1.0)
    return jnp.where(gap > 0, a + frac * (b - a), a)


def project_simplex_l2_ball(
    v: ArrayLike, center: ArrayLike, radius: ArrayLike, num_iters: int = 64
) -> Array:
    """Project onto Δ_K ∩ {x : ‖x − center‖₂ ≤ radius}.

    With a multiplier μ ≥ 0 for the ball the minimizer is Π_Δ((v + μc)/(1 + μ)); writing
    s = 1/(1 + μ) ∈ [0, 1] this is Π_Δ(c + s(v − c)), whose distance to c grows monotonically
    in s. Bisecting on s needs no upper bound on μ and keeps s's relative precision near 0.
    """
    v = jnp.asarray(v)
    c = jnp.broadcast_to(jnp.asarray(center, dtype=v.dtype), v.shape)
    r = _radius(radius, v)
    d = v - c

    def point(s: Array) -> Array:
        return project_simplex(c + s[..., None] * d)

    def inside(s: Array) -> Array:
        return jnp.sum((point(s) - c) ** 2, axis=-1) <= r**2

    zeros = jnp.zeros_like(r)
    s_lo, _ = _bisect(inside, zeros, jnp.ones_like(r), num_iters)
    s = jnp.where(inside(jnp.ones_like(r)), 1.0, s_lo)
    return jnp.where((r > 0)[..., None], point(s), c)


def project_simplex_linf_ball(
    v: ArrayLike, center: ArrayLike, radius: ArrayLike, num_iters: int = 64
) -> Array:
    """Project onto Δ_K ∩ {x : ‖x − center‖∞ ≤ radius}.

    The set is a box ∩ simplex, so x_i = clip(v_i − λ, max(0, c_i − r), min(1, c_i + r))
    with the single multiplier λ fixed by Σx = 1 (a monotone, piecewise-linear equation).
    """
    v = jnp.asarray(v)
    c = jnp.broadcast_to(jnp.asarray(center, dtype=v.dtype), v.shape)
    r = _radius(radius, v)[..., None]
    low = jnp.maximum(c - r, 0.0)
    high = jnp.minimum(c + r, 1.0)

    def point(lam: Array) -> Array:
        return jnp.clip(v - lam[..., None], low, high)

    # Breakpoints where a coordinate leaves a bound; the outermost ones bracket the root.
    x = point(_sum_root(point, jnp.concatenate([v - high, v - low], axis=-1)))
    return jnp.where(r > 0, x, c)


def _l1_penalized(v: Array, c: Array, mu: Array) -> Array:
    """argmin over Δ of ½‖x − v‖² + μ‖x − c‖₁ (μ broadcast over the batch).

    For a simplex multiplier λ each coordinate is the soft-threshold of v_i − λ toward c_i
    by μ, clipped at 0; Σx is nonincreasing and piecewise linear in λ.
    """
    mu_ = mu[..., None]

    def point(lam: Array) -> Array:
        w = v - lam[..., None] - c
        shrunk = jnp.sign(w) * jnp.maximum(jnp.abs(w) - mu_, 0.0)
        return jnp.maximum(c + shrunk, 0.0)

    # Breakpoints of each coordinate, plus a left end where every coordinate is ≥ 1.
    knots = jnp.concatenate(
        [v - c - mu_, v - c + mu_, v + mu_, jnp.min(v - mu_, axis=-1, keepdims=True) - 1.0],
        axis=-1,
    )
    return point(_sum_root(point, knots))


def project_simplex_l1_ball(
    v: ArrayLike, center: ArrayLike, radius: ArrayLike, num_iters: int = 64
) -> Array:
    """Project onto Δ_K ∩ {x : ‖x − center‖₁ ≤ radius}.

    Penalty route: x(μ) minimizes ½‖x − v‖² + μ‖x − c‖₁ over Δ (inner bisection on the
    simplex multiplier); ‖x(μ) − c‖₁ is nonincreasing in μ and x(μ) = c once μ exceeds the
    spread of v − c, so an outer bisection on μ ∈ [0, spread] hits the radius exactly.
    """
    v = jnp.asarray(v)
    c = jnp.broadcast_to(jnp.asarray(center, dtype=v.dtype), v.shape)
    r = _radius(radius, v)
    free = project_simplex(v)
    free_ok = jnp.sum(jnp.abs(free - c), axis=-1) <= r

    def inside(mu: Array) -> Array:
        return jnp.sum(jnp.abs(_l1_penalized(v, c, mu) - c), axis=-1) <= r

    spread = jnp.max(v - c, axis=-1) - jnp.min(v - c, axis=-1)
    # Keep the infeasible end at lo and the feasible end at hi.
    _, mu_hi = _bisect(lambda mu: ~inside(mu), jnp.zeros_like(r), spread, num_iters)
    x = jnp.where(free_ok[..., None], free, _l1_penalized(v, c, mu_hi))
    return jnp.where((r > 0)[..., None], x, c)


def _fill_in_order(order_key: Array, capacity: Array, budget: Array) -> Array:
    """Pour ``budget`` into coordinates by ascending ``order_key``, each up to ``capacity``."""
    order = jnp.argsort(order_key, axis=-1)
    cap = jnp.take_along_axis(capacity, order, axis=-1)
    before = jnp.cumsum(cap, axis=-1) - cap
    fill = jnp.clip(budget[..., None] - before, 0.0, cap)
    return jnp.take_along_axis(fill, jnp.argsort(order, axis=-1), axis=-1)


def support_point(
    g: ArrayLike, center: ArrayLike, radius: ArrayLike, ball: str, scale: float = 1e3
) -> Array:
    """A maximizer of ⟨g, x⟩ over U = Δ_K ∩ {‖x − center‖ ≤ radius}.

    Maximizing a linearization is the step of the worst-case adversary. For the polytopes
    (l1, linf) the maximizer is a greedy fill: exact, and ``scale`` is unused. For l2 it is
    Π_U(center + scale · g) = Π_Δ(center + t·g) at the t where the ball becomes active, which
    is the support point whenever that t is below ``scale``; pass g with the differences
    between its relevant coordinates of order 1 (adding a constant to g changes nothing).
    """
    check_ball(ball)
    g = jnp.asarray(g)
    c = jnp.broadcast_to(jnp.asarray(center, dtype=g.dtype), g.shape)
    r = _radius(radius, g)
    if ball == "linf":
        low = jnp.maximum(c - r[..., None], 0.0)
        high = jnp.minimum(c + r[..., None], 1.0)
        return low + _fill_in_order(-g, high - low, 1.0 - jnp.sum(low, axis=-1))
    if ball == "l1":
        # Move up to r/2 of mass onto the best coordinate, taken from the worst ones first.
        best = jax.nn.one_hot(jnp.argmax(g, axis=-1), g.shape[-1], dtype=g.dtype)
        moved = jnp.minimum(0.5 * r, 1.0 - jnp.sum(best * c, axis=-1))
        taken = _fill_in_order(g, c * (1.0 - best), moved)
        return c + moved[..., None] * best - taken
    g = g - jnp.mean(g, axis=-1, keepdims=True)
    return project_simplex_l2_ball(c + scale * g, c, r)


_PROJECTIONS = {
    "l2": project_simplex_l2_ball,
    "l1": project_simplex_l1_ball,
    "linf": project_simplex_linf_ball,
}


def check_ball(ball: str) -> None:
    """Raise ValueError naming an unknown ball (checked at trace time, ball is static)."""
    if ball not in _PROJECTIONS:
        raise ValueError(f"unknown ball {ball!r}; expected one of {', '.join(BALLS)}")


def project_uncertainty_set(v: ArrayLike, center: ArrayLike, radius: ArrayLike, ball: str) -> Array:
    """Project onto U(center) = Δ_K ∩ {‖x − center‖ ≤ radius} for ball in {l2, l1, linf}."""
    check_ball(ball)
    return _PROJECTIONS[ball](v, center, radius)
