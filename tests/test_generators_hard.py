"""The hard families (lognormal2d, channels2d, graph_laplacian, anisotropic2d's random / finite-element options):
SPD matrices checked by dense eigenvalues, the coefficient statistics they promise (tolerances from the sample
size), reproducibility, independent references (the Q1 stiffness assembled element by element with Gauss
quadrature, a loop-based finite-volume assembly, the Delaunay graph rebuilt from the points), reference solutions
and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch
from scipy.spatial import ConvexHull, Delaunay

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.data.generators import SYMMETRIC
from learnsolve.data.generators.graphs import graph_laplacian
from learnsolve.data.generators.heterogeneous import channel_field, channels2d, lognormal2d
from learnsolve.data.generators.structured import anisotropic2d, anisotropy_tensor, gaussian_random_field

PI = np.pi
HARD_ANISO = {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"}
# (family, small size, generator keyword arguments): the cases every generic test runs on
CASES = [("lognormal2d", 12, {}), ("lognormal2d", 12, {"corr_len": 0.2}), ("channels2d", 16, {}),
         ("channels2d", 16, {"contrast": [1e2, 1e8]}), ("anisotropic2d", 10, HARD_ANISO),
         ("anisotropic2d", 10, {"stencil": "fe", "epsilon": 1e-4, "theta": 0.7}), ("graph_laplacian", 300, {})]
IDS = [f"{f}-{i}" for i, (f, _, _) in enumerate(CASES)]


def dense(data) -> np.ndarray:
    return to_scipy(data).toarray()


# --------------------------------------------------------------------------------------------- generic


def test_registered_and_symmetric_in_the_registry():
    for family in ("lognormal2d", "channels2d", "graph_laplacian", "anisotropic2d"):
        assert family in GENERATORS and SYMMETRIC[family] is True


@pytest.mark.parametrize(("family", "size", "kw"), CASES, ids=IDS)
def test_symmetric_positive_definite(family, size, kw):
    data = GENERATORS[family](size, seed=3, **kw)
    A = dense(data)
    assert np.array_equal(A, A.T)  # exactly symmetric
    assert data.symmetric is True and data.num_nodes == A.shape[0]
    lam = np.linalg.eigvalsh(A)
    assert lam[0] > 1e-12 * lam[-1] > 0, (lam[0], lam[-1])


@pytest.mark.parametrize(("family", "size", "kw"), CASES, ids=IDS)
def test_same_seed_identical_other_seed_different(family, size, kw):
    a, b, c = (GENERATORS[family](size, seed=s, **kw) for s in (7, 7, 8))
    for key in ("edge_index", "edge_attr", "b", "x", "pos", "feat"):
        assert torch.equal(a[key], b[key]), key
    assert a.params == b.params
    assert not torch.equal(a.b, c.b)
    if kw.get("theta", "random") == "random":  # a random operator (fixed theta and epsilon: only b is random)
        assert a.edge_attr.shape != c.edge_attr.shape or not torch.equal(a.edge_attr, c.edge_attr)


@pytest.mark.parametrize(("family", "size", "kw"), CASES, ids=IDS)
def test_reference_solution_and_reference_false(family, size, kw):
    data = GENERATORS[family](size, seed=1, **kw)
    A, b, x = to_scipy(data), data.b.numpy(), data.x.numpy()
    assert np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)
    bare = GENERATORS[family](size, seed=1, reference=False, **kw)
    assert bare.x is None and "x" not in bare
    for key in ("edge_index", "edge_attr", "b", "pos", "feat"):
        assert torch.equal(data[key], bare[key]), key


def test_channels_reference_is_backward_stable_at_high_contrast():
    """At contrast 1e6 and m = 32, ||b - A x|| / ||b|| is about 4e-11: rounding in A x itself (entries up to
    8e6 m^2) sets that floor; the componentwise backward error shows x is as exact as float64 allows."""
    data = channels2d(32, seed=0)
    A, b, x = to_scipy(data), data.b.numpy(), data.x.numpy()
    r = b - A @ x
    assert np.max(np.abs(r) / (abs(A) @ np.abs(x) + np.abs(b))) < 1e-14


# ------------------------------------------------------------------------------------------- finite volumes


def fv_reference(k: np.ndarray) -> np.ndarray:
    """Cell-centred finite volumes for -div(k grad u), loop over cells: harmonic face means, half-cell
    Dirichlet faces (2 k_P), divided by h^2 (h = 1/m); dense, C-order numbering of k[i, j]."""
    m = k.shape[0]
    A = np.zeros((m * m, m * m))
    for i in range(m):
        for j in range(m):
            p = i * m + j
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ni, nj = i + di, j + dj
                if 0 <= ni < m and 0 <= nj < m:
                    t = 2 * k[i, j] * k[ni, nj] / (k[i, j] + k[ni, nj])
                    A[p, ni * m + nj] -= t * m * m
                else:
                    t = 2 * k[i, j]
                A[p, p] += t * m * m
    return A


@pytest.mark.parametrize("gen", [lognormal2d, channels2d])
def test_finite_volume_matrix_matches_a_loop_assembly(gen):
    data = gen(7, seed=4)
    k = data.feat[:, 1].numpy().reshape(7, 7)
    np.testing.assert_allclose(dense(data), fv_reference(k), rtol=1e-13, atol=0)
    np.testing.assert_allclose(data.pos.numpy()[[0, 1, 7]], [[1 / 14, 1 / 14], [1 / 14, 3 / 14], [3 / 14, 1 / 14]])


# ----------------------------------------------------------------------------------------------- lognormal2d


def test_lognormal2d_iid_cells_have_the_requested_statistics():
    m, sigma2, seed = 64, 4.0, 5
    logk = np.log(lognormal2d(m, seed=seed, sigma2=sigma2, rhs="point").feat[:, 1].numpy()).reshape(m, m)
    # the same numbers straight from numpy: k = exp(sqrt(sigma2) z), z drawn first from default_rng(seed)
    np.testing.assert_allclose(logk, np.sqrt(sigma2) * np.random.default_rng(seed).standard_normal((m, m)),
                               rtol=1e-12, atol=1e-12)
    n = m * m
    # sample variance of n normal draws: standard deviation sigma2 sqrt(2/(n-1)) = 0.088; allow 5 of them
    assert abs(logk.var(ddof=1) - sigma2) < 5 * sigma2 * np.sqrt(2 / (n - 1))
    assert abs(logk.mean()) < 5 * np.sqrt(sigma2 / n)
    # neighbour correlation of independent cells: about N(0, 1 / pairs), pairs = 4032: 5 sd = 0.079
    rho = np.corrcoef(logk[1:].ravel(), logk[:-1].ravel())[0, 1]
    assert abs(rho) < 5 / np.sqrt(m * (m - 1)), rho


def test_lognormal2d_correlated_field_is_diffusion2ds_field():
    m, seed = 64, 2
    logk = np.log(lognormal2d(m, seed=seed, sigma2=1.0, corr_len=0.1).feat[:, 1].numpy()).reshape(m, m)
    grf = gaussian_random_field((m, m), 1.0, 0.1, np.random.default_rng(seed))
    np.testing.assert_allclose(logk, grf, rtol=1e-12, atol=1e-12)
    # squared-exponential correlation at one cell, exp(-(1/64)^2 / (2 * 0.1^2)) = 0.988
    for a, b in ((logk[1:], logk[:-1]), (logk[:, 1:], logk[:, :-1])):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert lognormal2d(8, corr_len=0.1).params == {"m": 8, "sigma2": 4.0, "corr_len": 0.1, "rhs": "random"}


# --------------------------------------------------------------------------------------------- anisotropic2d


def q1_reference(m: int, K: np.ndarray) -> np.ndarray:
    """Bilinear finite elements for -div(K grad u) on the (m+1)^2 square cells of the grid with nodes
    (i h, j h), h = 1/(m+1): each element's 4 x 4 stiffness by 2 x 2 Gauss quadrature of K grad phi . grad phi,
    summed into the (m+2)^2 nodes, restricted to the interior nodes (Dirichlet), divided by h^2 (lumped mass)."""
    h, N = 1.0 / (m + 1), m + 2
    g = np.array([-1, 1]) / np.sqrt(3)  # Gauss points on [-1, 1], weights 1
    corners = [(0, 0), (1, 0), (1, 1), (0, 1)]
    full = np.zeros((N * N, N * N))
    for ei in range(N - 1):
        for ej in range(N - 1):
            ke = np.zeros((4, 4))
            for xi in g:
                for eta in g:
                    # phi_c = (1 + s_c xi)(1 + t_c eta)/4 with s, t = -1 / +1; d/dx = (2/h) d/dxi
                    grads = np.array([[(2 * a - 1) * (1 + (2 * b - 1) * eta) / 4 * 2 / h,
                                       (2 * b - 1) * (1 + (2 * a - 1) * xi) / 4 * 2 / h] for a, b in corners])
                    ke += grads @ K @ grads.T * (h / 2) ** 2
            nodes = [(ei + a) * N + (ej + b) for a, b in corners]
            full[np.ix_(nodes, nodes)] += ke
    inner = [i * N + j for i in range(1, N - 1) for j in range(1, N - 1)]
    return full[np.ix_(inner, inner)] / h**2


@pytest.mark.parametrize(("epsilon", "theta"), [(1.0, 0.0), (0.01, PI / 6), (1e-4, 2.3), ("random", "random")])
def test_anisotropic2d_fe_stencil_is_the_q1_stiffness(epsilon, theta):
    kw = {"epsilon": [1e-4, 1e-1], "theta": "random"} if theta == "random" else {"epsilon": epsilon, "theta": theta}
    m = 5
    data = anisotropic2d(m, seed=9, stencil="fe", **kw)
    K = anisotropy_tensor(data.params["epsilon"], data.params["theta"])
    ref = q1_reference(m, K)
    np.testing.assert_allclose(dense(data), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    assert np.abs(dense(data)[m * 2 + 2]).sum() > 0 and abs(dense(data)[2 * m + 2].sum()) < 1e-9 * ref.max()


def test_anisotropic2d_fe_second_order():
    """Manufactured solution u = sin(pi x) sin(pi y): f = pi^2 (a11 + a22) u - 2 a12 pi^2 cos(pi x) cos(pi y)."""
    eps, theta = 0.05, 0.4
    (a11, a12), (_, a22) = anisotropy_tensor(eps, theta)

    def f(p):
        x, y = p[:, 0], p[:, 1]
        return PI**2 * ((a11 + a22) * np.sin(PI * x) * np.sin(PI * y) - 2 * a12 * np.cos(PI * x) * np.cos(PI * y))

    errs = []
    for m in (15, 31, 63):
        d = anisotropic2d(m, epsilon=eps, theta=theta, stencil="fe", f=f)
        p = d.pos.numpy()
        errs.append(np.abs(d.x.numpy() - np.sin(PI * p[:, 0]) * np.sin(PI * p[:, 1])).max())
    rates = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(3.5 < r < 4.5 for r in rates), (errs, rates)


def test_anisotropic2d_random_theta_and_epsilon_distributions():
    lo, hi = 1e-4, 1e-2
    ps = [anisotropic2d(2, seed=s, theta="random", epsilon=[lo, hi], reference=False).params for s in range(300)]
    theta = np.array([p["theta"] for p in ps])
    eps = np.array([p["epsilon"] for p in ps])
    assert theta.min() >= 0 and theta.max() < PI and eps.min() >= lo and eps.max() <= hi
    # uniform theta over [0, pi): every quarter hit, and a Kolmogorov-Smirnov test (p ~ U(0,1) if uniform)
    assert np.all(np.histogram(theta, bins=4, range=(0, PI))[0] > 0)
    assert scipy.stats.kstest(theta / PI, "uniform").pvalue > 1e-3
    u = (np.log(eps) - np.log(lo)) / (np.log(hi) - np.log(lo))  # log-uniform: u ~ U(0, 1)
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
    assert scipy.stats.kstest((eps - lo) / (hi - lo), "uniform").pvalue < 1e-6  # and not uniform in epsilon
    # draw order: theta first, then epsilon, from default_rng(seed)
    rng = np.random.default_rng(11)
    t, e = rng.uniform(0, PI), np.exp(rng.uniform(np.log(lo), np.log(hi)))
    p = anisotropic2d(4, seed=11, theta="random", epsilon=[lo, hi]).params
    assert (p["theta"], p["epsilon"]) == (t, e)
    assert p == {"m": 4, "epsilon": e, "theta": t, "stencil": "fd", "rhs": "random", "theta_random": True,
                 "epsilon_lo": lo, "epsilon_hi": hi}


def test_anisotropic2d_random_system_is_the_fixed_system_of_its_draws():
    d = anisotropic2d(8, seed=4, **HARD_ANISO)
    fixed = anisotropic2d(8, seed=4, epsilon=d.params["epsilon"], theta=d.params["theta"], stencil="fe")
    assert torch.equal(d.edge_attr, fixed.edge_attr) and torch.equal(d.edge_index, fixed.edge_index)


# ---------------------------------------------------------------------------------------------- channels2d


def test_channels2d_coefficient_takes_exactly_two_values():
    for seed in range(6):
        d = channels2d(48, seed=seed, contrast=1e6, rhs="point")
        k = d.feat[:, 1].numpy()
        assert set(np.unique(k)) == {1.0, 1e6}, seed
        assert d.params["fraction"] == pytest.approx(np.mean(k == 1e6))
        assert 0.02 < d.params["fraction"] < 0.6


def test_channels2d_contrast_range_and_layout():
    lo, hi = 1e2, 1e8
    d = channels2d(16, seed=3, contrast=[lo, hi])
    c = np.exp(np.random.default_rng(3).uniform(np.log(lo), np.log(hi)))  # the first draw
    assert d.params["contrast"] == c and (d.params["contrast_lo"], d.params["contrast_hi"]) == (lo, hi)
    assert set(np.unique(d.feat[:, 1].numpy())) == {1.0, c}
    contrasts = [channels2d(4, seed=s, contrast=[lo, hi], reference=False).params["contrast"] for s in range(200)]
    u = (np.log(contrasts) - np.log(lo)) / (np.log(hi) - np.log(lo))
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
    # the layout is drawn in physical coordinates: the same seed gives the same shapes at every resolution
    f1, f2 = (channel_field(m, np.random.default_rng(0)).mean() for m in (128, 256))
    assert abs(f1 - f2) < 0.02
    # only channels: each is a full row or column band of a single orientation in at least 60% of the domain
    mask = channel_field(64, np.random.default_rng(1), num_channels=1, num_inclusions=0)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert min(len(rows), len(cols)) <= 4 and max(len(rows), len(cols)) >= 0.6 * 64 - 1


# ------------------------------------------------------------------------------------------ graph_laplacian


def test_graph_laplacian_structure_against_an_independent_delaunay():
    n, sigma2 = 2000, 1.0
    d = graph_laplacian(n, seed=2, sigma2=sigma2)
    A = to_scipy(d).tocsr()
    pts = d.pos.numpy()
    assert d.num_nodes == n and pts.shape == (n, 2) and A.shape == (n, n) and d.params["n"] == n
    q = int(np.ceil(np.sqrt(n)))
    strip = np.minimum(np.floor(pts[:, 0] * q), q - 1)
    assert np.all(np.diff(strip) >= 0)  # numbered in x-strips
    # edges from the triangles (not from scipy's neighbour lists, which the generator uses)
    simp = Delaunay(pts).simplices
    e = np.sort(np.concatenate([simp[:, [0, 1]], simp[:, [1, 2]], simp[:, [0, 2]]]), axis=1)
    edges = {tuple(x) for x in np.unique(e, axis=0)}
    boundary = np.minimum(pts, 1 - pts).min(1) < 1 / np.sqrt(n)
    boundary[ConvexHull(pts).vertices] = True
    assert d.params["num_boundary"] == boundary.sum()
    off = sp.triu(A, 1).tocoo()
    found = set(zip(off.row.tolist(), off.col.tolist()))
    expected = {(i, j) for i, j in edges if not boundary[i] and not boundary[j]}
    assert found == expected
    # Dirichlet rows: only the diagonal, b = 0 and x = 0 there
    bidx = np.flatnonzero(boundary)
    assert np.diff(A.indptr)[bidx].max() == 1 and np.all(A.diagonal()[bidx] > 0)
    assert np.all(d.b.numpy()[bidx] == 0) and np.abs(d.x.numpy()[bidx]).max() == 0
    # row sums: zero on interior rows away from the layer, positive (the weight into the layer) next to it
    touches = np.zeros(n, bool)
    for i, j in edges:
        if boundary[i] != boundary[j]:
            touches[i if not boundary[i] else j] = True
    rs = np.asarray(A.sum(1)).ravel()
    away = ~boundary & ~touches
    assert away.sum() > n / 2
    assert np.abs(rs[away]).max() <= 1e-12 * A.diagonal()[away].max()
    assert np.all(rs[~boundary & touches] > 0)
    # weights lognormal: log w ~ N(0, sigma2) on the kept edges (about 5,000)
    logw = np.log(-off.data)
    N = len(logw)
    assert abs(logw.mean()) < 5 * np.sqrt(sigma2 / N)
    assert abs(logw.var(ddof=1) - sigma2) < 5 * sigma2 * np.sqrt(2 / (N - 1))
    assert scipy.stats.kstest(logw / np.sqrt(sigma2), "norm").pvalue > 1e-3


def test_graph_laplacian_unit_weights_at_sigma2_zero_and_point_sources_inside():
    n = 500
    d = graph_laplacian(n, seed=0, sigma2=0.0, rhs="point")
    A = to_scipy(d).tocoo()
    assert np.all(A.data[A.row != A.col] == -1.0)
    pts = d.pos.numpy()
    boundary = np.minimum(pts, 1 - pts).min(1) < 1 / np.sqrt(n)
    boundary[ConvexHull(pts).vertices] = True
    b = d.b.numpy()
    assert np.count_nonzero(b) == 3 and not boundary[b != 0].any()


# --------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("call", "match"), [
    (lambda: lognormal2d(0), "grid size"),
    (lambda: lognormal2d(8, sigma2=-1.0), "sigma2"),
    (lambda: lognormal2d(8, corr_len=-0.1), "corr_len"),
    (lambda: lognormal2d(8, rhs="nope"), "right-hand side"),
    (lambda: anisotropic2d(8, stencil="fv"), "stencil"),
    (lambda: anisotropic2d(8, theta="up"), "theta"),
    (lambda: anisotropic2d(8, theta=float("nan")), "theta"),
    (lambda: anisotropic2d(8, epsilon=[1e-2]), "epsilon"),
    (lambda: anisotropic2d(8, epsilon=[1e-2, 1e-4]), "epsilon"),
    (lambda: anisotropic2d(8, epsilon=-1.0), "epsilon"),
    (lambda: channels2d(8, contrast=0.0), "contrast"),
    (lambda: channels2d(8, contrast=[10.0, 1.0]), "contrast"),
    (lambda: channels2d(8, num_channels=-1), "num_channels"),
    (lambda: channels2d(8, num_inclusions=1.5), "num_inclusions"),
    (lambda: channels2d(8, num_channels=0, num_inclusions=0), "num_channels"),
    (lambda: channels2d(8, width=0.0), "width"),
    (lambda: graph_laplacian(3), r"n \(the number of nodes\)"),
    (lambda: graph_laplacian(100.5), r"n \(the number of nodes\)"),
    (lambda: graph_laplacian(100, sigma2=-1.0), "sigma2"),
    (lambda: graph_laplacian(100, rhs="nope"), "rhs"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
