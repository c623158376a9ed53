"""learnsolve.tensorflow.solve against tf.linalg.differentiable.solve and its autodiff (float64): SPD and nonsymmetric systems,
SparseTensor and dense A, one or several right-hand sides, eager and tf.function, errors."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install -e '.[tf]')")

from learnsolve.linalg import ConvergenceError, ConvergenceWarning
from learnsolve.tensorflow import solve

from .conftest import adapter_system

N = 6


def _system(sym: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    return adapter_system(sym, rng, N), rng


def _sparse(values, A):
    return tf.sparse.SparseTensor(np.stack([A.row, A.col], 1).astype(np.int64), values, A.shape)


def _loss(x):
    w = tf.reshape(tf.range(1, tf.size(x) + 1, dtype=x.dtype), x.shape)
    return tf.reduce_sum(tf.sin(x) * w)


def _rel(a, b):
    return float(tf.norm(a - b) / tf.norm(b))


CASES = [(True, "cg", None, 1), (True, "cg", "ic0", 3), (False, "bicgstab", "ilu0", 1), (False, "gmres", "jacobi", 2)]


@pytest.mark.parametrize("sym,method,precond,k", CASES)
def test_gradients_match_dense_autodiff_eager_and_graph(sym, method, precond, k):
    A, rng = _system(sym)
    values = tf.constant(A.data)
    b = tf.constant(rng.standard_normal((A.shape[0], k)) if k > 1 else rng.standard_normal(A.shape[0]))

    def ours(v, bb):
        return _loss(solve(_sparse(v, A), bb, method=method, precond=precond, rtol=1e-13))

    def ref(v, bb):
        dense = tf.sparse.to_dense(_sparse(v, A))
        x = tf.linalg.solve(dense, bb if k > 1 else bb[:, None])
        return _loss(x if k > 1 else x[:, 0])

    def grads(f, v, bb):
        with tf.GradientTape() as tape:
            tape.watch([v, bb])
            y = f(v, bb)
        return tape.gradient(y, [v, bb])

    gr = grads(ref, values, b)
    for fn in (grads, tf.function(grads)):
        g = fn(ours, values, b)
        assert g[0].shape == (A.nnz,)
        assert _rel(g[0], gr[0]) < 1e-8 and _rel(g[1], gr[1]) < 1e-8
    x = solve(_sparse(values, A), b, method=method, precond=precond, rtol=1e-13)
    xr = np.linalg.solve(A.toarray(), b.numpy())
    assert np.linalg.norm(x.numpy() - xr) / np.linalg.norm(xr) < 1e-10


def test_dense_operator_and_info():
    A, rng = _system(False, seed=1)
    Ad = tf.constant(A.toarray())
    b = tf.constant(rng.standard_normal(A.shape[0]))
    with tf.GradientTape() as tape:
        tape.watch([Ad, b])
        x, info = solve(Ad, b, method="gmres", rtol=1e-13, return_info=True)
        y = _loss(x)
    g = tape.gradient(y, [Ad, b])
    with tf.GradientTape() as tape:
        tape.watch([Ad, b])
        y = _loss(tf.linalg.solve(Ad, b[:, None])[:, 0])
    gr = tape.gradient(y, [Ad, b])
    assert _rel(g[0], gr[0]) < 1e-8 and _rel(g[1], gr[1]) < 1e-8
    assert bool(info.converged) and int(info.iterations) > 0
    assert float(info.residual_norm) <= 1e-13 * float(info.b_norm) * 1.0001


def test_nonconvergence_is_never_silent():
    A, rng = _system(True)
    S = _sparse(tf.constant(A.data), A)
    b = tf.constant(rng.standard_normal(A.shape[0]))
    with pytest.raises(ConvergenceError, match="forward solve did not converge"):
        solve(S, b, maxiter=2)
    with pytest.warns(ConvergenceWarning):
        _, info = solve(S, b, maxiter=2, on_fail="warn", return_info=True)
    assert not bool(info.converged) and int(info.iterations) == 2
    with pytest.raises(Exception, match="forward solve did not converge"):  # inside tf.function
        tf.function(lambda bb: solve(S, bb, maxiter=2))(b)
    # the adjoint's own check: b an eigenvector of a diagonal A (forward: 1 iteration), the adjoint needs n
    D = tf.linalg.diag(tf.range(1.0, 11.0, dtype=tf.float64))
    e = tf.one_hot(0, 10, dtype=tf.float64)
    with pytest.raises(ConvergenceError, match="adjoint solve did not converge"):
        with tf.GradientTape() as tape:
            tape.watch(e)
            y = tf.reduce_sum(solve(D, e, maxiter=2))
        tape.gradient(y, e)


def test_errors_name_the_argument():
    A, rng = _system(True)
    S = _sparse(tf.constant(A.data), A)
    b = tf.constant(rng.standard_normal(A.shape[0]))
    with pytest.raises(ValueError, match="method"):
        solve(S, b, method="lsqr")
    with pytest.raises(ValueError, match="precond"):
        solve(S, b, precond="ilu1")
    with pytest.raises(ValueError, match="b: A is 36 x 36 but b has 5 rows"):
        solve(S, b[:5])
    with pytest.raises(ValueError, match="A: a square"):
        solve(tf.ones((3, 4), tf.float64), tf.ones(3, tf.float64))
    with pytest.raises(TypeError, match="dtypes differ"):
        solve(S, tf.cast(b, tf.float32))
    with pytest.raises(TypeError, match="b: a real floating-point"):
        solve(S, tf.ones(36, tf.int32))
    with pytest.raises(TypeError, match="options"):
        solve(S, b, restart=5)
