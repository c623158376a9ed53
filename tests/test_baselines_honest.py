"""The classical rows are honest: thread pools coordinated in host-BLAS solves, the strongest baselines registered and
doing what the literature says, right-hand sides that do not favour MIC(0), reasons that are true, and the model's
classical start ("untrained") recoverable from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.evaluation import BASELINES, evaluate_suite
from learnsolve.evaluation.baselines import baseline_setup
from learnsolve.evaluation.runner import rounding_level_rhs
from learnsolve.linalg import AMG, IC0, CoarseCorrected, FunctionPreconditioner, SparseMatrix, cg, solve
from learnsolve.linalg.solvers.threads import host_blas_single_threaded, uses_host_blas

threadpoolctl = pytest.importorskip("threadpoolctl")

from .conftest import diffusion2d


def _blas_threads() -> set[int]:
    return {d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"}


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_numpy_blas_is_single_threaded_inside_a_host_blas_solve(two_torch_threads):
    """Inside a Krylov solve whose preconditioner runs numpy BLAS every application, numpy's BLAS pools hold one
    thread (torch's pool and OpenBLAS's otherwise spin against each other); outside, they are as they were."""
    if not _blas_threads():
        pytest.skip("no BLAS library visible to threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        seen: list[set[int]] = []

        class HostJacobi(FunctionPreconditioner):
            host_blas = True

        A = SparseMatrix.from_scipy(diffusion2d(8))
        d = A.diagonal().view(1, -1, 1)
        M = HostJacobi(lambda R: (seen.append((*_blas_threads(), torch.get_num_threads())), R / d)[1], symmetric=True)
        b = torch.ones(64, dtype=torch.float64)
        x, _ = cg(A, b, M, rtol=1e-10)
        assert seen and all(s == (1, 1) for s in seen), seen  # numpy's BLAS and torch's pool: one thread each
        assert _blas_threads() == {2} and torch.get_num_threads() == 2  # restored
        # same answer as without the flag (scipy reference)
        ref = spla.spsolve(diffusion2d(8).tocsc(), b.numpy())
        np.testing.assert_allclose(x.numpy(), ref, rtol=1e-8)
        # a plain preconditioner leaves the pools alone
        seen.clear()
        plain = FunctionPreconditioner(lambda R: (seen.append(_blas_threads()), R / d)[1], symmetric=True)
        cg(A, b, plain, rtol=1e-10)
        assert all(s == {2} for s in seen)


def test_single_threaded_block_is_a_no_op_with_one_torch_thread():
    if not _blas_threads():
        pytest.skip("no BLAS library visible to threadpoolctl")
    assert torch.get_num_threads() == 1  # the test session runs torch on one thread (conftest)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"), host_blas_single_threaded():
        assert _blas_threads() == {2}


def test_amg_declares_host_blas_and_matches_pyamg(two_torch_threads):
    """CG + AMG through the project's loop takes the same iterations as scipy's CG with pyamg's own
    preconditioner on the same hierarchy, and the answer agrees."""
    A_sp = diffusion2d(24, seed=3, contrast=2.0)
    b = np.random.default_rng(0).standard_normal(A_sp.shape[0])
    P = AMG(SparseMatrix.from_scipy(A_sp))
    assert uses_host_blas(P) and uses_host_blas(P.apply) and not uses_host_blas(None)
    count = [0]
    xs, flag = spla.cg(A_sp, b, rtol=1e-8, M=P._hier[0].aspreconditioner(),
                       callback=lambda _: count.__setitem__(0, count[0] + 1))
    x, info = solve(SparseMatrix.from_scipy(A_sp), torch.from_numpy(b), method="cg", precond=P, rtol=1e-8,
                    return_info=True)
    assert flag == 0 and abs(int(info.iterations) - count[0]) <= 1
    np.testing.assert_allclose(x.numpy(), xs, rtol=1e-5, atol=1e-8 * np.abs(xs).max())


def test_strong_baselines_are_registered_with_their_settings():
    assert "mic0" in BASELINES
    for name in ("ic0_deflated", "amg_sa_evol", "amg_rs"):  # too slow to set up at every validation
        assert name in BASELINES and not BASELINES[name].in_training
    data = GENERATORS["channels2d"](24, seed=1, reference=False)
    A = SparseMatrix.from_pyg(data).detach()
    label, build = baseline_setup("ic0_deflated", A)
    M, _ = build()
    assert label == "ic0_deflated" and isinstance(M, CoarseCorrected) and isinstance(M.base, IC0) and M.m > 1
    label, build = baseline_setup("amg_sa_evol", A)
    M, _ = build()
    assert label == "amg_sa_evol" and M.kwargs["strength"][0] == "evolution" and M.kwargs["smooth"][0] == "energy"
    # an option overrides one setting and keeps the others
    _, build = baseline_setup("amg_rs", A, options={"rs": {"strength": ("classical", {"theta": 0.5})}})
    assert build()[0].kwargs["strength"] == ("classical", {"theta": 0.5})


def test_baselines_reproduce_the_literature_trends():
    """Channels and inclusions: IC(0) iterations grow with the contrast and the subdomain coarse space cuts them;
    rotated strong anisotropy: evolution strength beats default smoothed aggregation."""
    its = {}
    for c in (1.0, 1e6):
        data = GENERATORS["channels2d"](48, seed=5, contrast=c, reference=False)
        rows = evaluate_suite(None, [("ch", data)], rtols=[1e-6], repeats=1, preconditioners=["ic0", "ic0_deflated"],
                              progress=False)
        its[c] = {r["preconditioner"]: r["iters_1e-06"] for r in rows if r["status"] == "ok"}
    assert its[1e6]["ic0"] > 1.3 * its[1.0]["ic0"], its
    assert its[1e6]["ic0_deflated"] < its[1e6]["ic0"], its
    data = GENERATORS["anisotropic2d"](48, seed=2, theta=0.6, epsilon=1e-4, stencil="fe", reference=False)
    rows = evaluate_suite(None, [("an", data)], rtols=[1e-6], repeats=1, preconditioners=["amg_sa", "amg_sa_evol"],
                          progress=False)
    by = {r["preconditioner"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows), rows
    assert by["amg_sa_evol"]["iters_1e-06"] < by["amg_sa"]["iters_1e-06"], by
    for r in rows:  # every solved row times setup and solve apart, and the model's own work is zero for a baseline
        assert r["total_s"] == pytest.approx(r["setup_s"] + r["solve_s"]) and r["inference_s"] == 0.0


def test_rounding_level_reason_asks_about_b_as_rounding_noise_of_a_x():
    """A random b with a huge ||A|| is meaningful (no warning); b = A 1 with A 1 = 0 is rounding noise (warning)."""
    rng = np.random.default_rng(0)
    A = 1e14 * diffusion2d(12, seed=1, contrast=1.0)
    b = rng.standard_normal(A.shape[0])
    x = spla.spsolve(A.tocsc(), b)
    assert np.linalg.norm(b) < 1e3 * np.finfo(float).eps * spla.norm(A) * np.sqrt(A.shape[0])  # the old test fired
    assert rounding_level_rhs(A, b, x) is None
    n = 40
    L = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="lil")
    L[0, 0] = L[n - 1, n - 1] = 1.0
    L = 1e6 * L.tocsr()
    ones = np.ones(n)
    noise = L @ ones  # exactly rounding noise of A 1 (A 1 = 0)
    noise = noise if np.linalg.norm(noise) > 0 else 1e-10 * rng.standard_normal(n)
    msg = rounding_level_rhs(L, noise, ones)
    assert msg is not None and "rounding level" in msg
    assert rounding_level_rhs(L, noise, None) is None  # nothing known about x: nothing said


def test_mic0_never_converges_in_one_step_on_the_default_right_hand_sides():
    """b = A 1 makes MIC(0) exact on M-matrices; the generators and the Matrix Market suite default to random b."""
    data = GENERATORS["lognormal2d"](24, seed=3, reference=False)
    rows = evaluate_suite(None, [("ln", data)], rtols=[1e-6], repeats=1, preconditioners=["mic0"], progress=False)
    assert rows[0]["iters_1e-06"] > 3
    A = to_scipy(data)
    ones_rows = evaluate_suite(None, [("ln", _with_b(data, A @ np.ones(A.shape[0])))], rtols=[1e-6], repeats=1,
                               preconditioners=["mic0"], progress=False)
    assert ones_rows[0]["iters_1e-06"] <= 2  # the bias the default avoids


def _with_b(data, b):
    d = data.clone()
    d.b = torch.from_numpy(np.asarray(b, dtype=np.float64))
    return d
