"""Training callbacks: convergence curves (learned vs classical) and gradient quality of the solve.

Both act on rank zero only, skip Lightning's sanity-check pass, write their files under ``dirpath``
(the run folder) and send the same numbers to the run's logger (W&B line plots when it is W&B).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.evaluation.baselines import training_baselines
from learnsolve.evaluation.report import save_figure
from learnsolve.files import write_text
from learnsolve.linalg import Jacobi, SparseMatrix, solve

from .module import ITERATIVE_KINDS, baseline_solve

log = logging.getLogger(__name__)


def _due(trainer: pl.Trainer, every: int) -> bool:
    if trainer.sanity_checking or not trainer.is_global_zero or every <= 0:
        return False
    last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
    return (trainer.current_epoch + 1) % every == 0 or last


def wandb_run(trainer: pl.Trainer):
    """The W&B run of the trainer's W&B logger, or None (CSV logger, no logger)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None


class ConvergenceCurves(pl.Callback):
    """Relative residual ||b - A x_k|| / ||b|| against iteration k on the first validation system:
    the learned solver or preconditioner next to the registry's training baselines (plain CG, Jacobi, IC(0)).

    Every ``every_n_epochs`` epochs (and after the last) it writes ``convergence_epochNNN.csv`` and a
    PNG plot (log scale) under ``dirpath`` and, with a W&B logger, a ``val/convergence`` line plot.
    Surrogate models (no iterations) are skipped.
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1, rtol: float = 1e-8, maxiter: int = 2000,
                 plot: bool = True):
        self.dirpath, self.every = Path(dirpath), int(every_n_epochs)
        self.rtol, self.maxiter, self.plot = float(rtol), int(maxiter), bool(plot)
        self.last_curves: dict[str, list[float]] | None = None

    @staticmethod
    def _history(info) -> list[float]:
        it = int(info.iterations.view(-1)[0])
        h = info.residual_history.reshape(info.residual_history.shape[0], -1)[: it + 1, 0]
        return (h / info.b_norm.reshape(-1)[0]).tolist()

    def curves(self, model, system) -> dict[str, list[float]]:
        """Relative residual histories for one system (a single-graph batch)."""
        out = {}
        with torch.no_grad():
            _, info = model.solve(system, rtol=self.rtol, maxiter=self.maxiter)
            out["learned"] = self._history(info)
            for name in training_baselines():
                out[name] = self._history(baseline_solve(system, name, self.rtol, self.maxiter)[1])
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _due(trainer, self.every) or pl_module.model.kind not in ITERATIVE_KINDS:
            return
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, list | tuple) else loader
        first = next(iter(loader))
        system = Batch.from_data_list([first.get_example(0)]).to(pl_module.device)
        was_training = pl_module.model.training
        pl_module.model.eval()
        try:
            curves = self.curves(pl_module.model, system)
        finally:
            pl_module.model.train(was_training)
        self.last_curves = curves
        epoch = trainer.current_epoch
        stem = self.dirpath / f"convergence_epoch{epoch:03d}"
        n = max(len(v) for v in curves.values())
        rows = [["iteration", *curves]] + [[k, *(v[k] if k < len(v) else "" for v in curves.values())]
                                           for k in range(n)]
        write_text(stem.with_suffix(".csv"), "\n".join(",".join(map(str, r)) for r in rows) + "\n")
        if self.plot:
            self._plot(curves, stem.with_suffix(".png"), f"first validation system, epoch {epoch}")
        run = wandb_run(trainer)
        if run is not None:
            import wandb

            keys = list(curves)
            plot = wandb.plot.line_series(xs=[list(range(len(curves[k]))) for k in keys],
                                          ys=[[math.log10(max(v, 1e-300)) for v in curves[k]] for k in keys],
                                          keys=keys,
                                          title=f"log10 relative residual vs iteration (epoch {epoch})",
                                          xname="iteration")
            run.log({"val/convergence": plot, "trainer/global_step": trainer.global_step})

    @staticmethod
    def _plot(curves: dict[str, list[float]], path: Path, title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, h in curves.items():
            ax.semilogy(range(len(h)), h, label=name, lw=2.2 if name == "learned" else 1.2)
        ax.set_xlabel("iteration")
        ax.set_ylabel("||b - A x|| / ||b||")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, path)


class GradientQuality(pl.Callback):
    """Quality of the implicit gradient of a probe solve, every ``every_n_epochs`` epochs.

    Probe: a ``size`` x ``size`` diffusion2d system (float64), loss f(a, b) = 0.5 ||x||^2 with
    x = solve(A(a), b) by PCG, preconditioned by the model's learned preconditioner when the model is
    of kind "preconditioner" (the adjoint solve then uses its transpose) and by Jacobi otherwise. Along
    ``directions`` random directions v (symmetric in A, so CG stays valid) it compares the directional
    derivatives grad f . v of the implicit gradient with central finite differences
    (f(p + h v) - f(p - h v)) / 2h and with the unrolled gradient (backprop through the iterations).
    Logged: ``grad/fd_cosine``, ``grad/fd_rel_error``, ``grad/unrolled_cosine``,
    ``grad/unrolled_rel_error`` (vectors of directional derivatives), also appended to
    ``dirpath/gradient_quality.jsonl``. Cost: a few solves with 64 unknowns (default size 8).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 2, size: int = 8, directions: int = 4,
                 seed: int = 0, rtol: float = 1e-12, fd_step: float = 1e-6):
        self.dirpath, self.every = Path(dirpath), int(every_n_epochs)
        self.size, self.directions, self.seed = int(size), int(directions), int(seed)
        self.rtol, self.fd_step = float(rtol), float(fd_step)
        self.history: list[dict] = []

    def measure(self, model) -> dict[str, float]:
        data = GENERATORS["diffusion2d"](self.size, seed=self.seed)
        system = Batch.from_data_list([data])
        A0 = SparseMatrix.from_pyg(system).detach()
        a0, b0 = A0.values.detach().to(torch.float64), system.b.to(torch.float64)
        if getattr(model, "kind", None) == "preconditioner":
            with torch.no_grad():
                P = model.preconditioner_for(system)
        else:
            P = Jacobi(A0)
        gen = torch.Generator().manual_seed(self.seed + 1)
        # values of A^T in A's (symmetric) pattern order are values[perm]
        transpose = A0.pattern.transpose()[1]

        def f(a, b, backward="implicit"):
            x = solve(A0.with_values(a), b, method="cg", precond=P, rtol=self.rtol, backward=backward,
                      maxiter=10 * b.numel())
            return 0.5 * (x * x).sum()

        grads = {}
        for mode in ("implicit", "unrolled"):
            a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
            ga, gb = torch.autograd.grad(f(a, b, mode), (a, b))
            grads[mode] = (ga, gb)
        d = {k: [] for k in ("implicit", "unrolled", "fd")}
        for _ in range(self.directions):
            w = torch.randn(a0.shape, generator=gen, dtype=torch.float64)
            va = 0.5 * (w + w[transpose])  # symmetric perturbation of A's values
            vb = torch.randn(b0.shape, generator=gen, dtype=torch.float64)
            h_a = self.fd_step * a0.norm() / va.norm()
            h_b = self.fd_step * b0.norm() / vb.norm()
            va, vb = va * h_a, vb * h_b  # directions scaled so a unit step is a relative perturbation fd_step
            with torch.no_grad():
                fd = (f(a0 + va, b0 + vb) - f(a0 - va, b0 - vb)) / 2.0
            d["fd"].append(float(fd))
            for mode, (ga, gb) in grads.items():
                d[mode].append(float((ga * va).sum() + (gb * vb).sum()))
        vec = {k: torch.tensor(v, dtype=torch.float64) for k, v in d.items()}

        def compare(x, ref):
            cos = float(torch.nn.functional.cosine_similarity(x, ref, dim=0))
            return cos, float((x - ref).norm() / ref.norm().clamp_min(1e-300))

        cf, ef = compare(vec["implicit"], vec["fd"])
        cu, eu = compare(vec["implicit"], vec["unrolled"])
        return {"grad/fd_cosine": cf, "grad/fd_rel_error": ef, "grad/unrolled_cosine": cu,
                "grad/unrolled_rel_error": eu}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # not on_validation_epoch_end: validation runs under inference_mode, and this needs autograd
        if not _due(trainer, self.every):
            return
        was_training = pl_module.model.training
        pl_module.model.eval()
        try:
            metrics = self.measure(pl_module.model)
        except (RuntimeError, ValueError, ArithmeticError) as e:  # a diagnostic must not kill the run
            log.warning("gradient-quality probe failed at epoch %d: %s", trainer.current_epoch, e)
            return
        finally:
            pl_module.model.train(was_training)
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        self.history.append(record)
        path = self.dirpath / "gradient_quality.jsonl"
        write_text(path, "".join(json.dumps(r) + "\n" for r in self.history))
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
