"""Per-matrix preconditioner files, and loading them back as scipy / torch operators.

For a matrix file ``<stem>.mtx`` (or ``.mtx.gz``) and a linear learned preconditioner, the folder gets
(every file name carries the matrix's name):

- ``neural_if`` (type ``"llt"``, M = L L^T): ``<stem>_L.mtx`` (Matrix Market, coordinate real general,
  lower triangular) and ``<stem>_L.npz`` (``scipy.sparse.save_npz``, CSR), the same factor L;
- ``lowrank_precond`` (type ``"lowrank_diag"``, M = D + U V^T with V = U): ``<stem>_lowrank.npz``
  (``numpy.savez``: ``D`` (n,), ``U`` (n, r), ``V`` (n, r));
- ``<stem>.json``: ``{"format", "matrix", "source", "n", "nnz_A", "model", "type", "files", "apply", ...}``.

:func:`load_preconditioner` turns that JSON into a ``scipy.sparse.linalg.LinearOperator`` applying M^{-1}
(usable as ``M=`` in ``scipy.sparse.linalg.cg``) or a :class:`learnsolve.linalg.Preconditioner`
(``precond=`` of ``learnsolve.linalg.solve`` / ``cg``).

The preconditioner of a matrix file depends on A only (its coefficient feature is ones and no model reads b).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ._io import ExportError, atomic_file, read_json, write_json

TYPES = ("llt", "lowrank_diag")
NONLINEAR = ("{name} is a nonlinear preconditioner (z = f(r)); it cannot be written as a fixed matrix: "
             "exported the model and its program only")
APPLY = {
    "llt": "M = L L^T with L lower triangular ({npz}: CSR; the same matrix in {mtx}); "
           "M^-1 r = L^-T (L^-1 r): one forward and one backward triangular solve",
    "lowrank_diag": "M = D + U V^T (arrays D (n,), U (n, r), V (n, r) in {npz}; here V = U, so M is SPD); "
                    "M^-1 by Woodbury: M^-1 r = D^-1 r - D^-1 U (I + V^T D^-1 U)^-1 V^T D^-1 r",
}


def preconditioner_type(model: nn.Module) -> str | None:
    """``"llt"`` | ``"lowrank_diag"`` for a model whose preconditioner is a fixed matrix, else None."""
    from learnsolve.models import LowRankPreconditioner, NeuralIF

    if isinstance(model, NeuralIF):
        return "llt"
    if isinstance(model, LowRankPreconditioner):
        return "lowrank_diag"
    return None


def no_matrix_reason(model: nn.Module, name: str) -> str | None:
    """Why ``model`` has no per-matrix export (None when it has one)."""
    from learnsolve.models import GNNSolver, UnrolledCG

    if preconditioner_type(model) is not None:
        return None
    if isinstance(model, GNNSolver):
        return NONLINEAR.format(name=name)
    if isinstance(model, UnrolledCG):
        return (f"{name} is a learned solver (K CG steps with learned step scalings), not a preconditioner: it "
                "defines no fixed matrix M; exported the model only")
    return (f"{name} is a {getattr(model, 'kind', '?')} model (it predicts solutions), not a preconditioner: "
            "there is no matrix to export; exported the model only")


def resolve_matrices(spec) -> list[Path]:
    """Matrix files from a folder (its ``*.mtx`` / ``*.mtx.gz``, right-hand-side siblings ``<stem>_b`` /
    ``<stem>_rhs`` left out, as in learnsolve.data.suites), a file, a comma-separated string or a list of
    those. ExportError for a path that does not exist or a folder without matrices."""
    from learnsolve.data.mtx import RHS_SUFFIXES, matrix_stem

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
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith((".mtx", ".mtx.gz")))
            stems = {matrix_stem(q) for q in found}
            found = [q for q in found if not any(matrix_stem(q).endswith(s) and matrix_stem(q)[: -len(s)] in stems
                                                 for s in RHS_SUFFIXES)]
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


def _system(path: Path, model: nn.Module, name: str):
    """(A, PyG Data) of a matrix file, refused (ValueError) when the model cannot serve it."""
    from learnsolve.data import make_system
    from learnsolve.data.mtx import matrix_stem, read_matrix_market

    A = read_matrix_market(path)  # MatrixMarketError (a ValueError) for a malformed or non-square file
    n = A.shape[0]
    if getattr(model, "requires_spd", False):
        scale = abs(A).max() if A.nnz else 0.0
        asym = abs(A - A.T).max() if A.nnz else 0.0
        if asym > 1e-10 * scale:
            raise ValueError(f"not symmetric (max |a_ij - a_ji| = {asym:.3g}, max |a_ij| = {scale:.3g}): {name} "
                             "builds an SPD preconditioner for symmetric positive definite matrices")
        d = A.diagonal()
        if n and not (d > 0).all():
            i = int(np.flatnonzero(~(d > 0))[0])
            raise ValueError(f"non-positive diagonal entry a_ii = {d[i]:g} in row {i}: not SPD, and {name} builds "
                             "an SPD preconditioner for SPD matrices")
    fixed = getattr(model, "num_nodes", None)
    if fixed is not None and n != fixed:
        raise ValueError(f"{name} (variant 'fixed') was trained for n = {fixed} unknowns; this matrix has n = {n}")
    data = make_system(A, A @ np.ones(n), pos=(np.arange(n, dtype=np.float64) / max(n, 1)).reshape(n, 1),
                       coeff=np.ones(n), family="matrix_market",
                       params={"name": matrix_stem(path), "path": str(path)}, seed=0, x=np.zeros(n), symmetric=True)
    return A, data


def _write_npz(path: Path, save) -> None:
    atomic_file(path, save)


def _export_one(model: nn.Module, name: str, typ: str, path: Path, out: Path, stem: str) -> Path:
    from torch_geometric.data import Batch

    from learnsolve.data import write_matrix_market

    A, data = _system(path, model, name)
    batch = Batch.from_data_list([data])
    meta = {"format": 1, "matrix": stem, "source": str(path), "n": int(A.shape[0]), "nnz_A": int(A.nnz),
            "model": name, "model_class": f"{type(model).__module__}.{type(model).__name__}", "type": typ}
    written: list[Path] = []
    try:
        with torch.no_grad():
            if typ == "llt":
                L = model.factor(batch)[1].to_scipy().tocsr()
                L.sort_indices()
                if not np.all(np.isfinite(L.data)):
                    raise ValueError(f"{name} produced a non-finite factor on this matrix")
                files = {"L_mtx": f"{stem}_L.mtx", "L_npz": f"{stem}_L.npz"}
                written.append(write_matrix_market(out / files["L_mtx"], L, comment=f"{name} factor L of {stem}: "
                                                   "M = L L^T", symmetric=False))
                written.append(out / files["L_npz"])
                _write_npz(out / files["L_npz"], lambda fh: sp.save_npz(fh, L, compressed=True))
                meta.update(files=files, nnz_L=int(L.nnz), apply=APPLY[typ].format(npz=files["L_npz"],
                                                                                   mtx=files["L_mtx"]))
            else:
                D, U = (t.detach().to(torch.float64).cpu().numpy() for t in model.factors(batch))
                if not (np.all(np.isfinite(D)) and np.all(np.isfinite(U)) and np.all(D > 0)):
                    raise ValueError(f"{name} produced a non-finite or non-positive D on this matrix")
                files = {"lowrank": f"{stem}_lowrank.npz"}
                written.append(out / files["lowrank"])
                _write_npz(out / files["lowrank"], lambda fh: np.savez(fh, D=D, U=U, V=U))
                meta.update(files=files, rank=int(U.shape[1]), apply=APPLY[typ].format(npz=files["lowrank"]))
        meta["load"] = (f"learnsolve.export.load_preconditioner('{stem}.json') (scipy LinearOperator applying "
                        "M^-1; backend='torch' for learnsolve.linalg)")
        written.append(out / f"{stem}.json")
        write_json(out / f"{stem}.json", meta)
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        raise
    return out / f"{stem}.json"


def export_preconditioners(model, matrices, out_dir: str | os.PathLike, *, name: str | None = None,
                           progress=None) -> tuple[dict[str, Path], dict[str, str]]:
    """Apply ``model`` (an nn.Module, or an exported model folder) to each matrix and write its preconditioner
    files into ``out_dir`` (created when missing). Returns ``({stem: json path}, {stem: reason})``: a matrix
    that fails (malformed file, wrong kind for the model, duplicate name) leaves no file and is reported;
    the others are written. ExportError for a model without a fixed-matrix preconditioner or bad ``matrices``.
    ``progress``: optional callable ``(stem, ok, detail)`` called after each matrix."""
    from learnsolve.data.mtx import matrix_stem

    from .model import load_model, read_config

    if isinstance(model, (str, os.PathLike)):
        name = name or read_config(model)["model"]
        model = load_model(model)
    name = name or type(model).__name__
    typ = preconditioner_type(model)
    if typ is None:
        raise ExportError(no_matrix_reason(model, name))
    files = resolve_matrices(matrices)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    failed: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for path in files:
        stem = matrix_stem(path)
        if stem in seen:
            failed[f"{stem} ({path})"] = f"{path}: a second matrix named {stem!r} (first: {seen[stem]}); not exported"
            if progress:
                progress(stem, False, failed[f"{stem} ({path})"])
            continue
        seen[stem] = path
        try:
            written[stem] = _export_one(model, name, typ, path, out, stem)
        except (ValueError, RuntimeError, OSError) as e:
            msg = str(e)
            failed[stem] = msg if msg.startswith(str(path)) else f"{path}: {msg}"
        if progress:
            progress(stem, stem in written, written.get(stem) or failed.get(stem))
    return written, failed


# ------------------------------------------------------------------------------------------------
# loading
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
            raise ExportError(f"{p}: not a readable scipy .npz sparse matrix ({type(e).__name__}: {e})") from e
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
        raise ExportError(f"{p}: shapes D {D.shape}, U {U.shape}, V {V.shape} do not match (n,), (n, r), (n, r) "
                          f"with n = {n}")
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


def _lowrank_scipy(D: np.ndarray, U: np.ndarray, V: np.ndarray):
    import scipy.linalg as sla
    import scipy.sparse.linalg as spla

    n, r = U.shape
    Dinv = 1.0 / D
    DU, DV = Dinv[:, None] * U, Dinv[:, None] * V
    lu = sla.lu_factor(np.eye(r) + V.T @ DU)  # C = I + V^T D^-1 U (r x r)

    def matvec(x):
        y = Dinv * np.asarray(x, dtype=np.float64).reshape(n)
        return y - DU @ sla.lu_solve(lu, V.T @ y)

    def rmatvec(x):  # M^-T = (D + V U^T)^-1: C^T = I + U^T D^-1 V
        y = Dinv * np.asarray(x, dtype=np.float64).reshape(n)
        return y - DV @ sla.lu_solve(lu, U.T @ y, trans=1)

    return spla.LinearOperator((n, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)


def load_preconditioner(path: str | os.PathLike, backend: str = "scipy"):
    """M^{-1} of an exported ``<stem>.json``.

    ``backend="scipy"``: a ``scipy.sparse.linalg.LinearOperator`` (n x n, float64; ``M=`` of
    ``scipy.sparse.linalg.cg``): two sparse triangular substitutions for ``"llt"``, Woodbury with an r x r LU
    for ``"lowrank_diag"``. ``backend="torch"``: a :class:`learnsolve.linalg.Preconditioner` (``LLT`` /
    ``LowRankDiagonal``, float64) for ``learnsolve.linalg.solve(..., precond=...)``.
    ExportError (naming the file) for a missing or malformed JSON, an unknown type or missing / bad data files.
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
    if typ == "llt":
        L = _read_factor(path, files, n)
        if backend == "scipy":
            return _llt_scipy(L)
        from learnsolve.linalg import LLT, SparseMatrix

        return LLT(SparseMatrix.from_scipy(L, dtype=torch.float64))
    D, U, V = _read_lowrank(path, files, n)
    if backend == "scipy":
        return _lowrank_scipy(D, U, V)
    from learnsolve.linalg import LowRankDiagonal

    t = torch.from_numpy
    return LowRankDiagonal(t(D), t(U), None if np.array_equal(U, V) else t(V))
