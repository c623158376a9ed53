"""Property tests of the Matrix Market reader (``learnsolve.data.mtx.read_matrix_market`` / ``read_vectors``):
valid files written by scipy, then corrupted bytes, truncations, replaced tokens, huge declared sizes and symmetric
storage. Every file ends in a :class:`MatrixMarketError` naming it, or in the matrix ``scipy.io.mmread`` reads from
the same bytes; never another exception, never an allocation the file does not justify. Each property runs a few
dozen examples here and 1,000 in its ``slow`` twin; the regression tests below pin the defects found.
"""

from __future__ import annotations

import gzip
import io
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import scipy.sparse as sp
from hypothesis import strategies as st

from learnsolve.data.mtx import SPARE_ROWS, MatrixMarketError, read_matrix_market, read_vectors

from .conftest import SHARED_MATRICES
from .fuzz import twins

SHARED = sorted(SHARED_MATRICES.glob("*.mtx")) if SHARED_MATRICES.is_dir() else []
TOKENS = ["1e400", "-1e400", "nan", "inf", "-1", "0", "abc", "1.5", "1_0", "1e0", "99999999999999999999", "",
          "\u0661", "0x10", "1.0\x00", "+1", "1e3", "-0", "4.9e-324", ".5", "1.", "--1", "1e", "%", "2 2"]




def _valid_file(data, square: bool = True) -> tuple[bytes, str]:
    """(bytes of a valid Matrix Market file written by scipy.io.mmwrite, its symmetry)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    n = data.draw(st.integers(1, 40), label="n")
    m = n if square else data.draw(st.integers(1, 40), label="m")
    fmt = data.draw(st.sampled_from(["coordinate", "array"]), label="format")
    field = data.draw(st.sampled_from(["real", "integer"]), label="field")
    sym = data.draw(st.sampled_from(["general", "symmetric", "skew-symmetric"] if m == n else ["general"]),
                    label="symmetry")
    density = data.draw(st.floats(0.0, 1.0), label="density")
    A = sp.random(m, n, density=density, random_state=rng, format="csr")
    A.data = rng.integers(-9, 10, A.nnz).astype(float) if field == "integer" else rng.standard_normal(A.nnz)
    if sym == "symmetric":
        A = A + A.T
    elif sym == "skew-symmetric":
        A = A - A.T
    if field == "integer":
        A = A.astype(np.int64)
    buf = io.BytesIO()
    sio.mmwrite(buf, A.toarray() if fmt == "array" else A, field=field, symmetry=sym)
    return buf.getvalue(), sym


def _write(tmp_path: Path, raw: bytes, gz: bool) -> Path:
    p = tmp_path / ("m.mtx.gz" if gz else "m.mtx")
    p.write_bytes(gzip.compress(raw) if gz else raw)
    return p


def _scipy(p: Path):
    """scipy.io.mmread of the file as float64 CSR (duplicates summed, dense zeros dropped), or None if it fails."""
    try:
        M = sio.mmread(str(p))
    except Exception:  # noqa: BLE001 -- whatever scipy raises: it did not accept the file
        return None
    if np.iscomplexobj(M):
        return None
    A = sp.csr_matrix(M, dtype=np.float64)
    A.sum_duplicates()
    A.eliminate_zeros()
    return A


def _outcome(p: Path, reader=read_matrix_market):
    """The reader's result, or None after a MatrixMarketError that names the file (anything else fails the test)."""
    try:
        return reader(p)
    except MatrixMarketError as e:
        assert str(e).startswith(str(p)) and e.reason.strip(), str(e)
        return None


def _assert_same(A, p: Path, square: bool = True) -> None:
    ref = _scipy(p)
    assert ref is not None, "accepted a file scipy cannot read"
    if not square:  # read_vectors: dense
        assert A.shape == ref.shape and np.array_equal(A, ref.toarray())
        return
    assert sp.issparse(A) and A.dtype == np.float64 and A.shape == ref.shape and A.shape[0] == A.shape[1]
    assert A.has_sorted_indices and A.has_canonical_format and np.all(np.isfinite(A.data))
    assert (A != ref).nnz == 0, "accepted with values other than scipy's"


# ------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------

def _prop_valid_files_read_as_scipy_reads_them(tmp_path, data):
    square = data.draw(st.booleans(), label="square (read_matrix_market) or vectors (read_vectors)")
    raw, _ = _valid_file(data, square)
    p = _write(tmp_path, raw, data.draw(st.booleans(), label="gzip"))
    A = read_matrix_market(p) if square else read_vectors(p)
    _assert_same(A, p, square)


