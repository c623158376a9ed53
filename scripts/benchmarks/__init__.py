"""Benchmarks of ``learnsolve`` against baselines, with goals (performance goals live here, under ``scripts/``).

Run (from the repository root)::

    python scripts/bench_linalg.py                      # full run, n = 1000 x 1000 = 1e6 (~2-4 min)
    python scripts/bench_linalg.py --quick              # small sizes, smoke run (< 1 min)
    python scripts/bench_linalg.py --only spmv,cg --repeats 11 --out /tmp/b.json
    python -m scripts.benchmarks.linalg --quick         # the same driver, without the entry point

Layout:

- :mod:`benchmarks.harness`: what every section shares -- the timing protocol (medians over repeats,
  inner loops lasting >= ``--min-sample``, interleaved candidate/baseline order), the CPU-quiet wait and
  the other-load watch, :class:`~benchmarks.harness.Row` / :class:`~benchmarks.harness.Section` with
  goals, the rich/plain table and the JSON output with machine metadata;
- :mod:`benchmarks.problems`: the configuration (sizes, tolerances) and the problems the sections
  share, built with :mod:`learnsolve.data.generators`;
- :mod:`benchmarks.linalg`: the driver of the ``learnsolve.linalg`` benchmark (command line, section
  loop, summary); ``scripts/bench_linalg.py`` is its entry point;
- one module per section of that benchmark, each documenting its own protocol and goal:
  :mod:`~benchmarks.spmv`, :mod:`~benchmarks.cg`, :mod:`~benchmarks.backward`, :mod:`~benchmarks.memory`,
  :mod:`~benchmarks.batched`, :mod:`~benchmarks.ic0`, :mod:`~benchmarks.gradcheck`. A section module
  defines ``NAME``, ``TITLE`` and ``run(cfg, problems, section)``, which adds rows to ``section``.

Problems come from :mod:`learnsolve.data.generators`; the peak-memory probe is
:mod:`learnsolve.evaluation.memory`; files are written atomically by :mod:`learnsolve.files`.
"""
