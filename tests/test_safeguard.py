"""The safeguard of learned preconditioners (learnsolve.linalg.preconditioners.safeguard and its callers): constructed bad factors are
rejected and the fallback's iterations result, good ones are kept, decisions are per graph of a batch, and the
evaluation row, the exported JSON, load_preconditioner(A=...) and the training metrics say when it fell back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS, make_system
from learnsolve.evaluation import evaluate_matrix
from learnsolve.evaluation.report import write_results
from learnsolve.export import export_preconditioners, load_preconditioner
from learnsolve.linalg import (
    IC0,
    LLT,
    MIC0,
    FactorizationError,
    FunctionPreconditioner,
    Jacobi,
    SafeguardResult,
    SparseMatrix,
    cg,
    safeguard,
)
from learnsolve.models import LowRankPreconditioner
from learnsolve.models.base import LearnedModel
from learnsolve.training.module import LearnedSolverModule
from learnsolve.training.report import compare_on_test

from .conftest import diffusion2d
from .test_export import _scipy_cg_iterations as _cg_iterations  # scipy CG at rtol 1e-8

RTOL = 1e-8


def _system(A: sp.csr_matrix, seed: int = 0):
    n = A.shape[0]
    b = A @ np.random.default_rng(seed).uniform(0.5, 1.5, n)
    return make_system(A, b, pos=np.zeros((n, 1)), coeff=np.ones(n), family="test", params={}, seed=seed)


def _iters(A: SparseMatrix, b: torch.Tensor, M) -> torch.Tensor:
    _, info = cg(A, b, M, rtol=RTOL, maxiter=5000)
    assert bool(info.converged.all())
    return info.iterations


def _corrupt(L: SparseMatrix, how: str, rows=(7,)) -> SparseMatrix:
    """A copy of the factor L with, in each of ``rows``: a tiny diagonal entry (1e-6 x: an eigenvalue of M^-1 A near
    1e12) or a NaN."""
    v = L.values.clone()
    pos = L.pattern.diag_positions()
    for r in rows:
        v[pos[r]] = v[pos[r]] * 1e-6 if how == "tiny" else float("nan")
    return L.with_values(v)


@pytest.fixture(scope="module")
def diff():
    A = SparseMatrix.from_scipy(diffusion2d(16, seed=3, contrast=1.5))
    b = torch.from_numpy(_system(diffusion2d(16, seed=3, contrast=1.5)).b.numpy()).double()
    return A, b


# ------------------------------------------------------------------------------------------------
# linalg.preconditioners.safeguard
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["tiny", "nan", "indefinite"])
def test_bad_factor_is_rejected_and_the_solve_takes_the_fallbacks_iterations(diff, how):
    A, b = diff
    ic0 = IC0(A)
    if how == "indefinite":  # symmetric but not positive definite: M^-1 = diag(+-1/a_ii)
        sign = torch.ones(A.shape[0], dtype=torch.float64)
        sign[::3] = -1.0
        d = sign / A.diagonal()
        bad = FunctionPreconditioner(lambda R: R * d.view(1, -1, 1), symmetric=True)
    else:
        bad = LLT(_corrupt(ic0.L, how))
    res = safeguard(A, bad, "ic0", b=b)
    assert isinstance(res, SafeguardResult) and not res.all_accepted and res.num_fallbacks == 1
    assert res.accepted.shape == (1,) and res.preconditioner is res.fallback and isinstance(res.fallback, IC0)
    assert res.fallback_name == "IC(0)" and res.fallback_key == "ic0" and res.seconds > 0
    expect = {"tiny": "slower than IC(0)", "nan": "NaN/Inf", "indefinite": "not positive definite"}[how]
    assert expect in res.reason, res.reason
    assert torch.equal(_iters(A, b, res.preconditioner), _iters(A, b, ic0))
    if how == "tiny":  # the race saw the huge eigenvalue: a tiny diagonal entry of L is a 1e12 one of M^-1 A
        assert float(res.kappa[0]) > 1e6 * float(res.kappa_fallback[0])
        assert float(res.energy_ratio[0]) < 1.0


def test_good_factors_are_kept(diff):
    A, b = diff
    res = safeguard(A, IC0(A), "ic0", b=b)  # the fallback itself: a tie, which the candidate wins
    assert res.all_accepted and res.reason is None and res.reasons == [None]
    mic = MIC0(A)  # MIC(0) on diffusion: fewer iterations than IC(0) at the same nonzeros
    res = safeguard(A, mic, lambda: IC0(A), b=b)
    assert res.all_accepted and res.preconditioner is mic and float(res.energy_ratio[0]) >= 1.0
    assert int(_iters(A, b, mic)) < int(_iters(A, b, IC0(A)))


def test_per_graph_decisions_on_a_batch():
    """Graph 0 gets MIC(0) (better than IC(0) there), graph 1 a factor with a tiny diagonal entry: the merged factor is
    MIC(0) on graph 0 and IC(0) on graph 1, one LLT, and each graph takes the iterations of its choice."""
    data = [_system(diffusion2d(16, seed=s, contrast=1.5), seed=s) for s in (3, 4)]
    batch = Batch.from_data_list(data)
    A = SparseMatrix.from_pyg(batch).detach()
    b = batch.b.view(-1).double()
    mic, ic0 = MIC0(A), IC0(A)
    cand = _corrupt(mic.L, "tiny", rows=(256 + 40,))  # a row of graph 1
    res = safeguard(A, LLT(cand), "ic0", b=b)
    assert res.accepted.tolist() == [True, False] and res.num_fallbacks == 1 and res.num_systems == 2
    assert res.reasons[0] is None and "slower than IC(0)" in res.reasons[1] and res.reason.startswith("1 of 2")
    P = res.preconditioner
    assert isinstance(P, LLT) and P.L.pattern.same_as(ic0.L.pattern)
    rows = P.L.pattern.row.long()
    assert torch.equal(P.L.values[rows < 256], mic.L.values[rows < 256])
    assert torch.equal(P.L.values[rows >= 256], ic0.L.values[rows >= 256])
    its = _iters(A, b, P)
    assert int(its[0]) == int(_iters(A, b, mic)[0]) and int(its[1]) == int(_iters(A, b, ic0)[1])
    # a candidate that is not a factor on the fallback's pattern: a masked combination, same decisions
    nan_on_1 = FunctionPreconditioner(lambda R: torch.where(torch.arange(512).view(1, -1, 1) >= 256,
                                                            R * float("nan"), mic.apply(R)), symmetric=True)
    res = safeguard(A, nan_on_1, "ic0", b=b)
    assert res.accepted.tolist() == [True, False] and "NaN/Inf" in res.reasons[1]
    Z = res.preconditioner.apply(b.view(1, -1, 1))
    assert bool(torch.isfinite(Z).all()) and torch.equal(Z[0, 256:], ic0.apply(b.view(1, -1, 1))[0, 256:])


def test_lazy_fallback_that_breaks_down_is_shifted():
    # Kershaw's matrix: SPD, but IC(0) meets a negative pivot
    K = SparseMatrix.from_dense(torch.tensor([[3.0, -2, 0, 2], [-2, 3, -2, 0], [0, -2, 3, -2], [2, 0, -2, 3]],
                                             dtype=torch.float64))
    with pytest.raises(FactorizationError):
        IC0(K)
    res = safeguard(K, Jacobi(K), lambda: IC0(K))
    assert isinstance(res.fallback, IC0) and res.fallback.shift > 0
    assert "diagonal shift" in res.fallback_name and "rebuilt with a diagonal shift" in res.notes[0]
    with pytest.raises(ValueError, match="nonlinear"):
        safeguard(K, FunctionPreconditioner(lambda R: R, symmetric=True, linear=False))


# ------------------------------------------------------------------------------------------------
# models, evaluation, export, training
# ------------------------------------------------------------------------------------------------

class _BadFactor(LearnedModel):
    """A 'learned' IC(0) factor with a tiny diagonal entry (or a NaN) in row 7 of every graph."""

    kind = "preconditioner"
    is_linear = True
    matrix_type = "llt"

    def __init__(self, how: str = "tiny"):
        super().__init__()
        self.how = how

    def preconditioner_for(self, batch):
        A = SparseMatrix.from_pyg(batch).detach()
        ptr = A.blocks.tolist() if A.blocks is not None else [0, A.shape[0]]
        return LLT(_corrupt(IC0(A).L, self.how, rows=[p + 7 for p in ptr[:-1]]))

    def training_loss(self, batch):
        return torch.zeros(()), {}


def test_model_api_fallback_and_solve():
    data = _system(diffusion2d(12, seed=5))
    batch = Batch.from_data_list([data])
    model = _BadFactor()
    assert isinstance(model.fallback_for(batch), MIC0)  # smooth diffusion: MIC(0), the faster classical factor
    M, check = model.safe_preconditioner_for(batch)
    assert not check.all_accepted and isinstance(M, MIC0)
    _, info = model.solve(batch, rtol=RTOL)
    _, raw = model.solve(batch, rtol=RTOL, safeguard=False)
    ref = _iters(SparseMatrix.from_pyg(batch), batch.b.view(-1).double(), MIC0(SparseMatrix.from_pyg(batch)))
    assert int(info.iterations.sum()) == int(ref.sum()) < int(raw.iterations.sum())
    assert isinstance(LowRankPreconditioner(side="forward", rank=2).fallback_for(batch), Jacobi)
    conv = Batch.from_data_list([GENERATORS["convdiff2d"](6, seed=1)])
    assert isinstance(model.fallback_for(conv), Jacobi)  # not symmetric: no IC(0)


def test_evaluation_row_notes_the_fallback(tmp_path):
    name, data = "diff12", _system(diffusion2d(12, seed=5))
    kw = {"rtols": (1e-6, 1e-8), "repeats": 1, "preconditioners": ["ic0", "mic0", "learned"]}
    rows = evaluate_matrix(_BadFactor("nan"), name, data, **kw)
    ic0, mic0, learned = rows
    assert learned["status"] == "ok" and learned["fallback"] is True and ic0["fallback"] is None
    assert learned["reason"].startswith("safeguard: fell back to MIC(0) (") and "NaN/Inf" in learned["reason"]
    assert learned["iters_1e-08"] == mic0["iters_1e-08"] < ic0["iters_1e-08"]
    # the safeguard's cost is its own column, inside the setup; baselines have none
    assert 0 < learned["safeguard_s"] <= learned["setup_s"] and 0 <= learned["inference_s"] <= learned["setup_s"]
    assert mic0["safeguard_s"] == 0.0 == mic0["inference_s"]
    off = evaluate_matrix(_BadFactor("nan"), name, data, safeguard=False, **kw)[2]
    assert off["status"] == "failed" and "NaN/Inf" in off["reason"] and off["fallback"] is None
    meta = {"rtols": [1e-6, 1e-8], "repeats": 1, "gmres_restart": 50, "solver": "auto", "maxiter": 2000,
            "benchmark": "test"}
    write_results(tmp_path, rows, meta, plots=False)
    with open(tmp_path / "results.csv") as fh:
        got = {r["preconditioner"]: r for r in csv.DictReader(fh)}
    assert got["learned"]["fallback"] == "True" and got["ic0"]["fallback"] == ""
    assert json.loads((tmp_path / "results.json").read_text())["rows"][2]["fallback"] is True
    md = (tmp_path / "results.md").read_text()
    assert "| fallback | note |" in md and "| yes | [1] |" in md and "safeguard: fell back to MIC(0)" in md


def test_export_writes_the_fallback_and_load_with_A_falls_back(tmp_path):
    A = diffusion2d(12, seed=6, contrast=1.5)
    scipy.io.mmwrite(str(tmp_path / "m.mtx"), A)
    b = A @ np.ones(A.shape[0])
    written, failed = export_preconditioners(_BadFactor(), [tmp_path / "m.mtx"], tmp_path / "pre", name="bad")
    assert not failed
    meta = json.loads(written["m"].read_text())
    assert meta["factor"] == "fallback:mic0" and meta["type"] == "llt" and meta["model"] == "bad"
    sg = meta["safeguard"]
    assert sg["accepted"] is False and sg["fallback"] == "MIC(0)" and "slower than MIC(0)" in sg["reason"]
    L = sp.load_npz(tmp_path / "pre" / "m_L.npz")
    mic0 = MIC0(SparseMatrix.from_scipy(A)).L.to_scipy()
    assert abs(L - mic0).max() == 0.0
    M = load_preconditioner(written["m"])
    assert _cg_iterations(A, b, M) <= _cg_iterations(A, b, None)  # never slower than plain CG
    # the raw learned factor (safeguard off), loaded with and without its matrix
    raw, _ = export_preconditioners(_BadFactor(), [tmp_path / "m.mtx"], tmp_path / "raw", name="bad",
                                    safeguard=False)
    meta = json.loads(raw["m"].read_text())
    assert meta["factor"] == "learned" and meta["safeguard"] is None
    slow = _cg_iterations(A, b, load_preconditioner(raw["m"]))
    with pytest.warns(UserWarning, match=r"safeguard: fell back to MIC\(0\) of the given A"):
        checked = load_preconditioner(raw["m"], A=A)
    assert _cg_iterations(A, b, checked) == _cg_iterations(A, b, M) < slow
    with pytest.warns(UserWarning, match="safeguard"):
        Mt = load_preconditioner(raw["m"], backend="torch", A=SparseMatrix.from_scipy(A))
    assert isinstance(Mt, MIC0)
    assert isinstance(load_preconditioner(written["m"], backend="torch", A=A), LLT)  # MIC(0) itself: kept
    with pytest.raises(Exception, match="shape"):
        load_preconditioner(raw["m"], A=diffusion2d(5))


def test_training_metrics_count_fallbacks(monkeypatch):
    batch = Batch.from_data_list([_system(diffusion2d(8, seed=s), seed=s) for s in (1, 2)])
    batch.seed = torch.tensor([1, 2])
    rows = {r["method"]: r for r in compare_on_test(_BadFactor(), [batch], rtol=1e-6)}
    assert rows["learned"]["fallbacks"] == "2/2" and rows["ic0"]["fallbacks"] == "-"
    assert rows["learned"]["iters"] == rows["ic0"]["iters"]
    # the final table: the AMG hierarchies too, setup and solve columns, and the ratio to the fastest classical row
    assert {"mic0", "amg_sa", "amg_sa_evol", "amg_rs"} <= rows.keys()
    assert all(abs(r["seconds"] - r["setup_seconds"] - r["solve_seconds"]) < 1e-12 for r in rows.values())
    classical = [r for k, r in rows.items() if k not in ("none", "learned")]
    assert min(r["time_ratio_best"] for r in classical) == 1.0
    module = LearnedSolverModule(_BadFactor(), optimizer=None)
    logged = {}
    monkeypatch.setattr(module, "log", lambda key, value, **kw: logged.__setitem__(key, float(value)))
    module.validation_step(batch, 0)
    assert logged["val/fallback_rate"] == 1.0 and logged["val/iters_ratio_ic0"] == 1.0


def test_final_table_on_nonsymmetric_systems_keeps_the_training_baselines():
    """The AMG rows precondition CG and need a symmetric matrix: on a nonsymmetric family the table has the training
    baselines and the learned row, as before, and no AMG row (no crash)."""
    from learnsolve.evaluation.baselines import training_baselines
    from learnsolve.models import GNNSolver

    batch = Batch.from_data_list([GENERATORS["convdiff2d"](8, seed=s) for s in (1, 2)])
    rows = compare_on_test(GNNSolver(mode="fcg", hidden=4, layers=1), [batch], rtol=1e-6, maxiter=200)
    assert [r["method"] for r in rows] == [*training_baselines(), "learned"]


def test_fastest_factor_takes_mic0_where_it_is_safe_and_races_it_where_pivots_are_tiny():
    """MIC(0) on smooth diffusion (no race), IC(0) where MIC(0) breaks down, and on a high-contrast channels system
    (pivot ratios near 2e-6, MIC(0) slower than IC(0) in scipy's CG too) IC(0) after the race; per system in a
    mixed batch."""
    from learnsolve.linalg import fastest_factor

    smooth = SparseMatrix.from_scipy(diffusion2d(12, seed=5))
    assert isinstance(fastest_factor(smooth), MIC0)
    # a non-M-matrix on which MIC(0) breaks down: rotated anisotropy with bilinear elements (positive off-diagonals)
    rotated = GENERATORS["anisotropic2d"](64, seed=1, theta="random", epsilon=[1e-4, 1e-2], stencil="fe",
                                          reference=False)
    R = SparseMatrix.from_pyg(Batch.from_data_list([rotated])).detach()
    with pytest.raises(FactorizationError):
        MIC0(R)
    assert isinstance(fastest_factor(R), IC0) and not isinstance(fastest_factor(R), MIC0)
    chan = GENERATORS["channels2d"](64, seed=2)
    C = SparseMatrix.from_pyg(Batch.from_data_list([chan])).detach()
    Cs = C.to_scipy().tocsr()
    b = np.random.default_rng(0).standard_normal(C.shape[0])
    its = {k: _cg_iterations(Cs, b, _scipy_llt(P.L)) for k, P in (("ic0", IC0(C)), ("mic0", MIC0(C)))}
    assert its["mic0"] > 1.3 * its["ic0"], its  # independent check that IC(0) is the right answer here
    chosen = fastest_factor(C, b=torch.from_numpy(b))
    assert isinstance(chosen, IC0) and not isinstance(chosen, MIC0)
    # a batch of a low-contrast system (MIC(0) about 0.5x IC(0)'s iterations) and the high-contrast one
    low = GENERATORS["channels2d"](32, seed=1, contrast=100.0)
    both = Batch.from_data_list([low, chan])
    mixed = fastest_factor(SparseMatrix.from_pyg(both).detach(), b=both.b.view(-1))
    assert mixed.name == "MIC(0) / IC(0) per system"
    ref = torch.cat([MIC0(SparseMatrix.from_pyg(Batch.from_data_list([low])).detach()).L.values, IC0(C).L.values])
    assert torch.equal(mixed.L.values, ref)


def _scipy_llt(L: SparseMatrix):
    """M^{-1} = L^-T L^-1 as a scipy LinearOperator."""
    import scipy.sparse.linalg as spla

    Ls = L.to_scipy().tocsr()
    LT = Ls.T.tocsr()
    return spla.LinearOperator(Ls.shape, matvec=lambda r: spla.spsolve_triangular(
        LT, spla.spsolve_triangular(Ls, r, lower=True), lower=False))
