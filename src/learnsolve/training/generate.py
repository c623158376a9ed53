"""``generate(cfg)``: build the dataset caches of a data config's DataModule (``learnsolve-generate``).

Prints one row per split: systems, n, nnz, a condition-number estimate of the first system and the
seconds spent (generation, or loading when the cache already exists).
"""

from __future__ import annotations

import time

import hydra
import numpy as np
import scipy.sparse.linalg as spla
from omegaconf import DictConfig


def condition_estimate(A) -> float | None:
    """kappa_2 of a symmetric A from its extreme eigenvalues (Lanczos; shift-invert for the smallest),
    or of a small nonsymmetric A from dense singular values; None when too costly."""
    n = A.shape[0]
    try:
        if abs(A - A.T).max() <= 1e-12 * abs(A).max():
            if n <= 400:
                ev = np.linalg.eigvalsh(A.toarray())
                lo, hi = np.abs(ev).min(), np.abs(ev).max()
            else:
                hi = abs(spla.eigsh(A, k=1, which="LM", return_eigenvectors=False, tol=1e-3)[0])
                lo = abs(spla.eigsh(A.tocsc(), k=1, sigma=0, which="LM", return_eigenvectors=False,
                                    tol=1e-3)[0])
        elif n <= 2000:
            s = np.linalg.svd(A.toarray(), compute_uv=False)
            lo, hi = s.min(), s.max()
        else:
            return None
    except (RuntimeError, ValueError, np.linalg.LinAlgError, spla.ArpackError):  # no estimate
        return None
    return float(hi / lo) if lo > 0 else float("inf")


def generate(cfg: DictConfig) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    from learnsolve.data import to_scipy

    dm = hydra.utils.instantiate(cfg.data)
    rows = []
    for name, size, count, _ in dm.split_specs():
        t0 = time.perf_counter()
        ds = dm.build(name)
        secs = time.perf_counter() - t0
        first = ds[0]
        rows.append({"split": name, "size": size, "count": len(ds), "n": int(first.num_nodes),
                     "nnz": int(first.edge_index.shape[1]), "cond": condition_estimate(to_scipy(first)),
                     "seconds": secs, "path": ds.root})
    table = Table(title=f"{cfg.data.family} datasets")
    for col in ("split", "size", "count", "n", "nnz", "cond (first)", "seconds", "cache"):
        table.add_column(col)
    for r in rows:
        cond = "-" if r["cond"] is None else f"{r['cond']:.3g}"
        table.add_row(r["split"], str(r["size"]), str(r["count"]), str(r["n"]), str(r["nnz"]), cond,
                      f"{r['seconds']:.2f}", r["path"])
    Console().print(table)
    return rows
