"""scripts/bench_multigrid.py, bench_safeguard.py, bench_baselines.py (cycle), bench_learned_strength.py and
study_prolongator_weights.py: their numbers against independent references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import safeguard
from learnsolve.models import GNNSolver
from learnsolve.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_baselines
import bench_learned_strength
import bench_multigrid
import bench_neural_if
import bench_safeguard
import neural_ode_memory
import study_prolongator_weights

CKPT = ROOT / "tests" / "fixtures" / "checkpoints" / "pre_house_neural_if.ckpt"


def test_bench_multigrid_rows_and_goals_are_consistent(tmp_path):
    model = GNNSolver(hidden=4, layers=0, coarse_size=8).double()
    ckpt = tmp_path / "gnn.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "learnsolve_config": {"model": {"name": "gnn_solver", "net": {
                    "_target_": "learnsolve.models.GNNSolver", "hidden": 4, "layers": 0, "coarse_size": 8}},
                    "data": {"family": "diffusion2d"}}}, ckpt)
    threads = torch.get_num_threads()
    try:
        code = bench_multigrid.main(["--ckpt", str(ckpt), "--sizes", "12", "24", "--num-test", "1", "--repeats",
                                     "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    d = json.loads((tmp_path / "bench_multigrid.json").read_text())
    rows = {(r["size"], r["method"]): r for r in d["rows"]}
    methods = {"ic0", "mic0", "amg_sa", "multigrid", "learned", "learned_raw"}
    assert {m for _, m in rows} == methods and all(r["converged"] for r in rows.values())
    for size in (12, 24):
        base = rows[size, "ic0"]["total_s"]
        amg = rows[size, "amg_sa"]["total_s"]
        for m in methods:
            r = rows[size, m]
            assert r["total_s"] == pytest.approx(r["setup_s"] + r["solve_s"])
            assert r["total_vs_ic0"] == pytest.approx(r["total_s"] / base)
            assert r["total_vs_amg"] == pytest.approx(r["total_s"] / amg)
        # the untrained model is the classical hierarchy: the same iterations
        assert rows[size, "learned_raw"]["iters"] == rows[size, "multigrid"]["iters"] < rows[size, "ic0"]["iters"]
    assert d["goals"] == []  # no goal at these sizes
    assert (tmp_path / "bench_multigrid.md").read_text().count("| diffusion2d | 12x12 |") == 6


def test_bench_multigrid_goals():
    def row(size, method, **kw):
        return {"family": "diffusion2d", "size": size, "method": method, "iters": 10.0, "total_vs_ic0": 1.0,
                "total_vs_amg": 1.0, **kw}

    summary = [row(64, "learned", iters=8.0, total_vs_ic0=0.9), row(256, "learned", iters=11.0, total_vs_ic0=0.4,
                                                                    total_vs_amg=1.6),
               {**row(256, "learned"), "family": "anisotropic2d", "total_vs_amg": 0.3}]
    goals = {g["goal"]: (round(g["value"], 4), g["met"]) for g in bench_multigrid.goals(summary)}
    assert goals == {"diffusion2d 64^2: learned total / IC(0)": (0.9, False),
                     "diffusion2d 256^2: learned total / IC(0)": (0.4, True),
                     "diffusion2d: learned iterations 256^2 / 64^2": (1.375, True),
                     "diffusion2d 256^2: learned total / AMG-SA": (1.6, False),
                     "anisotropic2d 256^2: learned total / AMG-SA": (0.3, True)}


def test_bench_safeguard_reports_the_safeguards_own_decision(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert bench_safeguard.main(["--ckpt", str(CKPT), "--sizes", "16", "--repeats", "1",
                                     "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    d = json.loads((tmp_path / "bench_safeguard.json").read_text())
    (row,) = d["rows"]
    assert row["n"] == 256 and row["check_ratio"] == pytest.approx(row["check_ms"] / row["solve_ms"])
    model, _ = load_model(CKPT)
    model.eval()
    batch = Batch.from_data_list([GENERATORS["diffusion2d"](16, seed=bench_safeguard.SEED0)])
    with torch.no_grad():
        from learnsolve.models.base import system_matrix

        A = system_matrix(batch)
        check = safeguard(A, model.preconditioner_for(batch), model.fallback_for(batch), b=batch.b.view(-1))
    assert row["accepted"] == check.all_accepted and row["fallback"] == check.fallback_name


def test_neural_ode_memory_table(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert neural_ode_memory.main(["--size", "4", "--substeps", "1", "2", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "neural_ode_memory.json").read_text())["rows"]
    assert [(r["rk4_steps"], r["mode"]) for r in rows] == [(15, "backprop"), (15, "adjoint"), (30, "backprop"),
                                                          (30, "adjoint")]
    assert all(r["seconds"] > 0 for r in rows)
    assert (tmp_path / "neural_ode_memory.md").read_text().count("| 4x4 |") == 4


def test_bench_baselines_cycle_section_compares_one_hierarchy(tmp_path):
    """The cycle rows: the same pyamg hierarchy, two cycles; the compiled one takes at least as many iterations (one
    sweep per side instead of pyamg's two) and the ratio is the solve-time ratio."""
    threads = torch.get_num_threads()
    try:
        assert bench_baselines.main(["--sections", "cycle", "--quick", "--families", "lognormal2d", "channels2d",
                                     "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "bench_baselines.json").read_text())["cycle"]
    assert {(r["family"], r["amg"]) for r in rows} == {(f, k) for f in ("lognormal2d", "channels2d") for k in ("sa", "rs")}
    for r in rows:
        assert r["iters_compiled"] >= r["iters_pyamg"] > 0
        assert r["ratio"] == pytest.approx(r["compiled_ms"] / r["pyamg_ms"])
    assert "pyamg's cycle vs the compiled V-cycle" in (tmp_path / "bench_baselines.md").read_text()


def test_bench_learned_strength_rows(tmp_path):
    """A short run: every method on the system, the untrained strength network equals classical SA (all strong),
    and the network's time is reported for the network rows only."""
    threads = torch.get_num_threads()
    try:
        assert bench_learned_strength.main(["--steps", "4", "--sizes", "16", "--families", "channels2d",
                                            "--repeats", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = {r["method"]: r for r in json.loads((tmp_path / "learned_strength.json").read_text())["rows"]}
    assert set(rows) == {"sa", "evolution", "learned", "untrained", "mic0", "amg_sa", "amg_rs"}
    assert rows["untrained"]["iters"] == rows["sa"]["iters"] and rows["untrained"]["levels"] == rows["sa"]["levels"]
    assert rows["learned"]["network_ms"] > 0 and rows["sa"]["network_ms"] == 0
    assert all(r["converged"] and r["total_ms"] == pytest.approx(r["setup_ms"] + r["solve_ms"]) for r in rows.values())


def test_study_prolongator_weights_starts_classical(tmp_path):
    """Step 0 is classical smoothed aggregation: its iterations equal build_multigrid's without weights."""
    import numpy as np
    import yaml

    from learnsolve.linalg import SparseMatrix, cg
    from learnsolve.linalg.preconditioners.multigrid import build_multigrid

    threads = torch.get_num_threads()
    try:
        assert study_prolongator_weights.main(["--families", "lognormal2d", "--side", "12", "--losses", "pcg",
                                               "--lrs", "0.01", "--steps", "10", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    (row,) = json.loads((tmp_path / "prolongator_weights.json").read_text())["rows"]
    params = yaml.safe_load((ROOT / "conf" / "benchmark" / "hard.yaml").read_text())["params"]["lognormal2d"]
    A = SparseMatrix.from_pyg(GENERATORS["lognormal2d"](12, seed=5, reference=False, **params)).detach()
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(A.shape[0])).view(1, -1, 1)
    ref = int(cg(A, b, M=build_multigrid(A, coarse_size=16), rtol=1e-6, maxiter=3000)[1].iterations.max())
    assert row["iterations"][0] == ref and len(row["iterations"]) == 2


def test_bench_neural_if_parts_add_up_and_match_the_models_solve(tmp_path):
    """A light neural_if checkpoint with random output layers: the table's parts add up to its total, the learned
    iterations are model.solve's, the untrained rows are its base's, and the JSON summary is written."""
    import numba

    from learnsolve.linalg import MIC0, SparseMatrix, cg
    from learnsolve.models import NeuralIF

    torch.manual_seed(0)
    model = NeuralIF(hidden=4, layers=1, arch="light", base="mic0", loss="kappa")
    with torch.no_grad():
        model.net.head_out.weight.normal_(0.0, 0.05)
    ckpt = tmp_path / "nif.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "learnsolve_config": {"model": {"name": "neural_if", "net": {
                    "_target_": "learnsolve.models.NeuralIF", "hidden": 4, "layers": 1, "arch": "light",
                    "base": "mic0", "loss": "kappa"}}, "data": {"family": "diffusion2d"}}}, ckpt)
    threads, nthreads = torch.get_num_threads(), numba.get_num_threads()
    try:
        out = bench_neural_if.main(["--ckpt", f"m={ckpt}", "--families", "diffusion2d", "--sizes", "16",
                                    "--num-test", "1", "--repeats", "1", "--inference-sizes", "16",
                                    "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
        numba.set_num_threads(nthreads)
    rec = out["records"][0]
    for key in ("untrained", "learned"):
        r = rec[key]
        parts = r["base_ms"] + r["network_ms"] + r["safeguard_ms"] + r["solve_ms"]
        assert r["total_ms"] == pytest.approx(parts) and r["network_ms"] > 0 and r["safeguard_ms"] > 0
    batch = bench_neural_if.system("diffusion2d", 16, bench_neural_if.SEED0)
    loaded, _ = load_model(ckpt)
    with torch.no_grad():
        _, info = loaded.solve(batch, rtol=bench_neural_if.RTOL)
    assert rec["learned"]["iters"] == int(info.iterations)
    A = SparseMatrix.from_pyg(batch).detach()
    base_its = int(cg(A, batch.b.view(-1), MIC0(A), rtol=bench_neural_if.RTOL)[1].iterations)
    assert rec["untrained"]["iters"] == base_its == rec["mic0"]["iters"]
    saved = json.loads((tmp_path / "bench_neural_if.json").read_text())
    assert saved["summary"][0]["systems"] == 1 and (tmp_path / "bench_neural_if.md").is_file()
