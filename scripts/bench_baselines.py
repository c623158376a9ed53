"""The classical baselines on the hard families: native speed, the family table, and the literature's trends.

Run (from the repository root)::

    python scripts/bench_baselines.py                    # every section, grids 64 and 256 (graph: 4,096 / 65,536 nodes)
    python scripts/bench_baselines.py --sizes 64 256 1024 --sections table
    python scripts/bench_baselines.py --quick            # smoke run: grids 16 / 32, one repeat

Sections (``--sections``, default all):

1. ``native``: the project's CG + pyamg's smoothed-aggregation V-cycle (``learnsolve.linalg.solve(..., precond=AMG)``)
   against scipy's CG with pyamg's own ``aspreconditioner()``, on the same system, the same hierarchy (setup not
   timed) and rtol; each repeat times both, interleaved; medians. Goal: ratio <= 1.1. A third row runs the project's
   CG with the thread-pool coordination switched off (``AMG.host_blas = False``): what the comparison measured before
   numpy's BLAS pool was held to one thread inside the loop.
2. ``table``: every classical baseline of the registry but none/Jacobi (IC(0), MIC(0), IC(0) deflated, AMG-SA,
   AMG-SA with evolution strength, AMG-RS) on ``--num-systems`` held-out systems per hard family and size, through
   ``learnsolve.evaluation.evaluate_suite`` (PCG, random right-hand sides, rtol 1e-6): median iterations and setup /
   solve / total ms, failures counted.
3. ``anisotropy``: rotated anisotropy (FE stencil, one random angle per seed) with epsilon 1e-1 .. 1e-4: default
   smoothed aggregation against evolution strength (the literature: SA degrades as epsilon falls, evolution helps).
4. ``contrast``: channels and inclusions with contrast 1e0 .. 1e6: IC(0), MIC(0), deflated IC(0) and AMG-SA iterations
   (the literature: IC(0) iterations grow with the contrast; a coarse space that holds the inclusions removes it).
5. ``rs_theta``: Ruge-Stueben's strength threshold theta in {0.1, 0.25, 0.5} per family: the measurement behind the
   registry's ``amg_rs`` setting.
6. ``cycle``: one pyamg hierarchy (SA defaults; RS theta 0.25) per family applied by pyamg's own cycle
   (``AMG(cycle="pyamg")``) and by the compiled symmetric V(1,1)-cycle (``learnsolve.linalg.preconditioners.multigrid.from_pyamg``,
   what the registry's AMG rows use on symmetric matrices), in the same CG: iterations, solve ms (medians of the
   repeats, setup not timed) and ms per iteration.

The hard families' parameters are those of ``conf/benchmark/hard.yaml`` (the benchmark the models are judged on).
Torch runs with its default threads (as a user's process would). Writes ``OUT/bench_baselines.json`` and
``OUT/bench_baselines.md`` (atomically) and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from omegaconf import OmegaConf

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.evaluation import evaluate_suite
from learnsolve.files import write_json, write_text
from learnsolve.linalg import AMG, SparseMatrix, solve

SECTIONS = ("native", "table", "anisotropy", "contrast", "rs_theta", "cycle")
HARD = ("lognormal2d", "anisotropic2d", "channels2d", "graph_laplacian")
TABLE_BASELINES = ["ic0", "mic0", "ic0_deflated", "amg_sa", "amg_sa_evol", "amg_rs"]
RTOL = 1e-6
SEED0 = 9_500_000  # held out: far from the datamodule's split offsets (0, 1e6, 2e6, 3e6 + 1e6 i)


def hard_params() -> dict:
    """Per-family generator parameters of conf/benchmark/hard.yaml (the hard benchmark)."""
    cfg = OmegaConf.load(ROOT / "conf" / "benchmark" / "hard.yaml")
    return OmegaConf.to_container(cfg.get("params") or {}, resolve=True)


def system_size(family: str, side: int) -> int:
    """The generator's size for a grid side: graph Laplacians take the node count side^2."""
    return side * side if family == "graph_laplacian" else side


def generate(family: str, side: int, seed: int, params: dict):
    t0 = time.perf_counter()
    data = GENERATORS[family](system_size(family, side), seed=seed, reference=False, **params.get(family, {}))
    return data, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- sections


