"""Model export: a self-contained folder that rebuilds a trained model without Lightning or Hydra.

Folder layout (``FORMAT`` 1)::

    config.json         {"format", "model", "kind", "target", "kwargs", "dtype", "weights", "program",
                         "program_format", "program_note", "program_inputs", "preconditioner", "matrices",
                         "learnsolve_version", "torch_version", "source_checkpoint"}
    model.safetensors   the nn.Module's state_dict (contiguous CPU tensors)
    program.pt2         torch.export program (dynamic n and E), or program.ts (TorchScript), or none
    preconditioners/    per-matrix files, when matrices were given (see learnsolve.export.preconditioners)

:func:`load_model` imports ``target`` (a model class of ``learnsolve.models``, nothing else), builds it with
``kwargs`` and loads the safetensors weights. :func:`load_program` loads the compiled program.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._io import ExportError, StagedFolder, atomic_file, check_output_folder, read_json, write_json
from .programs import ProgramSpec, check_systems, compare, program_spec

FORMAT = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PRECONDITIONERS = "preconditioners"
PROGRAM_FILES = {"torch.export": "program.pt2", "torchscript": "program.ts"}


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


# ------------------------------------------------------------------------------------------------
# building a model from (target, kwargs)
# ------------------------------------------------------------------------------------------------

def resolve_target(target, where: str) -> type[nn.Module]:
    """The model class named ``target``; only the registered classes of ``learnsolve.models`` are allowed
    (a config file must not be able to import and run arbitrary code)."""
    from learnsolve.models import MODELS

    if not isinstance(target, str) or "." not in target:
        raise ExportError(f"{where}: model target {target!r} is not a dotted class name")
    module, _, name = target.rpartition(".")
    if module != "learnsolve.models" and not module.startswith("learnsolve.models."):
        raise ExportError(f"{where}: model target {target!r} is outside learnsolve.models; refusing to import it")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"{where}: model target {target!r} does not exist in this learnsolve ({e})") from e
    if not (isinstance(obj, type) and obj in MODELS.values()):
        raise ExportError(f"{where}: {target!r} is not a learnsolve model class (known: "
                          f"{', '.join(f'{c.__module__}.{c.__name__}' for c in MODELS.values())})")
    return obj


def _build(cls: type[nn.Module], kwargs, where: str) -> nn.Module:
    if not isinstance(kwargs, dict):
        raise ExportError(f"{where}: model kwargs must be a JSON object, got {type(kwargs).__name__}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{where}: cannot build {cls.__name__} from {kwargs}: {e}") from e


def _load_state(model: nn.Module, state: dict, where: str) -> nn.Module:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # a model trained in float64 stays float64
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{where}: weights do not fit {type(model).__name__}: {e}") from e
    return model.eval()


def model_from_checkpoint(ckpt_path: str | os.PathLike) -> tuple[nn.Module, str, str, dict]:
    """(model in eval mode, model name, target, kwargs) from a training checkpoint; ExportError when the file is
    missing, unreadable, not a learnsolve checkpoint or from a model family learnsolve does not know."""
    from learnsolve.models import MODELS
    from learnsolve.models.checkpoint import CheckpointError, read_checkpoint

    where = f"checkpoint {str(ckpt_path)!r}"
    try:
        ckpt = read_checkpoint(ckpt_path)
    except CheckpointError as e:
        raise ExportError(str(e)) from e
    mcfg = ckpt["learnsolve_config"].get("model")
    net = mcfg.get("net") if isinstance(mcfg, dict) else None
    if not isinstance(net, dict):
        raise ExportError(f"{where}: its config has no model.net entry (not a learnsolve training checkpoint)")
    name = mcfg.get("name")
    if name not in MODELS:
        raise ExportError(f"{where} is from model family {name!r}, which this learnsolve does not know; "
                          f"it exports {', '.join(MODELS)}")
    cls = resolve_target(net.get("_target_"), where)
    if cls is not MODELS[name]:
        raise ExportError(f"{where}: its model name {name!r} and its class {net.get('_target_')!r} disagree")
    kwargs = {k: v for k, v in net.items() if not str(k).startswith("_")}
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ExportError(f"{where}: model arguments {kwargs} are not plain values: {e}") from e
    if any(isinstance(v, dict) and "_target_" in v for v in kwargs.values()):
        raise ExportError(f"{where}: nested objects in the model arguments are not supported by export")
    model = _build(cls, kwargs, where)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return _load_state(model, state, where), name, f"{cls.__module__}.{cls.__name__}", kwargs


def read_config(folder: str | os.PathLike) -> dict:
    """config.json of an exported model folder, checked (ExportError naming the file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"exported model folder {str(folder)!r} does not exist")
    path = folder / CONFIG
    cfg = read_json(path, "model config")
    if cfg.get("format") != FORMAT:
        raise ExportError(f"{path}: format {cfg.get('format')!r} is not {FORMAT} (written by another learnsolve?)")
    for key in ("model", "target", "kwargs"):
        if key not in cfg:
            raise ExportError(f"{path}: missing key {key!r}")
    return cfg


