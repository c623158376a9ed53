"""The gradient that trains THIS model, checked while it trains: :class:`TrainingGradientCheck`.

Every ``every_n_steps`` optimizer steps (and at the first and the last step), on rank zero, on a fixed small
batch (the first ``graphs`` graphs of the first training batch), on a float64 copy of the model:

- g (float64 when the model runs in it, else the model's precision): the gradient of the model's own training
  loss (``model.training_loss``) w.r.t. its trainable parameters, by the backward the model trains with (its
  solves' implicit / unrolled / stochastic mode, unchanged);
- central finite differences of the same loss along ``directions`` random parameter directions v (each
  parameter tensor's part scaled to its entries' mean size) with each step of ``fd_steps``:
  ``grad/param_fd_rel_error`` = ||D - F|| / ||F|| and ``grad/param_fd_cosine`` = cos(D, F) for the directional
  derivatives D_i = g . v_i and the differences F_i of the step that agrees best (the next step is tried only
  when one disagrees by more than 1e-3; ``grad/fd_step``: a small step meets the loss's own rounding noise,
  a large one its curvature; neural_if's Lanczos-kappa loss: relative error 0.25 at 1e-5, 3e-3 at 1e-3). The
  random draws inside the loss are the same in every evaluation (a fixed seed, the global RNG untouched);
- where the loss solves through :func:`learnsolve.linalg.solve`: the same gradient with every solve
  differentiated by ``compare_mode`` (:func:`learnsolve.linalg.override_backward`), ``grad/mode_rel_error``
  = ||g - g_mode|| / ||g_mode||;
- ``grad/norm`` = ||g||, and the solves inside the loss (:func:`learnsolve.linalg.record_solves`):
  ``solve/fwd_iters``, ``solve/adjoint_iters`` (summed over the loss's solves), ``solve/not_converged``
  (systems, forward and adjoint); ``grad/check_seconds`` and ``grad/check_fraction`` (the check's share of the
  wall time since training started).

The metrics go to every logger of the trainer (W&B, CSV ``metrics.csv``), to
``dirpath/training_gradient.jsonl`` and to the plot ``dirpath/gradient_quality.png`` (errors and cosine
against the step). A failing check is logged as a warning, never stops training.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch_geometric.data import Batch

from learnsolve.evaluation.report import save_figure
from learnsolve.files import write_text
from learnsolve.linalg import override_backward, record_solves

log = logging.getLogger(__name__)


def _float64(batch):
    if isinstance(batch, Batch):
        return batch.apply(lambda t: t.double() if torch.is_floating_point(t) else t)
    return batch


def _small(batch, graphs: int):
    if isinstance(batch, Batch) and graphs > 0 and batch.num_graphs > graphs:
        return Batch.from_data_list(batch.to_data_list()[:graphs])
    return batch


class TrainingGradientCheck(pl.Callback):
    """See the module docstring. ``every_n_steps=0`` turns it off."""

    def __init__(self, dirpath: str, every_n_steps: int = 50, directions: int = 2, graphs: int = 2,
                 fd_steps: tuple = (1e-5, 1e-3), compare_mode: str | None = "unrolled", float64: bool = True,
                 seed: int = 0):
        fd_steps = tuple(float(h) for h in (fd_steps if isinstance(fd_steps, (list, tuple)) else [fd_steps]))
        if int(directions) < 1 or int(graphs) < 0 or not fd_steps or min(fd_steps) <= 0:
            raise ValueError("TrainingGradientCheck: directions >= 1, graphs >= 0 and fd_steps > 0 are "
                             "needed")
        self.dirpath, self.every = Path(dirpath), int(every_n_steps)
        self.directions, self.graphs, self.fd_steps = int(directions), int(graphs), fd_steps
        self.compare_mode, self.float64, self.seed = compare_mode, bool(float64), int(seed)
        self.history: list[dict] = []
        self._batch = None
        self._t0 = None
        self._spent = 0.0
        self._last_step = -1

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self._batch is None:
            self._batch = _small(batch, self.graphs)
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            self._check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.every > 0 and trainer.is_global_zero and self._batch is not None \
                and trainer.global_step != self._last_step:
            self._check(trainer, pl_module)

    # ------------------------------------------------------------------------------------------ the check
    def measure(self, model: torch.nn.Module, batch) -> dict[str, float]:
        """The metrics for ``model`` (left unchanged: a copy is differentiated) on ``batch``."""
        m = copy.deepcopy(model)
        if self.float64:
            m, batch = m.double(), _float64(batch)
        params = [p for p in m.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")

        def loss() -> torch.Tensor:
            # the same random draws (probe vectors, sampled systems) in every evaluation: a deterministic loss
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + 1)
                return m.training_loss(batch)[0]

        def grad() -> torch.Tensor:
            gs = torch.autograd.grad(loss(), params, allow_unused=True)
            return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                              for g, p in zip(gs, params)])

        with record_solves() as rec:
            g = grad()
        solves = rec.stats()
        gen = torch.Generator().manual_seed(self.seed)
        dirs = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) * (p.detach().abs().mean() + 1e-3)
                 for p in params] for _ in range(self.directions)]
        D = torch.tensor([float(g @ torch.cat([x.reshape(-1) for x in vs])) for vs in dirs],
                         dtype=torch.float64)

        def differences(h: float) -> torch.Tensor:
            out = []
            with torch.no_grad():
                for vs in dirs:
                    for p, x in zip(params, vs):
                        p.add_(h * x)
                    up = float(loss())
                    for p, x in zip(params, vs):
                        p.sub_(2 * h * x)
                    down = float(loss())
                    for p, x in zip(params, vs):
                        p.add_(h * x)
                    out.append((up - down) / (2 * h))
            return torch.tensor(out, dtype=torch.float64)

        # a small step meets the loss's own rounding noise, a large one its curvature: the better of the steps
        # (the next step only when this one disagrees by more than 1e-3)
        e, Fb, best = math.inf, None, None
        for h in self.fd_steps:
            f = differences(h)
            eh = float((D - f).norm() / f.norm().clamp_min(1e-300))
            if eh < e:
                e, Fb, best = eh, f, h
            if e <= 1e-3:
                break
        out = {"grad/param_fd_rel_error": e,
               "grad/param_fd_cosine": float(D @ Fb / (D.norm() * Fb.norm()).clamp_min(1e-300)),
               "grad/fd_step": best, "grad/norm": float(g.norm()), "grad/mode_rel_error": math.nan,
               "solve/fwd_iters": solves["fwd_iters"], "solve/adjoint_iters": solves["adjoint_iters"],
               "solve/not_converged": solves["not_converged"]}
        if self.compare_mode and solves["solves"]:
            with override_backward(self.compare_mode, unroll_steps=10):
                g2 = grad()
            out["grad/mode_rel_error"] = float((g - g2).norm() / g2.norm().clamp_min(1e-300))
        return out

    def _check(self, trainer, pl_module) -> None:
        t0 = time.perf_counter()
        self._last_step = trainer.global_step
        try:
            try:
                metrics = self.measure(pl_module.model, self._batch)
            except (RuntimeError, TypeError) as e:
                # e.g. a model that cannot run in float64: its own precision
                if not self.float64:
                    raise
                log.info("training-gradient check in float64 failed (%s); checking in the model's "
                         "precision", e)
                self.float64 = False
                metrics = self.measure(pl_module.model, self._batch)
        except (RuntimeError, ValueError, ArithmeticError, TypeError) as e:
            # a diagnostic must not kill the run
            log.warning("training-gradient check failed at step %d: %s", trainer.global_step, e)
            return
        dt = time.perf_counter() - t0
        self._spent += dt
        wall = time.perf_counter() - (self._t0 or t0)
        metrics["grad/check_seconds"] = dt
        metrics["grad/check_fraction"] = self._spent / wall if wall > 0 else math.nan
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, **metrics}
        self.history.append(record)
        write_text(self.dirpath / "training_gradient.jsonl",
                   "".join(json.dumps(r) + "\n" for r in self.history))
        for lg in trainer.loggers:
            lg.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)}, step=trainer.global_step)
        self._plot()

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.history]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        a.semilogy(steps, [max(r["grad/param_fd_rel_error"], 1e-16) for r in self.history], "o-",
                   label="vs finite differences")
        mode = [r["grad/mode_rel_error"] for r in self.history]
        if any(not math.isnan(x) for x in mode):
            a.semilogy(steps, [max(x, 1e-16) for x in mode], "s-", label=f"vs {self.compare_mode} backward")
        a.set(xlabel="step", ylabel="relative error", title="training gradient")
        a.legend()
        b.plot(steps, [r["grad/param_fd_cosine"] for r in self.history], "o-")
        b.set(xlabel="step", ylabel="cosine to finite differences", title="direction")
        fig.tight_layout()
        save_figure(fig, self.dirpath / "gradient_quality.png")
        plt.close(fig)
