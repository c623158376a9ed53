"""neural_if against MIC(0) and IC(0) in total time (setup, network, safeguard, solve) on held-out systems.

Run (from the repository root)::

    python scripts/bench_neural_if.py --ckpt diffusion=outputs/.../last.ckpt --ckpt hard=outputs/.../last.ckpt
    python scripts/bench_neural_if.py --ckpt hard=CKPT --families lognormal2d channels2d --sizes 256 --num-test 2

1. Network cost: the model's factor (features, network, assembly of L; the base factor excluded) on one diffusion2d
   system per size in ``--inference-sizes``, one thread and two threads (numba and BLAS), minimum of ``--repeats``.
2. For every checkpoint, family and size: ``--num-test`` held-out systems (seeds 9_100_000 + i; the families'
   parameters of ``data=hard``, diffusion2d with sigma^2 = 1), random right-hand side, PCG from x0 = 0 to rtol 1e-6 with
   one torch / numba / BLAS thread:

   - ``ic0``, ``mic0``, ``amg_sa``: the evaluation's baselines (AMG-SA: smoothed aggregation in the compiled V-cycle),
     setup + solve;
   - ``learned``: the model's factor with its safeguard, as ``model.solve`` runs it: ``base`` (its MIC(0) / IC(0)
     base factor), ``network`` (features, network, assembly), ``safeguard`` (the race against the fastest classical
     factor, that factor's choice included), solve; ``fallback`` names what the safeguard chose where it rejected the
     learned factor;
   - ``untrained``: the same model with its output layers at zero (the classical start), for learned / untrained.

   Times are the minimum of ``--repeats`` full runs (setup + solve). Ratios: learned total / fastest of IC(0) and
   MIC(0) total (the goal's reference) and / fastest of all three; learned iterations / best of IC(0) and MIC(0);
   learned / untrained iterations.
3. Output: a table on stdout and ``OUT/bench_neural_if.json`` (+ ``.md``), written atomically.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time
from pathlib import Path

import numba
import torch
from threadpoolctl import threadpool_limits
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.evaluation.baselines import build_baseline
from learnsolve.files import write_json, write_text
from learnsolve.linalg import cg
from learnsolve.models.base import system_matrix
from learnsolve.models.checkpoint import load_model
from learnsolve.nn.features import node_coefficient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import best_of

ROOT = Path(__file__).resolve().parents[1]
SEED0 = 9_100_000
RTOL = 1e-6
CLASSICAL = ("ic0", "mic0", "amg_sa")
PARAMS = {"diffusion2d": {"sigma2": 1.0, "corr_len": 0.1}, "lognormal2d": {"sigma2": 4.0, "corr_len": 0.0},
          "anisotropic2d": {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"},
          "channels2d": {"contrast": 1e6}, "graph_laplacian": {"sigma2": 1.0}}


def system(family: str, size: int, seed: int):
    n = size * size if family == "graph_laplacian" else size
    return Batch.from_data_list([GENERATORS[family](n, seed=seed, reference=False, **PARAMS[family])])


def untrained(model):
    """The model with its zero-initialised output layers back at zero: the classical start."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in ("head_out", "diag_out", "edge_head.2", "diag_head.2")):
                p.zero_()
    return m


def classical(batch, name: str, repeats: int) -> dict:
    """A baseline of the evaluation's registry (``ic0``, ``mic0``, ``amg_sa``: smoothed aggregation in the compiled
    V-cycle) at its native speed: setup + PCG."""
    A = system_matrix(batch)
    b = batch.b.view(-1).to(A.dtype)

    def run():
        t0 = time.perf_counter()
        P = build_baseline(name, A)
        t1 = time.perf_counter()
        _, info = cg(A, b, P, rtol=RTOL, maxiter=20000)
        return t1 - t0, time.perf_counter() - t1, info

    runs = [run() for _ in range(repeats)]
    k = min(range(repeats), key=lambda i: runs[i][0] + runs[i][1])
    setup, solve, info = runs[k]
    return {"iters": int(info.iterations), "converged": bool(info.converged.all()), "setup_ms": 1e3 * setup,
            "solve_ms": 1e3 * solve, "total_ms": 1e3 * (setup + solve)}


