"""A setup-time safeguard for learned preconditioners: keep a candidate M only where a short PCG race on A
says it is no slower than a classical fallback (IC(0) by default), per system of a block-diagonal (PyG) batch.

The race. For each probe right-hand side r0, ``steps`` PCG iterations from x0 = 0 are run on ``A x = r0`` with
the candidate and with the fallback. CG minimises the A-norm of the error over its Krylov space, and its
squared A-norm error after k steps is ``E_k = E_0 - S_k`` with ``S_k = sum_{j<k} alpha_j r_j^T M^{-1} r_j``
(Hestenes-Stiefel; the energy removed so far). Both runs solve the SAME system, so E_0 = r0^T A^{-1} r0 is
common and

    E_k(candidate) <= E_k(fallback)   <=>   S_k(candidate) >= S_k(fallback),

an exact comparison of the two solves' errors after k steps that needs neither E_0 nor a solve with A. The
candidate is accepted for a system when it wins (or ties, within rounding) on every probe; it is rejected when
its application produced NaN/Inf, when r^T M^{-1} r <= 0 or p^T A p <= 0 showed that M is not positive
definite, or when the fallback's own run broke down. Where the fallback converges before ``steps`` (residual
M-norm reduced by 1e-6) both are compared at that step: the candidate must have converged as fast.

The probes: the system's right-hand side ``b`` when given (the race is then the first iterations of the real
solve) plus seeded standard normal residuals (their errors A^{-1} g are smooth, i.e. weighted to the small
eigenvalues of M^{-1} A that dominate a solve's iteration count); 2 probes by default. Where A 1 = 0 on a
system (a Neumann problem: constants span the null space) the random probes are projected onto mean zero, i.e.
into range(A).

Why this rule (measured on neural_if checkpoints, MIC(0), SSOR, Jacobi and shifted IC(0) against IC(0) on the
pyamg SPD examples, ../shared/benchmarks/matrices and held-out diffusion2d 16^2 to 256^2;
docs/concepts/safeguard.md): a learned factor that beats IC(0) overall is often behind it in the first
iterations on a white-noise error (its largest eigenvalues are larger), so early residual or energy reductions
on such errors and few-step Ritz condition numbers (whose smallest Ritz value converges slowly) rejected good
factors; the race on smooth errors separated good from harmful factors from about 6 steps on, and two probes
removed the single-probe misses.

Cost: 2 probes x 2 preconditioners x ``steps`` PCG iterations, plus building the fallback. Ritz estimates of
kappa(M^{-1} A) for both (:func:`learnsolve.linalg.lanczos_tridiagonal` on the same iterations) are reported
as diagnostics only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.convert import as_operator
from ..operators.layout import canonicalize
from ..operators.sparse import SparseMatrix
from ..solvers.spectral import lanczos_tridiagonal
from .amg import AMG
from .base import FactorizationError, FunctionPreconditioner, Preconditioner
from .classical import IC0, ILU0, LLT, MIC0, Jacobi, make_preconditioner

__all__ = ["SafeguardResult", "fastest_factor", "safeguard"]

DEFAULT_STEPS = 6
DEFAULT_PROBES = 2
CONVERGED = 1e-6  # a run counts as converged once ||r||_{M^-1} fell by this factor
TIE_RTOL = 1e-13  # S values equal within rounding: a tie, which the candidate wins
MIC0_SAFE_PIVOT = 1e-2  # MIC(0) with every pivot ratio L_ii^2 / a_ii at least this is taken without a race
MIC0_RACE_RATIO = 0.5  # else MIC(0) is kept where it removed at least this share of IC(0)'s error energy
_OK, _NONFINITE, _NOT_POSITIVE_M, _NOT_POSITIVE_A = 0, 1, 2, 3
_FAILURES = {_NONFINITE: "its application produced NaN/Inf",
             _NOT_POSITIVE_M: "it is not positive definite (r^T M^-1 r <= 0 in PCG)",
             _NOT_POSITIVE_A: "PCG with it met p^T A p <= 0 (M not positive definite, or A not SPD)"}
_KEYS = ((MIC0, "mic0"), (IC0, "ic0"), (Jacobi, "jacobi"), (ILU0, "ilu0"), (AMG, "amg"), (LLT, "llt"))


@dataclass
class SafeguardResult:
    """What :func:`safeguard` decided, per system (a graph of a PyG batch; one per matrix of a batched A).

    ``accepted``: bool, the per-system shape ((G,) for a block-diagonal matrix of G graphs, (1,) for a plain
    one, (B, G) for a batch of B matrices); ``preconditioner``: the chosen one (the candidate itself where
    every system accepted it, the fallback where none did, else their per-system combination); ``reasons``:
    one entry per system (flattened), None where accepted; ``energy_ratio``: min over probes of S_k(candidate)
    / S_k(fallback) (>= 1: the candidate's A-norm error after the compared step is no larger); ``kappa``,
    ``kappa_fallback``: Ritz estimates of kappa(M^{-1} A) from the race (max over probes; inf where the run
    broke down); ``seconds``: wall time of the whole check, the fallback's setup included.
    """

    accepted: Tensor
    preconditioner: Preconditioner
    candidate: Preconditioner
    fallback: Preconditioner
    fallback_name: str  # for people: "IC(0)", "IC(0) with diagonal shift 0.01", "MIC(0)", "Jacobi", ...
    fallback_key: str  # for files: "ic0", "mic0", "jacobi", ...
    reasons: list[str | None]
    energy_ratio: Tensor
    kappa: Tensor
    kappa_fallback: Tensor
    steps: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # e.g. the fallback needed a diagonal shift
    # per system: a run of either preconditioner broke down (NaN/Inf, not positive)
    failed: Tensor | None = None

    @property
    def all_accepted(self) -> bool:
        return bool(self.accepted.all())

    @property
    def num_fallbacks(self) -> int:
        """Number of systems where the candidate was rejected."""
        return int((~self.accepted).sum())

    @property
    def num_systems(self) -> int:
        return self.accepted.numel()

    @property
    def reason(self) -> str | None:
        """Why the candidate was rejected (None when accepted everywhere): the one system's reason, or the
        rejected systems' reasons numbered by system (at most three, then a count)."""
        bad = [(i, r) for i, r in enumerate(self.reasons) if r is not None]
        if not bad:
            return None
        if len(self.reasons) == 1:
            return bad[0][1]
        text = "; ".join(f"system {i}: {r}" for i, r in bad[:3])
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"{len(bad)} of {len(self.reasons)} systems: {text}{more}"


def safeguard(A, candidate, fallback="ic0", *, b: Tensor | None = None, steps: int = DEFAULT_STEPS,
              probes: int = DEFAULT_PROBES, seed: int = 0) -> SafeguardResult:
    """Check a (learned) preconditioner against a classical fallback on SPD ``A``, per system; see the module
    doc.

    Each system runs a short PCG race with both preconditioners on the same probes; the candidate is kept only
    where its A-norm error is no larger on every probe and no NaN/Inf or loss of definiteness appeared.

    Args:
        A: a :class:`SparseMatrix` (block-diagonal from a PyG batch: every graph decides on its own; or a
            batch of matrices) or another linalg operator (then the fallback must be given as a Preconditioner
            or callable).
        candidate: a linear, symmetric positive definite :class:`Preconditioner` (or a callable on canonical
            blocks).
        fallback: a :class:`Preconditioner`, a name of :func:`make_preconditioner` ("ic0", "mic0", "jacobi",
            ...) or a callable returning one (built lazily, inside the timed check). A fallback that breaks
            down (:class:`FactorizationError`) is rebuilt with ``shift="auto"`` (an IC(0)/MIC(0) of A + shift
            diag(A); IC(0)'s for a callable), and ``notes`` says so.
        b: the right-hand side(s) of the systems to be solved (the first probe), or None.
        steps: PCG iterations per run.
        probes: number of probe right-hand sides (b, then seeded standard normal vectors).
        seed: seed of the random probes.

    Returns:
        A ``SafeguardResult``: per-system ``accepted`` flags and ``reasons``, the chosen ``preconditioner``,
            the race's energy ratios and Ritz condition estimates, and the check's wall time.

    Raises:
        ValueError: ``steps`` or ``probes`` < 1, a non-square A, or a nonlinear candidate.
        TypeError: a candidate that is neither a Preconditioner nor callable.

    Where both preconditioners are :class:`LLT` factors on the same pattern, a mixed decision merges their
    values into one LLT; otherwise the chosen preconditioner applies both and keeps each system's rows of the
    chosen one. Cost: ``2 * probes * steps`` PCG iterations + the fallback's setup. No gradients are recorded.
    """
    steps, probes = int(steps), int(probes)
    if steps < 1 or probes < 1:
        raise ValueError(f"safeguard: steps and probes must be >= 1, got {steps} and {probes}")
    t0 = time.perf_counter()
    op = as_operator(A)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"safeguard: A must be square, got shape {op.shape}")
    if not isinstance(candidate, Preconditioner):
        if not callable(candidate):
            raise TypeError("safeguard: candidate must be a Preconditioner or a callable, got "
                            f"{type(candidate).__name__}")
        candidate = FunctionPreconditioner(candidate, symmetric=True)
    if not candidate.linear:
        raise ValueError("safeguard: the candidate is nonlinear (a network applied per iteration); the PCG "
                         "race needs a fixed linear preconditioner")
    shape = _system_shape(op)
    with torch.no_grad():
        if isinstance(op, SparseMatrix):
            op = op.detach()
        fb, notes = _build_fallback(op, fallback)
        # one graph of a PyG batch: race on the plain matrix (per-system dots are then single dot products)
        race = SparseMatrix(op.pattern, op.values) if isinstance(op, SparseMatrix) and shape[-1] == 1 else op
        red = race.reducer()
        starts = _probes(race, red, b, probes, seed)
        runs_c = [_race_run(race, red, candidate, R0, steps) for R0 in starts]
        runs_f = [_race_run(race, red, fb, R0, steps) for R0 in starts]
        accepted, reasons, ratio, failed = _decide(runs_c, runs_f, steps, _label(fb))
        kappa = torch.stack([r.kappa() for r in runs_c]).amax(0)
        kappa_fb = torch.stack([r.kappa() for r in runs_f]).amax(0)
        chosen = _combine(op, candidate, fb, accepted)
    return SafeguardResult(accepted.reshape(shape), chosen, candidate, fb, _label(fb), _key(fb), reasons,
                           ratio.reshape(shape), kappa.reshape(shape), kappa_fb.reshape(shape), steps,
                           time.perf_counter() - t0, notes, failed.reshape(shape))