test_valid_files_read_as_scipy_reads_them, test_valid_files_read_as_scipy_reads_them_slow = twins(
    _prop_valid_files_read_as_scipy_reads_them)


def _corrupt(data, raw: bytes) -> bytes:
    """A few random edits of the bytes: flips, inserted or deleted runs, a replaced token, a truncation."""
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "token", "truncate"]), label="edit")
        i = data.draw(st.integers(0, max(len(b) - 1, 0)), label="at")
        if kind == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=6) | st.sampled_from(TOKENS).map(str.encode))
        elif kind == "delete":
            del b[i:i + data.draw(st.integers(1, 8))]
        elif kind == "token":  # the whitespace-delimited token around i
            s = max(b.rfind(b" ", 0, i), b.rfind(b"\n", 0, i)) + 1
            e = min([x for x in (b.find(b" ", i), b.find(b"\n", i)) if x >= 0] or [len(b)])
            b[s:e] = data.draw(st.sampled_from(TOKENS)).encode()
        else:
            del b[i:]
    return bytes(b)


def _prop_corrupted_files(tmp_path, data):
    if SHARED and data.draw(st.integers(0, 9), label="shared matrix") == 0:
        raw = data.draw(st.sampled_from(SHARED), label="file").read_bytes()
    else:
        raw = _valid_file(data)[0]
    gz = data.draw(st.booleans(), label="gzip")
    bad = _corrupt(data, raw)
    if gz and data.draw(st.booleans(), label="corrupt the compressed stream"):
        p = tmp_path / "m.mtx.gz"
        p.write_bytes(_corrupt(data, gzip.compress(raw)))
    else:
        p = _write(tmp_path, bad, gz)
    A = _outcome(p)
    if A is not None:
        _assert_same(A, p)


test_corrupted_files, test_corrupted_files_slow = twins(_prop_corrupted_files, 60)


def _prop_replaced_tokens(tmp_path, data):
    """One index, value or size token of a small valid file replaced by a hostile one."""
    n = data.draw(st.integers(1, 6))
    entries = [(i, i, float(i + 2)) for i in range(1, n + 1)]
    lines = [["%%MatrixMarket", "matrix", "coordinate", data.draw(st.sampled_from(["real", "integer"])),
              data.draw(st.sampled_from(["general", "symmetric"]))], [str(n), str(n), str(n)]]
    lines += [[str(i), str(j), str(int(v))] for i, j, v in entries]
    row = data.draw(st.integers(1, len(lines) - 1), label="line")
    col = data.draw(st.integers(0, len(lines[row]) - 1), label="column")
    new = data.draw(st.sampled_from(TOKENS) | st.integers(-2**70, 2**70).map(str) | st.floats().map(repr)
                    | st.text(alphabet="0123456789eE+-._ \t", max_size=5), label="token")
    lines[row][col] = new
    p = tmp_path / "t.mtx"
    p.write_text("\n".join(" ".join(ln) for ln in lines) + "\n")
    A = _outcome(p)
    if A is not None:
        _assert_same(A, p)
    elif row >= 2 and col < 2 and new.lstrip("+").isdigit() and not 1 <= int(new) <= n:
        with pytest.raises(MatrixMarketError, match="index out of range"):
            read_matrix_market(p)


test_replaced_tokens, test_replaced_tokens_slow = twins(_prop_replaced_tokens, 60)


def _prop_huge_declared_sizes_are_refused_early(tmp_path, data):
    """A size line far beyond the entries: refused before anything of that size is allocated (both readers)."""
    m = data.draw(st.integers(SPARE_ROWS + 3, 10**30), label="rows")
    n = m if data.draw(st.booleans(), label="square") else data.draw(st.integers(1, 10**30), label="cols")
    fmt = data.draw(st.sampled_from(["coordinate", "array"]), label="format")
    body = "1 1 1.0\n" if fmt == "coordinate" else "1.0\n"
    head = f"{m} {n} 1" if fmt == "coordinate" else f"{m} {n}"
    p = tmp_path / "h.mtx"
    p.write_text(f"%%MatrixMarket matrix {fmt} real general\n{head}\n{body}")
    reader = data.draw(st.sampled_from([read_matrix_market, read_vectors]))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(MatrixMarketError):
            reader(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5.0 and peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


test_huge_declared_sizes_are_refused_early, test_huge_declared_sizes_are_refused_early_slow = twins(
    _prop_huge_declared_sizes_are_refused_early)


def _prop_symmetric_storage(tmp_path, data):
    """Entries of a symmetric file from either triangle: mirrored like scipy does, unless an entry and its mirror
    are both stored (the file holds both triangles): then refused, not added twice."""
    n = data.draw(st.integers(2, 8))
    pairs = data.draw(st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), min_size=1, max_size=12))
    sym = data.draw(st.sampled_from(["symmetric", "skew-symmetric"]))
    if sym == "skew-symmetric":
        pairs = [(i, j) for i, j in pairs if i != j] or [(2, 1)]
    lines = [f"%%MatrixMarket matrix coordinate real {sym}", f"{n} {n} {len(pairs)}"]
    lines += [f"{i} {j} {k + 1.5}" for k, (i, j) in enumerate(pairs)]
    p = tmp_path / "s.mtx"
    p.write_text("\n".join(lines) + "\n")
    A = _outcome(p)
    both = {(min(i, j), max(i, j)) for i, j in pairs if i < j} & {(min(i, j), max(i, j)) for i, j in pairs if i > j}
    assert (A is None) == bool(both)
    if A is not None:
        _assert_same(A, p)
        assert (A - (A.T if sym == "symmetric" else -A.T)).nnz == 0


