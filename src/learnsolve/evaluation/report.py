"""Result files and plots of an evaluation run: ``results.csv``, ``results.json``, ``results.md``,
``plots/convergence_<matrix>.png`` (relative residual against iteration, every preconditioner on one
plot) and ``plots/summary.png`` (iterations relative to IC(0) per matrix); optionally the same to W&B.

Every file is written atomically (:mod:`learnsolve.files`: a temporary name, then ``os.replace``), so a
reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from learnsolve.files import atomic_path, write_text

from .runner import HISTORY_KEY, SURROGATE_COLUMNS, columns, rtol_key

METHOD_NOTE = (
    "Iterations to each rtol are read from the recursive residual history of ONE solve per matrix and "
    "preconditioner at the smallest rtol (the first k with ||r_k|| <= rtol ||b||; '-' = not reached). "
    "rel. residual is the TRUE final ||b - A x|| / ||b||, recomputed from the returned x. Times are medians "
    "of {repeats} further full solve(s) at rtol {rtol:g}: setup = building the preconditioner (learned "
    "preconditioner: network forward + one application), solve = the Krylov iterations, total = setup + "
    "solve. The learned preconditioner is checked at setup by its safeguard (a few PCG steps against its "
    "classical fallback, IC(0) by default; the check is part of its setup time) unless safeguard=false: "
    "fallback = yes where it was rejected and the row was solved with the fallback (the note says why). "
    "Solver: CG for SPD matrices (symmetric, positive diagonal), restarted GMRES({restart}) otherwise "
    "(solver={solver}); flexible CG for a nonlinear learned preconditioner; at most {maxiter} iterations. "
    "vs IC(0) = iterations / IC(0) iterations at the same rtol (ILU(0) on nonsymmetric matrices). Status: ok "
    "= the solver's test passed at rtol {rtol:g} and the true residual is at most 10 x rtol; not_converged = "
    "iteration cap, breakdown or a drifted residual; skipped = the method does not apply (e.g. SPD-only); "
    "failed = setup breakdown or NaN/Inf; error = unreadable matrix. Notes give the reasons."
)


def _plain(v):
    """A JSON/CSV-friendly scalar (NaN/Inf become None: JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return _plain(v.item())
    return v


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], cols: Sequence[str] | None = None) -> Path:
    """Rows as CSV (columns ``cols``, default the first row's keys; None is written as empty), atomically."""
    cols = list(rows[0]) if cols is None and rows else list(cols or [])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: "" if r.get(c) is None else _plain(r.get(c)) for c in cols})
    return write_text(path, buf.getvalue())


