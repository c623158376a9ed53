"""How much can per-entry prolongator smoothing weights buy, and which loss finds it? A ceiling study for gnn_solver.

Run (from the repository root)::

    python scripts/study_prolongator_weights.py                      # channels2d and lognormal2d 32^2, 30 steps
    python scripts/study_prolongator_weights.py --families graph_laplacian --losses pcg --lrs 0.01

No network: every stored entry of every level's smoother gets its own free parameter g, W = lo + (hi - lo) *
sigmoid(g + c) with c such that W = 1 at g = 0 (classical smoothed aggregation, P = (I - omega D^-1 (A o W)) T;
``--range`` lo hi, default -1 3). Adam (``--lrs``) minimises, on ONE system (seed 5; ``conf/benchmark/hard.yaml``'s
generator parameters), one of the losses of ``GNNSolver``:

- ``kappa``: log of the 30-step Lanczos estimate of kappa(M^-1 A);
- ``pcg``: mean log A-norm error reduction per step over 8 PCG steps from 4 random x* (b = A x*);
- ``error``: the same for 4 steps of the stationary iteration e <- (I - M^-1 A) e.

PCG iterations to rtol 1e-6 (random b, x0 = 0) are printed at the start and every 10 steps: a network that sets the
same weights cannot beat the best of these on this system. Writes ``OUT/prolongator_weights.json`` (atomic).
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from learnsolve.data import GENERATORS
from learnsolve.files import write_json
from learnsolve.linalg import SparseMatrix, cg, condition_estimate
from learnsolve.linalg.preconditioners.multigrid import build_multigrid

ROOT = Path(__file__).resolve().parents[1]


def _loss(kind: str, A: SparseMatrix, M, gen: torch.Generator):
    if kind == "kappa":
        return torch.log(condition_estimate(A, M=M, steps=30)).mean()
    X = torch.randn(1, A.shape[0], 4, generator=gen, dtype=torch.float64)
    if kind == "error":
        e0 = (X * A.mv(X)).sum(1)
        for _ in range(4):
            X = X - M.apply(A.mv(X))
        return 0.5 * torch.log((X * A.mv(X)).sum(1) / e0).mean() / 4
    r = A.mv(X)
    e0 = (X * r).sum(1)
    x = torch.zeros_like(X)
    z = M.apply(r)
    p, rz = z, (r * z).sum(1, keepdim=True)
    for _ in range(8):
        q = A.mv(p)
        alpha = rz / (p * q).sum(1, keepdim=True)
        x, r = x + alpha * p, r - alpha * q
        z = M.apply(r)
        rz_new = (r * z).sum(1, keepdim=True)
        p, rz = z + (rz_new / rz) * p, rz_new
    e = X - x
    return 0.5 * torch.log((e * A.mv(e)).sum(1) / e0).mean() / 8


def run(family: str, side: int, loss: str, lr: float, steps: int, lo: float, hi: float, params: dict) -> dict:
    n = side * side if family == "graph_laplacian" else side
    A = SparseMatrix.from_pyg(GENERATORS[family](n, seed=5, reference=False, **params[family])).detach()
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(A.shape[0])).view(1, -1, 1)
    free: dict[int, torch.Tensor] = {}
    shift = math.log((1 - lo) / (hi - 1))

    def weights(Al, agg, level):
        if level not in free:
            free[level] = torch.zeros(Al.nnz, dtype=torch.float64, requires_grad=True)
        return lo + (hi - lo) * torch.sigmoid(free[level] + shift)

    def iterations() -> int:
        with torch.no_grad():
            return int(cg(A, b, M=build_multigrid(A, weights, coarse_size=16), rtol=1e-6, maxiter=3000)[1]
                       .iterations.max())

    its = [iterations()]
    opt = torch.optim.Adam(list(free.values()), lr=lr)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        value = _loss(loss, A, build_multigrid(A, weights, coarse_size=16), gen)
        opt.zero_grad()
        value.backward()
        opt.step()
        if step % 10 == 0 or step == steps:
            its.append(iterations())
    row = {"family": family, "side": side, "loss": loss, "lr": lr, "steps": steps, "iterations": its,
           "start": its[0], "best": min(its), "end": its[-1], "seconds": time.perf_counter() - t0}
    print(f"{family:16s} {loss:6s} lr {lr:<6g} iterations every 10 steps {its} ({row['seconds']:.0f} s)", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="+", default=["channels2d", "lognormal2d"])
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--losses", nargs="+", default=["kappa", "pcg", "error"], choices=["kappa", "pcg", "error"])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.01])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--range", type=float, nargs=2, default=[-1.0, 3.0], metavar=("LO", "HI"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lo, hi = args.range
    if not lo < 1.0 < hi:
        ap.error("--range must contain 1 (the classical weight)")
    torch.set_num_threads(1)
    params = yaml.safe_load((ROOT / "conf" / "benchmark" / "hard.yaml").read_text())["params"]
    rows = [run(f, args.side, loss, lr, args.steps, lo, hi, params)
            for f in args.families for loss in args.losses for lr in args.lrs]
    out = Path(args.out or ROOT / "outputs" / "study_prolongator_weights" /
               datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    write_json(out / "prolongator_weights.json", {"date": datetime.date.today().isoformat(),
                                                   "command": " ".join(sys.argv), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