test_symmetric_storage, test_symmetric_storage_slow = twins(_prop_symmetric_storage, 40)


# ------------------------------------------------------------------------------------------------
# regression tests of the defects the properties found
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, reader", [("1000000000 1000000000 1", read_matrix_market),
                                          ("1000000000000000 1000000000000000 1", read_matrix_market),
                                          ("1000000000 1 1", read_vectors), ("100000 100000 1", read_vectors)])
def test_a_huge_declared_size_is_refused_before_allocating(tmp_path, size, reader):
    """A 1e9 x 1e9 file with one entry was read after 41 s and an 8 GB row pointer (12 GB peak); 1e15 rows raised
    numpy's MemoryError; read_vectors of a 1e5 x 1e5 coordinate file asked for 75 GiB."""
    p = tmp_path / "huge.mtx"
    p.write_text(f"%%MatrixMarket matrix coordinate real general\n{size}\n1 1 1.0\n")
    tracemalloc.start()
    try:
        with pytest.raises(MatrixMarketError, match="refusing") as e:
            reader(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "GiB" in str(e.value) and peak < 16 * 2**20


def test_a_corrupt_deflate_stream_is_a_reader_error(tmp_path):
    """A damaged compressed block raised zlib.error (not an OSError) past the reader."""
    raw = bytearray(gzip.compress(("%%MatrixMarket matrix coordinate real general\n3 3 3\n"
                                   + "".join(f"{i} {i} {i}.5\n" for i in range(1, 4))).encode()))
    raw[12:16] = b"\xff\xff\xff\xff"  # the deflate stream's first bytes
    p = tmp_path / "z.mtx.gz"
    p.write_bytes(bytes(raw))
    with pytest.raises(MatrixMarketError, match=r"z\.mtx\.gz: cannot read file"):
        read_matrix_market(p)


@pytest.mark.parametrize("field, token, match", [
    ("integer", "1e3", "not an integer"), ("integer", "1.5", "not an integer"),
    ("real", "1_0", "not a number"), ("real", "\u0661", "not a number"), ("real", "1\x0c0", "not a number"),
])
def test_number_spellings_scipy_reads_differently_are_refused(tmp_path, field, token, match):
    """scipy reads '1e3' in an integer file as 1, '1.5' as 1 and '1_0' as 1, where the validator's float() read
    1000, 1.5 and 10: the file was accepted with scipy's silently different value."""
    p = tmp_path / "v.mtx"
    p.write_text(f"%%MatrixMarket matrix coordinate {field} general\n2 2 2\n1 1 {token}\n2 2 4\n")
    with pytest.raises(MatrixMarketError, match=f"{match}.*line 3|line 3.*{match}"):
        read_matrix_market(p)


def test_a_symmetric_file_storing_both_triangles_is_refused(tmp_path):
    """(1, 2) and (2, 1) in a symmetric file were both mirrored and added: A[0, 1] = 6 for a file that says 3."""
    p = tmp_path / "both.mtx"
    p.write_text("%%MatrixMarket matrix coordinate real symmetric\n2 2 3\n1 1 1.0\n1 2 3.0\n2 1 3.0\n")
    with pytest.raises(MatrixMarketError, match=r"both \(2, 1\) and its mirror \(1, 2\)"):
        read_matrix_market(p)
    p.write_text("%%MatrixMarket matrix coordinate real symmetric\n2 2 2\n1 1 1.0\n1 2 3.0\n")
    np.testing.assert_array_equal(read_matrix_market(p).toarray(), [[1.0, 3.0], [3.0, 0.0]])  # one triangle: fine
