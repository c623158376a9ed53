"""Per-matrix preconditioner files: a linear learned preconditioner applied to Matrix Market files.

The model says what its preconditioner of one matrix is
(:meth:`learnsolve.models.base.LearnedModel.export_matrix`: arrays of one of the types of
:data:`learnsolve.models.base.MATRIX_TYPES`, or ``matrix_export_reason`` says why it has none); this module
writes the files of that type (every file name carries the matrix's name):

- type ``"llt"`` (M = L L^T; neural_if): ``<stem>_L.mtx`` (Matrix Market, coordinate real general, lower
  triangular) and ``<stem>_L.npz`` (``scipy.sparse.save_npz``, CSR), the same factor L;
- type ``"lowrank_diag"`` (M = D + U V^T; lowrank_precond, V = U): ``<stem>_lowrank.npz`` (``numpy.savez``:
  ``D`` (n,), ``U`` (n, r), ``V`` (n, r));
- ``<stem>.json``: ``{"format", "matrix", "source", "n", "nnz_A", "model", "type", "factor", "safeguard",
  "files", "apply", ...}``.

The safeguard (on by default): the model's preconditioner of each matrix is checked against its classical
fallback (:meth:`learnsolve.models.base.LearnedModel.safe_preconditioner_for`, random probes: the users'
right-hand sides are unknown); where it would be slower the FALLBACK is written (IC(0) as an ``"llt"`` factor;
lowrank_precond's Jacobi as an ``"llt"`` diagonal factor L = diag(A)^(1/2)), and the JSON says which
(``"factor": "learned"`` or ``"fallback:ic0"``, ``"fallback:jacobi"``, ...) and why (``"safeguard"``:
accepted, reason, the fallback's name, the energy ratio and Ritz condition estimates of the race, the seconds
it took).

:func:`learnsolve.export.load_preconditioner` reads them back. The preconditioner of a matrix file depends on
A only (its coefficient feature is ones and no model reads b).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from learnsolve.files import atomic_open, write_json

from ._io import ExportError

APPLY = {
    "llt": "M = L L^T with L lower triangular ({npz}: CSR; the same matrix in {mtx}); "
           "M^-1 r = L^-T (L^-1 r): one forward and one backward triangular solve",
    "lowrank_diag": "M = D + U V^T (arrays D (n,), U (n, r), V (n, r) in {npz}; here V = U, so M is SPD); "
                    "M^-1 by Woodbury: M^-1 r = D^-1 r - D^-1 U (I + V^T D^-1 U)^-1 V^T D^-1 r",
}


def resolve_matrices(spec) -> list[Path]:
    """Matrix files from a folder (:func:`learnsolve.data.mtx.list_matrices`: its ``*.mtx`` / ``*.mtx.gz``
    without right-hand-side siblings), a file, a comma-separated string or a list of those. ExportError for a
    path that does not exist or a folder without matrices."""
    from learnsolve.data.mtx import list_matrices

    if isinstance(spec, (str, os.PathLike)):
        items = [s.strip() for s in str(spec).split(",")] if isinstance(spec, str) else [spec]
    elif isinstance(spec, Iterable):
        items = list(spec)
    else:
        raise ExportError(f"matrices: expected a folder, a file or a list of files, got {spec!r}")
    files: list[Path] = []
    for item in items:
        if item in ("", None):
            continue
        p = Path(str(item))
        if p.is_dir():
            found = list_matrices(p)
            if not found:
                raise ExportError(f"matrices: folder {str(p)!r} holds no .mtx or .mtx.gz file")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ExportError(f"matrices: {str(p)!r} is neither a Matrix Market file nor a folder")
    if not files:
        raise ExportError("matrices: no matrix file given")
    return files


def _system(path: Path, model, name: str):
    """(A, PyG Data) of a matrix file, refused (ValueError) when the model cannot serve it."""
    from learnsolve.data import make_system
    from learnsolve.data.mtx import matrix_stem, read_matrix_market

    A = read_matrix_market(path)  # MatrixMarketError (a ValueError) for a malformed or non-square file
    n = A.shape[0]
    if model.requires_spd:
        scale = abs(A).max() if A.nnz else 0.0
        asym = abs(A - A.T).max() if A.nnz else 0.0
        if asym > 1e-10 * scale:
            raise ValueError(f"not symmetric (max |a_ij - a_ji| = {asym:.3g}, max |a_ij| = {scale:.3g}): "
                             f"{name} builds an SPD preconditioner for symmetric positive definite matrices")
        d = A.diagonal()
        if n and not (d > 0).all():
            i = int(np.flatnonzero(~(d > 0))[0])
            raise ValueError(f"non-positive diagonal entry a_ii = {d[i]:g} in row {i}: not SPD, and {name} "
                             "builds an SPD preconditioner for SPD matrices")
    if model.num_nodes is not None and n != model.num_nodes:
        raise ValueError(f"{name} was trained for n = {model.num_nodes} unknowns; this matrix has n = {n}")
    data = make_system(A, A @ np.ones(n), pos=(np.arange(n, dtype=np.float64) / max(n, 1)).reshape(n, 1),
                       coeff=np.ones(n), family="matrix_market",
                       params={"name": matrix_stem(path), "path": str(path)}, seed=0, x=np.zeros(n),
                       symmetric=True)
    return A, data


def _write_llt(arrays: dict, out: Path, stem: str, name: str, written: list[Path]) -> dict:
    from learnsolve.data import write_matrix_market

    L = arrays["L"]
    if not np.all(np.isfinite(L.data)):
        raise ValueError(f"{name} produced a non-finite factor on this matrix")
    files = {"L_mtx": f"{stem}_L.mtx", "L_npz": f"{stem}_L.npz"}
    written.append(out / files["L_mtx"])
    write_matrix_market(out / files["L_mtx"], L, comment=f"{name} factor L of {stem}: M = L L^T",
                        symmetric=False)
    written.append(out / files["L_npz"])
    with atomic_open(out / files["L_npz"], "wb") as fh:
        sp.save_npz(fh, L, compressed=True)
    return {"files": files, "nnz_L": int(L.nnz), "apply": APPLY["llt"].format(npz=files["L_npz"],
                                                                              mtx=files["L_mtx"])}


def _write_lowrank(arrays: dict, out: Path, stem: str, name: str, written: list[Path]) -> dict:
    D, U, V = arrays["D"], arrays["U"], arrays["V"]
    if not (np.all(np.isfinite(D)) and np.all(np.isfinite(U)) and np.all(np.isfinite(V)) and np.all(D > 0)):
        raise ValueError(f"{name} produced a non-finite or non-positive D on this matrix")
    files = {"lowrank": f"{stem}_lowrank.npz"}
    written.append(out / files["lowrank"])
    with atomic_open(out / files["lowrank"], "wb") as fh:
        np.savez(fh, D=D, U=U, V=V)
    return {"files": files, "rank": int(U.shape[1]),
            "apply": APPLY["lowrank_diag"].format(npz=files["lowrank"])}


WRITERS = {"llt": _write_llt, "lowrank_diag": _write_lowrank}


def _number(v: float) -> float | None:
    """A JSON-safe float (NaN/Inf become null)."""
    v = float(v)
    return v if np.isfinite(v) else None


def safeguard_record(check) -> dict:
    """The ``"safeguard"`` entry of a per-matrix JSON: what the check of one system decided and why."""
    return {"accepted": check.all_accepted, "reason": check.reason, "fallback": check.fallback_name,
            "energy_ratio": _number(check.energy_ratio.reshape(-1)[0]),
            "kappa_learned": _number(check.kappa.reshape(-1)[0]),
            "kappa_fallback": _number(check.kappa_fallback.reshape(-1)[0]), "steps": check.steps,
            "seconds": check.seconds, "notes": list(check.notes),
            "rule": "a short PCG race from random right-hand sides: the learned factor is kept only where "
                    "its A-norm error after the race is no larger than the fallback's "
                    "(learnsolve.linalg.preconditioners.safeguard)"}


def _chosen_matrix(model, batch, name: str, safeguard: bool):
    """(MatrixExport, factor, safeguard record or None): the learned arrays where the safeguard keeps them (or
    ``safeguard=False``), the fallback's where it rejects them."""
    from learnsolve.models.base import matrix_export_of

    with torch.no_grad():
        check = model.safe_preconditioner_for(batch, rhs=False)[1] if safeguard else None
        if check is None or check.all_accepted:
            return model.export_matrix(batch), "learned", None if check is None else safeguard_record(check)
        exported = matrix_export_of(check.preconditioner)
    if exported is None:
        raise ValueError(f"the safeguard rejected {name}'s preconditioner ({check.reason}), and its fallback "
                         f"{check.fallback_name} has no file form")
    return exported, f"fallback:{check.fallback_key}", safeguard_record(check)


