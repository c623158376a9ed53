"""``unrolled_cg``: conjugate gradients with learned per-iteration step and direction corrections.

For an SPD system A x = b (one graph of a PyG batch), with ``P`` = identity or Jacobi (``precond``),
the first ``steps`` = K iterations are (x_0 = 0, r_0 = b, z_0 = P r_0, p_0 = z_0; k = 0..K-1)

    alpha_k  = r_k^T z_k / p_k^T A p_k            (the exact CG step for the current p_k, r_k)
    x_{k+1}  = x_k + alpha_k exp(s_k) p_k
    r_{k+1}  = r_k - alpha_k exp(s_k) A p_k
    z_{k+1}  = P r_{k+1}
    beta_k   = r_{k+1}^T z_{k+1} / r_k^T z_k
    p_{k+1}  = z_{k+1} + beta_k exp(t_k) p_k

with learned s, t in R^K initialised to zero, so the untrained model is exactly (P)CG. Both
corrections are multiplicative: alpha_k and beta_k are invariant to the scale of A and b, and so is
the learned map. Every Krylov scalar is per graph (the reducer's segment sums), and a graph whose
residual is exactly zero takes zero steps instead of dividing by zero.

Training backpropagates through the K iterations (plain torch ops; SpMV gradients are O(nnz)) and
minimises the mean over graphs of the relative A-norm error ||x_K - x*||_A^2 / ||x*||_A^2
(``loss="energy"``, x* = ``batch.x``) or of log(||b - A x_K|| / ||b||) (``loss="residual"``, the
default). Note: x_K always lies in the Krylov space K_K(PA, Pb), over which CG's iterate minimises the
A-norm error, so s = t = 0 is a global minimiser of the energy loss (its gradient vanishes there):
"energy" can only pull a perturbed model back to CG. The residual loss is not minimised by CG
(MINRES minimises it), so it has a descent direction at s = t = 0.
``solve``: the untrained model (s = t = 0) runs ONE uninterrupted (P)CG recurrence to the tolerance, so it is
exactly (P)CG (a version restarted at x_K: 101.75 vs 101.6 iterations, K = 8, Jacobi, 32x32); a trained
model runs its K learned steps and then (P)CG restarted at x_K (continuing the recurrence after learned steps
is not CG any more: 138.4 vs 100.4 iterations, see :meth:`UnrolledCG.solve`). Fixed-budget use (the brief's: K
steps as a layer inside a network): :meth:`UnrolledCG.iterate`. Cost per step: 1 SpMV, 2 per-graph dots, 3
axpys.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from learnsolve.linalg import SolveInfo, SparseMatrix, cg
from learnsolve.nn.features import require_positive_diagonal

from .base import LearnedModel, check_choice, check_int, system_matrix

LOSSES = ("energy", "residual")
PRECONDS = ("none", "jacobi")


class UnrolledCG(LearnedModel):
    """K (P)CG iterations with learned step scalings exp(s_k) and direction scalings exp(t_k).

    Args: ``steps`` K >= 1; ``loss`` "energy" | "residual"; ``precond`` "none" | "jacobi".
    Parameters: ``s`` (K,), ``t`` (K,) (zeros: plain CG).
    """

    kind = "solver"
    requires_spd = True

    def __init__(self, steps: int = 8, loss: str = "residual", precond: str = "none"):
        super().__init__()
        check_choice("unrolled_cg", "loss", loss, LOSSES)
        check_choice("unrolled_cg", "precond", precond, PRECONDS)
        self.steps, self.loss_kind, self.precond = check_int("unrolled_cg", "steps", steps, 1), loss, precond
        self.s = nn.Parameter(torch.zeros(self.steps))
        self.t = nn.Parameter(torch.zeros(self.steps))

    # -- the iterations ----------------------------------------------------------------------------
    def _system(self, batch):
        A = system_matrix(batch)
        d = A.diagonal()
        require_positive_diagonal(d, "unrolled_cg")
        Bm = batch.b.view(1, -1, 1).to(A.dtype)
        M = (lambda R: R / d.view(1, -1, 1)) if self.precond == "jacobi" else None
        return A, Bm, M

    def iterate(self, A: SparseMatrix, Bm: Tensor, M=None, rtol: float = 0.0):
        """The K learned steps with this model's parameters: see :func:`unrolled_cg`."""
        return unrolled_cg(A, Bm, self.s, self.t, M, rtol)

    def export_program(self) -> str:
        return ("unrolled_cg has no network to compile: its learned parameters are the K step scalings "
                "exp(s_k) and direction scalings exp(t_k) (tensors s and t in model.safetensors) of plain "
                "(P)CG")

    # -- training and solving ------------------------------------------------------------------------
    def classical_start(self) -> str | None:
        return "Jacobi-preconditioned CG" if self.precond == "jacobi" else "CG"

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A, Bm, M = self._system(batch)
        xs = None
        if self.loss_kind == "energy":
            if getattr(batch, "x", None) is None:
                raise ValueError("unrolled_cg: loss='energy' needs the reference solution batch.x")
            xs = batch.x.view(1, -1, 1).to(A.dtype)
        X, _, _, _ = self.iterate(A, Bm, M)
        loss, rel = unrolled_loss(A, Bm, X, self.loss_kind, xs)
        return loss, {"rel_residual": float(rel.detach().mean())}

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000) -> tuple[Tensor, SolveInfo]:
        """K learned steps (a graph stops early once it reaches rtol), then plain (P)CG from there.

        ``info.iterations`` (G,) = learned steps taken + CG iterations; ``converged`` from CG
        (a graph already at rtol counts as converged with zero CG iterations)."""
        A, Bm, M = self._system(batch)
        if bool((self.s == 0).all()) and bool((self.t == 0).all()):
            # plain (P)CG: one uninterrupted recurrence, iteration for iteration the same as linalg.cg
            X, _, taken, hist = unrolled_cg(A, Bm, self.s, self.t, M, rtol=rtol,
                                            total=max(int(maxiter), self.steps))
            red = A.reducer()
            bn = red.norm(Bm).view(-1)
            history = torch.stack(hist).reshape(len(hist), -1)
            info = SolveInfo(method="unrolled_cg", iterations=taken.view(-1),
                             converged=history[-1] <= rtol * bn, residual_history=history, b_norm=bn,
                             rtol=float(rtol), atol=0.0)
            return X.view(-1), info
        # learned steps, then CG restarted at x_K: continuing the recurrence after learned steps is not CG any
        # more (measured, K = 8, Jacobi, trained 300 steps, held-out 32x32: 138.4 iterations continued, 100.4
        # restarted, 100.1 plain PCG)
        X, _, taken, hist = self.iterate(A, Bm, M, rtol=rtol)
        x, info = cg(A, Bm.view(-1), M, x0=X.view(-1), rtol=rtol, maxiter=max(int(maxiter) - self.steps, 0))
        G = info.iterations.shape
        history = torch.cat([torch.stack(hist[:-1]).reshape(-1, *G), info.residual_history])
        info = dataclasses.replace(info, method="unrolled_cg", iterations=info.iterations + taken.reshape(G),
                                   residual_history=history)
        return x, info


