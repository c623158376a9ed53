"""Property tests of ``learnsolve.linalg.solve``'s input boundary: every generated input ends in an answer whose true
residual (numpy, float64) meets the tolerance, a reported non-convergence, or a specific error naming what is wrong;
never an error from deep inside, never a silent wrong x. Each property runs a few dozen examples here and 1,000 in
its ``slow`` twin (``pytest -m slow``); the deterministic regression tests below pin the defects the properties found.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import strategies as st

from learnsolve.linalg import SparseMatrix, solve
from learnsolve.linalg.differentiable.solve import ALL_METHODS, ConvergenceError, ConvergenceWarning
from learnsolve.linalg.preconditioners.base import FactorizationError
from learnsolve.linalg.preconditioners.classical import PRECONDITIONERS
from learnsolve.linalg.solvers.direct import SingularMatrixError

from .fuzz import twins

F64, F32 = torch.float64, torch.float32
PRECONDS = (None, "jacobi", "ic0", "mic0", "ilu0", "amg")
# the errors a solve may end in: a reported non-convergence, a singular factorisation, a refused input
REPORTED = (ConvergenceError, SingularMatrixError, FactorizationError, ValueError, TypeError)


def _matrix(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    Q = rng.standard_normal((n, n))
    if kind == "spd":
        return Q @ Q.T / n + np.eye(n)
    if kind == "nonsym":
        return Q + (2.0 * np.sqrt(n)) * np.eye(n)
    if kind == "indef":
        U, _ = np.linalg.qr(Q)
        return U @ np.diag(rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)) @ U.T
    if kind == "illcond":
        U, _ = np.linalg.qr(Q)
        return U @ np.diag(np.logspace(0, 9, n)) @ U.T
    A = Q @ Q.T  # singular: one row and column zeroed
    A[0, :] = 0.0
    A[:, 0] = 0.0
    return A


def _as_format(A: np.ndarray, fmt: str, dtype: torch.dtype, batched: bool):
    """A (B, n, n) float64 array as the solver input of format ``fmt`` (batched only for dense / SparseMatrix)."""
    t = torch.from_numpy(A).to(dtype)
    if fmt == "dense":
        return t if batched else t[0]
    if fmt == "sparse":
        return SparseMatrix.from_dense(t if batched else t[0])
    if fmt == "torch_coo":
        return t[0].to_sparse()
    if fmt == "torch_csr":
        return t[0].to_sparse_csr()
    return sp.csr_matrix(A[0]).astype(np.float32 if dtype == F32 else np.float64)


def _norm(v: np.ndarray, axis) -> np.ndarray:
    """2-norm without overflow or underflow (numpy's squares its entries: 1e160 -> inf)."""
    m = np.abs(v).max(axis=axis, keepdims=True)
    safe = np.where(m > 0, m, 1.0)
    return (safe * np.sqrt(np.sum((v / safe) ** 2, axis=axis, keepdims=True))).squeeze(axis)


def _residuals(A3: np.ndarray, b3: np.ndarray, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(relative true residual, rounding slack) per system of canonical (B, n, k) blocks, in float64; each system
    is divided by its max |b| first (a power of two) so that A x neither overflows nor underflows here."""
    s = 2.0 ** np.ceil(np.log2(np.maximum(np.abs(b3).max(axis=1, keepdims=True), 1e-320)))
    b3, x3 = b3 / s, x3 / s
    R = b3 - np.einsum("bij,bjk->bik", A3, x3)
    bn = _norm(b3, 1)
    an = np.linalg.norm(A3, axis=(1, 2))[:, None]
    rel = _norm(R, 1) / np.where(bn > 0, bn, 1.0)
    return rel.reshape(-1), ((an * _norm(x3, 1) + bn) / np.where(bn > 0, bn, 1.0)).reshape(-1)


def _check_reported(e: BaseException) -> None:
    assert isinstance(e, REPORTED), f"{type(e).__name__} from inside the solver: {e}"
    assert str(e).strip(), f"{type(e).__name__} without a message"


# ------------------------------------------------------------------------------------------------
# property: answers of accepted systems meet their tolerance (or their failure is reported)
# ------------------------------------------------------------------------------------------------

def _prop_solutions_meet_their_tolerance(data):
    n = data.draw(st.integers(1, 12), label="n")
    kind = data.draw(st.sampled_from(["spd", "nonsym", "indef", "illcond", "singular"]), label="kind")
    dtype = data.draw(st.sampled_from([F64, F32]), label="dtype")
    fmt = data.draw(st.sampled_from(["dense", "sparse", "torch_coo", "torch_csr", "scipy"]), label="format")
    layouts = ["vec", "mat", "batch_rhs"] + (["batch_vec", "batch_mat", "shared_b"] if fmt in ("dense", "sparse") else [])
    layout = data.draw(st.sampled_from(layouts), label="layout")
    method = data.draw(st.sampled_from(ALL_METHODS), label="method")
    precond = None if method == "direct" else data.draw(st.sampled_from(PRECONDS), label="precond")
    rtol = data.draw(st.none() | st.floats(1e-8, 0.5), label="rtol")
    scale = 10.0 ** data.draw(st.integers(-250, 250) if dtype == F64 else st.integers(-30, 30), label="log10|b|")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    B = data.draw(st.integers(1, 3), label="B") if layout.startswith(("batch", "shared")) else 1
    k = data.draw(st.integers(1, 3), label="k") if layout in ("mat", "batch_rhs", "batch_mat") else 1
    batched_A = layout in ("batch_vec", "batch_mat", "shared_b")
    A = np.stack([_matrix(kind, n, rng) for _ in range(B if batched_A else 1)])
    b3 = scale * rng.standard_normal((B, n, k))
    if layout == "shared_b":
        b3 = np.broadcast_to(b3[:1], (B, n, 1)).copy()
    b = {"vec": b3[0, :, 0], "mat": b3[0], "batch_vec": b3[..., 0], "shared_b": b3[0, :, 0]}.get(layout, b3)
    on_fail = data.draw(st.sampled_from(["ignore", "raise"]), label="on_fail")
    try:
        x, info = solve(_as_format(A, fmt, dtype, batched_A), torch.from_numpy(np.ascontiguousarray(b)).to(dtype),
                        method=method, precond=precond, rtol=rtol, on_fail=on_fail, return_info=True)
    except REPORTED as e:
        _check_reported(e)
        well_posed = kind == "spd" and precond in (None, "jacobi") and method not in ("bicgstab",)
        if isinstance(e, ConvergenceError) and well_posed and (dtype == F64 or rtol is None or rtol >= 1e-4):
            raise AssertionError(f"a well-conditioned SPD system did not converge: {e}") from e
        return
    expect = {"vec": (n,), "mat": (n, k), "batch_vec": (B, n), "shared_b": (B, n)}.get(layout, (B, n, k))
    assert tuple(x.shape) == expect and x.dtype == dtype
    x3 = x.detach().double().numpy().reshape(-1, n, k) if layout != "shared_b" else \
        x.detach().double().numpy()[..., None]
    A3 = np.broadcast_to(torch.from_numpy(A).to(dtype).double().numpy(), (x3.shape[0], n, n))
    b3c = torch.from_numpy(b3).to(dtype).double().numpy()
    rel, slack = _residuals(A3, b3c, x3)
    conv = info.converged.reshape(-1).numpy()
    assert conv.shape == rel.shape
    if on_fail == "raise":
        assert conv.all()
    eps = torch.finfo(dtype).eps
    tol = (1e-10 if dtype == F64 else 1e-5) if rtol is None else rtol
    if method == "direct":
        tol = max(tol, eps ** 0.5)
    bound = 1.01 * tol + 30 * n * eps * slack
    assert np.all(np.isfinite(x3).all(axis=1).reshape(-1)[conv]), "a converged system returned NaN/Inf"
    assert np.all(rel[conv] <= bound[conv]), f"converged with relative residual {rel[conv].max():.3e} > {tol:.1e}"


test_solutions_meet_their_tolerance, test_solutions_meet_their_tolerance_slow = twins(
    _prop_solutions_meet_their_tolerance, 40)


# ------------------------------------------------------------------------------------------------
# property: a bad argument is refused with an error that names it
# ------------------------------------------------------------------------------------------------

_NOT_A_NUMBER = st.sampled_from(["1e-6", None, True, 1j, [1e-6], object()])
BAD = {
    "rtol": st.floats(allow_nan=True).filter(lambda v: not 0 <= v < 1) | _NOT_A_NUMBER.filter(lambda v: v is not None),
    "atol": st.floats(max_value=-1e-300) | st.sampled_from([float("nan"), float("inf")]) | _NOT_A_NUMBER,
    "maxiter": st.integers(max_value=-1) | st.floats().filter(lambda v: not float(v).is_integer())
    | st.sampled_from(["10", True, 1j, float("inf"), float("nan")]),
    "method": st.text(max_size=6).filter(lambda s: s not in ALL_METHODS) | st.sampled_from([None, 3, "CG"]),
    "precond": st.text(min_size=1, max_size=6).filter(lambda s: s not in PRECONDITIONERS) | st.sampled_from([3, 2.5]),
    "x0": st.sampled_from(["f32", "shape", "nan", "list", "int"]),
    "restart": st.integers(max_value=0) | st.sampled_from([1.5, "5", None, True]),
    "backward": st.text(max_size=6).filter(lambda s: s not in ("implicit", "unrolled", "truncated", "stochastic")),
    "on_fail": st.text(max_size=6).filter(lambda s: s not in ("raise", "warn", "ignore")),
    "adjoint": st.sampled_from([3, "x", {"rtol": 2.0}, {"maxiter": -1}, {"atol": -1.0}, {"nope": 1}]),
}
NAMES = {"backward": "backward mode"}


def _prop_bad_arguments_are_named(data):
    n = data.draw(st.integers(1, 8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dtype = data.draw(st.sampled_from([F64, F32]))
    A = torch.from_numpy(_matrix("spd", n, rng)).to(dtype)
    b = torch.from_numpy(rng.standard_normal(n)).to(dtype)
    arg = data.draw(st.sampled_from(sorted(BAD)), label="argument")
    value = data.draw(BAD[arg], label="value")
    kwargs = {"method": "gmres"} if arg == "restart" else {}
    if arg == "x0":
        value = {"f32": b.to(F32 if dtype == F64 else F64), "shape": torch.zeros(n + 1, dtype=dtype),
                 "nan": torch.full_like(b, float("nan")), "list": b.tolist(), "int": b.long()}[value]
    if arg == "adjoint":
        A.requires_grad_(True)
    with pytest.raises((TypeError, ValueError)) as e:
        x = solve(A, b, **{**kwargs, arg: value})
        if arg == "adjoint":  # checked before the solve runs: backward would be too late
            x.sum().backward()
    name = NAMES.get(arg, arg)
    assert name in str(e.value), str(e.value)


test_bad_arguments_are_named, test_bad_arguments_are_named_slow = twins(_prop_bad_arguments_are_named, 40)


# ------------------------------------------------------------------------------------------------
# property: dtypes, devices and non-finite values of A and b
# ------------------------------------------------------------------------------------------------

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool,
          torch.complex64, torch.complex128]


def _prop_dtypes_and_values(data):
    n = data.draw(st.integers(1, 8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    A = _matrix("spd", n, rng) * 4
    b = rng.standard_normal(n) * 4
    da, db = data.draw(st.sampled_from(DTYPES), label="A dtype"), data.draw(st.sampled_from(DTYPES), label="b dtype")
    poison = data.draw(st.sampled_from([None, "A", "b"]), label="non-finite in")
    if poison is not None:
        target = A if poison == "A" else b
        target.flat[int(rng.integers(0, target.size))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    fmt = data.draw(st.sampled_from(["dense", "sparse", "meta"]), label="format")
    device = "meta" if fmt == "meta" else "cpu"
    At = torch.from_numpy(A).to(device=device, dtype=da) if da.is_floating_point or poison != "A" else None
    if At is None:  # NaN has no integer or bool form
        return
    if fmt == "sparse" and da.is_floating_point and da in (F32, F64):
        At = SparseMatrix.from_dense(At)
    bt = torch.from_numpy(b).to(device=device, dtype=db) if db.is_floating_point or poison != "b" else None
    if bt is None:
        return
    method = data.draw(st.sampled_from(["cg", "direct", "gmres"]))
    try:
        x = solve(At, bt, method=method)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if da != db or da not in (F32, F64):
            assert isinstance(e, TypeError) and ("dtype" in msg or "float" in msg), msg
        elif fmt == "meta":
            assert "meta" in msg, msg
        else:
            assert poison is not None and "NaN or Inf" in msg and msg.startswith(poison), msg
        return
    assert da == db and da in (F32, F64) and poison is None and fmt != "meta"
    np.testing.assert_allclose(x.double().numpy(), np.linalg.solve(At.double().numpy() if fmt == "dense" else
                                                                    A, bt.double().numpy()),
                               rtol=1e-8 if da == F64 else 2e-4, atol=0)


test_dtypes_and_values, test_dtypes_and_values_slow = twins(_prop_dtypes_and_values, 40)


# ------------------------------------------------------------------------------------------------
# property: shapes of A and b (0-d, 1-d, 4-d, mismatched, batched)
# ------------------------------------------------------------------------------------------------

def _prop_shapes(data):
    n = data.draw(st.integers(1, 5), label="n")
    B = data.draw(st.integers(1, 3), label="B")
    dims = st.sampled_from([1, 2, n, n + 1, B])
    a_shape = tuple(data.draw(st.lists(dims, min_size=0, max_size=4), label="A shape"))
    if data.draw(st.booleans(), label="A well formed"):
        a_shape = data.draw(st.sampled_from([(n, n), (B, n, n)]), label="A shape")
    b_shape = tuple(data.draw(st.lists(dims, min_size=0, max_size=4), label="b shape"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    A = torch.from_numpy(rng.standard_normal(a_shape)) + (4 * n * torch.eye(n, dtype=F64) if
                                                           a_shape[-2:] == (n, n) else 0)
    b = torch.from_numpy(rng.standard_normal(b_shape))
    if data.draw(st.booleans(), label="sparse") and A.ndim in (2, 3):
        A = SparseMatrix.from_dense(A)
    try:
        x = solve(A, b, method=data.draw(st.sampled_from(["gmres", "direct"])))
    except ValueError as e:
        assert "shape" in str(e) or "square" in str(e), str(e)
        return
    Ad = A.to_dense() if isinstance(A, SparseMatrix) else A
    batched_A = Ad.ndim == 3
    assert Ad.shape[-1] == Ad.shape[-2] and x.shape == ((Ad.shape[0], Ad.shape[-1]) if batched_A and b.ndim == 1
                                                         else b.shape)
    X = x.unsqueeze(-1) if (b.ndim == 1 or (batched_A and b.ndim == 2)) else x  # one column per system
    bb = b.expand_as(x) if batched_A and b.ndim == 1 else b
    Bv = bb.unsqueeze(-1) if X.ndim > x.ndim else bb
    torch.testing.assert_close(Ad @ X, Bv, rtol=1e-8, atol=1e-8)


test_shapes, test_shapes_slow = twins(_prop_shapes, 40)


# ------------------------------------------------------------------------------------------------
# property: sparse inputs with duplicate, unsorted or out-of-range indices
# ------------------------------------------------------------------------------------------------

def _prop_sparse_index_structure(data):
    n = data.draw(st.integers(1, 10), label="n")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    extra = data.draw(st.integers(0, 3 * n), label="off-diagonal entries")
    rows = np.concatenate([np.arange(n), rng.integers(0, n, extra)])
    cols = np.concatenate([np.arange(n), rng.integers(0, n, extra)])
    vals = np.concatenate([np.full(n, 4.0 * n), rng.uniform(-1, 1, extra)])
    dup = data.draw(st.integers(0, n), label="duplicates")  # repeated entries: they are summed
    pick = rng.integers(0, rows.size, dup)
    rows, cols, vals = np.concatenate([rows, rows[pick]]), np.concatenate([cols, cols[pick]]), np.concatenate(
        [vals, rng.uniform(-1, 1, dup)])
    perm = rng.permutation(rows.size)  # unsorted
    rows, cols, vals = rows[perm], cols[perm], vals[perm]
    bad = data.draw(st.sampled_from([None, "row_high", "col_high", "negative"]), label="bad index")
    if bad is not None:
        i = int(rng.integers(0, rows.size))
        (rows if bad != "col_high" else cols)[i] = {"row_high": n, "col_high": n + 3, "negative": -1}[bad]
    fmt = data.draw(st.sampled_from(["from_coo", "torch_coo", "torch_csr", "scipy_coo", "scipy_csr"]), label="fmt")
    method = data.draw(st.sampled_from(["direct", "gmres", "bicgstab"]), label="method")
    b = rng.standard_normal(n)
    try:
        if fmt == "from_coo":
            A = SparseMatrix.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(vals), n)
        elif fmt == "torch_coo":
            A = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(vals), (n, n),
                                        check_invariants=False)
        elif fmt == "torch_csr":  # CSR order by row only: columns stay unsorted and repeated
            o = np.argsort(rows, kind="stable")
            crow = np.concatenate([[0], np.cumsum(np.bincount(np.clip(rows, 0, n - 1), minlength=n))])
            if bad == "negative" or bad == "row_high":  # a row index out of range: a broken crow instead
                crow[-1] += 1
            A = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols[o]), torch.from_numpy(vals[o]),
                                        (n, n), check_invariants=False)
        elif fmt == "scipy_coo":
            A = sp.coo_matrix((vals, (np.clip(rows, 0, n - 1), np.clip(cols, 0, n - 1))), shape=(n, n))
            A.row[:], A.col[:] = rows, cols  # scipy checks on construction only
        else:
            A = sp.csr_matrix((vals, (np.clip(rows, 0, n - 1), np.clip(cols, 0, n - 1))), shape=(n, n))
            if bad is not None:
                A.indices[0] = -1 if bad == "negative" else n + 2
        x = solve(A, torch.from_numpy(b), method=method, rtol=1e-10)
    except ConvergenceError as e:  # BiCGStab may break down; then it says so
        assert bad is None and method == "bicgstab", str(e)
        return
    except (ValueError, TypeError) as e:
        assert bad is not None, f"a valid matrix was refused: {e}"
        assert any(w in str(e) for w in ("range", "malformed", "indices", "index")), str(e)
        return
    assert bad is None, "an out-of-range index was accepted"
    dense = np.zeros((n, n))
    np.add.at(dense, (rows, cols), vals)  # duplicates summed, as every sparse format defines them
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(dense, b), rtol=1e-7, atol=1e-9)


test_sparse_index_structure, test_sparse_index_structure_slow = twins(_prop_sparse_index_structure, 40)


# ------------------------------------------------------------------------------------------------
# property: singular graph Laplacians (A 1 = 0) with a right-hand side outside the range
# ------------------------------------------------------------------------------------------------

def _laplacian(mx: int, my: int, rng: np.random.Generator) -> sp.csr_matrix:
    idx = np.arange(mx * my).reshape(mx, my)
    e = np.concatenate([np.stack([idx[:-1].ravel(), idx[1:].ravel()], 1), np.stack([idx[:, :-1].ravel(),
                                                                                    idx[:, 1:].ravel()], 1)])
    w = rng.uniform(0.5, 2.0, len(e))
    W = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1],
                                                                                                   e[:, 0]]))),
                      shape=(mx * my, mx * my)).tocsr()
    return (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()


def _prop_singular_direct_is_never_silent(data):
    mx, my = data.draw(st.integers(2, 6)), data.draw(st.integers(2, 6))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    L = _laplacian(mx, my, rng)
    n = L.shape[0]
    b = rng.standard_normal(n)
    consistent = data.draw(st.booleans(), label="b in range")
    b = b - b.mean() if consistent else b + data.draw(st.floats(0.1, 10.0)) - b.mean()
    A = SparseMatrix.from_scipy(L) if data.draw(st.booleans(), label="sparse") else torch.from_numpy(L.toarray())
    try:
        x = solve(A, torch.from_numpy(b), method="direct")
    except (ConvergenceError, SingularMatrixError) as e:
        assert "singular" in str(e)
        return
    rel = np.linalg.norm(L @ x.numpy() - b) / np.linalg.norm(b)
    assert consistent and rel <= np.finfo(np.float64).eps ** 0.5, f"relative residual {rel:.2e} returned silently"


test_singular_direct_is_never_silent, test_singular_direct_is_never_silent_slow = twins(
    _prop_singular_direct_is_never_silent)


# ------------------------------------------------------------------------------------------------
# property: empty batches and right-hand-side blocks, and an empty A
# ------------------------------------------------------------------------------------------------

def _prop_empty_shapes(data):
    n = data.draw(st.integers(0, 5))
    B, k = data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))
    batched = data.draw(st.booleans())
    A = torch.eye(n, dtype=F64).expand(B, n, n).clone() * 2 if batched else 2 * torch.eye(n, dtype=F64)
    b = torch.ones(B, n, k, dtype=F64)
    method = data.draw(st.sampled_from(ALL_METHODS))
    try:
        x = solve(A, b, method=method)
    except ValueError as e:
        assert n == 0 and "empty" in str(e)
        return
    assert n > 0 and x.shape == b.shape
    torch.testing.assert_close(x, b / 2, rtol=1e-9, atol=0)


test_empty_shapes, test_empty_shapes_slow = twins(_prop_empty_shapes, 20)


# ------------------------------------------------------------------------------------------------
# regression tests of the defects the properties found
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("scale", [1e300, 1e160, 1e-160, 1e-300, 1e-310])
def test_right_hand_sides_of_extreme_scale_are_solved(method, scale):
    """b of 1e160 used to 'converge' at x = 0 (the tolerance overflowed to inf), b of 1e-160 stopped 0.2% off (its
    residual underflowed), b of 1e-310 returned x = 0; the report stays in the caller's units."""
    A = torch.diag(torch.arange(1.0, 6.0, dtype=F64)) + 0.1
    b = torch.linspace(1.0, 2.0, 5, dtype=F64) * scale
    x, info = solve(A, b, method=method, return_info=True)
    ref = np.linalg.solve(A.numpy(), b.numpy() / scale) * scale
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-8 if scale > 1e-300 else 1e-3)
    assert float(info.b_norm) == pytest.approx(float(np.linalg.norm(b.numpy() / scale)) * scale, rel=1e-12)


@pytest.mark.parametrize("name", ["cg", "minres", "gmres", "bicgstab", "fcg"])
def test_krylov_entry_points_scale_extreme_right_hand_sides(name):
    """The public cg/minres/... share the scaling: b of 1e300 returned x = 0 as converged; the callback sees the
    iterate in the caller's units; maxiter is checked as in solve."""
    import learnsolve.linalg as la

    A = torch.diag(torch.arange(1.0, 6.0, dtype=F64)) + 0.1
    seen = []
    x, info = getattr(la, name)(A, torch.ones(5, dtype=F64) * 1e300, callback=lambda X, it: seen.append(X.clone()))
    ref = np.linalg.solve(A.numpy(), np.ones(5)) * 1e300
    assert bool(info.converged)
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(seen[-1].reshape(-1).numpy(), ref, rtol=1e-8)
    with pytest.raises(ValueError, match="maxiter must be an integer"):
        getattr(la, name)(A, torch.ones(5, dtype=F64), maxiter=float("inf"))


def test_a_minres_iterate_that_overflows_is_not_converged():
    """MINRES on A of 1e-200 reported convergence with x = inf."""
    A = torch.diag(torch.arange(1.0, 6.0, dtype=F64)) * 1e-200
    with pytest.raises(ConvergenceError, match="NaN/Inf") as e:
        solve(A, torch.ones(5, dtype=F64), method="minres")
    assert not bool(e.value.info.converged)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["cg", "direct"])
