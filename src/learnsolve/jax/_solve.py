"""``learnsolve.jax.solve``: a differentiable sparse solve for JAX (implicit differentiation by
``jax.custom_vjp``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from learnsolve.interop import host_solve, sparse_operator
from learnsolve.linalg import ConvergenceError, ConvergenceWarning

from . import _krylov
from ._operators import Operator, as_operator

NATIVE_PRECONDS = ("jacobi",)
TORCH_METHODS = ("cg", "fcg", "minres", "bicgstab", "gmres", "direct")
TORCH_PRECONDS = ("jacobi", "ic0", "mic0", "ilu0", "amg", "amg_sa", "amg_rs")
ON_FAIL = ("raise", "warn", "ignore")


class SolveInfo(NamedTuple):
    """Convergence of one solve (a pytree: arrays batch like the solution under ``jax.vmap``).

    ``status``: 0 converged, 1 iteration budget spent, 2 breakdown, 3 non-finite residual, 4 stagnated.
    ``residual_norm`` is the TRUE residual norm ``||b - A x||``.
    """

    iterations: jax.Array
    converged: jax.Array
    residual_norm: jax.Array
    b_norm: jax.Array
    status: jax.Array


@dataclass(frozen=True)
class _Config:
    method: str
    precond: Any  # None | "jacobi" | callable | (callable, callable) | torch-side name
    rtol: float
    atol: float
    maxiter: int
    backend: str
    restart: int
    on_fail: str
    transposed: bool = False

    def adjoint(self) -> _Config:
        return replace(self, transposed=not self.transposed)


def _preconditioner(cfg: _Config, op: Operator, params):
    """A vector map z = M^{-1} r (M^{-T} on the adjoint), built from A's (non-differentiated) parameters."""
    p = cfg.precond
    if p is None:
        return lambda r: r
    if p == "jacobi":
        if op.diag is None:
            raise ValueError("precond='jacobi' needs A's diagonal: a matvec function has none; pass a "
                             "callable preconditioner instead")
        d = jax.lax.stop_gradient(op.diag(params))
        inv = 1.0 / jnp.where(d != 0, d, 1.0)
        return lambda r: inv * r
    if isinstance(p, tuple):
        return p[1] if cfg.transposed else p[0]
    return p  # a callable: taken as symmetric


def _native(cfg: _Config, op: Operator, params, b, x0):
    M = _preconditioner(cfg, op, params)
    mv = op.bind(jax.lax.stop_gradient(params))
    bn = _krylov._norm(b)
    tol = jnp.maximum(cfg.rtol * bn, cfg.atol)
    fn = _krylov.METHODS[cfg.method]
    kw = {"restart": cfg.restart} if cfg.method == "gmres" else {}
    res = fn(mv, M, b, x0, tol, cfg.maxiter, **kw)
    return res.x, SolveInfo(res.iterations, res.status == _krylov.CONVERGED, res.residual_norm, bn,
                           res.status.astype(jnp.int32))


