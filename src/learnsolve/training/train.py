"""``train(cfg)``: compose data, model, trainer, logger and callbacks from a Hydra config, fit, test,
print the comparison table, and return the optimized metric (for sweeps)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from .callbacks import wandb_run, write_rows_csv
from .module import LearnedSolverModule
from .report import compare_on_test, print_table

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    dm = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model.net)
    if getattr(model, "requires_spd", False) and cfg.data.family in NONSYMMETRIC_FAMILIES:
        raise ValueError(f"model {cfg.model.name!r} runs CG-type solves and needs an SPD family; "
                         f"data={cfg.data.family} is nonsymmetric. Pick an SPD family (e.g. data=diffusion2d).")
    module = LearnedSolverModule(model=model, optimizer=hydra.utils.instantiate(cfg.model.optimizer),
                                 scheduler=hydra.utils.instantiate(cfg.model.scheduler)
                                 if cfg.model.get("scheduler") else None,
                                 eval_rtol=cfg.eval.rtol, eval_maxiter=cfg.eval.maxiter,
                                 config=OmegaConf.to_container(cfg, resolve=True))
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    if logger:
        n_params = sum(p.numel() for p in model.parameters())
        for lg in trainer.loggers:
            lg.log_hyperparams({"model/num_parameters": n_params, "model/kind": model.kind})
    metric = None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        value = trainer.callback_metrics.get(cfg.optimized_metric)
        metric = None if value is None else float(value)
        if cfg.get("test", True) and not trainer.fast_dev_run:
            trainer.test(module, datamodule=dm, ckpt_path="best" if _has_best(trainer) else None)
        if cfg.get("report", True) and trainer.is_global_zero and module.iterative:
            loader = dm.test_dataloader()
            rows = compare_on_test(module.model, loader[0] if isinstance(loader, list) else loader,
                                   rtol=cfg.eval.rtol, maxiter=cfg.eval.maxiter)
            title = f"{cfg.model.name} on {cfg.data.family} test systems (rtol {cfg.eval.rtol:g})"
            print_table(rows, title)
            write_rows_csv(Path(cfg.paths.output_dir) / "report.csv", rows)
            if logger:
                _log_report(trainer, rows)
    finally:
        _finish_wandb()
    return metric


NONSYMMETRIC_FAMILIES = ("convdiff2d",)


def _log_report(trainer, rows: list[dict]) -> None:
    for r in rows:
        trainer.logger.log_metrics({f"report/{r['method']}_{k}": r[k] for k in ("iters", "seconds", "iters_ratio_ic0")})
    run = wandb_run(trainer)
    if run is not None:
        import wandb

        cols = list(rows[0])
        run.log({"report/table": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])})


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
