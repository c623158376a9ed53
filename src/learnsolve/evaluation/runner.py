"""Evaluate a learned solver or preconditioner against classical preconditioners on a benchmark suite.

For every matrix of the suite and every preconditioner in ``preconditioners`` (the baselines of
:mod:`learnsolve.evaluation.baselines` -- none, Jacobi, IC(0), pyamg smoothed aggregation and Ruge-Stueben
AMG -- and the learned model) :func:`evaluate_suite` returns one row:

- the Krylov method: CG when A is SPD (symmetric -- ``Data.symmetric`` or measured -- with a positive
  diagonal), restarted GMRES(``gmres_restart``) otherwise, unless ``solver`` forces cg | gmres | bicgstab
  (``solver=cg`` on a non-SPD matrix skips every row of that matrix, with the reason). A nonlinear learned
  preconditioner runs under flexible CG instead of CG. IC(0) becomes ILU(0) on nonsymmetric matrices;
  on a symmetric matrix that is not SPD it is skipped (SPD-only), as are learned models with
  ``requires_spd``. A matrix marked ``singular`` is still run (with the iteration cap).
- ``iters_<rtol>`` for every rtol of ``rtols``: ONE solve per (matrix, preconditioner) at the smallest
  rtol records the residual history; the iterations to each rtol are the first k with
  ``||r_k|| <= rtol ||b||`` in that (recursive) history, empty when never reached.
- ``rel_residual``: the TRUE final relative residual ``||b - A x|| / ||b||``, recomputed with scipy
  from the returned x (not the recursive residual); ``converged``: the solver's flag at the smallest rtol
  AND a true residual at most 10 x that rtol (the recursive residual can drift from the true one, e.g.
  flexible GMRES with an ill-conditioned preconditioner).
- ``setup_s``, ``solve_s``: medians over ``repeats`` further full solves at the smallest rtol, the setup
  (building the preconditioner; for a learned preconditioner the network forward, the safeguard's check and
  one application, the NaN/Inf check; 0 for a learned solver, whose network runs inside its solve) timed apart
  from the solve; ``total_s = setup_s + solve_s``. The history solve also serves as the warm-up.
  ``inference_s``: the part of ``setup_s`` that is the learned model's own work (network forward and assembly
  of its preconditioner: ``setup_s`` less the safeguard's check and less the classical factor a model builds
  as its base, which it reports as ``base_seconds``); ``safeguard_s``: the safeguard's check (its race and the
  fallback's setup); both 0 for the classical baselines.
- ``untrained`` rows (``evaluate_suite(..., untrained=model_at_init)``): the same model at its initial
  parameters, i.e. its classical start; learned / untrained is what training bought.
- ``fallback``: for a learned linear preconditioner with ``safeguard=True`` (the default), whether the
  safeguard (:meth:`learnsolve.models.base.LearnedModel.safe_preconditioner_for`: a short PCG race against the
  model's ``fallback_for``: the faster of MIC(0) and IC(0) by default) rejected it, so that the row was solved
  with the fallback; the reason then says e.g. "safeguard: fell back to MIC(0) (<why>)". Empty for baselines,
  learned solvers and ``safeguard=False``.
- ``ratio_ic0_<rtol>``: iterations / IC(0) iterations (ILU(0) for nonsymmetric matrices) at that rtol,
  empty when that baseline did not reach it.
- ``status``: ok | not_converged (iteration cap ``maxiter``, a breakdown, or a true residual above
  10 x rtol) | skipped (the method does not apply to this matrix: SPD-only, or a fixed-size model on
  another size) | failed (setup broke down, NaN/Inf) | error (the matrix could not be read); ``reason``
  says why, or notes e.g. an IC(0) retried with a diagonal shift.

:func:`evaluate_surrogate` evaluates surrogate models (``kind == "surrogate"``) on their test sets.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import norm as sp_norm

from learnsolve.data.suites import SuiteError
from learnsolve.data.system import to_scipy
from learnsolve.linalg import SparseMatrix, solve

from .baselines import BASELINES, REFERENCE_LABELS, NotApplicable, SetupFailed, baseline_setup

PRECONDITIONERS = (*BASELINES, "untrained", "learned")
# the model at its initial parameters (its classical start), and trained
LEARNED_ROWS = ("untrained", "learned")
SOLVERS = ("auto", "cg", "gmres", "bicgstab")
STATUSES = ("ok", "not_converged", "skipped", "failed", "error")
EVALUATED = ("ok", "not_converged")  # statuses of a row that was actually solved
TRUE_RESIDUAL_SLACK = 10.0  # converged = the solver's flag and true residual <= this x the smallest rtol
HISTORY_KEY = "residual_history"  # relative residuals per iteration; in results.json and plots only


class _Skip(NotApplicable):
    """This method does not apply to this matrix (reported as status 'skipped')."""


class _Fail(SetupFailed):
    """This method was tried and failed on this matrix (reported as status 'failed')."""


# ------------------------------------------------------------------------------------------------
# matrices
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatrixInfo:
    """What the evaluation needs to know about one matrix."""

    name: str
    n: int
    nnz: int
    symmetric: bool
    spd: bool  # symmetric with a positive diagonal (the CG test; indefiniteness shows up as a breakdown)
    singular: bool
    why_not_spd: str | None


def classify(name: str, data) -> MatrixInfo:
    """Symmetry (``data.symmetric`` when set, else measured) and the SPD test of :mod:`runner`'s docstring."""
    A = to_scipy(data)
    sym = getattr(data, "symmetric", None)
    if sym is None:
        amax = abs(A).max() if A.nnz else 0.0
        sym = bool(A.nnz == 0 or abs(A - A.T).max() <= 1e-12 * amax)
    d = A.diagonal()
    why = None
    if not sym:
        why = "nonsymmetric"
    elif d.size and not bool((d > 0).all()):
        i = int(np.flatnonzero(~(d > 0))[0])
        why = f"symmetric with a non-positive diagonal entry (a_ii = {d[i]:g} in row {i})"
    return MatrixInfo(name, int(data.num_nodes), int(A.nnz), bool(sym), why is None,
                      bool(getattr(data, "singular", False)), why)


