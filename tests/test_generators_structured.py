"""Structured-grid generators: discretisation accuracy, matrix properties, determinism, GRF statistics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from learnsolve.data import to_scipy
from learnsolve.data.generators.structured import (
    GENERATORS,
    anisotropic2d,
    anisotropy_tensor,
    convdiff2d,
    diffusion2d,
    diffusion3d,
    gaussian_random_field,
    poisson2d,
    poisson3d,
)

PI = np.pi
SMALL = {"poisson2d": 9, "poisson3d": 5, "diffusion2d": 9, "diffusion3d": 5, "anisotropic2d": 9,
         "convdiff2d": 9}


def u2(p):
    return np.sin(PI * p[:, 0]) * np.sin(PI * p[:, 1])


def u3(p):
    return np.sin(PI * p[:, 0]) * np.sin(PI * p[:, 1]) * np.sin(PI * p[:, 2])


def max_error(data, u) -> float:
    return float(np.abs(data.x.numpy() - u(data.pos.numpy())).max())


def ratios(errors):
    return [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]


# ------------------------------------------------------------------------------- manufactured solutions
# Finite differences use h = 1/(m+1) (m = 15, 31, 63 halve h); finite volumes use h = 1/m.


def test_poisson2d_second_order():
    errs = [max_error(poisson2d(m, f=lambda p: 2 * PI**2 * u2(p)), u2) for m in (15, 31, 63)]
    assert all(3.5 < r < 4.5 for r in ratios(errs)), (errs, ratios(errs))


def test_poisson3d_second_order():
    errs = [max_error(poisson3d(m, f=lambda p: 3 * PI**2 * u3(p)), u3) for m in (7, 15)]
    assert 3.5 < ratios(errs)[0] < 4.5, errs


def _k(p):
    return 1.0 + p[:, 0] ** 2 * p[:, 1]


def _f_diffusion(p):
    """-div(k grad u) for u = sin(pi x) sin(pi y), k = 1 + x^2 y."""
    x, y = p[:, 0], p[:, 1]
    ux, uy = PI * np.cos(PI * x) * np.sin(PI * y), PI * np.sin(PI * x) * np.cos(PI * y)
    return -(2 * x * y * ux + x**2 * uy - 2 * PI**2 * _k(p) * u2(p))


def test_diffusion2d_second_order_variable_coefficient():
    systems = [diffusion2d(m, k_fn=_k, f=_f_diffusion) for m in (16, 32, 64)]
    assert np.allclose(systems[0].feat[:, 1].numpy(), _k(systems[0].pos.numpy()))
    errs = [max_error(s, u2) for s in systems]
    assert all(3.5 < r < 4.5 for r in ratios(errs)), (errs, ratios(errs))
    assert systems[0].params["k_fn"] == "_k"


def test_diffusion3d_second_order():
    def k(p):
        return 1.0 + 0.5 * p[:, 2]

    def f(p):  # -div(k grad u) = -(k_z u_z + k Δu)
        uz = PI * np.sin(PI * p[:, 0]) * np.sin(PI * p[:, 1]) * np.cos(PI * p[:, 2])
        return -(0.5 * uz - 3 * PI**2 * k(p) * u3(p))

    errs = [max_error(diffusion3d(m, k_fn=k, f=f), u3) for m in (8, 16)]
    assert 3.5 < ratios(errs)[0] < 4.5, errs


def test_anisotropic2d_second_order():
    K = anisotropy_tensor(0.01, PI / 6)

    def f(p):
        cross = np.cos(PI * p[:, 0]) * np.cos(PI * p[:, 1])
        return PI**2 * ((K[0, 0] + K[1, 1]) * u2(p) - 2 * K[0, 1] * cross)

    errs = [max_error(anisotropic2d(m, epsilon=0.01, theta=PI / 6, f=f), u2) for m in (31, 63)]
    assert 3.5 < ratios(errs)[0] < 4.5, errs


def test_convdiff2d_first_order():
    w = 10.0 * np.array([np.cos(PI / 4), np.sin(PI / 4)])

    def f(p):
        x, y = p[:, 0], p[:, 1]
        return 2 * PI**2 * u2(p) + PI * (w[0] * np.cos(PI * x) * np.sin(PI * y)
                                         + w[1] * np.sin(PI * x) * np.cos(PI * y))

    errs = [max_error(convdiff2d(m, peclet=10.0, angle=PI / 4, f=f), u2) for m in (15, 31, 63)]
    assert all(1.7 < r < 2.3 for r in ratios(errs)), (errs, ratios(errs))


# ------------------------------------------------------------------------------------ matrix properties


@pytest.mark.parametrize("name", ["poisson2d", "poisson3d", "diffusion2d", "diffusion3d", "anisotropic2d"])
def test_symmetric_positive_definite(name):
    data = GENERATORS[name](SMALL[name], seed=3)
    A = to_scipy(data).toarray()
    assert np.abs(A - A.T).max() <= 1e-12 * np.abs(A).max()
    assert data.symmetric
    assert np.linalg.eigvalsh(A).min() > 0


@pytest.mark.parametrize("epsilon,theta", [(1e-3, PI / 4), (1e-2, -PI / 3), (0.5, 2.0), (1.0, 0.0)])
def test_anisotropic2d_spd_over_parameters(epsilon, theta):
    A = to_scipy(anisotropic2d(10, epsilon=epsilon, theta=theta)).toarray()
    assert np.abs(A - A.T).max() <= 1e-12 * np.abs(A).max()
    assert np.linalg.eigvalsh(A).min() > 0


def test_anisotropic2d_stencil_is_9_point():
    A = to_scipy(anisotropic2d(6, theta=PI / 6))
    assert np.diff(A.indptr).max() == 9
    assert np.diff(to_scipy(anisotropic2d(6, theta=0.0)).indptr).max() == 5  # a12 = 0: zeros dropped


def test_convdiff2d_nonsymmetric_m_matrix():
    data = convdiff2d(8, peclet=10.0)
    A = to_scipy(data)
    assert not data.symmetric
    assert abs(A - A.T).max() > 1.0
    off = A - sp.diags(A.diagonal())
    assert off.data.max() <= 0 and A.diagonal().min() > 0
    assert np.all(np.asarray(A.sum(axis=1)).ravel() >= -1e-9 * A.diagonal().max())  # diagonally dominant
    assert np.linalg.inv(A.toarray()).min() >= -1e-12  # M-matrix: nonnegative inverse


def test_poisson2d_matches_kronecker_construction():
    m = 7
    h = 1.0 / (m + 1)
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m)) / h**2
    ref = sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m))
    assert abs(to_scipy(poisson2d(m)) - ref).max() < 1e-9


def test_convdiff2d_matches_kronecker_construction():
    """Independent construction (as in conftest): w = (0.5, 1) * peclet0, upwind for positive velocity."""
    m, p0 = 7, 20.0
    h = 1.0 / (m + 1)
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    conv = sp.diags([-1.0, 1.0], [-1, 0], shape=(m, m))
    I = sp.eye(m)
    ref = (sp.kron(I, T) + sp.kron(T, I)) / h**2 + p0 * (sp.kron(I, conv) + 0.5 * sp.kron(conv, I)) / h
    data = convdiff2d(m, peclet=p0 * np.hypot(0.5, 1.0), angle=np.arctan2(1.0, 0.5))
    assert abs(to_scipy(data) - ref).max() < 1e-8 * abs(ref).max()


# ------------------------------------------------------------------------ every registry entry: the Data


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("rhs", ["random", "smooth", "point"])
def test_system_fields_and_reference_solution(name, rhs):
    m = SMALL[name]
    data = GENERATORS[name](m, seed=1, rhs=rhs)
    d = 3 if name.endswith("3d") else 2
    n = m**d
    assert data.num_nodes == n and data.family == name and data.seed == 1
    assert data.params["m"] == m and data.params["rhs"] == rhs
    assert data.pos.shape == (n, d) and data.b.shape == (n,) and data.x.shape == (n,) and data.feat.shape == (n, 3)
    assert data.pos.min() > 0 and data.pos.max() < 1
    A = to_scipy(data)
    b, x = data.b.numpy(), data.x.numpy()
    assert np.linalg.norm(A @ x - b) / np.linalg.norm(b) < 1e-10
    # edge_index / edge_attr round trip: CSR order, no duplicates, diagonal feature consistent
    coo = A.tocoo()
    assert torch.equal(data.edge_index, torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64)))
    assert torch.equal(data.edge_attr, torch.from_numpy(coo.data))
    keys = data.edge_index[0] * n + data.edge_index[1]
    assert bool((keys[1:] > keys[:-1]).all())
    assert np.array_equal(data.feat[:, 0].numpy(), A.diagonal())
    assert np.array_equal(data.feat[:, 2].numpy(), b)
    assert np.all(A.data != 0)


def test_params_record_family_parameters():
    assert diffusion2d(8, sigma2=0.5, corr_len=0.2).params == {
        "m": 8, "sigma2": 0.5, "corr_len": 0.2, "rhs": "random"}
    assert anisotropic2d(8, epsilon=0.1, theta=0.3).params == {
        "m": 8, "epsilon": 0.1, "theta": 0.3, "stencil": "fd", "rhs": "random"}
    assert convdiff2d(8, peclet=5.0, angle=0.0).params == {"m": 8, "peclet": 5.0, "angle": 0.0, "rhs": "random"}
    assert poisson2d(8, f=u2).params["rhs"] == "custom"


def test_invalid_arguments():
    with pytest.raises(ValueError, match="grid size"):
        poisson2d(0)
    with pytest.raises(ValueError, match="epsilon"):
        anisotropic2d(8, epsilon=0.0)
    with pytest.raises(ValueError, match="right-hand side"):
        diffusion2d(8, rhs="nope")
    with pytest.raises(ValueError, match="positive"):
        diffusion2d(8, k_fn=lambda p: -np.ones(len(p)))
    with pytest.raises(ValueError, match="corr_len"):
        gaussian_random_field((8, 8), 1.0, 0.0, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_identical_tensors(name):
    a, b = (GENERATORS[name](SMALL[name], seed=7) for _ in range(2))
    for key in ("edge_index", "edge_attr", "b", "x", "pos", "feat"):
        assert torch.equal(a[key], b[key]), key
    assert a.params == b.params
    c = GENERATORS[name](SMALL[name], seed=8)
    assert not torch.equal(a.b, c.b)  # random right-hand side depends on the seed


@pytest.mark.parametrize("gen", [diffusion2d, diffusion3d])
def test_different_seed_different_coefficients(gen):
    a, b = gen(6, seed=0), gen(6, seed=1)
    assert not torch.equal(a.feat[:, 1], b.feat[:, 1])
    assert not torch.equal(a.edge_attr, b.edge_attr)
    assert bool((a.feat[:, 1] > 0).all())


# ----------------------------------------------------------------------------------- GRF statistics


def test_grf_variance_and_correlation_length():
    m, sigma2, corr_len = 128, 2.0, 0.1
    lag = round(corr_len * m)  # 13 cells
    expected = np.exp(-0.5 * (lag / m) ** 2 / corr_len**2)  # ~0.60
    var, cov_lag, cov_2lag = [], [], []
    for seed in range(8):
        g = gaussian_random_field((m, m), sigma2, corr_len, np.random.default_rng(seed))
        assert g.shape == (m, m) and g.dtype == np.float64
        var.append(np.mean(g**2))
        cov_lag.append(0.5 * (np.mean(g[lag:] * g[:-lag]) + np.mean(g[:, lag:] * g[:, :-lag])))
        cov_2lag.append(0.5 * (np.mean(g[2 * lag:] * g[:-2 * lag]) + np.mean(g[:, 2 * lag:] * g[:, :-2 * lag])))
    v = np.mean(var)
    assert abs(v / sigma2 - 1) < 0.3, v
    assert abs(np.mean(cov_lag) / v - expected) < 0.12, (np.mean(cov_lag) / v, expected)
    assert abs(np.mean(cov_2lag) / v - expected**4) < 0.12  # Gaussian decay, not exponential


def test_grf_zero_variance_and_1d():
    rng = np.random.default_rng(0)
    assert np.all(gaussian_random_field((5, 4), 0.0, 0.1, rng) == 0)
    g = gaussian_random_field(4096, 1.0, 0.01, rng)
    assert g.shape == (4096,) and abs(g.var() - 1) < 0.2 and abs(g.mean()) < 0.2


def test_diffusion2d_coefficient_is_lognormal_grf():
    logk = np.concatenate([np.log(diffusion2d(64, seed=s, sigma2=0.5, rhs="point").feat[:, 1].numpy())
                           for s in range(6)])
    assert abs(logk.var() / 0.5 - 1) < 0.35 and abs(logk.mean()) < 0.3


# ------------------------------------------------------------------------------------------------ speed


def test_diffusion2d_generation_is_fast():
    times = {}
    for m in (64, 256):
        t0 = time.perf_counter()
        data = diffusion2d(m, seed=0)
        times[m] = time.perf_counter() - t0
        assert data.num_nodes == m * m
    print(f"diffusion2d generation: 64x64 {times[64] * 1e3:.1f} ms, 256x256 {times[256] * 1e3:.1f} ms")
    assert times[256] < 3.0, times  # typically ~0.3 s; loose so that a busy machine does not fail it
