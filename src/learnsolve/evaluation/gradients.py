"""Gradient quality and memory of the ways to differentiate a linear solve.

Two studies, each a table (CSV, Markdown, JSON) and a plot; ``scripts/gradient_quality.py`` runs them.

**Quality** (:func:`quality_study`). Problems: ``diffusion2d`` (``-div(k grad u) = f``, k = exp(GRF of
variance sigma^2)) for each grid side m and sigma^2: larger sigma^2 = larger contrast = larger condition
number kappa(A) (computed with scipy ``eigsh``). Loss of the solution of ``A X = B`` with K right-hand
sides: ``L = <W, X> + 0.5 ||X||^2`` (W fixed and random; the columns of B and of W are independent
normal vectors, or correlated ``rhs_corr`` with a common one: similar load cases). Gradients of L w.r.t. A's
values and B by:

- ``implicit``: :func:`learnsolve.linalg.solve` with one adjoint solve (PCG, Jacobi);
- ``unrolled``: backpropagation through all PCG iterations;
- ``truncated``: backpropagation through the last k iterations only (k from a list);
- ``stochastic``: the implicit gradient with the adjoint solved for a uniform sample of the K right-hand
  sides, rescaled (unbiased); measured over many draws.

References, both independent of learnsolve's solver: (1) central finite differences of L evaluated with
scipy's sparse LU in float64, along ``directions`` random directions (symmetric in A, so A stays SPD and
CG applies; one Richardson step; the step is scaled with 1/kappa) -- the ground truth,
cheap because it needs only directional derivatives; ``fd_err_est`` is its own error estimate
(difference of two Richardson levels). (2) The exact gradient from scipy: lambda = A^{-T} dL/dX by LU,
dL/dB = lambda, dL/dvalues = -lambda[row] x[col]; compared after symmetrising the values gradient
(g + g[transpose]: CG sees A only through symmetric products, so only the symmetric part is defined
for an unrolled CG -- the implicit gradient is exact in every direction).

Per method: relative error and cosine similarity to each reference, time of forward + backward
(median of ``repeats``), and the bytes autograd saved for backward (``saved_mb``, counted with
``torch.autograd.graph.saved_tensors_hooks``: the memory that grows with unrolling; objects an autograd
Function keeps on its context, such as a preconditioner's factor, are not counted). ``err_values``: the
values-gradient part alone. For stochastic rows (``err_exact``, ``cos_exact`` and ``err_values`` are
means over the draws; ``err_fd``, ``cos_fd`` and the time belong to the first draw / the median draw), of the
values gradient -- the parameters shared by all right-hand sides, which the estimator is for (dL/dB of an
unsampled column is 0, of a sampled one N/s times the truth, whatever the problem): ``bias`` =
||mean of draws - exact|| / ||exact||, ``bias_noise`` = the standard error of that mean (a bias well
inside it is no bias), ``rel_sd`` = the standard deviation of one draw / ||exact||.

**Memory** (:func:`memory_study`). Peak memory of forward + backward with exactly ``iters`` PCG
iterations (rtol 0, ``on_fail="ignore"``) on a 2D Poisson matrix with n unknowns, per mode, each
point in a fresh Python process: ``peak_mb`` = the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set just before the forward solve (measured by
:class:`learnsolve.evaluation.memory.PeakRSS`; None where the reset is unavailable), with glibc's mmap
threshold fixed at 64 KiB so that freed tensors leave the resident set; also ``saved_mb``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from learnsolve.data.generators import GENERATORS
from learnsolve.linalg import SparseMatrix, solve

from .memory import PeakRSS
from .report import _fmt, _md_table, _pyplot, save_figure, write_csv, write_json, write_text

QUALITY_COLUMNS = ["m", "n", "sigma2", "cond", "rhs", "rhs_corr", "mode", "k", "iters", "adjoint_iters",
                   "err_fd", "cos_fd", "err_exact", "cos_exact", "err_values", "bias", "bias_noise", "rel_sd",
                   "time_s", "saved_mb", "fd_err_est"]
MEMORY_COLUMNS = ["n", "iters", "mode", "k", "peak_mb", "saved_mb", "time_s", "forward_iters"]
MODES = ("implicit", "unrolled", "truncated", "stochastic")


class SavedBytes:
    """Context manager counting the distinct storages autograd saves for backward (bytes)."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        self.seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def mb(self) -> float:
        return sum(self.seen.values()) / 2**20


# -------------------------------------------------------------------------------------------------
# quality
# -------------------------------------------------------------------------------------------------

