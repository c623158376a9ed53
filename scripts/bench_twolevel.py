"""The time budget a once-per-system learned coarse space must meet (issue 14), measured with classical parts.

Run (from the repository root)::

    python scripts/bench_twolevel.py                       # diffusion2d 64 and 256, one system each
    python scripts/bench_twolevel.py --sizes 64 256 512 --out bench_results

For each held-out diffusion2d system (sigma^2 = 1) and one torch thread, PCG to rtol 1e-6 from x0 = 0 with:

- ``ic0``: learnsolve's IC(0) (compiled triangular solves), the bar of issue 14;
- ``mic0``: learnsolve's MIC(0);
- ``amg_sa``: pyamg's smoothed-aggregation hierarchy (default options) as the preconditioner of scipy's CG;
- ``twolevel``: a classical two-level method built from the parts a learned coarse space would replace: pyamg's
  standard aggregation of A, the tentative prolongator smoothed once by damped Jacobi (omega = 4 / (3 rho(D^-1 A))),
  the Galerkin coarse matrix P^T A P factorised by SuperLU, and symmetric Gauss-Seidel pre/post smoothing (an SPD
  V(1,1) cycle), in scipy.

Setup and solve seconds are timed separately (minimum of ``--repeats``); ratios are to IC(0)'s total in the same
run. What this shows: the setup of a coarse space (aggregation, Galerkin product, coarse factorisation) is already
a large part of IC(0)'s whole solve on this CPU, before any network runs. Output: a table on stdout,
``OUT/bench_twolevel.json`` and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyamg
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from learnsolve.data import GENERATORS
from learnsolve.data.system import to_scipy
from learnsolve.files import write_json, write_text
from learnsolve.linalg import IC0, MIC0, SparseMatrix, cg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import best_of

SEED0 = 8_700_000  # far from the datamodule's split offsets and the other benchmarks' seeds
RTOL = 1e-6


def twolevel_setup(A: sp.csr_matrix):
    """The classical two-level V(1,1) preconditioner (see the module doc) as a scipy LinearOperator, and its
    coarse size."""
    C = pyamg.strength.symmetric_strength_of_connection(A, 0.0)
    T = pyamg.aggregation.standard_aggregation(C)[0].tocsr().astype(np.float64)
    Dinv = sp.diags(1.0 / A.diagonal())
    rho = pyamg.util.linalg.approximate_spectral_radius(Dinv @ A)
    P = (T - (4.0 / (3.0 * rho)) * (Dinv @ (A @ T))).tocsr()
    lu = spl.splu((P.T @ A @ P).tocsc())
    L, U = sp.tril(A, format="csr"), sp.triu(A, format="csr")

    def apply(r):
        z = spl.spsolve_triangular(L, r, lower=True)
        z = z + P @ lu.solve(P.T @ (r - A @ z))
        return z + spl.spsolve_triangular(U, r - A @ z, lower=False)

    return spl.LinearOperator(A.shape, apply, dtype=np.float64), P.shape[1]


def _scipy_cg(A, b, M):
    count = [0]

    def cb(_):
        count[0] += 1

    _, info = spl.cg(A, b, rtol=RTOL, maxiter=5000, M=M, callback=cb)
    return count[0], info == 0


def measure(size: int, seed: int, repeats: int) -> list[dict]:
    data = GENERATORS["diffusion2d"](size, seed=seed)
    A_sp = to_scipy(data).tocsr()
    A = SparseMatrix.from_pyg(data).detach()
    b_t = data.b.view(-1).to(A.dtype)
    b = b_t.numpy().astype(np.float64)
    rows = []
    with torch.no_grad():
        for name, cls in (("ic0", IC0), ("mic0", MIC0)):
            ts, M = best_of(lambda cls=cls: cls(A, shift="auto"), repeats)
            tv, (_, info) = best_of(lambda M=M: cg(A, b_t, M=M, rtol=RTOL, maxiter=5000), repeats)
            rows.append({"method": name, "iters": int(info.iterations), "converged": bool(info.converged),
                         "setup_s": ts, "solve_s": tv})
    ts, ml = best_of(lambda: pyamg.smoothed_aggregation_solver(A_sp), repeats)
    tv, (it, ok) = best_of(lambda: _scipy_cg(A_sp, b, ml.aspreconditioner()), repeats)
    rows.append({"method": "amg_sa", "iters": it, "converged": ok, "setup_s": ts, "solve_s": tv,
                 "levels": len(ml.levels)})
    ts, (M2, nc) = best_of(lambda: twolevel_setup(A_sp), repeats)
    tv, (it, ok) = best_of(lambda: _scipy_cg(A_sp, b, M2), repeats)
    rows.append({"method": "twolevel", "iters": it, "converged": ok, "setup_s": ts, "solve_s": tv,
                 "coarse_n": nc})
    base = rows[0]["setup_s"] + rows[0]["solve_s"]
    for r in rows:
        r.update(size=size, n=A.shape[0], total_s=r["setup_s"] + r["solve_s"],
                 total_vs_ic0=(r["setup_s"] + r["solve_s"]) / base)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| grid | method | iterations | setup ms | solve ms | total ms | total / IC(0) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = (f"{r['levels']} levels" if "levels" in r else f"coarse n = {r['coarse_n']}" if "coarse_n" in r
                else "")
        if not r["converged"]:
            note = (note + "; " if note else "") + "not converged"
        lines.append(f"| {r['size']}x{r['size']} | {r['method']} | {r['iters']} | {r['setup_s'] * 1e3:.1f} | "
                     f"{r['solve_s'] * 1e3:.1f} | {r['total_s'] * 1e3:.1f} | {r['total_vs_ic0']:.2f} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 256], help="diffusion2d grid sides")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the minimum is kept)")
    ap.add_argument("--out", default="bench_results", help="output folder")
    args = ap.parse_args(argv)
    if args.repeats < 1 or not args.sizes or min(args.sizes) < 4:
        ap.error("--repeats must be >= 1 and every size >= 4")
    torch.set_num_threads(1)
    rows = []
    for i, size in enumerate(args.sizes):
        rows.extend(measure(size, SEED0 + i, args.repeats))
        print(f"{size}x{size} done", flush=True)
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_twolevel.json", {"threads": 1, "repeats": args.repeats, "rtol": RTOL, "rows": rows})
    write_text(out / "bench_twolevel.md", f"# Two-level budget (diffusion2d, rtol {RTOL:g})\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