def _native_one(fam: str, data, side: int, repeats: int) -> dict:
    """Project CG + AMG-SA vs scipy CG + pyamg's preconditioner on one system and one hierarchy."""
    import scipy.sparse.linalg as spla

    A_sp, b = to_scipy(data).tocsr(), data.b.double().numpy()
    A = SparseMatrix.from_scipy(A_sp)
    bt = torch.from_numpy(b)
    P = AMG(A)  # one hierarchy: pyamg's own preconditioner below is the same object
    Ms = P._hier[0].aspreconditioner()

    def scipy_cg():
        count = [0]
        t0 = time.perf_counter()
        _, info = spla.cg(A_sp, b, rtol=RTOL, maxiter=5000, M=Ms, callback=lambda _: count.__setitem__(0, count[0] + 1))
        return time.perf_counter() - t0, count[0], info == 0

    def project_cg():
        t0 = time.perf_counter()
        _, info = solve(A, bt, method="cg", precond=P, rtol=RTOL, maxiter=5000, return_info=True, on_fail="ignore")
        return time.perf_counter() - t0, int(info.iterations), bool(info.converged)

    def uncoordinated():
        P.host_blas = False
        try:
            return project_cg()
        finally:
            del P.host_blas  # back to the class attribute (True)

    runs = {"scipy": [], "project": [], "uncoordinated": []}
    for fn in (scipy_cg, project_cg, uncoordinated):  # warm-up
        fn()
    for _ in range(repeats):
        runs["scipy"].append(scipy_cg())
        runs["project"].append(project_cg())
        runs["uncoordinated"].append(uncoordinated())
    med = {k: statistics.median(t for t, _, _ in v) for k, v in runs.items()}
    return {"family": fam, "side": side, "n": A.shape[0],
            "iters_scipy": runs["scipy"][0][1], "iters_project": runs["project"][0][1],
            "converged": runs["scipy"][0][2] and runs["project"][0][2],
            "scipy_ms": 1e3 * med["scipy"], "project_ms": 1e3 * med["project"],
            "uncoordinated_ms": 1e3 * med["uncoordinated"],
            "ratio": med["project"] / med["scipy"], "ratio_uncoordinated": med["uncoordinated"] / med["scipy"]}


def cycle(families, side: int, repeats: int, params: dict) -> list[dict]:
    """pyamg's cycle vs the compiled cycle on the same hierarchy (section 6)."""
    from learnsolve.evaluation.baselines import RS_TUNED
    from learnsolve.linalg.preconditioners.multigrid import from_pyamg

    rows = []
    for fi, fam in enumerate(families):
        data = generate(fam, side, SEED0 + fi, params)[0]
        A = SparseMatrix.from_scipy(to_scipy(data).tocsr())
        b = data.b.double()
        for kind, opts in (("sa", {}), ("rs", RS_TUNED)):
            P = AMG(A, kind=kind, **opts)
            runs = {"pyamg": P, "compiled": from_pyamg(P._hier[0])}
            row = {"family": fam, "side": side, "amg": kind}
            for name, M in runs.items():
                solve(A, b, method="cg", precond=M, rtol=RTOL, maxiter=5000, on_fail="ignore")  # warm-up
                times, its = [], 0
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    _, info = solve(A, b, method="cg", precond=M, rtol=RTOL, maxiter=5000, return_info=True,
                                    on_fail="ignore")
                    times.append(time.perf_counter() - t0)
                    its = int(info.iterations)
                row[f"iters_{name}"], row[f"{name}_ms"] = its, 1e3 * statistics.median(times)
                row[f"{name}_ms_per_iter"] = row[f"{name}_ms"] / max(its, 1)
            row["ratio"] = row["compiled_ms"] / row["pyamg_ms"]
            rows.append(row)
            print(f"cycle {fam} {kind}: compiled {row['ratio']:.2f}x pyamg's", flush=True)
    return rows


def native(families, side: int, repeats: int, params: dict) -> list[dict]:
    """:func:`_native_one` on one held-out system per family."""
    rows = []
    for fi, fam in enumerate(families):
        rows.append(_native_one(fam, generate(fam, side, SEED0 + fi, params)[0], side, repeats))
        print(f"native {fam} {side}: {rows[-1]['ratio']:.2f}x scipy", flush=True)
    return rows


def _suite_rows(items, preconditioners, repeats, amg_options=None) -> list[dict]:
    rows = evaluate_suite(None, items, rtols=[RTOL], repeats=repeats, maxiter=5000, preconditioners=preconditioners,
                          amg_options=amg_options or {}, progress=False)
    return rows