def _torch(cfg: _Config, op: Operator, params, b, x0):
    """The torch core through ``jax.pure_callback`` (CPU arrays; any learnsolve method / preconditioner)."""
    n = op.n
    dt = b.dtype
    shapes = (jax.ShapeDtypeStruct(b.shape, dt), jax.ShapeDtypeStruct(b.shape[:-1], jnp.int32),
              jax.ShapeDtypeStruct(b.shape[:-1], jnp.bool_), jax.ShapeDtypeStruct(b.shape[:-1], dt),
              jax.ShapeDtypeStruct(b.shape[:-1], dt))

    def host(leaves, bb):
        # under vmap (expand_dims) every argument has the batch axes, size 1 where it is not batched
        bb = np.asarray(bb)
        if op.kind == "bcoo":
            mat, rows, cols = (np.asarray(a) for a in leaves)
            rows, cols = rows.reshape(-1, rows.shape[-1]), cols.reshape(-1, cols.shape[-1])
            if not ((rows == rows[0]).all() and (cols == cols[0]).all()):
                raise ValueError("A: a vmapped BCOO must keep one sparsity pattern (vmap its data, not its "
                                 "indices)")
            mlead = mat.shape[:-1]
        else:
            mat = np.asarray(leaves[0])
            mlead = mat.shape[:-2]
        lead = np.broadcast_shapes(bb.shape[:-1], mlead)
        B = int(np.prod(lead))
        bf = np.broadcast_to(bb, (*lead, n)).reshape(B, n)
        batched = int(np.prod(mlead)) > 1
        tail = mat.shape[-1:] if op.kind == "bcoo" else (n, n)
        mat = np.broadcast_to(mat, (*lead, *tail)).reshape(B, *tail) if batched else mat.reshape(tail)
        A = sparse_operator(n, rows[0], cols[0], mat) if op.kind == "bcoo" else mat
        rhs = bf if batched else bf.T.copy()  # one matrix: the systems are the columns of one (n, B) block
        kw = {"restart": cfg.restart} if cfg.method == "gmres" else {}
        r = host_solve(A, rhs, method=cfg.method, precond=cfg.precond, rtol=cfg.rtol, atol=cfg.atol,
                       maxiter=cfg.maxiter, transpose=cfg.transposed, options=kw)
        x = r.x if batched else r.x.T
        out = (x.reshape(*lead, n), *(a.reshape(lead) for a in (r.iterations, r.converged, r.residual_norm,
                                                                  r.b_norm)))
        return tuple(np.asarray(o, dtype=s.dtype) for o, s in zip(out, shapes))

    leaves = params if op.kind == "bcoo" else (params,)
    x, it, conv, rn, bn = jax.pure_callback(host, shapes, jax.lax.stop_gradient(leaves), b,
                                            vmap_method="expand_dims")
    status = jnp.where(conv, _krylov.CONVERGED, _krylov.MAXITER).astype(jnp.int32)
    return x, SolveInfo(it, conv, rn, bn, status)


def _forward(cfg, op, params, b, x0):
    if cfg.backend == "torch":
        return _torch(cfg, op, params, b, x0)
    return _native(cfg, op, params, b, x0)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _solve(cfg: _Config, op: Operator, params, b, x0):
    return _forward(cfg, op, params, b, x0)


def _solve_fwd(cfg, op, params, b, x0):
    # the custom_vjp itself (not the raw loop): a second differentiation sees x(params, b) through this rule
    x, info = _solve(cfg, op, params, b, x0)
    return (x, info), (params, x)


def _solve_bwd(cfg, op, res, cts):
    params, x = res
    g = cts[0]
    # the adjoint: A^T lam = g with M^T; the same custom_vjp, so the backward is itself differentiable
    lam, info = _solve(cfg.adjoint(), op.T, params, g, jnp.zeros_like(g))
    _report(info, cfg.adjoint(), "adjoint")
    _, vjp = jax.vjp(lambda p: op.mv(p, x), params)
    (gparams,) = vjp(-lam)
    return gparams, lam, jnp.zeros_like(x)


_solve.defvjp(_solve_fwd, _solve_bwd)


def _message(cfg: _Config, label: str, status, it, rn, bn) -> str:
    status, it = np.asarray(status).ravel(), np.asarray(it).ravel()
    rel = (np.asarray(rn) / np.where(np.asarray(bn) > 0, np.asarray(bn), 1.0)).ravel()
    bad = status != _krylov.CONVERGED
    s = int(status[bad][0])
    why = (_krylov.BREAKDOWNS.get(cfg.method, "breakdown") if s == _krylov.BREAKDOWN
           else _krylov.STATUS_TEXT.get(s, "the host solve did not converge"))
    return (f"{label} solve ({cfg.method}, backend {cfg.backend!r}) did not converge: "
            f"{int(bad.sum())}/{bad.size} systems, worst relative residual {rel.max():.3e} (rtol "
            f"{cfg.rtol:.1e}) after <= {int(it.max())} iterations; {why}. Raise maxiter, loosen rtol, use a "
            "preconditioner, or pass on_fail='warn'/'ignore'")


def _act(cfg, label, on_fail, status, it, rn, bn):
    if np.all(np.asarray(status) == _krylov.CONVERGED):
        return
    msg = _message(cfg, label, status, it, rn, bn)
    if on_fail == "raise":
        raise ConvergenceError(msg, None)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


