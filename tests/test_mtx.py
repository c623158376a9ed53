"""Matrix Market I/O (learnsolve.data.mtx) and benchmark suites (learnsolve.data.suites)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from learnsolve.data import mtx as mtx_mod
from learnsolve.data.mtx import MatrixMarketError, load_system, read_matrix_market, write_matrix_market
from learnsolve.data.suites import (
    PYAMG_EXAMPLES,
    SuiteError,
    generated_suite,
    load_suite,
    matrix_market_suite,
    pyamg_suite,
)
from learnsolve.data.system import to_scipy

from .conftest import SHARED_MATRICES, convdiff2d, diffusion2d

REAL = {"1138_bus": 1138, "bcsstk03": 112, "gr_30_30": 900, "poisson1033": 1033, "sherman5": 3312}


def _write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text)
    return p


GOOD = "%%MatrixMarket matrix coordinate real general\n% c\n2 2 3\n1 1 4.0\n2 1 -1.0\n2 2 3.0\n"


# ------------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("symmetric", [False, True, None])
@pytest.mark.parametrize("ext", [".mtx", ".mtx.gz"])
def test_round_trip(tmp_path, symmetric, ext):
    A = diffusion2d(5, seed=3)  # symmetric, values with full float64 mantissas
    p = write_matrix_market(tmp_path / f"a{ext}", A, comment="hello", symmetric=symmetric)
    head = (gzip.open(p, "rt") if ext.endswith(".gz") else open(p)).read().split("\n")[0]  # noqa: SIM115
    assert head.split()[-1] == ("general" if symmetric is False else "symmetric")
    B = read_matrix_market(p)
    assert B.shape == A.shape and (B != A).nnz == 0  # exact
    assert sorted(os.listdir(tmp_path)) == [f"a{ext}"]  # no temporary left


def test_round_trip_nonsymmetric_and_symmetric_refused(tmp_path):
    A = convdiff2d(4)
    B = read_matrix_market(write_matrix_market(tmp_path / "n.mtx", A, symmetric=None))
    assert (B != A).nnz == 0
    assert (tmp_path / "n.mtx").read_text().split("\n")[0].split()[-1] == "general"
    with pytest.raises(ValueError, match="not exactly symmetric"):
        write_matrix_market(tmp_path / "s.mtx", A, symmetric=True)
    assert not (tmp_path / "s.mtx").exists()


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(fh, A, comment, symmetry):
        fh.write(b"%%MatrixMarket matrix coordinate real general\n3 3 ")
        raise OSError("disk full")

    monkeypatch.setattr(mtx_mod, "_write_body", broken)
    with pytest.raises(OSError, match="disk full"):
        write_matrix_market(tmp_path / "a.mtx", sp.eye(3))
    assert os.listdir(tmp_path) == []
    # an existing file keeps its old content
    old = _write(tmp_path, "b.mtx", GOOD)
    with pytest.raises(OSError):
        write_matrix_market(old, sp.eye(3))
    assert old.read_text() == GOOD and os.listdir(tmp_path) == ["b.mtx"]


# ------------------------------------------------------------------------------------- real matrices

def _declared(path: Path) -> tuple[str, int, int, int, int]:
    """(symmetry, rows, cols, declared entries, diagonal entries) read without scipy."""
    with open(path) as fh:
        banner = fh.readline().split()
        line = fh.readline()
        while line.startswith("%") or not line.strip():
            line = fh.readline()
        m, n, nz = (int(t) for t in line.split())
        diag = 0
        for _ in range(nz):
            i, j = fh.readline().split()[:2]
            diag += i == j
    return banner[4].lower(), m, n, nz, diag


@pytest.mark.skipif(not SHARED_MATRICES.is_dir(), reason="shared benchmark matrices not present")
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_matrices(name):
    path = SHARED_MATRICES / f"{name}.mtx"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    sym, m, n, nz, diag = _declared(path)
    assert m == n == REAL[name]
    expected = nz if sym == "general" else 2 * nz - diag
    A = read_matrix_market(path)
    assert A.shape == (n, n) and A.nnz == expected
    assert np.all(np.isfinite(A.data))
    if sym == "symmetric":
        assert (A != A.T).nnz == 0


# ---------------------------------------------------------------------------------- malformed files

MALFORMED = {
    "missing_banner": ("2 2 1\n1 1 1.0\n", "missing %%MatrixMarket banner"),
    "not_text": (None, "missing %%MatrixMarket banner"),
    "banner_words": ("%%MatrixMarket matrix coordinate real\n2 2 1\n1 1 1.0\n", "malformed banner"),
    "banner_format": ("%%MatrixMarket matrix sparse real general\n2 2 1\n1 1 1.0\n", "malformed banner: format"),
    "banner_field": ("%%MatrixMarket matrix coordinate float general\n2 2 1\n1 1 1.0\n",
                     "malformed banner: field"),
    "banner_symmetry": ("%%MatrixMarket matrix coordinate real upper\n2 2 1\n1 1 1.0\n",
                        "malformed banner: symmetry"),
    "banner_object": ("%%MatrixMarket vector coordinate real general\n2 2 1\n1 1 1.0\n",
                      "malformed banner: object"),
    "size_words": ("%%MatrixMarket matrix coordinate real general\n2 2\n1 1 1.0\n", "bad size line"),
    "size_text": ("%%MatrixMarket matrix coordinate real general\n2 x 1\n1 1 1.0\n", "bad size line"),
    "size_missing": ("%%MatrixMarket matrix coordinate real general\n% only comments\n", "bad size line"),
    "non_square": ("%%MatrixMarket matrix coordinate real general\n2 3 1\n1 1 1.0\n", "non-square"),
    "complex": ("%%MatrixMarket matrix coordinate complex general\n2 2 1\n1 1 1.0 2.0\n", "complex"),
    "hermitian": ("%%MatrixMarket matrix coordinate complex hermitian\n2 2 1\n1 1 1.0 0.0\n", "complex"),
    "pattern": ("%%MatrixMarket matrix coordinate pattern general\n2 2 1\n1 1\n", "pattern"),
    "row_out_of_range": ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1.0\n3 1 1.0\n",
                         "index out of range: entry 2 has row 3"),
    "col_zero": ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 0 1.0\n",
                 "index out of range: entry 1 has column 0"),
    "nan": ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1.0\n2 2 nan\n", "non-finite value"),
    "inf": ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 -inf\n2 2 1.0\n", "non-finite value"),
    "array_inf": ("%%MatrixMarket matrix array real general\n2 2\n1.0\n0.0\ninf\n1.0\n", "non-finite value"),
    "truncated": ("%%MatrixMarket matrix coordinate real general\n3 3 3\n1 1 1.0\n2 2 1.0\n",
                  "truncated file: 2 complete entries, 3 declared"),
    "truncated_mid_line": ("%%MatrixMarket matrix coordinate real general\n3 3 3\n1 1 1.0\n2 2 1.0\n3 3",
                           "truncated file"),
    "array_truncated": ("%%MatrixMarket matrix array real general\n2 2\n1.0\n0.0\n", "truncated file"),
    "too_many": ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 1.0\n2 2 1.0\n",
                 "malformed entries"),
    "not_a_number": ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1 abc\n", "not a number"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files(tmp_path, case):
    text, phrase = MALFORMED[case]
    path = tmp_path / f"{case}.mtx"
    if text is None:
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    else:
        path.write_text(text)
    with pytest.raises(MatrixMarketError) as exc:
        read_matrix_market(path)
    msg = str(exc.value)
    assert f"{case}.mtx" in msg and phrase in msg, msg
    assert exc.value.path == str(path)


def test_corrupt_gzip_and_missing_file(tmp_path):
    p = tmp_path / "a.mtx.gz"
    p.write_bytes(gzip.compress(GOOD.encode())[:-12])
    with pytest.raises(MatrixMarketError, match=r"a\.mtx\.gz.*cannot read"):
        read_matrix_market(p)
    with pytest.raises(MatrixMarketError, match=r"nope\.mtx: file not found"):
        read_matrix_market(tmp_path / "nope.mtx")


def test_symmetric_expansion_and_dense_array(tmp_path):
    sym = _write(tmp_path, "s.mtx", "%%MatrixMarket matrix coordinate integer symmetric\n3 3 4\n"
                 "1 1 2\n2 1 -1\n3 2 -1\n3 3 2\n")
    A = read_matrix_market(sym)
    assert A.dtype == np.float64 and A.nnz == 2 * 4 - 2
    np.testing.assert_array_equal(A.toarray(), [[2, -1, 0], [-1, 0, -1], [0, -1, 2]])
    skew = _write(tmp_path, "k.mtx", "%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 1\n2 1 3.0\n")
    np.testing.assert_array_equal(read_matrix_market(skew).toarray(), [[0, -3], [3, 0]])
    arr = _write(tmp_path, "d.mtx", "%%MatrixMarket matrix array real symmetric\n2 2\n4.0\n1.0\n0.0\n")
    D = read_matrix_market(arr)  # column-major lower triangle, zeros dropped
    np.testing.assert_array_equal(D.toarray(), [[4, 1], [1, 0]])
    assert D.nnz == 3


# -------------------------------------------------------------------------------------- load_system

def test_load_system_nonsingular(tmp_path):
    A = convdiff2d(5)
    p = write_matrix_market(tmp_path / "cd.mtx", A)
    with pytest.warns(UserWarning, match="favours MIC"):
        d = load_system(p, rhs="ones")
    n = A.shape[0]
    assert d.family == "matrix_market" and d.params["name"] == "cd" and d.params["path"] == str(p)
    assert d.params["rhs"] == "ones" and not d.singular and not d.symmetric
    default = load_system(p)  # random and seeded by default: b = A 1 makes MIC(0) exact
    assert default.params["rhs"] == "random" and np.array_equal(default.b.numpy(), load_system(p, seed=0).b.numpy())
    np.testing.assert_allclose(default.b.numpy(), np.random.default_rng(0).standard_normal(n))
    assert (to_scipy(d) != A).nnz == 0
    b, x = d.b.numpy(), d.x.numpy()
    np.testing.assert_allclose(b, A @ np.ones(n), rtol=0, atol=0)
    assert np.linalg.norm(A @ x - b) / np.linalg.norm(b) < 1e-10
    assert tuple(d.pos.shape) == (n, 1)
    np.testing.assert_allclose(d.pos[:, 0].numpy(), np.arange(n) / n)
    r1, r2 = load_system(p, rhs="random", seed=4), load_system(p, rhs="random", seed=4)
    assert np.array_equal(r1.b.numpy(), r2.b.numpy())
    assert not np.array_equal(r1.b.numpy(), load_system(p, rhs="random", seed=5).b.numpy())
    with pytest.raises(ValueError, match="unknown rhs"):
        load_system(p, rhs="zeros")


def test_load_system_sibling_rhs(tmp_path):
    A = diffusion2d(4, seed=0)
    p = write_matrix_market(tmp_path / "m.mtx.gz", A)
    b = np.linspace(1.0, 2.0, A.shape[0])
    write_matrix_market(tmp_path / "m_rhs.mtx", sp.csr_matrix(b.reshape(-1, 1)))
    d = load_system(p)
    assert d.params["rhs"] == "file:m_rhs.mtx"
    np.testing.assert_array_equal(d.b.numpy(), b)
    assert np.linalg.norm(A @ d.x.numpy() - b) < 1e-10 * np.linalg.norm(b)
    write_matrix_market(tmp_path / "m_rhs.mtx", sp.csr_matrix(np.ones((3, 1))))
    with pytest.raises(MatrixMarketError, match=r"m_rhs\.mtx: right-hand side must be 16 x 1"):
        load_system(p)


@pytest.mark.parametrize("case", ["poisson1033", "neumann1d"])
def test_load_system_singular(tmp_path, case):
    if case == "poisson1033":  # numerically singular (tiny pivot)
        path = SHARED_MATRICES / "poisson1033.mtx"
        if not path.is_file():
            pytest.skip(f"{path} missing")
    else:  # exactly singular (SuperLU refuses; LSQR path): the 1-D Laplacian with free ends
        n = 50
        A = sp.diags([-np.ones(n - 1), np.r_[1.0, 2 * np.ones(n - 2), 1.0], -np.ones(n - 1)], [-1, 0, 1])
        path = write_matrix_market(tmp_path / "neumann.mtx", A)
    A = read_matrix_market(path)
    d = load_system(path)  # default: a random b, replaced by the image A r of a seeded random r (in the range)
    assert d.singular and d.x is not None and d.params["rhs"].startswith("A r (A ")
    b = d.b.numpy()
    assert np.linalg.norm(A @ d.x.numpy() - b) <= 1e-10 * (np.linalg.norm(b) + np.sqrt(A.shape[0]))
    inconsistent = np.random.default_rng(0).standard_normal(A.shape[0])  # a given b outside the range
    write_matrix_market(tmp_path / "given.mtx", A)
    write_matrix_market(tmp_path / "given_b.mtx", sp.csr_matrix(inconsistent.reshape(-1, 1)))
    r = load_system(tmp_path / "given.mtx")  # inconsistent: no solution, x absent (not NaN)
    assert r.singular and r.x is None and "x" not in r


# ------------------------------------------------------------------------------------------- suites

def test_pyamg_suite():
    got = dict(pyamg_suite())
    assert list(got) == list(PYAMG_EXAMPLES) and len(got) == 7
    for name, d in got.items():
        assert d.family == "pyamg" and d.params["name"] == name
        assert d.symmetric == PYAMG_EXAMPLES[name], name
        A = to_scipy(d)
        if name == "unit_square":  # Neumann: ones is in the null space, so b = A @ (seeded random w)
            w = np.random.default_rng(0).uniform(0.5, 1.5, d.num_nodes)
            np.testing.assert_allclose(d.b.numpy(), A @ w)
            assert np.linalg.norm(d.b.numpy()) > 1e-3 * np.linalg.norm(A @ w)
            assert np.abs(A @ np.ones(d.num_nodes)).max() < 1e-10  # the reason
            assert d.params["rhs"].startswith("A r (A 1 = 0")
        else:  # random and seeded by default (b = A 1 would make MIC(0) exact)
            np.testing.assert_allclose(d.b.numpy(), np.random.default_rng(0).standard_normal(d.num_nodes))
            assert d.params["rhs"] == "random"
        assert d.x is not None and np.all(np.isfinite(d.x.numpy()))
        assert d.pos.shape[0] == d.num_nodes
    assert not got["recirc_flow"].symmetric
    assert got["unit_square"].pos.shape[1] == 2 and got["unit_cube"].pos.shape[1] == 3
    with pytest.raises(ValueError, match="unknown pyamg example"):
        next(pyamg_suite(["nope"]))
    with pytest.warns(UserWarning, match="favours MIC"):
        _, knot = next(pyamg_suite(["knot"], rhs="ones"))
    np.testing.assert_allclose(knot.b.numpy(), to_scipy(knot) @ np.ones(knot.num_nodes))


def test_matrix_market_suite(tmp_path):
    write_matrix_market(tmp_path / "b_good.mtx", diffusion2d(3))
    write_matrix_market(tmp_path / "a_good.mtx.gz", convdiff2d(3))
    _write(tmp_path, "b_good_b.mtx", "%%MatrixMarket matrix array real general\n9 1\n"
           + "".join(f"{i}.0\n" for i in range(9)))
    _write(tmp_path, "c_bad.mtx", "%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1.0\n")
    _write(tmp_path, "notes.txt", "ignored")
    out = list(matrix_market_suite(tmp_path))
    assert [o[0] if isinstance(o, tuple) else o.name for o in out] == ["a_good", "b_good", "c_bad"]
    assert out[1][1].params["rhs"] == "file:b_good_b.mtx"
    err = out[2]
    assert isinstance(err, SuiteError) and err.path == str(tmp_path / "c_bad.mtx")
    assert "truncated" in err.reason
    assert [o[0] for o in load_suite("matrix_market", path=tmp_path) if isinstance(o, tuple)] == \
        ["a_good", "b_good"]
    with pytest.raises(NotADirectoryError):
        list(matrix_market_suite(tmp_path / "missing"))


def test_generated_suite_and_registry():
    calls = []

    def gen(size, *, seed):
        calls.append((size, seed))
        return (size, seed)

    out = list(load_suite("generated", specs=[("poisson2d", 8, 1), ("poisson2d", 16, 2)],
                          generators={"poisson2d": gen}))
    assert out == [("poisson2d_8_s1", (8, 1)), ("poisson2d_16_s2", (16, 2))]
    with pytest.raises(KeyError, match="unknown generator families"):
        list(generated_suite([("nope", 8, 0)], {"poisson2d": gen}))
    assert calls == [(8, 1), (16, 2)]
    with pytest.raises(ValueError, match="unknown benchmark suite"):
        load_suite("nope")


def test_suites_from_the_benchmark_configs(tmp_path):
    """conf/benchmark/*.yaml build their suites through their ``_target_`` (generated through the real
    generator registry); bad options fail when the suite is built, naming the option."""
    from pathlib import Path

    import yaml

    from learnsolve.evaluation.pipeline import build_suite as suite_from_config

    conf = Path(__file__).resolve().parents[1] / "conf" / "benchmark"
    gen = yaml.safe_load((conf / "generated.yaml").read_text())
    gen["specs"] = [s for s in gen["specs"] if s[0] in ("poisson2d", "convdiff2d")]
    suite = suite_from_config(gen)
    assert len(suite) == 2
    systems = list(suite)
    assert [name for name, _ in systems] == ["poisson2d_64_s900004", "convdiff2d_64_s900007"]
    for _, d in systems:
        A = sp.csr_matrix((d.edge_attr.numpy(), d.edge_index.numpy()), shape=(d.num_nodes, d.num_nodes))
        assert np.linalg.norm(A @ d.x.numpy() - d.b.numpy()) <= 1e-10 * np.linalg.norm(d.b.numpy())
    mm = yaml.safe_load((conf / "matrix_market.yaml").read_text())
    with pytest.raises(ValueError, match="benchmark.path"):
        suite_from_config(mm)
    with pytest.raises(ValueError, match="unknown generator families"):
        suite_from_config({**gen, "specs": [["nope", 8, 0]]})
    with pytest.raises(ValueError, match="unknown pyamg examples"):
        suite_from_config({**yaml.safe_load((conf / "pyamg.yaml").read_text()), "names": ["nope"]})
    names = [n for n, _ in suite_from_config(yaml.safe_load((conf / "pyamg.yaml").read_text()))]
    assert "recirc_flow" in names and len(names) == 7


def test_a_singular_matrix_with_constant_null_space_gets_a_consistent_random_image(tmp_path):
    """A 1 = 0 (a Neumann Laplacian): b = A 1 would be rounding noise, so b = A r for a seeded random r."""
    import scipy.io as sio
    import scipy.sparse as sp

    from learnsolve.data.mtx import load_system

    n = 30
    L = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="lil")
    L[0, 0] = L[n - 1, n - 1] = 1.0  # row sums zero
    path = tmp_path / "neumann.mtx"
    sio.mmwrite(str(path), L.tocsr())
    d = load_system(path, seed=3)
    b = d.b.numpy().astype(np.float64)
    r = np.random.default_rng(3).uniform(0.5, 1.5, n)
    np.testing.assert_allclose(b, L.tocsr() @ r, rtol=1e-12, atol=1e-14)
    assert d.params["rhs"].startswith("A r (A 1 = 0") and "seed 3" in d.params["rhs"]
    assert np.linalg.norm(b) > 0.1
    regular = tmp_path / "regular.mtx"
    sio.mmwrite(str(regular), (L + sp.eye(n)).tocsr())
    with pytest.warns(UserWarning, match="favours MIC"):
        assert load_system(regular, rhs="ones").params["rhs"] == "ones"
    assert load_system(regular).params["rhs"] == "random"
    from learnsolve.evaluation.runner import evaluate_suite

    rows = evaluate_suite(None, [("neumann", d)], rtols=[1e-6], repeats=1, preconditioners=["jacobi"], progress=False)
    assert rows[0]["status"] == "ok" and "b = A r (A 1 = 0" in rows[0]["reason"]  # said in the notes column


@pytest.mark.parametrize("index", ["1e400", "-1e400", "1e30"])
def test_a_huge_or_infinite_index_is_a_clear_error(tmp_path, index):
    """An index that reads as infinity (or beyond int64) used to crash the reader with OverflowError while it composed
    its own 'index out of range' message."""
    p = tmp_path / "a.mtx"
    p.write_text(f"%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1.0\n{index} 2 1.0\n")
    with pytest.raises(MatrixMarketError, match=r"index out of range: entry 2 has row .*valid range is 1\.\.2"):
        read_matrix_market(p)
