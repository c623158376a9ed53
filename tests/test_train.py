"""Training application: the GNN layer, the gnn_solver model, and `python train.py` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.evaluation.baselines import training_baselines
from learnsolve.models import MODELS, GNNSolver
from learnsolve.models.checkpoint import CheckpointError, load_model
from learnsolve.nn import SystemConv
from learnsolve.training import LearnedSolverModule
from learnsolve.training.module import baseline_iterations

from .cli_runner import run_cli
from .conftest import adam_losses

ROOT = Path(__file__).resolve().parents[1]
# the final table on held-out systems of 16x16 only (the default also tests at 64, 128 and 256)
TINY = ["data.size=8", "data.num_train=4", "data.num_val=2", "data.num_test=2", "data.batch_size=2",
        "data.progress=false", "trainer.enable_progress_bar=false", "data.extra_test_sizes=[16]"]


def run_train(tmp_path, *overrides):
    """``python train.py paths.root_dir=TMP TINY OVERRIDES``, in this process (tests/cli_runner.py)."""
    return run_cli("train", f"paths.root_dir={tmp_path}", *TINY, *overrides)


def test_system_conv_matches_dense_formula_and_is_equivariant():
    torch.manual_seed(0)
    conv = SystemConv(4, edge_dim=1).double()
    n = 6
    ei = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 2], [1, 0, 2, 1, 4, 3, 2, 5]])
    h = torch.randn(n, 4, dtype=torch.float64)
    e = torch.randn(ei.shape[1], 1, dtype=torch.float64)
    out = conv(h, ei, e)
    ref = h.clone()
    for i in range(n):  # m_i = sum_j phi([h_i, h_j, e_ij]); h_i' = h_i + psi([h_i, m_i])
        m = sum((conv.phi(torch.cat([h[i], h[j], e[k]])) for k, (ii, j) in enumerate(ei.T.tolist()) if ii == i),
                torch.zeros(4, dtype=torch.float64))
        ref[i] = h[i] + conv.psi(torch.cat([h[i], m]))
    assert torch.allclose(out, ref, atol=1e-12)
    perm = torch.randperm(n)
    inv = torch.argsort(perm)
    out_p = conv(h[perm], inv[ei], e)
    assert torch.allclose(out_p, out[perm], atol=1e-12)


def _batch(seeds, m=8):
    return Batch.from_data_list([GENERATORS["diffusion2d"](m, seed=s) for s in seeds])


def test_gnn_solver_fcg_starts_as_jacobi_fcg_and_converges_tightly():
    model = GNNSolver(hidden=8, layers=2, mode="fcg").double()
    b = _batch(range(100, 103))
    x, info = model.solve(b, rtol=1e-8)
    assert bool(info.converged.all())
    assert torch.allclose(x, b.x, rtol=1e-6, atol=1e-8 * float(b.x.abs().max()))


def test_gnn_solver_ic0_base_starts_as_ic0_pcg():
    b = _batch(range(200, 203), m=12)
    _, info = GNNSolver(hidden=8, layers=1, mode="fcg", base="ic0").double().solve(b, rtol=1e-8)
    ref = baseline_iterations(b, "ic0", 1e-8, 2000)
    # FCG with a linear SPD preconditioner is PCG in exact arithmetic; rounding may shift a count by one
    assert torch.allclose(info.iterations.view(-1).double(), ref, atol=1)
    assert bool(info.converged.all())
    with pytest.raises(ValueError, match="unknown base"):
        GNNSolver(mode="fcg", base="amg")
    with pytest.raises(ValueError, match="unknown mode"):
        GNNSolver(mode="amg")


def test_gnn_solver_loss_decreases():
    torch.manual_seed(0)
    model = GNNSolver(hidden=16, layers=2, mode="fcg", unroll_steps=6)
    b = _batch(range(4))
    losses = adam_losses(model, b, steps=30, lr=3e-3)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registry_model_trains_through_the_cli(tmp_path, name):
    # neural_ode: 4 output times (3 x 4 rk4 steps per trajectory, not 15 x 4) keep its gradient check short
    fewer_steps = ["data.params.num_times=4"] if name == "neural_ode" else []
    out = run_train(tmp_path, f"model={name}", "trainer.fast_dev_run=true", "logger=csv", *fewer_steps)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    assert cfg["name"] == name and cfg["monitor"].startswith("val/")
    assert MODELS[name].kind in ("solver", "preconditioner", "surrogate")
    # the training-gradient check ran on the model's own loss (one step: at step 1)
    (jsonl,) = tmp_path.glob("outputs/train/runs/*/plots/training_gradient.jsonl")
    (rec,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rec["grad/param_fd_rel_error"] < 1e-2 and rec["grad/param_fd_cosine"] > 0.999, rec


def test_train_cli_default_logger_is_offline_wandb_with_plots(tmp_path):
    run = tmp_path / "run1"
    out = run_train(tmp_path, "trainer.max_epochs=1", f"hydra.run.dir={run}",
                    "callbacks.convergence_curves.every_n_epochs=1", "callbacks.gradient_quality.every_n_epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio to IC(0)" in out.stdout  # the final comparison table
    assert (run / "wandb").is_dir()  # W&B files stay in the run folder
    assert (run / "report.csv").is_file()
    report = (run / "report.csv").read_text()
    assert "untrained" in report  # the model's classical start, next to the learned row
    assert "amg_rs" in report and "setup_seconds" in report and "setup ms" in out.stdout  # AMG rows, setup column
    assert (run / "plots" / "convergence_epoch000.png").is_file()
    curves = (run / "plots" / "convergence_epoch000.csv").read_text().splitlines()
    assert curves[0] == ",".join(["iteration", "learned", *training_baselines()])
    assert float(curves[1].split(",")[1]) == 1.0
    quality = [json.loads(line) for line in (run / "plots" / "gradient_quality.jsonl").read_text().splitlines()]
    # the implicit gradient of the probe solve agrees with central differences and with unrolling
    assert quality[0]["grad/fd_cosine"] > 0.9999 and quality[0]["grad/fd_rel_error"] < 1e-4
    assert quality[0]["grad/unrolled_rel_error"] < 1e-6
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["learnsolve_config"]["model"]["name"] == "gnn_solver"
    model, cfg = load_model(run / "checkpoints" / "last.ckpt")  # rebuilt from the checkpoint alone
    assert isinstance(model, GNNSolver) and cfg["data"]["family"] == "diffusion2d"
    weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model(tmp_path)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="no learnsolve_config"):
        load_model(foreign)


def test_run_resumes_from_last_checkpoint(tmp_path):
    """A finished 1-epoch run's last.ckpt resumed to 3 epochs trains exactly the 2 missing ones (the fast twin of the
    killed run below)."""
    first = tmp_path / "first"
    out = run_train(tmp_path, "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={first}",
                    "callbacks.convergence_curves.every_n_epochs=0", "callbacks.gradient_quality.every_n_epochs=0",
                    "report=false", "test=false")
    assert out.returncode == 0, out.stderr[-3000:]
    last = first / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 0
    out = run_train(tmp_path, "trainer.max_epochs=3", f"ckpt_path={last}", "logger=none", "report=false",
                    "test=false", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restoring states from the checkpoint" in out.stderr + out.stdout
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3 * 2  # 4 systems in batches of 2 per epoch


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp_path}", *TINY, "logger=none",
           "trainer.max_epochs=1000", f"hydra.run.dir={run}", "callbacks.convergence_curves.every_n_epochs=0",
           "callbacks.gradient_quality.every_n_epochs=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the checkpoint is written atomically; let the next epoch start
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert last.exists(), err[-3000:]
    epoch = torch.load(last, weights_only=False)["epoch"]
    out = run_train(tmp_path, f"trainer.max_epochs={epoch + 2}", f"ckpt_path={last}", "logger=none",
                    f"hydra.run.dir={tmp_path / 'resumed'}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restoring states from the checkpoint" in out.stderr + out.stdout
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == epoch + 1  # 0-based: the resumed run trained exactly the one missing epoch


def test_train_rejects_nonsymmetric_family_for_cg_model(tmp_path):
    out = run_train(tmp_path, "data=convdiff2d", "trainer.fast_dev_run=true", "logger=none")
    assert out.returncode != 0 and "needs an SPD family" in out.stderr


def test_train_unknown_model_and_bad_data_dir_are_clear(tmp_path):
    out = run_train(tmp_path, "model=no_such_model", "trainer.fast_dev_run=true")
    assert out.returncode != 0 and "Could not find 'model/no_such_model'" in out.stderr
    assert "gnn_solver" in out.stderr  # Hydra lists the available models
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = run_train(tmp_path, "trainer.fast_dev_run=true", "logger=none", f"paths.data_dir={blocker}")
    assert out.returncode != 0 and "is not a folder" in out.stderr


class _NaNModel(torch.nn.Module):
    kind = "solver"

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_loss(self, batch):
        return self.w * float("nan"), {}


def test_nan_loss_stops_with_step_and_batch():
    module = LearnedSolverModule(_NaNModel(), optimizer=None)
    batch = _batch([11, 12])
    with pytest.raises(FloatingPointError, match=r"non-finite train loss nan at step 0.*seeds \[11, 12\]"):
        module.training_step(batch, 0)


def test_module_rejects_object_without_the_model_contract():
    with pytest.raises(TypeError, match="kind"):
        LearnedSolverModule(torch.nn.Linear(2, 2), optimizer=None)
