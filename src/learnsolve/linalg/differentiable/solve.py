"""``solve(A, b)``: one differentiable linear solve for dense, sparse and matrix-free A.

Implicit differentiation (default). With x = A^{-1} b and an upstream gradient g = dL/dx:

    A^T lambda = g                  (one adjoint solve: transposed operator, transposed preconditioner)
    dL/db      = lambda
    dL/dA      = -lambda x^T        dense
    dL/dvalues = -lambda[row] x[col] (summed over right-hand sides)   sparse, O(nnz)
    dL/dtheta  = -vjp of A(theta) x at lambda                           matrix-free

The backward pass calls the same autograd Function on the transposed problem and forms the
parameter gradient from differentiable operations, so it can be differentiated again (double
backward, Hessian-vector products). The forward iterations are not recorded: memory is O(n)
whatever the iteration count.

``backward="unrolled"`` records every iteration (memory grows linearly with them);
``backward="truncated"`` returns the same converged solution but differentiates only the last
``unroll_steps`` iterations (restarted from the detached iterate ``x_{N-k}``).

``backward="stochastic"``: the implicit gradient with the adjoint solved for a random sample of the
right-hand sides only (row sampling of the (B, n) / (n, k) right-hand-side block). Every gradient is a
sum over right-hand sides j of a term linear in g_j, so sampling s of N uniformly without replacement
and scaling the sampled g_j by N / s (inclusion probability s / N) gives an UNBIASED estimate of dL/db
and dL/dA at s / N of the adjoint cost; its variance grows with the spread of the per-right-hand-side
terms. The sampled adjoint is a smaller solve when A is shared by all right-hand sides, or batched
with one right-hand side per matrix and no preconditioner object; otherwise (a PyG block batch, a
preconditioner with a batch, several right-hand sides per batched matrix) the unsampled right-hand sides
are zeroed instead (same estimate, no saving). ``sample`` always counts right-hand sides.
"""

from __future__ import annotations

import numbers
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..operators.base import DenseOperator, LinearOperator
from ..operators.convert import as_operator
from ..operators.layout import canonicalize
from ..operators.sparse import SparseMatrix
from ..operators.validate import (
    MAXITER_CAP,
    validate_count,
    validate_system,
    validate_tolerances,
    validate_x0,
)
from ..preconditioners.classical import resolve_preconditioner
from ..solvers.direct import factorize
from ..solvers.krylov import METHOD_OPTIONS, METHODS, SolveInfo, _run_method, default_maxiter, default_rtol
from ..solvers.scaling import Scale as _Scale
from ..solvers.scaling import finite_only as _finite_only
from .monitor import _OVERRIDES, BACKWARD_MODES, _overridden, _record
from .stochastic import roulette_adjoint
from .stochastic import validate as validate_roulette

ALL_METHODS = (*METHODS, "direct")
ON_FAIL = ("raise", "warn", "ignore")


class ConvergenceError(RuntimeError):
    """A forward or adjoint solve did not reach its tolerance; ``.info`` holds the SolveInfo."""

    def __init__(self, message: str, info: SolveInfo):
        super().__init__(message)
        self.info = info


class ConvergenceWarning(RuntimeWarning):
    pass


