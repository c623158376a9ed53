"""learnsolve.jax.solve against jnp.linalg.differentiable.solve and its autodiff (float64): SPD and nonsymmetric systems, BCOO /
dense / matvec operators, both backends, jit, vmap, double backward, errors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install -e '.[jax]')")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from learnsolve.jax import solve
from learnsolve.linalg import ConvergenceError, ConvergenceWarning

from .conftest import adapter_system

N = 6  # grid side: n = 36


def _system(sym: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    return adapter_system(sym, rng, N), rng.standard_normal(N * N)


def _bcoo(A):
    return jsparse.BCOO((jnp.asarray(A.data), jnp.asarray(np.stack([A.row, A.col], 1))), shape=A.shape)


def _dense_from(data, A):
    return jnp.zeros(A.shape).at[A.row, A.col].add(data)


def _loss(x):
    return jnp.sum(jnp.sin(x) * jnp.arange(1.0, x.shape[0] + 1))


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


CASES = [(True, "cg", None, "jax"), (True, "cg", "jacobi", "jax"), (False, "bicgstab", "jacobi", "jax"),
         (False, "gmres", None, "jax"), (True, "cg", "ic0", "torch"), (False, "gmres", "ilu0", "torch"),
         (False, "bicgstab", "ilu0", "torch")]


@pytest.mark.parametrize("sym,method,precond,backend", CASES)
def test_solution_and_gradients_match_dense_autodiff(sym, method, precond, backend):
    A, b = _system(sym)
    data, bj = jnp.asarray(A.data), jnp.asarray(b)
    idx = jnp.asarray(np.stack([A.row, A.col], 1))

    def ours(d, bb):
        M = jsparse.BCOO((d, idx), shape=A.shape)
        return _loss(solve(M, bb, method=method, precond=precond, backend=backend, rtol=1e-13))

    def ref(d, bb):
        return _loss(jnp.linalg.solve(_dense_from(d, A), bb))

    x = solve(_bcoo(A), bj, method=method, precond=precond, backend=backend, rtol=1e-13)
    assert _rel(x, jnp.linalg.solve(jnp.asarray(A.toarray()), bj)) < 1e-10
    g = jax.grad(ours, argnums=(0, 1))(data, bj)
    gr = jax.grad(ref, argnums=(0, 1))(data, bj)
    assert g[0].shape == (A.nnz,)  # O(nnz): a gradient per stored value
    assert _rel(g[0], gr[0]) < 1e-8 and _rel(g[1], gr[1]) < 1e-8
    gj = jax.jit(jax.grad(ours, argnums=(0, 1)))(data, bj)
    assert _rel(gj[0], gr[0]) < 1e-8 and _rel(gj[1], gr[1]) < 1e-8
    if backend == "jax":  # the pattern itself a jit argument (traced indices): the segment-sum operator
        def traced(d, ix, bb):
            return _loss(solve(jsparse.BCOO((d, ix), shape=A.shape), bb, method=method, precond=precond, rtol=1e-13))

        gt = jax.jit(jax.grad(traced, argnums=(0, 2)))(data, idx, bj)
        assert _rel(gt[0], gr[0]) < 1e-8 and _rel(gt[1], gr[1]) < 1e-8


@pytest.mark.parametrize("sym,method", [(True, "cg"), (False, "gmres")])
def test_dense_and_matvec_operators(sym, method):
    A, b = _system(sym, seed=1)
    Ad, bj = jnp.asarray(A.toarray()), jnp.asarray(b)
    ref = jax.grad(lambda M, bb: _loss(jnp.linalg.solve(M, bb)), argnums=(0, 1))(Ad, bj)
    g = jax.grad(lambda M, bb: _loss(solve(M, bb, method=method, rtol=1e-13)), argnums=(0, 1))(Ad, bj)
    assert _rel(g[0], ref[0]) < 1e-8 and _rel(g[1], ref[1]) < 1e-8

    # a matvec with parameters: A(theta) = theta[0] * L + diag(theta[1:])
    L = jnp.asarray((A - sp.diags(A.diagonal())).toarray())
    theta = jnp.concatenate([jnp.ones(1), jnp.asarray(A.diagonal())])

    def mv(t, x):
        return t[0] * (L @ x) + t[1:] * x

    def dense(t):
        return t[0] * L + jnp.diag(t[1:])

    gm = jax.grad(lambda t: _loss(solve(mv, bj, params=t, method=method, rtol=1e-13)))(theta)
    gref = jax.grad(lambda t: _loss(jnp.linalg.solve(dense(t), bj)))(theta)
    assert _rel(gm, gref) < 1e-8
    # the same operator as a closure over traced values (hoisted by closure conversion, still differentiated)
    gc = jax.jit(jax.grad(lambda t: _loss(solve(lambda x: mv(t, x), bj, method=method, rtol=1e-13))))(theta)
    assert _rel(gc, gref) < 1e-8


def test_vmap_over_b_and_over_matrices():
    A, _ = _system(False, seed=2)
    Bm = jnp.asarray(np.random.default_rng(3).standard_normal((5, A.shape[0])))
    Ad = jnp.asarray(A.toarray())
    ref = jnp.linalg.solve(Ad, Bm.T).T
    for backend, precond in (("jax", "jacobi"), ("torch", "ilu0")):
        f = jax.jit(jax.vmap(partial(solve, _bcoo(A), method="bicgstab", precond=precond, backend=backend,
                                     rtol=1e-12)))
        assert _rel(f(Bm), ref) < 1e-9
    # a batch of matrices (values vmapped, one pattern) through the torch backend, with gradients
    idx = jnp.asarray(np.stack([A.row, A.col], 1))
    datas = jnp.asarray(A.data)[None] * jnp.linspace(1.0, 2.0, 5)[:, None]

    def loss(d, bb, backend):
        return _loss(solve(jsparse.BCOO((d, idx), shape=A.shape), bb, method="gmres", backend=backend, rtol=1e-13))

    gr = jax.vmap(jax.grad(lambda d, bb: _loss(jnp.linalg.solve(_dense_from(d, A), bb))))(datas, Bm)
    gr1 = jax.vmap(jax.grad(lambda d: _loss(jnp.linalg.solve(_dense_from(d, A), Bm[0]))))(datas)
    for backend in ("jax", "torch"):
        g = jax.vmap(jax.grad(loss), in_axes=(0, 0, None))(datas, Bm, backend)
        assert _rel(g, gr) < 1e-8
        g1 = jax.vmap(jax.grad(loss), in_axes=(0, None, None))(datas, Bm[0], backend)  # matrices only
        assert _rel(g1, gr1) < 1e-8


def test_double_backward_matches_dense():
    A, b = _system(True, seed=4)
    data, bj = jnp.asarray(A.data), jnp.asarray(b)
    idx = jnp.asarray(np.stack([A.row, A.col], 1))
    v = jnp.asarray(np.random.default_rng(5).standard_normal(A.nnz))

    def hvp(f):
        return jax.grad(lambda d: jnp.vdot(jax.grad(f)(d), v))(data)

    ours = hvp(lambda d: _loss(solve(jsparse.BCOO((d, idx), shape=A.shape), bj, rtol=1e-13)))
    ref = hvp(lambda d: _loss(jnp.linalg.solve(_dense_from(d, A), bj)))
    assert _rel(ours, ref) < 1e-7


def test_nonconvergence_is_never_silent():
    A, b = _system(True)
    M, bj = _bcoo(A), jnp.asarray(b)
    with pytest.raises(ConvergenceError, match="did not converge.*maxiter"):
        solve(M, bj, maxiter=3)
    with pytest.warns(ConvergenceWarning):
        _x, info = solve(M, bj, maxiter=3, on_fail="warn", return_info=True)
    assert not bool(info.converged) and int(info.iterations) == 3 and int(info.status) == 1
    with pytest.raises(Exception, match="did not converge"):  # from inside jit, through a debug callback
        jax.block_until_ready(jax.jit(lambda bb: solve(M, bb, maxiter=3))(bj))
    with pytest.raises(ConvergenceError, match="adjoint solve"):  # the adjoint has its own budget check
        _adjoint_fails(bj.shape[0])
    # CG on an indefinite matrix is a breakdown, named
    with pytest.raises(ConvergenceError, match="not positive definite"):
        solve(jnp.diag(jnp.asarray([1.0, -1.0, 2.0])), jnp.ones(3))


def _adjoint_fails(n):
    """A forward that converges in one iteration (b is an eigenvector) and an adjoint that cannot in two."""
    e = jnp.zeros(n).at[0].set(1.0)
    A = jnp.diag(jnp.arange(1.0, n + 1))
    return jax.grad(lambda bb: jnp.vdot(solve(A, bb, maxiter=2), jnp.ones(n)))(e)


def test_errors_name_the_argument():
    A, b = _system(True)
    M, bj = _bcoo(A), jnp.asarray(b)
    with pytest.raises(ValueError, match="method"):
        solve(M, bj, method="lsqr")
    with pytest.raises(ValueError, match="precond.*backend='torch'"):
        solve(M, bj, precond="ic0")
    with pytest.raises(ValueError, match="b: A is 36 x 36 but b has 5"):
        solve(M, bj[:5])
    with pytest.raises(ValueError, match="b: a vector"):
        solve(M, jnp.ones((36, 2)))
    with pytest.raises(ValueError, match="A: a square"):
        solve(jnp.ones((3, 4)), jnp.ones(3))
    with pytest.raises(TypeError, match="dtypes differ"):
        solve(M, bj.astype(jnp.float32))
    with pytest.raises(ValueError, match="backend"):
        solve(M, bj, backend="numpy")
    with pytest.raises(ValueError, match="needs A as a BCOO"):
        solve(lambda x: x, bj, backend="torch")
    with pytest.raises(ValueError, match="jacobi.*diagonal"):
        solve(lambda x: 2 * x, bj, precond="jacobi")


@pytest.mark.parametrize("sym,method,backend,precond", [(True, "cg", "jax", "jacobi"), (False, "gmres", "jax", None),
                                                        (False, "bicgstab", "torch", "ilu0")])
def test_forward_mode_with_linear_solve(sym, method, backend, precond):
    """diff="linear_solve": jax.jvp, reverse mode and forward-over-reverse against jnp.linalg.differentiable.solve."""
    A, b = _system(sym, seed=6)
    data, bj = jnp.asarray(A.data), jnp.asarray(b)
    idx = jnp.asarray(np.stack([A.row, A.col], 1))

    def ours(d, bb):
        return solve(jsparse.BCOO((d, idx), shape=A.shape), bb, method=method, precond=precond, backend=backend,
                     rtol=1e-13, diff="linear_solve")

    def ref(d, bb):
        return jnp.linalg.solve(_dense_from(d, A), bb)

    rng = np.random.default_rng(7)
    t = (jnp.asarray(rng.standard_normal(A.nnz)), jnp.asarray(rng.standard_normal(A.shape[0])))
    assert _rel(jax.jit(lambda d, bb: jax.jvp(ours, (d, bb), t)[1])(data, bj), jax.jvp(ref, (data, bj), t)[1]) < 1e-8
    g, gr = (jax.grad(lambda d, bb, f=f: _loss(f(d, bb)), argnums=(0, 1))(data, bj) for f in (ours, ref))
    assert _rel(g[0], gr[0]) < 1e-8 and _rel(g[1], gr[1]) < 1e-8
    h, hr = (jax.jvp(lambda bb, f=f: jax.grad(lambda c: _loss(f(data, c)))(bb), (bj,), (t[1],))[1] for f in (ours, ref))
    assert _rel(h, hr) < 1e-8
    with pytest.raises(ValueError, match="x0: not supported"):
        solve(_bcoo(A), bj, x0=bj, diff="linear_solve")
    with pytest.raises(ValueError, match="diff"):
        solve(_bcoo(A), bj, diff="jvp")
