"""Algebraic multigrid baselines from pyamg (smoothed aggregation, Ruge-Stueben) with exact transposes."""

from __future__ import annotations

import numpy as np
import torch

from ..operators.base import LinearOperator
from ..operators.sparse import SparseMatrix
from .base import Preconditioner, _as_sparse


class AMG(Preconditioner):
    """Algebraic multigrid V-cycle from pyamg (baseline; CPU, float64, not differentiable).

    kind: "sa" (smoothed aggregation) or "rs" (Ruge-Stueben). For nonsymmetric A,
    ``apply_transpose`` is the exact transpose M^{-T} of the V-cycle: the same hierarchy transposed
    (A_l^T, P_l := R_l^T, R_l := P_l^T) with transposed, swapped smoothers (Gauss-Seidel / SOR
    sweeps; other smoothers fall back to a second hierarchy built on A^T, a preconditioner for A^T
    that is not exactly M^{-T}).

    ``cycle``: "pyamg" runs pyamg's own cycle (its smoothers, in Python and numpy); "compiled" (symmetric A
    only) runs pyamg's hierarchy -- its matrices and prolongators -- in learnsolve's compiled symmetric
    V(1,1)-cycle (:func:`learnsolve.linalg.preconditioners.multigrid.from_pyamg`: one forward and one backward
    Gauss-Seidel sweep, dense Cholesky on the coarsest level): less time per iteration than pyamg's cycle for
    somewhat more iterations (pyamg's default smoothers sweep twice); measured:
    docs/benchmarks/learned-amg.md. If the compiled cycle cannot be built (a coarsest matrix that is not
    numerically definite) pyamg's cycle is used and :attr:`cycle` says so.

    ``host_blas``: pyamg's cycle runs numpy code, so the Krylov loop holds numpy's BLAS pool to one thread
    while it runs (:mod:`learnsolve.linalg.solvers.threads`): the cycle then runs at pyamg's own speed.

    Args:
        A: the operator (converted to a scipy CSR matrix, float64; one matrix, not a batch).
        kind: ``"sa"`` or ``"rs"``.
        cycle: ``"pyamg"`` or ``"compiled"``.
        **kwargs: passed to pyamg's ``smoothed_aggregation_solver`` / ``ruge_stuben_solver``.

    Raises:
        ValueError: an unknown ``kind`` or ``cycle``.
    """

    host_blas = True

    def __init__(self, A: LinearOperator, kind: str = "sa", cycle: str = "pyamg", **kwargs):
        import pyamg

        if kind not in ("sa", "rs"):
            raise ValueError(f"AMG kind must be 'sa' or 'rs', got {kind!r}")
        if cycle not in ("pyamg", "compiled"):
            raise ValueError(f"AMG cycle must be 'pyamg' or 'compiled', got {cycle!r}")
        self.S = _as_sparse(A, "AMG").detach()
        self.kind, self.kwargs = kind, kwargs
        self.symmetric = self.S.is_symmetric(rtol=1e-12)
        if cycle == "compiled" and not self.symmetric:
            raise ValueError("AMG cycle='compiled' needs a symmetric matrix (its V-cycle is symmetric); use "
                             "cycle='pyamg' for a nonsymmetric one")
        self._pyamg = pyamg
        self._ml = self._build(self.S)
        self._mlT = None
        self.cycle, self._compiled = "pyamg", None
        if cycle == "compiled":
            from .base import FactorizationError
            from .multigrid import from_pyamg

            try:
                self._compiled = [from_pyamg(ml, self.S.dtype) for ml in self._hier]
                self.cycle, self.host_blas = "compiled", False
            except FactorizationError:
                pass

    def _make(self):
        return (self._pyamg.smoothed_aggregation_solver if self.kind == "sa"
                else self._pyamg.ruge_stuben_solver)

    def _build(self, S: SparseMatrix):
        B = S.batch_size or 1
        self._hier = [self._make()(S.to_scipy(i if S.batch_size is not None else None).astype(np.float64),
                                   **self.kwargs) for i in range(B)]
        return [ml.aspreconditioner() for ml in self._hier]

    def _build_transposed(self):
        import inspect

        from pyamg.multilevel import MultilevelSolver
        from pyamg.relaxation.smoothing import change_smoothers

        defaults = inspect.signature(self._make()).parameters
        pre = _transpose_smoother(self.kwargs.get("postsmoother", defaults["postsmoother"].default))
        post = _transpose_smoother(self.kwargs.get("presmoother", defaults["presmoother"].default))
        if pre is _NOT_TRANSPOSABLE or post is _NOT_TRANSPOSABLE:
            return self._build_on(self.S.T)
        out = []
        for ml in self._hier:
            levels = []
            for i, lv in enumerate(ml.levels):
                t = MultilevelSolver.Level()
                t.A = lv.A.T.asformat(lv.A.format)
                if i < len(ml.levels) - 1:
                    t.P, t.R = lv.R.T.asformat(lv.R.format), lv.P.T.asformat(lv.P.format)
                levels.append(t)
            mlT = MultilevelSolver(levels, coarse_solver=self.kwargs.get("coarse_solver", "pinv"))
            change_smoothers(mlT, presmoother=pre, postsmoother=post)
            out.append(mlT.aspreconditioner())
        return out

    def _build_on(self, S: SparseMatrix):
        B = S.batch_size or 1
        return [self._make()(S.to_scipy(i if S.batch_size is not None else None).astype(np.float64),
                             **self.kwargs).aspreconditioner() for i in range(B)]

    def _run(self, mls, R):
        Rn = R.detach().cpu().to(torch.float64).numpy()
        out = np.empty_like(Rn)
        for b in range(Rn.shape[0]):
            P = mls[b if len(mls) > 1 else 0]
            for c in range(Rn.shape[2]):
                out[b, :, c] = P.matvec(np.ascontiguousarray(Rn[b, :, c]))
        return torch.from_numpy(out).to(dtype=R.dtype, device=R.device)

    def apply(self, R):
        if self._compiled is not None:
            mgs = self._compiled
            if len(mgs) == 1:
                return mgs[0].apply(R)
            return torch.cat([mgs[b].apply(R[b:b + 1]) for b in range(R.shape[0])])
        return self._run(self._ml, R)

    def apply_transpose(self, R):
        if self.symmetric:
            return self.apply(R)
        if self._mlT is None:
            self._mlT = self._build_transposed()
        return self._run(self._mlT, R)


_NOT_TRANSPOSABLE = object()


def _transpose_smoother(spec):
    """pyamg smoother spec whose sweep on A^T is the transpose of ``spec``'s sweep on A.

    (D + L)^{-T} = (D + L^T)^{-1}: a forward Gauss-Seidel / SOR sweep on A transposes to a backward
    sweep on A^T and vice versa; a symmetric sweep stays symmetric. Other smoothers: _NOT_TRANSPOSABLE.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, tuple) and len(spec) in (1, 2):
        name, opts = spec[0], dict(spec[1]) if len(spec) == 2 else {}
    else:
        return _NOT_TRANSPOSABLE
    flip = {"forward": "backward", "backward": "forward", "symmetric": "symmetric"}
    if name not in ("gauss_seidel", "block_gauss_seidel", "sor") or "Dinv" in opts \
            or opts.get("sweep", "forward") not in flip:
        return _NOT_TRANSPOSABLE
    opts["sweep"] = flip[opts.get("sweep", "forward")]
    return (name, opts)
