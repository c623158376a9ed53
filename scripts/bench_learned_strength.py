"""The learned strength of connection of ``gnn_solver`` against the classical ones, on the hard families.

Run (from the repository root)::

    python scripts/bench_learned_strength.py                      # train 300 steps, evaluate at 256^2
    python scripts/bench_learned_strength.py --steps 100 --sizes 64 256 1024 --num-test 1

1. Trains ``GNNSolver(strength="learned", weights=False)`` -- the strength network alone, through the model's own
   ``training_loss`` (binary cross-entropy against pyamg's evolution measure on every level, evolution labels
   aggregating the training hierarchies) -- on batches of the four hard families (``conf/benchmark/hard.yaml``'s
   generator parameters) at 32^2 / 48^2 (graph Laplacians: 1,024 / 2,304 nodes), seeds 0..; Adam, ``--lr``.
2. On ``--num-test`` held-out systems per family and size (seeds 8_100_000 + i, random right-hand side), one torch
   thread, PCG to rtol 1e-6 from x0 = 0, with the same smoothed-aggregation hierarchy (compiled V-cycle) built from
   four strengths of connection: ``sa`` (classical, every connection strong), ``evolution`` (pyamg's measure),
   ``learned`` (the trained network) and ``untrained`` (the network at its initial parameters: every connection
   strong, the classical start, network cost included); and for reference MIC(0) and pyamg's SA / RS hierarchies in
   the same compiled cycle (the evaluation's ``mic0``, ``amg_sa``, ``amg_rs`` rows).

Setup (hierarchy, including the network), ``network`` (the strength network on the finest level alone) and solve ms
are the minimum of ``--repeats``. Output: a table on stdout, ``OUT/learned_strength.json`` (+ ``.md``; atomic writes).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.evaluation.baselines import build_baseline
from learnsolve.files import write_json, write_text
from learnsolve.linalg import SparseMatrix, cg
from learnsolve.linalg.preconditioners.multigrid import build_multigrid, evolution_strong
from learnsolve.models import GNNSolver

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import best_of

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("lognormal2d", "anisotropic2d", "channels2d", "graph_laplacian")
SEED0 = 8_100_000
RTOL = 1e-6


def _params() -> dict:
    return yaml.safe_load((ROOT / "conf" / "benchmark" / "hard.yaml").read_text())["params"]


def _system(family: str, side: int, seed: int, params: dict):
    n = side * side if family == "graph_laplacian" else side
    return GENERATORS[family](n, seed=seed, reference=False, **params[family])


def train(steps: int, lr: float, params: dict) -> tuple[GNNSolver, GNNSolver, list[float], float]:
    torch.manual_seed(0)
    model = GNNSolver(coarse_size=16, strength="learned", weights=False, size_factor=None)
    untrained = GNNSolver(coarse_size=16, strength="learned", weights=False, size_factor=None)
    untrained.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bce, t0 = [], time.perf_counter()
    for step in range(steps):
        family = FAMILIES[step % len(FAMILIES)]  # one family per step (their PyG attributes differ)
        side = 48 if (step // len(FAMILIES)) % 2 else 32
        batch = Batch.from_data_list([_system(family, side, 2 * step + i, params) for i in range(2)])
        loss, logs = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bce.append(logs["strength_bce"])
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  bce {np.mean(bce[-50:]):.3f}  {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    untrained.eval()
    return model, untrained, bce, time.perf_counter() - t0


def evaluate(model, untrained, families, sizes, num_test, repeats, params) -> list[dict]:
    warm = SparseMatrix.from_pyg(_system("lognormal2d", 16, 0, params)).detach()  # compile the cycle first
    with torch.no_grad():
        _one_system(model, untrained, warm, torch.ones(warm.shape[0], dtype=torch.float64), 1, ("warm-up", 16, 0))
    rows = []
    for family in families:
        for side in sizes:
            for i in range(num_test):
                data = _system(family, side, SEED0 + i, params)
                A = SparseMatrix.from_pyg(data).detach()
                b = torch.from_numpy(np.random.default_rng(SEED0 + i).standard_normal(A.shape[0]))
                with torch.no_grad():
                    rows += _one_system(model, untrained, A, b, repeats, (family, side, i))
                for r in rows[-7:]:
                    print(f"{r['family']:16s} {r['side']:5d} {r['method']:10s} it {r['iters']:5d} setup "
                          f"{r['setup_ms']:8.1f} (network {r['network_ms']:6.1f}) solve {r['solve_ms']:8.1f} total "
                          f"{r['total_ms']:8.1f}", flush=True)
    return rows


def _one_system(model, untrained, A, b, repeats, where) -> list[dict]:
    strengths = {"sa": None, "evolution": lambda M, lv: evolution_strong(M),
                 "learned": lambda M, lv: model.strength_net(M) > 0,
                 "untrained": lambda M, lv: untrained.strength_net(M) > 0}
    net_s, _ = best_of(lambda: model.strength_net(A), repeats)
    off = A.pattern.row != A.pattern.col
    agree = float(((model.strength_net(A) > 0) == evolution_strong(A))[off].float().mean())
    rows = []

    def solve(M):
        return cg(A, b, M, rtol=RTOL, maxiter=5000)

    for name, fn in strengths.items():
        setup, M = best_of(lambda fn=fn: build_multigrid(A, coarse_size=16, strength=fn), repeats)
        solve_s, (_, info) = best_of(lambda M=M: solve(M), repeats)
        rows.append(_row(*where, name, info, setup, solve_s, net_s if name in ("learned", "untrained") else 0.0,
                         M.sizes(), agree if name == "learned" else None))
    for name in ("mic0", "amg_sa", "amg_rs"):
        setup, M = best_of(lambda name=name: build_baseline(name, A), repeats)
        solve_s, (_, info) = best_of(lambda M=M: solve(M), repeats)
        rows.append(_row(*where, name, info, setup, solve_s, 0.0, None, None))
    return rows


def _row(family, side, i, name, info, setup, solve, net, sizes, agree) -> dict:
    return {"family": family, "side": side, "system": i, "method": name, "iters": int(info.iterations.max()),
            "converged": bool(info.converged.all()), "setup_ms": 1e3 * setup, "network_ms": 1e3 * net,
            "solve_ms": 1e3 * solve, "total_ms": 1e3 * (setup + solve), "levels": sizes, "agreement": agree}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--num-test", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    params = _params()
    model, untrained, bce, train_s = train(args.steps, args.lr, params)
    rows = evaluate(model, untrained, args.families, args.sizes, args.num_test, args.repeats, params)
    out = Path(args.out or ROOT / "outputs" / "bench_learned_strength" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv),
            "steps": args.steps, "lr": args.lr, "train_seconds": train_s, "final_bce": float(np.mean(bce[-50:])),
            "torch_threads": 1}
    write_json(out / "learned_strength.json", {"meta": meta, "rows": rows})
    lines = ["| family | side | method | iterations | setup ms | network ms | solve ms | total ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['side']} | {r['method']} | {r['iters']} | {r['setup_ms']:.1f} | "
              f"{r['network_ms']:.1f} | {r['solve_ms']:.1f} | {r['total_ms']:.1f} |" for r in rows]
    write_text(out / "learned_strength.md", "\n".join(lines) + "\n")
    print(f"trained {args.steps} steps in {train_s:.0f} s (final BCE {meta['final_bce']:.3f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
