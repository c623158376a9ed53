"""Shared test problems (built with scipy so that references are independent of learnsolve)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

SHARED_MATRICES = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "matrices"
# one epoch on 4 systems of 8x8, no logger, no plots, no final table: a checkpoint to evaluate, export or tune
TINY_TRAIN = ["trainer.max_epochs=1", "data.size=8", "data.num_train=4", "data.num_val=2", "data.num_test=2",
              "data.batch_size=2", "data.progress=false", "trainer.enable_progress_bar=false", "logger=none",
              "callbacks.convergence_curves.every_n_epochs=0", "callbacks.gradient_quality.every_n_epochs=0",
              "report=false", "test=false"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(model, *overrides)``: the ``last.ckpt`` of ``python train.py model=MODEL TINY_TRAIN
    OVERRIDES``, trained once per test session and shared by the xdist workers (a lock file guards the training).
    Tests read it; one that changes a checkpoint copies it first."""
    from filelock import FileLock

    from .cli_runner import run_cli

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder under xdist

    def make(model: str, *overrides: str) -> Path:
        key = hashlib.sha1(repr((model, overrides)).encode()).hexdigest()[:10]
        root = shared / f"tiny_ckpt_{model}_{key}"
        ckpt = root / "run" / "checkpoints" / "last.ckpt"
        with FileLock(f"{root}.lock"):
            if not ckpt.is_file():
                out = run_cli("train", f"model={model}", *TINY_TRAIN, *overrides, f"paths.root_dir={root}",
                              f"hydra.run.dir={root / 'run'}")
                assert out.returncode == 0, out.stderr[-3000:]
        return ckpt

    return make


def diffusion2d(m: int, seed: int = 0, contrast: float = 1.0) -> sp.csr_matrix:
    """SPD 5-point finite-volume diffusion -div(k grad u) on an m x m grid, Dirichlet, k = exp(contrast*g)."""
    rng = np.random.default_rng(seed)
    k = np.exp(contrast * rng.standard_normal((m + 2, m + 2)))
    idx = np.arange(m * m).reshape(m, m)
    rows, cols, vals = [], [], []
    diag = np.zeros((m, m))
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        kf = 2 * k[1:-1, 1:-1] * k[1 + di:m + 1 + di, 1 + dj:m + 1 + dj] / (
            k[1:-1, 1:-1] + k[1 + di:m + 1 + di, 1 + dj:m + 1 + dj])
        diag += kf
        ii, jj = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        ni, nj = ii + di, jj + dj
        ok = (ni >= 0) & (ni < m) & (nj >= 0) & (nj < m)
        rows.append(idx[ii[ok], jj[ok]])
        cols.append(idx[ni[ok], nj[ok]])
        vals.append(-kf[ok])
    rows.append(idx.ravel())
    cols.append(idx.ravel())
    vals.append(diag.ravel())
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m, m * m))


def poisson2d(m: int) -> sp.csr_matrix:
    """The 5-point Poisson matrix (4 on the diagonal, -1 off) on an m x m grid, Dirichlet (Kronecker sum)."""
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    Id = sp.identity(m)
    return (sp.kron(Id, T) + sp.kron(T, Id)).tocsr()


def convdiff2d(m: int, peclet: float = 20.0) -> sp.csr_matrix:
    """Nonsymmetric upwind convection-diffusion on an m x m grid (M-matrix, Dirichlet)."""
    h = 1.0 / (m + 1)
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    conv = sp.diags([-1.0, 1.0], [-1, 0], shape=(m, m))  # upwind for positive velocity
    I = sp.eye(m)
    A = (sp.kron(I, T) + sp.kron(T, I)) / h**2 + peclet * (sp.kron(I, conv) + 0.5 * sp.kron(conv, I)) / h
    return A.tocsr()


def random_spd(n: int, density: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Random symmetric, strictly diagonally dominant sparse matrix (hence SPD), sorted CSR."""
    R = sp.random(n, n, density=density, random_state=rng, format="csr")
    R.data = rng.uniform(-1.0, 1.0, R.nnz)
    S = sp.triu(R, 1)
    S = S + S.T
    rowsum = np.abs(S).sum(axis=1).A.ravel()
    A = (S + sp.diags(rowsum + rng.uniform(0.1, 1.0, n))).tocsr()
    A.eliminate_zeros()
    A.sort_indices()
    return A


def ill_conditioned_spd(n: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b): dense SPD A = Q diag(logspace(0, 8)) Q^T (kappa = 1e8, Q random orthogonal) and a random b."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g))
    A = Q @ torch.diag(torch.logspace(0, 8, n, dtype=torch.float64)) @ Q.T
    return 0.5 * (A + A.T), torch.randn(n, dtype=torch.float64, generator=g)


@pytest.fixture
def spd() -> sp.csr_matrix:
    return diffusion2d(8, seed=1)


@pytest.fixture
def nonsym() -> sp.csr_matrix:
    return convdiff2d(7)


@pytest.fixture
def indefinite() -> sp.csr_matrix:
    A = diffusion2d(6, seed=2)
    return (A - 1.5 * sp.eye(A.shape[0]) * A.diagonal().mean() / 2).tocsr()


def t64(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """The test problems are tiny: with 2 threads torch's parallel kernels mostly add contention
    (measured: a 40x40 CSR product took 8 ms with 2 threads on busy cores, 0.1 ms with 1)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def adam_losses(model: torch.nn.Module, batch, steps: int, lr: float) -> list[float]:
    """Train ``model`` with Adam on one fixed batch for ``steps`` steps; the loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def loss_directional_derivative(model, batch, seed: int = 1, h: float = 1e-5) -> tuple[float, float]:
    """(central difference, autograd) of ``model.training_loss(batch)`` along one seeded random direction in the
    space of all parameters: the independent check of a model's loss gradient."""
    params = list(model.parameters())
    loss, _ = model.training_loss(batch)
    grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    dd = sum(float((gi * vi).sum()) for gi, vi in zip(grads, v))

    def shifted(step):
        with torch.no_grad():
            for p, vi in zip(params, v):
                p.add_(step * vi)
            val = float(model.training_loss(batch)[0])
            for p, vi in zip(params, v):
                p.sub_(step * vi)
        return val

    return (shifted(h) - shifted(-h)) / (2 * h), dd


def perturb_output_layers(model, layers, seed: int = 0, scale: float = 0.3):
    """Add seeded noise to zero-initialised output layers (so every parameter gets a non-trivial gradient)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in layers:
            lin.weight.add_(scale * torch.randn(lin.weight.shape, generator=g, dtype=lin.weight.dtype))
            lin.bias.add_(scale * torch.randn(lin.bias.shape, generator=g, dtype=lin.bias.dtype))
    return model


def adapter_system(sym: bool, rng: np.random.Generator, m: int = 6) -> sp.coo_matrix:
    """The framework-adapter tests' system, scipy COO sorted row-major (as tf.sparse wants): a shifted 2-D
    Laplacian (SPD), or with a convection term and randomly scaled entries (nonsymmetric)."""
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    A = sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m)) + 0.3 * sp.eye(m * m)
    if not sym:
        C = sp.diags([-0.4, 0.4], [-1, 1], shape=(m, m))
        A = A + sp.kron(sp.eye(m), C) + 0.5 * sp.kron(C, sp.eye(m))
    A = A.tocsr().tocoo()
    if not sym:
        A.data = A.data * (1 + 0.1 * rng.random(A.nnz))
    return A
