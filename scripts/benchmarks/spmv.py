"""Section ``spmv``: ``SparseMatrix @ x`` vs scipy CSR ``A @ x``, float64 and float32.

Protocol: the shared Poisson matrix (``--n`` x ``--n`` grid, :class:`benchmarks.harness.Problems`) and
one random vector; the float32 run casts both. Candidate and baseline are timed by
:func:`benchmarks.harness.bench` (two warm-up calls, interleaved samples); the maximum relative
difference of the two products is reported. Goal: learnsolve <= 0.6x scipy's time.
"""

from __future__ import annotations

import numpy as np
import torch

from .harness import Section, bench, ms, timings_json
from .problems import Config, Problems

NAME = "spmv"
TITLE = "1. SpMV: SparseMatrix @ x vs scipy CSR"


def run(cfg: Config, P: Problems, sec: Section) -> None:
    A, S = P.poisson, P.S
    n = A.shape[0]
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal(n)
    sec.details.update(n=n, nnz=int(A.nnz), index_dtype=str(S.pattern.col.dtype))
    for dt, np_dt in ((torch.float64, np.float64), (torch.float32, np.float32)):
        As = A.astype(np_dt)
        xs = x.astype(np_dt)
        St = S if dt == torch.float64 else S.to(dt)
        xt = torch.from_numpy(xs.copy())
        err = float(np.abs((St @ xt).numpy() - As @ xs).max() / np.abs(As @ xs).max())
        t = bench(
            {"learnsolve": lambda St=St, xt=xt: St @ xt, "scipy": lambda As=As, xs=xs: As @ xs},
            cfg.repeats,
            cfg.min_sample,
            warmup=2,
        )
        tl, ts = t["learnsolve"].median, t["scipy"].median
        tag = "f64" if dt == torch.float64 else "f32"
        sec.row(
            f"SpMV {tag} (n={n:.0e})",
            ms(tl),
            ms(ts),
            baseline_name="scipy CSR A@x",
            ratio=tl / ts,
            target=("<=", 0.6),
            note=f"max rel diff {err:.1e}",
        )
        sec.details[tag] = timings_json(t) | {"max_rel_diff": err}