class _Chosen(LLT):
    """An LLT factor that carries the name of the classical factor(s) it holds (for the safeguard's
    labels)."""

    def __init__(self, L, name: str, key: str):
        super().__init__(L)
        self.name, self.key = name, key


def fastest_factor(A: SparseMatrix, *, b: Tensor | None = None, mic: LLT | None = None,
                   steps: int = DEFAULT_STEPS) -> LLT:
    """The faster of MIC(0) and IC(0) on each system of a symmetric A with a positive diagonal, decided
    cheaply: the classical fallback of a learned factor.

    MIC(0) is the stronger factor on diffusion-like M-matrices (fewer iterations than IC(0) on smooth, i.i.d.
    lognormal and anisotropic diffusion), but it breaks down outside M-matrices and is poor where its row-sum
    compensation meets tiny pivots (pivot ratios L_ii^2 / a_ii far below 1): high-contrast channels and graph
    Laplacians, where it needs more iterations than IC(0). The rule, per system:

    - MIC(0) breaks down (or A is not SPD-like): IC(0) (with the automatic diagonal shift where it breaks down
      too);
    - every pivot ratio of MIC(0) >= ``MIC0_SAFE_PIVOT`` (1e-2): MIC(0), no race;
    - else a ``steps``-step PCG race of MIC(0) against IC(0) on one probe (``b`` when given: the first
      iterations of the real solve) with :func:`safeguard`'s energy comparison: MIC(0) where it removed at
      least ``MIC0_RACE_RATIO`` (0.5) of the A-norm error energy IC(0) removed, IC(0) where it removed less or
      broke down.

    Why a ratio and not "MIC(0) must win": MIC(0) starts slower than IC(0) (its largest eigenvalues are
    larger) and overtakes it later; where its tiny pivots hurt, it falls behind by orders of magnitude. The
    measured energy ratios and iteration counts behind the rule: docs/benchmarks/neural-if/light_network.md
    ("The fallback").

    ``mic``: a MIC(0) factor of A already built (e.g. a learned factor's base; shifted ones are not reused).
    Cost: MIC(0)'s setup (none when given), and where the pivots are small IC(0)'s setup + 2 x ``steps`` PCG
    iterations. Returns the :class:`MIC0` or :class:`IC0` object, or where the systems of a batch chose
    differently one factor named "MIC(0) / IC(0) per system".
    """
    if mic is None or float(getattr(mic, "shift", 0.0) or 0.0) > 0:
        try:
            mic = MIC0(A)
        except FactorizationError:
            mic = None
    if mic is None:
        return IC0(A, shift="auto")
    n = A.shape[0]
    red = A.reducer()
    ratio = mic.L.diagonal().reshape(-1, n) ** 2 / A.diagonal().reshape(-1, n)  # (B, n) pivot ratios
    seg = red.segment if red.segment is not None else torch.zeros(n, dtype=torch.long, device=ratio.device)
    # (B, G): the smallest per system
    low = (torch.full((ratio.shape[0], red.G), math.inf, dtype=ratio.dtype, device=ratio.device)
           .scatter_reduce(1, seg.expand(ratio.shape[0], n), ratio, reduce="amin"))
    if bool((low >= MIC0_SAFE_PIVOT).all()):
        return mic
    ic = IC0(A, shift="auto")
    check = safeguard(A, mic, ic, b=b, steps=steps, probes=1)
    keep = (low.reshape(check.accepted.shape) >= MIC0_SAFE_PIVOT) | (
        ~check.failed & (check.accepted | (check.energy_ratio >= MIC0_RACE_RATIO)))
    if bool(keep.all()):
        return mic
    if not bool(keep.any()):
        return ic
    return _Chosen(_combine(A, mic, ic, keep.reshape(low.shape).unsqueeze(-1)).L, "MIC(0) / IC(0) per system",
                   "mic0/ic0")