@dataclass
class AdjointOptions:
    """Options of the adjoint solve A^T lambda = g (defaults: those of the forward solve).

    ``warm_start``: start from the previous adjoint solution of the same solve when that lowers the
    initial residual (repeated backward passes, Hessian-vector products).

    ``sample`` (``backward="stochastic"`` only): how many right-hand sides (columns of the canonical
    (B, n, k) block, per diagonal block of a PyG batch) get an adjoint solve, a float fraction in (0, 1]
    or an integer count >= 1 (default 0.5; note ``1`` is ONE right-hand side, ``1.0`` all of them);
    ``generator``: the torch.Generator it draws from. The sampled adjoint solve's SolveInfo is not reported
    (``info.adjoint`` stays None); its failure to converge still raises / warns by ``on_fail``.

    ``truncate``, ``survive`` (``backward="stochastic"`` with ONE right-hand side, :mod:`.stochastic`): the
    adjoint iteration runs ``ceil(truncate * forward iterations)`` steps, then finishes with probability
    ``survive`` and the finished part is divided by it (unbiased). Expected cost ~ truncate + survive (1 -
    truncate) of the implicit backward (defaults 0.4, 0.1: 0.46); variance grows as truncate or survive
    shrink. ``info.adjoint`` reports the draw: its ``iterations`` are the adjoint iterations spent, its method
    names the truncation.
    """

    method: str | None = None
    rtol: float | None = None
    atol: float | None = None
    maxiter: int | None = None
    warm_start: bool = True
    sample: float | int | None = None
    generator: torch.Generator | None = None
    truncate: float | None = None
    survive: float | None = None

    def sample_count(self, N: int) -> int:
        """Number of the N right-hand sides whose adjoint is solved."""
        s = 0.5 if self.sample is None else self.sample
        if isinstance(s, bool) or not isinstance(s, (numbers.Integral, numbers.Real)):
            raise TypeError(f"adjoint sample must be a float fraction in (0, 1] or an integer count >= 1, "
                            f"got {s!r} of type {type(s).__name__}")
        if not isinstance(s, numbers.Integral):
            s = float(s)
            if not 0.0 < s <= 1.0:
                raise ValueError(f"adjoint sample fraction must lie in (0, 1], got {s}")
            return max(1, min(N, round(s * N)))
        if s < 1:
            raise ValueError(f"adjoint sample count must be >= 1, got {s} (a fraction is a float: 1.0 = all)")
        return min(N, int(s))


@dataclass
class _Spec:
    """Everything about one solve except the differentiable tensors (A's parameters and b)."""

    op: LinearOperator
    method: str
    precond: Any
    rtol: float
    atol: float
    maxiter: int
    options: dict
    on_fail: str
    x0: Tensor | None
    adjoint: AdjointOptions
    reshape: Any  # SolveInfo -> SolveInfo in the caller's system shape
    label: str = "forward"
    factor: Any = None
    transposed_factor: bool = False
    sink: Any = None  # callable receiving this solve's SolveInfo
    adjoint_sink: Any = None  # sink of the transposed spec, attached when that spec is built
    _T: _Spec | None = field(default=None, repr=False)
    _last: Tensor | None = field(default=None, repr=False)
    warm_start: bool = False
    stochastic: bool = False
    iterations: int = 0  # of the last run (the forward's sets the stochastic adjoint's truncation)

    def transposed(self, opT: LinearOperator | None = None) -> _Spec:
        """The adjoint problem's spec (built once); ``opT``: A^T if the caller already has it."""
        if self._T is None:
            a = self.adjoint
            method = a.method or self.method
            back = AdjointOptions(self.method, self.rtol, self.atol, self.maxiter, a.warm_start)
            P = self.precond
            T = _Spec(
                op=self.op.T if opT is None else opT, method=method, precond=None if P is None else P.T,
                rtol=self.rtol if a.rtol is None else a.rtol, atol=self.atol if a.atol is None else a.atol,
                maxiter=self.maxiter if a.maxiter is None else a.maxiter,
                options=self.options if method == self.method else {}, on_fail=self.on_fail, x0=None,
                adjoint=back, reshape=self.reshape, label="adjoint" if self.label == "forward" else "forward",
                factor=self.factor, transposed_factor=not self.transposed_factor, warm_start=a.warm_start,
                sink=self.adjoint_sink)
            T._T = self
            if method != self.method:
                T.factor = None
            self._T = T
        return self._T

    def run(self, op: LinearOperator, Bm: Tensor) -> tuple[Tensor, SolveInfo]:
        if not bool(Bm.any()):  # zero right-hand side: zero solution, no iterations
            X, info = torch.zeros_like(Bm), _trivial_info(self.method, Bm, op, self.rtol, self.atol)
        elif self.method == "direct":
            if self.factor is None:
                self.factor, self.transposed_factor = factorize(op), False
                if self._T is not None:
                    self._T.factor, self._T.transposed_factor = self.factor, True
            X = self.factor.solve(Bm, transpose=self.transposed_factor)
            sc = _Scale(op, Bm, self.atol)  # the residual check in range (b ~ 1e-300 must not pass as 0)
            info = sc.info(_direct_info(op, sc.down(X), sc.down(Bm), self.rtol, sc.atol))
        else:
            X0 = self.x0
            if self.warm_start and self._last is not None and self._last.shape == Bm.shape:
                r0 = (Bm - op.mv(self._last)).norm()
                X0 = self._last if bool(r0 < Bm.norm()) else X0
            M = None if self.precond is None else self.precond.apply
            sc = _Scale(op, Bm, self.atol)
            X, info = _run_method(self.method, op, sc.down(Bm), M, sc.down(X0), self.rtol, sc.atol,
                                  self.maxiter, **self.options)
            X = sc.up(X)
            info = _finite_only(sc.info(info), X, op.reducer())
            if self.warm_start:
                self._last = X.detach()
        self.iterations = info.niter
        info = self.reshape(info)
        if self.sink is not None:
            self.sink(info)
        _check(info, self.on_fail, self.label)
        return X, info