def learned(model, batch, repeats: int) -> dict:
    """model.solve's path, timed by part: base factor, network (the factor less its base: features, network,
    assembly, input checks), safeguard, solve."""

    def run():
        with torch.no_grad():
            t1 = time.perf_counter()
            P = model.preconditioner_for(batch)  # builds the base factor anew (model.base_seconds), then the network
            t2 = time.perf_counter()
            M, check = model.safe_preconditioner_for(batch, candidate=P)
            t3 = time.perf_counter()
            _, info = model.solve_with(batch, M, rtol=RTOL, maxiter=20000)
            t4 = time.perf_counter()
        base = float(getattr(model, "base_seconds", 0.0) or 0.0)
        return (base, t2 - t1 - base, t3 - t2, t4 - t3), info, check

    runs = [run() for _ in range(repeats)]
    k = min(range(repeats), key=lambda i: sum(runs[i][0]))
    (base, net, guard, solve), info, check = runs[k]
    fallback = None if check is None or check.all_accepted else check.fallback_name
    return {"iters": int(info.iterations), "converged": bool(info.converged.all()), "base_ms": 1e3 * base,
            "network_ms": 1e3 * net, "safeguard_ms": 1e3 * guard, "solve_ms": 1e3 * solve,
            "setup_ms": 1e3 * (base + net + guard), "total_ms": 1e3 * (base + net + guard + solve),
            "fallback": fallback}


def inference(model, sizes, repeats: int) -> list[dict]:
    out = []
    for size in sizes:
        batch = system("diffusion2d", size, SEED0)
        A = system_matrix(batch)
        row = {"size": size, "n": A.shape[0]}
        for threads in (1, 2):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            with threadpool_limits(threads), torch.no_grad():
                B = model._base_preconditioner(A)
                coeff, red = node_coefficient(batch, A.values), A.reducer()
                Bv = None if B is None else B.L
                if model.arch == "light":
                    def fn(A=A, coeff=coeff, red=red, Bv=Bv):
                        return model._compiled_factor(A, coeff, red, Bv)
                else:
                    def fn(batch=batch):
                        return model.factor(batch)  # the base is cached: the network and the assembly
                fn()
                row[f"network_ms_{threads}t"] = 1e3 * best_of(fn, repeats)[0]
        out.append(row)
    return out


