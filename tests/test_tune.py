"""Per-matrix tuning (learnsolve.training.tune, learnsolve-tune): a short tuning run beats its start on a real
matrix, the exported factor gives the same iterations in scipy, and bad inputs get clear errors with nothing
written."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.models import NeuralIF
from learnsolve.training.tune import TuneError, break_even, energy_loss, run_tune, tune_matrix

from .conftest import convdiff2d, diffusion2d

NIF = {"hidden": 4, "layers": 1, "arch": "light", "base": "auto", "loss": "kappa"}


def _airfoil() -> sp.csr_matrix:
    from pyamg.gallery import load_example

    return sp.csr_matrix(load_example("airfoil")["A"], dtype=np.float64)


def _model() -> NeuralIF:
    torch.manual_seed(0)
    return NeuralIF(**NIF).double().eval()


def _checkpoint(path, name="neural_if", target="learnsolve.models.NeuralIF", kwargs=NIF, model=None):
    model = _model() if model is None else model
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "learnsolve_config": {"model": {"name": name, "net": {"_target_": target, **kwargs}}}}, path)
    return path


def _scipy_iters(A, b, M, rtol=1e-6) -> int:
    count = [0]
    spla.cg(A, b, rtol=rtol, atol=0.0, M=M, maxiter=10_000, callback=lambda _: count.__setitem__(0, count[0] + 1))
    return count[0]


@pytest.fixture(scope="module")
def airfoil_run(tmp_path_factory):
    """One short reproducible tuning run on pyamg's airfoil matrix (a real FEM matrix, n = 260), through run_tune."""
    d = tmp_path_factory.mktemp("tune")
    scipy.io.mmwrite(str(d / "airfoil.mtx"), _airfoil())
    ckpt = _checkpoint(d / "nif.ckpt")
    run = run_tune(d / "airfoil.mtx", ckpt, d / "run", budget_s=120, max_steps=250, repeats=1, program=False)
    return d, run


def test_a_short_tuning_run_beats_its_start_on_a_real_matrix(airfoil_run):
    _, run = airfoil_run
    r = run.result
    assert r.tuned, r.status
    start = r.rows[r.start].iters
    assert r.rows["tuned"].iters < start and r.rows["tuned"].iters < r.rows["ic0"].iters
    assert sum(r.holdout["tuned"]) < sum(r.holdout["start"])  # and on right-hand sides it never saw
    assert all(t <= s for t, s in zip(r.holdout["tuned"], r.holdout["start"]))
    # the untrained model is its base: the faster of MIC(0) and IC(0) (here MIC(0)), so the start is IC(0)
    assert r.rows["before"].iters == r.rows["mic0"].iters and r.start == "ic0"


def test_the_export_loads_in_scipy_and_torch_with_the_same_iterations(airfoil_run):
    from learnsolve.export import load_exported_model, load_preconditioner
    from learnsolve.linalg import SparseMatrix, cg

    _, run = airfoil_run
    rec = json.loads((run.folder / "tune.json").read_text())
    assert set(rec["iters"]) == set(rec["ms_per_solve"]) == {"tuned", "before", "ic0", "mic0", "amg_sa"}
    assert rec["status"] == "tuned" and rec["tuning_s"] > 0 and rec["break_even_solves"] is not None
    meta = json.loads(run.preconditioner.read_text())
    assert meta["factor"] == "tuned" and meta["type"] == "llt" and meta["tuning"]["iters"] == rec["iters"]
    A = _airfoil()
    from learnsolve.data.mtx import default_rhs

    b = default_rhs(A, "random", 0, "airfoil")[0]  # the table's b (seed 0)
    M = load_preconditioner(run.preconditioner)
    assert _scipy_iters(A, b, M) == rec["iters"]["tuned"]  # scipy's CG agrees with learnsolve's count
    assert _scipy_iters(A, b, None) > 3 * rec["iters"]["tuned"]  # plain CG, for scale
    P = load_preconditioner(run.preconditioner, backend="torch")
    S = SparseMatrix.from_scipy(A, dtype=torch.float64)
    assert int(cg(S, torch.from_numpy(b), P, rtol=1e-6)[1].iterations) == rec["iters"]["tuned"]
    assert isinstance(load_exported_model(run.export), NeuralIF)
    assert "tuned" in (run.folder / "tune.md").read_text()
    assert (run.folder / "tune.png").read_bytes()[:4] == b"\x89PNG"


