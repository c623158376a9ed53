"""The single-right-hand-side stochastic adjoint (``backward="stochastic"``): per-draw error against cost, and an
optimiser converging with it.

Run::

    python scripts/stochastic_adjoint.py [--m 48] [--draws 100] [--steps 60] [--out bench_results/stochastic_adjoint.json]

Problem: one ``diffusion2d`` system (m x m grid), Jacobi-PCG to rtol 1e-10, loss <c, x> with c random, gradients
w.r.t. A's values and b. For each (truncate, survive) setting, ``--draws`` independent draws give: the mean adjoint
iterations and mean backward time as ratios to the implicit backward's (its mean over 30 runs in the same run, after
a warm-up), the per-draw relative
error of the gradient (root mean square over draws), and the error of the mean of all draws in units of its
standard error (unbiased: a few units at most). Goal: at the defaults, mean cost <= 0.5x the implicit
backward and the mean within 4 standard errors.

Optimiser: A(theta) = A_0 + diag(exp(theta)) with theta constant on 4 x 4 blocks of the grid (16 parameters), fitted
with Adam to the solution x* of a hidden theta*; loss ||x(theta) - x*||^2 / ||x*||^2 with implicit and stochastic
gradients from the same start. Writes a table, JSON (atomically) and ``<out>.png`` (error against cost, loss curves).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.files import atomic_path, write_json
from learnsolve.linalg import SparseMatrix, solve

SETTINGS = [(0.2, 0.1), (0.4, 0.1), (0.4, 0.25), (0.6, 0.1), (0.6, 0.25), (0.8, 0.25)]
RTOL = 1e-10


def _grad(A, b, c, backward, adjoint=None):
    v = A.values.clone().requires_grad_()
    bb = b.clone().requires_grad_()
    x, info = solve(A.with_values(v), bb, precond="jacobi", rtol=RTOL, backward=backward, adjoint=adjoint,
                    return_info=True)
    t0 = time.perf_counter()
    torch.dot(c, x).backward()
    return torch.cat([v.grad, bb.grad]), int(info.adjoint.iterations), time.perf_counter() - t0


def _study(A, b, c, draws: int, seed: int) -> tuple[dict, list[dict]]:
    for _ in range(2):
        _grad(A, b, c, "implicit")  # warm-up (compiled kernels, transposed pattern)
    runs = [_grad(A, b, c, "implicit") for _ in range(30)]
    exact, it_imp = runs[0][0], runs[0][1]
    t_imp = statistics.mean(r[2] for r in runs)  # means on both sides: the stochastic cost is an expectation
    base = {"adjoint_iterations": it_imp, "backward_s": t_imp}
    rows = []
    gen = torch.Generator().manual_seed(seed)
    _grad(A, b, c, "stochastic", {"survive": 1.0})  # warm-up of the truncated and the warm-started runs
    for truncate, survive in SETTINGS:
        out = [_grad(A, b, c, "stochastic", {"truncate": truncate, "survive": survive, "generator": gen})
               for _ in range(draws)]
        D = torch.stack([o[0] for o in out])
        err = ((D - exact).norm(dim=1) / exact.norm()).numpy()
        se = float(D.var(0).sum().sqrt()) / draws**0.5
        rows.append({
            "truncate": truncate, "survive": survive,
            "cost_iterations": float(np.mean([o[1] for o in out])) / it_imp,
            "cost_time": statistics.mean(o[2] for o in out) / t_imp,
            "rms_rel_error_per_draw": float(np.sqrt(np.mean(err**2))),
            "mean_error_in_se": float((D.mean(0) - exact).norm()) / se if se > 0 else 0.0,
            "continued": int(sum(o[1] > min(p[1] for p in out) for o in out)),
        })
    return base, rows


def _fit(m: int, steps: int, seed: int) -> dict:
    d = GENERATORS["diffusion2d"](m, seed=seed)
    A0 = SparseMatrix.from_scipy(to_scipy(d))
    diag_pos = torch.nonzero(A0.pattern.row.long() == A0.pattern.col.long()).flatten()  # row order: one per row
    blk = (torch.arange(m)[:, None] * 4 // m * 4 + torch.arange(m)[None, :] * 4 // m).reshape(-1)  # 16 blocks
    scale = 0.02 * float(A0.diagonal().mean())  # a weak reaction term: the solves stay hard (~100+ iterations)
    b = d.b.double()

    def x_of(theta, backward, gen=None):
        vals = A0.values.index_add(0, diag_pos, scale * torch.exp(theta)[blk])
        adj = {"generator": gen} if backward == "stochastic" else None
        return solve(A0.with_values(vals), b, precond="jacobi", rtol=RTOL, backward=backward, adjoint=adj,
                     return_info=True)

    rng = torch.Generator().manual_seed(seed + 1)
    true = torch.randn(16, dtype=torch.float64, generator=rng) * 0.5
    with torch.no_grad():
        target = x_of(true, "implicit")[0]
    curves = {}
    for backward in ("implicit", "stochastic"):
        theta = torch.zeros(16, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=0.05)
        gen = torch.Generator().manual_seed(seed + 2)
        hist, cost = [], []
        for _ in range(steps):
            x, info = x_of(theta, backward, gen)
            loss = (x - target).square().sum() / target.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            hist.append(float(loss.detach()))
            cost.append(int(info.adjoint.iterations))
        curves[backward] = {"loss": hist, "theta_error": float((theta.detach() - true).norm() / true.norm()),
                            "mean_adjoint_iterations": float(np.mean(cost))}
    return curves


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=48, help="grid side (default 48)")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps (0: skip the fit)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench_results/stochastic_adjoint.json"))
    args = ap.parse_args(argv)
    if args.m < 4 or args.draws < 2 or args.steps < 0:
        ap.error("need --m >= 4, --draws >= 2, --steps >= 0")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    d = GENERATORS["diffusion2d"](args.m, seed=3)
    A, b = SparseMatrix.from_scipy(to_scipy(d)), d.b.double()
    c = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    base, rows = _study(A, b, c, args.draws, args.seed)
    print(f"diffusion2d {args.m}x{args.m}, Jacobi-PCG rtol {RTOL:g}: implicit adjoint {base['adjoint_iterations']} "
          f"iterations, backward {1e3 * base['backward_s']:.2f} ms; {args.draws} draws per setting")
    print(f"{'truncate':>8} {'survive':>8} {'cost (iters)':>12} {'cost (time)':>11} {'rms err/draw':>12} "
          f"{'mean err / SE':>13} {'continued':>9}")
    for r in rows:
        print(f"{r['truncate']:>8.2f} {r['survive']:>8.2f} {r['cost_iterations']:>12.3f} {r['cost_time']:>11.3f} "
              f"{r['rms_rel_error_per_draw']:>12.2e} {r['mean_error_in_se']:>13.2f} {r['continued']:>9d}")
    result = {"m": args.m, "rtol": RTOL, "draws": args.draws, "implicit": base, "settings": rows}
    if args.steps:
        fit = _fit(args.m, args.steps, args.seed)
        result["fit"] = fit
        for k, v in fit.items():
            print(f"fit with {k} gradients: loss {v['loss'][0]:.3e} -> {v['loss'][-1]:.3e} after {args.steps} Adam "
                  f"steps; relative theta error {v['theta_error']:.3f}; {v['mean_adjoint_iterations']:.1f} adjoint "
                  "iterations per step")
    write_json(args.out, result)
    _plot(result, args.out.with_suffix(".png"))
    print(f"JSON: {args.out}; plot: {args.out.with_suffix('.png')}")
    return 0


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if "fit" in result else 1, figsize=(10, 4), squeeze=False)
    ax = axes[0][0]
    for r in result["settings"]:
        ax.scatter(r["cost_iterations"], r["rms_rel_error_per_draw"])
        ax.annotate(f"{r['truncate']}/{r['survive']}", (r["cost_iterations"], r["rms_rel_error_per_draw"]))
    ax.set(xlabel="mean adjoint cost / implicit", ylabel="rms relative error per draw", yscale="log",
           title="stochastic adjoint: error vs cost (truncate/survive)")
    if "fit" in result:
        ax = axes[0][1]
        for k, v in result["fit"].items():
            ax.semilogy(v["loss"], label=k)
        ax.set(xlabel="Adam step", ylabel="relative misfit", title="fitting A(theta) through the solve")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