def table(records: list[dict]) -> str:
    head = ("| model | family | size | system | method | iters | setup ms | network ms | safeguard ms | solve ms | "
            "total ms | fallback |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in records:
        for method in (*CLASSICAL, "untrained", "learned"):
            m = r[method]
            lines.append(f"| {r['model']} | {r['family']} | {r['size']} | {r['system']} | {method} | {m['iters']} | "
                         f"{m['setup_ms']:.1f} | {m.get('network_ms', 0.0):.1f} | {m.get('safeguard_ms', 0.0):.1f} | "
                         f"{m['solve_ms']:.1f} | {m['total_ms']:.1f} | {m.get('fallback') or ''} |")
    return "\n".join(lines)


def summary(records: list[dict]) -> list[dict]:
    groups: dict = {}
    for r in records:
        groups.setdefault((r["model"], r["family"], r["size"]), []).append(r)
    out = []
    for (model, family, size), rs in groups.items():
        def med(f, rs=rs):
            return statistics.median(f(r) for r in rs)

        out.append({
            "model": model, "family": family, "size": size, "systems": len(rs),
            "iters_vs_best": med(lambda r: r["learned"]["iters"] / min(r["ic0"]["iters"], r["mic0"]["iters"])),
            "iters_vs_mic0": med(lambda r: r["learned"]["iters"] / r["mic0"]["iters"]),
            "total_vs_fastest": med(lambda r: r["learned"]["total_ms"] / min(r["ic0"]["total_ms"], r["mic0"]["total_ms"])),
            "total_vs_mic0": med(lambda r: r["learned"]["total_ms"] / r["mic0"]["total_ms"]),
            "total_vs_fastest_all": med(lambda r: r["learned"]["total_ms"] / min(r[k]["total_ms"] for k in CLASSICAL)),
            "gain": med(lambda r: r["learned"]["iters"] / r["untrained"]["iters"]),
            "fallbacks": sum(r["learned"]["fallback"] is not None for r in rs),
        })
    return out


def summary_table(rows: list[dict]) -> str:
    lines = [("| model | family | size | systems | learned / best iters | learned / MIC(0) iters | total / fastest | "
              "total / MIC(0) | total / fastest incl. AMG-SA | learned / untrained iters | fallbacks |"), "|---" * 11 + "|"]
    for s in rows:
        lines.append(f"| {s['model']} | {s['family']} | {s['size']} | {s['systems']} | {s['iters_vs_best']:.2f} | "
                     f"{s['iters_vs_mic0']:.2f} | {s['total_vs_fastest']:.2f} | {s['total_vs_mic0']:.2f} | "
                     f"{s['total_vs_fastest_all']:.2f} | {s['gain']:.2f} | {s['fallbacks']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH", help="a neural_if checkpoint")
    ap.add_argument("--families", nargs="+", default=list(PARAMS), choices=list(PARAMS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--inference-sizes", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--num-test", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench_neural_if"))
    args = ap.parse_args(argv)
    models = {}
    for spec in args.ckpt:
        name, _, path = spec.partition("=")
        if not path:
            ap.error(f"--ckpt takes NAME=PATH, got {spec!r}")
        model, _ = load_model(path)
        if type(model).__name__ != "NeuralIF":
            ap.error(f"{path} is a {type(model).__name__} checkpoint, not neural_if")
        models[name] = model
    out_dir = Path(args.out)
    result = {"date": datetime.date.today().isoformat(), "rtol": RTOL, "threads": 1, "args": vars(args),
              "inference": {}, "records": []}
    for name, model in models.items():
        result["inference"][name] = inference(model, args.inference_sizes, args.repeats)
        for row in result["inference"][name]:
            print(f"[{name}] network at {row['size']}^2: {row['network_ms_1t']:.1f} ms one thread, "
                  f"{row['network_ms_2t']:.1f} ms two threads", flush=True)
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        for name, model in models.items():
            start = untrained(model)
            for family in args.families:
                for size in args.sizes:
                    for i in range(args.num_test):
                        batch = system(family, size, SEED0 + 1000 * args.sizes.index(size) + i)
                        rec = {"model": name, "family": family, "size": size, "system": i,
                               **{k: classical(batch, k, args.repeats) for k in CLASSICAL},
                               "untrained": learned(start, batch, args.repeats),
                               "learned": learned(model, batch, args.repeats)}
                        result["records"].append(rec)
                        lr, mc, ic, sa = rec["learned"], rec["mic0"], rec["ic0"], rec["amg_sa"]
                        print(f"[{name}] {family} {size} #{i}: learned {lr['iters']} it {lr['total_ms']:.0f} ms "
                              f"(network {lr['network_ms']:.0f}, safeguard {lr['safeguard_ms']:.0f}"
                              f"{', fell back to ' + lr['fallback'] if lr['fallback'] else ''}); untrained "
                              f"{rec['untrained']['iters']} it; MIC(0) {mc['iters']} it {mc['total_ms']:.0f} ms; "
                              f"IC(0) {ic['iters']} it {ic['total_ms']:.0f} ms; AMG-SA {sa['iters']} it "
                              f"{sa['total_ms']:.0f} ms", flush=True)
                        write_json(out_dir / "bench_neural_if.partial.json", result)
    result["summary"] = summary(result["records"])
    md = "\n\n".join([f"# neural_if against MIC(0) / IC(0) ({result['date']}, PCG rtol {RTOL}, one thread)",
                      summary_table(result["summary"]), table(result["records"])])
    print(md)
    write_json(out_dir / "bench_neural_if.json", result)
    write_text(out_dir / "bench_neural_if.md", md + "\n")
    (out_dir / "bench_neural_if.partial.json").unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
