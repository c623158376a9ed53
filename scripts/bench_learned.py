"""Learned solvers and preconditioners vs classical ones, after a fixed CPU training budget.

Run (from the repository root)::

    python scripts/bench_learned.py                              # 20 min per model, 64/128/256 grids
    python scripts/bench_learned.py --models neural_if --budget-minutes 5
    python scripts/bench_learned.py --ckpt neural_if=outputs/.../last.ckpt   # skip training, evaluate a checkpoint
    python scripts/bench_learned.py --quick                      # smoke run: 1 min per model, 16/32 grids

1. Training: each model in ``--models`` is trained by the real CLI (``python train.py model=NAME
   data=diffusion2d data.size=TRAIN_SIZE data.params.sigma2=1 trainer.max_time=BUDGET ...``, CSV logger)
   for ``--budget-minutes`` of wall time (data generation included) on this machine's CPU; the best
   checkpoint on ``val/iters`` is evaluated (``last.ckpt`` when no best was saved).
2. Evaluation: ``--num-test`` held-out diffusion2d systems (sigma^2 = 1, seeds disjoint from every
   training split) per grid size in ``--sizes``. For each system, method and rtol in ``--rtols``:
   iterations, setup seconds (building the preconditioner: IC(0) factorisation, AMG hierarchy,
   network forward and the safeguard's check against IC(0)), solve seconds and their sum (median of
   ``--repeats``). Classical methods (every entry of the baseline registry: none, Jacobi, IC(0), MIC(0), AMG) run
   PCG (``learnsolve.linalg.cg``; IC(0) and learned factors use the same compiled triangular solves,
   so times compare kernels fairly); ``gnn_solver`` (a learned multigrid hierarchy) runs PCG like the other
   preconditioners (its ``mode=fcg`` checkpoints: flexible CG), ``unrolled_cg`` its learned steps then CG. AMG is pyamg (smoothed aggregation, Ruge-Stueben) used as a preconditioner of the same CG.
   Baselines and learned models are timed in the same process, one after the other per system.
   Records so far are saved after every system (``bench_learned.partial.json``).
3. Output: a table on stdout and ``OUT/bench_learned.json`` and ``OUT/bench_learned.md`` (written
   atomically), with per-size means and the ratios to IC(0). Goal for neural_if and
   gnn_solver: iterations <= 0.8x IC(0) and time <= 1.0x IC(0) at every size.

``neural_if`` stores exactly tril(A)'s pattern, the same number of nonzeros as IC(0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from learnsolve.data import GENERATORS
from learnsolve.evaluation.baselines import BASELINES, build_baseline
from learnsolve.files import write_text
from learnsolve.linalg import SparseMatrix, cg
from learnsolve.models.checkpoint import load_model

CLASSICAL = tuple(BASELINES)
GOAL_MODELS = ("neural_if", "gnn_solver")
TEST_SEED = 7_000_000  # far from the datamodule's split offsets (0, 1e6, 2e6, 3e6 + 1e6 i)


def _dhms(minutes: float) -> str:
    s = round(minutes * 60)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train_model(name: str, args, out: Path) -> Path:
    run_dir = out / "train" / name
    minutes = args.budget_minutes
    cmd = [sys.executable, str(ROOT / "train.py"), f"model={name}", "data=diffusion2d",
           f"data.size={args.train_size}", "data.params.sigma2=1.0", f"data.num_train={args.num_train}",
           "data.num_val=8", "data.num_test=4", "data.extra_test_sizes=[]", "trainer.max_epochs=100000",
           f"trainer.max_time='{_dhms(minutes)}'", "logger=csv", "report=false", "test=false",
           "trainer.enable_progress_bar=false", "data.progress=false", f"hydra.run.dir={run_dir}",
           f"paths.root_dir={args.data_root}", *args.override]
    print(f"[train] {name}: {minutes} min budget -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"[train] {name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    ckpts = sorted(p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    return ckpts[-1] if ckpts else run_dir / "checkpoints" / "last.ckpt"


def _median_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def measure(method: str, model, batch, rtol: float, maxiter: int, repeats: int) -> dict:
    A = SparseMatrix.from_pyg(batch).detach()
    b = batch.b.view(-1).to(A.dtype)

    def setup():
        if method in CLASSICAL:
            return build_baseline(method, A)
        if model.kind == "preconditioner":  # checked by the safeguard (IC(0) fallback), as everywhere by default
            return model.safe_preconditioner_for(batch)[0]
        return None  # learned solvers build their context inside solve (timed there)

    with torch.no_grad():
        t_setup, M = _median_time(setup, repeats)
        if method in CLASSICAL or model.kind == "preconditioner":
            t_solve, (_, info) = _median_time(lambda: cg(A, b, M, rtol=rtol, maxiter=maxiter), repeats)
        else:
            t_solve, (_, info) = _median_time(lambda: model.solve(batch, rtol=rtol, maxiter=maxiter), repeats)
    return {"iters": float(info.iterations.view(-1)[0]), "converged": bool(info.converged.view(-1)[0]),
            "setup_s": t_setup, "solve_s": t_solve, "total_s": t_setup + t_solve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["neural_if", "gnn_solver", "lowrank_precond", "unrolled_cg"])
    p.add_argument("--budget-minutes", type=float, default=20.0, help="training wall time per model")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--num-train", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--num-test", type=int, default=4)
    p.add_argument("--rtols", type=float, nargs="+", default=[1e-6, 1e-8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--maxiter", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    p.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH", help="evaluate this checkpoint")
    p.add_argument("--override", action="append", default=[], help="extra train.py override (repeatable)")
    p.add_argument("--data-root", default=str(ROOT), help="paths.root_dir for the training data cache")
    p.add_argument("--out", default="bench_results/bench_learned")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 min budget, sizes 16 32, 2 test systems")
    args = p.parse_args(argv)
    if args.quick:
        args.budget_minutes, args.train_size, args.sizes, args.num_test, args.num_train = 1.0, 16, [16, 32], 2, 32
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ckpts = {}
    for spec in args.ckpt:
        name, _, path = spec.partition("=")
        ckpts[name] = Path(path)
    models = {}
    for name in args.models:
        path = ckpts.get(name) or train_model(name, args, out)
        model, _ = load_model(path)
        if model.kind not in ("solver", "preconditioner"):
            print(f"[skip] {name}: kind {model.kind!r} does not solve linear systems")
            continue
        models[name] = (model, str(path))

    methods = [*CLASSICAL, *models]
    records = []
    for m in args.sizes:
        for i in range(args.num_test):
            data = GENERATORS["diffusion2d"](m, seed=TEST_SEED + 1000 * m + i, sigma2=1.0, corr_len=0.1)
            batch = Batch.from_data_list([data])
            for rtol in args.rtols:
                for method in methods:
                    model = models[method][0] if method in models else None
                    r = measure(method, model, batch, rtol, args.maxiter, args.repeats)
                    records.append({"size": m, "system": i, "rtol": rtol, "method": method, **r})
            print(f"[eval] {m}x{m} system {i + 1}/{args.num_test} done", flush=True)
            write_text(out / "bench_learned.partial.json", json.dumps({"records": records}, indent=1))

    summary = []
    for m in args.sizes:
        for rtol in args.rtols:
            def mean(method, key, m=m, rtol=rtol):
                v = [r[key] for r in records if r["size"] == m and r["rtol"] == rtol and r["method"] == method]
                return sum(v) / len(v)

            ic0_it, ic0_t = mean("ic0", "iters"), mean("ic0", "total_s")
            for method in methods:
                conv = all(r["converged"] for r in records
                           if r["size"] == m and r["rtol"] == rtol and r["method"] == method)
                it, tot = mean(method, "iters"), mean(method, "total_s")
                row = {"size": m, "rtol": rtol, "method": method, "iters": it, "setup_s": mean(method, "setup_s"),
                       "solve_s": mean(method, "solve_s"), "total_s": tot, "iters_ratio_ic0": it / ic0_it,
                       "time_ratio_ic0": tot / ic0_t, "all_converged": conv}
                if method in GOAL_MODELS:
                    row["goal_met"] = bool(row["iters_ratio_ic0"] <= 0.8 and row["time_ratio_ic0"] <= 1.0 and conv)
                summary.append(row)

    header = "| grid | rtol | method | iterations | setup ms | solve ms | total ms | iters / IC(0) | time / IC(0) |"
    lines = [header, "|" + "---|" * 9]
    for r in summary:
        lines.append(f"| {r['size']}x{r['size']} | {r['rtol']:g} | {r['method']} | {r['iters']:.1f} | "
                     f"{1e3 * r['setup_s']:.1f} | {1e3 * r['solve_s']:.1f} | {1e3 * r['total_s']:.1f} | "
                     f"{r['iters_ratio_ic0']:.2f} | {r['time_ratio_ic0']:.2f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"budget_minutes": args.budget_minutes, "train_size": args.train_size, "num_train": args.num_train,
            "sizes": args.sizes, "num_test": args.num_test, "rtols": args.rtols, "repeats": args.repeats,
            "threads": args.threads, "checkpoints": {k: v[1] for k, v in models.items()},
            "torch": torch.__version__, "cpu_count": os.cpu_count()}
    write_text(out / "bench_learned.json", json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1))
    write_text(out / "bench_learned.md", table + "\n")
    (out / "bench_learned.partial.json").unlink(missing_ok=True)
    print(f"wrote {out / 'bench_learned.json'} and {out / 'bench_learned.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
