"""The benchmark harness (scripts/benchmarks/) and the peak-memory probe (learnsolve.evaluation.memory)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from learnsolve.data.generators import GENERATORS, poisson_matrix
from learnsolve.data.system import to_scipy
from learnsolve.evaluation.memory import PeakRSS, rss_kb, status_kb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks import harness, linalg, memory, problems


def test_bench_interleaves_and_calibrates_inner_loop():
    import time

    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = harness.bench(fns, repeats=4, min_sample=0.0, warmup=2)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up, then one call per sample (inner loop 1)
    assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order alternates between repeats
    assert t["a"].inner == t["b"].inner == 1 and len(t["a"].samples) == 4

    slow = harness.bench({"sleep": lambda: time.sleep(0.002)}, repeats=3, min_sample=0.01)["sleep"]
    assert 1 <= slow.inner <= 5  # ceil(0.01 / (>= 2 ms))
    assert slow.median >= 0.0019 and slow.inner * slow.median >= 0.002


def test_timing_statistics_and_json():
    t = harness.Timing([3.0, 1.0, 2.0, 10.0], inner=7)
    assert t.median == 2.5 and t.min == 1.0
    js = t.to_json()
    assert js["q25_s"] == pytest.approx(1.75) and js["q75_s"] == pytest.approx(4.75)
    assert js["inner_loop"] == 7 and js["samples_s"] == [3.0, 1.0, 2.0, 10.0]


def test_goals_rows_and_helpers():
    assert harness.goal(0.5, "<=", 0.6) == ("<= 0.6", True)
    assert harness.goal(0.7, "<=", 0.6) == ("<= 0.6", False)
    assert harness.goal(120.0, ">=", 100) == (">= 100", True)
    assert harness.goal(float("nan"), "<=", 1) == ("<= 1", None)
    sec = harness.Section("x", "X")
    r = sec.row("r", 2.0, 4.0, ratio=0.5, target=("<=", 0.6))
    assert (r.goal, r.met, r.section) == ("<= 0.6", True, "x")
    assert sec.row("plain", 1.0).met is None
    assert harness.rel_diff(np.array([3.0, 4.0]), np.array([0.0, 5.0])) == pytest.approx(math.sqrt(10) / 5)
    A = poisson_matrix(5)
    b = np.ones(25)
    x, flag, its = harness.scipy_cg(A, b, rtol=1e-10)
    assert flag == 0 and 1 <= its <= 25 and np.linalg.norm(A @ x - b) <= 1e-9 * 5


def test_problems_come_from_the_generators():
    m = 7
    P = problems.Problems(problems.Config(n_side=m, repeats=1, min_sample=0.0))
    A = P.poisson
    h = 1.0 / (m + 1)
    assert A.shape == (49, 49) and A.nnz == 5 * 49 - 4 * m
    assert abs(A - to_scipy(GENERATORS["poisson2d"](m))).max() == 0
    assert np.allclose(A.diagonal(), 4 / h**2) and np.isclose(A[0, 1], -1 / h**2)
    assert P.S.shape == (49, 49)
    mats, bs = problems.diffusion_systems(6, 3, seed=0)
    assert bs.shape == (3, 36)
    assert all(np.array_equal(M.indices, mats[0].indices) for M in mats)  # one pattern
    assert not np.allclose(mats[0].data, mats[1].data)  # different coefficients
    assert all(abs(M - M.T).max() < 1e-12 and np.linalg.eigvalsh(M.toarray()).min() > 0 for M in mats)


def test_peak_probe_sees_a_freed_allocation():
    if not status_kb():
        pytest.skip("/proc/self/status unavailable")
    with PeakRSS() as probe:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        during = probe.growth_now_kb()
        del a
    assert during >= 60 * 1024
    assert probe.growth_kb >= 60 * 1024  # the peak, although the array was freed inside the block
    if probe.exact:
        assert probe.growth_kb <= 80 * 1024 and probe.method == "clear_refs"
    assert rss_kb() < probe.peak_kb


def test_memory_child_process(tmp_path):
    proc = memory._run_child("implicit,5,10,1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n"] == 100 and r["forward_iterations"] == 5 and r["adjoint_iterations"] == 5
    assert r["grad_finite"] and r["peak_growth_kb"] >= 0
    assert r["peak_rss_kb"] - r["baseline_rss_kb"] == r["peak_growth_kb"]


def test_driver_writes_json(tmp_path):
    out = tmp_path / "b.json"
    argv = ["--quick", "--only", "spmv,gradcheck", "--n", "20", "--repeats", "2", "--min-sample", "0.001",
            "--max-wait", "0", "--threads", "1", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert linalg.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    d = json.loads(out.read_text())
    assert set(d) == {"meta", "sections", "summary"} and list(d["sections"]) == ["spmv", "gradcheck"]
    assert d["meta"]["threads"] == 1 and d["meta"]["config"]["n_side"] == 20 and d["meta"]["quick"] is True
    spmv = d["sections"]["spmv"]
    assert spmv["details"]["n"] == 400 and spmv["details"]["nnz"] == 5 * 400 - 4 * 20
    for row in spmv["rows"]:
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]) and row["goal"] == "<= 0.6"
        assert len(spmv["details"]["f64"]["learnsolve"]["samples_s"]) == 2
    grad = d["sections"]["gradcheck"]
    assert [r["met"] for r in grad["rows"]] == [True, True]
    assert all(r["value"] < 1e-8 for r in grad["rows"]) and grad["details"]["n"] == 100
    goals = [r for s in d["sections"].values() for r in s["rows"] if r["met"] is not None]
    assert d["summary"]["goals"] == len(goals) == 4
    assert d["summary"]["met"] + len(d["summary"]["not_met"]) == 4