def choose_solver(info: MatrixInfo, solver: str = "auto") -> str:
    """The Krylov method for this matrix (raises _Skip when a forced cg does not apply)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "auto":
        return "cg" if info.spd else "gmres"
    if solver == "cg" and not info.spd:
        raise _Skip(f"solver=cg needs an SPD matrix; this one is {info.why_not_spd}")
    return solver


def rtol_key(prefix: str, rtol: float) -> str:
    """Column name of a per-rtol quantity, e.g. ``iters_1e-06``."""
    return f"{prefix}_{rtol:g}"


def columns(rtols: Sequence[float]) -> list[str]:
    """The result columns, in order (``residual_history`` is kept out of the tables)."""
    return ["matrix", "n", "nnz", "symmetric", "spd", "singular", "solver", "preconditioner", "status",
            "reason", *[rtol_key("iters", r) for r in rtols], *[rtol_key("ratio_ic0", r) for r in rtols],
            "setup_s", "inference_s", "safeguard_s", "solve_s", "total_s", "rel_residual", "converged",
            "fallback"]


def _row(info: MatrixInfo | None, name: str, rtols, **kw) -> dict:
    row = dict.fromkeys(columns(rtols))
    if info is not None:
        row.update(matrix=info.name, n=info.n, nnz=info.nnz, symmetric=info.symmetric, spd=info.spd,
                   singular=info.singular)
    else:
        row["matrix"] = name
    row.update(kw)
    return row


# ------------------------------------------------------------------------------------------------
# one (matrix, preconditioner) pair
# ------------------------------------------------------------------------------------------------

@dataclass
class _System:
    info: MatrixInfo
    data: object  # the PyG Data
    A: SparseMatrix
    b_t: torch.Tensor  # (n,) float64
    A_sp: object  # scipy CSR, for the independent true-residual check
    b: np.ndarray


def _krylov(method: str, sysm: _System, M, rtol: float, maxiter: int, options: Mapping):
    """One Krylov solve of the system (no autograd: called under ``torch.no_grad``); failures are rows."""
    return solve(sysm.A, sysm.b_t, method=method, precond=M, rtol=rtol, maxiter=maxiter, on_fail="ignore",
                 return_info=True, **options)


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _measure(setup: Callable, solve: Callable, repeats: int, classical: Callable[[], float] = lambda: 0.0):
    """History solve (also the warm-up), then ``repeats`` timed (setup, solve) pairs; medians of (setup,
    solve, inference, safeguard). Safeguard: the check's seconds (``note.seconds``, when the note is a
    safeguard result); inference: the setup less the check and less ``classical()`` (the seconds of the
    classical part the model built in that setup, e.g. neural_if's base factor): the network forward and the
    assembly of its preconditioner."""
    state, note = setup()
    X, sinfo = solve(state)
    setups, solves, inference, guard = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        st, nt = setup()
        t1 = time.perf_counter()
        solve(st)
        t2 = time.perf_counter()
        setups.append(t1 - t0)
        solves.append(t2 - t1)
        guard.append(getattr(nt, "seconds", 0.0))
        inference.append(max(0.0, t1 - t0 - guard[-1] - classical()))
    return (X, sinfo, note, statistics.median(setups), statistics.median(solves),
            statistics.median(inference), statistics.median(guard))


def _first(mask: torch.Tensor) -> int | None:
    idx = torch.nonzero(mask)
    return int(idx[0, 0]) if idx.numel() else None


def _fill_from_solve(row: dict, sysm: _System, X: torch.Tensor, sinfo, rtols, maxiter: int,
                     learned: bool) -> None:
    hist = sinfo.residual_history.detach().reshape(sinfo.residual_history.shape[0], -1)[:, 0].double()
    bnorm = float(sinfo.b_norm.detach().reshape(-1)[0])
    scale = bnorm if bnorm > 0 else 1.0
    rel_hist = (hist / scale).tolist()
    row[HISTORY_KEY] = rel_hist
    x = X.detach().reshape(-1).double().cpu().numpy()
    who = "the learned model" if learned else "the solve"
    if not np.all(np.isfinite(x)) or not _finite(hist):
        raise _Fail(f"{who} produced NaN/Inf" + (f" ({sinfo.breakdown})" if sinfo.breakdown else ""))
    for r in rtols:
        row[rtol_key("iters", r)] = _first(torch.isfinite(hist) & (hist <= r * bnorm))
    bn = float(np.linalg.norm(sysm.b))
    res = float(np.linalg.norm(sysm.b - sysm.A_sp @ x))
    row["rel_residual"] = res / bn if bn > 0 else res
    claimed = bool(sinfo.converged.reshape(-1)[0])
    # the solver's test is on the recursive residual; the true one may lag it (rounding): allow 10x
    row["converged"] = claimed and row["rel_residual"] <= TRUE_RESIDUAL_SLACK * min(rtols)
    notes = [row["reason"]] if row.get("reason") else []
    row["status"] = "ok" if row["converged"] else "not_converged"
    if claimed and not row["converged"]:
        notes.append(f"the solver reported convergence, but the true residual {row['rel_residual']:.1e} is "
                     f"above {TRUE_RESIDUAL_SLACK:g} x rtol {min(rtols):g} (the recursive residual drifted)")
    elif not claimed:
        its = int(sinfo.iterations.reshape(-1)[0])
        notes.append(f"breakdown after {its} iterations: {sinfo.breakdown}" if sinfo.breakdown
                     else f"iteration cap maxiter={maxiter} reached")
    rhs = (getattr(sysm.data, "params", None) or {}).get("rhs")
    if isinstance(rhs, str) and rhs.startswith("A r "):
        notes.append(f"b = {rhs}")  # A 1 = 0: the right-hand side is the image of a seeded random vector
    row["reason"] = "; ".join(notes) or None


def _run_baseline(name, sysm, method, rtols, repeats, maxiter, options, amg_options, rows_out):
    try:
        label, setup = baseline_setup(name, sysm.A, sysm.info, amg_options)
    except NotApplicable as e:
        rows_out.append(_row(sysm.info, "", rtols, solver=method, preconditioner=name, status="skipped",
                             reason=str(e)))
        return
    row = _row(sysm.info, "", rtols, solver=method, preconditioner=label)
    rtol = min(rtols)

    def run(M):
        return _krylov(method, sysm, M, rtol, maxiter, options)

    notes: list[str] = []
    stage = ["setup"]

    def setup_noted():
        stage[0] = "setup"
        M, note = setup()
        notes[:] = [note] if note else []
        stage[0] = "solve"
        return M, note

    try:
        X, sinfo, note, ts, tv, _, _ = _measure(setup_noted, run, repeats)
        row["reason"] = note
        _fill_from_solve(row, sysm, X, sinfo, rtols, maxiter, learned=False)
    except SetupFailed as e:
        row.update(status="failed", reason="; ".join([*notes, str(e)]))
    except Exception as e:  # noqa: BLE001 -- one failing preconditioner must not stop the evaluation
        row.update(status="failed",
                   reason="; ".join([*notes, f"{label} {stage[0]} failed: {type(e).__name__}: {e}"]))
    else:
        row.update(setup_s=ts, inference_s=0.0, safeguard_s=0.0, solve_s=tv, total_s=ts + tv)
    rows_out.append(row)


def _learned_setup(model, batch, safeguard: bool):
    """(M, check): the model's safeguarded preconditioner (a model without ``safe_preconditioner_for``, or
    ``safeguard=False``: the raw one, check None)."""
    safe = getattr(model, "safe_preconditioner_for", None)
    if safeguard and safe is not None:
        return safe(batch)
    return model.preconditioner_for(batch), None


def _fallback_note(check) -> str | None:
    if check is None or check.all_accepted:
        return None
    return f"safeguard: fell back to {check.fallback_name} ({check.reason})"


def _run_learned(model, sysm, method, rtols, repeats, maxiter, options, rows_out, safeguard: bool = True,
                 label: str = "learned"):
    from torch_geometric.data import Batch

    info = sysm.info
    kind = getattr(model, "kind", None)
    mname = type(model).__name__
    row = _row(info, "", rtols, solver=method, preconditioner=label)
    rtol = min(rtols)
    try:
        if getattr(model, "requires_spd", False) and not info.spd:
            raise _Skip(f"{mname} needs an SPD matrix (it runs CG or flexible CG); this one is "
                        f"{info.why_not_spd}")
        try:
            batch = Batch.from_data_list([sysm.data])
        except Exception:  # noqa: BLE001 -- metadata that does not collate: the bare Data works as one graph
            batch = sysm.data
        if kind == "preconditioner":
            def setup():
                M, check = _learned_setup(model, batch, safeguard)
                if not _finite(M.apply(sysm.b_t.view(1, -1, 1))):
                    raise _Fail(f"the learned preconditioner ({mname}) produced NaN/Inf")
                return M, check

            def run(M):
                # a nonlinear map (a network) breaks PCG's recurrences: flexible CG instead
                meth = "fcg" if method == "cg" and not getattr(M, "linear", True) else method
                row["solver"] = meth
                return _krylov(meth, sysm, M, rtol, maxiter, options if meth == method else {})
        elif kind == "solver":
            def setup():
                return None, None

            def run(_):
                return model.solve(batch, rtol=rtol, maxiter=maxiter)
        else:
            raise _Skip(f"{mname} is a {kind!r} model, not a solver or preconditioner")
        try:
            X, sinfo, check, ts, tv, ti, tg = _measure(
                setup, run, repeats, lambda: float(getattr(model, "base_seconds", 0.0) or 0.0))
        except ValueError as e:  # the model does not apply here (e.g. fixed-size low-rank on another size)
            raise _Skip(f"{mname}: {e}") from e
        if kind == "solver":
            row["solver"] = sinfo.method
        if check is not None:
            row.update(fallback=not check.all_accepted, reason=_fallback_note(check))
        _fill_from_solve(row, sysm, X, sinfo, rtols, maxiter, learned=True)
        row.update(setup_s=ts, inference_s=ti, safeguard_s=tg, solve_s=tv, total_s=ts + tv)
    except _Skip as e:
        row.update(status="skipped", reason=str(e))
    except _Fail as e:
        row.update(status="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001
        row.update(status="failed", reason=f"{mname}: {type(e).__name__}: {e}")
    rows_out.append(row)


def _add_ratios(rows: list[dict], rtols) -> None:
    base = next((r for r in rows if r["preconditioner"] in REFERENCE_LABELS
                 and r["status"] in EVALUATED), None)
    for r in rows:
        for t in rtols:
            key, it = rtol_key("ratio_ic0", t), rtol_key("iters", t)
            b = None if base is None else base.get(it)
            r[key] = r[it] / b if (b and r.get(it) is not None) else None


def rounding_level_rhs(A_sp, b: np.ndarray, x) -> str | None:
    """Why the relative residuals of ``A x = b`` are not meaningful, or None: ``b`` is rounding noise of the
    product A x that it equals (||b|| <= 1e3 eps ||A||_F ||x||, e.g. b = A @ ones with ones in A's null
    space). Asked of the solution the system has (its reference ``x``), not of ||b|| against ||A|| alone: a
    random b with a large ||A|| (bcsstk13: ||A||_F = 7.5e12, ||b|| = 45) is meaningful. Without a reference
    solution nothing is said."""
    if x is None:
        return None
    xn = float(np.linalg.norm(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)))
    bn, an = float(np.linalg.norm(b)), float(sp_norm(A_sp))
    if 0 < bn <= 1e3 * np.finfo(np.float64).eps * an * xn:
        return (f"||b|| = {bn:.1e} is at rounding level of A x (||A||_F ||x|| = {an * xn:.1e}: b = A @ ones "
                "with ones in A's null space?): relative residuals are not meaningful")
    return None


def evaluate_matrix(model, name: str, data, *, rtols: Sequence[float] = (1e-6, 1e-8), repeats: int = 3,
                    maxiter: int = 2000, solver: str = "auto",
                    preconditioners: Iterable[str] = PRECONDITIONERS, gmres_restart: int = 50,
                    amg_options: Mapping[str, Mapping] | None = None, safeguard: bool = True,
                    untrained=None) -> list[dict]:
    """The rows of one matrix (see the module docstring); ``model=None`` drops the learned row,
    ``untrained=None`` the untrained row (``untrained``: the same model at its initial parameters);
    ``safeguard=False`` runs a learned preconditioner without its safeguard (studies)."""
    rtols = sorted({float(r) for r in rtols}, reverse=True)
    amg_options = amg_options or {}
    try:
        info = classify(name, data)
        A = SparseMatrix.from_pyg(data).detach()
        b = data.b.detach().double().cpu().numpy().reshape(-1)
        sysm = _System(info, data, A, data.b.view(-1).to(A.dtype), to_scipy(data).tocsr(), b)
    except Exception as e:  # noqa: BLE001 -- a malformed system is a row, not a crash
        return [_row(None, name, rtols, status="error", reason=f"{type(e).__name__}: {e}")]
    rows: list[dict] = []
    try:
        method = choose_solver(info, solver)
    except _Skip as e:
        models = {"learned": model, "untrained": untrained}
        return [_row(info, name, rtols, preconditioner=p, status="skipped", reason=str(e))
                for p in preconditioners if p not in models or models[p] is not None]
    options = {"restart": int(gmres_restart)} if method == "gmres" else {}
    with torch.no_grad():
        for p in preconditioners:
            if p in LEARNED_ROWS:
                m = model if p == "learned" else untrained
                if m is not None:
                    _run_learned(m, sysm, method, rtols, repeats, maxiter, options, rows, safeguard, label=p)
            else:
                _run_baseline(p, sysm, method, rtols, repeats, maxiter, options, amg_options, rows)
    _add_ratios(rows, rtols)
    warn = rounding_level_rhs(sysm.A_sp, b, getattr(data, "x", None))
    if warn:
        for r in rows:
            r["reason"] = warn if not r.get("reason") else f"{warn}; {r['reason']}"
    return rows


def evaluate_suite(model, suite: Iterable, *, rtols: Sequence[float] = (1e-6, 1e-8), repeats: int = 3,
             maxiter: int = 2000, solver: str = "auto", preconditioners: Iterable[str] = PRECONDITIONERS,
             gmres_restart: int = 50, amg_options: Mapping[str, Mapping] | None = None, progress: bool = True,
             total: int | None = None, safeguard: bool = True, untrained=None) -> list[dict]:
    """Rows for every matrix of ``suite`` (``(name, Data)`` items or :class:`SuiteError` records) and every
    preconditioner: see the module docstring. ``model=None``: the classical baselines alone; ``untrained``:
    the same model at its initial parameters (rows ``untrained``; None: none); ``safeguard=False``: the
    learned preconditioner without its safeguard. A suite
    member that cannot be read is one row with status ``error``; an exception raised by the suite itself
    ends the suite with such a row. ``progress`` shows a bar of matrices done (``total`` when known).

    Args:
        model: a learned model, or None for the classical baselines alone.
        suite: ``(name, Data)`` items (a ``learnsolve.data`` suite or any iterable).
        rtols: tolerances at which iterations are read from one solve's residual history.
        repeats: timed solves per matrix and preconditioner (medians).
        maxiter: iteration cap of every solve.
        solver: ``"auto"`` (CG for SPD, GMRES otherwise) or a method name.
        preconditioners: rows to run: baseline names of the registry (``BASELINES``), ``"untrained"``,
            ``"learned"``.
        gmres_restart: GMRES restart length.
        amg_options: pyamg options per AMG baseline.
        progress: show a progress bar.
        total: number of matrices, for the progress bar.
        safeguard: check the learned preconditioner against its fallback.
        untrained: the model at its initial parameters, or None.

    Returns:
        One dict per (matrix, preconditioner): iterations per rtol, setup / solve / total seconds, true final
            residual, converged flag, ratio to IC(0), status and reason.
    """
    preconditioners = list(preconditioners)
    bad = [p for p in preconditioners if p not in PRECONDITIONERS]
    if bad:
        raise ValueError(f"unknown preconditioners {bad}; choose from {', '.join(PRECONDITIONERS)}")
    if int(repeats) < 1 or int(maxiter) < 1:
        raise ValueError(f"repeats and maxiter must be >= 1, got {repeats} and {maxiter}")
    rtols = sorted({float(r) for r in rtols}, reverse=True)
    if not rtols or not all(0 < r < 1 for r in rtols):
        raise ValueError(f"rtols must be a non-empty list of tolerances in (0, 1), got {rtols}")
    kw = {"rtols": rtols, "repeats": int(repeats), "maxiter": int(maxiter), "solver": solver,
          "preconditioners": preconditioners, "gmres_restart": gmres_restart, "amg_options": amg_options,
          "safeguard": bool(safeguard), "untrained": untrained}
    choose_solver(MatrixInfo("", 1, 1, True, True, False, None), solver)  # a bad solver name fails now
    rows: list[dict] = []
    with _Progress(progress, total) as advance:
        it = iter(suite)
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 -- the suite itself failed: report and stop
                rows.append(_row(None, "(suite)", rtols, status="error",
                                 reason=f"the benchmark suite stopped: {type(e).__name__}: {e}"))
                break
            if isinstance(item, SuiteError):
                rows.append(_row(None, item.name, rtols, status="error",
                                 reason=f"{item.path}: {item.reason}"))
                advance(item.name)
                continue
            name, data = item
            rows.extend(evaluate_matrix(model, name, data, **kw))
            advance(name)
    return rows


class _Progress:
    """A rich progress bar of matrices done (on stderr), or nothing."""

    def __init__(self, enabled: bool, total: int | None):
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda name: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("evaluating {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True))
        self.bar.start()
        task = self.bar.add_task("matrices", total=self.total)

        def advance(name):
            self.bar.update(task, advance=1, description=f"matrices (last: {name})")
        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


# ------------------------------------------------------------------------------------------------
# surrogates
# ------------------------------------------------------------------------------------------------

def evaluate_surrogate(model, loaders: Mapping[str, Iterable]) -> list[dict]:
    """``model.metrics(batch)`` over each test loader (split name -> loader): one row per (split, metric)
    with the mean over graphs (batch means weighted by the batch's number of graphs)."""
    rows = []
    mname = type(model).__name__
    with torch.no_grad():
        for split, loader in loaders.items():
            sums: dict[str, float] = {}
            graphs = 0
            try:
                for batch in loader:
                    g = int(getattr(batch, "num_graphs", 1))
                    for k, v in model.metrics(batch).items():
                        sums[k] = sums.get(k, 0.0) + float(v) * g
                    graphs += g
            except Exception as e:  # noqa: BLE001
                rows.append({"split": split, "metric": None, "value": None, "graphs": graphs,
                             "status": "failed", "reason": f"{mname}: {type(e).__name__}: {e}"})
                continue
            for k, s in sums.items():
                v = s / max(graphs, 1)
                ok = math.isfinite(v)
                rows.append({"split": split, "metric": k, "value": v, "graphs": graphs,
                             "status": "ok" if ok else "failed",
                             "reason": None if ok else f"{mname} produced NaN/Inf"})
    return rows


SURROGATE_COLUMNS = ["split", "metric", "value", "graphs", "status", "reason"]


def exit_code(rows: Sequence[dict]) -> int:
    """0 when at least one row was evaluated (ok or not_converged), 1 when nothing could be."""
    return 0 if any(r.get("status") in EVALUATED for r in rows) else 1


__all__ = ["BASELINES", "EVALUATED", "HISTORY_KEY", "LEARNED_ROWS", "PRECONDITIONERS", "SOLVERS", "STATUSES",
           "SURROGATE_COLUMNS", "MatrixInfo", "choose_solver", "classify", "columns", "evaluate_matrix",
           "evaluate_suite", "evaluate_surrogate", "exit_code", "rtol_key"]
