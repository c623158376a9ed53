"""Finite-element generators: convergence, SPD, rigid-body modes, determinism, mesh validity, timing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from learnsolve.data import to_scipy
from learnsolve.data.generators.fem import (
    GENERATORS,
    elasticity2d,
    fem_poisson,
    make_mesh,
    stiffness_without_bc,
)

PI = np.pi


def _u(xy):
    return np.sin(PI * xy[:, 0]) * np.sin(PI * xy[:, 1])


def _f_const(xy):
    return 2 * PI**2 * _u(xy)


def _k_var(xy):
    return 1.0 + xy[:, 0] ** 2 + 0.5 * xy[:, 1]


def _f_var(xy):
    # -div(k grad u) = -(k_x u_x + k_y u_y) + k 2 pi^2 u
    x, y = xy[:, 0], xy[:, 1]
    ux = PI * np.cos(PI * x) * np.sin(PI * y)
    uy = PI * np.sin(PI * x) * np.cos(PI * y)
    return -(2 * x * ux + 0.5 * uy) + _k_var(xy) * 2 * PI**2 * _u(xy)


def _ones(xy):
    return np.ones(len(xy))


def _order(sizes, k_fn, f):
    errs = []
    for s in sizes:
        d = fem_poisson(s, domain="square", f=f, k_fn=k_fn)
        e = d.x.numpy() - _u(d.pos.numpy())
        errs.append((np.abs(e).max(), np.sqrt(np.mean(e**2))))
    errs = np.array(errs)
    h = 1.0 / np.sqrt(np.asarray(sizes, dtype=float))
    # least-squares slope of log(err) against log(h)
    return [np.polyfit(np.log(h), np.log(errs[:, j]), 1)[0] for j in range(2)], errs


@pytest.mark.parametrize(("k_fn", "f"), [(_ones, _f_const), (_k_var, _f_var)], ids=["k=1", "k=variable"])
def test_fem_poisson_converges_second_order(k_fn, f):
    (order_max, order_l2), errs = _order([100, 400, 1600], k_fn, f)
    print(f"orders: max {order_max:.2f}, rms {order_l2:.2f}; errors {errs.tolist()}")
    assert order_max > 1.5 and order_l2 > 1.5
    assert errs[-1, 0] < 5e-3


def _assert_spd(A: sp.csr_matrix):
    D = A.toarray()
    assert np.abs(D - D.T).max() <= 1e-13 * np.abs(D).max()
    assert np.linalg.eigvalsh(D)[0] > 1e-10 * np.abs(D).max()


@pytest.mark.parametrize("domain", ["random", "square"])
def test_fem_poisson_spd_and_residual(domain):
    for seed in range(3):
        d = fem_poisson(200, seed=seed, domain=domain)
        A = to_scipy(d)
        _assert_spd(A)
        assert d.symmetric and d.family == "fem_poisson"
        b, x = d.b.numpy(), d.x.numpy()
        assert np.linalg.norm(A @ x - b) / np.linalg.norm(b) < 1e-10
        assert d.pos.shape == (d.num_nodes, 2) and d.feat.shape == (d.num_nodes, 3)
        assert torch.all(d.feat[:, 1] > 0)


@pytest.mark.parametrize("rhs", ["random", "smooth", "point"])
def test_elasticity2d_clamped_spd_and_residual(rhs):
    d = elasticity2d(6, seed=1, rhs=rhs)
    A = to_scipy(d)
    assert d.num_nodes == 2 * 6 * 7
    _assert_spd(A)
    b, x = d.b.numpy(), d.x.numpy()
    assert np.linalg.norm(A @ x - b) / np.linalg.norm(b) < 1e-10
    # pos repeats each node for (u_x, u_y); no clamped (x = 0) node remains
    pos = d.pos.numpy()
    assert np.array_equal(pos[0::2], pos[1::2]) and pos[:, 0].min() > 0


def test_elasticity2d_rigid_body_modes():
    m = 5
    d = elasticity2d(m, seed=2, clamp=False)
    K = to_scipy(d)
    assert K.shape == (2 * (m + 1) ** 2,) * 2
    assert torch.all(d.b == 0) and torch.all(d.x == 0)
    K2, nodes, _ = stiffness_without_bc(m, seed=2)
    assert abs(K - K2).max() == 0
    xy = d.pos.numpy()[0::2]
    assert np.array_equal(xy, nodes)
    n = len(xy)
    modes = np.zeros((3, 2 * n))
    modes[0, 0::2] = 1.0
    modes[1, 1::2] = 1.0
    modes[2, 0::2], modes[2, 1::2] = -xy[:, 1], xy[:, 0]
    normK = sp.linalg.norm(K)
    for r in modes:
        assert np.linalg.norm(K @ r) / (normK * np.linalg.norm(r)) < 1e-12
    ev = np.linalg.eigvalsh(K.toarray())
    zero = np.abs(ev) < 1e-10 * ev[-1]
    assert zero.sum() == 3
    assert ev.min() > -1e-10 * ev[-1]  # positive semidefinite


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_determinism(name):
    gen = GENERATORS[name]
    small = {"fem_poisson": {"size": 150}, "elasticity2d": {"m": 5}}[name]
    a, b, c = gen(**small, seed=7), gen(**small, seed=7), gen(**small, seed=8)
    for key in ("edge_index", "edge_attr", "b", "x", "pos", "feat"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.params == b.params and a.seed == 7 and c.seed == 8
    ca, cc = a.feat[:, 1], c.feat[:, 1]
    assert ca.shape != cc.shape or not torch.allclose(ca, cc)


@pytest.mark.parametrize("size", [50, 400, 3000])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_domain_mesh_is_valid(size, seed):
    mesh = make_mesh(size, seed=seed, domain="random")
    p, t = mesh.points, mesh.triangles
    d1, d2 = p[t[:, 1]] - p[t[:, 0]], p[t[:, 2]] - p[t[:, 0]]
    area = 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])
    assert area.min() > 1e-3 * mesh.h**2  # no inverted, zero-area or sliver triangles
    # the triangles tile the polygon exactly: no part of the hull outside it, no holes
    q = mesh.polygon
    poly_area = 0.5 * np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1])
    assert area.sum() == pytest.approx(poly_area, rel=1e-12)
    # every vertex is used, the mesh boundary is exactly the polygon's vertices
    assert np.array_equal(np.unique(t), np.arange(len(p)))
    assert mesh.boundary.sum() == len(q)
    assert 0.5 * size < len(p) < 1.5 * size


def test_square_mesh_boundary():
    mesh = make_mesh(400, seed=0, domain="square")
    on_edge = np.isclose(mesh.points, 0).any(1) | np.isclose(mesh.points, 1).any(1)
    assert np.array_equal(mesh.boundary, on_edge)


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        fem_poisson(100, domain="circle")
    with pytest.raises(ValueError, match="Poisson ratio"):
        elasticity2d(4, nu=0.5)
    with pytest.raises(ValueError, match="right-hand side"):
        elasticity2d(4, rhs="nope")


def test_generation_time():
    t0 = time.perf_counter()
    d = fem_poisson(4096, seed=0)
    t1 = time.perf_counter()
    e = elasticity2d(64, seed=0)
    t2 = time.perf_counter()
    print(f"fem_poisson(4096): n={d.num_nodes} {t1 - t0:.3f} s; elasticity2d(64): n={e.num_nodes} {t2 - t1:.3f} s")
    assert t1 - t0 < 5.0 and t2 - t1 < 5.0