# ------------------------------------------------------------------------------------------------
# building the fallback, the probes
# ------------------------------------------------------------------------------------------------

def _build_fallback(op: LinearOperator, fallback) -> tuple[Preconditioner, list[str]]:
    if isinstance(fallback, Preconditioner):
        return fallback, []
    if isinstance(fallback, str):
        def build(**kw):
            return make_preconditioner(fallback, op, **kw)
        retry = build if fallback in ("ic0", "mic0") else None
    elif callable(fallback):
        build = fallback
        retry = (lambda **kw: IC0(op, **kw)) if isinstance(op, SparseMatrix) else None
    else:
        raise TypeError(f"safeguard: fallback must be a Preconditioner, a name or a callable, got "
                        f"{type(fallback).__name__}")
    try:
        P = build()
    except FactorizationError as e:
        if retry is None:
            raise
        P = retry(shift="auto")
        return P, [f"the fallback broke down at row {e.row} and was rebuilt with a diagonal shift"]
    if not isinstance(P, Preconditioner):
        raise TypeError(f"safeguard: the fallback callable returned a {type(P).__name__}, not a "
                        "Preconditioner")
    return P, []


def _key(P: Preconditioner) -> str:
    if isinstance(P, _Chosen):
        return P.key
    return next((k for cls, k in _KEYS if isinstance(P, cls)), type(P).__name__.lower())


