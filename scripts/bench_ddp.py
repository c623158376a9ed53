"""Training throughput (systems per second) with 1 and 2 CPU DDP processes (gloo) on the same data.

    python scripts/bench_ddp.py [--size 16] [--num-train 64] [--batch-size 8] [--epochs 3] [--threads 1]
                                [--processes 1 2] [--out bench_results/bench_ddp.json]

Each process count runs in a fresh interpreter (``--worker``), which Lightning's subprocess launcher
re-runs once per extra rank. Model: gnn_solver with its default settings; data: diffusion2d, the global
batch ``--batch-size`` is split over the ranks, so every run takes the same optimisation steps.
Throughput = systems trained per second of wall time over epochs 2.. (epoch 1 is warm-up); validation
is off. ``--threads`` is the torch thread count per process (1: the cores are not oversubscribed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path


def _worker(args) -> None:
    import pytorch_lightning as pl
    import torch

    from learnsolve.models import GNNSolver
    from learnsolve.training import LearnedSolverModule
    from learnsolve.training.datamodule import LinearSystemDataModule

    torch.set_num_threads(args.threads)

    class EpochTimes(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.times.append(time.perf_counter() - self.t0)

    pl.seed_everything(0, workers=True)
    dm = LinearSystemDataModule("diffusion2d", size=args.size, num_train=args.num_train, num_val=2, num_test=2,
                                batch_size=args.batch_size, data_dir=args.data_dir, progress=False)
    module = LearnedSolverModule(model=GNNSolver(), optimizer=partial(torch.optim.Adam, lr=2e-3))
    timer = EpochTimes()
    n = args.devices
    trainer = pl.Trainer(accelerator="cpu", devices=n, strategy="ddp" if n > 1 else "auto", max_epochs=args.epochs,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[timer])
    trainer.fit(module, datamodule=dm)
    if trainer.is_global_zero:
        steady = timer.times[1:] or timer.times
        print("RESULT " + json.dumps({"processes": n, "epoch_seconds": timer.times,
                                      "systems_per_s": args.num_train * len(steady) / sum(steady)}), flush=True)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--num-train", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="bench_results/bench_ddp.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        for n in args.processes:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--devices", str(n), "--data-dir", data_dir,
                   "--size", str(args.size), "--num-train", str(args.num_train), "--batch-size",
                   str(args.batch_size), "--epochs", str(args.epochs), "--threads", str(args.threads)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(lines[0][len("RESULT "):]))
    base = rows[0]["systems_per_s"]
    print(f"gnn_solver on diffusion2d {args.size}x{args.size}, {args.num_train} systems, global batch "
          f"{args.batch_size}, {args.threads} thread(s) per process")
    print(f"{'processes':>9}  {'systems/s':>9}  {'speed-up':>8}")
    for r in rows:
        print(f"{r['processes']:>9}  {r['systems_per_s']:>9.1f}  {r['systems_per_s'] / base:>7.2f}x")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
