"""``train(cfg)``: compose data, model, trainer, logger and callbacks from a Hydra config, fit, test,
print the comparison table, and return the optimized metric (for sweeps)."""

from __future__ import annotations

import logging

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from .module import LearnedSolverModule
from .report import compare_on_test, print_table

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    dm = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model.net)
    if getattr(model, "requires_spd", False) and cfg.data.family in ("convdiff2d",):
        raise ValueError(f"model {cfg.model.name!r} runs flexible CG and needs an SPD family; data={cfg.data.family} "
                         "is nonsymmetric")
    module = LearnedSolverModule(model=model, optimizer=hydra.utils.instantiate(cfg.model.optimizer),
                                 scheduler=hydra.utils.instantiate(cfg.model.scheduler)
                                 if cfg.model.get("scheduler") else None,
                                 eval_rtol=cfg.eval.rtol, eval_maxiter=cfg.eval.maxiter,
                                 config=OmegaConf.to_container(cfg, resolve=True))
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    metric = None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        value = trainer.callback_metrics.get(cfg.optimized_metric)
        metric = None if value is None else float(value)
        if cfg.get("test", True) and not trainer.fast_dev_run:
            trainer.test(module, datamodule=dm, ckpt_path="best" if _has_best(trainer) else None)
        if cfg.get("report", True) and trainer.is_global_zero:
            rows = compare_on_test(module.model, dm.test_dataloader() if not dm.extra_test_sizes
                                   else dm.test_dataloader()[0], rtol=cfg.eval.rtol, maxiter=cfg.eval.maxiter)
            print_table(rows, f"{cfg.model.name} on {cfg.data.family} test systems (rtol {cfg.eval.rtol:g})")
            if logger:
                for r in rows:
                    for k in ("iters", "seconds", "iters_ratio_ic0"):
                        trainer.logger.log_metrics({f"report/{r['method']}_{k}": r[k]})
    finally:
        _finish_wandb()
    return metric


def _has_best(trainer) -> bool:
    cb = trainer.checkpoint_callback
    return cb is not None and bool(getattr(cb, "best_model_path", ""))


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover
        pass