def _label(P: Preconditioner) -> str:
    name = (getattr(P, "name", None)
            or {"jacobi": "Jacobi", "ilu0": "ILU(0)", "amg": "AMG"}.get(_key(P), type(P).__name__))
    shift = float(getattr(P, "shift", 0.0) or 0.0)
    return f"{name} with diagonal shift {shift:g}" if shift > 0 else name


def _system_shape(op: LinearOperator) -> tuple[int, ...]:
    G = 1 if op.blocks is None else op.blocks.numel() - 1
    return (G,) if op.batch_size is None else (op.batch_size, G)


def _probes(op: LinearOperator, red, b: Tensor | None, count: int, seed: int) -> list[Tensor]:
    """``count`` canonical (B, n, 1) probe right-hand sides: b (when given), then seeded standard normal
    vectors (mean-free on systems with A 1 = 0)."""
    n = op.shape[0]
    B = op.batch_size or 1
    blocks = None if op.blocks is None else op.blocks.numel() - 1
    out = []
    if b is not None:
        R, _ = canonicalize(b.detach().to(op.dtype), n, op.batch_size, blocks)
        if R.shape[2] != 1:
            raise ValueError("safeguard: b must hold one right-hand side per system, got shape "
                             f"{tuple(b.shape)}")
        out.append(R.expand(B, n, 1).clone())
    gen = torch.Generator().manual_seed(int(seed))
    ones = torch.ones(B, n, 1, dtype=op.dtype, device=op.device)
    size = red.dot(ones, ones)
    d = op.diagonal().reshape(-1, n, 1).to(ones.device)
    a1 = op.mv(ones)
    neumann = red.dot(a1, a1).sqrt() <= 1e-10 * red.dot(d, d).sqrt()  # A 1 = 0: constants in the null space
    while len(out) < count:
        g = torch.randn(1, n, 1, generator=gen, dtype=op.dtype).to(op.device).expand(B, n, 1)
        mean = red.dot(g, ones) / size
        out.append(g - red.expand(torch.where(neumann, mean, torch.zeros_like(mean))))
    return out[:count]