class _Problem:
    def __init__(self, m: int, sigma2: float, rhs: int, seed: int, rhs_corr: float = 0.0):
        data = GENERATORS["diffusion2d"](m, seed=seed, sigma2=float(sigma2))
        A = SparseMatrix.from_pyg(data).detach()
        self.A = A.with_values(A.values.to(torch.float64))
        self.v0 = self.A.values.clone()
        self.sigma2 = float(sigma2)
        self.n = self.A.shape[0]
        g = torch.Generator().manual_seed(seed + 1)
        # columns correlated rhs_corr with a common one (0: independent loads, -> 1: nearly equal ones)
        c = float(rhs_corr)

        def columns():
            common = torch.randn(self.n, 1, generator=g, dtype=torch.float64)
            return (c * common
                    + math.sqrt(1 - c * c) * torch.randn(self.n, rhs, generator=g, dtype=torch.float64))

        self.B, self.W = columns(), columns()
        self.rhs_corr = c
        self.perm = self.A.pattern.transpose()[1]
        self.row = self.A.pattern.row.long().numpy()
        self.col = self.A.pattern.col.long().numpy()
        self.crow = self.A.pattern.crow.long().numpy()
        S = self._scipy(self.v0)
        lmax = float(spla.eigsh(S, k=1, which="LA", return_eigenvectors=False)[0])
        lmin = float(spla.eigsh(S, k=1, sigma=0.0, which="LM", return_eigenvectors=False)[0])
        self.cond = lmax / lmin

    def _scipy(self, v: Tensor):
        import scipy.sparse as sp

        return sp.csr_matrix((v.numpy(), self.col, self.crow), shape=(self.n, self.n))

    def loss_np(self, v: Tensor, B: Tensor) -> float:
        X = spla.splu(self._scipy(v).tocsc()).solve(B.numpy())
        W = self.W.numpy()
        return float((W * X).sum() + 0.5 * (X * X).sum())

    def exact_grad(self) -> Tensor:
        """Symmetrised values gradient and B gradient from scipy's LU (flattened, concatenated)."""
        lu = spla.splu(self._scipy(self.v0).tocsc())
        X = lu.solve(self.B.numpy())
        Lam = lu.solve(self.W.numpy() + X, trans="T")
        gv = -(Lam[self.row] * X[self.col]).sum(1)
        return self.flatten(torch.from_numpy(gv), torch.from_numpy(Lam))

    def flatten(self, gv: Tensor, gb: Tensor) -> Tensor:
        return torch.cat([gv + gv[self.perm], gb.reshape(-1)])

    def loss(self, v: Tensor, B: Tensor, **kw) -> tuple[Tensor, object]:
        X, info = solve(self.A.with_values(v), B, return_info=True, **kw)
        return (self.W * X).sum() + 0.5 * X.square().sum(), info


