"""Training application: the GNN layer, the gnn_solver model, and `python train.py` end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.models import GNNSolver
from learnsolve.nn import SystemConv

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.size=8", "data.num_train=4", "data.num_val=2", "data.num_test=2", "data.batch_size=2",
        "data.progress=false", "trainer.enable_progress_bar=false"]


def run_train(tmp_path, *overrides, timeout=600):
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.root_dir={tmp_path}", *TINY, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


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


def test_gnn_solver_starts_as_jacobi_fcg_and_converges_tightly():
    model = GNNSolver(hidden=8, layers=2).double()
    b = _batch(range(100, 103))
    x, info = model.solve(b, rtol=1e-8)
    assert bool(info.converged.all())
    assert torch.allclose(x, b.x, rtol=1e-6, atol=1e-8 * float(b.x.abs().max()))


def test_gnn_solver_loss_decreases():
    torch.manual_seed(0)
    model = GNNSolver(hidden=16, layers=2, unroll_steps=6)
    b = _batch(range(4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = model.training_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05, losses


def test_train_cli_fast_dev_run(tmp_path):
    out = run_train(tmp_path, "trainer.fast_dev_run=true", "logger=csv")
    assert out.returncode == 0, out.stderr[-3000:]


def test_train_cli_default_logger_is_offline_wandb_and_resume(tmp_path):
    out = run_train(tmp_path, "trainer.max_epochs=1", "hydra.run.dir=" + str(tmp_path / "run1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ratio to IC(0)" in out.stdout  # the final comparison table
    run1 = tmp_path / "run1"
    assert (run1 / "wandb").is_dir()  # W&B files stay in the run folder
    last = run1 / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["learnsolve_config"]["model"]["name"] == "gnn_solver"
    out = run_train(tmp_path, "trainer.max_epochs=2", f"ckpt_path={last}", "logger=none",
                    "hydra.run.dir=" + str(tmp_path / "run2"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restoring states from the checkpoint" in out.stderr + out.stdout


def test_train_rejects_nonsymmetric_family_for_fcg_model(tmp_path):
    out = run_train(tmp_path, "data=convdiff2d", "trainer.fast_dev_run=true", "logger=none")
    assert out.returncode != 0 and "needs an SPD family" in out.stderr