def unrolled_cg(A: SparseMatrix, Bm: Tensor, s: Tensor, t: Tensor, M=None, rtol: float = 0.0,
                total: int | None = None):
    """K = len(s) (P)CG steps with step scalings exp(s_k) and direction scalings exp(t_k) from x_0 = 0, then
    (``total`` > K) plain steps of the same recurrence up to ``total`` steps, stopping once every graph
    reached ``rtol`` (``total`` None: K).

    A: (block-diagonal) operator; Bm: canonical (1, N, 1) right-hand sides; M: None or a callable
    applying P on canonical blocks. Returns ``(X_K, R_K, steps_taken, history)``: per-graph
    ``steps_taken`` (1, G, 1) counts the steps a graph took before its residual reached
    ``rtol * ||b||`` (``rtol = 0``: all K, unless its residual is exactly zero); ``history`` lists the
    K + 1 residual norms (1, G, 1). Differentiable w.r.t. s, t (and A's values, b). Zero-division
    safe per graph: a graph with r = 0 (hence p = 0) takes zero steps.
    """
    red = A.reducer()
    dt = A.dtype
    es, et = torch.exp(s).to(dt), torch.exp(t).to(dt)
    X = torch.zeros_like(Bm)
    R = Bm
    Z = M(R) if M is not None else R
    rz = red.dot(R, Z)
    P = Z
    rn = red.norm(R)
    tol = rtol * red.norm(Bm).detach()
    active = rn.detach() > tol
    taken = torch.zeros(rz.shape, dtype=torch.int64, device=rz.device)
    hist = [rn.detach()]
    zero, one = torch.zeros_like(rz), torch.ones_like(rz)
    K = s.shape[0]
    total = K if total is None else max(int(total), K)
    for k in range(total):
        if k >= K and not bool(active.any()):
            break
        AP = A.mv(P)
        pAp = red.dot(P, AP)
        ok = active & (pAp > 0)
        alpha = torch.where(ok, rz / torch.where(ok, pAp, one), zero) * (es[k] if k < K else 1.0)
        ea = red.expand(alpha)
        X = X + ea * P
        R = R - ea * AP
        taken = taken + active.to(torch.int64)
        rn = red.norm(R)
        hist.append(rn.detach())
        active = active & (rn.detach() > tol)
        if k == total - 1:
            break
        Z = M(R) if M is not None else R
        rz_new = red.dot(R, Z)
        ok = active & (rz > 0)
        beta = torch.where(ok, rz_new / torch.where(ok, rz, one), zero) * (et[k] if k < K else 1.0)
        P = Z + red.expand(beta) * P
        rz = rz_new
    return X, R, taken, hist


def unrolled_loss(A: SparseMatrix, Bm: Tensor, X: Tensor, kind: str, xs: Tensor | None = None):
    """(loss, rel_residual (1, G, 1)) of the iterate X (1, N, 1).

    ``"energy"``: mean_g ||X - x*||_A^2 / ||x*||_A^2 (xs = x*, canonical); ``"residual"``:
    mean_g log(||b - A X|| / ||b||). One or two extra SpMVs."""
    red = A.reducer()
    rel = red.norm(Bm - A.mv(X)) / red.norm(Bm)
    if kind == "residual":
        return torch.log(rel.clamp_min(1e-30)).mean(), rel
    E = X - xs
    return (red.dot(E, A.mv(E)) / red.dot(xs, A.mv(xs)).clamp_min(1e-300)).mean(), rel
