"""``train(cfg)``: compose data, model, trainer, logger and callbacks from a Hydra config, fit, test,
print the comparison table, and return the optimized metric (for sweeps).

Under DDP every rank runs ``train(cfg)``; only rank zero creates the W&B run, writes checkpoints and
reports, and every rank ends with ``dist.barrier()`` then ``dist.destroy_process_group()`` (gloo
workers can abort at exit otherwise). In a Hydra multirun ``strategy: ddp`` becomes ``ddp_spawn``:
the subprocess launcher re-runs the command line, which would start the whole sweep again in every rank.
A job that raises finishes its W&B run as failed and re-raises; Hydra records the failure and the
Optuna sweeper marks the trial FAIL and goes on (``hydra.sweeper.max_failure_rate``)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from learnsolve.data.generators import SYMMETRIC
from learnsolve.evaluation.report import finish_wandb, write_csv

from .callbacks import wandb_run
from .module import LearnedSolverModule
from .report import compare_on_test, print_table

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    """Train the model a composed ``conf/train.yaml`` describes: what ``python train.py`` runs.

    Builds the DataModule (``cfg.data``), the model (``cfg.model.net``), the logger, callbacks and Lightning
    Trainer from their ``_target_`` entries, fits (resuming from ``cfg.ckpt_path`` when set), tests the best
    checkpoint and, for solvers and preconditioners, prints the final table against the classical baselines
    and writes ``report.csv`` to the run folder. The W&B run is finished and the process group torn down even
    on failure.

    Args:
        cfg: the composed config (``hydra.compose(config_name="train", overrides=[...])`` or the CLI's).

    Returns:
        The value of ``cfg.optimized_metric`` after fitting (for sweeps), or None when it was not logged.

    Raises:
        ValueError: an SPD-only model on a nonsymmetric data family.
    """
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    dm = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model.net)
    nonsymmetric = [f for f in getattr(dm, "families", [cfg.data.family]) if not SYMMETRIC.get(f, True)]
    if getattr(model, "requires_spd", False) and nonsymmetric:
        raise ValueError(f"model {cfg.model.name!r} runs CG-type solves and needs an SPD family; "
                         f"data={cfg.data.family} has nonsymmetric {nonsymmetric}. Pick SPD families "
                         "(e.g. data=diffusion2d).")
    module = LearnedSolverModule(model=model, optimizer=hydra.utils.instantiate(cfg.model.optimizer),
                                 scheduler=hydra.utils.instantiate(cfg.model.scheduler)
                                 if cfg.model.get("scheduler") else None,
                                 eval_rtol=cfg.eval.rtol, eval_maxiter=cfg.eval.maxiter,
                                 config=OmegaConf.to_container(cfg, resolve=True))
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    # a callback set to null (e.g. `callbacks.gradient_quality=null`, the debug configs) is switched off
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks,
                                      **_epoch_limit(cfg.trainer), **_multirun_strategy(cfg.trainer))
    if logger:
        n_params = sum(p.numel() for p in model.parameters())
        for lg in trainer.loggers:
            lg.log_hyperparams({"model/num_parameters": n_params, "model/kind": model.kind})
    metric, failed = None, False
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        value = trainer.callback_metrics.get(cfg.optimized_metric)
        metric = None if value is None else float(value)
        if cfg.get("test", True) and not trainer.fast_dev_run:
            trainer.test(module, datamodule=dm, ckpt_path="best" if _has_best(trainer) else None)
        if cfg.get("report", True) and trainer.is_global_zero and module.iterative:
            size = cfg.model.get("report_size") if module.model.num_nodes is None else None
            untrained = module.untrained_model() if module.model.classical_start() else None
            rows = compare_on_test(module.model, dm.report_dataloader(size), rtol=cfg.eval.rtol,
                                   maxiter=cfg.eval.maxiter, untrained=untrained)
            where = ("test systems" if size is None
                     else f"held-out systems of size {size} (trained at {cfg.data.size})")
            title = f"{cfg.model.name} on {cfg.data.family} {where} (rtol {cfg.eval.rtol:g})"
            print_table(rows, title)
            write_csv(Path(cfg.paths.output_dir) / "report.csv", rows)
            if logger:
                _log_report(trainer, rows)
    except BaseException:
        failed = True
        raise
    finally:
        finish_wandb(exit_code=1 if failed else 0)
        _teardown_distributed(barrier=not failed)
    return metric


def _log_report(trainer, rows: list[dict]) -> None:
    for r in rows:
        trainer.logger.log_metrics({f"report/{r['method']}_{k}": r[k]
                                    for k in ("iters", "seconds", "iters_ratio_ic0")})
    run = wandb_run(trainer)
    if run is not None:
        import wandb

        cols = list(rows[0])
        run.log({"report/table": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})


def _has_best(trainer) -> bool:
    cb = trainer.checkpoint_callback
    return cb is not None and bool(getattr(cb, "best_model_path", ""))


DEFAULT_EPOCHS = 8


def _epoch_limit(trainer_cfg: DictConfig) -> dict:
    """``trainer.max_epochs: null`` means DEFAULT_EPOCHS, or no epoch limit (-1) when ``trainer.max_time`` is
    set, so that ``trainer.max_time=...`` alone trains for that time. Resolved here rather than by a custom
    OmegaConf resolver, so that ``hydra.compose`` of ``conf/`` works without importing learnsolve first."""
    if trainer_cfg.get("max_epochs") is not None:
        return {}
    return {"max_epochs": -1 if trainer_cfg.get("max_time") else DEFAULT_EPOCHS}


def _multirun_strategy(trainer_cfg: DictConfig) -> dict:
    """``{"strategy": "ddp_spawn"}`` when a Hydra multirun job asks for subprocess DDP, else ``{}``."""
    strategy = trainer_cfg.get("strategy")
    spawn = {"ddp": "ddp_spawn", "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true"}
    if strategy not in spawn:
        return {}
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    log.info("multirun: trainer.strategy=%s -> %s (the subprocess launcher would restart the sweep)",
             strategy, spawn[strategy])
    return {"strategy": spawn[strategy]}


def _teardown_distributed(barrier: bool = True) -> None:
    """Wait for every rank, then destroy the process group (no-op without one, e.g. after ddp_spawn)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:  # a rank that failed must not wait for the others forever
            dist.barrier()
        dist.destroy_process_group()
