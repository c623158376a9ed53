"""Checkpoints written before the models' base class and the DataModule's move (fixtures written by that code)
still load through the one loader, give finite outputs, instantiate their upgraded data config and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS, load_system
from learnsolve.export import export_model, load_exported_model, load_preconditioner, read_config
from learnsolve.models import NeuralIF, PhysicsNN
from learnsolve.models.checkpoint import load_model, read_checkpoint

from .conftest import diffusion2d

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
OLD_DATA = "learnsolve.data.datamodule.LinearSystemDataModule"
NEW_DATA = "learnsolve.training.datamodule.LinearSystemDataModule"


def _batch(seeds=(3, 4), m=6):
    return Batch.from_data_list([GENERATORS["diffusion2d"](m, seed=s) for s in seeds])


@pytest.mark.parametrize("name,cls", [("neural_if", NeuralIF), ("physics_nn", PhysicsNN)])
def test_pre_house_checkpoint_loads_and_runs(name, cls, tmp_path):
    path = FIXTURES / f"pre_house_{name}.ckpt"
    assert read_checkpoint(path)["learnsolve_config"]["data"]["_target_"] == OLD_DATA  # as the old code wrote it
    model, cfg = load_model(path)
    assert type(model) is cls and not model.training
    assert cfg["model"]["name"] == name and cfg["data"]["_target_"] == NEW_DATA  # upgraded on load
    stored = read_checkpoint(path)["state_dict"]
    assert all(torch.equal(v, stored[f"model.{k}"]) for k, v in model.state_dict().items())
    batch = _batch()
    if name == "neural_if":
        x, info = model.solve(batch, rtol=1e-8)
        assert bool(info.converged.all()) and info.iterations.shape == (2,) and bool(torch.isfinite(x).all())
        assert torch.allclose(x, batch.x, rtol=0, atol=1e-6 * float(batch.x.abs().max()))
    else:
        metrics = model.metrics(batch)
        assert set(metrics) == {"rel_error", "coef_rel_error", "coef_rel_error_scaled"}
        assert all(bool(torch.isfinite(v)) for v in metrics.values())
    # evaluation instantiates the stored data config (surrogates' test sets): the upgraded target exists
    import hydra

    dm = hydra.utils.instantiate(dict(cfg["data"], data_dir=str(tmp_path / "data")))
    assert f"{type(dm).__module__}.{type(dm).__name__}" == NEW_DATA and dm.family == cfg["data"]["family"]


def test_pre_house_neural_if_exports(tmp_path):
    path = FIXTURES / "pre_house_neural_if.ckpt"
    mtx = tmp_path / "mats" / "diff7.mtx"
    mtx.parent.mkdir()
    scipy.io.mmwrite(str(mtx), diffusion2d(7, seed=2))
    rep = export_model(path, tmp_path / "out", matrices=str(mtx.parent))
    assert rep.program_format == "torch.export" and list(rep.preconditioners) == ["diff7"] and not rep.failures
    cfg = read_config(tmp_path / "out")
    assert cfg["model"] == "neural_if" and cfg["preconditioner"] == "llt"
    model, _ = load_model(path)
    back = load_exported_model(tmp_path / "out")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())
    # the exported M^-1 is the checkpoint model's, or its fallback's (the faster of MIC(0) and IC(0)) where the
    # safeguard rejected it (the JSON says which)
    M = load_preconditioner(rep.preconditioners["diff7"])
    written = json.loads(Path(rep.preconditioners["diff7"]).read_text())["factor"]
    assert written in ("learned", "fallback:ic0", "fallback:mic0")
    batch = Batch.from_data_list([load_system(mtx)])
    R = np.random.default_rng(0).standard_normal((49, 2))
    with torch.no_grad():
        P = model.preconditioner_for(batch) if written == "learned" else model.fallback_for(batch)
        ref = P.apply(torch.from_numpy(R).unsqueeze(0))[0].numpy()
    assert np.abs(M.matmat(R) - ref).max() <= 1e-10 * np.abs(ref).max()
    # without the safeguard the learned factor itself is written
    raw = export_model(path, tmp_path / "raw", matrices=str(mtx.parent), safeguard=False)
    with torch.no_grad():
        ref = model.preconditioner_for(batch).apply(torch.from_numpy(R).unsqueeze(0))[0].numpy()
    M = load_preconditioner(raw.preconditioners["diff7"])
    assert np.abs(M.matmat(R) - ref).max() <= 1e-10 * np.abs(ref).max()