def _export_one(model, name: str, path: Path, out: Path, stem: str, safeguard: bool = True) -> Path:
    from learnsolve.models.base import one_system_batch

    A, data = _system(path, model, name)
    exported, factor, record = _chosen_matrix(model, one_system_batch(data), name, safeguard)
    label = name if factor == "learned" else f"{record['fallback']} (the safeguard's fallback for {name})"
    return write_matrix_files(exported, out, stem, label, {
        "source": str(path), "n": int(A.shape[0]), "nnz_A": int(A.nnz), "model": name,
        "model_class": f"{type(model).__module__}.{type(model).__name__}", "factor": factor,
        "safeguard": record})


def write_matrix_files(exported, out: Path, stem: str, label: str, meta: dict) -> Path:
    """Write one matrix's preconditioner (a :class:`learnsolve.models.base.MatrixExport`) as ``<stem>`` files
    in ``out`` with its ``<stem>.json`` (``meta``: source, n, nnz_A, model, factor, ... as in the module doc;
    ``label`` names the factor's maker in the files' comments). Returns the JSON's path; on failure no file is
    left."""
    if exported.type not in WRITERS:
        raise ValueError(f"{label} exports a matrix of type {exported.type!r}, which export cannot write "
                         f"(it writes {', '.join(WRITERS)})")
    meta = {"format": 1, "matrix": stem, **meta, "type": exported.type}
    written: list[Path] = []
    try:
        meta.update(WRITERS[exported.type](exported.arrays, out, stem, label, written))
        meta["load"] = (f"learnsolve.export.load_preconditioner('{stem}.json') (scipy LinearOperator "
                        "applying M^-1; backend='torch' for learnsolve.linalg)")
        written.append(out / f"{stem}.json")
        write_json(out / f"{stem}.json", meta)
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    return out / f"{stem}.json"


