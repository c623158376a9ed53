"""``python scripts/tune.py matrix=PATH.mtx ckpt_path=CKPT [budget_s=60] [rhs=PATH.mtx] ...``
(``learnsolve-tune``): tune a trained factor preconditioner on one SPD matrix
(:func:`learnsolve.training.tune.run_tune`; options in ``conf/tune.yaml``).

Prints the table (iterations, ms per solve and setup ms of the tuned factor, the model before tuning, IC(0),
MIC(0) and AMG-SA), the tuning time and the break-even number of solves, and where the files went. Exit
status: 0 tuned; 1 not tuned (the reason is printed and in tune.json; the start factor was exported); 2 bad
arguments (missing or malformed matrix or right-hand side, a matrix that is not SPD, a checkpoint of a model
that cannot be tuned, a non-positive budget): nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from ._hydra import run_command


def _progress_bar(enabled: bool, budget_s: float):
    """(callback, context) of a rich progress bar over the budget with the current and best iterations."""
    import contextlib

    if not enabled:
        return None, contextlib.nullcontext()
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("tuning"), BarColumn(), TimeElapsedColumn(),
                   TextColumn("step {task.fields[step]}  iterations {task.fields[iters]} (best "
                              "{task.fields[best]}, start {task.fields[first]})"),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("tune", total=budget_s, step=0, iters="-", best="-", first="-")

    def update(state):
        bar.update(task, completed=min(state["seconds"], budget_s), step=state["step"], iters=state["iters"],
                   best=f"{state['best']:.1f}", first=f"{state['start']:.1f}")

    return update, bar


def tune_command(cfg, out_dir: Path | None = None) -> int:
    """The whole command on a composed config; the run folder is Hydra's (``out_dir`` for a config composed
    without Hydra's run, e.g. with ``hydra.compose``). Returns the exit status; TuneError for bad
    arguments."""
    from learnsolve.training.tune import run_tune

    for key in ("matrix", "ckpt_path"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) is None:
            print(f"learnsolve-tune: give {key}=PATH (matrix: an SPD Matrix Market file; ckpt_path: a "
                  "neural_if training checkpoint)", file=sys.stderr)
            return 2
    budget = cfg.budget_s
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        print(f"learnsolve-tune: budget_s must be a number of seconds, got {budget!r}", file=sys.stderr)
        return 2
    update, bar = _progress_bar(bool(cfg.progress), float(budget))
    with bar:
        if out_dir is None:
            from hydra.core.hydra_config import HydraConfig

            out_dir = Path(HydraConfig.get().runtime.output_dir)
        run = run_tune(cfg.matrix, cfg.ckpt_path, out_dir, budget_s=float(budget),
                       rhs=cfg.rhs, rtol=float(cfg.rtol), maxiter=int(cfg.maxiter), seed=int(cfg.seed),
                       lr=float(cfg.lr), repeats=int(cfg.repeats), program=bool(cfg.program), progress=update,
                       max_steps=None if cfg.get("max_steps") is None else int(cfg.max_steps))
    print(run.result.table())
    print(f"\nresults: {run.folder / 'tune.json'} (.md)\npreconditioner: {run.preconditioner} "
          "(learnsolve.export.load_preconditioner)")
    if not run.result.tuned:
        print(f"learnsolve-tune: {run.result.status}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    from learnsolve.training.tune import TuneError

    return run_command("learnsolve-tune", "tune", tune_command, (TuneError,))


if __name__ == "__main__":
    sys.exit(main())