def write_json(path: str | os.PathLike, rows: Sequence[Mapping], meta: Mapping) -> Path:
    """``{"meta": ..., "rows": [...]}``; rows keep their residual histories (relative, per iteration)."""
    def clean(r):
        return {k: ([_plain(x) for x in v] if isinstance(v, list) else _plain(v)) for k, v in r.items()}
    return write_text(path,
                      json.dumps({"meta": dict(meta), "rows": [clean(r) for r in rows]}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "ms":
        return f"{1e3 * v:.3g}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "g4":
        return f"{v:.4g}"
    if kind == "sci":
        return f"{v:.1e}"
    if kind == "yesno":
        return "yes" if v else "no"
    return str(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def markdown_table(rows: Sequence[Mapping], rtols: Sequence[float]) -> str:
    """The results as a Markdown table; reasons become numbered notes below it."""
    header = ["matrix", "n", "solver", "preconditioner", "status", *[f"iters {r:g}" for r in rtols],
              *[f"vs IC(0) {r:g}" for r in rtols], "setup ms", "network ms", "safeguard ms", "solve ms",
              "total ms", "rel. residual", "fallback", "note"]
    notes: dict[str, int] = {}
    body = []
    for r in rows:
        note = ""
        if r.get("reason"):
            note = f"[{notes.setdefault(str(r['reason']), len(notes) + 1)}]"
        body.append([str(r.get("matrix") or ""), _fmt(r.get("n")), _fmt(r.get("solver")),
                     _fmt(r.get("preconditioner")), str(r.get("status")),
                     *[_fmt(r.get(rtol_key("iters", t))) for t in rtols],
                     *[_fmt(r.get(rtol_key("ratio_ic0", t)), "ratio") for t in rtols],
                     _fmt(r.get("setup_s"), "ms"), _fmt(r.get("inference_s"), "ms"),
                     _fmt(r.get("safeguard_s"), "ms"), _fmt(r.get("solve_s"), "ms"),
                     _fmt(r.get("total_s"), "ms"), _fmt(r.get("rel_residual"), "sci"),
                     _fmt(r.get("fallback"), "yesno"), note])
    text = _md_table(header, body)
    if notes:
        text += "\n\n" + "\n".join(f"[{i}] {' '.join(t.split())}  " for t, i in notes.items())
    return text


def surrogate_markdown_table(rows: Sequence[Mapping]) -> str:
    body = [[str(r.get("split")), _fmt(r.get("metric")), _fmt(r.get("value"), "g4"), _fmt(r.get("graphs")),
             str(r.get("status")), _fmt(r.get("reason"))] for r in rows]
    return _md_table(["split", "metric", "value", "graphs", "status", "reason"], body)


def _header(meta: Mapping) -> str:
    ck = meta.get("ckpt_path")
    what = f"`{ck}` ({meta.get('model')})" if ck else "classical baselines only"
    return f"# Evaluation: {what} on `{meta.get('benchmark')}`\n\n"


def write_markdown(path: str | os.PathLike, rows: Sequence[Mapping], meta: Mapping) -> Path:
    rtols = meta["rtols"]
    text = _header(meta) + METHOD_NOTE.format(repeats=meta.get("repeats"), rtol=min(rtols),
                                              restart=meta.get("gmres_restart"), solver=meta.get("solver"),
                                              maxiter=meta.get("maxiter"))
    text += f"\n\n{markdown_table(rows, rtols)}\n"
    return write_text(path, text)


def write_surrogate_markdown(path: str | os.PathLike, rows: Sequence[Mapping], meta: Mapping) -> Path:
    text = (_header(meta).replace(f"on `{meta.get('benchmark')}`", "on its own test set")
            + "A surrogate model (no solver iterations): the means over the test graphs of the model's "
              "metrics (batch means weighted by graphs).\n\n" + surrogate_markdown_table(rows) + "\n")
    return write_text(path, text)


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure atomically (the format from the suffix) and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        _pyplot().close(fig)
    return Path(path)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "matrix"


def plot_convergence(rows: Sequence[Mapping], folder: str | os.PathLike,
                     rtols: Sequence[float]) -> list[Path]:
    """One PNG per matrix: relative residual (log) against iteration, every preconditioner on it."""
    plt = _pyplot()
    by_matrix: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get(HISTORY_KEY):
            by_matrix.setdefault(r["matrix"], []).append(r)
    paths = []
    for name, rs in by_matrix.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for r in rs:
            h = [v if (v is not None and math.isfinite(v) and v > 0) else float("nan")
                 for v in r[HISTORY_KEY]]
            label = f"{r['preconditioner']} ({r['solver']})"
            ax.semilogy(range(len(h)), h, label=label, lw=2.2 if r["preconditioner"] == "learned" else 1.2)
        for t in rtols:
            ax.axhline(t, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("||r_k|| / ||b||")
        ax.set_title(f"{name} (n = {rs[0].get('n')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, Path(folder) / f"convergence_{safe_name(name)}.png"))
    return paths


def plot_summary(rows: Sequence[Mapping], path: str | os.PathLike, rtols: Sequence[float]) -> Path:
    """Grouped bars: iterations / IC(0) iterations per matrix and preconditioner, one panel per rtol."""
    plt = _pyplot()
    matrices = list(dict.fromkeys(r["matrix"] for r in rows if r.get("status") in ("ok", "not_converged")))
    precs = list(dict.fromkeys(r["preconditioner"] for r in rows
                               if r.get("preconditioner") and r["preconditioner"] not in ("ic0", "ilu0")))
    fig, axes = plt.subplots(1, len(rtols),
                             figsize=(max(6.0, 1.1 * len(matrices) + 3) * len(rtols) / 1.4, 4.4),
                             squeeze=False)
    width = 0.8 / max(len(precs), 1)
    for ax, t in zip(axes[0], rtols):
        key = rtol_key("ratio_ic0", t)
        any_bar = False
        for j, p in enumerate(precs):
            xs, ys = [], []
            for i, m in enumerate(matrices):
                v = next((r.get(key) for r in rows if r["matrix"] == m
                          and r.get("preconditioner") == p), None)
                if v is not None and math.isfinite(v) and v > 0:
                    xs.append(i + (j - (len(precs) - 1) / 2) * width)
                    ys.append(v)
            if ys:
                any_bar = True
                ax.bar(xs, ys, width=width, label=p)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(matrices)))
        ax.set_xticklabels(matrices, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("iterations / IC(0) iterations")
        ax.set_title(f"rtol {t:g}")
        if any_bar:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("log")
            fmt = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(fmt)
            ax.yaxis.set_minor_formatter(fmt)
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no IC(0) ratio available", ha="center", va="center", transform=ax.transAxes)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, Path(path))


# ------------------------------------------------------------------------------------------------
# all together
# ------------------------------------------------------------------------------------------------

def write_results(outdir: str | os.PathLike, rows: Sequence[Mapping], meta: Mapping,
                  plots: bool = True) -> dict[str, Path | list[Path]]:
    """Write results.{csv,json,md} (and the plots) of a solver/preconditioner evaluation under ``outdir``."""
    out = Path(outdir)
    rtols = meta["rtols"]
    paths: dict[str, Path | list[Path]] = {
        "csv": write_csv(out / "results.csv", rows, columns(rtols)),
        "json": write_json(out / "results.json", rows, meta),
        "md": write_markdown(out / "results.md", rows, meta),
    }
    if plots:
        paths["convergence"] = plot_convergence(rows, out / "plots", rtols)
        paths["summary"] = plot_summary(rows, out / "plots" / "summary.png", rtols)
    return paths


def write_surrogate_results(outdir: str | os.PathLike, rows: Sequence[Mapping],
                            meta: Mapping) -> dict[str, Path]:
    out = Path(outdir)
    return {"csv": write_csv(out / "results.csv", rows, SURROGATE_COLUMNS),
            "json": write_json(out / "results.json", rows, meta),
            "md": write_surrogate_markdown(out / "results.md", rows, meta)}


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the current W&B run, if any (every job ends its run, failed ones with ``exit_code`` 1)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def log_wandb(run, rows: Sequence[Mapping], cols: Sequence[str], paths: Mapping) -> None:
    """The results table (``evaluate/results``) and the PNGs (``evaluate/summary``,
    ``evaluate/convergence/<matrix>``) to a W&B run."""
    import wandb

    data = [[_plain(r.get(c)) for c in cols] for r in rows]
    payload = {"evaluate/results": wandb.Table(columns=list(cols), data=data, allow_mixed_types=True)}
    if paths.get("summary"):
        payload["evaluate/summary"] = wandb.Image(str(paths["summary"]))
    for p in paths.get("convergence") or []:
        payload[f"evaluate/convergence/{Path(p).stem.removeprefix('convergence_')}"] = wandb.Image(str(p))
    run.log(payload)


__all__ = [
    "METHOD_NOTE",
    "finish_wandb",
    "log_wandb",
    "markdown_table",
    "plot_convergence",
    "plot_summary",
    "safe_name",
    "save_figure",
    "surrogate_markdown_table",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_results",
    "write_surrogate_results",
]
