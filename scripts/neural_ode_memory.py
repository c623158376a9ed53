"""Memory of neural_ode's embedded solves against the number of ODE steps: backpropagation through the integrator
vs the continuous adjoint.

Run (from the repository root)::

    python scripts/neural_ode_memory.py                    # forced2d 16x16, 1 / 2 / 4 / 8 rk4 substeps
    python scripts/neural_ode_memory.py --size 24 --substeps 1 4 16 --out bench_results

For each number of rk4 substeps per output interval and each mode (``backprop``: ``torchdiffeq.odeint``, the
graph of every step and every CG solve kept for backward; ``adjoint``: ``odeint_adjoint``, the adjoint ODE
integrated backwards, nothing per step kept), one training step (loss + backward) of an untrained
``NeuralODE(form="forced")`` on one forced2d trajectory, in a fresh measurement of peak RSS growth
(:class:`learnsolve.evaluation.memory.PeakRSS`), plus its wall time. Output: a table on stdout,
``OUT/neural_ode_memory.json`` and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.evaluation.memory import PeakRSS
from learnsolve.files import write_json, write_text
from learnsolve.models.neural_ode import NeuralODE


def measure(size: int, substeps: int, adjoint: bool) -> dict:
    batch = Batch.from_data_list([GENERATORS["forced2d"](size, seed=123)])
    torch.manual_seed(0)
    model = NeuralODE(form="forced", step_size=1.0 / substeps, adjoint=adjoint).double()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        loss, _ = model.training_loss(batch)
        loss.backward()
        seconds = time.perf_counter() - t0
    steps = substeps * (int(batch.t.shape[-1]) - 1)
    return {"size": size, "substeps": substeps, "rk4_steps": steps, "mode": "adjoint" if adjoint else "backprop",
            "peak_growth_mb": None if mem.growth_kb is None else mem.growth_kb / 1024, "exact": mem.exact,
            "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16, help="forced2d grid side")
    ap.add_argument("--substeps", type=int, nargs="+", default=[1, 2, 4, 8], help="rk4 steps per output interval")
    ap.add_argument("--out", default="bench_results", help="output folder")
    args = ap.parse_args(argv)
    if args.size < 3 or min(args.substeps) < 1:
        ap.error("--size must be >= 3 and every --substeps >= 1")
    torch.set_num_threads(1)
    rows = [measure(args.size, s, adj) for s in args.substeps for adj in (False, True)]
    lines = ["| grid | rk4 steps | mode | peak RSS growth MB | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        mb = "n/a" if r["peak_growth_mb"] is None else f"{r['peak_growth_mb']:.1f}"
        lines.append(f"| {r['size']}x{r['size']} | {r['rk4_steps']} | {r['mode']} | {mb} | {r['seconds']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "neural_ode_memory.json", {"rows": rows})
    write_text(out / "neural_ode_memory.md", f"# neural_ode memory vs ODE steps\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