# ------------------------------------------------------------------------------------------------
# one PCG run of the race
# ------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """``steps`` PCG iterations on canonical probes; per-system tensors of shape (B, G, 1)."""

    # (steps, B, G, 1): S_k = energy removed after k = 1..steps iterations (frozen once stopped)
    energy: Tensor
    status: Tensor  # int64: _OK or a failure code
    empty: Tensor  # bool: the probe is zero on this system (no information)
    converged_at: Tensor  # int64: first k with ||r_k||_{M^-1} <= CONVERGED ||r_0||_{M^-1} (steps + 1: never)
    alphas: Tensor  # (B, G, 1, steps)
    betas: Tensor  # (B, G, 1, steps - 1)
    count: Tensor  # int64: genuine iterations

    def kappa(self) -> Tensor:
        """Ritz estimate of kappa(M^{-1} A) (inf where the run failed or never started)."""
        live = torch.arange(self.alphas.shape[-1], device=self.alphas.device) < self.count.unsqueeze(-1)
        usable = (self.status == _OK) & (self.count > 0)
        a = torch.where(live, self.alphas, self.alphas[..., :1])  # after a stop: decoupled copies of T_00
        a = torch.where(usable.unsqueeze(-1) & (a > 0), a, torch.ones_like(a))
        bt = torch.where(usable.unsqueeze(-1), self.betas, torch.zeros_like(self.betas)).clamp_min(0)
        ev = torch.linalg.eigvalsh(lanczos_tridiagonal(a, bt))
        k = ev[..., -1] / ev[..., 0]
        return torch.where(usable & (ev[..., 0] > 0), k, torch.full_like(k, math.inf))