def test_the_energy_loss_is_the_cg_error_energy():
    """log(E_k / E_0) against scipy's CG iterates: the same k steps from 0, the A-norm of the error by hand."""
    from learnsolve.linalg import IC0, SparseMatrix

    A = diffusion2d(6, seed=1)
    S = SparseMatrix.from_scipy(A, dtype=torch.float64)
    L = IC0(S).L
    gen = torch.Generator().manual_seed(3)
    loss = energy_loss(S, L, 4, 1, gen)
    xs = torch.randn(1, A.shape[0], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).numpy().ravel()
    Ls = L.to_scipy().tocsr()
    Minv = spla.LinearOperator(A.shape, lambda r: spla.spsolve_triangular(Ls.T.tocsr(), spla.spsolve_triangular(
        Ls, r, lower=True), lower=False))
    iterates = []
    spla.cg(A, A @ xs, M=Minv, rtol=1e-30, atol=0.0, maxiter=4, callback=iterates.append)
    e = xs - iterates[-1]
    assert float(loss) == pytest.approx(np.log(e @ A @ e / (xs @ A @ xs)), rel=1e-8)


def test_the_unrolled_loss_is_capped_for_large_matrices():
    from learnsolve.training.tune import MAX_UNROLLED, unrolled_size

    assert unrolled_size(100, 260) == (50, 8) and unrolled_size(100, 260, 1.0) == (60, 8)
    assert unrolled_size(5, 260) == (2, 8)
    for n in (65_536, 1_000_000, 10_000_000):
        k, probes = unrolled_size(400, n)
        assert k >= 2 and probes >= 1 and (k * probes * n <= MAX_UNROLLED or (k, probes) == (2, 1))


def test_break_even_counts_solves():
    from learnsolve.training.tune import Row

    fast, slow = Row(10, True, 1.0, 2.0), Row(12, True, 1.0, 3.0)
    assert break_even(0.5, fast, slow) == 500  # 500 ms of tuning / 1 ms saved per solve
    assert break_even(0.5, slow, fast) == "never"


# ------------------------------------------------------------------------------------------------------------------
# bad inputs: clear errors, nothing written
# ------------------------------------------------------------------------------------------------------------------

def test_bad_matrices_get_clear_errors():
    model = _model()
    with pytest.raises(TuneError, match="not symmetric"):
        tune_matrix(model, convdiff2d(6), budget_s=1)
    A = diffusion2d(5).tolil()
    A[3, 3] = -1.0
    with pytest.raises(TuneError, match="row 3 is not positive"):
        tune_matrix(model, A.tocsr(), budget_s=1)
    indefinite = sp.diags([np.r_[np.ones(20), 1.0], np.full(20, 1.2), np.full(20, 1.2)], [0, -1, 1], format="csr")
    with pytest.raises(TuneError, match="indefinite"):
        tune_matrix(model, indefinite, budget_s=1, maxiter=200)
    with pytest.raises(TuneError, match="square"):
        tune_matrix(model, sp.random(4, 5, density=0.5, format="csr"), budget_s=1)
    with pytest.raises(TuneError, match="NaN"):
        tune_matrix(model, sp.diags([np.r_[1.0, np.nan, 1.0]], [0], format="csr"), budget_s=1)
    for budget in (0, -1.0, float("nan")):
        with pytest.raises(TuneError, match="budget_s"):
            tune_matrix(model, diffusion2d(4), budget_s=budget)
    with pytest.raises(TuneError, match="right-hand side must be 16 x k"):
        tune_matrix(model, diffusion2d(4), budget_s=1, rhs=np.ones(15))
    with pytest.raises(TuneError, match="rtol"):
        tune_matrix(model, diffusion2d(4), budget_s=1, rtol=1.0)


def test_a_budget_too_small_gives_a_clear_result():
    r = tune_matrix(_model(), diffusion2d(6), budget_s=1e-9, repeats=1)
    assert not r.tuned and r.status.startswith("not tuned: the budget of 1e-09 s ended before the first tuning step")
    assert r.steps == 0 and r.break_even_solves is None
    assert r.rows["tuned"].iters == r.rows[r.start].iters and r.exported.type == "llt"  # the start factor


def test_models_that_cannot_be_tuned_and_bad_files(tmp_path):
    from learnsolve.models import LowRankPreconditioner

    mtx = tmp_path / "a.mtx"
    scipy.io.mmwrite(str(mtx), diffusion2d(4))
    lr_kwargs = {"variant": "gnn", "rank": 2, "hidden": 4, "layers": 1, "side": "forward"}
    lowrank = _checkpoint(tmp_path / "lr.ckpt", "lowrank_precond", "learnsolve.models.LowRankPreconditioner", lr_kwargs,
                          LowRankPreconditioner(**lr_kwargs))
    with pytest.raises(TuneError, match="cannot be tuned.*lowrank_diag"):
        run_tune(mtx, lowrank, tmp_path / "r1")
    ckpt = _checkpoint(tmp_path / "nif.ckpt")
    with pytest.raises(TuneError, match="is not a file"):
        run_tune(tmp_path / "missing.mtx", ckpt, tmp_path / "r2")
    (tmp_path / "bad.mtx").write_text("%%MatrixMarket matrix coordinate real general\n3 3 1\n1 1\n")
    with pytest.raises(TuneError, match="bad.mtx"):
        run_tune(tmp_path / "bad.mtx", ckpt, tmp_path / "r3")
    with pytest.raises(TuneError, match="does not exist"):
        run_tune(mtx, tmp_path / "none.ckpt", tmp_path / "r4")
    scipy.io.mmwrite(str(tmp_path / "b.mtx"), np.ones((5, 1)))
    with pytest.raises(TuneError, match="right-hand side must be 16 x k"):
        run_tune(mtx, ckpt, tmp_path / "r5", rhs=tmp_path / "b.mtx")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 6))  # nothing written


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import learnsolve.export.preconditioners as writers

    mtx = tmp_path / "a.mtx"
    scipy.io.mmwrite(str(mtx), diffusion2d(5))
    ckpt = _checkpoint(tmp_path / "nif.ckpt")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_matrix_files", broken)
    with pytest.raises(OSError, match="disk full"):
        run_tune(mtx, ckpt, tmp_path / "run", budget_s=1, max_steps=1, repeats=1, program=False)
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*"))


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from learnsolve.cli._hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="tune", overrides=list(overrides))


