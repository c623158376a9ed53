"""Gradient quality and memory of implicit / unrolled / truncated / stochastic differentiation of solves.

Run (from the repository root)::

    python scripts/gradient_quality.py                          # quality study, defaults below (~2 min)
    python scripts/gradient_quality.py --study memory           # memory table, n = 1e4, 1e5 x 10/100/1000 its
    python scripts/gradient_quality.py --study both --quick     # tiny smoke run of both (< 30 s)
    python scripts/gradient_quality.py --sizes 16 32 --sigma2 0 2 --truncate 1 5 20 --sample 0.5 --wandb

Quality: diffusion2d problems (grid side ``--sizes``, log-coefficient variance ``--sigma2``: larger =
worse conditioned), gradients of a loss of the solution w.r.t. A's values and b by implicit
differentiation, full unrolling, truncated unrolling (``--truncate`` k values) and stochastic implicit
gradients (adjoint for a ``--sample`` fraction of the ``--rhs`` right-hand sides, ``--draws`` draws),
against float64 central finite differences (scipy LU, random directions) and the exact scipy adjoint.
The quality study also runs ``learnsolve.evaluation.compare_gradient_methods`` on one SPD (CG) and one
NONSYMMETRIC (GMRES, ILU(0)) system of the smallest size, one right-hand side each, finite differences in general
directions: ``compare.{csv,md,json}``.
Memory: peak resident memory of forward + backward vs iteration count, one fresh process per point.
See ``learnsolve.evaluation.gradients`` for every column.

Writes into ``--out`` (default ``outputs/gradients``): ``quality.{csv,md,json}``,
``quality.png`` (error and time vs condition number), ``memory.{csv,md,json}``, ``memory.png``; every
file atomically. ``--wandb`` also logs the tables and plots to a W&B run (offline unless WANDB_MODE
says otherwise).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from learnsolve.evaluation.compare import COLUMNS as COMPARE_COLUMNS
from learnsolve.evaluation.compare import comparison_markdown, user_cases
from learnsolve.evaluation.gradients import (
    MEMORY_COLUMNS,
    QUALITY_COLUMNS,
    memory_markdown,
    memory_study,
    plot_memory,
    plot_quality,
    quality_markdown,
    quality_study,
    write_study,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=("quality", "memory", "both"), default="quality")
    p.add_argument("--out", default="outputs/gradients", help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    q = p.add_argument_group("quality")
    q.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="grid sides m (n = m^2)")
    q.add_argument("--sigma2", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0],
                   help="variances of the log-coefficient field (conditioning)")
    q.add_argument("--truncate", type=int, nargs="+", default=[1, 10, 50], help="truncated-unrolling windows k")
    q.add_argument("--sample", type=float, default=0.25, help="stochastic: fraction of right-hand sides")
    q.add_argument("--draws", type=int, default=32, help="stochastic: draws (0 = skip)")
    q.add_argument("--rhs", type=int, default=8, help="right-hand sides per problem")
    q.add_argument("--rhs-corr", type=float, default=0.0,
                   help="correlation of the right-hand sides (and loss weights) with a common one, in [0, 1)")
    q.add_argument("--directions", type=int, default=6, help="finite-difference directions")
    q.add_argument("--rtol", type=float, default=1e-10, help="forward and adjoint tolerance")
    q.add_argument("--precond", default="jacobi", help="PCG preconditioner name, or 'none'")
    q.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    mem = p.add_argument_group("memory")
    mem.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="unknowns (rounded to m^2)")
    mem.add_argument("--iters", type=int, nargs="+", default=[10, 100, 1000], help="CG iterations")
    # (no "stochastic": it saves what the implicit backward saves)
    mem.add_argument("--modes", nargs="+", default=["implicit", "unrolled", "truncated"],
                     choices=("implicit", "unrolled", "truncated"))
    mem.add_argument("--k", type=int, default=10, help="truncated window in the memory study")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wandb", action="store_true", help="log tables and plots to W&B (offline by default)")
    return p


def _check(args) -> None:
    bad = []
    if any(m < 2 for m in args.sizes):
        bad.append("--sizes must be >= 2")
    if any(s < 0 for s in args.sigma2):
        bad.append("--sigma2 must be >= 0")
    if any(k < 1 for k in args.truncate):
        bad.append("--truncate windows must be >= 1")
    if not 0 <= args.rhs_corr < 1:
        bad.append("--rhs-corr must lie in [0, 1)")
    if not 0 < args.sample <= 1:
        bad.append("--sample must lie in (0, 1]")
    if args.draws < 0 or args.rhs < 1 or args.directions < 1 or args.repeats < 1:
        bad.append("--draws >= 0, --rhs, --directions and --repeats >= 1")
    if any(n < 4 for n in args.n) or any(i < 1 for i in args.iters) or args.k < 1:
        bad.append("--n >= 4, --iters >= 1 and --k >= 1")
    if bad:
        raise SystemExit("gradient_quality.py: " + "; ".join(bad))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    if args.quick:
        args.sizes, args.sigma2, args.truncate, args.draws = [8, 12], [0.0, 2.0], [1, 5], 8
        args.n, args.iters, args.repeats = [2500], [10, 100], 1
    out = Path(args.out)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": platform.python_version(), "command": " ".join(sys.argv), "seed": args.seed}
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    if args.study in ("quality", "both"):
        rows = quality_study(args.sizes, args.sigma2, args.truncate, args.sample, args.draws, args.rhs,
                             args.directions, args.rtol, None if args.precond == "none" else args.precond,
                             args.repeats, args.seed, progress=say, rhs_corr=args.rhs_corr)
        md = quality_markdown(rows, {**meta, "rtol": args.rtol, "precond": args.precond, "rhs": args.rhs,
                                     "rhs_corr": args.rhs_corr, "sample": args.sample, "draws": args.draws})
        paths.update({f"quality_{k}": v for k, v in write_study(out, "quality", rows, QUALITY_COLUMNS, md,
                                                                meta).items()})
        paths["quality_png"] = plot_quality(rows, out / "quality.png")
        print(md)
        # the user-facing comparison (learnsolve.evaluation.compare), with the nonsymmetric case
        crows = user_cases(min(args.sizes), args.seed, args.rtol, min(args.truncate), max(args.draws, 2), say)
        ccols = ["case", "n", *COMPARE_COLUMNS, "bias", "bias_se"]
        cmd = comparison_markdown(crows, ccols)
        paths.update({f"compare_{k}": v for k, v in write_study(out, "compare", crows, ccols, cmd, meta).items()})
        print(cmd)
    if args.study in ("memory", "both"):
        mrows = memory_study(args.n, args.iters, args.modes, args.k, args.seed, progress=say)
        md = memory_markdown(mrows, meta)
        paths.update({f"memory_{k}": v for k, v in write_study(out, "memory", mrows, MEMORY_COLUMNS, md,
                                                               meta).items()})
        paths["memory_png"] = plot_memory(mrows, out / "memory.png")
        print(md)
    if args.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        def table(rs, cols):
            return wandb.Table(columns=list(cols), data=[[r.get(c) for c in cols] for r in rs],
                               allow_mixed_types=True)

        run = wandb.init(project="learnsolve", job_type="gradient_quality", dir=str(out), config=vars(args))
        try:
            payload = {}
            if args.study in ("quality", "both"):
                payload["gradients/quality"] = table(rows, QUALITY_COLUMNS)
                payload["gradients/quality_plot"] = wandb.Image(str(paths["quality_png"]))
            if args.study in ("memory", "both"):
                payload["gradients/memory"] = table(mrows, MEMORY_COLUMNS)
                payload["gradients/memory_plot"] = wandb.Image(str(paths["memory_png"]))
            run.log(payload)
        finally:
            run.finish()
    for k, v in paths.items():
        print(f"{k:14s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