def _race_run(op: LinearOperator, red, P: Preconditioner, R0: Tensor, steps: int) -> _Run:
    """PCG from x0 = 0 on ``A x = R0``. No per-step NaN scrubbing: A and the preconditioners of a
    block-diagonal batch are block-diagonal, so a NaN stays in its system, whose scalars then fail the
    finiteness test and freeze it."""
    R = R0
    try:
        Z = P.apply(R)
    except Exception:  # noqa: BLE001 -- a candidate that cannot even be applied is rejected, not a crash
        return _failed_run(red.dot(R, R).shape, steps, R.dtype, R.device)
    rz = red.dot(R, Z)
    empty = red.dot(R, R) == 0
    status = _status(torch.zeros(rz.shape, dtype=torch.int64, device=rz.device), ~empty, rz, _NOT_POSITIVE_M)
    active = (status == _OK) & ~empty
    one, zero = torch.ones_like(rz), torch.zeros_like(rz)
    rz = rz0 = torch.where(active, rz, one)  # failed or empty systems: finite placeholders, never used
    converged_at = torch.full_like(status, steps + 1)
    count = torch.zeros_like(status)
    S, energy, alphas, betas = zero, [], [], []
    Pd = Z
    for j in range(steps):
        AP = op.mv(Pd)
        pAp = red.dot(Pd, AP)
        status = _status(status, active, pAp, _NOT_POSITIVE_A)
        active = active & (status == _OK)
        alpha = torch.where(active, rz / torch.where(active, pAp, one), zero)
        S = S + alpha * rz
        energy.append(S)
        alphas.append(alpha)
        count = count + active.to(count.dtype)
        if j == steps - 1:
            break
        R = R - red.expand(alpha) * AP
        try:
            Z = P.apply(R)
        except Exception:  # noqa: BLE001
            return _failed_run(rz.shape, steps, R.dtype, R.device)
        rz_new = red.dot(R, Z)
        status = _status(status, active, rz_new + (rz_new == 0), _NOT_POSITIVE_M)  # r^T M^-1 r = 0: converged
        active = active & (status == _OK)
        done = active & (rz_new <= (CONVERGED * CONVERGED) * rz0)
        converged_at = torch.where(done, torch.full_like(converged_at, j + 1), converged_at)
        active = active & ~done
        beta = torch.where(active, rz_new / torch.where(active, rz, one), zero)
        betas.append(beta)
        Pd = Z + red.expand(beta) * Pd
        rz = torch.where(active, rz_new, rz)
    A_ = torch.stack(alphas, -1)
    B_ = torch.stack(betas, -1) if betas else A_[..., :0]
    return _Run(torch.stack(energy), status, empty, converged_at, A_, B_, count)


def _status(status: Tensor, active: Tensor, value: Tensor, code: int) -> Tensor:
    """Mark active systems whose ``value`` (a PCG scalar that must be positive) is NaN/Inf or <= 0."""
    fail = active & ~(value > 0)
    if not bool(fail.any()):
        return status
    code_t = torch.where(torch.isfinite(value), torch.full_like(status, code),
                         torch.full_like(status, _NONFINITE))
    return torch.where(fail & (status == _OK), code_t, status)


def _failed_run(shape, steps: int, dtype, device) -> _Run:
    z = torch.zeros(shape, dtype=dtype, device=device)
    i = torch.zeros(shape, dtype=torch.int64, device=device)
    return _Run(torch.stack([z] * steps), i + _NONFINITE, torch.zeros(shape, dtype=torch.bool, device=device),
                i + steps + 1, z.unsqueeze(-1).expand(*shape, steps),
                z.unsqueeze(-1).expand(*shape, steps - 1), i)


# ------------------------------------------------------------------------------------------------
# the decision and the chosen preconditioner
# ------------------------------------------------------------------------------------------------