def test_half_precision_is_refused(dtype, method):
    """float16 / bfloat16 reached torch's LU, MKL's SpMV or the compiled kernels and failed there."""
    for A in (torch.eye(3, dtype=dtype), SparseMatrix.from_dense(torch.eye(3, dtype=F64)).to(dtype)):
        with pytest.raises(TypeError, match="float32 or float64"):
            solve(A, torch.ones(3, dtype=dtype), method=method)


def test_meta_tensors_are_refused():
    with pytest.raises(ValueError, match="meta tensors"):
        solve(torch.eye(3, device="meta"), torch.ones(3, device="meta"))


@pytest.mark.parametrize("kwargs, match", [
    ({"rtol": "1e-6"}, "rtol must be a real number"), ({"atol": None}, "atol must be a real number"),
    ({"maxiter": float("inf")}, "maxiter must be an integer"), ({"maxiter": -1}, "maxiter must be an integer"),
    ({"maxiter": 2.5}, "maxiter must be an integer"), ({"method": "gmres", "restart": 0}, "restart must be"),
    ({"method": "fcg", "truncation": 1.5}, "truncation must be"),
    ({"backward": "truncated", "unroll_steps": float("nan")}, "unroll_steps must be"),
    ({"adjoint": 3}, "adjoint must be"), ({"adjoint": {"rtol": 2.0}}, "adjoint rtol must lie"),
    ({"adjoint": {"maxiter": float("nan")}}, "adjoint maxiter must be"),
    ({"x0": torch.ones(4)}, "x0 is torch.float32"), ({"x0": torch.full((4,), float("inf"), dtype=F64)}, "x0 contains"),
    ({"x0": [1.0] * 4}, "x0 must be a torch.Tensor"),
])
def test_bad_options_name_the_argument(kwargs, match):
    """These reached int()/float() or the iterations and failed with an error naming none of them (or were silently
    truncated: maxiter 2.5, restart 0 ran as 1; adjoint rtol 2 was accepted)."""
    with pytest.raises((TypeError, ValueError), match=match):
        solve(4 * torch.eye(4, dtype=F64), torch.ones(4, dtype=F64), **kwargs)
    x = solve(4 * torch.eye(4, dtype=F64), torch.ones(4, dtype=F64), maxiter=1e4, rtol=torch.tensor(1e-8))
    torch.testing.assert_close(x, torch.full((4,), 0.25, dtype=F64))


