"""Generation throughput of the data generators: systems per second (table + JSON).

    python scripts/bench_data.py [--repeats 5] [--out bench_results/bench_data.json]

Times one call of the generator (assembly + reference sparse direct solve + PyG packaging) per
system, seeds 0..repeats-1, median reported; the direct solve's share is measured separately in
the same run (``scipy.sparse.linalg.spsolve`` with the same ordering on the generated matrix).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse.linalg as spla

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.files import write_json

CASES = [("diffusion2d", 64), ("diffusion2d", 256), ("fem_poisson", 4096), ("elasticity2d", 64),
         ("poisson3d", 16)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_results/bench_data.json")
    args = ap.parse_args(argv)
    rows = []
    for family, size in CASES:
        gen = GENERATORS[family]
        gen(size, seed=0)  # warm-up (imports, first-touch)
        times, solve_times = [], []
        for s in range(args.repeats):
            t0 = time.perf_counter()
            d = gen(size, seed=s)
            times.append(time.perf_counter() - t0)
            A = to_scipy(d).tocsc()
            t0 = time.perf_counter()
            spla.spsolve(A, d.b.numpy(), permc_spec="MMD_AT_PLUS_A")
            solve_times.append(time.perf_counter() - t0)
        t, ts = statistics.median(times), statistics.median(solve_times)
        rows.append({"family": family, "size": size, "n": int(d.num_nodes), "nnz": int(d.edge_index.shape[1]),
                     "seconds_per_system": t, "systems_per_second": 1.0 / t, "direct_solve_seconds": ts,
                     "times": times})
    print(f"{'family':<14}{'size':>6}{'n':>9}{'nnz':>10}{'ms/system':>12}{'systems/s':>11}{'solve share':>13}")
    for r in rows:
        print(f"{r['family']:<14}{r['size']:>6}{r['n']:>9}{r['nnz']:>10}{1e3 * r['seconds_per_system']:>12.1f}"
              f"{r['systems_per_second']:>11.1f}{r['direct_solve_seconds'] / r['seconds_per_system']:>12.0%}")
    out = write_json(args.out, {"rows": rows, "repeats": args.repeats, "numpy": np.__version__})
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
