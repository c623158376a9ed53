"""What a Krylov solve reports (:class:`SolveInfo`) and how every method decides convergence (``_Monitor``:
per system ``||r|| <= max(rtol ||b||, atol)``, breakdowns, the true-residual confirmation). Shared by the
torch iterations (:mod:`.krylov`) and the compiled CG path (:mod:`.fused`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def default_rtol(dtype: torch.dtype) -> float:
    """Relative tolerance used when none is given: tight for float64, loose for low precision."""
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-2)


@dataclass
class SolveInfo:
    """Statistics of one (batched) solve.

    ``iterations``, ``converged`` have the per-system shape (batch, blocks and right-hand sides as
    the caller laid them out; a scalar for a single system). ``residual_history`` has shape
    (niter + 1, *system shape) and holds residual 2-norms. ``breakdown`` names the first breakdown
    seen (None if none); ``breakdown_mask`` says which systems broke down. ``adjoint`` is filled by
    the backward pass of :func:`learnsolve.linalg.solve`.
    """

    method: str
    iterations: Tensor
    converged: Tensor
    residual_history: Tensor
    b_norm: Tensor
    rtol: float
    atol: float
    breakdown: str | None = None
    breakdown_mask: Tensor | None = None
    adjoint: SolveInfo | None = field(default=None, repr=False)

    @property
    def niter(self) -> int:
        return int(self.iterations.max()) if self.iterations.numel() else 0

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def residual_norm(self) -> Tensor:
        return self.residual_history[-1]

    @property
    def relative_residual(self) -> Tensor:
        b = self.b_norm
        return self.residual_norm / torch.where(b > 0, b, torch.ones_like(b))

    def summary(self) -> str:
        nconv = int(self.converged.sum())
        tot = self.converged.numel()
        worst = float(self.relative_residual.max()) if tot else 0.0
        s = (f"{self.method}: {nconv}/{tot} systems converged in <= {self.niter} iterations "
             f"(worst relative residual {worst:.3e}, rtol {self.rtol:.1e})")
        if self.breakdown:
            s += f"; breakdown: {self.breakdown}"
        return s

    def _reshaped(self, shape: tuple[int, ...]) -> SolveInfo:
        h = self.residual_history
        bm = self.breakdown_mask
        return SolveInfo(self.method, self.iterations.reshape(shape), self.converged.reshape(shape),
                         h.reshape(h.shape[0], *shape), self.b_norm.reshape(shape), self.rtol, self.atol,
                         self.breakdown, None if bm is None else bm.reshape(shape))


class _Monitor:
    """Per-system convergence bookkeeping shared by all methods (scalars of shape (B, G, k))."""

    def __init__(self, method, rnorm0: Tensor, bnorm: Tensor, rtol: float, atol: float, maxiter: int):
        self.method = method
        self.rtol, self.atol, self.maxiter = rtol, atol, maxiter
        self.bnorm = bnorm.detach()
        self.tol = torch.clamp(rtol * self.bnorm, min=atol)
        r = rnorm0.detach()
        self.hist = [r]
        self.converged = r <= self.tol
        self.broken = torch.zeros_like(self.converged)
        self.active = ~self.converged
        self.iters = torch.zeros(r.shape, dtype=torch.int64, device=r.device)
        self.reason: str | None = None
        self.it = 0

    def check(self, bad: Tensor, reason: str) -> None:
        new = bad & self.active
        if bool(new.any()):  # out of place: autograd may hold the previous masks
            self.broken = self.broken | new
            self.active = self.active & ~new
            if self.reason is None:
                self.reason = reason

    def update(self, rnorm: Tensor) -> None:
        r = rnorm.detach()
        self.it += 1
        self.iters = self.iters + self.active.to(torch.int64)
        self.hist.append(r)
        self.check(~torch.isfinite(r), "the residual became NaN/Inf")
        self.converged = self.converged | (self.active & (r <= self.tol))
        self.active = self.active & ~self.converged

    def done(self) -> bool:
        return self.it >= self.maxiter or not bool(self.active.any())

    def confirm(self, true_norm: Tensor, newly: Tensor) -> Tensor:
        """Check the systems ``newly`` converged on the recursive residual against their TRUE residual norm
        (b - A x, one SpMV by the caller). A system whose true residual is above the tolerance is re-opened
        (the caller replaces its residual by the true one and restarts its direction), unless the true
        residual did not halve since its last replacement: it then stops, not converged, as stagnated at the
        attainable accuracy. Returns the re-opened systems (the history's last entry becomes the true
        norm)."""
        t = true_norm.detach()
        self.hist[-1] = torch.where(newly, t, self.hist[-1])
        bad = newly & (t > self.tol)
        if not bool(bad.any()):
            return bad
        if not hasattr(self, "replaced"):
            self.replaced = torch.full_like(t, float("inf"))
        stalled = bad & (t >= 0.5 * self.replaced)
        reopen = bad & ~stalled
        self.converged = self.converged & ~bad
        self.active = self.active | reopen
        self.replaced = torch.where(reopen, t, self.replaced)
        if bool(stalled.any()):
            self.broken = self.broken | stalled
            if self.reason is None:
                rel = t / torch.where(self.bnorm > 0, self.bnorm, torch.ones_like(self.bnorm))
                self.reason = (f"stagnated at true relative residual {float(rel[stalled].max()):.1e} (the "
                               "attainable accuracy: the recursive residual fell below rtol "
                               f"{self.rtol:.1e}, the true one did not)")
        return reopen

    def info(self) -> SolveInfo:
        return SolveInfo(self.method, self.iters, self.converged, torch.stack(self.hist), self.bnorm,
                         self.rtol, self.atol, self.reason, self.broken)
