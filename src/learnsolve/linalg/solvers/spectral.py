"""Extreme eigenvalues and condition numbers from the Lanczos matrix hidden in (P)CG.

k steps of CG on ``A x = b`` with preconditioner ``P = M^{-1}`` (SPD) are k steps of Lanczos on the
preconditioned operator ``P A`` (similar to the symmetric ``P^{1/2} A P^{1/2}``), started from the
preconditioned residual. The CG step lengths ``alpha_j`` and direction updates ``beta_j`` give the
symmetric tridiagonal Lanczos matrix T_k (Saad, *Iterative Methods for Sparse Linear Systems*, 6.7.3):

    T_jj     = 1 / alpha_j + beta_{j-1} / alpha_{j-1}          (beta_{-1} = 0)
    T_j,j+1  = sqrt(beta_j) / alpha_j

whose eigenvalues (Ritz values) lie in [lambda_min(P A), lambda_max(P A)] and converge to the extreme
ones first. The estimate is therefore always an under-estimate of kappa(P A) = lambda_max / lambda_min
(in exact arithmetic), sharp once k is large enough for the spectrum at hand.

Finite precision: once a Ritz value has converged, Lanczos loses orthogonality and the coefficients
amplify rounding (a batched segment sum vs a plain dot product changes them by O(1) a few steps later),
yet the extreme Ritz values stay inside the spectrum and converge to the same values (Paige's theory;
measured: 5e-5 relative spread at the step where this happens, identical again a few steps on).

Everything is written with plain differentiable torch operations (SpMV through the operator,
per-system dot products through its :class:`~learnsolve.linalg.operators.layout.Reducer`, ``eigvalsh`` on the
small k x k matrices), so the estimate can be a training loss for the operator's values or the
preconditioner's parameters. Cost: ``steps`` SpMVs and preconditioner applications plus
O(systems * steps^3) for the tridiagonal eigenvalues; never an n x n matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.convert import as_operator
from ..operators.layout import Layout, canonicalize
from ..preconditioners.classical import Preconditioner, resolve_preconditioner

__all__ = ["condition_estimate", "extreme_eigenvalues", "lanczos_tridiagonal"]


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 with a finite gradient at 0 (0 there: masked entries stay NaN-free)."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def lanczos_tridiagonal(alphas: Tensor, betas: Tensor) -> Tensor:
    """Symmetric tridiagonal Lanczos matrix T_k from k CG coefficients.

    ``alphas`` (..., k): the CG step lengths alpha_0..alpha_{k-1}; ``betas`` (..., k - 1) or (..., k):
    the direction updates beta_0..beta_{k-2} (a k-th beta, if given, is ignored: it couples T_k to
    the next, not yet computed, Lanczos vector). Returns (..., k, k), differentiable in both.
    """
    k = alphas.shape[-1]
    if k == 0:
        raise ValueError("lanczos_tridiagonal needs at least one CG step (alphas has 0 entries)")
    if betas.shape[-1] not in (k - 1, k) or betas.shape[:-1] != alphas.shape[:-1]:
        raise ValueError(f"lanczos_tridiagonal: alphas {tuple(alphas.shape)} and betas {tuple(betas.shape)} "
                         f"must share leading dims, with k or k - 1 = {k - 1} betas")
    betas = betas[..., : k - 1]
    inv = 1.0 / alphas
    diag = torch.cat([inv[..., :1], inv[..., 1:] + betas * inv[..., :-1]], dim=-1)
    off = _safe_sqrt(betas) * inv[..., :-1]
    return torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def _start_block(op: LinearOperator, b: Tensor | None, generator: torch.Generator | None):
    n = op.shape[0]
    blocks = None if op.blocks is None else op.blocks.numel() - 1
    if b is None:
        shape = (n,) if op.batch_size is None else (op.batch_size, n)
        b = torch.randn(shape, generator=generator, dtype=op.dtype,
                        device=op.device if generator is None else generator.device).to(op.device)
    return canonicalize(b, n, op.batch_size, blocks)


def _cg_coefficients(op: LinearOperator, Bm: Tensor, P, steps: int, tol: float):
    """``steps`` PCG iterations from x0 = 0 on canonical blocks (B, n, k).

    Returns alphas, betas of shape (B, G, k, steps) with the steps after a system's convergence
    replaced so that T_k = T_m (+) T_00 I (see :func:`extreme_eigenvalues`), and the per-system number
    m of genuine steps. Out-of-place updates: differentiable w.r.t. A's and P's parameters and b.
    """
    red = op.reducer()
    R = Bm
    Z = P(R) if P is not None else R
    rz = red.dot(R, Z)
    if bool((rz < 0).any()):
        raise ValueError("condition_estimate: r^T M r < 0, the preconditioner is not positive definite")
    if bool((rz == 0).any()):
        raise ValueError("condition_estimate: a start vector is zero (or annihilated by the preconditioner) "
                         "for some system; pass b=None for a random start")
    rz0 = rz.detach()
    Pd = Z
    active = torch.ones_like(rz, dtype=torch.bool)
    count = torch.zeros(rz.shape, dtype=torch.int64, device=rz.device)
    alphas, betas = [], []
    one = torch.ones_like(rz)
    for j in range(steps):
        AP = op.mv(Pd)
        pAp = red.dot(Pd, AP)
        if bool((active & ~(pAp > 0)).any()):
            raise ValueError("condition_estimate: p^T A p <= 0, A is not positive definite (or M not SPD)")
        alpha = torch.where(active, rz / torch.where(active, pAp, one), torch.zeros_like(rz))
        alphas.append(alpha)
        count = count + active.to(torch.int64)
        if j == steps - 1:
            break
        R = R - red.expand(alpha) * AP
        Z = P(R) if P is not None else R
        rz_new = red.dot(R, Z)
        beta = torch.where(active, rz_new / torch.where(active, rz, one), torch.zeros_like(rz))
        # converged (an invariant Krylov subspace): the next step would divide ~0 by ~0
        active = active & (rz_new.detach() > (tol * tol) * rz0)
        beta = torch.where(active, beta, torch.zeros_like(beta))
        betas.append(beta)
        Pd = Z + red.expand(beta) * Pd
        rz = rz_new
    A_ = torch.stack(alphas, -1)
    B_ = torch.stack(betas, -1) if betas else A_[..., :0]
    # steps after convergence: alpha_j := alpha_0 and beta_{j-1} := 0 (already), so their rows of T are
    # decoupled copies of T_00 = 1/alpha_0, a Ritz value of T_m: the extreme eigenvalues are those of T_m
    live = torch.arange(A_.shape[-1], device=A_.device) < count.unsqueeze(-1)
    A_ = torch.where(live, A_, A_[..., :1])
    return A_, B_, count


def _system_shape(layout: Layout, shape) -> tuple[int, ...]:
    B, G, k = shape
    return layout.system_shape(B, G, k)


def extreme_eigenvalues(A, b: Tensor | None = None, M=None, steps: int = 20,
                        generator: torch.Generator | None = None, tol: float | None = None):
    """Ritz estimates ``(lambda_min, lambda_max)`` of ``M^{-1} A`` from ``steps`` PCG iterations.

    Differentiable w.r.t. A's and M's parameters and b.

    Args:
        A: any linalg operator (dense, SparseMatrix, a block-diagonal PyG SparseMatrix: one estimate per
            diagonal block; batched: one per matrix); SPD.
        b: the start vector(s) in the layouts of :func:`learnsolve.linalg.cg` (one estimate per right-hand
            side), or None for a standard normal one drawn from ``generator``.
        M: None, a preconditioner name, a :class:`Preconditioner` (its ``apply`` is M^{-1}) or a callable on
            canonical blocks; it must be SPD.
        steps: number of PCG (Lanczos) steps.
        generator: random generator for the start vector when ``b`` is None.
        tol: a system stops (masked, without NaNs) once its ``r^T M^{-1} r`` fell below ``tol^2`` times its
            start value (default 100 eps of the dtype).

    Returns:
        ``(lambda_min, lambda_max)``: two tensors of the per-system shape.

    Raises:
        ValueError: ``steps < 1`` or a non-square A.
        TypeError: A's and b's dtypes differ.
    """
    if int(steps) < 1:
        raise ValueError(f"condition_estimate: steps must be >= 1, got {steps}")
    op = as_operator(A)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"condition_estimate: A must be square, got shape {op.shape}")
    Bm, layout = _start_block(op, b, generator)
    if Bm.dtype != op.dtype:
        raise TypeError(f"condition_estimate: dtype mismatch, A is {op.dtype}, b is {Bm.dtype}")
    Mp = resolve_preconditioner(M, op)
    P = None if Mp is None else (Mp.apply if isinstance(Mp, Preconditioner) else Mp)
    tol = 100 * torch.finfo(op.dtype).eps if tol is None else float(tol)
    alphas, betas, _ = _cg_coefficients(op, Bm, P, int(steps), tol)
    T = lanczos_tridiagonal(alphas, betas)
    ev = torch.linalg.eigvalsh(T)  # (B, G, k, steps), ascending; differentiable
    shape = _system_shape(layout, ev.shape[:3])
    return ev[..., 0].reshape(shape), ev[..., -1].reshape(shape)


def condition_estimate(A, b: Tensor | None = None, M=None, steps: int = 20,
                       generator: torch.Generator | None = None, tol: float | None = None) -> Tensor:
    """Lanczos estimate of kappa(M^{-1} A) = lambda_max / lambda_min for SPD A and SPD M^{-1}.

    A lower bound in exact arithmetic, sharp once ``steps`` resolves both ends of the spectrum. Cost:
    ``steps`` SpMVs + preconditioner applications, O(steps^3) per system for the tridiagonal eigenvalues.
    Differentiable: usable as a training loss (``log kappa``).

    Args:
        A: SPD operator, as in :func:`extreme_eigenvalues`.
        b: start vector(s), or None for a random one.
        M: SPD preconditioner (None, a name, a ``Preconditioner`` or a callable).
        steps: number of Lanczos (CG) steps.
        generator: random generator for the start vector.
        tol: early stop of converged systems, as in :func:`extreme_eigenvalues`.

    Returns:
        One estimate per system: a 0-d tensor for a single system, (G,) for a PyG block-diagonal matrix.

    Raises:
        ValueError: ``steps < 1`` or a non-square A.
    """
    lmin, lmax = extreme_eigenvalues(A, b, M, steps, generator, tol)
    return lmax / lmin
