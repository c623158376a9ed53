"""The end-of-run comparison: learned solver vs classical preconditioners on the test systems."""

from __future__ import annotations

import time

import torch

from learnsolve.evaluation.baselines import REFERENCE, build_baseline, training_baselines
from learnsolve.linalg import SparseMatrix, cg

from .module import safeguarded_solve


def compare_on_test(model, loader, rtol: float = 1e-6, maxiter: int = 2000, untrained=None) -> list[dict]:
    """Mean CG iterations and seconds (setup + solve) per system for the registry's training baselines
    (none, Jacobi, IC(0), ...), the untrained model (``untrained``: the same model at its initial parameters, i.e.
    its classical start; row left out when None) and the learned model's own solve, over every system of
    ``loader`` (each batch solved at once). ``iters_ratio_ic0``: iterations / the reference baseline's (IC(0)). A linear learned
    preconditioner is solved with its safeguard (its seconds include the check); ``fallbacks`` counts the systems
    where the safeguard rejected it ("-" for the baselines and for models without a check; the printed table
    says it in its caption)."""
    baselines = training_baselines()
    models = {"learned": model} if untrained is None else {"untrained": untrained, "learned": model}
    totals = {k: {"iters": 0.0, "seconds": 0.0, "converged": 0, "systems": 0} for k in (*baselines, *models)}
    fallbacks: dict[str, list[int]] = {k: [] for k in models}
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for batch in loader:
            A = SparseMatrix.from_pyg(batch).detach()
            b = batch.b.view(-1).to(A.dtype)
            for name in baselines:
                t0 = time.perf_counter()
                _, info = cg(A, b, build_baseline(name, A), rtol=rtol, maxiter=maxiter)
                _add(totals[name], info, time.perf_counter() - t0)
            for key, m in models.items():
                t0 = time.perf_counter()
                _, info, check = safeguarded_solve(m, batch, rtol, maxiter)
                _add(totals[key], info, time.perf_counter() - t0)
                if check is not None:
                    fallbacks[key].append(check.num_fallbacks)
    rows = []
    for name, t in totals.items():
        n = max(t["systems"], 1)
        rows.append({"method": name, "iters": t["iters"] / n, "seconds": t["seconds"] / n,
                     "converged": f"{t['converged']}/{t['systems']}",
                     "fallbacks": f"{sum(fallbacks[name])}/{t['systems']}" if fallbacks.get(name) else "-"})
    ref = next(r for r in rows if r["method"] == REFERENCE)
    for r in rows:
        r["iters_ratio_ic0"] = r["iters"] / ref["iters"] if ref["iters"] else float("nan")
    return rows


def _add(t: dict, info, seconds: float) -> None:
    its = info.iterations.view(-1)
    t["iters"] += float(its.sum())
    t["seconds"] += seconds  # the batch's time, averaged per system below
    t["converged"] += int(info.converged.sum())
    t["systems"] += its.numel()


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    fell = next((r["fallbacks"] for r in rows if r["method"] == "learned" and r.get("fallbacks", "-") != "-"), None)
    caption = None if fell is None else (f"safeguard: the learned preconditioner was replaced by its classical "
                                         f"fallback on {fell} systems")
    table = Table(title=title, caption=caption)
    for col in ("method", "iterations", "ratio to IC(0)", "ms per system", "converged"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["method"], f"{r['iters']:.1f}", f"{r['iters_ratio_ic0']:.2f}", f"{1e3 * r['seconds']:.1f}",
                      r["converged"])
    Console().print(table)