def _median_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Medians over systems of iterations and ms per (keys..., preconditioner); failures counted."""
    it = f"iters_{RTOL:g}"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*[r[k] for k in keys], r["preconditioner"]), []).append(r)
    out = []
    for key, sel in groups.items():
        ok = [r for r in sel if r["status"] == "ok"]
        med = {col: statistics.median(r[col] for r in ok) if ok else None for col in (it, "setup_s", "solve_s", "total_s")}
        out.append({**dict(zip((*keys, "preconditioner"), key)), "systems": len(sel), "failures": len(sel) - len(ok),
                    "iters": med[it], **{f"{c[:-2]}_ms": None if v is None else 1e3 * v for c, v in med.items() if c != it},
                    "reasons": sorted({r["reason"] for r in sel if r["status"] != "ok" and r["reason"]})})
    return out


def table(families, sides, num_systems: int, repeats: int, params: dict) -> tuple[list[dict], list[dict]]:
    rows, gen = [], []
    for fi, fam in enumerate(families):
        for si, side in enumerate(sides):
            items = []
            for k in range(num_systems):
                data, sec = generate(fam, side, SEED0 + 1000 * fi + 100 * si + k, params)
                gen.append({"family": fam, "side": side, "n": int(data.num_nodes), "seconds": sec})
                items.append((f"{fam}_{side}_{k}", data))
            for r in _suite_rows(items, TABLE_BASELINES, repeats):
                rows.append({**r, "family": fam, "side": side})
            print(f"table {fam} {side}: done", flush=True)
    return _median_rows(rows, ("family", "side")), gen


def sweep(family: str, key: str, values, baselines: list[str], side: int, num_systems: int, repeats: int,
          params: dict, seed: int) -> list[dict]:
    """The hard benchmark's ``family`` with its parameter ``key`` set to each of ``values`` in turn."""
    base = {k: v for k, v in params.get(family, {}).items() if k != key}
    rows = []
    for value in values:
        items = [(f"{key}{value:g}_{k}", GENERATORS[family](side, seed=seed + k, reference=False, **{key: value}, **base))
                 for k in range(num_systems)]
        rows.extend({**r, key: value} for r in _suite_rows(items, baselines, repeats))
        print(f"{family} {key} {value:g}: done", flush=True)
    return _median_rows(rows, (key,))


def rs_theta(families, side: int, num_systems: int, repeats: int, params: dict) -> list[dict]:
    rows = []
    for fi, fam in enumerate(families):
        items = [(f"{fam}_{k}", generate(fam, side, SEED0 + 70_000 + 100 * fi + k, params)[0])
                 for k in range(num_systems)]
        for theta in (0.1, 0.25, 0.5):
            opts = {"rs": {"strength": ("classical", {"theta": theta})}}
            for r in _suite_rows(items, ["amg_rs"], repeats, opts):
                rows.append({**r, "family": fam, "theta": theta})
        print(f"rs_theta {fam}: done", flush=True)
    return _median_rows(rows, ("family", "theta"))


