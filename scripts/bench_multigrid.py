"""gnn_solver's learned multigrid against IC(0), MIC(0), pyamg AMG and its own untrained (classical) start: its goals
in total time (setup incl. the network and the safeguard + solve) on held-out systems.

Run (from the repository root)::

    python scripts/bench_multigrid.py --ckpt outputs/train/runs/<time>/checkpoints/epochNNN.ckpt
    python scripts/bench_multigrid.py --ckpt CKPT --sizes 64 256 1024 --families diffusion2d anisotropic2d
    python scripts/bench_multigrid.py            # no checkpoint: the classical hierarchy only

For each family, size and ``--num-test`` held-out system (seeds far from every training split) and one torch thread,
PCG to rtol 1e-6 from x0 = 0 with:

- ``ic0`` / ``mic0``: learnsolve's IC(0) / MIC(0) (compiled triangular solves), ``shift="auto"``;
- ``amg_sa``: pyamg's smoothed-aggregation hierarchy (default options) as the preconditioner of the same CG;
- ``multigrid``: :func:`learnsolve.linalg.preconditioners.multigrid.build_multigrid` with the checkpoint's settings and no network:
  the untrained model (classical smoothed aggregation, symmetric Gauss-Seidel V(1,1), compiled cycle);
- ``learned``: the checkpoint's hierarchy behind its safeguard (:meth:`safe_preconditioner_for`: the network on
  every level and the race against IC(0) are in its setup time); ``learned_raw``: the same without the safeguard.

Setup and solve seconds are timed separately (minimum of ``--repeats``); ratios are to IC(0)'s total in the same run.
Goals (diffusion2d): learned total <= 0.7x IC(0) at 64^2 and <= 0.5x at 256^2; learned iterations at
256^2 <= 1.5x those at 64^2; learned total <= 1.5x AMG-SA's at 256^2 and <= 1.0x at 1024^2; anisotropic2d: learned
faster than AMG-SA. Output: a table on stdout, ``OUT/bench_multigrid.json`` and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import pyamg
import scipy.sparse.linalg as spl
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.data.system import to_scipy
from learnsolve.files import write_json, write_text
from learnsolve.linalg import IC0, MIC0, cg
from learnsolve.linalg.preconditioners.multigrid import build_multigrid
from learnsolve.models.base import system_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import best_of

SEED0 = 8_800_000  # far from the datamodule's split offsets and the other benchmarks' seeds
RTOL = 1e-6


def _scipy_cg(A, b, M):
    count = [0]

    def cb(_):
        count[0] += 1

    _, info = spl.cg(A, b, rtol=RTOL, maxiter=5000, M=M, callback=cb)
    return count[0], info == 0


def measure(family: str, size: int, seed: int, model, repeats: int) -> list[dict]:
    """The rows of one held-out system (see the module doc)."""
    data = GENERATORS[family](size, seed=seed)
    batch = Batch.from_data_list([data])
    A = system_matrix(batch)
    b_t = data.b.view(-1).to(A.dtype)
    rows = []

    def pcg_row(name, setup, **extra):
        ts, M = best_of(setup, repeats)
        M = M[0] if isinstance(M, tuple) else M
        tv, (_, info) = best_of(lambda: cg(A, b_t, M=M, rtol=RTOL, maxiter=5000), repeats)
        rows.append({"method": name, "iters": int(info.iterations), "converged": bool(info.converged),
                     "setup_s": ts, "solve_s": tv, **extra})

    with torch.no_grad():
        pcg_row("ic0", lambda: IC0(A, shift="auto"))
        pcg_row("mic0", lambda: MIC0(A, shift="auto"))
        A_sp = to_scipy(data).tocsr()
        b = b_t.numpy().astype(np.float64)
        ts, ml = best_of(lambda: pyamg.smoothed_aggregation_solver(A_sp), repeats)
        tv, (it, ok) = best_of(lambda: _scipy_cg(A_sp, b, ml.aspreconditioner()), repeats)
        rows.append({"method": "amg_sa", "iters": it, "converged": ok, "setup_s": ts, "solve_s": tv})
        theta, coarse = (model.theta, model.coarse_size) if model is not None else (0.0, 16)
        pcg_row("multigrid", lambda: build_multigrid(A, theta=theta, coarse_size=coarse))
        if model is not None:
            checks = []

            def safe():
                M, check = model.safe_preconditioner_for(batch)
                checks.append(check)
                return M

            pcg_row("learned", safe)
            rows[-1]["fallback"] = bool(checks[-1] is not None and not checks[-1].all_accepted)
            pcg_row("learned_raw", lambda: model.preconditioner_for(batch))
    base = rows[0]["setup_s"] + rows[0]["solve_s"]
    amg = next(r for r in rows if r["method"] == "amg_sa")
    for r in rows:
        total = r["setup_s"] + r["solve_s"]
        r.update(family=family, size=size, seed=seed, n=A.shape[0], total_s=total, total_vs_ic0=total / base,
                 total_vs_amg=total / (amg["setup_s"] + amg["solve_s"]))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Means over the systems of each (family, size, method)."""
    keys = sorted({(r["family"], r["size"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1]))
    order = {m: i for i, m in enumerate(("ic0", "mic0", "amg_sa", "multigrid", "learned", "learned_raw"))}
    keys.sort(key=lambda k: (k[0], k[1], order.get(k[2], 99)))
    out = []
    for fam, size, method in keys:
        sel = [r for r in rows if (r["family"], r["size"], r["method"]) == (fam, size, method)]
        mean = {k: statistics.fmean(r[k] for r in sel) for k in ("iters", "setup_s", "solve_s", "total_s",
                                                                 "total_vs_ic0", "total_vs_amg")}
        out.append({"family": fam, "size": size, "method": method, "systems": len(sel),
                    "converged": all(r["converged"] for r in sel),
                    "fallbacks": sum(r.get("fallback", False) for r in sel), **mean})
    return out


def goals(summary: list[dict]) -> list[dict]:
    """The multigrid goals that this run measured (learned rows), met or not."""
    get = {(r["family"], r["size"], r["method"]): r for r in summary}
    out = []

    def goal(text, key, value, limit):
        out.append({"goal": text, "value": value, "limit": limit, "met": bool(value <= limit)})

    for size, limit in ((64, 0.7), (256, 0.5)):
        r = get.get(("diffusion2d", size, "learned"))
        if r:
            goal(f"diffusion2d {size}^2: learned total / IC(0)", "total_vs_ic0", r["total_vs_ic0"], limit)
    a, b = get.get(("diffusion2d", 64, "learned")), get.get(("diffusion2d", 256, "learned"))
    if a and b:
        goal("diffusion2d: learned iterations 256^2 / 64^2", "iters", b["iters"] / a["iters"], 1.5)
    for size, limit in ((256, 1.5), (1024, 1.0)):
        r = get.get(("diffusion2d", size, "learned"))
        if r:
            goal(f"diffusion2d {size}^2: learned total / AMG-SA", "total_vs_amg", r["total_vs_amg"], limit)
    for (fam, size, method), r in get.items():
        if fam == "anisotropic2d" and method == "learned":
            goal(f"anisotropic2d {size}^2: learned total / AMG-SA", "total_vs_amg", r["total_vs_amg"], 1.0)
    return out


def table(summary: list[dict]) -> str:
    lines = ["| family | grid | method | iterations | setup ms | solve ms | total ms | / IC(0) | / AMG-SA | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        note = [] if r["converged"] else ["not converged"]
        if r["fallbacks"]:
            note.append(f"safeguard fell back to IC(0) on {r['fallbacks']}/{r['systems']}")
        lines.append(f"| {r['family']} | {r['size']}x{r['size']} | {r['method']} | {r['iters']:.1f} | "
                     f"{r['setup_s'] * 1e3:.1f} | {r['solve_s'] * 1e3:.1f} | {r['total_s'] * 1e3:.1f} | "
                     f"{r['total_vs_ic0']:.2f} | {r['total_vs_amg']:.2f} | {'; '.join(note)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", default=None, help="a gnn_solver checkpoint (multigrid mode); none: classical only")
    ap.add_argument("--families", nargs="+", default=["diffusion2d"], help="generator families")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="grid sides")
    ap.add_argument("--num-test", type=int, default=2, help="held-out systems per family and size")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the minimum is kept)")
    ap.add_argument("--out", default="bench_results", help="output folder")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.num_test < 1 or min(args.sizes) < 4:
        ap.error("--repeats and --num-test must be >= 1 and every size >= 4")
    unknown = [f for f in args.families if f not in GENERATORS]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(GENERATORS)}")
    model = None
    if args.ckpt:
        from learnsolve.models.checkpoint import load_model

        model, _ = load_model(args.ckpt)
        if getattr(model, "mode", None) != "multigrid":
            ap.error(f"{args.ckpt} is not a gnn_solver checkpoint in multigrid mode")
        model = model.eval()
    torch.set_num_threads(1)
    rows = []
    for fi, fam in enumerate(args.families):
        for si, size in enumerate(args.sizes):
            for k in range(args.num_test):
                rows.extend(measure(fam, size, SEED0 + 10_000 * fi + 100 * si + k, model, args.repeats))
            print(f"{fam} {size}x{size} done", flush=True)
    summary = summarize(rows)
    met = goals(summary)
    text = table(summary)
    if met:
        text += "\n| goal | value | limit | met |\n|---|---|---|---|\n" + "".join(
            f"| {g['goal']} | {g['value']:.2f} | {g['limit']:g} | {'yes' if g['met'] else 'no'} |\n" for g in met)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_multigrid.json", {"threads": 1, "repeats": args.repeats, "rtol": RTOL,
                                              "checkpoint": args.ckpt, "summary": summary, "goals": met,
                                              "rows": rows})
    write_text(out / "bench_multigrid.md", f"# gnn_solver multigrid (rtol {RTOL:g})\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
