"""The command's work: a matrix file and a checkpoint -> tune.json, tune.md, tune.png and an export folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._core import TITLES, TuneError, TuneResult, tunable_reason, tune_matrix


def plot_tuning(result: TuneResult, path) -> None:
    """``tune.png``: the PCG iterations on the table's b over the tuning time (each measured solve), with the
    model before tuning, IC(0), MIC(0) and AMG-SA as horizontal lines and the final factor as a marker."""
    from learnsolve.evaluation.report import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if result.history:
        t, _, its = zip(*result.history)
        ax.plot(t, its, color="C3", lw=1.2, label="during tuning")
    styles = {"before": "C0", "ic0": "C1", "mic0": "C2", "amg_sa": "C4"}
    for key, color in styles.items():
        r = result.rows[key]
        if r.iters is not None and r.converged:
            ax.axhline(r.iters, color=color, ls="--", lw=1.0, label=f"{TITLES[key]} ({r.iters})")
    final = result.rows["tuned"]
    if final.iters is not None:
        ax.plot([result.tuning_s], [final.iters], "o", color="C3",
                label=f"tuned ({final.iters}; {result.status[:9]})")
    ax.set_xlabel("tuning time [s]")
    ax.set_ylabel(f"PCG iterations to rtol (n = {result.n})")
    ax.set_title(f"{result.matrix}: {result.status[:70]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@dataclass
class TuneRun:
    """What :func:`run_tune` wrote: the result, the run folder, the export folder and the preconditioner's
    JSON."""

    result: TuneResult
    folder: Path
    export: Path
    preconditioner: Path


def run_tune(matrix, ckpt_path, out_dir, *, budget_s: float = 60.0, rhs=None, rtol: float = 1e-6,
             maxiter: int = 10_000, seed: int = 0, lr: float = 1e-2, repeats: int = 3, program: bool = True,
             progress: Callable[[dict], None] | None = None, max_steps: int | None = None) -> TuneRun:
    """Tune the checkpoint's model on the Matrix Market file ``matrix`` (:func:`tune_matrix`) and write, in
    ``out_dir``: ``export/`` (the model folder of :func:`learnsolve.export.export_model`, with
    ``preconditioners/<matrix>.json`` holding the tuned factor, or the start factor where tuning did not
    help), then ``tune.json``, ``tune.md`` and ``tune.png`` (:func:`plot_tuning`). Each is written to a
    temporary name and renamed: a failure leaves no partial file. TuneError for bad arguments (nothing
    written; an existing non-empty ``export/`` is refused before tuning, not after it)."""
    from learnsolve.data.mtx import MatrixMarketError, matrix_stem, read_matrix_market, read_vectors
    from learnsolve.export import ExportError, export_model
    from learnsolve.files import write_json, write_text
    from learnsolve.models.checkpoint import CheckpointError, load_checkpoint

    path = Path(str(matrix))
    if not path.is_file():
        raise TuneError(f"matrix {str(path)!r} is not a file (give matrix=PATH.mtx, a Matrix Market file)")
    try:
        ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as e:
        raise TuneError(str(e)) from e
    reason = tunable_reason(ckpt.model, ckpt.name)
    if reason is not None:
        raise TuneError(f"checkpoint {str(ckpt_path)!r}: {ckpt.name} cannot be tuned: {reason}")
    try:
        A = read_matrix_market(path)
        B = None if rhs is None else read_vectors(rhs)
    except MatrixMarketError as e:
        raise TuneError(str(e)) from e
    stem = matrix_stem(path)
    folder = Path(out_dir)
    export_dir = folder / "export"
    if export_dir.exists() and any(export_dir.iterdir()):
        raise TuneError(f"output folder {str(export_dir)!r} already exists and is not empty: choose another "
                        "out_dir")
    result = tune_matrix(ckpt.model, A, name=stem, model_name=ckpt.name, budget_s=budget_s, rhs=B, rtol=rtol,
                         maxiter=maxiter, seed=seed, lr=lr, repeats=repeats, progress=progress,
                         max_steps=max_steps)
    summary = {k: v for k, v in result.to_json().items() if k != "history"}
    meta = {"source": str(path), "n": result.n, "nnz_A": result.nnz, "model": ckpt.name,
            "model_class": f"{type(ckpt.model).__module__}.{type(ckpt.model).__name__}",
            "factor": "tuned" if result.tuned else f"start:{result.start}", "safeguard": None,
            "tuning": summary}
    try:
        report = export_model(ckpt_path, export_dir, program=program,
                              computed={stem: (result.exported, meta)})
    except ExportError as e:
        raise TuneError(str(e)) from e
    record = {**result.to_json(), "checkpoint": str(ckpt_path), "matrix_file": str(path),
              "rhs_file": None if rhs is None else str(rhs), "rtol": rtol, "seed": seed,
              "export": str(report.folder), "preconditioner": str(report.preconditioners[stem])}
    write_json(folder / "tune.json", record)
    write_text(folder / "tune.md", f"# {stem}: {ckpt.name} tuned for {budget_s:g} s\n\n{result.table()}\n\n"
                                   "![iterations during tuning](tune.png)\n")
    plot_tuning(result, folder / "tune.png")
    return TuneRun(result, folder, report.folder, report.preconditioners[stem])


__all__ = ["TuneRun", "plot_tuning", "run_tune"]