# ---------------------------------------------------------------------------------------------- output


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def _md(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(t for _, t, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(
        _fmt(r.get(k), f) if f else str(r.get(k)) for k, _, f in cols) + " |\n" for r in rows)


MEDIAN_COLS = [("preconditioner", "method", ""), ("iters", "iterations", ".0f"), ("setup_ms", "setup ms", ".1f"),
               ("solve_ms", "solve ms", ".1f"), ("total_ms", "total ms", ".1f"), ("failures", "failures", "d")]


def report(result: dict, command: str) -> str:
    parts = [(f"# Classical baselines on the hard families\n\n`{command}`, {result['date']}, torch threads "
              f"{result['torch_threads']}, rtol {RTOL:g}, random right-hand sides, medians over systems.\n")]
    if result.get("native"):
        parts.append("\n## Native speed: project CG + AMG-SA vs scipy CG + pyamg (same hierarchy; goal <= 1.1)\n\n")
        parts.append(_md(result["native"], [("family", "family", ""), ("n", "n", "d"), ("iters_project", "iters", "d"),
                                             ("scipy_ms", "scipy ms", ".1f"), ("project_ms", "project ms", ".1f"),
                                             ("ratio", "ratio", ".2f"), ("uncoordinated_ms", "uncoordinated ms", ".1f"),
                                             ("ratio_uncoordinated", "ratio uncoordinated", ".2f")]))
    if result.get("table"):
        parts.append("\n## The hard families\n\n")
        parts.append(_md(result["table"], [("family", "family", ""), ("side", "grid side", "d")] + MEDIAN_COLS))
    if result.get("generation"):
        parts.append("\n## Generation time (one system)\n\n")
        parts.append(_md(result["generation"], [("family", "family", ""), ("side", "grid side", "d"),
                                                ("n", "n", "d"), ("seconds", "seconds", ".2f")]))
    if result.get("anisotropy"):
        parts.append("\n## Rotated anisotropy: epsilon sweep\n\n")
        parts.append(_md(result["anisotropy"], [("epsilon", "epsilon", "g")] + MEDIAN_COLS))
    if result.get("contrast"):
        parts.append("\n## Channels and inclusions: contrast sweep\n\n")
        parts.append(_md(result["contrast"], [("contrast", "contrast", "g")] + MEDIAN_COLS))
    if result.get("rs_theta"):
        parts.append("\n## Ruge-Stueben strength threshold\n\n")
        parts.append(_md(result["rs_theta"], [("family", "family", ""), ("theta", "theta", "g")] + MEDIAN_COLS))
    if result.get("cycle"):
        parts.append("\n## The same pyamg hierarchy: pyamg's cycle vs the compiled V-cycle\n\n")
        parts.append(_md(result["cycle"], [("family", "family", ""), ("amg", "AMG", ""),
                                           ("iters_pyamg", "iters pyamg", "d"), ("pyamg_ms", "pyamg ms", ".1f"),
                                           ("pyamg_ms_per_iter", "ms / iter", ".2f"),
                                           ("iters_compiled", "iters compiled", "d"),
                                           ("compiled_ms", "compiled ms", ".1f"),
                                           ("compiled_ms_per_iter", "ms / iter", ".2f"),
                                           ("ratio", "solve ratio", ".2f")]))
    return "".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--families", nargs="+", default=list(HARD), help="families of the table and the native rows")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="grid sides (graph: side^2 nodes)")
    ap.add_argument("--sweep-size", type=int, default=128, help="grid side of the epsilon / contrast / theta sweeps")
    ap.add_argument("--native-size", type=int, default=256, help="grid side of the native-speed rows")
    ap.add_argument("--num-systems", type=int, default=2, help="held-out systems per family and size")
    ap.add_argument("--repeats", type=int, default=3, help="timed solves per measurement (medians)")
    ap.add_argument("--quick", action="store_true", help="grids 16 / 32, one system, one repeat")
    ap.add_argument("--out", default="bench_results", help="output folder")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.sweep_size, args.native_size, args.num_systems, args.repeats = [16, 32], 16, 32, 1, 1
    unknown = [f for f in args.families if f not in GENERATORS]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(sorted(GENERATORS))}")
    if args.repeats < 1 or args.num_systems < 1 or min(args.sizes + [args.sweep_size, args.native_size]) < 4:
        ap.error("--repeats and --num-systems must be >= 1 and every size >= 4")
    params = hard_params()
    result = {"date": datetime.date.today().isoformat(), "torch_threads": torch.get_num_threads(), "rtol": RTOL,
              "params": params, "argv": sys.argv[1:] if argv is None else list(argv)}
    if "native" in args.sections:
        result["native"] = native(args.families, args.native_size, args.repeats, params)
    if "table" in args.sections:
        result["table"], result["generation"] = table(args.families, args.sizes, args.num_systems, args.repeats, params)
    if "anisotropy" in args.sections:
        result["anisotropy"] = sweep("anisotropic2d", "epsilon", (1e-1, 1e-2, 1e-3, 1e-4),
                                     ["ic0", "mic0", "amg_sa", "amg_sa_evol", "amg_rs"], args.sweep_size,
                                     args.num_systems, args.repeats, params, SEED0 + 50_000)
    if "contrast" in args.sections:
        result["contrast"] = sweep("channels2d", "contrast", (1e0, 1e2, 1e4, 1e6),
                                   ["ic0", "mic0", "ic0_deflated", "amg_sa", "amg_rs"], args.sweep_size,
                                   args.num_systems, args.repeats, params, SEED0 + 60_000)
    if "rs_theta" in args.sections:
        result["rs_theta"] = rs_theta(args.families, args.sweep_size, args.num_systems, args.repeats, params)
    if "cycle" in args.sections:
        result["cycle"] = cycle(args.families, args.native_size, args.repeats, params)
    command = "python scripts/bench_baselines.py " + " ".join(result["argv"])
    text = report(result, command.strip())
    print(text)
    out = Path(args.out)
    write_json(out / "bench_baselines.json", result)
    write_text(out / "bench_baselines.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
