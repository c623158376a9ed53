"""Reading exported files back: the model folder, its compiled program, per-matrix preconditioners.

Model folder layout (``FORMAT`` 1)::

    config.json         {"format", "model", "kind", "target", "kwargs", "dtype", "weights", "weights_sha256",
                         "program", "program_format", "program_note", "program_inputs", "preconditioner",
                         "matrices", "learnsolve_version", "torch_version", "source_checkpoint"}
    model.safetensors   the nn.Module's state_dict (contiguous CPU tensors)
    program.pt2         torch.export program (dynamic n and E), or program.ts (TorchScript), or none
    preconditioners/    per-matrix files, when matrices were given (see learnsolve.export.preconditioners)

:func:`load_exported_model` builds ``target(**kwargs)`` (a class registered in ``learnsolve.models.MODELS``,
nothing else: :func:`learnsolve.models.checkpoint.resolve_target`) and loads the safetensors weights;
:func:`load_program` loads the compiled program; :func:`load_preconditioner` turns a per-matrix
``<stem>.json`` into a scipy ``LinearOperator`` or a :class:`learnsolve.linalg.Preconditioner`. Needs neither
Lightning nor Hydra.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ._io import ExportError, export_errors, read_json

FORMAT = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PRECONDITIONERS = "preconditioners"
PROGRAM_FILES = {"torch.export": "program.pt2", "torchscript": "program.ts"}
TYPES = ("llt", "lowrank_diag")  # the per-matrix file types (learnsolve.models.base.MATRIX_TYPES)


# ------------------------------------------------------------------------------------------------
# the model folder
# ------------------------------------------------------------------------------------------------

def read_config(folder: str | os.PathLike) -> dict:
    """config.json of an exported model folder, checked (ExportError naming the file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"exported model folder {str(folder)!r} does not exist")
    path = folder / CONFIG
    cfg = read_json(path, "model config")
    if cfg.get("format") != FORMAT:
        raise ExportError(f"{path}: format {cfg.get('format')!r} is not {FORMAT} (written by another "
                          "learnsolve?)")
    for key in ("model", "target", "kwargs"):
        if key not in cfg:
            raise ExportError(f"{path}: missing key {key!r}")
    return cfg


def load_exported_model(folder: str | os.PathLike):
    """The model of an exported folder (eval mode, CPU): ``target(**kwargs)`` with the safetensors weights.

    Needs neither Lightning nor Hydra.

    Args:
        folder: a folder written by ``python scripts/export.py`` (``config.json``, ``model.safetensors``).

    Returns:
        The learned model (an ``nn.Module`` of ``learnsolve.models``).

    Raises:
        ExportError: a missing or malformed config, a target outside ``learnsolve.models``, or missing /
            unreadable / mismatched weights (a weights file whose SHA-256 differs from ``weights_sha256``, a
            name outside the folder, NaN/Inf values, arguments that build other shapes than the weights hold).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from learnsolve.models import MODELS
    from learnsolve.models.checkpoint import build_model, load_weights, resolve_target

    folder = Path(folder)
    cfg = read_config(folder)
    where = str(folder / CONFIG)
    with export_errors():
        cls = resolve_target(cfg["target"], where)
    if not isinstance(cfg["model"], str) or MODELS.get(cfg["model"]) is not cls:
        raise ExportError(f"{where}: model {cfg['model']!r} does not name the class {cfg['target']!r} in the "
                          f"registry (known: {', '.join(MODELS)})")
    name = cfg.get("weights", WEIGHTS)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ExportError(f"{where}: weights must name a file inside the folder, got {name!r}")
    wpath = folder / name
    if not wpath.is_file():
        raise ExportError(f"{wpath}: weights file missing")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{wpath}: not a readable safetensors file ({e})") from e
    _check_digest(wpath, cfg.get("weights_sha256"), where)
    # the arguments are checked against the weights' shapes before the model is allocated
    with export_errors():
        model = build_model(cls, cfg["kwargs"], f"{wpath} (arguments from {where})", state)
        return load_weights(model, state, str(wpath))


def _check_digest(path: Path, digest, where: str) -> None:
    """The file's SHA-256 against the one config.json records (a config without ``weights_sha256`` passes)."""
    import hashlib

    if digest is None:
        return
    if not isinstance(digest, str) or hashlib.sha256(path.read_bytes()).hexdigest() != digest.lower():
        raise ExportError(f"{path}: its SHA-256 does not match weights_sha256 in {where}: the file was "
                          "altered or damaged after export")


