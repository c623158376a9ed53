"""``python scripts/export.py ckpt_path=PATH [matrices=DIR|FILE|[F1,F2]] [out_dir=DIR] [overwrite=true]
[program=false]`` (``learnsolve-export``): a trained checkpoint as portable files.

Writes a self-contained folder (default ``outputs/export/<model>_<time>``): ``config.json`` (rebuilds the
model without Lightning or Hydra), ``model.safetensors``, a compiled program (``program.pt2`` from
torch.export, else ``program.ts`` from TorchScript) and, with ``matrices=``, per-matrix preconditioner files
under ``preconditioners/`` (see :mod:`learnsolve.export`). Nonlinear models (gnn_solver), learned solvers and
surrogates have no fixed matrix: the matrices are skipped with a message, the model is exported.

Exit status: 0 done; 1 some matrices could not be exported (each is reported; the model and the other
matrices were written); 2 bad arguments (missing, corrupt or foreign checkpoint, a matrices path that does
not exist, an existing non-empty output folder without ``overwrite=true``): nothing is written.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, ListConfig, OmegaConf

from ._hydra import run_command


def export_cli(cfg: DictConfig) -> int:
    """The whole command on a composed config; returns the exit status."""
    from learnsolve.export import ExportError, export_model

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        print("learnsolve-export: give ckpt_path=PATH (a training checkpoint, e.g. "
              ".../checkpoints/last.ckpt)", file=sys.stderr)
        return 2
    matrices = cfg.get("matrices")
    if isinstance(matrices, ListConfig):
        matrices = [str(m) for m in OmegaConf.to_container(matrices, resolve=True)]

    def progress(stem, ok, detail):
        print(f"  {stem}: {'ok' if ok else 'FAILED'}", flush=True)

    try:
        report = export_model(str(cfg.ckpt_path), cfg.get("out_dir"), matrices=matrices,
                              overwrite=bool(cfg.get("overwrite", False)),
                              program=bool(cfg.get("program", True)),
                              safeguard=bool(cfg.get("safeguard", True)), log_dir=str(cfg.paths.log_dir),
                              progress=progress)
    except ExportError as e:
        print(f"learnsolve-export: {e}", file=sys.stderr)
        return 2
    out = report.folder
    print(f"exported {report.model} ({report.kind}) to {out}")
    print(f"  model: {out / 'config.json'}, {out / 'model.safetensors'}  "
          "(learnsolve.export.load_exported_model)")
    if report.program:
        print(f"  program: {out / report.program} ({report.program_format}; {report.program_note})")
    else:
        print(f"  program: none ({report.program_note})")
    if report.preconditioners:
        print(f"  preconditioners: {len(report.preconditioners)} in {out / 'preconditioners'} "
              f"({', '.join(sorted(report.preconditioners))}; learnsolve.export.load_preconditioner)")
    if report.skipped:
        print(f"learnsolve-export: {report.skipped}", file=sys.stderr)
    for stem, reason in report.failures.items():
        print(f"learnsolve-export: could not export {stem}: {reason}", file=sys.stderr)
    if report.failures:
        print(f"learnsolve-export: {len(report.failures)} matrix(es) failed, {len(report.preconditioners)} "
              "exported", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    return run_command("learnsolve-export", "export", export_cli)


if __name__ == "__main__":
    sys.exit(main())