def _report(info: SolveInfo, cfg: _Config, label: str) -> None:
    """Apply the non-convergence policy: in Python when the values are concrete, else by a debug callback (the
    error then surfaces from the jitted call, with this message)."""
    on_fail = cfg.on_fail
    if on_fail == "ignore":
        return
    args = (info.status, info.iterations, info.residual_norm, info.b_norm)
    if any(isinstance(a, jax.core.Tracer) for a in args):
        jax.debug.callback(partial(_act, cfg, label, on_fail), *args)
    else:
        _act(cfg, label, on_fail, *args)


def solve(A, b, *, method: str = "cg", precond=None, rtol: float | None = None, atol: float = 0.0,
          maxiter: int | None = None, x0=None, params=None, backend: str = "jax", restart: int = 30,
          on_fail: str = "raise", return_info: bool = False, diff: str = "vjp"):
    """Solve ``A x = b`` differentiably in JAX (implicit backward: one adjoint solve with A^T and M^T).

    Args:
        A: a ``jax.experimental.sparse.BCOO`` (n, n) matrix (gradients w.r.t. its ``data``, O(nnz)), a dense
            (n, n) array, or a linear function ``A(x)`` / ``A(params, x)`` (gradients w.r.t. ``params`` and
            the arrays the function closes over, by the VJP of the product at the solution). Batches:
            ``jax.vmap``.
        b: the right-hand side, shape (n,).
        method: "cg" (SPD), "bicgstab" or "gmres" (nonsymmetric); with ``backend="torch"`` also "fcg",
            "minres", "direct".
        precond: None; "jacobi" (BCOO or dense A); a function ``r -> M^{-1} r`` (taken as symmetric) or a pair
            ``(M_inv, M_inv_T)``; with ``backend="torch"`` any learnsolve name ("ic0", "mic0", "ilu0", "amg").
        rtol: relative tolerance: stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (true residual); defaults
            to 1e-10 in float64 and 1e-5 in float32. The adjoint solve uses the same tolerances.
        atol: absolute tolerance.
        maxiter: iteration budget (default 10 n; GMRES counts inner iterations).
        x0: initial guess (no gradient flows to it).
        params: the differentiable parameters of a matvec function ``A(params, x)`` (a pytree).
        backend: "jax" (native ``lax.while_loop`` Krylov loops: jit, vmap, grad, any device) or "torch" (the
            torch core through ``jax.pure_callback``: compiled CPU kernels, IC(0)/ILU(0)/AMG; BCOO or dense
            A).
        restart: GMRES restart length.
        on_fail: "raise" (``learnsolve.linalg.ConvergenceError``), "warn" or "ignore", forward and adjoint.
            Under ``jax.jit`` the check runs in a debug callback; the error then surfaces from the jitted
            call.
        return_info: also return a :class:`SolveInfo`.
        diff: "vjp" (``jax.custom_vjp``: reverse mode, also twice; the backward is built from the same
            custom_vjp) or "linear_solve" (``jax.lax.custom_linear_solve`` around the same Krylov loops:
            forward mode ``jax.jvp`` / ``jax.jacfwd`` too, and any order; each tangent or cotangent is one
            more solve, with A or A^T; no ``x0``).

    Differentiable w.r.t. b, the BCOO data / dense entries / ``params``.

    Returns:
        x, shape (n,); ``(x, info)`` with ``return_info=True`` (``info`` a pytree: ``iterations``,
            ``converged``, ``residual_norm``, ``b_norm``, ``status``; batched under ``vmap``).

    Raises:
        ValueError: an unknown method, backend, ``on_fail`` or preconditioner, or a b that is not (n,).
        TypeError: a non-floating b.
        learnsolve.linalg.ConvergenceError: with ``on_fail="raise"``, a forward or adjoint solve that did not
            converge.

    Shapes:
        A: BCOO / dense (n, n); b, x: (n,); gradient w.r.t. a BCOO's data: (nnz,).

    Example:
        ```python
        import jax, jax.numpy as jnp
        import learnsolve.jax as lsj

        jax.config.update("jax_enable_x64", True)
        A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
        g = jax.grad(lambda b: lsj.solve(A, b).sum())(jnp.ones(2))  # A^-T 1
        ```
    """
    if method not in (TORCH_METHODS if backend == "torch" else _krylov.METHODS):
        ok = TORCH_METHODS if backend == "torch" else tuple(_krylov.METHODS)
        raise ValueError(f"method: unknown {method!r} for backend {backend!r}; choose one of {', '.join(ok)}")
    if backend not in ("jax", "torch"):
        raise ValueError(f"backend: must be 'jax' or 'torch', got {backend!r}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"on_fail: must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    b = jnp.asarray(b)
    if b.ndim != 1:
        raise ValueError(f"b: a vector of shape (n,) is needed, got shape {b.shape}; use jax.vmap for "
                         "several right-hand sides")
    if not jnp.issubdtype(b.dtype, jnp.floating):
        raise TypeError(f"b: a real floating-point array is needed, got dtype {b.dtype}")
    op, p = as_operator(A, params, b, layout="coo" if backend == "torch" else "auto",
                        forward_mode=diff == "linear_solve")
    if op.n != b.shape[0]:
        raise ValueError(f"b: A is {op.n} x {op.n} but b has {b.shape[0]} entries")
    if op.kind != "matvec":
        dtA = (p[0] if op.kind == "bcoo" else p).dtype  # ell: (n, K) data, dense: the matrix
        if dtA != b.dtype:
            raise TypeError(f"A and b: dtypes differ ({dtA} vs {b.dtype}); cast one of them")
    _check_precond(precond, backend, op)
    if backend == "torch" and op.kind == "matvec":
        raise ValueError("backend='torch' needs A as a BCOO or dense array, not a function; use "
                         "backend='jax'")
    explicit_x0 = x0 is not None
    if x0 is None:
        x0 = jnp.zeros_like(b)
    else:
        x0 = jnp.asarray(x0, b.dtype)
        if x0.shape != b.shape:
            raise ValueError(f"x0: shape {x0.shape} differs from b's {b.shape}")
    if rtol is None:
        rtol = 1e-10 if b.dtype == jnp.float64 else 1e-5
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    if maxiter < 0 or rtol < 0 or atol < 0:
        raise ValueError(f"rtol, atol, maxiter: must be >= 0, got {rtol}, {atol}, {maxiter}")
    cfg = _Config(method, precond, float(rtol), float(atol), maxiter, backend, int(restart), on_fail)
    if diff == "linear_solve":
        if explicit_x0:
            raise ValueError("x0: not supported with diff='linear_solve' (its solves must be linear in the "
                             "right-hand side); use diff='vjp'")
        x, info = _linear_solve(cfg, op, p, b)
    elif diff == "vjp":
        x, info = _solve(cfg, op, p, b, x0)
        _report(info, cfg, "forward")
    else:
        raise ValueError(f"diff: must be 'vjp' or 'linear_solve', got {diff!r}")
    return (x, info) if return_info else x


def _linear_solve(cfg: _Config, op: Operator, p, b):
    """``lax.custom_linear_solve``: JAX derives forward and reverse mode (any order) from the linear map and
    the two solves (A with M, A^T with M^T); every solve is checked by the non-convergence policy."""

    def solve_with(c, o, label):
        def run(_matvec, rhs):
            x, info = _forward(c, o, p, rhs, jnp.zeros_like(rhs))
            _report(info, c, label)
            return x, info
        return run

    return jax.lax.custom_linear_solve(lambda x: op.mv(p, x), b, solve_with(cfg, op, "forward"),
                                       solve_with(cfg.adjoint(), op.T, "adjoint"), has_aux=True)


def _check_precond(precond, backend, op):
    if precond is None or callable(precond):
        return
    if isinstance(precond, tuple) and len(precond) == 2 and all(callable(f) for f in precond):
        return
    if isinstance(precond, str):
        names = TORCH_PRECONDS if backend == "torch" else NATIVE_PRECONDS
        if precond in names:
            return
        hint = ("; IC(0), ILU(0) and AMG run with backend='torch'"
                if backend == "jax" and precond in TORCH_PRECONDS else "")
        raise ValueError(f"precond: unknown {precond!r} for backend {backend!r}; choose one of "
                         f"{', '.join(names)}{hint}")
    raise TypeError(f"precond: None, a name, a function r -> M^-1 r or a pair (M^-1, M^-T) is needed, got "
                    f"{type(precond).__name__}")
