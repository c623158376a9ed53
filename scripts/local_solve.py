"""``local_solve``: three entries of x for the 2-D grid Laplacian + 2I at n = 1e4 and n = 1e6; error and time.

Run::

    python scripts/local_solve.py [--sides 100 1000] [--tol 1e-3] [--repeats 7] [--out bench_results/local_solve.json]

For each grid side m (n = m^2): A = 5-point Laplacian + 2 I (strictly diagonally dominant, rho = 2/3), b random,
three requested entries (the centre, one near an edge, one near a corner). Reference: ``solve(method="cg",
precond="ic0", rtol=1e-12)`` on the whole system. Timed: ``local_solve(A, b, index, tol)`` only (A is built
before), median of ``--repeats`` after one warm-up. Goal: relative error <= 1e-2 at both sizes and the
time at n = 1e6 <= 2x the time at n = 1e4 (same run). Writes a table and JSON (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from learnsolve.files import write_json
from learnsolve.linalg import SparseMatrix, local_solve, solve


def _matrix(m: int) -> SparseMatrix:
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    return SparseMatrix.from_scipy(sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m)) + 2 * sp.eye(m * m))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench_results/local_solve.json"))
    args = ap.parse_args(argv)
    if min(args.sides) < 8 or args.repeats < 1 or not args.tol > 0:
        ap.error("need sides >= 8, repeats >= 1, tol > 0")
    rows = []
    for m in args.sides:
        A = _matrix(m)
        n = m * m
        b = torch.from_numpy(np.random.default_rng(m).standard_normal(n))
        idx = [n // 2 + m // 2, 3 * m + m // 3, n - 2 * m - 2]
        local_solve(A, b, idx, tol=args.tol)  # warm-up
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            est, info = local_solve(A, b, idx, tol=args.tol, return_info=True)
            ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = solve(A, b, method="cg", precond="ic0", rtol=1e-12)[idx]
        t_full = time.perf_counter() - t0
        err = float(((est - ref).abs() / ref.abs()).max())
        rows.append({"side": m, "n": n, "index": idx, "seconds": statistics.median(ts), "all_seconds": ts,
                     "rel_error": err, "neighbourhood": info.size, "radius": info.radius, "change": info.change,
                     "full_solve_seconds": t_full})
    print(f"{'n':>9} {'local_solve':>12} {'rel. error':>10} {'|S|':>7} {'radius':>6} {'full IC(0)-CG solve':>20}")
    for r in rows:
        print(f"{r['n']:>9} {1e3 * r['seconds']:>10.2f}ms {r['rel_error']:>10.1e} {r['neighbourhood']:>7} "
              f"{r['radius']:>6} {r['full_solve_seconds']:>19.3f}s")
    ratio = rows[-1]["seconds"] / rows[0]["seconds"]
    ok = ratio <= 2.0 and all(r["rel_error"] <= 1e-2 for r in rows)
    print(f"time ratio n = {rows[-1]['n']} / n = {rows[0]['n']}: {ratio:.2f} (goal <= 2); errors <= 1e-2: "
          f"{all(r['rel_error'] <= 1e-2 for r in rows)} -> goal {'met' if ok else 'MISSED'}")
    write_json(args.out, {"tol": args.tol, "rows": rows, "time_ratio": ratio, "goal_met": ok})
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
