"""Benchmark of the ``learnsolve.linalg`` core against scipy, with goals.

Run (from the repository root)::

    python scripts/bench_linalg.py                      # full run, n = 1000 x 1000 = 1e6 (~2-4 min)
    python scripts/bench_linalg.py --quick              # small sizes, smoke run (< 1 min)
    python scripts/bench_linalg.py --only spmv,cg --repeats 11 --out /tmp/b.json

This module is the driver: command line, configuration, the section loop and the summary. The timing
protocol, the noise handling, the problems and the output are described in :mod:`benchmarks.harness`;
each section documents its own protocol and goal in its module. Sections (``--only`` takes a comma list
of these names), in the order they run:

spmv (:mod:`benchmarks.spmv`)
    ``SparseMatrix @ x`` vs scipy CSR ``A @ x``, float64 and float32. Goal: <= 0.6x scipy's time.
cg (:mod:`benchmarks.cg`)
    Time per CG iteration, ``learnsolve.linalg.cg`` / ``solve`` vs ``scipy.sparse.linalg.cg``.
    Goal: <= 0.6x scipy per iteration.
backward (:mod:`benchmarks.backward`)
    Implicit differentiation: time of ``loss.backward()`` / time of the forward solve. Goal: <= 1.3.
memory (:mod:`benchmarks.memory`)
    Peak memory of forward + backward, implicit vs ``backward="unrolled"``, 100 and 1000 iterations.
    Goals: implicit flat in the iteration count (<= 1.2), unrolled(1000) / implicit(1000) >= 100.
batched (:mod:`benchmarks.batched`)
    64 variable-coefficient systems in ONE ``cg`` call vs a Python loop of scipy cg. Goal: >= 5x faster.
ic0 (:mod:`benchmarks.ic0`)
    IC(0) setup and one triangular-solve pair vs scipy ``spilu``. Goal: pair <= 3 SpMV times.
gradcheck (:mod:`benchmarks.gradcheck`)
    Relative error of implicit gradients vs a dense float64 reference. Goal: <= 1e-8.
peer (:mod:`benchmarks.peer`)
    Forward + implicit backward of Jacobi-PCG vs torch-sla (optional; skipped when not installed).
    Goal: <= 0.5x torch-sla's time at 256^2 and 1e6.
jax (:mod:`benchmarks.jax_peer`)
    ``learnsolve.jax.solve`` (JAX-native and torch backends) vs lineax: jitted grad of a CG solve, diffusion2d
    128^2 and a vmap over 64 systems (optional; skipped without JAX / lineax). Goal: faster than lineax.
threads (:mod:`benchmarks.threads`)
    One large CG system on all threads vs the one-thread compiled kernel, by grid size (sets the threshold of
    the threaded kernel; no goal).

Output: a table on stdout (rich when available) and JSON at ``--out`` (default
``bench_results/bench_linalg.json``, written atomically by :mod:`learnsolve.files`).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

from . import backward, batched, cg, gradcheck, ic0, jax_peer, memory, peer, spmv, threads
from .harness import Section, cores, machine_meta, print_table, run_section, write_results
from .problems import Config, Problems

MODULES = (spmv, cg, backward, memory, batched, ic0, gradcheck, peer, jax_peer, threads)
SECTIONS = tuple(m.NAME for m in MODULES)
TITLES = {m.NAME: m.TITLE for m in MODULES}
USES_SHARED_MATRIX = ("spmv", "cg", "backward", "ic0", "threads")  # built before the measured window


def make_config(args) -> Config:
    if args.quick:
        return Config(
            n_side=args.n or 200,
            repeats=args.repeats or 3,
            min_sample=args.min_sample or 0.01,
            cg_maxiter=50,
            bwd_grid=60,
            bwd_big_maxiter=30,
            mem_grid=100,
            mem_iters=(20, 200),
            batch=16,
            batch_grid=32,
            grad_grid=10,
        )
    return Config(n_side=args.n or 1000, repeats=args.repeats or 7, min_sample=args.min_sample or 0.05)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, default=None, help="grid side: n = N^2 unknowns (default 1000; 200 with --quick)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, smoke run in < 1 minute")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed samples per measurement (default 7; 3 quick)"
    )
    ap.add_argument(
        "--min-sample",
        type=float,
        default=None,
        help="seconds one sample of a short kernel lasts at least (inner loop; default 0.05)",
    )
    ap.add_argument("--only", type=str, default=None, help=f"comma list of sections: {','.join(SECTIONS)}")
    ap.add_argument(
        "--out",
        type=str,
        default=os.path.join("bench_results", "bench_linalg.json"),
        help="JSON results path (written atomically; default bench_results/bench_linalg.json)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: number of usable cores)"
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="seconds to wait for other processes to leave the CPUs idle before each section "
        "(0: never; default 30, 2 with --quick)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    threads = args.threads or cores()
    torch.set_num_threads(threads)

    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    cfg = make_config(args)
    max_wait = args.max_wait if args.max_wait is not None else (2.0 if args.quick else 30.0)
    meta = machine_meta(threads) | {"config": dict(cfg.__dict__), "quick": args.quick}
    problems = Problems(cfg)
    sections: list[Section] = []
    t_all = time.perf_counter()
    for mod in MODULES:
        if mod.NAME not in only:
            continue
        if mod.NAME in USES_SHARED_MATRIX:
            _ = problems.S
        sec = Section(mod.NAME, mod.TITLE)
        sections.append(run_section(sec, lambda s, mod=mod: mod.run(cfg, problems, s), max_wait, "bench_linalg"))
        gc.collect()
    meta["total_seconds"] = time.perf_counter() - t_all
    print_table(sections, meta)
    if args.quick:
        print(
            "\n--quick: smoke run at small sizes; the goals are set for the full sizes (overheads dominate here)"
        )
    summary = write_results(args.out, meta, sections)["summary"]
    print(
        f"\n{summary['met']}/{summary['goals']} goals met; total {meta['total_seconds']:.0f} s; "
        f"JSON: {os.path.abspath(args.out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
