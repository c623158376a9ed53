"""A learned factor preconditioner under PreCorrector's evaluation protocol (ICML 2025), next to IC(0) and MIC(0).

Run (from the repository root)::

    python scripts/precorrector_protocol.py --ckpt outputs/train/runs/<run>/checkpoints/epochNNN.ckpt
    python scripts/precorrector_protocol.py --ckpt PATH --size 256 --num 4 --sigma2 1.1 --out bench_results

Protocol (as PreCorrector reports it): diffusion systems on a ``--size`` x ``--size`` grid (our ``diffusion2d``
generator: cell-centred finite volumes, k = exp(Gaussian random field) with variance ``--sigma2``, 1.1 by default,
correlation length 0.1), a random initial guess x0 ~ N(0, I) (seeded), PCG stopped at an ABSOLUTE residual
``||b - A x_k|| <= --atol`` (1e-6), iterations counted per system. Methods: IC(0), MIC(0) and the checkpoint's
learned preconditioner (its raw factor: no safeguard), each in ``learnsolve.linalg.cg`` with the same compiled
triangular solves; setup (factorisation / network forward) and solve seconds are timed once per system.
PreCorrector's published figure for comparison: 0.42x IC(0) iterations at 256^2, sigma^2 = 1.1 (0.33x time).

Output: a table on stdout, ``OUT/precorrector_protocol.json`` and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.files import write_json, write_text
from learnsolve.linalg import IC0, MIC0, SparseMatrix, cg
from learnsolve.models.checkpoint import load_model

SEED0 = 8_000_000  # far from the datamodule's split offsets and bench_learned's test seeds


def run(ckpt: str, size: int, num: int, sigma2: float, atol: float, maxiter: int) -> list[dict]:
    model, _ = load_model(ckpt)
    if model.kind != "preconditioner":
        raise SystemExit(f"{ckpt}: a {model.kind} model; this protocol compares factor preconditioners")
    records = []
    for i in range(num):
        data = GENERATORS["diffusion2d"](size, seed=SEED0 + i, sigma2=sigma2, corr_len=0.1)
        batch = Batch.from_data_list([data])
        A = SparseMatrix.from_pyg(batch).detach()
        b = batch.b.view(-1).to(A.dtype)
        x0 = torch.randn(A.shape[0], dtype=A.dtype, generator=torch.Generator().manual_seed(SEED0 + i))
        row = {"system": i, "n": A.shape[0]}
        for name in ("ic0", "mic0", "learned"):
            with torch.no_grad():
                t0 = time.perf_counter()
                M = model.preconditioner_for(batch) if name == "learned" else (IC0 if name == "ic0" else MIC0)(
                    A, shift="auto")
                t1 = time.perf_counter()
                _, info = cg(A, b, M, x0=x0, rtol=0.0, atol=atol, maxiter=maxiter)
                t2 = time.perf_counter()
            row[name] = {"iters": int(info.iterations), "converged": bool(info.converged), "setup_s": t1 - t0,
                         "solve_s": t2 - t1}
        records.append(row)
        print(f"system {i}: " + ", ".join(f"{k} {row[k]['iters']}" for k in ("ic0", "mic0", "learned")), flush=True)
    return records


def summary(records: list[dict]) -> list[dict]:
    methods = ("ic0", "mic0", "learned")
    its = {m: statistics.mean(r[m]["iters"] for r in records) for m in methods}
    tot = {m: statistics.mean(r[m]["setup_s"] + r[m]["solve_s"] for r in records) for m in methods}
    return [{"method": m, "iters": its[m], "iters_vs_ic0": its[m] / its["ic0"], "total_s": tot[m],
             "time_vs_ic0": tot[m] / tot["ic0"],
             "converged": f"{sum(r[m]['converged'] for r in records)}/{len(records)}"} for m in methods]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a training checkpoint of a learned factor preconditioner")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--num", type=int, default=4, help="held-out systems")
    p.add_argument("--sigma2", type=float, default=1.1)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--maxiter", type=int, default=5000)
    p.add_argument("--out", default="bench_results")
    args = p.parse_args(argv)
    records = run(args.ckpt, args.size, args.num, args.sigma2, args.atol, args.maxiter)
    rows = summary(records)
    lines = [(f"PreCorrector protocol: diffusion2d {args.size}^2, sigma^2 = {args.sigma2}, random x0, atol {args.atol:g}, "
             f"{args.num} systems (PreCorrector: 0.42x IC(0) iterations)"), "",
             "| method | iterations | vs IC(0) | setup + solve s | vs IC(0) | converged |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['iters']:.1f} | {r['iters_vs_ic0']:.2f} | {r['total_s']:.3f} | "
              f"{r['time_vs_ic0']:.2f} | {r['converged']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    write_json(out / "precorrector_protocol.json", {"args": vars(args), "summary": rows, "records": records})
    write_text(out / "precorrector_protocol.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