def test_malformed_sparse_inputs_are_refused_before_use():
    """A negative COO index made coalesce() write out of bounds (the process aborted), an out-of-range CSR column
    or a broken crow reached the SpMV (a deep RuntimeError, or heap corruption), scipy's unchecked indices its C++
    conversion; a hybrid COO tensor raised IndexError; float indices were truncated (1.5 -> 1)."""
    b = torch.ones(3, dtype=F64)
    coo = torch.sparse_coo_tensor(torch.tensor([[0, 1, -1], [0, 1, 2]]), torch.ones(3, dtype=F64), (3, 3),
                                  check_invariants=False)
    with pytest.raises(ValueError, match="out of range"):
        solve(coo, b)
    for crow, col in (([0, 1, 2, 3], [0, 1, 7]), ([0, 2, 1, 3], [0, 1, 2])):
        csr = torch.sparse_csr_tensor(torch.tensor(crow), torch.tensor(col), torch.ones(3, dtype=F64), (3, 3),
                                      check_invariants=False)
        with pytest.raises(ValueError, match="malformed torch CSR"):
            solve(csr, b)
    S = sp.csr_matrix((np.ones(3), np.array([0, 5, 2]), np.array([0, 1, 2, 3])), shape=(3, 3))
    with pytest.raises(ValueError, match="malformed scipy sparse csr"):
        solve(S, b)
    hybrid = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2]]), torch.eye(3, dtype=F64), (3, 3))
    with pytest.raises(ValueError, match="sparse_dim 1 and dense_dim 1"):
        solve(hybrid, b)
    with pytest.raises(TypeError, match="integer index tensors"):
        SparseMatrix.from_coo(torch.tensor([0.0, 1.5]), torch.tensor([0, 1]), torch.ones(2, dtype=F64), 2)
    with pytest.raises(ValueError, match="non-negative"):
        SparseMatrix.from_coo(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                              torch.ones(0, dtype=F64), -1)


