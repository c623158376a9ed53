"""The end-of-run comparison: learned solver vs classical preconditioners on the test systems."""

from __future__ import annotations

import time

import torch

from learnsolve.evaluation.baselines import REFERENCE, build_baseline, report_baselines, training_baselines
from learnsolve.linalg import SparseMatrix, cg


def compare_on_test(model, loader, rtol: float = 1e-6, maxiter: int = 2000, untrained=None) -> list[dict]:
    """Mean CG iterations and seconds per system -- setup (building the preconditioner: the factorisation, the
    AMG hierarchy, the network and the safeguard's check), solve and their total -- for the registry's report
    baselines (none, Jacobi, IC(0), MIC(0), the AMG hierarchies), the untrained model (``untrained``: the same
    model at its initial parameters, i.e. its classical start; row left out when None) and the learned model,
    over every system of ``loader`` (each batch solved at once). ``iters_ratio_ic0``: iterations / the
    reference baseline's (IC(0)); ``time_ratio_best``: total seconds / the fastest classical row's. A linear
    learned preconditioner is solved with its safeguard; ``fallbacks`` counts the systems where the safeguard
    rejected it ("-" for the baselines and for models without a check; the printed table says it in its
    caption). A learned solver with no separate setup has all its time in ``solve_seconds``."""
    baselines, in_training = report_baselines(), training_baselines()
    models = {"learned": model} if untrained is None else {"untrained": untrained, "learned": model}
    keys = ("iters", "setup_seconds", "solve_seconds", "converged", "systems")
    totals = {k: dict.fromkeys(keys, 0.0) for k in (*baselines, *models)}
    fallbacks: dict[str, list[int]] = {k: [] for k in models}
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for batch in loader:
            A = SparseMatrix.from_pyg(batch).detach()
            b = batch.b.view(-1).to(A.dtype)
            symmetric = A.is_symmetric(rtol=1e-10)
            for name in baselines:
                if not symmetric and name not in in_training:
                    continue  # the AMG rows are for symmetric matrices (CG); the training baselines as before
                t0 = time.perf_counter()
                M = build_baseline(name, A)
                t1 = time.perf_counter()
                _, info = cg(A, b, M, rtol=rtol, maxiter=maxiter)
                _add(totals[name], info, t1 - t0, time.perf_counter() - t1)
            for key, m in models.items():
                t0 = time.perf_counter()
                if m.kind == "preconditioner":
                    M, check = m.safe_preconditioner_for(batch)
                    t1 = time.perf_counter()
                    _, info = m.solve_with(batch, M, rtol, maxiter)
                else:
                    (_, info), check, t1 = m.solve(batch, rtol=rtol, maxiter=maxiter), None, t0
                _add(totals[key], info, t1 - t0, time.perf_counter() - t1)
                if check is not None:
                    fallbacks[key].append(check.num_fallbacks)
    rows = []
    for name, t in totals.items():
        if not t["systems"] and name in baselines:
            continue  # not run on any of these systems
        n = max(t["systems"], 1)
        setup, solve = t["setup_seconds"] / n, t["solve_seconds"] / n
        rows.append({"method": name, "iters": t["iters"] / n, "setup_seconds": setup, "solve_seconds": solve,
                     "seconds": setup + solve, "converged": f"{int(t['converged'])}/{int(t['systems'])}",
                     "fallbacks": (f"{sum(fallbacks[name])}/{int(t['systems'])}" if fallbacks.get(name)
                                   else "-")})
    ref = next(r for r in rows if r["method"] == REFERENCE)
    classical = [r["seconds"] for r in rows if r["method"] in baselines and r["method"] != "none"
                 and r["converged"].split("/")[0] == r["converged"].split("/")[1]]
    best = min(classical) if classical else float("nan")
    for r in rows:
        r["iters_ratio_ic0"] = r["iters"] / ref["iters"] if ref["iters"] else float("nan")
        r["time_ratio_best"] = r["seconds"] / best if best else float("nan")
    return rows


def _add(t: dict, info, setup: float, solve: float) -> None:
    its = info.iterations.view(-1)
    t["iters"] += float(its.sum())
    t["setup_seconds"] += setup  # the batch's time, averaged per system below
    t["solve_seconds"] += solve
    t["converged"] += int(info.converged.sum())
    t["systems"] += its.numel()


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    fell = next((r["fallbacks"] for r in rows if r["method"] == "learned"
                 and r.get("fallbacks", "-") != "-"), None)
    caption = None if fell is None else ("safeguard: the learned preconditioner was replaced by its "
                                         f"classical fallback on {fell} systems")
    table = Table(title=title, caption=caption)
    for col in ("method", "iterations", "ratio to IC(0)", "setup ms", "solve ms", "total ms",
                "total / fastest classical", "converged"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["method"], f"{r['iters']:.1f}", f"{r['iters_ratio_ic0']:.2f}",
                      f"{1e3 * r['setup_seconds']:.1f}", f"{1e3 * r['solve_seconds']:.1f}",
                      f"{1e3 * r['seconds']:.1f}", f"{r['time_ratio_best']:.2f}", r["converged"])
    Console(width=max(Console().width, 132)).print(table)  # wide enough for every column, also in a log file
