"""scripts/bench_twolevel.py and scripts/bench_safeguard.py: their numbers against independent references."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.data.system import to_scipy
from learnsolve.linalg import safeguard
from learnsolve.models.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_safeguard
import bench_twolevel

CKPT = ROOT / "tests" / "fixtures" / "checkpoints" / "pre_house_neural_if.ckpt"


def test_twolevel_is_an_spd_vcycle_and_the_table_is_consistent(tmp_path):
    A = to_scipy(GENERATORS["diffusion2d"](10, seed=3)).tocsr()
    M, nc = bench_twolevel.twolevel_setup(A)
    assert 1 <= nc < A.shape[0]
    dense = np.column_stack([M.matvec(e) for e in np.eye(A.shape[0])])
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)  # symmetric V(1,1) cycle
    assert np.linalg.eigvalsh((dense + dense.T) / 2).min() > 0
    # a V(1,1) cycle with an exact coarse solve: the error propagator I - M A is an A-norm contraction
    E = np.eye(A.shape[0]) - dense @ A.toarray()
    w, V = np.linalg.eigh(A.toarray())
    half = V @ np.diag(np.sqrt(w)) @ V.T
    assert np.linalg.norm(half @ E @ np.linalg.inv(half), 2) < 1.0
    threads = torch.get_num_threads()
    try:
        assert bench_twolevel.main(["--sizes", "12", "--repeats", "1", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    d = json.loads((tmp_path / "bench_twolevel.json").read_text())
    rows = {r["method"]: r for r in d["rows"]}
    assert set(rows) == {"ic0", "mic0", "amg_sa", "twolevel"} and all(r["converged"] for r in rows.values())
    base = rows["ic0"]["setup_s"] + rows["ic0"]["solve_s"]
    for r in rows.values():
        assert r["total_s"] == pytest.approx(r["setup_s"] + r["solve_s"])
        assert r["total_vs_ic0"] == pytest.approx(r["total_s"] / base)
    assert rows["twolevel"]["iters"] < rows["ic0"]["iters"]
    assert (tmp_path / "bench_twolevel.md").read_text().count("| 12x12 |") == 4


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