def _fd_directional(p: _Problem, directions: int, seed: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """(directions dv (D, nnz), dB (D, n, K), FD directional derivatives (D,), max error estimate)."""
    g = torch.Generator().manual_seed(seed + 2)
    dvs, dbs, t, est = [], [], [], 0.0
    # relative step: small against 1/kappa so the Taylor remainder stays below rounding
    h = min(1e-4, 1e-2 / p.cond)
    for _ in range(directions):
        w = torch.randn(p.v0.shape, generator=g, dtype=torch.float64)
        dv = 0.5 * (w + w[p.perm]) * p.v0.abs()  # symmetric, relative to each entry
        db = torch.randn(p.B.shape, generator=g, dtype=torch.float64) * p.B.abs().mean()

        def central(s, dv=dv, db=db):
            return (p.loss_np(p.v0 + s * dv, p.B + s * db) - p.loss_np(p.v0 - s * dv, p.B - s * db)) / (2 * s)

        c1, c2, c4 = central(h), central(h / 2), central(h / 4)
        r1, r2 = (4 * c2 - c1) / 3, (4 * c4 - c2) / 3
        est = max(est, abs(r2 - r1) / max(abs(r2), 1e-300))
        dvs.append(dv)
        dbs.append(db)
        t.append(r2)
    return torch.stack(dvs), torch.stack(dbs), torch.tensor(t, dtype=torch.float64), est


def _compare(x: Tensor, ref: Tensor) -> tuple[float, float]:
    err = float((x - ref).norm() / ref.norm().clamp_min(1e-300))
    cos = float(torch.nn.functional.cosine_similarity(x, ref, dim=0))
    return err, cos


def _timed_grad(p: _Problem, repeats: int, **kw):
    """(gv, gB, forward info, median seconds of forward + backward, saved MB)."""
    times, out = [], None
    for r in range(max(1, repeats)):
        v = p.v0.clone().requires_grad_()
        B = p.B.clone().requires_grad_()
        t0 = time.perf_counter()
        with SavedBytes() as sb:
            loss, info = p.loss(v, B, **kw)
        gv, gB = torch.autograd.grad(loss, (v, B))
        times.append(time.perf_counter() - t0)
        if r == 0:
            out = (gv, gB, info, sb.mb)
    gv, gB, info, mb = out
    return gv, gB, info, statistics.median(times), mb


def _problem_rows(p: _Problem, base: dict, truncations, sample, draws, directions, repeats, seed,
                  progress) -> list[dict]:
    maxiter = 20 * p.n
    dv, dB, t_fd, fd_est = _fd_directional(p, directions, seed)
    exact = p.exact_grad()
    nnz = p.v0.numel()
    head = {"m": round(math.sqrt(p.n)), "n": p.n, "sigma2": p.sigma2, "cond": p.cond, "fd_err_est": fd_est,
            "rhs": p.B.shape[1], "rhs_corr": p.rhs_corr}
    tag = f"m={head['m']} sigma2={p.sigma2:g}"

    def row(mode, k, gv, gB, info, secs, mb, **extra):
        proj = (dv * gv).sum(1) + (dB * gB).sum((1, 2))
        e_fd, c_fd = _compare(proj, t_fd)
        flat = p.flatten(gv, gB)
        e_ex, c_ex = _compare(flat, exact)
        e_v, _ = _compare(flat[:nnz], exact[:nnz])
        adj = getattr(info, "adjoint", None)
        return {**head, "mode": mode, "k": k, "iters": info.niter,
                "adjoint_iters": None if adj is None else adj.niter, "err_fd": e_fd, "cos_fd": c_fd,
                "err_exact": e_ex, "cos_exact": c_ex, "err_values": e_v, "time_s": secs, "saved_mb": mb,
                **extra}

    rows = []
    configs = [("implicit", None, {}), ("unrolled", None, {})]
    configs += [("truncated", int(k), {"unroll_steps": int(k)}) for k in truncations]
    for mode, k, extra in configs:
        if progress:
            progress(f"{tag} {mode}{'' if k is None else f' k={k}'}")
        rows.append(row(mode, k, *_timed_grad(p, repeats, backward=mode, maxiter=maxiter, **base, **extra)))
    if draws > 0:
        if progress:
            progress(f"{tag} stochastic x{draws}")
        gen = torch.Generator().manual_seed(seed + 3)
        flat, secs, first = [], [], None
        for _ in range(int(draws)):
            gv, gB, info, t_s, mb = _timed_grad(p, 1, backward="stochastic", maxiter=maxiter,
                                                adjoint={"sample": sample, "generator": gen}, **base)
            flat.append(p.flatten(gv, gB))
            secs.append(t_s)
            first = first or (gv, gB, info, mb)
        # bias and spread of the values gradient: the shared parameters the estimator is meant for
        F = torch.stack(flat)[:, :nnz]
        ev = exact[:nnz]
        nrm = float(ev.norm())
        sd = float(F.var(0).sum().sqrt()) if len(flat) > 1 else float("nan")
        r = row("stochastic", sample, first[0], first[1], first[2], statistics.median(secs), first[3],
                bias=float((F.mean(0) - ev).norm()) / nrm, bias_noise=sd / nrm / math.sqrt(len(flat)),
                rel_sd=sd / nrm)
        # mean over draws
        r["err_exact"] = statistics.mean(float((f - exact).norm() / exact.norm()) for f in flat)
        r["err_values"] = statistics.mean(float((f[:nnz] - ev).norm()) / nrm for f in flat)
        r["cos_exact"] = statistics.mean(_compare(f, exact)[1] for f in flat)
        rows.append(r)
    return rows


def quality_study(sizes: Sequence[int] = (16, 32, 64), sigma2s: Sequence[float] = (0.0, 1.0, 2.0, 3.0),
                  truncations: Sequence[int] = (1, 10, 50), sample: float = 0.25, draws: int = 32,
                  rhs: int = 8, directions: int = 6, rtol: float = 1e-10, precond: str | None = "jacobi",
                  repeats: int = 3, seed: int = 0, progress: Callable[[str], None] | None = None,
                  rhs_corr: float = 0.0) -> list[dict]:
    """One row per (problem, method); see the module docstring for every column."""
    rows: list[dict] = []
    base = {"method": "cg", "precond": precond, "rtol": rtol}
    for m in sizes:
        for s2 in sigma2s:
            p = _Problem(int(m), float(s2), int(rhs), seed, rhs_corr)
            rows += _problem_rows(p, base, truncations, sample, draws, directions, repeats, seed, progress)
    return rows


def quality_markdown(rows: Sequence[Mapping], meta: Mapping) -> str:
    head = ["m", "sigma2", "kappa", "mode", "k", "iters fwd/adj", "rel err (FD)", "cos (FD)",
            "rel err (exact)", "cos (exact)", "rel err values", "bias / noise", "time ms", "saved MB",
            "FD error est."]
    body = []
    for r in rows:
        adj = "-" if r.get("adjoint_iters") is None else r["adjoint_iters"]
        bias = "-" if r.get("bias") is None else f"{r['bias']:.1e} / {r['bias_noise']:.1e}"
        body.append([str(r["m"]), f"{r['sigma2']:g}", f"{r['cond']:.3g}", r["mode"], _fmt(r.get("k")),
                     f"{r['iters']}/{adj}", _fmt(r["err_fd"], "sci"), f"{r['cos_fd']:.6f}",
                     _fmt(r["err_exact"], "sci"), f"{r['cos_exact']:.6f}", _fmt(r["err_values"], "sci"), bias,
                     _fmt(r["time_s"], "ms"), f"{r['saved_mb']:.2f}", _fmt(r["fd_err_est"], "sci")])
    note = ("Gradients of L = <W, X> + 0.5 ||X||^2, X = A^{-1} B (diffusion2d, K right-hand sides), w.r.t. "
            "A's values and B. FD: central differences with scipy LU along random symmetric directions. "
            "exact: scipy LU adjoint, values gradient symmetrised (rel err values: that part alone). "
            "Stochastic: errors vs exact are means over draws (FD columns: the first draw); bias = ||mean - "
            "exact|| / ||exact|| of the values gradient next to its standard error. saved MB: tensors "
            "autograd kept for backward.")
    return f"# Gradient quality\n\n{json.dumps(dict(meta))}\n\n{note}\n\n" + _md_table(head, body) + "\n"


def plot_quality(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["mode"], r.get("k")) for r in rows}, key=lambda t: (MODES.index(t[0]), t[1] or 0))
    sizes = sorted({r["m"] for r in rows})
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (mode, k) in enumerate(keys):
        label = mode if k is None else f"{mode} {'sample' if mode == 'stochastic' else 'k'}={k:g}"
        for j, m in enumerate(sizes):  # one line per size (points: increasing sigma^2), colour = method
            sel = sorted((r for r in rows if r["mode"] == mode and r.get("k") == k and r["m"] == m),
                         key=lambda r: r["cond"])
            for ax, col in zip(axes, ("err_exact", "time_s")):
                ax.loglog([r["cond"] for r in sel], [max(r[col], 1e-17) for r in sel], marker="o", ms=4,
                          ls=styles[j % len(styles)], color=colors[i % len(colors)],
                          label=label if j == 0 else None)
    for j, m in enumerate(sizes):
        axes[1].plot([], [], ls=styles[j % len(styles)], color="gray", label=f"{m} x {m} grid")
    axes[0].set(xlabel="condition number kappa(A)", ylabel="relative gradient error vs exact",
                title="gradient error vs conditioning")
    axes[1].set(xlabel="condition number kappa(A)", ylabel="forward + backward [s]", title="cost")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(path))


