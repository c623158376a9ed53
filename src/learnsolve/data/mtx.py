"""Matrix Market I/O (``.mtx`` and ``.mtx.gz``) with validation, and linear systems from files.

Reading goes through :func:`scipy.io.mmread`, but the file is checked first (banner, header, size
line, entry count, index range, finiteness) and the result is checked after (shape, finiteness), so a
bad file raises :class:`MatrixMarketError` naming the file and what is wrong; scipy's own exceptions
never surface raw.

Supported (documented choices):

- ``coordinate`` with field ``real`` or ``integer`` (integers become float64) and symmetry
  ``general``, ``symmetric`` or ``skew-symmetric``; symmetric/skew storage (one triangle) is expanded
  to the full matrix (``A[j, i] = A[i, j]``, resp. ``-A[i, j]``), so a symmetric file with ``nz``
  declared entries of which ``d`` are on the diagonal gives ``2 nz - d`` stored entries.
- dense ``array`` with field ``real``/``integer`` and symmetry ``general``/``symmetric``/
  ``skew-symmetric``: accepted and converted to CSR keeping only the nonzero values.
- refused with a clear message: ``complex`` and ``hermitian`` (learnsolve is real-valued),
  ``pattern`` (no values, so no linear system), non-square matrices (a linear system needs a square A).

Cost: the validation pass tokenises the file once with numpy (O(nnz)), then scipy parses it again.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import scipy.io as sio
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from torch_geometric.data import Data

from learnsolve.files import atomic_open

from .system import make_system

__all__ = [
    "RHS_SUFFIXES",
    "MatrixMarketError",
    "list_matrices",
    "load_system",
    "matrix_stem",
    "read_matrix_market",
    "reference_solution",
    "write_matrix_market",
]

_FORMATS = ("coordinate", "array")
_FIELDS = ("real", "integer", "complex", "pattern")
_SYMMETRIES = ("general", "symmetric", "skew-symmetric", "hermitian")
# sibling right-hand-side files: <stem>_b.mtx[.gz] or <stem>_rhs.mtx[.gz]
RHS_SUFFIXES = ("_b", "_rhs")
# a declared size is refused (before anything is allocated) when its storage is out of proportion to the
# entries the file holds: more than SPARE_ROWS rows beyond twice the entries (the CSR row pointer: 8 bytes a
# row), or, for the dense result of read_vectors, more than SPARE_CELLS cells beyond them (8 bytes a cell)
SPARE_ROWS = 2**22
SPARE_CELLS = 2**24
# the characters of numbers as the Matrix Market format writes them, and the whitespace between them (scipy's
# parser knows no other: Python's float() also takes "1_0" or Unicode digits, which scipy reads differently)
_NOT_NUMERIC = re.compile(r"[^0-9eE+\-. \t\r\n]")
_NOT_INTEGER = re.compile(r"[.eE]")
_NON_FINITE = ("nan", "inf", "infinity")


class MatrixMarketError(ValueError):
    """A Matrix Market file that cannot be read as a real square matrix: ``"<file>: <what is wrong>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# params["rhs"] when b is the image of a seeded random vector ({why}: "A 1 = 0", or "A singular")
RANDOM_IMAGE = "A r ({why}: r ~ U(0.5, 1.5), seed {seed})"

