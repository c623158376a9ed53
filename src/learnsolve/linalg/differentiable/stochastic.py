"""Single-right-hand-side stochastic adjoint: a randomly truncated adjoint solve, reweighted (unbiased).

With one right-hand side there is nothing to sample, so ``backward="stochastic"`` truncates the adjoint Krylov
iteration at random instead (Russian roulette on a telescoping sum). Write the converged adjoint solution as

    lambda = lambda_m + (lambda - lambda_m)

where lambda_m is the iterate after m = ceil(truncate * K) iterations, K being the FORWARD solve's iteration
count (the adjoint has the same operator, preconditioner and tolerance, so it needs about as many). The first
term is always computed; the second only with probability ``survive``, then divided by it:

    estimate = lambda_m + 1[U < survive] (lambda - lambda_m) / survive,        U ~ Uniform(0, 1)

E[estimate] = lambda exactly (the iterates are deterministic), so every gradient formed from it (dL/db =
lambda, dL/dA = -lambda x^T, linear in lambda) is unbiased. The continuation restarts the method from lambda_m
(a warm start: any method works, including the compiled CG path). Expected cost, in adjoint iterations:
m + survive * (K' - m) ~ (truncate + survive (1 - truncate)) K; defaults 0.4 and 0.1: about 0.46 of the
implicit backward. Variance: (1 - survive) / survive * ||lambda - lambda_m||^2, i.e. set by how far m
iterations get.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

TRUNCATE = 0.4
SURVIVE = 0.1


def roulette_adjoint(tspec, opT, G: Tensor, truncate: float | None, survive: float | None, forward_iters: int,
                     generator: torch.Generator | None) -> tuple[Tensor, dict]:
    """(unbiased estimate of A^{-T} G, {"iterations": adjoint iterations spent, "continued": bool}).

    ``tspec``: the adjoint problem's spec (``learnsolve.linalg.differentiable.solve._Spec``); G: one
    right-hand side (1, n, 1)."""
    t = TRUNCATE if truncate is None else float(truncate)
    c = SURVIVE if survive is None else float(survive)
    m = max(1, math.ceil(t * max(forward_iters, 1)))
    quiet = {"reshape": lambda info: info, "sink": None, "_T": None, "_last": None, "warm_start": False}
    first = replace(tspec, maxiter=m, on_fail="ignore", **quiet)
    with torch.no_grad():
        L_m, info = first.run(opT, G)
        spent = info.niter
        if info.all_converged:  # converged within m iterations: the estimate is the implicit one
            return L_m, {"iterations": spent, "continued": False, "exact": True}
        dev = "cpu" if generator is None else generator.device
        u = float(torch.rand((), generator=generator, device=dev))
        if u >= c:
            return L_m, {"iterations": spent, "continued": False, "exact": False}
        rest = replace(tspec, x0=L_m, maxiter=max(tspec.maxiter - spent, 1), **quiet)
        L, info2 = rest.run(opT, G)  # raises / warns by on_fail when the continuation does not converge
        return L_m + (L - L_m) / c, {"iterations": spent + info2.niter, "continued": True, "exact": False}


def validate(truncate, survive) -> None:
    for name, v in (("truncate", truncate), ("survive", survive)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < float(v) <= 1.0):
            raise ValueError(f"adjoint {name} must be a number in (0, 1], got {v!r}")
