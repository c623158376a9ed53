"""``python scripts/evaluate.py ckpt_path=PATH benchmark=generated|pyamg|matrix_market [benchmark.path=DIR] ...``
(``learnsolve-evaluate``): a trained checkpoint against classical preconditioners on benchmark matrices.

The model is rebuilt from the config stored in the checkpoint; ``ckpt_path=null`` evaluates the classical
baselines alone. Surrogate checkpoints (physics_nn, neural_ode) are evaluated on their own test sets (the
benchmark is then ignored). Writes ``results.csv``, ``results.json``, ``results.md`` and ``plots/`` in the
run folder (``outputs/evaluate/runs/<time>``), prints the Markdown table; ``logger=wandb`` sends the table
and the plots to W&B (offline unless ``WANDB_MODE=online``). See ``conf/evaluate.yaml`` for the options.

Exit status: 0 when at least one (matrix, preconditioner) was evaluated, 1 when nothing could be,
2 for bad arguments (missing or unreadable checkpoint, unknown benchmark, bad options).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ._hydra import CONF_DIR

log = logging.getLogger(__name__)
_STATE: dict = {}


class _BadArguments(ValueError):
    """A user error in the options: reported on stderr, exit status 2."""


def _benchmark_total(bcfg) -> int | None:
    """Check the benchmark options (raising _BadArguments) and count its matrices (None when unknown)."""
    from learnsolve.data.suites import PYAMG_EXAMPLES

    name = bcfg.get("name")
    if name == "generated":
        from learnsolve.data import GENERATORS

        specs = list(bcfg.get("specs") or [])
        bad = [s for s in specs if len(s) != 3]
        if not specs or bad:
            raise _BadArguments(f"benchmark.specs must be a non-empty list of [family, size, seed], got {specs}")
        unknown = sorted({str(s[0]) for s in specs if s[0] not in GENERATORS})
        if unknown:
            raise _BadArguments(f"benchmark.specs: unknown generator families {unknown}; known: {sorted(GENERATORS)}")
        return len(specs)
    if name == "pyamg":
        names = bcfg.get("names")
        names = list(PYAMG_EXAMPLES) if names is None else list(names)
        unknown = [n for n in names if n not in PYAMG_EXAMPLES]
        if unknown:
            raise _BadArguments(f"benchmark.names: unknown pyamg examples {unknown}; choose from "
                                f"{', '.join(PYAMG_EXAMPLES)}")
        return len(names)
    if name == "matrix_market":
        from learnsolve.data.mtx import RHS_SUFFIXES, matrix_stem

        path = bcfg.get("path") if not OmegaConf.is_missing(bcfg, "path") else None
        if path is None:
            raise _BadArguments("benchmark=matrix_market needs benchmark.path=DIR (a folder of .mtx files)")
        folder = Path(str(path))
        if not folder.is_dir():
            raise _BadArguments(f"benchmark.path={str(folder)!r} is not a folder (give a folder of .mtx files)")
        files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith((".mtx", ".mtx.gz"))]
        stems = {matrix_stem(p) for p in files}
        rhs = [p for p in files
               if any(matrix_stem(p).endswith(s) and matrix_stem(p)[: -len(s)] in stems for s in RHS_SUFFIXES)]
        return len(files) - len(rhs)
    raise _BadArguments(f"unknown benchmark {name!r}: use benchmark=generated|pyamg|matrix_market")


def _options(cfg: DictConfig) -> dict:
    from learnsolve.evaluation import PRECONDITIONERS, SOLVERS

    try:
        rtols = [float(r) for r in cfg.rtols]
        repeats, maxiter, restart = int(cfg.repeats), int(cfg.maxiter), int(cfg.gmres_restart)
    except (TypeError, ValueError) as e:
        raise _BadArguments(f"rtols must be a list of numbers and repeats, maxiter, gmres_restart integers: {e}") from e
    if not rtols or not all(0 < r < 1 for r in rtols):
        raise _BadArguments(f"rtols must be a non-empty list of tolerances in (0, 1), got {rtols}")
    if repeats < 1 or maxiter < 1 or restart < 1:
        raise _BadArguments(f"repeats, maxiter and gmres_restart must be >= 1, got {repeats}, {maxiter}, {restart}")
    if cfg.solver not in SOLVERS:
        raise _BadArguments(f"solver={cfg.solver!r}: choose one of {', '.join(SOLVERS)}")
    precs = list(cfg.preconditioners)
    bad = [p for p in precs if p not in PRECONDITIONERS]
    if bad:
        raise _BadArguments(f"preconditioners: unknown {bad}; choose from {', '.join(PRECONDITIONERS)}")
    amg = OmegaConf.to_container(cfg.get("amg") or {}, resolve=True)
    return {"rtols": sorted(set(rtols), reverse=True), "repeats": repeats, "maxiter": maxiter,
            "solver": str(cfg.solver), "preconditioners": precs, "gmres_restart": restart, "amg_options": amg}


def _wandb_run(cfg: DictConfig):
    """The W&B run when ``logger`` is a W&B logger, else None (other loggers: the files are the record)."""
    lcfg = cfg.get("logger")
    if not lcfg or "wandb" not in str(lcfg.get("_target_", "")).lower():
        if lcfg and lcfg.get("_target_"):
            log.info("logger %s: nothing to log beyond the result files", lcfg.get("_target_"))
        return None
    logger = hydra.utils.instantiate(lcfg, job_type="evaluate")
    run = logger.experiment
    run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    return run


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


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


def evaluate_cli(cfg: DictConfig) -> int:
    """The whole command on a composed config; returns the exit status."""
    from learnsolve.evaluation import (
        columns,
        evaluate,
        evaluate_surrogate,
        exit_code,
        log_wandb,
        markdown_table,
        surrogate_markdown_table,
        write_results,
        write_surrogate_results,
    )
    from learnsolve.evaluation.runner import SURROGATE_COLUMNS
    from learnsolve.models.checkpoint import CheckpointError, load_model

    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("learnsolve-evaluate: give ckpt_path=PATH (a training checkpoint, e.g. .../checkpoints/last.ckpt) "
              "or ckpt_path=null to evaluate the classical baselines alone", file=sys.stderr)
        return 2
    out = Path(cfg.paths.output_dir)
    ckpt = cfg.ckpt_path
    try:
        opts = _options(cfg)
        model, stored = (None, None) if ckpt is None else load_model(str(ckpt))
        surrogate = model is not None and getattr(model, "kind", None) == "surrogate"
        total = None if surrogate else _benchmark_total(cfg.benchmark)
    except (_BadArguments, CheckpointError) as e:
        print(f"learnsolve-evaluate: {e}", file=sys.stderr)
        return 2
    mname = None if model is None else stored.get("model", {}).get("name", type(model).__name__)
    meta = {"ckpt_path": None if ckpt is None else str(ckpt), "model": mname, "benchmark": cfg.benchmark.name,
            **{k: v for k, v in opts.items() if k != "amg_options"}, "amg": opts["amg_options"],
            "torch_threads": _torch_threads(), "output_dir": str(out)}
    run = None
    try:
        run = _wandb_run(cfg)
        if surrogate:
            log.info("%s is a surrogate model: evaluated on its checkpoint's test set (solution / trajectory "
                     "error); benchmark=%s is ignored", mname, cfg.benchmark.name)
            meta["benchmark"] = "test set"
            rows = evaluate_surrogate(model, _surrogate_loaders(stored, cfg.get("data_dir"), cfg.progress))
            paths = write_surrogate_results(out, rows, meta)
            table, cols = surrogate_markdown_table(rows), SURROGATE_COLUMNS
        else:
            from learnsolve.data.suites import suite_from_config

            bcfg = OmegaConf.to_container(cfg.benchmark, resolve=True)
            rows = evaluate(model, suite_from_config(bcfg), progress=bool(cfg.progress), total=total, **opts)
            paths = write_results(out, rows, meta, plots=bool(cfg.plots))
            table, cols = markdown_table(rows, opts["rtols"]), columns(opts["rtols"])
        if run is not None:
            log_wandb(run, rows, cols, paths)
    finally:
        if run is not None:
            _finish_wandb()
    print(table)
    print(f"\nresults: {out}/results.md (.csv, .json){' and plots/' if not surrogate and cfg.plots else ''}")
    code = exit_code(rows)
    if code:
        print("learnsolve-evaluate: nothing could be evaluated (every row was skipped, failed or unreadable)",
              file=sys.stderr)
    return code


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> None:
    _STATE["started"] = True  # past Hydra's composition: a failure from here on is not a bad argument
    _STATE["code"] = evaluate_cli(cfg)


def main() -> int:
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code not in (0, None) and not _STATE.get("started"):
            return 2  # Hydra could not compose the config (unknown benchmark, bad override); it said why
        raise
    return int(_STATE.get("code", 0))


if __name__ == "__main__":
    sys.exit(main())