def _trivial_info(method, Bm, op, rtol, atol) -> SolveInfo:
    shape = (Bm.shape[0], op.reducer().G, Bm.shape[2])
    z = torch.zeros(shape, dtype=Bm.dtype, device=Bm.device)
    return SolveInfo(method, torch.zeros(shape, dtype=torch.int64, device=Bm.device),
                     torch.ones(shape, dtype=torch.bool, device=Bm.device), z.unsqueeze(0), z, rtol, atol)


def _direct_info(op, X, Bm, rtol, atol) -> SolveInfo:
    red = op.reducer()
    r = red.norm(Bm - op.mv(X))
    bn = red.norm(Bm)
    # the factorisation's answer is checked like an iterative one's, with a floor of sqrt(eps) for the
    # rounding a direct solve of an ill-conditioned A leaves: a numerically singular A (b outside its range)
    # gives a finite x whose residual is of the order of b's, which must not pass as a solution
    floor = torch.finfo(r.dtype).eps ** 0.5
    ok = torch.isfinite(r) & (r <= torch.clamp(max(float(rtol), floor) * bn, min=float(atol)))
    return SolveInfo("direct", torch.zeros(r.shape, dtype=torch.int64, device=r.device),
                     ok, r.unsqueeze(0), bn, rtol, atol)


def _check(info: SolveInfo, on_fail: str, label: str) -> None:
    if info.all_converged or on_fail == "ignore":
        return
    if info.method == "direct":
        msg = (f"{label} direct solve left a large residual: {info.summary()}. A is numerically singular (or "
               "b lies outside its range); check A, or pass on_fail='warn'/'ignore' to accept a "
               "least-effort x")
    else:
        msg = (f"{label} solve did not converge: {info.summary()}. Raise maxiter, loosen rtol, use a "
               f"preconditioner, or pass on_fail='warn'/'ignore'")
    if on_fail == "raise":
        raise ConvergenceError(msg, info)
    warnings.warn(msg, ConvergenceWarning, stacklevel=4)


class _ImplicitSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, Bm: Tensor, *params: Tensor) -> Tensor:
        op = spec.op.with_params(params)
        X, _ = spec.run(op, Bm)
        ctx.spec = spec
        ctx.save_for_backward(X, *params)
        return X

    @staticmethod
    def backward(ctx, G: Tensor):
        X, *params = ctx.saved_tensors
        spec: _Spec = ctx.spec
        op = spec.op.with_params(params)
        opT = op.T
        tspec = spec.transposed(opT)
        if spec.stochastic and G.shape[0] * G.shape[2] == 1 and opT.blocks is None:
            Lam = _roulette(spec, tspec, opT, G.contiguous())
        elif spec.stochastic:
            Lam = _sampled_adjoint(tspec, opT, G.contiguous(), spec.adjoint)
        else:
            Lam = _ImplicitSolve.apply(tspec, G.contiguous(), *opT.params())
        need = ctx.needs_input_grad[2:]
        grads: tuple = (None,) * len(params)
        if any(need):
            grads = tuple(g if nd else None for g, nd in zip(op.vjp_params(-Lam, X), need))
        return (None, Lam, *grads)


