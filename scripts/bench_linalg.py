"""Benchmark of the ``learnsolve.linalg`` core against scipy, with goals: entry point.

Run (from the repository root)::

    python scripts/bench_linalg.py                      # full run, n = 1000 x 1000 = 1e6 (~2-4 min)
    python scripts/bench_linalg.py --quick              # small sizes, smoke run (< 1 min)
    python scripts/bench_linalg.py --only spmv,cg --repeats 11 --out /tmp/b.json

The benchmark lives in the ``scripts/benchmarks/`` package: the driver ``benchmarks/linalg.py`` (options,
sections, goals), the shared harness ``benchmarks/harness.py`` (timing protocol, noise handling, output)
and one module per section, each documenting its own protocol; ``python scripts/bench_linalg.py --help``
lists the options. Output: a table on stdout and JSON at ``--out`` (default
``bench_results/bench_linalg.json``).
"""

import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from benchmarks.linalg import main

if __name__ == "__main__":
    sys.exit(main())
