"""Cost of the safeguard (``learnsolve.linalg.preconditioners.safeguard``) against the solve it protects.

Run (from the repository root)::

    python scripts/bench_safeguard.py --ckpt outputs/train/runs/<run>/checkpoints/epochNNN.ckpt
    python scripts/bench_safeguard.py --ckpt PATH --sizes 64 256 1024 --matrices ../shared/benchmarks/matrices

For every held-out diffusion2d system (``--sizes``, one seeded system each) and every SPD matrix of
``--matrices`` (a Matrix Market folder, b = A 1) and, with ``--pyamg``, of pyamg's gallery: the model's raw learned
preconditioner is built once, then, with one torch thread and the minimum of ``--repeats`` runs each,

- ``solve``: the fallback's (IC(0)'s) PCG solve to rtol 1e-6 from x0 = 0 (the solve the check is measured against),
- ``race``: the safeguard with an already built fallback (the PCG race alone),
- ``check``: the safeguard as the models run it (the fallback built inside the timed check),

and the ratios ``check / solve`` and ``race / solve`` (the goal is at most 10%). The machine is shared and noisy:
only ratios measured in the same run mean anything. Output: a table on stdout and ``OUT/bench_safeguard.json``
and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.data.suites import SuiteError, matrix_market_suite, pyamg_suite
from learnsolve.files import write_json, write_text
from learnsolve.linalg import cg, safeguard
from learnsolve.models.base import system_matrix
from learnsolve.models.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.harness import best_of

SEED0 = 8_500_000  # far from the datamodule's split offsets and the other benchmarks' seeds


def _best_ms(fn, repeats: int):
    seconds, out = best_of(fn, repeats)
    return seconds * 1e3, out


def measure(model, name: str, data, repeats: int) -> dict | None:
    """One row, or None for a matrix the safeguard does not apply to (not symmetric with a positive diagonal)."""
    batch = Batch.from_data_list([data])
    with torch.no_grad():
        A = system_matrix(batch)
        if not (bool((A.diagonal() > 0).all()) and A.is_symmetric(rtol=1e-10)):
            return None
        P = model.preconditioner_for(batch)
        fb = model.fallback_for(batch)
        b = batch.b.view(-1).to(A.dtype)
        solve_ms, (_, info) = _best_ms(lambda: cg(A, b, M=fb, rtol=1e-6, maxiter=5000), repeats)
        race_ms, _ = _best_ms(lambda: safeguard(A, P, fb, b=b), repeats)
        check_ms, check = _best_ms(lambda: safeguard(A, P, lambda: model.fallback_for(batch), b=b), repeats)
    return {"system": name, "n": A.shape[0], "fallback": check.fallback_name,
            "fallback_iters": int(info.iterations.max()), "solve_ms": solve_ms, "race_ms": race_ms,
            "check_ms": check_ms, "check_ratio": check_ms / solve_ms, "race_ratio": race_ms / solve_ms,
            "accepted": check.all_accepted}


def systems(sizes, matrices: str | None, with_pyamg: bool):
    for i, size in enumerate(sizes):
        yield f"diffusion2d_{size}", GENERATORS["diffusion2d"](size, seed=SEED0 + i)
    suites = []
    if matrices:
        suites.append(matrix_market_suite(matrices))
    if with_pyamg:
        suites.append(pyamg_suite())
    for suite in suites:
        for item in suite:
            if isinstance(item, SuiteError):
                print(f"skipped {item.name}: {item.reason}", file=sys.stderr)
                continue
            yield item


def table(rows: list[dict]) -> str:
    head = ("| system | n | fallback | fallback iters | fallback solve ms | race ms | check ms | check / solve | "
            "race / solve | learned kept |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['n']} | {r['fallback']} | {r['fallback_iters']} | {r['solve_ms']:.2f} | "
                     f"{r['race_ms']:.2f} | {r['check_ms']:.2f} | {r['check_ratio']:.0%} | {r['race_ratio']:.0%} | "
                     f"{'yes' if r['accepted'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="a checkpoint of a learned linear preconditioner")
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 256], help="diffusion2d grid sides")
    ap.add_argument("--matrices", default=None, help="a folder of Matrix Market files (SPD ones are measured)")
    ap.add_argument("--pyamg", action="store_true", help="also pyamg's SPD gallery examples")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (the minimum is kept)")
    ap.add_argument("--out", default="bench_results", help="output folder")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    torch.set_num_threads(1)
    model, _ = load_model(args.ckpt)
    if model.kind != "preconditioner" or not model.is_linear:
        raise SystemExit(f"{args.ckpt}: a {model.kind} model (linear: {model.is_linear}); the safeguard checks linear "
                         "learned preconditioners")
    model.eval()
    rows = []
    for name, data in systems(args.sizes, args.matrices, args.pyamg):
        row = measure(model, name, data, args.repeats)
        if row is None:
            print(f"skipped {name}: not symmetric with a positive diagonal", file=sys.stderr)
            continue
        rows.append(row)
        print(f"{name}: check {row['check_ms']:.2f} ms = {row['check_ratio']:.0%} of the fallback's solve", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(rows)
    print(text)
    write_json(out / "bench_safeguard.json", {"ckpt": str(args.ckpt), "threads": 1, "repeats": args.repeats,
                                              "rows": rows})
    write_text(out / "bench_safeguard.md", f"# Safeguard cost: `{args.ckpt}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
