"""``evaluate(cfg)``: a trained checkpoint against the classical baselines on a benchmark suite, from a
composed ``conf/evaluate.yaml`` (mirrors ``learnsolve.training.train.train(cfg)``; ``learnsolve-evaluate`` is
its CLI).

The model is rebuilt from the config stored in the checkpoint (``ckpt_path=null``: the classical baselines
alone). ``cfg.benchmark`` is built with ``hydra.utils.instantiate`` (its ``_target_`` is a
:class:`learnsolve.data.Suite`). Surrogate checkpoints (physics_nn, neural_ode) are evaluated on their own
test sets (the benchmark is then ignored). Writes ``results.csv``, ``results.json``, ``results.md`` and
``plots/`` under ``cfg.paths.output_dir``; ``logger=wandb`` sends the table and the plots to W&B (offline
unless ``WANDB_MODE=online``). Bad options raise :class:`EvaluationConfigError` (the message names the option)
before anything is solved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from learnsolve.data import Suite

from .baselines import BASELINES
from .report import (
    finish_wandb,
    log_wandb,
    markdown_table,
    surrogate_markdown_table,
    write_results,
    write_surrogate_results,
)
from .runner import PRECONDITIONERS, SOLVERS, SURROGATE_COLUMNS, columns, evaluate_suite, evaluate_surrogate

log = logging.getLogger(__name__)


class EvaluationConfigError(ValueError):
    """An option of ``conf/evaluate.yaml`` that cannot work (a user error: the message says which and why)."""


@dataclass
class EvaluationResult:
    """What :func:`evaluate` produced: the rows, the written files, the Markdown table."""

    rows: list[dict]
    table: str
    output_dir: Path
    paths: dict = field(default_factory=dict)
    surrogate: bool = False


def options(cfg: DictConfig) -> dict:
    """The checked solve options of an evaluate config (:class:`EvaluationConfigError` when one is bad).
    ``preconditioners: null`` means every registered baseline plus the learned model."""
    try:
        rtols = [float(r) for r in cfg.rtols]
        repeats, maxiter, restart = int(cfg.repeats), int(cfg.maxiter), int(cfg.gmres_restart)
    except (TypeError, ValueError) as e:
        raise EvaluationConfigError(f"rtols must be a list of numbers and repeats, maxiter, gmres_restart "
                                    f"integers: {e}") from e
    if not rtols or not all(0 < r < 1 for r in rtols):
        raise EvaluationConfigError(f"rtols must be a non-empty list of tolerances in (0, 1), got {rtols}")
    if repeats < 1 or maxiter < 1 or restart < 1:
        raise EvaluationConfigError(f"repeats, maxiter and gmres_restart must be >= 1, got {repeats}, "
                                    f"{maxiter}, {restart}")
    if cfg.solver not in SOLVERS:
        raise EvaluationConfigError(f"solver={cfg.solver!r}: choose one of {', '.join(SOLVERS)}")
    precs = ([*BASELINES, "untrained", "learned"] if cfg.get("preconditioners") is None
             else list(cfg.preconditioners))
    bad = [p for p in precs if p not in PRECONDITIONERS]
    if bad:
        raise EvaluationConfigError(f"preconditioners: unknown {bad}; choose from "
                                    f"{', '.join(PRECONDITIONERS)}")
    amg = OmegaConf.to_container(cfg.get("amg") or {}, resolve=True)
    safeguard = cfg.get("safeguard", True)
    if not isinstance(safeguard, bool):
        raise EvaluationConfigError(f"safeguard must be true or false, got {safeguard!r}")
    return {"rtols": sorted(set(rtols), reverse=True), "repeats": repeats, "maxiter": maxiter,
            "solver": str(cfg.solver), "preconditioners": precs, "gmres_restart": restart, "amg_options": amg,
            "safeguard": safeguard}


def build_suite(bcfg) -> Suite:
    """The suite of a ``conf/benchmark/*.yaml`` (a mapping with ``_target_``); :class:`EvaluationConfigError`
    naming the option when one is missing or bad."""
    from learnsolve.data import SuiteConfigError

    bcfg = OmegaConf.create(bcfg) if not isinstance(bcfg, DictConfig) else bcfg
    name = bcfg.get("name") or "this benchmark"
    missing = [k for k in bcfg if OmegaConf.is_missing(bcfg, k)]
    if missing:
        raise EvaluationConfigError(f"benchmark={name} needs "
                                    f"{', '.join(f'benchmark.{k}=...' for k in missing)}"
                                    + (" (a folder of .mtx files)" if "path" in missing else ""))
    try:
        return hydra.utils.instantiate(bcfg)
    except SuiteConfigError as e:
        raise EvaluationConfigError(str(e)) from e
    except hydra.errors.InstantiationException as e:
        if isinstance(e.__cause__, SuiteConfigError):
            raise EvaluationConfigError(str(e.__cause__)) from e
        raise EvaluationConfigError(f"benchmark: cannot build {bcfg.get('_target_')!r}: {e}") from e


def _wandb_run(cfg: DictConfig):
    """The W&B run when ``logger`` is a W&B logger, else None (other loggers: the files are the record)."""
    lcfg = cfg.get("logger")
    if not lcfg or "wandb" not in str(lcfg.get("_target_", "")).lower():
        if lcfg and lcfg.get("_target_"):
            log.info("logger %s: nothing to log beyond the result files", lcfg.get("_target_"))
        return None
    run = hydra.utils.instantiate(lcfg, job_type="evaluate").experiment
    run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    return run


def _surrogate_loaders(stored: dict, data_dir: str | None, progress: bool) -> dict:
    dcfg = dict(stored["data"])
    if data_dir:
        dcfg["data_dir"] = str(data_dir)
    dcfg["progress"] = bool(progress)
    dm = hydra.utils.instantiate(dcfg)
    names = [name for name, *_ in dm.split_specs() if name.startswith("test")]
    for name in names:
        dm.build(name)  # loads the cache (generated once when missing); the training splits are not needed
    loaders = dm.test_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    return dict(zip(names, loaders))


def untrained_row(loaded, preconditioners) -> tuple[object | None, dict | None]:
    """(the checkpoint's model at its initial parameters, what that start is) when ``untrained`` is asked for
    and the model has a classical start (:meth:`learnsolve.models.base.LearnedModel.classical_start`); (None,
    why) when it has none (its untrained rows are then left out, and the metadata says why); (None, None)
    without a checkpoint."""
    if loaded is None or "untrained" not in preconditioners:
        return None, None
    what = loaded.model.classical_start()
    if what is None:
        why = f"{loaded.name} ({type(loaded.model).__name__}) has no classical start: no untrained rows"
        log.info(why)
        return None, {"method": None, "note": why}
    model, how = loaded.untrained()
    return model, {"method": what, "initial_parameters": how}


def evaluate(cfg: DictConfig) -> EvaluationResult:
    """Run the evaluation a composed ``conf/evaluate.yaml`` describes (see the module docstring).

    Args:
        cfg: the composed config (``ckpt_path``, ``benchmark``, ``rtols``, ``preconditioners``, ...).

    Returns:
        An ``EvaluationResult``: the rows, the Markdown table, the output folder and the files written there
            (``results.csv``, ``results.json``, ``results.md``, plots).

    Raises:
        EvaluationConfigError: a missing ``ckpt_path`` or a bad option.
        CheckpointError: an unreadable checkpoint.
    """
    import torch

    from learnsolve.models.checkpoint import load_checkpoint

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise EvaluationConfigError("give ckpt_path=PATH (a training checkpoint, e.g. "
                                    ".../checkpoints/last.ckpt) or ckpt_path=null to evaluate the classical "
                                    "baselines alone")
    out = Path(cfg.paths.output_dir)
    ckpt = cfg.ckpt_path
    opts = options(cfg)
    loaded = None if ckpt is None else load_checkpoint(str(ckpt))  # CheckpointError: a user error
    model, stored = (None, None) if loaded is None else (loaded.model, loaded.config)
    surrogate = model is not None and model.kind == "surrogate"
    untrained, start = untrained_row(loaded, opts["preconditioners"]) if not surrogate else (None, None)
    suite = None if surrogate else build_suite(cfg.benchmark)
    mname = None if model is None else stored.get("model", {}).get("name", type(model).__name__)
    bname = cfg.benchmark.get("name") or str(cfg.benchmark.get("_target_", "")).rpartition(".")[2]
    meta = {"ckpt_path": None if ckpt is None else str(ckpt), "model": mname, "benchmark": bname,
            **{k: v for k, v in opts.items() if k != "amg_options"}, "amg": opts["amg_options"],
            "classical_start": start,
            "torch_threads": torch.get_num_threads(), "output_dir": str(out)}
    run = None
    try:
        run = _wandb_run(cfg)
        if surrogate:
            log.info("%s is a surrogate model: evaluated on its checkpoint's test set (solution / trajectory "
                     "error); benchmark=%s is ignored", mname, bname)
            meta["benchmark"] = "test set"
            rows = evaluate_surrogate(model, _surrogate_loaders(stored, cfg.get("data_dir"), cfg.progress))
            paths = write_surrogate_results(out, rows, meta)
            table, cols = surrogate_markdown_table(rows), SURROGATE_COLUMNS
        else:
            rows = evaluate_suite(model, suite, progress=bool(cfg.progress), total=len(suite),
                                  untrained=untrained, **opts)
            paths = write_results(out, rows, meta, plots=bool(cfg.plots))
            table, cols = markdown_table(rows, opts["rtols"]), columns(opts["rtols"])
        if run is not None:
            log_wandb(run, rows, cols, paths)
    finally:
        if run is not None:
            finish_wandb()
    return EvaluationResult(rows, table, out, dict(paths), surrogate)


__all__ = ["EvaluationConfigError", "EvaluationResult", "build_suite", "evaluate", "options", "untrained_row"]