def _roulette(spec: _Spec, tspec: _Spec, opT: LinearOperator, G: Tensor) -> Tensor:
    """One right-hand side: the randomly truncated, reweighted adjoint solve of :mod:`.stochastic`."""
    if torch.is_grad_enabled():
        raise RuntimeError("backward='stochastic' with one right-hand side cannot be differentiated twice "
                           "(its truncation is random); use backward='implicit' for double backward / hvp")
    a = spec.adjoint
    Lam, stats = roulette_adjoint(tspec, opT, G, a.truncate, a.survive, spec.iterations, a.generator)
    if tspec.sink is not None:
        z = G.new_zeros(G.shape[0], 1, G.shape[2])
        how = "exact" if stats["exact"] else ("continued" if stats["continued"] else "truncated")
        info = SolveInfo(f"{tspec.method} (stochastic adjoint: {how})",
                         torch.full(z.shape, stats["iterations"], dtype=torch.int64, device=G.device),
                         torch.ones(z.shape, dtype=torch.bool, device=G.device),
                         z.unsqueeze(0) * float("nan"), z + G.norm(), tspec.rtol, tspec.atol)
        tspec.sink(tspec.reshape(info))
    return Lam


def _sampled_adjoint(tspec: _Spec, opT: LinearOperator, G: Tensor, opts: AdjointOptions) -> Tensor:
    """Unbiased estimate of A^{-T} G from adjoint solves for a uniform sample of G's right-hand sides."""
    B, n, k = G.shape
    # the sampled solve reports nothing to the caller (its SolveInfo has the sample's shape)
    sub = replace(tspec, reshape=lambda info: info, sink=None, _T=None, _last=None, warm_start=False, x0=None)
    gen = opts.generator
    dev = "cpu" if gen is None else gen.device

    def draw(N: int) -> tuple[Tensor, float]:
        s = opts.sample_count(N)
        return torch.randperm(N, generator=gen, device=dev)[:s].to(G.device), N / s

    if opT.batch_size is None and opT.blocks is None and (B == 1 or tspec.precond is None):
        # one matrix (and one preconditioner) shared by all B k right-hand sides: solve the sampled columns
        Gf = G.permute(1, 0, 2).reshape(1, n, B * k)
        idx, scale = draw(B * k)
        Ls = _ImplicitSolve.apply(sub, (Gf.index_select(2, idx) * scale).contiguous(), *opT.params())
        Lf = torch.zeros_like(Gf).index_copy(2, idx, Ls)  # out of place: double backward stays intact
        return Lf.reshape(n, B, k).permute(1, 0, 2).contiguous()
    if (opT.blocks is None and k == 1 and tspec.precond is None and tspec.method != "direct"
            and isinstance(opT, (DenseOperator, SparseMatrix)) and G.shape[0] == opT.batch_size):
        # a batch of matrices, one right-hand side each, no preconditioner object: solve the sampled
        # matrices only
        idx, scale = draw(B)
        params = tuple(p.index_select(0, idx) for p in opT.params())
        sub.op = opT.with_params(params)
        Ls = _ImplicitSolve.apply(sub, (G.index_select(0, idx) * scale).contiguous(), *params)
        return torch.zeros_like(G).index_copy(0, idx, Ls)
    # block batches, batched preconditioners, batches with several right-hand sides: zero the unsampled
    # right-hand sides (the same estimate, without the saving) (same estimate, full cost)
    red = opT.reducer()
    N = B * red.G * k
    idx, scale = draw(N)
    w = torch.zeros(N, dtype=G.dtype, device=G.device).index_fill(0, idx, scale).reshape(B, red.G, k)
    return _ImplicitSolve.apply(sub, (G * red.expand(w)).contiguous(), *opT.params())