def _decide(runs_c: list[_Run], runs_f: list[_Run], steps: int, fb_name: str):
    """(accepted (B, G, 1) bool, reasons per system (flattened), min energy ratio (B, G, 1), failed (B, G, 1):
    a run of either preconditioner broke down)."""
    shape = runs_c[0].status.shape
    accepted = torch.ones(shape, dtype=torch.bool, device=runs_c[0].status.device)
    ratio = torch.full(shape, math.inf, dtype=runs_c[0].energy.dtype, device=accepted.device)
    failure_c = torch.zeros_like(runs_c[0].status)
    failure_f = torch.zeros_like(failure_c)
    lost_probe = torch.full_like(failure_c, -1)
    lost_at = torch.zeros_like(failure_c)
    for p, (c, f) in enumerate(zip(runs_c, runs_f)):
        failure_c = torch.where(failure_c == _OK, c.status, failure_c)
        failure_f = torch.where(failure_f == _OK, f.status, failure_f)
        # compared where the fallback converged, at the latest after `steps`
        at = f.converged_at.clamp(1, steps)
        sc = c.energy.gather(0, (at - 1).unsqueeze(0))[0]
        sf = f.energy.gather(0, (at - 1).unsqueeze(0))[0]
        won = (sc >= sf) | ((sc - sf).abs() <= TIE_RTOL * sf.abs()) | c.empty
        r = torch.where(c.empty, torch.full_like(sc, math.inf),
                        sc / torch.where(sf > 0, sf, torch.ones_like(sf)))
        ratio = torch.minimum(ratio, r)
        newly = accepted & ~won & (c.status == _OK) & (f.status == _OK)
        lost_probe = torch.where(newly, torch.full_like(lost_probe, p), lost_probe)
        lost_at = torch.where(newly, at, lost_at)
        accepted = accepted & won
    accepted = accepted & (failure_c == _OK) & (failure_f == _OK)
    reasons: list[str | None] = []
    for i, ok in enumerate(accepted.reshape(-1).tolist()):
        fc, ff = int(failure_c.reshape(-1)[i]), int(failure_f.reshape(-1)[i])
        if ok:
            reasons.append(None)
        elif fc != _OK:
            reasons.append(f"the learned preconditioner was rejected: {_FAILURES[fc]}")
        elif ff != _OK:
            reasons.append(f"the check could not compare: {fb_name} itself failed ({_FAILURES[ff]})")
        else:
            p, k = int(lost_probe.reshape(-1)[i]), int(lost_at.reshape(-1)[i])
            q = float(ratio.reshape(-1)[i])
            reasons.append(f"slower than {fb_name} in a {k}-step PCG race on probe {p}: its A-norm error is "
                           f"larger (it removed {q:.3g}x the error energy {fb_name} removed)")
    return accepted, reasons, ratio, (failure_c != _OK) | (failure_f != _OK)


class _Masked(Preconditioner):
    """Per-row choice between two preconditioners of the same block-diagonal operator: ``mask`` (B, n, 1) True
    where the candidate's rows are kept. Applies both (the systems are independent, so NaN in one block of the
    candidate's output stays in that block and is dropped by the mask)."""

    def __init__(self, candidate: Preconditioner, fallback: Preconditioner, mask: Tensor):
        self.c, self.f, self.mask = candidate, fallback, mask
        self.symmetric = candidate.symmetric and fallback.symmetric
        self.linear = candidate.linear and fallback.linear

    def apply(self, R):
        return torch.where(self.mask, self.c.apply(R), self.f.apply(R))

    def apply_transpose(self, R):
        return torch.where(self.mask, self.c.apply_transpose(R), self.f.apply_transpose(R))


def _combine(op: LinearOperator, candidate: Preconditioner, fallback: Preconditioner, accepted: Tensor):
    if bool(accepted.all()):
        return candidate
    if not bool(accepted.any()):
        return fallback
    red = op.reducer()
    keep = accepted[..., 0]  # (B, G)
    seg = red.segment if red.segment is not None else torch.zeros(op.shape[0], dtype=torch.long,
                                                                     device=keep.device)
    if (isinstance(candidate, LLT) and isinstance(fallback, LLT)
            and candidate.L.pattern.same_as(fallback.L.pattern)
            and candidate.L.values.shape == fallback.L.values.shape):
        Lc, Lf = candidate.L, fallback.L
        rows = Lc.pattern.row.long().to(keep.device)
        entry_keep = keep[:, seg[rows]]  # (B, nnz)
        if Lc.values.ndim == 1:
            entry_keep = entry_keep[0]
        return LLT(Lc.with_values(torch.where(entry_keep, Lc.values.detach(), Lf.values.detach())))
    return _Masked(candidate, fallback, keep[:, seg].unsqueeze(-1))

