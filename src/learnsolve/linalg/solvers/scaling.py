"""Per-system scaling of right-hand-side blocks for the Krylov methods and the direct path's residual check.

The methods form squared norms (dot products of residuals); for a right-hand side whose entries lie beyond
about 1e+-77 (float64; 1e+-9 float32) they overflow or underflow. Unscaled, a b of 1e160 ends at x = 0
reported as converged (its tolerance overflows to inf), one of 1e-160 stops 0.2% off (its residual underflows
to 0), one of 1e-310 at x = 0. :class:`Scale` divides each system by a power of two (exact) into range and
scales the answer back; :func:`finite_only` reports a system whose x overflowed as not converged.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from .info import SolveInfo


def sysmax(T: Tensor, red) -> Tensor:
    """max |T| per system of a canonical (B, n, k) block: (B, G, k), NaN where the system holds a NaN."""
    if red.G == 1:
        return torch.linalg.vector_norm(T.detach(), float("inf"), dim=1, keepdim=True)
    m = torch.segment_reduce(T.detach().abs().movedim(1, 0), "max", lengths=red.lengths, axis=0)
    return m.movedim(0, 1).clamp_min(0)  # an empty block: -inf -> 0


class Scale:
    """Power-of-two scaling of each system's right-hand side to max |b| in [0.5, 1), applied when some
    system's max |b| lies outside [tiny^(1/4), max^(1/4)] of its dtype (float64: 1e-77..1e77). A power of two
    changes no digit, so the scaled solve is the unscaled one's to the last bit wherever that does not
    overflow; in range this costs one max-reduction pass and changes nothing. ``atol`` becomes
    ``atol / max(scale)`` (each system's absolute tolerance at most the one asked for)."""

    def __init__(self, op, Bm: Tensor, atol: float):
        self.atol, self.s, self.rows, self._atol = atol, None, None, atol
        red = op.reducer()
        m = sysmax(Bm, red)
        fi = torch.finfo(Bm.dtype)
        small, large = fi.tiny ** 0.25, fi.max ** 0.25
        if m.numel() == 0:
            return
        lo, hi = (float(t) for t in torch.aminmax(m))
        if (lo >= small and hi <= large) or not bool(((m > 0) & ((m < small) | (m > large))).any()):
            return  # in range (the first test: two reductions of the per-system maxima)
        self.s = torch.ldexp(torch.ones_like(m), torch.frexp(m).exponent)  # 2^e with m = f 2^e, f in [0.5, 1)
        self.rows = red.expand(self.s)
        self.atol = atol / float(self.s.max())

    def down(self, T: Tensor | None) -> Tensor | None:
        return T if self.rows is None or T is None else T / self.rows

    def up(self, X: Tensor) -> Tensor:
        return X if self.rows is None else X * self.rows

    def info(self, info: SolveInfo) -> SolveInfo:
        """The report in the caller's units (residuals and ||b|| times the scale, the atol asked for)."""
        if self.s is None:
            return info
        return replace(info, residual_history=info.residual_history * self.s, b_norm=info.b_norm * self.s,
                       atol=self._atol)


def finite_only(info: SolveInfo, X: Tensor, red) -> SolveInfo:
    """A system whose x holds NaN/Inf has not converged, whatever its residual recursion says (MINRES on an A
    of 1e-200 ends with a zero recursive residual and x = inf)."""
    ok = torch.isfinite(sysmax(X, red))
    if bool(ok.all()):
        return info
    bad = info.converged & ~ok
    if not bool(bad.any()):
        return info
    mask = bad if info.breakdown_mask is None else info.breakdown_mask | bad
    return replace(info, converged=info.converged & ok, breakdown_mask=mask,
                   breakdown=info.breakdown or "x overflowed to NaN/Inf (A or b badly scaled, or A singular)")


__all__ = ["Scale", "finite_only", "sysmax"]