def _adjoint_options(adjoint) -> AdjointOptions:
    """``adjoint=`` as checked AdjointOptions (a dict is converted; its tolerances and maxiter validated)."""
    if adjoint is None:
        return AdjointOptions()
    if isinstance(adjoint, dict):
        try:
            adjoint = AdjointOptions(**adjoint)
        except TypeError as e:
            raise TypeError(f"adjoint: {e}; its keys are those of AdjointOptions") from None
    if not isinstance(adjoint, AdjointOptions):
        raise TypeError(f"adjoint must be None, a dict or an AdjointOptions, got {type(adjoint).__name__}")
    validate_tolerances(adjoint.rtol, adjoint.atol, "adjoint ")
    return replace(adjoint, maxiter=validate_count(adjoint.maxiter, "adjoint maxiter", 0, MAXITER_CAP))


def solve(A, b: Tensor, method: str = "cg", precond=None, rtol: float | None = None, atol: float = 0.0,
          maxiter: int | None = None, x0: Tensor | None = None, backward: str = "implicit",
          unroll_steps: int | None = None, adjoint: AdjointOptions | dict | None = None,
          on_fail: str = "raise", return_info: bool = False, **options):
    """Solve ``A x = b`` differentiably.

    Args:
        A: dense tensor (n, n) / (B, n, n), :class:`SparseMatrix` (values (nnz,) or (B, nnz), or a
            block-diagonal PyG batch), :class:`MatrixFreeOperator`, torch sparse or scipy sparse matrix.
        b: (n,), (n, k), or batched like ``torch.linalg.solve`` ((B, n), (B, n, k)).
        method: "cg" | "fcg" | "minres" | "bicgstab" | "gmres" | "direct".
        precond: None, a :class:`Preconditioner`, a name ("jacobi", "ic0", "ilu0", "amg"), or a callable
            on (B, n, k) blocks (taken as symmetric and linear; wrap it in ``FunctionPreconditioner``
            to give its transpose or mark it nonlinear).
        rtol: relative tolerance: stop when ||b - A x|| <= max(rtol ||b||, atol) per system; defaults by dtype
            (1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap (default 10 n).
        x0: initial guess (same shape as b); does not receive a gradient.
        backward: "implicit" | "unrolled" | "truncated" (with ``unroll_steps``) | "stochastic"
            (adjoint solved for a random sample of the right-hand sides, rescaled: unbiased).
        adjoint: :class:`AdjointOptions` or dict(method=, rtol=, atol=, maxiter=, warm_start=, sample=,
            generator=).
        on_fail: "raise" (:class:`ConvergenceError`) | "warn" | "ignore", for forward and adjoint.
        return_info: also return the forward :class:`SolveInfo` (``info.adjoint`` is set by backward).
        options: method options (``restart`` for gmres, ``truncation`` for fcg).

    Returns:
        x, shaped like ``b``; ``(x, info)`` with ``return_info=True``, info the forward ``SolveInfo`` (its
            ``adjoint`` field is set when the backward has run).

    Raises:
        ConvergenceError: with ``on_fail="raise"``, when a forward (or later an adjoint) system does not
            converge; it carries the ``SolveInfo``.
        ValueError: an unknown method, backward mode, ``on_fail`` or adjoint option; a nonlinear
            preconditioner with cg / minres / bicgstab; bad shapes, NaN/Inf, device mismatch, meta tensors,
            the zero matrix or tolerances; a negative or non-integral ``maxiter`` (or ``restart`` /
            ``truncation`` / ``unroll_steps`` below 1); an ``x0`` with NaN/Inf.
        TypeError: unknown method options; non-floating, half-precision (float16 / bfloat16) or mismatched
            dtypes; a tolerance or count that is not a number; an ``x0`` of another dtype or device.

    Right-hand sides of any magnitude are solved: each system's b is scaled by a power of two (exact) when its
    largest entry lies outside about 1e-77..1e77 (float64), where the methods' squared norms would overflow or
    underflow; a converged system whose x is not finite is reported as not converged.

    Shapes:
        A: (n, n), (B, n, n), or a ``SparseMatrix`` with values (nnz,) / (B, nnz).
        b, x: (n,), (n, k), (B, n) or (B, n, k).
        Gradients: w.r.t. b shaped like b; w.r.t. a ``SparseMatrix``'s values shaped like its values (O(nnz),
        restricted to A's pattern); w.r.t. a dense A shaped like A.

    ``method="direct"`` always differentiates implicitly, reusing its factorisation for A^T.
    ``backward="implicit"`` keeps memory independent of the iteration count and can be differentiated again
    (double backward, :func:`hvp`); ``"unrolled"`` is exact for the iterations run but, for CG, only along
    symmetric perturbations of A.

    Cost: one Krylov solve forward, one adjoint solve backward, plus O(nnz) for the values gradient.

    Example:
        ```python
        import torch
        from learnsolve.linalg import SparseMatrix, solve

        A = SparseMatrix.from_dense(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
        b = torch.ones(2, dtype=torch.float64, requires_grad=True)
        x = solve(A, b, method="cg")
        x.sum().backward()  # b.grad = A^-T 1
        ```
    """
    if _OVERRIDES:  # monitor.override_backward (diagnostics): another mode, without stochastic-only options
        backward, unroll_steps = _overridden(backward, unroll_steps)
        if backward != "stochastic" and adjoint is not None:
            a = AdjointOptions(**adjoint) if isinstance(adjoint, dict) else adjoint
            adjoint = replace(a, sample=None, truncate=None, survive=None)
    op = as_operator(A)
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    if backward not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {backward!r}; choose one of {', '.join(BACKWARD_MODES)}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"on_fail must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    if backward == "truncated" and validate_count(unroll_steps, "unroll_steps", 1) is None:
        raise ValueError("backward='truncated' needs unroll_steps >= 1")
    validate_system(op, b)
    validate_tolerances(rtol, atol)
    maxiter = validate_count(maxiter, "maxiter", 0, MAXITER_CAP)
    n = op.shape[0]
    nblocks = None if op.blocks is None else op.blocks.numel() - 1
    Bm, layout = canonicalize(b, n, op.batch_size, nblocks)
    X0 = None
    if x0 is not None:
        validate_x0(x0, b)
        X0 = canonicalize(x0.detach(), n, op.batch_size, nblocks, name="x0")[0]
    adjoint = _adjoint_options(adjoint)
    if adjoint.method is not None and adjoint.method not in ALL_METHODS:
        raise ValueError(f"unknown adjoint method {adjoint.method!r}; choose one of {', '.join(ALL_METHODS)}")
    M = resolve_preconditioner(precond, op) if method != "direct" else None
    if M is not None and not M.linear and method in ("cg", "minres", "bicgstab"):
        raise ValueError(f"a nonlinear preconditioner breaks {method}: use method='fcg' or 'gmres'")
    allowed = METHOD_OPTIONS.get(method, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method {method!r}; it takes "
                        f"{list(allowed) or 'none'}")
    options = {k: validate_count(v, k, 1, optional=False) for k, v in options.items()}  # restart, truncation
    rtol_ = default_rtol(b.dtype) if rtol is None else float(rtol)
    maxiter_ = default_maxiter(method, n) if maxiter is None else maxiter
    forward_info: list[SolveInfo] = []

    def reshape(info: SolveInfo) -> SolveInfo:
        B, G, k = info.converged.shape
        return info._reshaped(layout.system_shape(B, G, k))

    def sink(info: SolveInfo) -> None:
        forward_info.append(info)

    spec = _Spec(op=op, method=method, precond=M, rtol=rtol_, atol=float(atol), maxiter=maxiter_,
                 options=options, on_fail=on_fail, x0=X0, adjoint=adjoint, reshape=reshape, sink=sink)

    def adjoint_sink(info: SolveInfo) -> None:
        if forward_info:
            forward_info[0].adjoint = info

    if adjoint.sample is not None and backward != "stochastic":
        raise ValueError(f"adjoint sample={adjoint.sample!r} applies to backward='stochastic' only "
                         f"(backward={backward!r} solves every adjoint)")
    validate_roulette(adjoint.truncate, adjoint.survive)
    if (adjoint.truncate is not None or adjoint.survive is not None) and backward != "stochastic":
        raise ValueError("adjoint truncate / survive apply to backward='stochastic' only")
    if backward == "stochastic":
        adjoint.sample_count(1)  # validate the sample now, not in the middle of backward
        if method == "direct":
            raise ValueError("backward='stochastic' needs an iterative method: a direct solve reuses its "
                             "factorisation for all adjoint right-hand sides, sampling saves nothing")
        spec.stochastic = True
    if backward in ("implicit", "stochastic") or method == "direct":
        # the transposed spec (A^T: a values gather for sparse A) is built by the first backward only
        spec.adjoint_sink = adjoint_sink
        X = _ImplicitSolve.apply(spec, Bm, *op.params())
    elif backward == "unrolled":
        X, _ = _unrolled(spec, op, Bm)
    else:
        X = _truncated(spec, op, Bm, int(unroll_steps))
    x = layout.unpack(X)
    if forward_info:
        _record(forward_info[0])  # monitor.record_solves
    if return_info:
        return x, forward_info[0]
    return x


