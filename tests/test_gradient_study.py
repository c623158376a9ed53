"""The gradient quality / memory study (learnsolve.evaluation.gradients, scripts/gradient_quality.py)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from learnsolve.evaluation.gradients import memory_point, quality_study

from .cli_runner import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return quality_study(sizes=(8,), sigma2s=(0.5,), truncations=(1, 4), sample=0.5, draws=12, rhs=4,
                         directions=4, repeats=1)


def _row(rows, mode, k=None):
    (r,) = [r for r in rows if r["mode"] == mode and r.get("k") == k]
    return r


def test_implicit_and_unrolled_match_finite_differences_truncated_does_not(rows):
    imp, unr = _row(rows, "implicit"), _row(rows, "unrolled")
    t1, t4 = _row(rows, "truncated", 1), _row(rows, "truncated", 4)
    assert imp["fd_err_est"] < 1e-8  # the reference itself is accurate
    assert imp["err_fd"] < 1e-6 and imp["cos_fd"] > 1 - 1e-10
    assert imp["err_exact"] < 1e-8
    assert imp["adjoint_iters"] > 0 and imp["iters"] > 4
    assert unr["err_fd"] < 1e-6 and unr["err_exact"] < 1e-6  # converged: unrolling agrees
    assert t1["err_exact"] > 1e-2 and t1["err_exact"] > t4["err_exact"] > 1e-4  # truncation is measurably off
    # what autograd keeps: unrolled grows with the iterations, implicit keeps x and A
    assert unr["saved_mb"] > 5 * imp["saved_mb"]
    assert imp["cond"] > 1


def test_stochastic_row_reports_bias_within_noise(rows):
    st = _row(rows, "stochastic", 0.5)
    assert st["rel_sd"] > 0.05  # genuinely random...
    assert st["bias"] < 4 * st["bias_noise"]  # ...and unbiased within 4 standard errors
    assert st["err_exact"] > 0.01 and st["err_fd"] > 0


def test_memory_point_implicit_flat_unrolled_linear():
    imp = [memory_point(400, it, "implicit") for it in (10, 80)]
    unr = [memory_point(400, it, "unrolled") for it in (10, 80)]
    assert all(r["forward_iters"] == r["iters"] for r in imp + unr)  # exactly the requested iterations
    assert imp[1]["saved_mb"] == pytest.approx(imp[0]["saved_mb"])
    assert unr[1]["saved_mb"] > 6 * unr[0]["saved_mb"]


def _run_script(out, study, iters, cwd, monkeypatch):
    """``scripts/gradient_quality.py`` on tiny problems, in this process (the memory points still run in child
    processes, each measuring its own peak)."""
    monkeypatch.chdir(cwd)
    argv = ["--study", study, "--out", str(out), "--sizes", "6", "--sigma2", "1", "--truncate", "1", "--draws", "4",
            "--rhs", "4", "--directions", "2", "--repeats", "1", "--n", "400", "--iters", *map(str, iters),
            "--modes", "implicit", "unrolled"]
    assert load_script("gradient_quality").main(argv) == 0


def _check_script_outputs(out, iters):
    for name in ("quality.csv", "quality.md", "quality.json", "quality.png", "memory.csv", "memory.md",
                 "memory.json", "memory.png"):
        assert (out / name).stat().st_size > 0, name
    q = list(csv.DictReader((out / "quality.csv").open()))
    assert {r["mode"] for r in q} == {"implicit", "unrolled", "truncated", "stochastic"}
    assert float(next(r for r in q if r["mode"] == "implicit")["err_exact"]) < 1e-8
    mem = json.loads((out / "memory.json").read_text())["rows"]
    assert [(r["iters"], r["mode"]) for r in mem] == [(k, m) for k in iters for m in ("implicit", "unrolled")]
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_script_writes_tables_and_plots(tmp_path, monkeypatch):
    """One memory size (the slow twin below measures two, through the script as a program)."""
    _run_script(tmp_path / "g", "both", [5], tmp_path, monkeypatch)
    _check_script_outputs(tmp_path / "g", [5])


@pytest.mark.slow
def test_script_writes_tables_and_plots_two_memory_sizes(tmp_path):
    out = tmp_path / "g"
    cmd = [sys.executable, str(ROOT / "scripts" / "gradient_quality.py"), "--study", "both", "--out", str(out),
           "--sizes", "6", "--sigma2", "1", "--truncate", "1", "--draws", "4", "--rhs", "4", "--directions", "2",
           "--repeats", "1", "--n", "400", "--iters", "5", "20", "--modes", "implicit", "unrolled"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    _check_script_outputs(out, [5, 20])


def test_script_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as e:
        load_script("gradient_quality").main(["--sample", "1.5", "--out", str(tmp_path)])
    assert "--sample must lie in (0, 1]" in str(e.value.code)
