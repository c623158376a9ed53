"""The tuning itself: the tunable factor, its loss, the loop and the end decision
(:mod:`learnsolve.training.tune`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from learnsolve.linalg import LLT, FactorizationError, SparseMatrix

from ._measure import Row, break_even, classical_builder, measure, random_rhs, retime_solves, solve_iters

CLASSICAL = ("ic0", "mic0", "amg_sa")
ROWS = ("tuned", "before", *CLASSICAL)
TITLES = {"tuned": "tuned", "before": "before tuning", "ic0": "IC(0)", "mic0": "MIC(0)", "amg_sa": "AMG-SA"}
MAX_K = 60  # unrolled PCG steps of the loss, at most
PHASES = (0.0, 0.5)  # the tuning's phases start at these shares of the budget (or of max_steps) ...
PHASES_K = (0.5, 1.0)  # ... and unroll these shares of the current iteration count
NUM_PROBES = 8
MAX_NONFINITE = 10  # NaN/Inf losses in a row (each restores the best factor, half the step) before giving up
MAX_UNROLLED = 20_000_000  # steps x probes x n of one loss evaluation, at most
EVAL_EVERY = 5  # steps between measured solves
PATIENCE = 20  # measured solves without a new best, and
STALE_SHARE = 0.25  # this share of the budget, before the step size is halved (from the best factor)
VAL_EXTRA = 2  # seeded right-hand sides measured next to the validation one
HOLDOUT_SLACK = 1.1  # the tuned factor may take at most this factor more iterations on one held-out b
HOLDOUT_SEEDS = (1_000_003, 1_000_033, 1_000_037)  # the end decision's right-hand sides


class TuneError(ValueError):
    """A matrix, right-hand side, model or budget that tuning cannot work with; the message says which and
    why."""


@dataclass
class TuneResult:
    """What :func:`tune_matrix` did. ``status``: "tuned" or "not tuned: <why>"; ``exported``: the factor to
    use (the tuned one, or the start where tuning did not help) as a
    :class:`learnsolve.models.base.MatrixExport`; ``start``: which factor tuning started from ("before", "ic0"
    or "mic0"); ``rows``: :data:`ROWS` -> :class:`Row`; ``tuning_s``: wall seconds of the tuning (the loop and
    the end decision; the table's baselines not included); ``break_even_solves``: the number of solves after
    which tuning paid for itself against ``fastest`` (the classical row with the least ms per solve), "never"
    when the tuned factor does not solve faster, None when nothing was tuned; ``history``: (seconds, step,
    iterations) of each measured solve."""

    matrix: str
    n: int
    nnz: int
    status: str
    start: str
    rows: dict[str, Row]
    tuning_s: float
    break_even_solves: int | str | None
    fastest: str | None
    steps: int
    budget_s: float
    exported: object = None
    rhs: str = "Gaussian"  # the table's b: "Gaussian", "user", or A r where A is singular
    history: list[tuple[float, int, int]] = field(default_factory=list)
    holdout: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tuned(self) -> bool:
        return self.status == "tuned"

    def to_json(self) -> dict:
        """The ``tune.json`` record."""
        return {
            "matrix": self.matrix, "n": self.n, "nnz": self.nnz, "status": self.status, "start": self.start,
            "rhs": self.rhs,
            "iters": {k: self.rows[k].iters for k in ROWS},
            "ms_per_solve": {k: self.rows[k].solve_ms for k in ROWS},
            "setup_ms": {k: self.rows[k].setup_ms for k in ROWS},
            "converged": {k: self.rows[k].converged for k in ROWS},
            "notes": {k: self.rows[k].note for k in ROWS if self.rows[k].note},
            "tuning_s": self.tuning_s, "budget_s": self.budget_s, "steps": self.steps,
            "break_even_solves": self.break_even_solves, "break_even_against": self.fastest,
            "holdout_iters": self.holdout,
            "history": [{"seconds": t, "step": s, "iters": i} for t, s, i in self.history],
        }

    def table(self) -> str:
        """The result as a Markdown table, with the tuning time and the break-even count under it."""
        lines = ["| preconditioner | iterations | ms per solve | setup ms |", "|---|---|---|---|"]
        for k in ROWS:
            r = self.rows[k]
            its = "-" if r.iters is None else f"{r.iters}" + ("" if r.converged else " (not converged)")
            ms = "-" if r.solve_ms is None else f"{r.solve_ms:.2f}"
            setup = "-" if r.setup_ms is None else f"{r.setup_ms:.2f}"
            lines.append(f"| {TITLES[k]}{' (' + r.note + ')' if r.note else ''} | {its} | {ms} | {setup} |")
        be = self.break_even_solves
        if self.rhs != "Gaussian":
            lines += ["", f"b: {self.rhs}"]
        lines += ["",
                  (f"{self.matrix}: {self.status}; tuning {self.tuning_s:.1f} s ({self.steps} steps, budget "
                       f"{self.budget_s:g} s, start {TITLES.get(self.start, self.start)})"),
                  "break-even: " + ("-" if be is None else
                                    "never (the tuned factor does not solve faster than "
                                    f"{TITLES[self.fastest]})" if be == "never"
                                    else f"{be} solves against {TITLES[self.fastest]}")]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------------------

def check_spd_like(A: sp.spmatrix, name: str) -> sp.csr_matrix:
    """A as float64 CSR with sorted indices, refused (TuneError) unless square, finite, symmetric and with a
    positive diagonal (indefiniteness shows up later, as a PCG breakdown)."""
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sum_duplicates()
    A.sort_indices()
    n = A.shape[0]
    if A.shape != (n, n) or n == 0:
        raise TuneError(f"{name}: the matrix must be square and non-empty, got {A.shape[0]} x {A.shape[1]}")
    if not np.all(np.isfinite(A.data)):
        raise TuneError(f"{name}: the matrix has NaN or Inf entries")
    scale = abs(A).max() if A.nnz else 0.0
    asym = abs(A - A.T).max() if A.nnz else 0.0
    if asym > 1e-10 * scale:
        raise TuneError(f"{name}: the matrix is not symmetric (max |a_ij - a_ji| = {asym:.3g}, max |a_ij| = "
                        f"{scale:.3g}); tuning builds an SPD factor preconditioner for PCG, which needs a "
                        "symmetric positive definite matrix")
    d = A.diagonal()
    if not (d > 0).all():
        i = int(np.flatnonzero(~(d > 0))[0])
        raise TuneError(f"{name}: diagonal entry a_ii = {d[i]:g} in row {i} is not positive, so the matrix "
                        "is not SPD; tuning builds an SPD factor preconditioner for PCG")
    return A


def check_rhs(B, n: int, name: str) -> np.ndarray:
    """The user's right-hand sides as an (n, k) float64 array, refused (TuneError) when of the wrong size,
    non-finite or zero."""
    B = np.asarray(B.toarray() if sp.issparse(B) else B, dtype=np.float64)
    if B.ndim == 1 and B.size == n:
        B = B.reshape(n, 1)
    if B.ndim != 2 or B.shape[0] != n or B.shape[1] < 1:
        raise TuneError(f"{name}: right-hand side must be {n} x k for the {n} x {n} matrix, got "
                        f"{' x '.join(map(str, np.shape(B)))}")
    if not np.all(np.isfinite(B)):
        raise TuneError(f"{name}: the right-hand side has NaN or Inf entries")
    if not np.any(B[:, 0]):
        raise TuneError(f"{name}: the first right-hand side is zero (nothing to solve)")
    return B


def tunable_reason(model, name: str) -> str | None:
    """Why ``model`` cannot be tuned on a matrix (None when it can): only factor preconditioners
    (``matrix_type`` "llt", e.g. neural_if) are tuned."""
    reason = model.matrix_export_reason(name)
    if reason is not None:
        return f"{reason}; tuning adapts a per-matrix preconditioner factor"
    if model.matrix_type != "llt":
        return (f"{name}'s per-matrix preconditioner is of type {model.matrix_type!r} (D + U U^T: a Jacobi "
                "diagonal and a low-rank correction); tuning adapts factor preconditioners M = L L^T "
                "(neural_if)")
    return None


# ------------------------------------------------------------------------------------------------------------
# the tunable factor and its loss
# ------------------------------------------------------------------------------------------------------------

class _Factor:
    """L(w) on the pattern of tril(A): ``L_ii = B_ii exp(w_ii)``,
    ``L_ij = B_ij + |a_ij| / sqrt(a_jj) w_ij``."""

    def __init__(self, A: SparseMatrix, B: SparseMatrix):
        low = A.tril()
        if low.nnz != B.nnz or not torch.equal(low.pattern.col, B.pattern.col):
            B = _on_pattern(B, low)
        self.pattern = low
        self.base = B.values.detach().to(torch.float64).reshape(-1).clone()
        row, col = low.pattern.row.long(), low.pattern.col.long()
        self.off = row != col
        sd = torch.sqrt(A.diagonal().detach().to(torch.float64).reshape(-1))
        self.scale = torch.where(self.off, low.values.detach().reshape(-1).abs() / sd[col], torch.zeros(()))
        self.w = torch.zeros_like(self.base, requires_grad=True)

    def L(self, w: Tensor | None = None) -> SparseMatrix:
        w = self.w if w is None else w
        return self.pattern.with_values(torch.where(self.off, self.base + self.scale * w,
                                                    self.base * torch.exp(w)))


def _on_pattern(B: SparseMatrix, low: SparseMatrix) -> SparseMatrix:
    """B's values on the pattern of ``low`` (zero where B has no entry); TuneError when B has entries outside
    it."""
    Bs = B.detach().to_scipy().tocsr()
    row, col = low.pattern.row.numpy().copy(), low.pattern.col.numpy().copy()
    vals = np.asarray(Bs[row, col]).ravel()
    if abs(abs(Bs).sum() - abs(vals).sum()) > 1e-12 * max(abs(Bs).sum(), 1.0):
        raise TuneError("the start factor has entries outside tril(A); tuning keeps the pattern of tril(A)")
    return low.with_values(torch.from_numpy(vals))


def unrolled_size(iters: int, n: int, share: float = 0.5) -> tuple[int, int]:
    """(PCG steps, probes) of one loss evaluation: ``share`` of the current iteration count (2 to
    :data:`MAX_K`) and :data:`NUM_PROBES` probes, fewer of both where steps x probes x n would pass
    :data:`MAX_UNROLLED` (autograd keeps about six vectors per step and probe: 1 GB at the cap)."""
    k = int(min(MAX_K, max(2, int(iters * share))))
    probes = int(max(1, min(NUM_PROBES, MAX_UNROLLED // (k * n))))
    k = int(max(2, min(k, MAX_UNROLLED // (probes * n))))
    return k, probes


def energy_loss(A: SparseMatrix, L: SparseMatrix, k: int, probes: int, generator: torch.Generator) -> Tensor:
    """mean over Gaussian probes x* of log(||x* - x_k||_A^2 / ||x*||_A^2), x_k after k PCG steps on A x = A x*
    from 0 with M = L L^T; differentiable w.r.t. L's values."""
    n = A.shape[0]
    xs = torch.randn(1, n, probes, dtype=torch.float64, generator=generator)
    b = A.mv(xs)
    M = LLT(L)

    def dot(u, v):
        return (u * v).sum(1)

    x = torch.zeros_like(xs)
    r = b
    z = M.apply(r)
    p = z
    rz = dot(r, z)
    for _ in range(k):
        Ap = A.mv(p)
        alpha = rz / dot(p, Ap)
        x = x + alpha.unsqueeze(1) * p
        r = r - alpha.unsqueeze(1) * Ap
        z = M.apply(r)
        rz_new = dot(r, z)
        p = z + (rz_new / rz).unsqueeze(1) * p
        rz = rz_new
    e = xs - x
    return torch.log(dot(e, A.mv(e)).clamp_min(1e-300) / dot(xs, b)).mean()


# ------------------------------------------------------------------------------------------------------------
# the whole tuning
# ------------------------------------------------------------------------------------------------------------

def _measure_rows(model, model_name: str, A: sp.csr_matrix, b: np.ndarray, name: str, seed: int, rtol: float,
                  maxiter: int, repeats: int, baselines) -> tuple[dict, dict, dict, object]:
    """(rows, tuning starts, built preconditioners, the system's PyG batch) of the model before tuning and the
    classical baselines on A x = b."""
    from learnsolve.data import make_system
    from learnsolve.models.base import one_system_batch, system_matrix

    n = A.shape[0]
    data = make_system(A, b, pos=np.zeros((n, 1)), coeff=np.ones(n), family="matrix_market",
                       params={"name": name}, seed=seed, reference=False, symmetric=True)
    batch = one_system_batch(data)
    At = system_matrix(batch)
    bt = batch.b.view(-1).to(torch.float64)

    def model_factor():
        with torch.no_grad():
            return model.safe_preconditioner_for(batch)[0]

    rows: dict[str, Row] = {}
    starts, built = {}, {}
    try:
        rows["before"], P = measure(At, bt, model_factor, rtol=rtol, maxiter=maxiter, repeats=repeats)
        built["before"] = P
    except (FactorizationError, ValueError, RuntimeError) as e:
        raise TuneError(f"{name}: {model_name} could not build its preconditioner: {e}") from e
    if isinstance(P, LLT):
        starts["before"] = P
    else:
        rows["before"].note = f"its {type(P).__name__} is not a factor L L^T: not a tuning start"
    for key in CLASSICAL:
        if key not in baselines:
            rows[key] = Row(note="not measured")
            continue
        try:
            rows[key], P = measure(At, bt, classical_builder(key, At), rtol=rtol, maxiter=maxiter,
                                   repeats=repeats)
            built[key] = P
        except (FactorizationError, ValueError, RuntimeError) as e:
            rows[key] = Row(note=f"failed: {e}")
            continue
        if key in ("ic0", "mic0") and P is not None:
            starts[key] = P
    return rows, starts, built, batch


def tune_matrix(model, A, *, name: str = "matrix", model_name: str | None = None, budget_s: float = 60.0,
                rhs=None, rtol: float = 1e-6, maxiter: int = 10_000, seed: int = 0, lr: float = 1e-2,
                repeats: int = 3, progress: Callable[[dict], None] | None = None,
                baselines: tuple[str, ...] = CLASSICAL, max_steps: int | None = None) -> TuneResult:
    """Tune ``model``'s factor preconditioner on the SPD matrix ``A`` (scipy sparse) for at most ``budget_s``
    seconds (see the module doc). ``rhs``: the user's right-hand side(s), (n,) or (n, k): the first is the
    table's b (else a seeded Gaussian b; A r where A 1 = 0), the next two join it in the validation.
    ``progress(state)`` is called after every measured solve with
    ``{"seconds", "step", "iters", "best", "start"}``. ``baselines``: the classical rows measured (a subset of
    :data:`CLASSICAL`; "ic0" and "mic0" are also tuning starts). ``max_steps``: stop after this many steps
    even within the budget (a reproducible run; None: the budget alone). TuneError for a model that cannot be
    tuned, a matrix that is not SPD, a bad right-hand side or budget."""
    from learnsolve.models.base import matrix_export_of, system_matrix

    model_name = model_name or type(model).__name__
    reason = tunable_reason(model, model_name)
    if reason is not None:
        raise TuneError(f"{model_name} cannot be tuned: {reason}")
    if not (isinstance(budget_s, (int, float)) and math.isfinite(budget_s) and budget_s > 0):
        raise TuneError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
        raise TuneError(f"max_steps must be a positive integer or None, got {max_steps!r}")
    if not 0 < rtol < 1:
        raise TuneError(f"rtol must lie in (0, 1), got {rtol!r}")
    A = check_spd_like(A, name)
    n = A.shape[0]
    B = None if rhs is None else check_rhs(rhs, n, name)
    b = B[:, 0] if B is not None else random_rhs(A, seed, name)
    rows, starts, built, batch = _measure_rows(model, model_name, A, b, name, seed, rtol, maxiter, repeats,
                                               baselines)
    singular = False
    if B is None and not any(rows[k].converged for k in starts):
        # a Gaussian b outside the range of a singular A (a null vector other than the constants): PCG cannot
        # converge; with the consistent b = A r it can (the table says so)
        singular = True
        b = random_rhs(A, seed, name, singular)
        rows, starts, built, batch = _measure_rows(model, model_name, A, b, name, seed, rtol, maxiter,
                                                   repeats, baselines)
    if not any(rows[k].converged for k in starts):
        bad = "; ".join(f"{TITLES[k]}: {rows[k].iters} iterations, not converged" for k in starts)
        raise TuneError(f"{name}: PCG did not converge with any start factor ({bad}); the matrix may be "
                        "indefinite or singular with a right-hand side outside its range (PCG needs SPD), or "
                        "maxiter is too small")
    At = system_matrix(batch)
    bt = batch.b.view(-1).to(torch.float64)
    start = min((k for k in starts if rows[k].converged), key=lambda k: (rows[k].iters, k != "before"))
    result = TuneResult(name, n, int(A.nnz), "tuned", start, rows, 0.0, None, None, 0, float(budget_s))
    result.rhs = ("user" if B is not None
                  else "A r, r ~ U(0.5, 1.5) (A is singular: a Gaussian b is not in its range)" if singular
                  else "Gaussian")

    t0 = time.perf_counter()
    factor = _Factor(At, starts[start].L)
    user = ([] if B is None
            else [torch.from_numpy(B[:, j].copy()) for j in range(1, min(B.shape[1], 1 + VAL_EXTRA))])
    val = [bt, *user] + [torch.from_numpy(random_rhs(A, seed + 1 + i, name, singular))
                         for i in range(VAL_EXTRA - len(user))]

    def counts(M) -> list[int]:
        out = []
        for r in val:
            its, ok = solve_iters(At, r, M, rtol, maxiter)
            out.append(its if ok else maxiter + 1)
        return out

    start_counts = counts(starts[start])
    best_w, best_total = factor.w.detach().clone(), sum(start_counts)
    state = {"lr": lr, "cur": rows[start].iters, "stale": 0, "since": 0.0, "phase": 0, "measured_at": 0.0,
             "measure_s": 0.0}
    state["t0"] = t0
    opt = torch.optim.Adam([factor.w], lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    step = 0
    with torch.enable_grad():
        while time.perf_counter() - t0 < budget_s and (max_steps is None or step < max_steps):
            done = max((time.perf_counter() - t0) / budget_s, 0.0 if max_steps is None else step / max_steps)
            phase = sum(done >= p for p in PHASES[1:])
            # the next phase starts from the best factor, with the first step size
            if phase != state["phase"]:
                state["phase"] = phase
                _restore(factor, best_w, opt, state, lr=lr)
            k, probes = unrolled_size(state["cur"], n, PHASES_K[phase])
            opt.zero_grad()
            loss = energy_loss(At, factor.L(), k, probes, gen)
            if not torch.isfinite(loss):
                state["nonfinite"] = state.get("nonfinite", 0) + 1
                if state["nonfinite"] > MAX_NONFINITE:
                    break
                _restore(factor, best_w, opt, state)
                continue
            state["nonfinite"] = 0
            loss.backward()
            opt.step()
            step += 1
            last = time.perf_counter() - t0 >= budget_s or step == max_steps
            # every EVAL_EVERY steps, but measuring (three full solves) takes at most about half of the time
            if not last and (step % EVAL_EVERY
                             or time.perf_counter() - state["measured_at"] < state["measure_s"]):
                continue
            t_m = time.perf_counter()
            c = counts(LLT(factor.L(factor.w.detach())))
            state["measured_at"], state["measure_s"] = time.perf_counter(), time.perf_counter() - t_m
            state["cur"] = min(c[0], maxiter)
            result.history.append((time.perf_counter() - t0, step, c[0]))
            state["stale"] += 1
            now = time.perf_counter() - t0
            stale = state["stale"] >= PATIENCE and now - state["since"] >= STALE_SHARE * budget_s
            if sum(c) < best_total:
                best_w, best_total, state["stale"], state["since"] = factor.w.detach().clone(), sum(c), 0, now
            elif sum(c) > 1.5 * best_total or stale:
                _restore(factor, best_w, opt, state)
            if progress is not None:
                progress({"seconds": time.perf_counter() - t0, "step": step, "iters": c[0],
                          "best": best_total / len(val), "start": sum(start_counts) / len(val)})
    result.steps = step
    tuned_L = factor.L(best_w).detach()
    if state.get("nonfinite", 0) > MAX_NONFINITE:
        result.status = (f"not tuned: the loss was NaN or Inf {MAX_NONFINITE + 1} times in a row, even at "
                         "the best factor with smaller steps")
    elif step == 0:
        result.status = (f"not tuned: the budget of {budget_s:g} s ended before the first tuning step "
                         f"(measuring the start factor took {time.perf_counter() - t0:.2f} s)")
    elif best_total >= sum(start_counts):
        result.status = (f"not tuned: {step} steps did not lower the iterations of the start factor "
                         f"({TITLES.get(start, start)}, {start_counts} on {len(val)} right-hand sides)")
    else:
        result.status = _end_decision(result, At, starts[start], LLT(tuned_L), rtol, maxiter, singular)
    result.tuning_s = time.perf_counter() - t0

    final = LLT(tuned_L) if result.tuned else starts[start]
    rows["tuned"], built["tuned"] = measure(At, bt, lambda: LLT(final.L.detach()), rtol=rtol, maxiter=maxiter,
                                            repeats=repeats)
    retime_solves(At, bt, built, rows, rtol=rtol, maxiter=maxiter, rounds=max(1, repeats))
    if not result.tuned:
        rows["tuned"].note = f"= {TITLES.get(start, start)}"
    result.exported = matrix_export_of(final)
    measured_rows = [k for k in CLASSICAL if rows[k].solve_ms is not None and rows[k].converged]
    if measured_rows:
        result.fastest = min(measured_rows, key=lambda k: rows[k].solve_ms)
        result.break_even_solves = (break_even(result.tuning_s, rows["tuned"], rows[result.fastest])
                                    if result.tuned else None)
    return result


def _restore(factor: _Factor, best_w: Tensor, opt, state: dict, lr: float | None = None) -> None:
    """Back to the best factor with half the step size (a step made the solve much slower or broke it), or
    with the step size ``lr`` (a new phase)."""
    with torch.no_grad():
        factor.w.copy_(best_w)
    state["lr"] = state["lr"] * 0.5 if lr is None else lr
    state["stale"] = 0
    state["since"] = time.perf_counter() - state["t0"]
    for g in opt.param_groups:
        g["lr"] = state["lr"]
    opt.state.clear()


def _end_decision(result: TuneResult, A: SparseMatrix, start, tuned, rtol: float, maxiter: int,
                  singular: bool = False) -> str:
    """"tuned" when the tuned factor needs fewer iterations than the start in total on the held-out right-hand
    sides (:data:`HOLDOUT_SEEDS`, never seen in tuning) and at most :data:`HOLDOUT_SLACK` times the start's on
    each; else "not tuned: ..." (the start is kept)."""
    rhs = [torch.from_numpy(random_rhs(A.to_scipy(), s, result.matrix, singular)) for s in HOLDOUT_SEEDS]
    counts = {"tuned": [], "start": []}
    for r in rhs:
        for key, M in (("tuned", tuned), ("start", start)):
            its, ok = solve_iters(A, r, M, rtol, maxiter)
            counts[key].append(its if ok else maxiter + 1)
    result.holdout = counts
    if (all(t <= HOLDOUT_SLACK * s for t, s in zip(counts["tuned"], counts["start"]))
            and sum(counts["tuned"]) < sum(counts["start"])):
        return "tuned"
    return (f"not tuned: the tuned factor took {counts['tuned']} iterations against the start's "
            f"{counts['start']} on {len(HOLDOUT_SEEDS)} right-hand sides not used in tuning")


__all__ = ["CLASSICAL", "MAX_UNROLLED", "ROWS", "TITLES", "TuneError", "TuneResult", "check_rhs",
           "check_spd_like", "energy_loss", "tunable_reason", "tune_matrix", "unrolled_size"]