def _unrolled(spec: _Spec, op: LinearOperator, Bm: Tensor):
    """Run the method with autograd recording every iteration."""
    M = None if spec.precond is None else spec.precond.apply
    sc = _Scale(op, Bm, spec.atol)
    X, info = _run_method(spec.method, op, sc.down(Bm), M, sc.down(spec.x0), spec.rtol, sc.atol, spec.maxiter,
                          **spec.options)
    X = sc.up(X)
    info = spec.reshape(_finite_only(sc.info(info), X, op.reducer()))
    spec.sink(info)
    _check(info, spec.on_fail, "forward")
    return X, info


def _truncated(spec: _Spec, op: LinearOperator, Bm: Tensor, k: int) -> Tensor:
    """Converged solution, gradient of the last k iterations restarted from the detached x_{N-k}."""
    snaps: deque = deque(maxlen=k + 1)
    # the iterations run on the scaled block; Xf, Xt are scaled back at the end
    sc = _Scale(op, Bm, spec.atol)
    Bm, x0 = sc.down(Bm), sc.down(spec.x0)
    snaps.append((0, x0 if x0 is not None else torch.zeros_like(Bm)))
    M = None if spec.precond is None else spec.precond.apply
    with torch.no_grad():
        opd = op.with_params([p.detach() for p in op.params()])
        Xf, info = _run_method(spec.method, opd, Bm.detach(), M, x0, spec.rtol, sc.atol, spec.maxiter,
                              callback=lambda X, it: snaps.append((it, X.clone())), **spec.options)
    info = spec.reshape(_finite_only(sc.info(info), sc.up(Xf), op.reducer()))
    spec.sink(info)
    _check(info, spec.on_fail, "forward")
    N = info.niter
    it0, Xs = max((s for s in snaps if s[0] <= max(N - k, 0)), key=lambda s: s[0], default=snaps[0])
    steps = max(N - it0, 1)
    Xt, _ = _run_method(spec.method, op, Bm, M, Xs.detach(), spec.rtol, sc.atol, steps, **spec.options)
    return sc.up(Xf + (Xt - Xt.detach()))


__all__ = ["AdjointOptions", "ConvergenceError", "ConvergenceWarning", "solve"]
