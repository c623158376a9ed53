"""Section ``batched``: many variable-coefficient systems in ONE ``cg`` call vs a loop of scipy cg.

Protocol: 64 systems (16 with ``--quick``) of the generator ``diffusion2d`` (seeds ``seed + 3 + i``: i.i.d.
log-normal cell coefficients, :mod:`benchmarks.problems`; one shared sparsity pattern -- checked --,
values stacked to shape (64, nnz)) on a 64 x 64 grid (n = 4096 each; 32 x 32 with ``--quick``), right-hand sides from the
generator, solved in ONE ``learnsolve.linalg.cg`` call vs a Python loop over
``scipy.sparse.linalg.cg``, same rtol (1e-8). "64 systems of 64x64" is read both ways: 64 x 64 grids
(the SpMV dominates the scipy loop) and 64 x 64 matrices (8 x 8 grids, n = 64: Python overhead
dominates the loop); both are measured. Also timed: one batched SpMV vs a loop of scipy SpMVs (the
SpMV-only bound on the speed-up, in the notes). Checks that all systems converge in both, reports
iteration counts, true residuals and the relative difference of the solutions. Goals: >= 5x faster
for 64 systems, >= 10x for 256 systems of 64 x 64 (16 / 64 systems of 32 x 32 with ``--quick``). Also reported:
forward + implicit backward of the 64-system batch vs a scipy loop of forward and adjoint cg.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import SparseMatrix, cg

from .harness import Section, bench, ms, rel_diff, scipy_cg, timings_json
from .problems import Config, Problems, diffusion_systems

NAME = "batched"
TITLE = "5. Batched CG vs a loop of scipy cg"


def run(cfg: Config, P: Problems, sec: Section) -> None:
    for m in dict.fromkeys((cfg.batch_grid, 8)):
        _batched_one(cfg, sec, m, cfg.batch, 5.0, backward=m == cfg.batch_grid)
    _batched_one(cfg, sec, cfg.batch_grid, 4 * cfg.batch, 10.0)


def _batched_one(cfg: Config, sec: Section, m: int, Bn: int, target: float, backward: bool = False) -> None:
    rtol = cfg.batch_rtol
    mats, bs = diffusion_systems(m, Bn, cfg.seed + 3)
    ref = mats[0]
    n = ref.shape[0]
    S1 = SparseMatrix.from_scipy(ref)
    vals = torch.from_numpy(np.stack([M_.data for M_ in mats]))
    Sb = S1.with_values(vals)  # (B, nnz) values, one pattern
    bt = torch.from_numpy(bs.copy())

    x_sp = np.empty_like(bs)
    its_sp, flags = [], []
    for i in range(Bn):
        x_sp[i], fl, it = scipy_cg(mats[i], bs[i], rtol=rtol, maxiter=10 * n)
        its_sp.append(it)
        flags.append(fl)
    x_ls, info = cg(Sb, bt, rtol=rtol)
    x_ls = x_ls.numpy()
    rel = [rel_diff(x_ls[i], x_sp[i]) for i in range(Bn)]
    res_ls = [rel_diff(mats[i] @ x_ls[i], bs[i]) for i in range(Bn)]
    res_sp = [rel_diff(mats[i] @ x_sp[i], bs[i]) for i in range(Bn)]

    def run_ls():
        cg(Sb, bt, rtol=rtol)

    def run_sp():
        for i in range(Bn):
            spla.cg(mats[i], bs[i], rtol=rtol, maxiter=10 * n)

    Xb = bt.unsqueeze(-1).contiguous()
    t = bench(
        {
            "learnsolve": run_ls,
            "scipy_loop": run_sp,
            "learnsolve_batched_spmv": lambda: Sb.mv(Xb),
            "scipy_spmv_loop": lambda: [mats[i] @ bs[i] for i in range(Bn)],
        },
        cfg.repeats,
        cfg.min_sample,
        warmup=1,
    )
    tl, ts = t["learnsolve"].median, t["scipy_loop"].median
    it_ls = info.iterations.numpy().ravel()
    K, total = int(it_ls.max()), int(it_ls.sum())
    per_ls = tl / total  # per system and iteration: the compiled kernel stops each system on its own
    per_sp = ts / sum(its_sp)
    # the kernel's parallel loop gives each thread a contiguous share of the systems: how unequal their work is
    shares = [int(c.sum()) for c in np.array_split(it_ls, max(torch.get_num_threads(), 1))]
    imbalance = max(shares) / (sum(shares) / len(shares)) - 1.0
    mv_ls = t["learnsolve_batched_spmv"].median / Bn
    mv_sp = t["scipy_spmv_loop"].median / Bn
    sec.notes.append(
        f"batched: per system-iteration learnsolve {1e6 * per_ls:.1f} us (SpMV share {1e6 * mv_ls:.1f} us), "
        f"scipy {1e6 * per_sp:.1f} us (SpMV share {1e6 * mv_sp:.1f} us); learnsolve {total / Bn:.0f} iterations on "
        f"average (each system stops on its own), scipy {sum(its_sp) / Bn:.0f}; SpMV-only bound on the speed-up: "
        f"{per_sp / mv_ls * sum(its_sp) / total:.1f}x; the threads' shares of the iterations differ by "
        f"{100 * imbalance:.1f}% (static split over {len(shares)} threads)"
    )
    sec.row(
        f"{Bn} x ({m}x{m}) batched cg (speed-up)",
        ms(tl),
        ms(ts),
        baseline_name="loop of scipy cg",
        ratio=ts / tl,
        target=(">=", target),
        note=f"iters learnsolve {int(it_ls.min())}..{K} (sum {total}), scipy "
        f"{min(its_sp)}..{max(its_sp)} (sum {sum(its_sp)})",
    )
    agree_ok = (
        bool(info.converged.all())
        and all(f == 0 for f in flags)
        and max(rel) <= 1e-5
        and max(res_ls) <= 10 * rtol
    )
    sec.row(
        f"batched cg ({m}x{m}): max rel. diff of solutions",
        max(rel),
        unit="",
        goal="<= 1e-05 (& all converge)",
        met=agree_ok,
        note=f"true rel. residual max: learnsolve {max(res_ls):.1e}, scipy {max(res_sp):.1e}",
    )
    if backward:
        _forward_backward(sec, Sb, bt, mats, bs, rtol, cfg)
    sec.details[f"grid{m}_batch{Bn}"] = {
        "batch": Bn,
        "grid": m,
        "n": n,
        "nnz": int(ref.nnz),
        "rtol": rtol,
        "learnsolve_iterations": it_ls.tolist(),
        "scipy_iterations": its_sp,
        "learnsolve_converged": bool(info.converged.all()),
        "scipy_flags": flags,
        "solution_rel_diff": rel,
        "true_rel_residual_learnsolve": res_ls,
        "true_rel_residual_scipy": res_sp,
        "timings": timings_json(t),
    }


def _forward_backward(sec: Section, Sb: SparseMatrix, bt: torch.Tensor, mats, bs, rtol: float, cfg: Config) -> None:
    """Report: one batched solve() with implicit backward (values and b require grad, loss sum_i <c_i, x_i>) vs a
    scipy loop of a forward and an adjoint cg per system (A symmetric: the adjoint is a solve with A)."""
    from learnsolve.linalg import solve

    Bn = bt.shape[0]
    c = torch.from_numpy(np.random.default_rng(cfg.seed + 9).standard_normal(tuple(bt.shape)))
    cn = c.numpy()

    def ours():
        v = Sb.values.detach().clone().requires_grad_()
        b = bt.clone().requires_grad_()
        x = solve(Sb.with_values(v), b, method="cg", rtol=rtol)
        (c * x).sum().backward()

    def scipy_loop():
        for i in range(Bn):
            spla.cg(mats[i], bs[i], rtol=rtol, maxiter=10 * mats[i].shape[0])
            spla.cg(mats[i], cn[i], rtol=rtol, maxiter=10 * mats[i].shape[0])

    t = bench({"ours": ours, "scipy": scipy_loop}, cfg.repeats, cfg.min_sample, warmup=1)
    sec.row(
        f"{Bn} systems: batched solve + implicit backward (report)",
        ms(t["ours"].median),
        ms(t["scipy"].median),
        baseline_name="loop of scipy cg (forward + adjoint)",
        ratio=t["scipy"].median / t["ours"].median,
        note="speed-up; learnsolve also forms dL/dvalues (O(nnz) per system), scipy does not",
    )
