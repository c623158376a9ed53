"""Evaluation: `python scripts/evaluate.py` end to end on tiny checkpoints, checked against independent
scipy / pyamg runs, plus the robustness rules of learnsolve.evaluation on hand-made cases (in process)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.data import GENERATORS, load_system, make_system
from learnsolve.evaluation import BASELINES, PRECONDITIONERS, evaluate_matrix, evaluate_suite, exit_code
from learnsolve.linalg.preconditioners.multigrid import from_pyamg
from learnsolve.models import LowRankPreconditioner

from .cli_runner import run_cli
from .conftest import SHARED_MATRICES, convdiff2d, diffusion2d

ROOT = Path(__file__).resolve().parents[1]
RTOLS = (1e-6, 1e-8)


@pytest.fixture
def ckpt(tiny_checkpoint) -> Path:
    """A tiny trained neural_if checkpoint (a learned linear SPD preconditioner)."""
    return tiny_checkpoint("neural_if")


def evaluate_cli(out: Path, *overrides: str):
    """``python scripts/evaluate.py hydra.run.dir=OUT repeats=1 progress=false OVERRIDES``, in this process."""
    return run_cli("evaluate", f"hydra.run.dir={out}", "repeats=1", "progress=false", *overrides)


def _results(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def _check_outputs(out: Path, rows: list[dict], matrices: list[str], precs: list[str]) -> None:
    """Every output file exists and there is exactly one row per (matrix, preconditioner)."""
    for f in ("results.csv", "results.json", "results.md", "plots/summary.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    with open(out / "results.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(rows) == len(matrices) * len(precs)
    assert "residual_history" not in csv_rows[0]
    for key in ("iters_1e-06", "iters_1e-08", "ratio_ic0_1e-06", "setup_s", "solve_s", "total_s", "rel_residual",
                "converged", "status", "reason", "fallback"):
        assert key in csv_rows[0], key
    assert sorted((r["matrix"], r["preconditioner"]) for r in rows) == sorted(
        (m, p) for m in matrices for p in precs)
    md = (out / "results.md").read_text()
    for m in matrices:
        assert f"| {m} |" in md
        assert (out / "plots" / f"convergence_{m}.png").is_file()
    for r in rows:
        if r["status"] == "ok":
            assert r["converged"] and r["rel_residual"] <= 10 * min(RTOLS)
            assert r["total_s"] == pytest.approx(r["setup_s"] + r["solve_s"])
        # the learned preconditioner's safeguard (on by default) says whether it fell back, and why
        if r["preconditioner"] in ("learned", "untrained") and r["status"] == "ok":
            assert isinstance(r["fallback"], bool)
            assert r["fallback"] == ("safeguard: fell back to " in (r["reason"] or "")), r["reason"]
        elif r["preconditioner"] not in ("learned", "untrained"):
            assert r["fallback"] is None


def _scipy_cg_iterations(A: sp.csr_matrix, b: np.ndarray, M, rtol: float, maxiter: int) -> int | None:
    """CG iterations of scipy.sparse.linalg.cg (counted with its callback) to reach rtol, None if not."""
    count = [0]

    def cb(_):
        count[0] += 1

    _, info = spla.cg(A, b, rtol=rtol, atol=0.0, M=M, maxiter=maxiter, callback=cb)
    return count[0] if info == 0 else None


def _scipy_preconditioner(name: str, A: sp.csr_matrix):
    import pyamg

    if name == "jacobi":
        d = 1.0 / A.diagonal()
        return spla.LinearOperator(A.shape, matvec=lambda r: d * r.ravel(), dtype=np.float64)
    if name in ("amg_sa", "amg_rs"):  # the baselines: pyamg's hierarchy (defaults, RS theta 0.25) in the compiled cycle
        ml = pyamg.smoothed_aggregation_solver(A) if name == "amg_sa" else pyamg.ruge_stuben_solver(A)
        mg = from_pyamg(ml)
        return spla.LinearOperator(A.shape, dtype=np.float64,
                                   matvec=lambda r: mg.apply(torch.from_numpy(np.asarray(r, np.float64).reshape(1, -1, 1)))
                                   .numpy().ravel())
    raise ValueError(name)


# The same PCG recurrences with the same preconditioner (AMG: the identical pyamg V-cycle); only the rounding
# of dot products differs (torch vs numpy), which can move a threshold crossing by one iteration on an
# ill-conditioned matrix (measured: 1138_bus, Jacobi, rtol 1e-8: 936 vs 935; every other count, AMG
# included, was identical).
TOLERANCE = {"jacobi": 1, "amg_sa": 1, "amg_rs": 1}


def _compare_with_scipy(rows: list[dict], systems: dict[str, tuple[sp.csr_matrix, np.ndarray]],
                        maxiter: int) -> list[tuple]:
    """learnsolve's iterations vs scipy CG's for Jacobi and AMG on the SPD systems; returns what was compared."""
    compared = []
    for r in rows:
        if r["matrix"] not in systems or r["preconditioner"] not in TOLERANCE or r["status"] != "ok":
            continue
        assert r["solver"] == "cg"
        A, b = systems[r["matrix"]]
        M = _scipy_preconditioner(r["preconditioner"], A)
        for rtol in RTOLS:
            ours = r[f"iters_{rtol:g}"]
            ref = _scipy_cg_iterations(A, b, M, rtol, maxiter)
            assert ref is not None and abs(ours - ref) <= TOLERANCE[r["preconditioner"]], (r["matrix"],
                                                                                           r["preconditioner"], rtol,
                                                                                           ours, ref)
            compared.append((r["matrix"], r["preconditioner"], rtol, ours, ref))
    return compared


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------

def test_generated_suite_with_checkpoint(ckpt, tmp_path):
    specs = [("diffusion2d", 12, 900001), ("convdiff2d", 12, 900002)]
    out = tmp_path / "eval"
    spec_arg = "[" + ",".join(f"[{f},{s},{seed}]" for f, s, seed in specs) + "]"
    res = evaluate_cli(out, f"ckpt_path={ckpt}", "benchmark=generated", f"benchmark.specs={spec_arg}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _results(out)
    names = [f"{f}_{s}_s{seed}" for f, s, seed in specs]
    precs = [*BASELINES, "untrained", "learned"]  # the registry's baselines and the model untrained (the default)
    by = {(r["matrix"], r["preconditioner"]): r for r in rows}
    # the nonsymmetric matrix: GMRES, ILU(0) in IC(0)'s place, the SPD-only learned preconditioner skipped
    assert by[(names[1], "learned")]["status"] == "skipped" and "SPD" in by[(names[1], "learned")]["reason"]
    assert by[(names[1], "ilu0")]["solver"] == "gmres" and by[(names[1], "ilu0")]["status"] == "ok"
    _check_outputs(out, [{**r, "preconditioner": "ic0" if r["preconditioner"] == "ilu0" else r["preconditioner"]}
                         for r in rows], names, precs)
    learned = by[(names[0], "learned")]
    assert learned["status"] == "ok" and learned["solver"] == "cg" and learned["ratio_ic0_1e-08"] > 0
    # the untrained row is the model's classical start: neural_if's base factor (base=auto: the faster of MIC(0) and
    # IC(0), MIC(0) on this smooth system), or the safeguard's fallback (the same fastest factor: MIC(0) here)
    from learnsolve.models.checkpoint import load_checkpoint

    base = load_checkpoint(ckpt).model.base
    untrained = by[(names[0], "untrained")]
    assert untrained["status"] == "ok" and isinstance(untrained["fallback"], bool)
    start = "mic0" if untrained["fallback"] or base == "auto" else base
    assert untrained["iters_1e-06"] == by[(names[0], start)]["iters_1e-06"], (untrained, by[(names[0], start)])
    assert by[(names[0], "ic0")]["ratio_ic0_1e-06"] == 1.0
    assert "| diffusion2d_12_s900001 | 144 | cg | learned | ok |" in res.stdout  # the table is printed
    data = GENERATORS["diffusion2d"](12, seed=900001)
    A = sp.csr_matrix((data.edge_attr.numpy(), data.edge_index.numpy()), shape=(144, 144))
    compared = _compare_with_scipy(rows, {names[0]: (A, data.b.numpy())}, 2000)
    assert len(compared) == 6


def test_pyamg_suite_with_checkpoint(ckpt, tmp_path):
    from pyamg.gallery import load_example

    names = ["unit_cube", "knot", "recirc_flow"]
    out = tmp_path / "eval"
    res = evaluate_cli(out, f"ckpt_path={ckpt}", "benchmark=pyamg", f"benchmark.names=[{','.join(names)}]")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _results(out)
    _check_outputs(out, [{**r, "preconditioner": "ic0" if r["preconditioner"] == "ilu0" else r["preconditioner"]}
                         for r in rows], names, list(PRECONDITIONERS))
    by = {(r["matrix"], r["preconditioner"]): r for r in rows}
    assert by[("recirc_flow", "none")]["solver"] == "gmres"
    assert by[("knot", "learned")]["status"] == "ok"
    systems = {}
    for n in ("unit_cube", "knot"):
        A = sp.csr_matrix(load_example(n)["A"], dtype=np.float64)
        systems[n] = (A, np.random.default_rng(0).standard_normal(A.shape[0]))  # the suite's seeded random b
    assert len(_compare_with_scipy(rows, systems, 2000)) == 12


@pytest.mark.skipif(not SHARED_MATRICES.is_dir(), reason="../shared/benchmarks/matrices is not present")
def test_shared_matrix_market_folder_with_checkpoint(ckpt, tmp_path):
    out = tmp_path / "eval"
    maxiter = 1000
    res = evaluate_cli(out, f"ckpt_path={ckpt}", "benchmark=matrix_market", f"benchmark.path={SHARED_MATRICES}",
                       f"maxiter={maxiter}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _results(out)
    files = sorted(p for p in SHARED_MATRICES.iterdir() if p.suffix == ".mtx")
    names = [p.stem for p in files]
    _check_outputs(out, [{**r, "preconditioner": "ic0" if r["preconditioner"] == "ilu0" else r["preconditioner"]}
                         for r in rows], names, list(PRECONDITIONERS))
    assert all(r["status"] != "error" for r in rows)
    by = {(r["matrix"], r["preconditioner"]): r for r in rows}
    if "sherman5" in names:  # nonsymmetric: GMRES, ILU(0), the learned SPD preconditioner skipped
        assert by[("sherman5", "ilu0")]["solver"] == "gmres"
        assert by[("sherman5", "learned")]["status"] == "skipped"
    if "bcsstk03" in names:  # IC(0) breaks down on it: retried with a diagonal shift, and said so
        assert "retried with diagonal shift" in by[("bcsstk03", "ic0")]["reason"]
    systems = {}
    for p in files:
        A = sp.csr_matrix(scipy.io.mmread(p), dtype=np.float64)
        if abs(A - A.T).max() == 0 and A.diagonal().min() > 0:
            systems[p.stem] = (A, load_system(p).b.numpy())  # the suite's right-hand side (random, seeded)
    assert len(_compare_with_scipy(rows, systems, maxiter)) >= 10


def test_malformed_file_next_to_good_ones_baselines_only(tmp_path):
    folder = tmp_path / "mtx"
    folder.mkdir()
    scipy.io.mmwrite(folder / "diff8.mtx", diffusion2d(8, seed=3))
    scipy.io.mmwrite(folder / "conv7.mtx", convdiff2d(7))
    (folder / "broken.mtx").write_text("%%MatrixMarket matrix coordinate real general\n3 3 2\n1 1 oops\n")
    out = tmp_path / "eval"
    res = evaluate_cli(out, "ckpt_path=null", "benchmark=matrix_market", f"benchmark.path={folder}", "logger=wandb")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _results(out)
    media = out / "wandb" / "latest-run" / "files" / "media"  # offline W&B run: the table and the plots
    assert list(media.glob("table/evaluate/results_*.table.json")) and list(media.glob("images/evaluate/*.png"))
    bad = [r for r in rows if r["matrix"] == "broken"]
    assert len(bad) == 1 and bad[0]["status"] == "error" and "broken.mtx" in bad[0]["reason"]
    good = [r for r in rows if r["matrix"] != "broken"]
    assert len(good) == 2 * len(BASELINES) and not any(r["preconditioner"] == "learned" for r in rows)
    # every baseline solves both, except MIC(0) and deflated IC(0) (SPD only) on the nonsymmetric one
    mic_conv = [r for r in good if r["matrix"] == "conv7" and r["preconditioner"] in ("mic0", "ic0_deflated")]
    assert len(mic_conv) == 2 and all(r["status"] == "skipped" and "SPD" in r["reason"] for r in mic_conv)
    assert all(r["status"] == "ok" for r in good if r not in mic_conv), [(r["matrix"], r["preconditioner"],
                                                                          r["reason"]) for r in good]
    assert "| broken |" in (out / "results.md").read_text()
    # nothing evaluable at all: exit status 1
    shutil.copy(folder / "broken.mtx", tmp_path / "only_bad.mtx")
    (folder / "diff8.mtx").unlink()
    (folder / "conv7.mtx").unlink()
    res = evaluate_cli(tmp_path / "eval2", "ckpt_path=null", "benchmark=matrix_market", f"benchmark.path={folder}",
                       "preconditioners=[none]")
    assert res.returncode == 1, res.stderr[-3000:]
    assert "nothing could be evaluated" in res.stderr


def test_bad_arguments_exit_2(tmp_path):
    missing = tmp_path / "nowhere" / "last.ckpt"
    res = evaluate_cli(tmp_path / "e1", f"ckpt_path={missing}")
    assert res.returncode == 2 and str(missing) in res.stderr
    res = evaluate_cli(tmp_path / "e2", "ckpt_path=null", "benchmark=no_such_suite")
    assert res.returncode == 2 and "no_such_suite" in res.stderr


def test_surrogate_checkpoint_is_evaluated_on_its_test_set(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("physics_nn")
    out = tmp_path / "eval"
    res = evaluate_cli(out, f"ckpt_path={ckpt}", "benchmark=pyamg")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _results(out)
    assert {r["metric"] for r in rows} == {"rel_error", "coef_rel_error", "coef_rel_error_scaled"}
    assert all(r["split"] == "test" and r["graphs"] == 2 and r["status"] == "ok" for r in rows)
    assert (out / "results.csv").is_file() and "| test | rel_error |" in (out / "results.md").read_text()
    assert "surrogate" in (out / "evaluate.log").read_text()


# ------------------------------------------------------------------------------------------------
# robustness rules, in process
# ------------------------------------------------------------------------------------------------

def _system(A: sp.csr_matrix, name="m"):
    n = A.shape[0]
    return name, make_system(A, A @ np.ones(n), pos=np.zeros((n, 1)), coeff=np.ones(n), family="test", params={},
                             seed=0)


class _NaNPreconditioner(torch.nn.Module):
    kind = "preconditioner"
    requires_spd = True

    def preconditioner_for(self, batch):
        from learnsolve.linalg import FunctionPreconditioner

        return FunctionPreconditioner(lambda R: R * float("nan"), symmetric=True)


def test_nan_model_fails_fixed_size_model_skipped_on_other_sizes():
    kw = {"rtols": RTOLS, "repeats": 1, "preconditioners": ["ic0", "learned"]}
    rows = evaluate_matrix(_NaNPreconditioner(), *_system(diffusion2d(6)), **kw)
    assert rows[1]["status"] == "failed" and "NaN/Inf" in rows[1]["reason"]
    fixed = LowRankPreconditioner(side="forward", variant="fixed", num_nodes=36, rank=2).double().eval()
    rows = evaluate_suite(fixed, [_system(diffusion2d(6), "n36"), _system(diffusion2d(7), "n49")], progress=False, **kw)
    learned = {r["matrix"]: r for r in rows if r["preconditioner"] == "learned"}
    assert learned["n36"]["status"] == "ok"
    assert learned["n49"]["status"] == "skipped" and "num_nodes=36" in learned["n49"]["reason"]
    assert exit_code(rows) == 0 and exit_code([r for r in rows if r["status"] == "skipped"]) == 1


def test_spd_only_methods_skipped_with_reason_and_ic0_breakdown_retried():
    kw = {"rtols": RTOLS, "repeats": 1, "maxiter": 300}
    neg = (-diffusion2d(5)).tocsr()  # symmetric, negative diagonal: not SPD -> GMRES, IC(0) skipped
    rows = {r["preconditioner"]: r for r in evaluate_matrix(None, *_system(neg), **kw)}
    assert rows["none"]["solver"] == "gmres" and rows["none"]["status"] == "ok"
    assert rows["ic0"]["status"] == "skipped" and "SPD" in rows["ic0"]["reason"]
    rows = evaluate_matrix(None, *_system(convdiff2d(5)), solver="cg", **kw)  # forced CG, nonsymmetric
    assert {r["status"] for r in rows} == {"skipped"} and "nonsymmetric" in rows[0]["reason"]
    # Kershaw's matrix: SPD, but IC(0) meets a negative pivot: retried with a diagonal shift, and reported
    K = sp.csr_matrix(np.array([[3.0, -2, 0, 2], [-2, 3, -2, 0], [0, -2, 3, -2], [2, 0, -2, 3]]))
    ic0 = next(r for r in evaluate_matrix(None, *_system(K), **kw) if r["preconditioner"] == "ic0")
    assert ic0["status"] == "ok" and "IC(0) broke down at row 3; retried with diagonal shift" in ic0["reason"]


def test_unreadable_system_and_suite_failure_become_error_rows():
    def suite():
        yield _system(diffusion2d(4), "fine")
        raise RuntimeError("disk gone")

    rows = evaluate_suite(None, suite(), rtols=RTOLS, repeats=1, progress=False, preconditioners=["none"])
    assert [r["status"] for r in rows] == ["ok", "error"] and "disk gone" in rows[1]["reason"]
