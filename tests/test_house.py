"""The house rules of DESIGN.md, checked on the source tree: layering, linalg's public surface, file sizes, one
baseline registry, family symmetry in the generator registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg as spla

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "learnsolve"
# lowest first; a module may import its own layer and the layers before it (``files`` is stdlib-only, below all)
LAYERS = ["files", "linalg", "interop", "jax", "tensorflow", "data", "nn", "models", "export", "evaluation", "training", "cli"]
MAX_LINES = 600


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        layer = rel.parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        yield path, layer, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST):
    """(module, names) of every absolute ``learnsolve`` import in the tree (function-level ones included)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("learnsolve"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("learnsolve"):
                    yield a.name, []


def test_imports_only_point_down():
    bad = []
    for path, layer, tree in _modules():
        for module, _ in _imports(tree):
            parts = module.split(".")
            if len(parts) < 2 or parts[1] not in LAYERS:
                continue
            if LAYERS.index(parts[1]) > LAYERS.index(layer):
                bad.append(f"{path.relative_to(ROOT)} ({layer}) imports {module}")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_above_linalg_only_public_linalg_names():
    from learnsolve import linalg

    public = set(linalg.__all__)
    bad = []
    for path, layer, tree in _modules():
        if layer == "linalg":
            continue
        for module, names in _imports(tree):
            if module == "learnsolve.linalg":
                bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n not in public]
            elif module.startswith("learnsolve.linalg."):
                bad.append(f"{path.relative_to(ROOT)}: imports the internal module {module}")
    assert not bad, "use learnsolve.linalg's public API above linalg:\n" + "\n".join(bad)
    assert "run_method" not in public and not hasattr(linalg, "run_method")


def test_importing_data_does_not_load_lightning_or_hydra():
    code = ("import sys, learnsolve.data, learnsolve.linalg; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'hydra')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_source_file_over_the_limit():
    files = [*PKG.rglob("*.py"), *(ROOT / "scripts").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_family_symmetry_in_the_generator_registry_matches_the_matrices():
    from learnsolve.data import to_scipy
    from learnsolve.data.generators import GENERATORS, SYMMETRIC

    assert set(SYMMETRIC) == set(GENERATORS)
    sizes = {"fem_poisson": 30, "elasticity2d": 4}
    for family, gen in GENERATORS.items():
        if family == "trajectory2d":  # not a linear system A x = b (no b): its operator is symmetric
            continue
        A = to_scipy(gen(sizes.get(family, 6), seed=1))
        asym = abs(A - A.T).max() / abs(A).max()
        assert (asym <= 1e-12) == SYMMETRIC[family], (family, asym)


def test_every_registered_baseline_builds_and_matches_scipy_pcg():
    """Each registry entry preconditions CG on a variable-coefficient SPD matrix: same iteration count as scipy's
    CG with the same preconditioner applied through ``apply`` (an independent Krylov implementation), and
    never more iterations than no preconditioner."""
    import torch

    from learnsolve.evaluation.baselines import BASELINES, build_baseline, training_baselines
    from learnsolve.linalg import SparseMatrix, cg

    from .conftest import diffusion2d

    A_sp = diffusion2d(12, seed=3, contrast=1.5)
    A = SparseMatrix.from_scipy(A_sp)
    b = A_sp @ np.ones(A_sp.shape[0])
    iters = {}
    for name in BASELINES:
        M = build_baseline(name, A)
        _, info = cg(A, torch.from_numpy(b), M, rtol=1e-8, maxiter=1000)
        assert bool(info.converged), name
        iters[name] = int(info.iterations)
        op = None if M is None else spla.LinearOperator(
            A_sp.shape, matvec=lambda r, M=M: M.apply(torch.from_numpy(np.ascontiguousarray(r).reshape(1, -1, 1))
                                                      ).reshape(-1).numpy())
        steps = []
        spla.cg(A_sp, b, rtol=1e-8, atol=0.0, M=op, maxiter=1000, callback=steps.append)
        assert abs(iters[name] - len(steps)) <= 1, (name, iters[name], len(steps))
    assert all(iters[n] <= iters["none"] for n in BASELINES)
    assert set(training_baselines()) <= set(BASELINES) and "ic0" in training_baselines()


def test_validation_computes_baseline_iterations_once_per_system(monkeypatch):
    from torch_geometric.data import Batch

    from learnsolve.data import GENERATORS
    from learnsolve.models import NeuralIF
    from learnsolve.training import module as module_mod

    calls = []
    real = module_mod.baseline_iterations

    def counting(batch, name, rtol, maxiter):
        calls.append(name)
        return real(batch, name, rtol, maxiter)

    monkeypatch.setattr(module_mod, "baseline_iterations", counting)
    m = module_mod.LearnedSolverModule(NeuralIF(hidden=8, layers=1).double(), optimizer=None)
    batch = Batch.from_data_list([GENERATORS["diffusion2d"](6, seed=s) for s in (1, 2)])
    first = m.baseline_iterations(batch, "ic0")
    again = m.baseline_iterations(batch, "ic0")
    assert calls == ["ic0"] and first is again
    assert first.shape == (2,) and bool((first > 0).all())
    other = Batch.from_data_list([GENERATORS["diffusion2d"](6, seed=s) for s in (3, 4)])
    m.baseline_iterations(other, "ic0")
    assert calls == ["ic0", "ic0"]


@pytest.mark.parametrize("group", ["data", "model", "trainer", "logger", "debug", "experiment", "hparams_search",
                                   "benchmark"])
def test_config_groups_are_hydra_groups(group):
    """Every folder under conf/ is a Hydra config group (files to pick with group=NAME), nothing else."""
    folder = ROOT / "conf" / group
    assert folder.is_dir() and any(p.suffix == ".yaml" for p in folder.iterdir())
    assert not (ROOT / "conf" / "wandb_sweep").exists()