# -------------------------------------------------------------------------------------------------
# memory
# -------------------------------------------------------------------------------------------------

def memory_point(n: int, iters: int, mode: str, k: int = 10, seed: int = 0) -> dict:
    """One measurement in THIS process (call it in a fresh one: see :func:`memory_study`)."""
    m = max(2, round(math.sqrt(n)))
    A = SparseMatrix.from_pyg(GENERATORS["poisson2d"](m, seed=seed)).detach()
    A = A.with_values(A.values.to(torch.float64))
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    w = torch.randn(A.shape[0], generator=g, dtype=torch.float64)
    # rtol 0: CG's recursive residual keeps falling far below machine precision (1e-28 after 760
    # iterations on a 100 x 100 grid), so any positive tolerance would stop some runs early
    kw = {"method": "cg", "precond": None, "rtol": 0.0, "maxiter": int(iters), "on_fail": "ignore",
          "adjoint": {"maxiter": int(iters), "warm_start": False}}
    if mode == "truncated":
        kw["unroll_steps"] = int(k)
    # warm-up (2 iterations, same sizes): lazy initialisation must not count as the solve's memory
    vw = A.values.clone().requires_grad_()
    xw = solve(A.with_values(vw), b, backward=mode, **{**kw, "maxiter": 2, "adjoint": {"maxiter": 2}})
    (w * xw).sum().backward()
    del vw, xw
    v = A.values.clone().requires_grad_()
    bb = b.clone().requires_grad_()
    with PeakRSS() as probe:  # VmHWM reset through /proc/self/clear_refs (learnsolve.evaluation.memory)
        t0 = time.perf_counter()
        with SavedBytes() as sb:
            x, info = solve(A.with_values(v), bb, backward=mode, return_info=True, **kw)
            loss = (w * x).sum()
        loss.backward()
        secs = time.perf_counter() - t0
    peak = probe.growth_kb / 1024 if probe.exact and probe.growth_kb is not None else None
    return {"n": A.shape[0], "iters": int(iters), "mode": mode, "k": int(k) if mode == "truncated" else None,
            "peak_mb": peak, "saved_mb": sb.mb, "time_s": secs, "forward_iters": info.niter}


