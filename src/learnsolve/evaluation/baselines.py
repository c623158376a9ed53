"""The one registry of classical baseline preconditioners.

Every comparison in the project -- ``evaluate`` (its default ``preconditioners``), the training's final
table, validation (``val/iters_ratio_<name>``) and the benchmark scripts -- takes its baselines from
:data:`BASELINES`. Adding a classical preconditioner is ONE :class:`Baseline` entry here (plus its
implementation in :mod:`learnsolve.linalg`).

A baseline's :attr:`~Baseline.setup` looks at the matrix's properties (:class:`MatrixProps`: symmetric,
SPD) and returns ``(label, build)``: ``label`` is what the result row shows (``ic0`` becomes ``ilu0`` on a
nonsymmetric matrix), ``build()`` returns ``(Preconditioner | None, note | None)`` and is timed as the
setup. A baseline that does not apply to a matrix raises :class:`NotApplicable` (a "skipped" row); a
setup that fails raises (a "failed" row, the message says why).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from learnsolve.linalg import (
    AMG,
    IC0,
    ILU0,
    MIC0,
    CoarseCorrected,
    FactorizationError,
    Jacobi,
    Preconditioner,
    SparseMatrix,
    subdomains,
)

Build = Callable[[], tuple[Preconditioner | None, str | None]]


class NotApplicable(Exception):
    """This baseline does not apply to this matrix (e.g. IC(0) on a symmetric indefinite matrix)."""


class SetupFailed(RuntimeError):
    """The baseline applies to this matrix but its setup failed (the message says why)."""


class MatrixProps(Protocol):
    """What a baseline needs to know about a matrix (``learnsolve.evaluation.MatrixInfo`` has it)."""

    symmetric: bool
    spd: bool
    why_not_spd: str | None


@dataclass(frozen=True)
class SPDProps:
    """Properties of a matrix known to be SPD (the training families)."""

    symmetric: bool = True
    spd: bool = True
    why_not_spd: str | None = None


@dataclass(frozen=True)
class Baseline:
    """One classical preconditioner.

    ``name``: the config / column name; ``title``: for people (tables, plots); ``setup(A, props, options)``
    -> ``(label, build)`` as in the module docstring; ``in_training``: also in validation metrics and the
    training's final table (cheap enough to run every validation on every system); ``in_report``: in the
    training's final table (once per run) even when not in validation.
    """

    name: str
    title: str
    setup: Callable[[SparseMatrix, MatrixProps, Mapping], tuple[str, Build]]
    in_training: bool = True
    in_report: bool = False


def _none(A, props, options):
    return "none", lambda: (None, None)


def _jacobi(A, props, options):
    return "jacobi", lambda: (Jacobi(A), None)


def _incomplete_cholesky(cls, name: str, nonsymmetric: str | None):
    """IC(0) / MIC(0): ``nonsymmetric`` names the baseline used instead on a nonsymmetric matrix (None: skip);
    a breakdown is retried with a diagonal shift and the note says so."""
    def setup(A, props, options):
        if not props.symmetric:
            if nonsymmetric == "ilu0":
                return "ilu0", lambda: (ILU0(A), None)
            raise NotApplicable(f"{cls.name} needs an SPD matrix; this one is nonsymmetric")
        if not props.spd:
            raise NotApplicable(f"{cls.name} needs an SPD matrix; this one is {props.why_not_spd}")

        def build():
            try:
                return cls(A), None
            except FactorizationError as e:
                M = cls(A, shift="auto")  # raises FactorizationError again when no shift helps
                return M, (f"{cls.name} broke down at row {e.row}; retried with diagonal shift {M.shift:g} "
                           f"(factor of A + {M.shift:g} diag(A))")
        return name, build
    return setup


# pyamg's recommended smoothed aggregation for anisotropic and hard problems (its "Diffusion" and
# solver-diagnostic examples): evolution strength of connection (follows the strong direction off the grid
# axes, where the classical symmetric measure fails), energy-minimising prolongation smoothing, candidates
# improved by Gauss-Seidel
SA_EVOLUTION = {
    "strength": ("evolution", {"k": 2, "proj_type": "l2", "epsilon": 4.0}),
    "smooth": ("energy", {"krylov": "cg", "maxiter": 2, "degree": 1, "weighting": "local"}),
    "improve_candidates": [("block_gauss_seidel", {"sweep": "symmetric", "iterations": 4}), None],
}
# Ruge-Stueben with the strength threshold chosen by measurement on the hard families (see the docs' baseline
# table): theta = 0.25 is pyamg's default
RS_TUNED = {"strength": ("classical", {"theta": 0.25})}


def _amg(kind: str, key: str, defaults: Mapping | None = None):
    """pyamg AMG of ``kind`` ("sa" | "rs") with ``defaults`` updated by ``options[key]`` (evaluate's
    ``amg.<key>``)."""
    def setup(A, props, options):
        opts = {**(defaults or {}), **dict(options.get(key) or {})}
        if kind == "sa" and not props.symmetric:
            opts.setdefault("symmetry", "nonsymmetric")
        # the fastest implementation here: pyamg's hierarchy in the compiled V-cycle on a symmetric matrix
        # (options amg.<key>.cycle=pyamg: pyamg's own cycle)
        opts.setdefault("cycle", "compiled" if props.symmetric else "pyamg")

        def build():
            said: list[str] = []  # pyamg's C++ core prints diagnostics: keep them for the note, off stdout
            try:
                with captured_stdout(said):
                    M = AMG(A, kind=kind, **opts)
            except Exception as e:
                extra = f" (pyamg said: {said[0]})" if said and said[0] else ""
                raise SetupFailed(f"pyamg {key.upper()} setup failed: {type(e).__name__}: {e}{extra}") from e
            notes = [f"pyamg said: {said[0]}"] if said and said[0] else []
            if opts["cycle"] == "compiled" and M.cycle != "compiled":
                notes.append("pyamg's cycle: the compiled V-cycle needs a definite coarsest matrix")
            return M, ("; ".join(notes) or None)
        return f"amg_{key}", build
    return setup


def _ic0_deflated(A, props, options):
    """IC(0) with the subdomain coarse space (:class:`learnsolve.linalg.CoarseCorrected`, Nicolaides'
    piecewise constants on aggregates of about 9^levels unknowns): removes the small eigenvalues IC(0) leaves,
    one per high-contrast inclusion or smooth mode."""
    if not props.spd:
        raise NotApplicable(f"ic0_deflated needs an SPD matrix; this one is {props.why_not_spd}")
    def build():
        _, inner = _incomplete_cholesky(IC0, "ic0", None)(A, props, options)
        base, note = inner()
        sub, m = subdomains(A, levels=2)
        try:
            return CoarseCorrected(A, base, sub, m), note
        except FactorizationError as e:
            why = (" A is singular (semi-definite): the piecewise constants hold its null space" if
                   getattr(props, "singular", False) else "")
            raise SetupFailed(f"ic0_deflated: {e}.{why}") from e
    return "ic0_deflated", build


BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("none", "no preconditioner", _none),
    Baseline("jacobi", "Jacobi", _jacobi),
    Baseline("ic0", "IC(0) (ILU(0) if nonsymmetric)", _incomplete_cholesky(IC0, "ic0", "ilu0")),
    Baseline("mic0", "MIC(0): modified IC(0), row sums kept (SPD only)",
             _incomplete_cholesky(MIC0, "mic0", None)),
    Baseline("ic0_deflated", "IC(0) with a subdomain coarse space (deflation, SPD only)", _ic0_deflated,
             in_training=False),
    Baseline("amg_sa", "AMG, smoothed aggregation (pyamg defaults; compiled V-cycle on symmetric A)",
             _amg("sa", "sa"), in_training=False, in_report=True),
    Baseline("amg_sa_evol",
             "AMG, smoothed aggregation with evolution strength and energy-minimising prolongation (pyamg's "
             "setting for anisotropy)", _amg("sa", "sa_evol", SA_EVOLUTION), in_training=False,
             in_report=True),
    Baseline("amg_rs", "AMG, Ruge-Stueben (pyamg, classical strength theta tuned)",
             _amg("rs", "rs", RS_TUNED), in_training=False, in_report=True),
)}
REFERENCE = "ic0"  # iteration ratios are reported against this baseline (ILU(0) on nonsymmetric matrices)
REFERENCE_LABELS = ("ic0", "ilu0")


def training_baselines() -> tuple[str, ...]:
    """The baselines of the training's final table and validation metrics."""
    return tuple(name for name, b in BASELINES.items() if b.in_training)