def test_the_command(tmp_path, capsys):
    """learnsolve-tune's work on the composed conf/tune.yaml: exit 1 and the reason when not tuned, 2 for missing
    arguments, the table and the file paths printed."""
    from learnsolve.cli.tune import tune_command

    mtx = tmp_path / "a.mtx"
    scipy.io.mmwrite(str(mtx), diffusion2d(5))
    ckpt = _checkpoint(tmp_path / "nif.ckpt")
    base = [f"ckpt_path={ckpt}", "budget_s=1e-9", "program=false", "progress=false", "repeats=1"]
    assert tune_command(_compose(f"matrix={mtx}", *base), tmp_path / "ok") == 1
    out = capsys.readouterr()
    assert "| IC(0) |" in out.out and "not tuned: the budget" in out.err and (tmp_path / "ok" / "tune.json").is_file()
    assert tune_command(_compose(*base), tmp_path / "none") == 2
    assert "give matrix=PATH" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_the_command_line(tmp_path):
    """The real entry point: a nonsymmetric matrix exits 2 with the reason, and no export or tune.json is written."""
    import subprocess

    from .test_bench_scripts import ROOT

    bad = tmp_path / "ns.mtx"
    scipy.io.mmwrite(str(bad), convdiff2d(5))
    ckpt = _checkpoint(tmp_path / "nif.ckpt")
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "tune.py"), f"matrix={bad}", f"ckpt_path={ckpt}",
                          f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                         check=False, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "learnsolve-tune: ns: the matrix is not symmetric" in res.stderr
    assert not (tmp_path / "run" / "export").exists() and not (tmp_path / "run" / "tune.json").exists()


def test_the_export_is_usable_from_jax(airfoil_run):
    """JAX users pass the exported M^{-1} as a callable (a host callback of the scipy operator)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    import learnsolve.jax as lsj
    from learnsolve.data.mtx import default_rhs
    from learnsolve.export import load_preconditioner

    _, run = airfoil_run
    M = load_preconditioner(run.preconditioner)
    A = _airfoil()
    b = default_rhs(A, "random", 0, "airfoil")[0]

    def precond(r):
        return jax.pure_callback(lambda v: M @ np.asarray(v), jax.ShapeDtypeStruct(r.shape, r.dtype), r)

    x, info = lsj.solve(jsparse.BCOO.from_scipy_sparse(A), jnp.asarray(b), method="cg", precond=precond, rtol=1e-6,
                       return_info=True)
    assert int(info.iterations) == run.result.rows["tuned"].iters
    assert np.linalg.norm(A @ np.asarray(x) - b) <= 1e-6 * np.linalg.norm(b) * 1.0001


def test_the_benchmark_script(tmp_path):
    """scripts/bench_tune.py on one small generated system: the JSON's rows and summary agree with its table."""
    import importlib.util

    from .test_bench_scripts import ROOT

    spec = importlib.util.spec_from_file_location("bench_tune", ROOT / "scripts" / "bench_tune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    ckpt = _checkpoint(tmp_path / "nif.ckpt")
    try:
        out = bench.main(["--ckpt", str(ckpt), "--budget", "0.5", "--pyamg", "--matrix-dir", "", "--families",
                          "lognormal2d", "--size", "8", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (m,) = out["matrices"]
    assert m["matrix"] == "lognormal2d_8" and m["n"] == 64 and set(m["iters"]) == {"tuned", "before", "ic0", "mic0",
                                                                                   "amg_sa"}
    assert out["summary"]["tuned_below_ic0"] == int(m["iters"]["tuned"] < m["iters"]["ic0"])
    md = (tmp_path / "bench_tune.md").read_text()
    assert "lognormal2d_8" in md and json.loads((tmp_path / "bench_tune.json").read_text())["budget_s"] == 0.5
