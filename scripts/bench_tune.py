"""Per-matrix tuning of a learned factor preconditioner against IC(0), MIC(0) and AMG-SA.

``python scripts/bench_tune.py --ckpt CKPT [--budget 60] [--matrices NAME ...] [--families F ...] [--size 256]``

For every matrix: :func:`learnsolve.training.tune.tune_matrix` with ``--budget`` seconds (PCG rtol 1e-6 from
x0 = 0, b seeded Gaussian, or A r where A 1 = 0), the table row of the tuned factor, the model before tuning, IC(0),
MIC(0) and AMG-SA (iterations, ms per solve with the preconditioner built, setup ms), the tuning time and the
break-even number of solves against the classical row with the least ms per solve. The matrices: the SPD examples
pyamg ships and the SPD matrices of ``--matrix-dir`` (default ``../shared/benchmarks/matrices``), plus one held-out
system (seed 9,100,000) of each ``--families`` at ``--size`` (graph_laplacian: size^2 nodes). One torch / BLAS
thread (``--threads``). Summary: on how many matrices the tuned iterations are below IC(0)'s, the worst tuned / IC(0)
ratio. Writes ``bench_tune.json`` and ``bench_tune.md`` to ``--out`` (default outputs/bench_tune), the JSON after every
matrix (``.partial.json``) so a long run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.data.mtx import list_matrices, matrix_stem, read_matrix_market
from learnsolve.data.suites import PYAMG_EXAMPLES
from learnsolve.files import write_json, write_text
from learnsolve.models.checkpoint import load_checkpoint
from learnsolve.training.tune import ROWS, TITLES, tune_matrix

ROOT = Path(__file__).resolve().parents[1]
SEED = 9_100_000
PARAMS = {"lognormal2d": {"sigma2": 4.0, "corr_len": 0.0},
          "anisotropic2d": {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"},
          "channels2d": {"contrast": 1e6}, "graph_laplacian": {"sigma2": 1.0}, "diffusion2d": {"sigma2": 1.0,
                                                                                               "corr_len": 0.1}}


def matrices(names, matrix_dir, families, size):
    """(name, scipy CSR) of every matrix of the run, in order."""
    from pyamg.gallery import load_example

    for name in names if names is not None else [k for k, spd in PYAMG_EXAMPLES.items() if spd]:
        yield name, sp.csr_matrix(load_example(name)["A"], dtype=np.float64)
    if matrix_dir:
        for path in list_matrices(matrix_dir):
            A = read_matrix_market(path)
            if abs(A - A.T).max() <= 1e-10 * abs(A).max():  # the SPD ones (sherman5 is nonsymmetric)
                yield matrix_stem(path), A
    for family in families:
        n = size * size if family == "graph_laplacian" else size
        data = GENERATORS[family](n, seed=SEED, reference=False, **PARAMS.get(family, {}))
        yield f"{family}_{size}", to_scipy(data)


def cell(iters, ms, converged) -> str:
    """"iterations (ms per solve)"; "-" where not measured, "iterations (not converged)" where PCG did not converge."""
    if iters is None:
        return "-"
    return f"{iters} (not converged)" if not converged else f"{iters} ({ms:.1f})"


def markdown(result: dict) -> str:
    """The run's table in Markdown, with its command, date, threads and budget, and the summary."""
    md = [f"`{result['command']}` ({result['date']}, {result['threads']} thread(s), budget {result['budget_s']:g} s)",
          "", "| matrix | n | " + " | ".join(f"{TITLES[k]} it (ms)" for k in ROWS)
          + " | tuning s | break-even | status |", "|---|---|" + "---|" * len(ROWS) + "---|---|---|"]
    for m in result["matrices"]:
        md.append(f"| {m['matrix']} | {m['n']} | " + " | ".join(
            cell(m["iters"][k], m["ms_per_solve"][k], m["converged"][k]) for k in ROWS)
            + f" | {m['tuning_s']:.1f} | {'-' if m['break_even_solves'] is None else m['break_even_solves']}"
            f" | {m['status']} |")
    s = result.get("summary")
    if s:
        md += ["", (f"Tuned iterations below IC(0)'s on {s['tuned_below_ic0']} of {s['matrices']} matrices; tuned on "
                   f"{s['tuned_status']}; worst tuned / IC(0) iterations {s['worst_tuned_over_ic0']:.2f}.")]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="a neural_if training checkpoint")
    ap.add_argument("--budget", type=float, default=60.0, help="tuning seconds per matrix (default 60)")
    ap.add_argument("--pyamg", nargs="*", default=None, help="pyamg examples (default: the SPD ones)")
    ap.add_argument("--matrix-dir", default=str(ROOT.parent / "shared" / "benchmarks" / "matrices"))
    ap.add_argument("--families", nargs="*", default=["lognormal2d", "channels2d", "anisotropic2d", "graph_laplacian"])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench_tune"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt)
    out = Path(args.out)
    result = {"command": " ".join(["python scripts/bench_tune.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "checkpoint": args.ckpt, "budget_s": args.budget,
              "threads": args.threads, "rtol": 1e-6, "matrices": []}
    header = (f"{'matrix':34s} {'n':>7s} " + " ".join(f"{TITLES[k][:13]:>13s}" for k in ROWS)
              + f" {'tuning s':>8s} {'break-even':>10s}  status")
    print("iterations (ms per solve)")
    print(header, flush=True)
    with threadpool_limits(args.threads):
        for name, A in matrices(args.pyamg, args.matrix_dir, args.families, args.size):
            r = tune_matrix(ckpt.model, A, name=name, model_name=ckpt.name, budget_s=args.budget)
            rec = r.to_json()
            rec.pop("history")
            result["matrices"].append(rec)
            cells = " ".join(f"{cell(r.rows[k].iters, r.rows[k].solve_ms, r.rows[k].converged):>13s}" for k in ROWS)
            be = "-" if r.break_even_solves is None else str(r.break_even_solves)
            print(f"{name:34s} {r.n:7d} {cells} {r.tuning_s:8.1f} {be:>10s}  {r.status[:60]}", flush=True)
            write_json(out / "bench_tune.partial.json", result)
    rows = result["matrices"]
    below = [m["matrix"] for m in rows if m["iters"]["tuned"] < m["iters"]["ic0"]]
    ratios = [m["iters"]["tuned"] / m["iters"]["ic0"] for m in rows if m["iters"]["ic0"]]
    result["summary"] = {"matrices": len(rows), "tuned_below_ic0": len(below), "below": below,
                         "tuned_status": sum(m["status"] == "tuned" for m in rows),
                         "worst_tuned_over_ic0": max(ratios) if ratios else None}
    s = result["summary"]
    print(f"\ntuned iterations below IC(0)'s on {s['tuned_below_ic0']} of {s['matrices']} matrices "
          f"({', '.join(below)}); tuned on {s['tuned_status']}; worst tuned / IC(0) {s['worst_tuned_over_ic0']:.2f}")
    write_text(out / "bench_tune.md", markdown(result))
    write_json(out / "bench_tune.json", result)
    (out / "bench_tune.partial.json").unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    main()