def matrix_stem(path: str | os.PathLike) -> str:
    """File name without ``.mtx`` / ``.mtx.gz`` (``"dir/bcsstk03.mtx.gz"`` -> ``"bcsstk03"``)."""
    name = Path(path).name
    for ext in (".mtx.gz", ".mtx"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def list_matrices(folder: str | os.PathLike) -> list[Path]:
    """The matrix files of ``folder`` (not recursive), sorted by name: every ``*.mtx`` / ``*.mtx.gz``
    except right-hand-side files ``<stem>_b.mtx`` / ``<stem>_rhs.mtx`` that sit next to a matrix
    ``<stem>.mtx`` (they belong to that matrix's system). A missing folder raises ``NotADirectoryError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder (give a folder of .mtx / .mtx.gz files)")
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and p.name.lower().endswith((".mtx", ".mtx.gz")))
    stems = {matrix_stem(p) for p in files}

    def is_rhs(p: Path) -> bool:
        stem = matrix_stem(p)
        return any(stem.endswith(s) and stem[: -len(s)] in stems for s in RHS_SUFFIXES)
    return [p for p in files if not is_rhs(p)]


def _read_text(path: Path) -> str:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MatrixMarketError(path, "file not found") from None
    except IsADirectoryError:
        raise MatrixMarketError(path, "is a directory, not a Matrix Market file") from None
    except UnicodeDecodeError:
        raise MatrixMarketError(path, "not a text file (undecodable bytes); missing %%MatrixMarket "
                                      "banner") from None
    except (OSError, EOFError, zlib.error) as e:
        # BadGzipFile is an OSError; a cut stream EOFError, a corrupt one
        raise MatrixMarketError(path, f"cannot read file (corrupt or truncated gzip?): {e}") from None


def _parse_header(path: Path, text: str):
    """Validate banner and size line; return (fmt, field, symmetry, sizes, body_text, body's first line
    number)."""
    lines = text.split("\n")
    if not lines or not lines[0].startswith("%%MatrixMarket"):
        raise MatrixMarketError(path, "missing %%MatrixMarket banner on the first line")
    words = lines[0].split()
    if len(words) != 5:
        raise MatrixMarketError(path, f"malformed banner {lines[0].strip()!r}: expected "
                                "'%%MatrixMarket matrix <format> <field> <symmetry>'")
    obj, fmt, field, sym = (w.lower() for w in words[1:])
    if obj != "matrix":
        raise MatrixMarketError(path, f"malformed banner: object {words[1]!r} is not 'matrix'")
    if fmt not in _FORMATS:
        raise MatrixMarketError(path, f"malformed banner: format {words[2]!r} is not one of "
                                      f"{', '.join(_FORMATS)}")
    if field not in _FIELDS:
        raise MatrixMarketError(path, f"malformed banner: field {words[3]!r} is not one of "
                                      f"{', '.join(_FIELDS)}")
    if sym not in _SYMMETRIES:
        raise MatrixMarketError(path, f"malformed banner: symmetry {words[4]!r} is not one of "
                                f"{', '.join(_SYMMETRIES)}")
    if field == "complex" or sym == "hermitian":
        raise MatrixMarketError(path, "complex entries are not supported (learnsolve solves real systems)")
    if field == "pattern":
        raise MatrixMarketError(path, "pattern-only matrix (no values) is not supported: it defines no "
                                      "linear system")
    # size line: first line after the banner that is neither a comment nor blank
    k = 1
    while k < len(lines) and (not lines[k].strip() or lines[k].lstrip().startswith("%")):
        k += 1
    if k == len(lines):
        raise MatrixMarketError(path, "bad size line: missing (file ends after the header comments)")
    want = 3 if fmt == "coordinate" else 2
    tokens = lines[k].split()
    try:
        sizes = [int(t) for t in tokens]
    except ValueError:
        sizes = None
    if sizes is None or len(sizes) != want or min(sizes) < 0:
        expect = "'rows cols entries'" if fmt == "coordinate" else "'rows cols'"
        raise MatrixMarketError(path, f"bad size line {lines[k].strip()!r}: expected {want} non-negative "
                                f"integers {expect}")
    return fmt, field, sym, sizes, "\n".join(lines[k + 1:]), k + 2


def _tokens(path: Path, body: str, first_line: int, integer: bool) -> list[str]:
    """The entries' tokens, each checked to be written as a number (an integer for field ``integer``): scipy
    reads "1e3" in an integer file as 1 and "1_0" as 1, where Python's float() reads 1000 and 10."""
    # comment lines may appear between entries in the wild; blank them (line numbers stay) before tokenising
    if "%" in body:
        body = "\n".join("" if ln.lstrip().startswith("%") else ln for ln in body.split("\n"))
    pos = 0
    while m := _NOT_NUMERIC.search(body, pos):
        tok, start, pos = _token_at(body, m.start())
        if tok.lower().lstrip("+-") not in _NON_FINITE:  # nan / inf: reported as non-finite values
            raise MatrixMarketError(path, f"malformed entry (not a number): {tok!r} on line "
                                    f"{first_line + body.count(chr(10), 0, start)}")
    if integer and (m := _NOT_INTEGER.search(body)):
        tok, start, _ = _token_at(body, m.start())
        raise MatrixMarketError(path, f"malformed entry: {tok!r} on line "
                                f"{first_line + body.count(chr(10), 0, start)} is not an integer, but the "
                                "banner declares field 'integer'")
    return body.split()


def _token_at(body: str, i: int) -> tuple[str, int, int]:
    """(the whitespace-delimited token around position i, its start, its end)."""
    start = max(body.rfind(c, 0, i) for c in " \t\r\n") + 1
    ends = [e for e in (body.find(c, i) for c in " \t\r\n") if e >= 0]
    end = min(ends) if ends else len(body)
    return body[start:end], start, end


def _check_size(path: Path, m: int, n: int, entries: int, dense: bool) -> None:
    """Refuse a size whose storage the entries do not justify, before scipy allocates it (a 1e9 x 1e9 file
    with one entry asks for 8 GB of row pointers)."""
    if max(m, n) > SPARE_ROWS + 2 * entries:
        raise MatrixMarketError(path, f"the size line declares a {m} x {n} matrix with {entries} stored "
                                "value(s): its row pointer alone would take "
                                f"{8 * (max(m, n) + 1) / 2**30:.2g} GiB; refusing sizes of more than "
                                f"{SPARE_ROWS} rows beyond twice the values")
    if dense and m * n > SPARE_CELLS + 2 * entries:
        raise MatrixMarketError(path, f"the size line declares a {m} x {n} matrix with {entries} stored "
                                f"value(s): as dense vectors it would take {8 * m * n / 2**30:.2g} GiB; "
                                f"refusing more than {SPARE_CELLS} cells beyond twice the values")


def _validate(path: Path, text: str, *, square: bool,
              dense: bool = False) -> tuple[str, str, tuple[int, int], int]:
    """Check the whole file; return (format, symmetry, shape, expected stored entries after expansion).
    ``dense``: the caller makes a dense array of the result (the size check counts its cells)."""
    fmt, field, sym, sizes, body, first_line = _parse_header(path, text)
    m, n = sizes[0], sizes[1]
    if sym != "general" and m != n:
        raise MatrixMarketError(path, f"non-square {m} x {n} matrix declared {sym}")
    if square and m != n:
        raise MatrixMarketError(path, f"non-square matrix ({m} x {n}); a linear system needs a square A")
    count = m * n if sym == "general" else (n * (n + 1) // 2 if sym == "symmetric" else n * (n - 1) // 2)
    _check_size(path, m, n, sizes[2] if fmt == "coordinate" else count, dense)
    tok = _tokens(path, body, first_line, field == "integer")
    if fmt == "coordinate":
        nz = sizes[2]
        have, rest = divmod(len(tok), 3)
        if have < nz:
            raise MatrixMarketError(path, f"truncated file: {have} complete entries, {nz} declared in the "
                                          "size line")
        if have > nz or rest:
            raise MatrixMarketError(path, f"malformed entries: {len(tok)} values where {nz} entries of "
                                    "'row col value' (3 values each) were declared")
        try:
            ent = np.asarray(tok, dtype=object).reshape(nz, 3).astype(np.float64)
        except ValueError as e:
            raise MatrixMarketError(path, f"malformed entry (not a number): {e}") from None
        ij = ent[:, :2]
        if nz and not np.all(ij == np.round(ij)):
            bad = int(np.flatnonzero(np.any(ij != np.round(ij), axis=1))[0])
            raise MatrixMarketError(path, f"malformed entry {bad + 1}: row/column index is not an integer")
        for c, lim, what in ((0, m, "row"), (1, n, "column")):
            out = (ij[:, c] < 1) | (ij[:, c] > lim)
            if np.any(out):
                bad = int(np.flatnonzero(out)[0])
                v = ij[bad, c]  # may be huge or infinite ("1e400"): no int() of it
                shown = f"{int(v)}" if np.isfinite(v) and abs(v) < 2**63 else f"{v:g}"
                raise MatrixMarketError(path, f"index out of range: entry {bad + 1} has {what} "
                                        f"{shown}, valid range is 1..{lim}")
        vals = ent[:, 2]
        diag = int(np.count_nonzero(ij[:, 0] == ij[:, 1]))
        if sym == "skew-symmetric" and diag:
            raise MatrixMarketError(path, "skew-symmetric storage with an entry on the diagonal")
        if sym != "general":
            _one_triangle(path, ij.astype(np.int64), n, sym)
        expected = nz if sym == "general" else 2 * nz - diag
    else:
        if len(tok) < count:
            raise MatrixMarketError(path, f"truncated file: {len(tok)} values, {count} expected for a "
                                    f"{m} x {n} {sym} array")
        if len(tok) > count:
            raise MatrixMarketError(path, f"malformed entries: {len(tok)} values where a {m} x {n} {sym} "
                                    f"array has {count}")
        try:
            vals = np.asarray(tok, dtype=object).astype(np.float64)
        except ValueError as e:
            raise MatrixMarketError(path, f"malformed entry (not a number): {e}") from None
        expected = -1  # zeros are dropped for dense input, so the stored count is data dependent
    if not np.all(np.isfinite(vals)):
        bad = int(np.flatnonzero(~np.isfinite(vals))[0])
        raise MatrixMarketError(path, f"non-finite value (nan or inf) in entry {bad + 1}")
    return fmt, sym, (m, n), expected


def _one_triangle(path: Path, ij: np.ndarray, n: int, sym: str) -> None:
    """Symmetric storage holds one triangle: an entry stored together with its mirror would be added to it
    twice (the file stored the full matrix but declared it symmetric). An entry of the upper triangle alone is
    mirrored like a lower one, as scipy does."""
    off = ij[ij[:, 0] != ij[:, 1]] - 1
    lo, hi = np.minimum(off[:, 0], off[:, 1]), np.maximum(off[:, 0], off[:, 1])
    key = hi * n + lo
    upper = off[:, 0] < off[:, 1]
    both = np.intersect1d(key[upper], key[~upper])
    if both.size:
        i, j = int(both[0] // n) + 1, int(both[0] % n) + 1
        raise MatrixMarketError(path, f"{sym} storage holds both ({i}, {j}) and its mirror ({j}, {i}): it "
                                "stores one triangle, so both would be added; declare the file 'general' or "
                                "drop one triangle")


def _read(path: str | os.PathLike, *, square: bool = True, dense: bool = False) -> sp.csr_matrix:
    path = Path(path)
    text = _read_text(path)
    fmt, sym, shape, expected = _validate(path, text, square=square, dense=dense)
    try:
        M = sio.mmread(str(path))
    except Exception as e:  # noqa: BLE001 -- scipy's errors (ValueError, RuntimeError, ...) never surface raw
        raise MatrixMarketError(path, f"scipy could not parse the file: {type(e).__name__}: {e}") from None
    if np.iscomplexobj(M):
        raise MatrixMarketError(path, "complex entries are not supported (learnsolve solves real systems)")
    A = sp.csr_matrix(M, dtype=np.float64)
    if fmt == "array":
        A.eliminate_zeros()
    A.sum_duplicates()
    A.sort_indices()
    if A.shape != shape:
        raise MatrixMarketError(path, f"scipy read a {A.shape} matrix but the size line declares {shape}")
    if not np.all(np.isfinite(A.data)):
        raise MatrixMarketError(path, "non-finite value (nan or inf) after reading")
    if expected >= 0 and A.nnz > expected:  # fewer is possible only through duplicate entries (summed)
        raise MatrixMarketError(path, f"{A.nnz} stored entries after expanding {sym} storage, at most "
                                f"{expected} expected")
    return A


def read_matrix_market(path: str | os.PathLike) -> sp.csr_matrix:
    """Read a real square matrix from ``path`` (``.mtx`` or ``.mtx.gz``) as float64 CSR.

    Symmetric / skew-symmetric storage is expanded to the full matrix; indices are sorted and
    duplicates summed; explicit zeros of a coordinate file are kept (they are part of the pattern).

    Args:
        path: the file.

    Returns:
        A as scipy CSR, float64.

    Raises:
        MatrixMarketError: (``"<file>: <reason>"``) a missing file, a missing or malformed banner, a bad size
            line, a non-square matrix, complex/hermitian or pattern-only entries, an index out of range, a
            non-finite value, a truncated file (fewer entries than declared), a token that is not a number as
            the format writes one (or not an integer in an ``integer`` file), symmetric storage holding an
            entry and its mirror, or a declared size out of proportion to the stored values
            (:data:`SPARE_ROWS`), refused before anything of that size is allocated.
    """
    return _read(path, square=True)


def read_vectors(path: str | os.PathLike) -> np.ndarray:
    """Read right-hand sides from ``path`` (``.mtx`` / ``.mtx.gz``, array or coordinate, n x k) as a dense
    float64 (n, k) array; :class:`MatrixMarketError` as :func:`read_matrix_market` (a non-square shape is
    allowed; a dense result of more than :data:`SPARE_CELLS` cells beyond twice the stored values is
    refused)."""
    return _read(path, square=False, dense=True).toarray()


def _write_body(fh, A: sp.csr_matrix, comment: str, symmetry: str) -> None:
    """Write the Matrix Market text of ``A`` to the binary file object ``fh`` (separate for tests)."""
    sio.mmwrite(fh, A, comment=comment, field="real", symmetry=symmetry)


def write_matrix_market(path: str | os.PathLike, A, comment: str = "", *,
                        symmetric: bool | None = False) -> Path:
    """Write ``A`` (scipy sparse or dense, real) to ``path`` in coordinate real format, atomically.

    ``symmetric=False``: ``general`` storage (every entry). ``True``: ``symmetric`` storage (lower
    triangle only); A must be exactly symmetric, else ``ValueError``. ``None``: ``symmetric`` exactly
    when A equals A^T bit for bit. A path ending in ``.gz`` is gzip-compressed. Values are written
    with round-trip precision, so reading the file back gives A exactly.

    Atomic: the text goes to a temporary file in the same folder, which is flushed, fsynced and then
    renamed over ``path`` with ``os.replace``; on any failure the temporary file is removed and
    ``path`` is untouched (an existing file keeps its old content).

    Args:
        path: the file to write (``.mtx`` or ``.mtx.gz``).
        A: the matrix, 2-D, real.
        comment: a comment line for the header.
        symmetric: storage, as above.

    Returns:
        The path written.

    Raises:
        ValueError: a matrix that is not 2-D, complex, non-finite, or not symmetric with ``symmetric=True``.
    """
    path = Path(path)
    A = sp.csr_matrix(A)
    if A.ndim != 2:
        raise ValueError(f"{path}: A must be 2-D, got shape {A.shape}")
    if np.iscomplexobj(A.data):
        raise ValueError(f"{path}: complex matrices are not supported")
    A = A.astype(np.float64)
    A.sum_duplicates()
    A.sort_indices()
    if not np.all(np.isfinite(A.data)):
        raise ValueError(f"{path}: A has non-finite values; the file could not be read back")
    is_sym = A.shape[0] == A.shape[1] and (A != A.T).nnz == 0
    if symmetric and not is_sym:
        raise ValueError(f"{path}: symmetric=True but A is not exactly symmetric")
    symmetry = "symmetric" if (is_sym if symmetric is None else symmetric) else "general"
    with atomic_open(path, "wb", mkdir=False) as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", filename="") as gz:
                _write_body(gz, A, comment, symmetry)
        else:
            _write_body(raw, A, comment, symmetry)
    return path


def reference_solution(A: sp.spmatrix, b: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """Reference solution of A x = b by a sparse LU (SuperLU, what ``spsolve`` uses); ``(x, singular)``.

    ``singular`` is True when the factorisation fails (exactly singular; x is then tried by LSQR, the
    minimum-norm solution, at most ``min(10 n, 20000)`` iterations) or the smallest |pivot| is below
    ``n * eps`` times the largest (numerically singular, e.g. a pure Neumann Laplacian).
    For a singular A, x is kept only when it is finite and solves the system, i.e. b is in the range
    and x is one particular solution: ``||A x - b|| <= 1e-10 (||b|| + ||A||_inf sqrt(n))``; otherwise
    x is None (never NaN, never a least-squares vector passed off as a solution).
    """
    A = sp.csc_matrix(A, dtype=np.float64)
    n = A.shape[0]
    b = np.asarray(b, dtype=np.float64)
    try:
        lu = spla.splu(A)
    except RuntimeError:  # "Factor is exactly singular": minimum-norm solution by LSQR, kept if consistent
        x = spla.lsqr(A, b, atol=1e-14, btol=1e-14, iter_lim=min(10 * n, 20_000))[0]
        singular = True
    else:
        piv = np.abs(lu.U.diagonal())
        singular = bool(n and (not np.all(np.isfinite(piv))
                               or piv.min() <= n * np.finfo(np.float64).eps * piv.max()))
        with np.errstate(all="ignore"):
            x = lu.solve(b)
    if not np.all(np.isfinite(x)):
        return None, True
    if singular:
        # consistency test; the scale ||b|| + ||A||_inf sqrt(n) (the residual size of an O(1) solution)
        # also covers b = A @ ones ~ rounding noise when ones spans the null space (Neumann problems)
        scale = np.linalg.norm(b) + spla.norm(A, np.inf) * math.sqrt(n)
        if not np.linalg.norm(A @ x - b) <= 1e-10 * scale:
            return None, True
    return x, singular


def _sibling_rhs(path: Path) -> Path | None:
    stem = matrix_stem(path)
    for suffix in RHS_SUFFIXES:
        for ext in (".mtx", ".mtx.gz"):
            cand = path.with_name(f"{stem}{suffix}{ext}")
            if cand.is_file():
                return cand
    return None


ONES_CAVEAT = ("b = A @ ones favours MIC(0): it keeps row sums (M 1 = A 1), so it solves such a system in "
               "about one step; compare preconditioners with rhs='random' (the default)")


def default_rhs(A: sp.spmatrix, rhs: str, seed: int, where: str) -> tuple[np.ndarray, str]:
    """(b, what it is) for a matrix that ships no right-hand side: ``rhs="random"``: i.i.d. standard normal
    from ``numpy.random.default_rng(seed)``; ``rhs="ones"``: ``A @ ones`` (warns :data:`ONES_CAVEAT`, naming
    ``where``). Where A 1 = 0 (a Neumann or singular operator: A @ ones is rounding noise and a random b is
    not in A's range) either kind gives the consistent image ``A r`` of r ~ U(0.5, 1.5)
    (:func:`random_image`)."""
    if rhs not in ("random", "ones"):
        raise ValueError(f"unknown rhs {rhs!r}: choose 'random' (seeded, the default) or 'ones' (b = A @ "
                         "ones)")
    n = A.shape[0]
    ones_image = A @ np.ones(n)
    if n and np.linalg.norm(ones_image) <= 1e-10 * sp.linalg.norm(A) * np.sqrt(n):
        return random_image(A, seed, "A 1 = 0")
    if rhs == "ones":
        warnings.warn(f"{where}: {ONES_CAVEAT}", stacklevel=3)
        return ones_image, "ones"
    return np.random.default_rng(seed).standard_normal(n), "random"


def random_image(A: sp.spmatrix, seed: int, why: str) -> tuple[np.ndarray, str]:
    """(A r, :data:`RANDOM_IMAGE`) for r ~ U(0.5, 1.5) from ``numpy.random.default_rng(seed)``: a right-hand
    side in A's range."""
    return (A @ np.random.default_rng(seed).uniform(0.5, 1.5, A.shape[0]),
            RANDOM_IMAGE.format(why=why, seed=seed))


def load_system(path: str | os.PathLike, rhs: str = "random", seed: int = 0) -> Data:
    """The linear system of a Matrix Market file as a PyG ``Data`` (fields as in ``make_system``).

    - A: :func:`read_matrix_market` (symmetric storage expanded).
    - b: from a sibling ``<stem>_b.mtx`` or ``<stem>_rhs.mtx`` (``.gz`` too) when one exists (an n x 1
      matrix, array or coordinate); otherwise ``rhs="random"`` (default): i.i.d. standard normal from
      ``numpy.random.default_rng(seed)``, or ``rhs="ones"``: ``b = A @ ones`` (the exact solution is the
      all-ones vector when A is nonsingular; it favours MIC(0), which keeps row sums, and a warning says so:
      :data:`ONES_CAVEAT`). Where A 1 = 0 (a Neumann or singular operator: a random b is not in A's range, and
      A @ ones is rounding noise) either kind gives ``b = A r`` with r ~ U(0.5, 1.5) from
      ``numpy.random.default_rng(seed)``, a consistent right-hand side, and ``params["rhs"]`` says so
      (:data:`RANDOM_IMAGE`); so does a random b that is not in the range of a singular A. ``params["rhs"]``
      records which was used.
    - x: sparse direct solve (:func:`reference_solution`). ``data.singular`` (bool) is always set; for a
      singular A, ``data.x`` is a particular solution when b is in the range of A, else ``data.x``
      is None (absent) -- never NaN.
    - pos: Matrix Market has no coordinates: a 1-D index coordinate ``arange(n) / n`` of shape (n, 1).
    - coeff feature: ones (no coefficient is known).
    - family ``"matrix_market"``, params ``{"name": stem, "path": str(path), "rhs": ...}``, seed ``seed``.

    Args:
        path: the ``.mtx`` / ``.mtx.gz`` file.
        rhs: ``"random"`` or ``"ones"`` (used when no sibling right-hand-side file exists).
        seed: seed of the random right-hand side.

    Returns:
        The system as a PyG ``Data``.

    Raises:
        MatrixMarketError: an unreadable matrix or right-hand-side file (named).
        ValueError: an unknown ``rhs``.
    """
    path = Path(path)
    A = read_matrix_market(path)
    n = A.shape[0]
    sib = _sibling_rhs(path)
    if sib is not None:
        B = _read(sib, square=False)
        if B.shape != (n, 1):
            raise MatrixMarketError(sib, f"right-hand side must be {n} x 1 for the {n} x {n} matrix "
                                    f"{path.name}, got {B.shape[0]} x {B.shape[1]}")
        b = B.toarray().reshape(n)
        source = f"file:{sib.name}"
    else:
        b, source = default_rhs(A, rhs, seed, path.name)
    x, singular = reference_solution(A, b)
    if x is None and source == "random":
        # a singular A whose null space is not (exactly) the constants: a random b is not in its range
        b, source = random_image(A, seed, "A singular")
        x, singular = reference_solution(A, b)
    pos = (np.arange(n, dtype=np.float64) / max(n, 1)).reshape(n, 1)
    data = make_system(A, b, pos=pos, coeff=np.ones(n), family="matrix_market",
                       params={"name": matrix_stem(path), "path": str(path), "rhs": source}, seed=seed,
                       x=np.zeros(n) if x is None else x)
    if x is None:
        data.x = None
    data.singular = singular
    return data