def test_torch_csr_with_unsorted_and_repeated_columns():
    """Repeated columns in a row were summed by the direct path but not by CG (which then stagnated)."""
    csr = torch.sparse_csr_tensor(torch.tensor([0, 3, 4, 5]), torch.tensor([1, 0, 0, 1, 2]),
                                  torch.tensor([0.5, 1.0, 1.0, 2.0, 2.0], dtype=F64), (3, 3))
    dense = np.array([[2.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    ref = np.linalg.solve(dense, np.ones(3))
    for method in ("gmres", "direct", "bicgstab"):
        np.testing.assert_allclose(solve(csr, torch.ones(3, dtype=F64), method=method).numpy(), ref, rtol=1e-9)
    sym = torch.sparse_csr_tensor(torch.tensor([0, 2, 3]), torch.tensor([0, 0, 1]),
                                  torch.tensor([1.0, 1.0, 2.0], dtype=F64), (2, 2))
    np.testing.assert_allclose(solve(sym, torch.ones(2, dtype=F64)).numpy(), [0.5, 0.5], rtol=1e-9)


@pytest.mark.parametrize("precond", [None, "amg", "jacobi"])
def test_the_zero_matrix_is_refused(precond):
    """A sparse A without entries crashed the compiled CG (IndexError) and AMG (amax of an empty tensor)."""
    empty = SparseMatrix.from_coo(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                                  torch.ones(0, dtype=F64), 3)
    with pytest.raises(ValueError, match="no stored entries"):
        solve(empty, torch.ones(3, dtype=F64), precond=precond)
    with pytest.raises(ValueError, match="zero matrix"):
        solve(torch.zeros(2, 2, dtype=F64), torch.ones(2, dtype=F64), precond=precond)


def test_singular_direct_warns_instead_of_answering_silently():
    """The direct path's residual check (a Laplacian, A 1 = 0, b with a constant part): with on_fail='warn' the
    warning comes with an x whose residual is indeed of the order of b's."""
    L = _laplacian(4, 4, np.random.default_rng(0))
    b = np.random.default_rng(1).standard_normal(16) + 1.0
    with pytest.warns(ConvergenceWarning, match="large residual"):
        x = solve(SparseMatrix.from_scipy(L), torch.from_numpy(b), method="direct", on_fail="warn")
    assert np.linalg.norm(L @ x.numpy() - b) >= 0.1 * np.linalg.norm(b)
