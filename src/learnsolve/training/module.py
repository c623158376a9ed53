"""LightningModule wrapping any registry model (see :mod:`learnsolve.models` for the contract)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from learnsolve.evaluation.baselines import build_baseline, training_baselines
from learnsolve.linalg import SparseMatrix, cg
from learnsolve.models.checkpoint import INITIAL_STATE_KEY

ITERATIVE_KINDS = ("solver", "preconditioner")


def baseline_solve(batch, precond: str | None, rtol: float, maxiter: int):
    """CG with a registered classical baseline (``learnsolve.evaluation.baselines``) on every graph of
    ``batch``: ``(x, SolveInfo)`` with per-graph iterations."""
    A = SparseMatrix.from_pyg(batch).detach()
    return cg(A, batch.b.view(-1).to(A.dtype), build_baseline(precond, A), rtol=rtol, maxiter=maxiter)


def baseline_iterations(batch, precond: str | None, rtol: float, maxiter: int) -> torch.Tensor:
    """Per-graph CG iterations with a registered classical baseline."""
    return baseline_solve(batch, precond, rtol, maxiter)[1].iterations.view(-1).to(torch.float64)


@torch.no_grad()
def safeguarded_solve(model, batch, rtol: float, maxiter: int):
    """``(x, SolveInfo, check)``: the model's solve of every graph of ``batch``. A linear learned
    preconditioner is solved with :meth:`~learnsolve.models.base.LearnedModel.safe_preconditioner_for` (the
    fallback on the graphs where the safeguard rejects it) and ``check`` is its
    :class:`learnsolve.linalg.SafeguardResult`; for learned solvers and nonlinear preconditioners ``check`` is
    None (nothing to check)."""
    if model.kind == "preconditioner":
        M, check = model.safe_preconditioner_for(batch)
        if check is not None:
            return (*model.solve_with(batch, M, rtol, maxiter), check)
    return (*model.solve(batch, rtol=rtol, maxiter=maxiter), None)


class LearnedSolverModule(pl.LightningModule):
    """Lightning wrapper of a learned solver, preconditioner or surrogate.

    Metrics: ``train/loss`` and ``val/loss`` (the model's ``training_loss``) plus the model's logs; for
    the iterative kinds also ``val/iters`` (mean iterations to ``eval_rtol`` on the validation systems; a
    linear learned preconditioner runs with its safeguard, i.e. with the fallback on the systems where the
    safeguard rejects it), ``val/fallback_rate`` (linear learned preconditioners: the fraction of validation
    systems where the safeguard rejected the learned preconditioner) and ``val/iters_ratio_<baseline>`` for
    every training baseline of the registry but "none" (per-system ratio to that baseline's PCG iterations,
    averaged; e.g. ``val/iters_ratio_ic0``). The baselines'
    iterations do not change while the model trains: they are computed once per system and cached. For
    surrogates the model's ``metrics(batch)``. The same under ``test/``. A non-finite loss stops training with
    the step and the offending batch's seeds. Metrics are reduced across processes under DDP.
    """

    def __init__(self, model: nn.Module, optimizer, scheduler=None, eval_rtol: float = 1e-6,
                 eval_maxiter: int = 2000, config: dict | None = None):
        super().__init__()
        kind = getattr(model, "kind", None)
        if kind not in (*ITERATIVE_KINDS, "surrogate"):
            raise TypeError(f"{type(model).__name__} is not a learnsolve model: its class attribute `kind` "
                            f"must be 'solver', 'preconditioner' or 'surrogate', got {kind!r}")
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eval_rtol, self.eval_maxiter = float(eval_rtol), int(eval_maxiter)
        self.config = config  # the composed run config, stored in every checkpoint
        # the model at its initial parameters (its classical start): stored in every checkpoint, so evaluation
        # can show what training bought ("untrained" rows); a resumed run restores it from its checkpoint
        self.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._baseline_iters: dict[tuple, torch.Tensor] = {}  # (baseline, seeds) -> per-graph iterations

    def baseline_iterations(self, batch, name: str) -> torch.Tensor:
        """Per-graph CG iterations of baseline ``name`` on ``batch`` (cached by the systems' seeds)."""
        key = (name, self.eval_rtol, self.eval_maxiter, tuple(batch.seed.view(-1).tolist()))
        if key not in self._baseline_iters:
            self._baseline_iters[key] = baseline_iterations(batch, name, self.eval_rtol, self.eval_maxiter)
        return self._baseline_iters[key]

    @property
    def iterative(self) -> bool:
        return self.model.kind in ITERATIVE_KINDS

    def _common_step(self, batch, stage: str) -> torch.Tensor:
        loss, logs = self.model.training_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite {stage} loss {float(loss.detach())} at step {self.global_step} (epoch "
                f"{self.current_epoch}); offending batch: systems with seeds {batch.seed.view(-1).tolist()}. "
                "Lower the learning rate (model.optimizer.lr), keep gradient clipping on "
                "(trainer.gradient_clip_val), or check the data.")
        n = batch.num_graphs
        sync = True  # averaged over DDP ranks (a no-op in one process)
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 sync_dist=sync)
        for k, v in logs.items():
            self.log(f"{stage}/{k}", float(v), batch_size=n, sync_dist=sync)
        if stage != "train":
            if self.iterative:
                _, info, check = safeguarded_solve(self.model, batch, self.eval_rtol, self.eval_maxiter)
                iters = info.iterations.view(-1).to(torch.float64)
                self.log(f"{stage}/iters", iters.mean(), batch_size=n, prog_bar=True, sync_dist=True)
                if check is not None:
                    self.log(f"{stage}/fallback_rate", check.num_fallbacks / check.num_systems, batch_size=n,
                             sync_dist=True)
                for name in training_baselines():
                    if name != "none":
                        base = self.baseline_iterations(batch, name).to(iters.device)
                        self.log(f"{stage}/iters_ratio_{name}", (iters / base.clamp_min(1)).mean(),
                                 batch_size=n, sync_dist=True)
                self.log(f"{stage}/converged", info.converged.to(torch.float64).mean(), batch_size=n,
                         sync_dist=True)
            else:
                extra = {k: v for k, v in self.model.metrics(batch).items() if k not in logs and k != "loss"}
                for i, (k, v) in enumerate(extra.items()):
                    self.log(f"{stage}/{k}", torch.as_tensor(v, dtype=torch.float64), batch_size=n,
                             sync_dist=True, prog_bar=i == 0)
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

    def untrained_model(self) -> nn.Module:
        """A copy of the model at its initial parameters (the classical start of the models that correct
        one)."""
        import copy

        model = copy.deepcopy(self.model)
        model.load_state_dict(self.initial_state)
        return model.eval()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["learnsolve_config"] = self.config
        checkpoint[INITIAL_STATE_KEY] = self.initial_state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if INITIAL_STATE_KEY in checkpoint:
            self.initial_state = checkpoint[INITIAL_STATE_KEY]
