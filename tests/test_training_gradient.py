"""TrainingGradientCheck: the gradient a model trains with, against finite differences and another backward mode."""

from __future__ import annotations

import csv
import json
import math

import torch
from torch_geometric.data import Batch

import learnsolve.models.physics_nn as physics_nn_module
from learnsolve.data import GENERATORS
from learnsolve.models.physics_nn import PhysicsNN
from learnsolve.training.grad_check import TrainingGradientCheck

from .test_train import run_train


def _setup(tmp_path):
    torch.manual_seed(0)
    model = PhysicsNN(hidden=8, layers=1)
    batch = Batch.from_data_list([GENERATORS["diffusion2d"](8, seed=s) for s in range(2)])
    return model, batch, TrainingGradientCheck(str(tmp_path))


def test_implicit_gradient_of_physics_nn_agrees(tmp_path):
    model, batch, cb = _setup(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    m = cb.measure(model, batch)
    assert m["grad/param_fd_cosine"] > 0.999 and m["grad/param_fd_rel_error"] < 1e-5
    assert m["grad/mode_rel_error"] < 1e-5  # implicit vs unrolled through the same solves
    assert m["solve/fwd_iters"] > 0 and m["solve/adjoint_iters"] > 0 and m["solve/not_converged"] == 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the model is left untouched
    assert next(model.parameters()).dtype == torch.float32


def test_a_wrong_adjoint_is_reported(tmp_path, monkeypatch):
    model, batch, cb = _setup(tmp_path)
    gen = torch.Generator().manual_seed(3)
    real = physics_nn_module.solve

    def wrong(*args, **kwargs):  # a perturbed adjoint: the upstream gradient of x is scaled and rotated
        out = real(*args, **kwargs)
        x = out[0] if isinstance(out, tuple) else out
        if x.requires_grad:
            x.register_hook(lambda g: 1.2 * g + 0.3 * g.norm() * torch.randn(g.shape, generator=gen,
                                                                             dtype=g.dtype) / g.numel() ** 0.5)
        return out

    monkeypatch.setattr(physics_nn_module, "solve", wrong)
    m = cb.measure(model, batch)
    assert m["grad/param_fd_rel_error"] > 0.1


def test_cli_run_logs_the_metrics_to_csv_and_plots(tmp_path):
    run = tmp_path / "run"
    out = run_train(tmp_path, "model=physics_nn", "trainer.max_epochs=2", "logger=csv", f"hydra.run.dir={run}",
                    "callbacks.training_gradient.every_n_steps=2", "callbacks.convergence_curves.every_n_epochs=0",
                    "callbacks.gradient_quality.every_n_epochs=0")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "plots" / "training_gradient.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 4]  # the first step, every 2, the last
    assert all(r["grad/param_fd_cosine"] > 0.999 for r in rows)
    assert (run / "plots" / "gradient_quality.png").stat().st_size > 0
    (metrics,) = run.glob("csv/version_*/metrics.csv")
    logged = [r for r in csv.DictReader(metrics.open()) if r.get("grad/param_fd_rel_error")]
    assert len(logged) == 3 and all(not math.isnan(float(r["solve/fwd_iters"])) for r in logged)
    assert {"grad/mode_rel_error", "grad/norm", "solve/adjoint_iters", "solve/not_converged"} <= set(logged[0])
