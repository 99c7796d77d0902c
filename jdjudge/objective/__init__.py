"""The objective (DESIGN.md §2): label distributions, KL + CE, exact projections onto the
simplex ∩ a norm ball, and the inner solvers that find adversarial targets. Pure JAX."""
