"""Benchmark suites: iterables of named linear systems ``(name, Data)`` for evaluation.

- ``pyamg``: the matrices pyamg ships (:func:`pyamg_suite`);
- ``matrix_market``: every ``.mtx`` / ``.mtx.gz`` in a folder (:func:`matrix_market_suite`); a file that
  cannot be read is yielded as a :class:`SuiteError` record (name, path, reason) and the rest still load;
- ``generated``: held-out generated problems (:func:`generated_suite`), given a generator registry.

The :class:`Suite` classes (:class:`GeneratedSuite`, :class:`PyamgSuite`, :class:`MatrixMarketSuite`) wrap
them with checked options and a length; ``conf/benchmark/*.yaml`` name them with ``_target_``.
``load_suite(name, **kwargs)`` builds one by name from :data:`SUITES`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg  # noqa: F401 -- sp.linalg.norm
from torch_geometric.data import Data

from .dataset import plain
from .mtx import MatrixMarketError, default_rhs, list_matrices, load_system, matrix_stem, reference_solution
from .system import make_system

__all__ = ["PYAMG_EXAMPLES", "SUITES", "GeneratedSuite", "MatrixMarketSuite", "PyamgSuite", "Suite",
           "SuiteConfigError", "SuiteError", "generated_suite", "load_suite", "matrix_market_suite",
           "pyamg_suite", "spec_name"]

# name -> symmetric (SPD for the symmetric ones); recirc_flow is a nonsymmetric convection problem
PYAMG_EXAMPLES = {
    "airfoil": True,
    "bar": True,
    "knot": True,
    "local_disc_galerkin_diffusion": True,
    "recirc_flow": False,
    "unit_cube": True,
    "unit_square": True,
}


@dataclass(frozen=True)
class SuiteError:
    """A suite member that could not be loaded: its name, file and the reason (reported, then skipped)."""

    name: str
    path: str
    reason: str


def pyamg_suite(names: Iterable[str] | None = None, rhs: str = "random",
                seed: int = 0) -> Iterator[tuple[str, Data]]:
    """The matrices pyamg ships (``pyamg.gallery.load_example``), in the order of :data:`PYAMG_EXAMPLES`.

    Each example dict holds ``A`` (sparse), ``B`` (the near-null-space candidates for smoothed
    aggregation -- NOT a right-hand side), and ``vertices`` / ``elements`` of the mesh. No example ships
    a right-hand side: ``rhs="random"`` (default) draws b i.i.d. standard normal from
    ``numpy.random.default_rng(seed)``; ``rhs="ones"`` gives ``b = A @ ones`` (exact solution all ones; it
    favours MIC(0), which keeps row sums, and warns so). Where ones lies in A's null space (unit_square, a
    Neumann problem; a random b is not in A's range there) either kind gives ``b = A @ w`` with ``w`` uniform
    in [0.5, 1.5] (the same seed), and ``params["rhs"]`` records which was used. ``pos`` = ``vertices`` when
    there is one vertex per unknown (local_disc_galerkin_diffusion, unit_cube, unit_square); otherwise
    (Dirichlet nodes eliminated, or several unknowns per vertex: airfoil, bar, knot, recirc_flow) the 1-D
    index coordinate ``arange(n) / n`` of shape (n, 1), as for Matrix Market files.
    family ``"pyamg"``, params ``{"name": name, "rhs": ...}``, seed ``seed``; ``symmetric`` is measured from A
    (recirc_flow is nonsymmetric); ``singular`` is set as in :func:`learnsolve.data.mtx.load_system`.
    """
    from pyamg.gallery import load_example  # pyamg is heavy-ish; import on use

    if rhs not in ("random", "ones"):
        raise ValueError(f"unknown rhs {rhs!r}: choose 'random' (seeded, the default) or 'ones' (b = A @ "
                         "ones)")
    for name in (PYAMG_EXAMPLES if names is None else names):
        if name not in PYAMG_EXAMPLES:
            raise ValueError(f"unknown pyamg example {name!r}; choose from {', '.join(PYAMG_EXAMPLES)}")
        ex = load_example(name)
        A = sp.csr_matrix(ex["A"], dtype=np.float64)
        n = A.shape[0]
        verts = ex.get("vertices")
        if verts is not None and np.asarray(verts).shape[0] == n:
            pos = np.asarray(verts, dtype=np.float64)
        else:
            pos = (np.arange(n, dtype=np.float64) / n).reshape(n, 1)
        b, source = default_rhs(A, rhs, seed, f"pyamg example {name}")  # unit_square (A 1 = 0): b = A r
        x, singular = reference_solution(A, b)
        data = make_system(A, b, pos=pos, coeff=np.ones(n), family="pyamg",
                           params={"name": name, "rhs": source}, seed=seed, x=np.zeros(n) if x is None else x)
        if x is None:
            data.x = None
        data.singular = singular
        yield name, data


def matrix_market_suite(folder: str | os.PathLike, rhs: str = "random",
                        seed: int = 0) -> Iterator[tuple[str, Data] | SuiteError]:
    """Every ``*.mtx`` / ``*.mtx.gz`` in ``folder`` (not recursive), sorted by file name.

    Yields ``(stem, Data)`` from :func:`learnsolve.data.mtx.load_system` (``rhs``/``seed`` passed on), or a
    :class:`SuiteError` for a file that cannot be loaded (the reason is the :class:`MatrixMarketError`
    message, or the exception for another failure); iteration then goes on with the next file.
    Right-hand-side files ``<stem>_b.mtx`` / ``<stem>_rhs.mtx`` next to a matrix ``<stem>.mtx`` are used
    by that matrix's system and are not systems themselves. A missing folder raises
    ``NotADirectoryError``.
    """
    for p in list_matrices(folder):
        name = matrix_stem(p)
        try:
            data = load_system(p, rhs=rhs, seed=seed)
        except MatrixMarketError as e:
            yield SuiteError(name, str(p), e.reason)
            continue
        except Exception as e:  # noqa: BLE001 -- one bad file must not stop the suite
            yield SuiteError(name, str(p), f"{type(e).__name__}: {e}")
            continue
        yield name, data


def _spec_kwargs(spec: Sequence) -> dict:
    return dict(spec[3]) if len(spec) > 3 and spec[3] is not None else {}


def spec_name(spec: Sequence) -> str:
    """``{family}_{size}_s{seed}``, then ``_key=value`` for each of a spec's own keyword arguments
    (sorted)."""
    family, size, seed = spec[:3]
    extra = "".join(f"_{k}={v}" for k, v in sorted(_spec_kwargs(spec).items()))
    return f"{family}_{size}_s{seed}{extra.replace(' ', '')}"


def generated_suite(specs: Iterable[Sequence], generators: Mapping[str, Callable[..., Data]],
                    params: Mapping[str, Mapping[str, Any]] | None = None,
                    reference: bool = True) -> Iterator[tuple[str, Data]]:
    """Held-out generated problems: for each ``(family, size, seed)`` or ``(family, size, seed, kwargs)`` in
    ``specs`` yield ``(spec_name(spec), generators[family](size, seed=seed, **kw))``.

    ``kw`` is ``params[family]`` (per-family generator keyword arguments) updated by the spec's own
    ``kwargs``; with ``reference=False`` it starts from ``{"reference": False}`` (no reference solve: the
    systems carry no ``x``), which a family's ``params`` or a spec can still override.
    ``generators`` is the generator registry (family name -> callable ``(size, *, seed, **kw) -> Data``); it
    is a parameter so that this module does not import the generators. Pick seeds disjoint from the
    training seeds to keep the problems held out. An unknown family raises ``KeyError`` naming the known
    ones before anything is generated (:class:`GeneratedSuite` checks everything else first).
    """
    specs = [tuple(s) for s in specs]
    params = {} if params is None else params
    unknown = sorted({f for f, *_ in specs if f not in generators})
    if unknown:
        raise KeyError(f"unknown generator families {unknown}; known: {sorted(generators)}")
    for spec in specs:
        family, size, seed = spec[:3]
        kw = {"reference": False} if not reference else {}
        kw.update(params.get(family) or {})
        kw.update(_spec_kwargs(spec))
        yield spec_name(spec), generators[family](size, seed=seed, **kw)


def _unknown_keywords(gen: Callable, keys: Iterable[str]) -> list[str]:
    """Keys that ``gen`` does not accept as keyword arguments (none when it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(gen)
    except (TypeError, ValueError):
        return []
    ps = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in ps):
        return []
    ok = {p.name for p in ps[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return sorted(set(keys) - ok)


class SuiteConfigError(ValueError):
    """A benchmark suite asked for with options that cannot work (the message names the option)."""


class Suite:
    """A benchmark suite built from a ``conf/benchmark/*.yaml`` (``_target_`` names the class): iterable
    over ``(name, Data)`` items or :class:`SuiteError` records, with ``len()`` the number of systems.
    Options are checked when the suite is built, before anything is loaded or generated."""

    name: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        raise NotImplementedError


class GeneratedSuite(Suite):
    """Generated held-out problems (see :func:`generated_suite`), options checked before anything is
    generated.

    - ``specs``: ``[[family, size, seed], ...]``, each optionally with a 4th element, a mapping of generator
      keyword arguments for that system alone (e.g. ``[anisotropic2d, 64, 910001, {stencil: fe}]``);
      ``size`` is the family's size argument (grid side, or number of nodes / vertices);
    - ``params``: ``{family: {keyword: value}}`` applied to every spec of that family (e.g.
      ``{anisotropic2d: {theta: random, epsilon: [1.0e-4, 1.0e-2], stencil: fe}}``); a spec's own mapping
      wins;
    - ``reference``: false skips the sparse direct reference solve of every system (no ``x``; for sizes
      where the factorisation dominates, such as 1024^2 grids and million-node graphs); every family of
      the specs must then accept ``reference``.

    Bad entries raise :class:`SuiteConfigError` naming the option (``benchmark.specs[i]``,
    ``benchmark.params.FAMILY``, ``benchmark.reference``); so do keyword arguments the family's generator
    does not take and two specs with the same name.
    """

    def __init__(self, specs, name: str = "generated",
                 generators: Mapping[str, Callable[..., Data]] | None = None,
                 params: Mapping[str, Mapping[str, Any]] | None = None, reference: bool = True):
        if generators is None:
            from .generators import GENERATORS as generators
        specs = [tuple(s) if isinstance(s, Sequence) and not isinstance(s, (str, bytes)) else s
                 for s in plain(specs or [])]
        if not specs:
            raise SuiteConfigError(f"benchmark.specs must be a non-empty list of [family, size, seed] "
                                   f"(optionally [family, size, seed, {{keyword: value}}]), got {specs}")
        for i, s in enumerate(specs):
            if (not isinstance(s, tuple) or len(s) not in (3, 4)
                    or (len(s) == 4 and not isinstance(s[3], dict))):
                raise SuiteConfigError(f"benchmark.specs[{i}] must be [family, size, seed] or [family, size, "
                                       f"seed, {{keyword: value}}], got {s!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in s[1:3]) or s[1] < 1:
                raise SuiteConfigError(f"benchmark.specs[{i}]: size must be a positive integer and seed an "
                                       f"integer, got {s!r}")
        unknown = sorted({str(s[0]) for s in specs if s[0] not in generators})
        if unknown:
            raise SuiteConfigError(f"benchmark.specs: unknown generator families {unknown}; known: "
                                   f"{sorted(generators)}")
        params = plain(params or {})
        if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
            raise SuiteConfigError("benchmark.params must map families to mappings of generator keyword "
                                   f"arguments, got {params!r}")
        bad = sorted(set(params) - set(generators))
        if bad:
            raise SuiteConfigError(f"benchmark.params: unknown generator families {bad}; known: "
                                   f"{sorted(generators)}")
        if not isinstance(reference, bool):
            raise SuiteConfigError(f"benchmark.reference must be true or false, got {reference!r}")
        for family, kw in params.items():
            self._check_keywords(generators[family], family, kw, f"benchmark.params.{family}")
        for i, s in enumerate(specs):
            kw = {**({} if reference else {"reference": False}), **params.get(s[0], {}), **_spec_kwargs(s)}
            self._check_keywords(generators[s[0]], s[0], kw, f"benchmark.specs[{i}]")
        names = [spec_name(s) for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SuiteConfigError(f"benchmark.specs: repeated systems {dup} (same family, size, seed and "
                                   "keywords)")
        self.specs, self.name, self.generators = specs, name, generators
        self.params, self.reference = params, reference

    @staticmethod
    def _check_keywords(gen: Callable, family: str, kw: Mapping[str, Any], where: str) -> None:
        try:
            size_arg = next(iter(inspect.signature(gen).parameters))
        except (TypeError, ValueError, StopIteration):
            size_arg = "size"
        reserved = sorted({"seed", size_arg} & set(kw))
        if reserved:
            raise SuiteConfigError(f"{where}: {reserved} are set by the spec ([family, size, seed]), not as "
                                   "keywords")
        unknown = _unknown_keywords(gen, kw)
        if unknown:
            raise SuiteConfigError(f"{where}: the {family} generator takes no keyword argument(s) {unknown}")

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self):
        return generated_suite(self.specs, self.generators, params=self.params, reference=self.reference)


class PyamgSuite(Suite):
    """``names``: examples of :data:`PYAMG_EXAMPLES` (None = all), see :func:`pyamg_suite`."""

    def __init__(self, names: Iterable[str] | None = None, name: str = "pyamg", rhs: str = "random",
                 seed: int = 0):
        names = list(PYAMG_EXAMPLES) if names is None else [str(n) for n in names]
        unknown = [n for n in names if n not in PYAMG_EXAMPLES]
        if unknown:
            raise SuiteConfigError(f"benchmark.names: unknown pyamg examples {unknown}; choose from "
                                   f"{', '.join(PYAMG_EXAMPLES)}")
        if rhs not in ("random", "ones"):
            raise SuiteConfigError(f"benchmark.rhs={rhs!r}: choose random (seeded, the default) or ones (b = "
                                   "A @ ones)")
        self.names, self.name, self.rhs, self.seed = names, name, rhs, int(seed)

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return pyamg_suite(self.names, rhs=self.rhs, seed=self.seed)


class MatrixMarketSuite(Suite):
    """Every matrix file of the folder ``path`` (see :func:`matrix_market_suite`; ``rhs``, ``seed``)."""

    def __init__(self, path: str | os.PathLike | None = None, rhs: str = "random", seed: int = 0,
                 name: str = "matrix_market"):
        if path in (None, "???"):
            raise SuiteConfigError("benchmark=matrix_market needs benchmark.path=DIR (a folder of .mtx "
                                   "files)")
        if not Path(path).is_dir():
            raise SuiteConfigError(f"benchmark.path={str(path)!r} is not a folder (give a folder of .mtx "
                                   "files)")
        self.path, self.rhs, self.seed, self.name = Path(path), rhs, int(seed), name
        self.files = list_matrices(self.path)

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        return matrix_market_suite(self.path, rhs=self.rhs, seed=self.seed)


SUITES: dict[str, type[Suite]] = {
    "pyamg": PyamgSuite,
    "matrix_market": MatrixMarketSuite,
    "generated": GeneratedSuite,
}


def load_suite(name: str, **kwargs) -> Suite:
    """Suite ``name`` from :data:`SUITES`, built with ``kwargs`` (e.g. ``path=`` for matrix_market)."""
    if name not in SUITES:
        raise ValueError(f"unknown benchmark suite {name!r}; choose from {', '.join(SUITES)}")
    return SUITES[name](**kwargs)