def memory_study(ns: Sequence[int] = (10_000, 100_000), iters: Sequence[int] = (10, 100, 1000),
                 modes: Sequence[str] = ("implicit", "unrolled", "truncated"), k: int = 10, seed: int = 0,
                 progress: Callable[[str], None] | None = None, timeout: float = 1800) -> list[dict]:
    # a fixed mmap threshold: glibc then serves every block >= 64 KiB by mmap and returns it to the system
    # on free, so the resident set follows the live tensors (with the default adaptive threshold, freed
    # blocks stay resident and the peak of the same run varied by 2x between runs)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows = []
    for n in ns:
        for it in iters:
            for mode in modes:
                if progress:
                    progress(f"n={n} iters={it} {mode}")
                code = ("import json; from learnsolve.evaluation.gradients import memory_point; "
                        f"print(json.dumps(memory_point({int(n)}, {int(it)}, {mode!r}, {int(k)}, "
                        f"{int(seed)})))")
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     timeout=timeout, check=False, env=env)
                if res.returncode != 0:
                    raise RuntimeError(f"memory point n={n} iters={it} mode={mode} "
                                       f"failed:\n{res.stderr[-2000:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def memory_markdown(rows: Sequence[Mapping], meta: Mapping) -> str:
    head = ["n", "iterations", "mode", "peak MB", "saved MB", "time s"]
    body = [[str(r["n"]), str(r["forward_iters"]),
             r["mode"] + ("" if r.get("k") is None else f" (k={r['k']})"), _fmt(r.get("peak_mb"), "g4"),
             f"{r['saved_mb']:.1f}", f"{r['time_s']:.3f}"] for r in rows]
    note = ("Forward + backward of <w, x>, x = solve(A, b) by CG with exactly the given number of iterations "
            "(forward and adjoint), A = 2D Poisson, float64, one fresh process per row. peak MB: peak "
            "resident set during the solve minus the resident set before it (after a 2-iteration warm-up); "
            "saved MB: tensors autograd kept for backward.")
    return f"# Gradient memory\n\n{json.dumps(dict(meta))}\n\n{note}\n\n" + _md_table(head, body) + "\n"


def plot_memory(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n in sorted({r["n"] for r in rows}):
        for mode in [md for md in MODES if any(r["mode"] == md for r in rows)]:
            sel = sorted((r for r in rows if r["n"] == n and r["mode"] == mode), key=lambda r: r["iters"])
            ys = [r["peak_mb"] if r.get("peak_mb") is not None else r["saved_mb"] for r in sel]
            ax.loglog([r["iters"] for r in sel], [max(y, 1e-2) for y in ys], "o-", label=f"n={n} {mode}")
    ax.set(xlabel="CG iterations (forward = adjoint)", ylabel="peak memory of forward + backward [MB]",
           title="memory vs iterations")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def write_study(outdir: str | os.PathLike, name: str, rows: Sequence[Mapping], cols: Sequence[str],
                markdown: str, meta: Mapping) -> dict[str, Path]:
    out = Path(outdir)
    return {"csv": write_csv(out / f"{name}.csv", rows, cols),
            "json": write_json(out / f"{name}.json", rows, meta),
            "md": write_text(out / f"{name}.md", markdown)}


__all__ = ["MEMORY_COLUMNS", "QUALITY_COLUMNS", "SavedBytes", "memory_markdown", "memory_point",
           "memory_study", "plot_memory", "plot_quality", "quality_markdown", "quality_study", "write_study"]
