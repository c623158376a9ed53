"""LightningModule wrapping a learned solver (any model with ``training_loss`` and ``solve``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from learnsolve.linalg import IC0, SparseMatrix
from learnsolve.linalg.krylov import run_method


def classical_preconditioner(A: SparseMatrix, name: str | None):
    """M^{-1} application of a baseline: None/"none" | "jacobi" | "ic0" (auto-shifted on breakdown)."""
    from learnsolve.linalg.precond import make_preconditioner

    if name in (None, "none"):
        return None
    if name == "ic0":
        return IC0(A, shift="auto").apply
    return make_preconditioner(name, A).apply


def baseline_iterations(batch, precond: str | None, rtol: float, maxiter: int) -> torch.Tensor:
    """Per-graph CG iterations with a classical preconditioner (None | "jacobi" | "ic0")."""
    A = SparseMatrix.from_pyg(batch).detach()
    M = classical_preconditioner(A, precond)
    _, info = run_method("cg", A, batch.b.view(1, -1, 1).to(A.dtype), M, None, rtol, 0.0, maxiter)
    return info.iterations.view(-1).to(torch.float64)


class LearnedSolverModule(pl.LightningModule):
    """Metrics: ``train/loss``, ``val/loss``, ``val/iters`` (mean iterations to ``eval_rtol`` on the
    validation systems) and ``val/iters_ratio_ic0`` (ratio to IC(0)-preconditioned CG on the same
    systems); the same under ``test/``. A non-finite loss stops training with the step and the
    offending batch's seeds."""

    def __init__(self, model: nn.Module, optimizer, scheduler=None, eval_rtol: float = 1e-6,
                 eval_maxiter: int = 2000, config: dict | None = None):
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_rtol, self.eval_maxiter = float(eval_rtol), int(eval_maxiter)
        self.config = config  # the composed run config, stored in every checkpoint

    def _common_step(self, batch, stage: str) -> torch.Tensor:
        loss, logs = self.model.training_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite {stage} loss {float(loss)} at step {self.global_step}; "
                                     f"offending batch: systems with seeds {batch.seed.view(-1).tolist()}")
        n = batch.num_graphs
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=True, on_step=stage == "train", on_epoch=True)
        for k, v in logs.items():
            self.log(f"{stage}/{k}", v, batch_size=n)
        if stage != "train":
            _, info = self.model.solve(batch, rtol=self.eval_rtol, maxiter=self.eval_maxiter)
            iters = info.iterations.view(-1).to(torch.float64)
            ic0 = baseline_iterations(batch, "ic0", self.eval_rtol, self.eval_maxiter)
            self.log(f"{stage}/iters", iters.mean(), batch_size=n, prog_bar=True)
            self.log(f"{stage}/iters_ratio_ic0", (iters / ic0.clamp_min(1)).mean(), batch_size=n)
        return loss

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._common_step(batch, "val")

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self._common_step(batch, "test")

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt),
                                                   "monitor": "val/loss"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["learnsolve_config"] = self.config