def report_baselines() -> tuple[str, ...]:
    """The baselines of the training's final table: the training ones and the AMG hierarchies."""
    return tuple(name for name, b in BASELINES.items() if b.in_training or b.in_report)


def baseline_setup(name: str, A: SparseMatrix, props: MatrixProps = SPDProps(),
                   options: Mapping | None = None) -> tuple[str, Build]:
    """``(label, build)`` of the registered baseline ``name`` on ``A`` (raises :class:`NotApplicable`)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline preconditioner {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name].setup(A, props, options or {})


def build_baseline(name: str | None, A: SparseMatrix, props: MatrixProps = SPDProps(),
                   options: Mapping | None = None) -> Preconditioner | None:
    """The preconditioner of baseline ``name`` for ``A`` (None for "none"); notes are dropped."""
    return baseline_setup(name or "none", A.detach(), props, options)[1]()[0]


@contextlib.contextmanager
def captured_stdout(out: list[str]) -> Iterator[None]:
    """Capture what is written to file descriptor 1 (Python and C/C++ code alike) into ``out[0]``
    (distinct lines, whitespace squeezed)."""
    sys.stdout.flush()
    saved = os.dup(1)
    py = io.StringIO()
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            with contextlib.redirect_stdout(py):
                yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = py.getvalue() + "\n" + tmp.read().decode(errors="replace")
            lines = [" ".join(ln.split()) for ln in text.splitlines()]
            out[:] = ["; ".join(dict.fromkeys(ln for ln in lines if ln))]


__all__ = ["BASELINES", "REFERENCE", "Baseline", "MatrixProps", "NotApplicable", "SPDProps", "SetupFailed",
           "baseline_setup", "build_baseline", "captured_stdout", "report_baselines", "training_baselines"]