def _model_and_name(source, name: str | None):
    """(model, name) of a learnsolve model or of an exported model folder (a path)."""
    from .reader import load_exported_model, read_config

    if isinstance(source, (str, os.PathLike)):
        return load_exported_model(source), name or read_config(source)["model"]
    return source, name or type(source).__name__


def export_preconditioners(model, matrices, out_dir: str | os.PathLike, *, name: str | None = None,
                           progress=None, safeguard: bool = True) -> tuple[dict[str, Path], dict[str, str]]:
    """Apply ``model`` (a learnsolve model, or an exported model folder) to each matrix and write its
    preconditioner files into ``out_dir`` (created when missing): the learned factor where the safeguard keeps
    it, its fallback where it rejects it (see the module doc; ``safeguard=False``: always the learned factor,
    and the JSON's ``"safeguard"`` is null). A matrix that fails (malformed file, wrong kind for the model,
    duplicate name) leaves no file and is reported; the others are written.

    Args:
        model: a learnsolve model, or an exported model folder.
        matrices: a folder of ``.mtx`` files, a file, a comma-separated string or a list of them.
        out_dir: the folder to write into.
        name: the model's registry name (default: from the folder's config or the class).
        progress: optional callable ``(stem, ok, detail)`` called after each matrix.
        safeguard: check each learned factor against its fallback.

    Returns:
        ``({stem: json path}, {stem: reason})``: the files written and the matrices that failed.

    Raises:
        ExportError: a model without a per-matrix preconditioner (the model's ``matrix_export_reason``) or bad
            ``matrices``.
    """
    from learnsolve.data.mtx import matrix_stem

    model, name = _model_and_name(model, name)
    reason = model.matrix_export_reason(name)
    if reason is not None:
        raise ExportError(reason)
    files = resolve_matrices(matrices)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    failed: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for path in files:
        stem = matrix_stem(path)
        if stem in seen:
            failed[f"{stem} ({path})"] = (f"{path}: a second matrix named {stem!r} (first: {seen[stem]}); "
                                          "not exported")
            if progress:
                progress(stem, False, failed[f"{stem} ({path})"])
            continue
        seen[stem] = path
        try:
            written[stem] = _export_one(model, name, path, out, stem, safeguard)
        except (ValueError, RuntimeError, OSError) as e:
            msg = str(e)
            failed[stem] = msg if msg.startswith(str(path)) else f"{path}: {msg}"
        if progress:
            progress(stem, stem in written, written.get(stem) or failed.get(stem))
    return written, failed


__all__ = ["APPLY", "WRITERS", "export_preconditioners", "resolve_matrices", "safeguard_record",
           "write_matrix_files"]
