"""Model export: a training checkpoint -> a self-contained folder that rebuilds the model without Lightning or
Hydra.

The folder layout is described in :mod:`learnsolve.export.reader`, which reads it back. What goes in is asked
of the model (:class:`learnsolve.models.base.LearnedModel`): its program (``export_program``), its per-matrix
preconditioner (``matrix_export_reason`` / ``export_matrix``) and its ``kind`` and ``matrix_type``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from learnsolve.files import write_bytes, write_json

from ._io import ExportError, StagedFolder, check_output_folder, export_errors
from .programs import compile_program
from .reader import CONFIG, FORMAT, PRECONDITIONERS, WEIGHTS


@dataclass
class ExportReport:
    """What :func:`export_model` wrote: the folder, the program path taken and the per-matrix outcome."""

    folder: Path
    model: str
    kind: str
    program: str | None = None  # file name inside folder
    program_format: str | None = None  # "torch.export" | "torchscript" | None
    program_note: str | None = None  # why no program / why the first path failed
    preconditioners: dict[str, Path] = field(default_factory=dict)  # matrix name -> its JSON
    failures: dict[str, str] = field(default_factory=dict)  # matrix name -> reason
    skipped: str | None = None  # why no matrix was exported (a nonlinear or surrogate model)


def model_from_checkpoint(ckpt_path: str | os.PathLike):
    """(model in eval mode, model name, target, kwargs) from a training checkpoint
    (:func:`learnsolve.models.checkpoint.load_checkpoint`); ExportError when the file is missing, unreadable,
    not a learnsolve checkpoint or from a model family learnsolve does not know."""
    from learnsolve.models.checkpoint import load_checkpoint

    with export_errors():
        ckpt = load_checkpoint(ckpt_path)
    try:
        json.dumps(ckpt.kwargs)
    except TypeError as e:
        raise ExportError(f"checkpoint {str(ckpt_path)!r}: model arguments {ckpt.kwargs} are not plain "
                          f"values: {e}") from e
    return ckpt.model, ckpt.name, ckpt.target, ckpt.kwargs


def _write_weights(model, path: Path) -> str:
    """Write the safetensors weights; their SHA-256 (config.json records it, the reader checks it)."""
    import hashlib

    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    raw = save(state, metadata={"format": "pt"})
    write_bytes(path, raw)
    return hashlib.sha256(raw).hexdigest()


def default_out_dir(log_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(log_dir) / "export" / f"{model_name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def _skip_note(reason: str | None, has_program: bool) -> str | None:
    if reason is None:
        return None
    return reason + (": exported the model and its program only" if has_program else
                     ": exported the model only (no program: see program_note in config.json)")


def export_model(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, matrices=None,
                 overwrite: bool = False, program: bool = True, log_dir: str | os.PathLike = "outputs",
                 progress=None, safeguard: bool = True, computed: dict | None = None) -> ExportReport:
    """Export a training checkpoint to ``out_dir`` (default ``<log_dir>/export/<model>_<time>``).

    Writes config.json, model.safetensors and the compiled program (``program=False``: none) and, when
    ``matrices`` (a folder, a file, a comma-separated string or a list of them) are given and the model has a
    per-matrix preconditioner, one set of files per matrix under ``preconditioners/``
    (:func:`learnsolve.export.export_preconditioners`). A matrix that cannot be exported (wrong kind,
    malformed file) is recorded in ``report.failures`` and config.json, and the others are still written.
    A model without one (nonlinear, solver, surrogate) skips the matrices (``report.skipped`` says why).
    ``safeguard`` (default on): where the learned factor would be worse than its fallback on a matrix, the
    fallback is written instead and its JSON says so. ``computed``: preconditioners already computed elsewhere
    (e.g. tuned on their matrix by :func:`learnsolve.training.tune.tune_matrix`),
    ``{stem: (MatrixExport, meta)}``, written as given under ``preconditioners/`` (``meta`` as
    :func:`learnsolve.export.preconditioners.write_matrix_files` takes it) instead of ``matrices``.

    Everything is written to a temporary sibling folder renamed into place at the end: a failure leaves no
    partial output.

    Args:
        ckpt_path: a training checkpoint.
        out_dir: the folder to write, or None for ``<log_dir>/export/<model>_<time>``.
        matrices: Matrix Market matrices to export per-matrix preconditioners for, or None.
        overwrite: replace an existing non-empty ``out_dir``.
        program: also write the compiled program.
        log_dir: base folder of the default ``out_dir``.
        progress: optional callable ``(stem, ok, detail)`` called after each matrix.
        safeguard: check each learned factor against its fallback.
        computed: preconditioners computed elsewhere, as above.

    Returns:
        An ``ExportReport``: the folder, the program written (or why none), the per-matrix JSON files and the
            failures.

    Raises:
        ExportError: (nothing written) a missing, corrupt or foreign checkpoint, a bad ``matrices`` argument,
            or an existing non-empty ``out_dir`` without ``overwrite``.
    """
    from learnsolve import __version__

    from .preconditioners import export_preconditioners, resolve_matrices, write_matrix_files

    if out_dir is not None:
        check_output_folder(out_dir, overwrite)
    model, name, target, kwargs = model_from_checkpoint(ckpt_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(log_dir, name)
    reason = None
    files = []
    if (isinstance(matrices, str) and not matrices.strip()) or (isinstance(matrices, (list, tuple))
                                                                 and not matrices):
        matrices = None  # "" or []: no matrices
    if matrices is not None:
        reason = model.matrix_export_reason(name)
        if reason is None:
            files = resolve_matrices(matrices)
    dtype = str(next(iter(model.parameters()), torch.empty(0)).dtype).removeprefix("torch.")
    report = ExportReport(folder=out, model=name, kind=model.kind)
    with StagedFolder(out, overwrite) as tmp:
        digest = _write_weights(model, tmp / WEIGHTS)
        prog = (compile_program(model, tmp) if program else
                {"program": None, "program_format": None, "program_note": "not requested (program=false)",
                 "program_inputs": None})
        report.skipped = _skip_note(reason, prog["program"] is not None)
        if files:
            written, report.failures = export_preconditioners(model, files, tmp / PRECONDITIONERS, name=name,
                                                              progress=progress, safeguard=safeguard)
            report.preconditioners = {s: out / PRECONDITIONERS / p.name for s, p in written.items()}
        if computed:
            (tmp / PRECONDITIONERS).mkdir(exist_ok=True)
            for stem, (exported, meta) in computed.items():
                p = write_matrix_files(exported, tmp / PRECONDITIONERS, stem,
                                       str(meta.get("factor", name)), meta)
                report.preconditioners[stem] = out / PRECONDITIONERS / p.name
        config = {
            "format": FORMAT, "model": name, "kind": report.kind, "target": target, "kwargs": kwargs,
            "dtype": dtype, "weights": WEIGHTS, "weights_sha256": digest,
            **prog, "preconditioner": model.matrix_type,
            "matrices": (None if matrices is None and not computed else
                         {"exported": sorted(report.preconditioners), "failed": report.failures,
                          "skipped": report.skipped}),
            "learnsolve_version": __version__, "torch_version": torch.__version__,
            "source_checkpoint": str(ckpt_path),
        }
        write_json(tmp / CONFIG, config)
    report.program, report.program_format, report.program_note = (prog["program"], prog["program_format"],
                                                                   prog["program_note"])
    return report


__all__ = ["ExportReport", "default_out_dir", "export_model", "model_from_checkpoint"]