def load_model(folder: str | os.PathLike) -> nn.Module:
    """The model of an exported folder (eval mode, CPU): ``target(**kwargs)`` with the safetensors weights.

    Needs neither Lightning nor Hydra. Raises ExportError for a missing or malformed config, a target outside
    ``learnsolve.models``, or missing / unreadable / mismatched weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder)
    where = str(folder / CONFIG)
    model = _build(resolve_target(cfg["target"], where), cfg["kwargs"], where)
    wpath = folder / str(cfg.get("weights", WEIGHTS))
    if not wpath.is_file():
        raise ExportError(f"{wpath}: weights file missing")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{wpath}: not a readable safetensors file ({e})") from e
    return _load_state(model, state, str(wpath))


def load_program(folder: str | os.PathLike):
    """The compiled program of an exported folder as a callable module (see config.json "program_inputs"),
    or ExportError when none was written (config.json "program_note" says why)."""
    folder = Path(folder)
    cfg = read_config(folder)
    if not cfg.get("program"):
        raise ExportError(f"{folder / CONFIG}: no program was exported: {cfg.get('program_note')}")
    return _load_program(cfg.get("program_format"), folder / cfg["program"])


def _load_program(fmt: str, path: Path):
    if not path.is_file():
        raise ExportError(f"{path}: program file missing")
    try:
        if fmt == "torch.export":
            return torch.export.load(str(path)).module()
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.jit.load(str(path))
    except Exception as e:
        raise ExportError(f"{path}: cannot load the {fmt} program ({type(e).__name__}: {e})") from e
    raise ExportError(f"{path}: unknown program format {fmt!r}")


# ------------------------------------------------------------------------------------------------
# compiled program
# ------------------------------------------------------------------------------------------------

def _save_program(fmt: str, spec: ProgramSpec, example: tuple, path: Path) -> None:
    if fmt == "torch.export":
        from torch.export import Dim

        n = Dim("n", min=2) if spec.dynamic else None
        E = Dim("E", min=2)
        shapes = ({1: E}, {0: E}, None if n is None else {0: n}) + (({0: n} if n is not None else None,)
                                                                     * spec.extra_inputs)
        ep = torch.export.export(spec.wrapper, example, dynamic_shapes=shapes, strict=False)
        atomic_file(path, lambda fh: torch.export.save(ep, fh))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated (torch.export is the first choice)
            ts = torch.jit.trace(spec.wrapper, example, check_trace=False)
            atomic_file(path, lambda fh: torch.jit.save(ts, fh))


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compile_program(model: nn.Module, folder: Path, formats=("torch.export", "torchscript")) -> dict:
    """Write the model's program into ``folder``: torch.export first (dynamic n and E), TorchScript (trace)
    when that fails. A program is kept only when, loaded back from its file, it reproduces the model on the
    trace example AND on a system of another size. Returns the config.json fields."""
    spec = program_spec(model)
    if isinstance(spec, str):
        return {"program": None, "program_format": None, "program_note": spec, "program_inputs": None}
    spec.wrapper.eval()
    systems = check_systems(spec, model)
    inputs = [spec.inputs(d, seed) for seed, d in enumerate(systems)]
    float64 = all(p.dtype == torch.float64 for p in spec.wrapper.parameters())
    with torch.no_grad():
        refs = [spec.reference(model, d, i) for d, i in zip(systems, inputs)]
    notes = []
    describe = dict(spec.describe, dynamic=["n", "E"] if spec.dynamic else ["E"])
    for fmt in formats:
        path = folder / PROGRAM_FILES[fmt]
        try:
            with torch.no_grad():
                _save_program(fmt, spec, inputs[0], path)
                prog = _load_program(fmt, path)
                devs = [compare(spec.canonical(_as_tuple(prog(*i)), d), r, float64)
                        for d, i, r in zip(systems, inputs, refs)]
        except Exception as e:  # noqa: BLE001 -- any exporter failure means: try the next path
            path.unlink(missing_ok=True)
            notes.append(f"{fmt} failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})")
            continue
        bad = [(int(d.num_nodes), dev) for d, dev in zip(systems, devs) if dev is not None]
        if bad:
            path.unlink(missing_ok=True)
            notes.append(f"{fmt}: the program differs from the model on a system with n = {bad[0][0]} "
                         f"(relative deviation {bad[0][1]:.2e}); not kept")
            continue
        sizes = sorted({int(d.num_nodes) for d in systems})
        return {"program": path.name, "program_format": fmt,
                "program_note": "; ".join(notes + [f"checked against the model on n = {sizes}"]),
                "program_inputs": describe}
    return {"program": None, "program_format": None, "program_note": "no program: " + "; ".join(notes),
            "program_inputs": describe}


# ------------------------------------------------------------------------------------------------
# the whole export
# ------------------------------------------------------------------------------------------------

def _write_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    atomic_file(path, lambda fh: fh.write(blob))


def default_out_dir(log_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(log_dir) / "export" / f"{model_name}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"


def export_model(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, matrices=None,
                 overwrite: bool = False, program: bool = True, log_dir: str | os.PathLike = "outputs",
                 progress=None) -> ExportReport:
    """Export a training checkpoint to ``out_dir`` (default ``<log_dir>/export/<model>_<time>``).

    Writes config.json, model.safetensors and the compiled program (``program=False``: none) and, when
    ``matrices`` (a folder, a file, a comma-separated string or a list of them) are given and the model is a
    linear preconditioner, one set of files per matrix under ``preconditioners/``
    (:func:`learnsolve.export.export_preconditioners`). A matrix that cannot be exported (wrong kind,
    malformed file) is recorded in ``report.failures`` and config.json, and the others are still written.
    A nonlinear or surrogate model skips the matrices (``report.skipped`` says why).

    Everything is written to a temporary sibling folder renamed into place at the end: a failure leaves no
    partial output. Raises ExportError (nothing written) for a missing, corrupt or foreign checkpoint, a
    bad ``matrices`` argument, or an existing non-empty ``out_dir`` without ``overwrite``.
    """
    from learnsolve import __version__

    from .preconditioners import (
        export_preconditioners,
        no_matrix_reason,
        preconditioner_type,
        resolve_matrices,
    )

    if out_dir is not None:
        check_output_folder(out_dir, overwrite)
    model, name, target, kwargs = model_from_checkpoint(ckpt_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(log_dir, name)
    skipped = None
    files = []
    if (isinstance(matrices, str) and not matrices.strip()) or (isinstance(matrices, (list, tuple))
                                                                 and not matrices):
        matrices = None  # "" or []: no matrices
    if matrices is not None:
        skipped = no_matrix_reason(model, name)
        if skipped is None:
            files = resolve_matrices(matrices)
    dtype = str(next(iter(model.parameters()), torch.empty(0)).dtype).removeprefix("torch.")
    report = ExportReport(folder=out, model=name, kind=str(getattr(model, "kind", "?")), skipped=skipped)
    with StagedFolder(out, overwrite) as tmp:
        _write_weights(model, tmp / WEIGHTS)
        prog = (compile_program(model, tmp) if program else
                {"program": None, "program_format": None, "program_note": "not requested (program=false)",
                 "program_inputs": None})
        report.skipped = skipped = _skip_note(skipped, prog["program"] is not None)
        if files:
            written, report.failures = export_preconditioners(model, files, tmp / PRECONDITIONERS, name=name,
                                                              progress=progress)
            report.preconditioners = {s: out / PRECONDITIONERS / p.name for s, p in written.items()}
        config = {
            "format": FORMAT, "model": name, "kind": report.kind, "target": target, "kwargs": kwargs,
            "dtype": dtype, "weights": WEIGHTS,
            **prog, "preconditioner": preconditioner_type(model),
            "matrices": (None if matrices is None else
                         {"exported": sorted(report.preconditioners), "failed": report.failures,
                          "skipped": skipped}),
            "learnsolve_version": __version__, "torch_version": torch.__version__,
            "source_checkpoint": str(ckpt_path),
        }
        write_json(tmp / CONFIG, config)
    report.program, report.program_format, report.program_note = (prog["program"], prog["program_format"],
                                                                   prog["program_note"])
    return report


def _skip_note(reason: str | None, has_program: bool) -> str | None:
    if reason is None or has_program:
        return reason
    return reason.replace("exported the model and its program only", "exported the model only (no program: "
                          "see program_note in config.json)")