def load_program(folder: str | os.PathLike):
    """The compiled program of an exported folder as a callable module (see config.json "program_inputs").

    Args:
        folder: an exported model folder.

    Returns:
        The program (``torch.export`` or TorchScript) mapping one system's tensors to its preconditioner.

    Raises:
        ExportError: no program was written (config.json "program_note" says why) or the file is unreadable.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    if not cfg.get("program"):
        raise ExportError(f"{folder / CONFIG}: no program was exported: {cfg.get('program_note')}")
    return load_program_file(cfg.get("program_format"), folder / cfg["program"])


def load_program_file(fmt: str, path: Path):
    """A program file of format ``fmt`` ("torch.export" | "torchscript") as a callable module."""
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
# per-matrix preconditioners
# ------------------------------------------------------------------------------------------------

def _file(json_path: Path, files: dict, key: str) -> Path:
    rel = files.get(key)
    if not isinstance(rel, str) or not rel:
        raise ExportError(f"{json_path}: files.{key} is missing")
    p = json_path.parent / rel
    if not p.is_file():
        raise ExportError(f"{json_path}: file {str(p)!r} (files.{key}) is missing")
    return p


def _read_factor(json_path: Path, files: dict, n: int) -> sp.csr_matrix:
    if "L_npz" in files:
        p = _file(json_path, files, "L_npz")
        try:
            L = sp.load_npz(p)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ExportError(f"{p}: not a readable scipy .npz sparse matrix ({type(e).__name__}: "
                              f"{e})") from e
    else:
        from learnsolve.data.mtx import MatrixMarketError, read_matrix_market

        p = _file(json_path, files, "L_mtx")
        try:
            L = read_matrix_market(p)
        except MatrixMarketError as e:
            raise ExportError(str(e)) from e
    L = sp.csr_matrix(L, dtype=np.float64)
    L.sort_indices()
    if L.shape != (n, n):
        raise ExportError(f"{p}: factor is {L.shape[0]} x {L.shape[1]}, but {json_path.name} says n = {n}")
    if sp.triu(L, 1).count_nonzero():
        raise ExportError(f"{p}: factor L is not lower triangular")
    d = L.diagonal()
    if not (np.all(np.isfinite(L.data)) and np.all(d != 0)):
        raise ExportError(f"{p}: factor L has a zero diagonal entry or a non-finite value (singular)")
    return L


def _read_lowrank(json_path: Path, files: dict, n: int):
    p = _file(json_path, files, "lowrank")
    try:
        with np.load(p, allow_pickle=False) as z:
            D, U = np.asarray(z["D"], np.float64), np.asarray(z["U"], np.float64)
            V = np.asarray(z["V"], np.float64) if "V" in z.files else U
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ExportError(f"{p}: not a readable .npz with arrays D, U, V ({type(e).__name__}: {e})") from e
    if D.shape != (n,) or U.ndim != 2 or U.shape[0] != n or V.shape != U.shape:
        raise ExportError(f"{p}: shapes D {D.shape}, U {U.shape}, V {V.shape} do not match (n,), (n, r), "
                          f"(n, r) with n = {n}")
    if not (np.all(np.isfinite(D)) and np.all(np.isfinite(U)) and np.all(np.isfinite(V)) and np.all(D != 0)):
        raise ExportError(f"{p}: D has a zero entry or the arrays hold non-finite values")
    return D, U, V


def _llt_scipy(L: sp.csr_matrix):
    import scipy.sparse.linalg as spla

    n = L.shape[0]
    # SuperLU with the natural ordering and diagonal pivots factors a triangular L without fill or permutation
    # (L = (L D^-1) D): two sparse substitutions per application, ~3x faster than spsolve_triangular
    lu = spla.splu(L.tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    if np.array_equal(lu.perm_r, np.arange(n)) and np.array_equal(lu.perm_c, np.arange(n)):
        def solve(r):
            return lu.solve(lu.solve(r), trans="T")
    else:  # not expected; exact anyway
        LT = L.T.tocsr()

        def solve(r):
            return spla.spsolve_triangular(LT, spla.spsolve_triangular(L, r, lower=True), lower=False)

    def matvec(r):
        return solve(np.asarray(r, dtype=np.float64).reshape(n))

    def matmat(R):
        return solve(np.ascontiguousarray(R, dtype=np.float64))

    return spla.LinearOperator((n, n), matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=np.float64)


def _torch_as_scipy(P, n: int):
    """A learnsolve.linalg Preconditioner (float64, one n x n block) as a scipy LinearOperator."""
    import scipy.sparse.linalg as spla

    def run(apply, X):
        X = np.asarray(X, dtype=np.float64)
        with torch.no_grad():
            Z = apply(torch.from_numpy(np.ascontiguousarray(X.reshape(n, -1))).unsqueeze(0))[0]
        return Z.numpy().reshape(X.shape)

    return spla.LinearOperator((n, n), matvec=lambda x: run(P.apply, x),
                               rmatvec=lambda x: run(P.apply_transpose, x), matmat=lambda X: run(P.apply, X),
                               dtype=np.float64)


def _matrix_for_check(path: Path, A, n: int):
    """The user's matrix as a float64 :class:`learnsolve.linalg.SparseMatrix` of shape (n, n) (ExportError if
    not)."""
    from learnsolve.linalg import SparseMatrix

    if isinstance(A, SparseMatrix):
        S = A.detach().to(torch.float64)
    else:
        try:
            S = SparseMatrix.from_scipy(sp.csr_matrix(A), dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ExportError(f"load_preconditioner: A must be a scipy sparse matrix, a dense array or a "
                              f"learnsolve.linalg.SparseMatrix, got {type(A).__name__} ({e})") from e
    if S.shape != (n, n) or S.batch_size is not None:
        raise ExportError(f"load_preconditioner: A has shape {tuple(S.shape)}, but {path.name} is for n = "
                          f"{n}")
    return S


def _checked(path: Path, P, A, n: int):
    """P, or the faster of MIC(0) and IC(0) of A (:func:`learnsolve.linalg.fastest_factor`, with a warning)
    where :func:`learnsolve.linalg.preconditioners.safeguard` rejects P on A."""
    from learnsolve.linalg import FactorizationError, fastest_factor, safeguard

    try:
        S = _matrix_for_check(path, A, n)
        check = safeguard(S, P, lambda: fastest_factor(S))
    except FactorizationError as e:
        raise ExportError("load_preconditioner: IC(0) of the given A breaks down even with a diagonal shift "
                          f"({e}); is A symmetric positive definite?") from e
    if check.all_accepted:
        return P
    warnings.warn(f"{path}: safeguard: fell back to {check.fallback_name} of the given A ({check.reason})",
                  UserWarning, stacklevel=3)
    return check.preconditioner


def load_preconditioner(path: str | os.PathLike, backend: str = "scipy", A=None):
    """M^{-1} of an exported ``<stem>.json``.

    ``backend="scipy"``: a ``scipy.sparse.linalg.LinearOperator`` (n x n, float64; ``M=`` of
    ``scipy.sparse.linalg.cg``): two sparse triangular substitutions for ``"llt"``, Woodbury
    (:class:`learnsolve.linalg.LowRankDiagonal`) for ``"lowrank_diag"``. ``backend="torch"``: a
    :class:`learnsolve.linalg.Preconditioner` (``LLT`` / ``LowRankDiagonal``, float64) for
    ``learnsolve.linalg.solve(..., precond=...)``.
    ``A`` (optional; scipy sparse, dense or a ``SparseMatrix``): the matrix the preconditioner will be used
    with. Then the loaded factor is checked against IC(0) of A by
    :func:`learnsolve.linalg.preconditioners.safeguard` (a few PCG steps with both; IC(0) with a diagonal
    shift where plain IC(0) breaks down) and, where it would be slower, IC(0) of A is returned instead, with a
    ``UserWarning`` saying why.

    Args:
        path: a ``preconditioners/<stem>.json`` file of an exported folder.
        backend: ``"scipy"`` or ``"torch"``.
        A: the matrix it will be used with, or None (no check).

    Returns:
        M^{-1} as a scipy ``LinearOperator`` or a learnsolve ``Preconditioner``.

    Raises:
        ExportError: (naming the file) a bad ``backend``, a missing or malformed JSON, an unknown type or
            missing / bad data files, an A of the wrong size, or an A whose IC(0) breaks down even with a
            shift.

    Example:
        ```python
        import scipy.sparse.linalg as spla
        from learnsolve.export import load_preconditioner

        M = load_preconditioner("exported/nif/preconditioners/bcsstk03.json", A=A)
        x, info = spla.cg(A, b, M=M)
        ```
    """
    if backend not in ("scipy", "torch"):
        raise ExportError(f"load_preconditioner: backend must be 'scipy' or 'torch', got {backend!r}")
    path = Path(path)
    meta = read_json(path, "preconditioner file")
    typ = meta.get("type")
    if typ not in TYPES:
        raise ExportError(f"{path}: preconditioner type {typ!r} is not one of {', '.join(TYPES)}")
    n = meta.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ExportError(f"{path}: 'n' must be a positive integer, got {n!r}")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise ExportError(f"{path}: 'files' must be an object naming the data files, got {files!r}")
    from learnsolve.linalg import LLT, LowRankDiagonal, SparseMatrix

    if typ == "llt":
        L = _read_factor(path, files, n)
        P = LLT(SparseMatrix.from_scipy(L, dtype=torch.float64))
    else:
        D, U, V = (torch.from_numpy(a) for a in _read_lowrank(path, files, n))
        P = LowRankDiagonal(D, U, None if torch.equal(U, V) else V)
    if A is not None:
        P = _checked(path, P, A, n)
    if backend == "torch":
        return P
    if isinstance(P, LLT):  # the factor read from the file, or IC(0) of A: sparse substitutions in scipy
        return _llt_scipy(P.L.to_scipy().tocsr())
    return _torch_as_scipy(P, n)


__all__ = ["load_exported_model", "load_preconditioner", "load_program", "load_program_file", "read_config"]
