"""The base of every learned model: its kind, its capabilities, and what training, evaluation and export ask
it.

Every entry of :data:`learnsolve.models.MODELS` derives from :class:`LearnedModel`. Callers ask the model
instead of testing its class:

- class attributes ``kind`` ("solver" | "preconditioner" | "surrogate"), ``requires_spd``, ``is_linear``
  (its preconditioner is a fixed linear map: plain PCG; else flexible CG), ``matrix_type`` (the form of its
  per-matrix export, one of :data:`MATRIX_TYPES`, or None) and ``num_nodes`` (the one system size it serves,
  None for any size);
- ``training_loss(batch)``; ``solve(batch, rtol, maxiter)``; ``preconditioner_for(batch)`` (the raw learned
  map); ``metrics(batch)`` (surrogates); :meth:`LearnedModel.implements` says which of the
  optional ones a class provides;
- the safeguard of a learned preconditioner: ``fallback_for(batch)`` (the classical preconditioner it falls
  back to) and ``safe_preconditioner_for(batch)`` (the learned one where
  :func:`learnsolve.linalg.preconditioners.safeguard` accepts it, per graph, the fallback elsewhere); the
  default ``solve`` uses it unless ``safeguard=False``;
- export: ``matrix_export_reason(name)`` / ``export_matrix(batch)`` (the preconditioner of one matrix as
  arrays) and ``export_program()`` (a :class:`ProgramSpec`, or the reason why there is none).

A new learned preconditioner whose ``preconditioner_for`` returns a :class:`learnsolve.linalg.LLT` or
:class:`learnsolve.linalg.LowRankDiagonal` and declares ``matrix_type`` is exported per matrix with no code of
its own; its program is whatever :meth:`LearnedModel.export_program` returns.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from learnsolve.linalg import (
    LLT,
    Jacobi,
    LowRankDiagonal,
    Preconditioner,
    SafeguardResult,
    SolveInfo,
    SparseMatrix,
    cg,
    fastest_factor,
    fcg,
    safeguard,
)

KINDS = ("solver", "preconditioner", "surrogate")
MATRIX_TYPES = {
    "llt": "M = L L^T; arrays {'L': scipy CSR (n, n), lower triangular, sorted indices}",
    "lowrank_diag": "M = D + U V^T; arrays {'D': (n,), 'U': (n, r), 'V': (n, r)} float64 numpy",
}
OPTIONAL = ("solve", "preconditioner_for", "metrics")
BASE_TITLES = {"ic0": "IC(0)", "mic0": "MIC(0)", "jacobi": "Jacobi"}  # a model's classical base, for people

SYSTEM_INPUTS = [
    ("edge_index (2, E) int64: row and column of every stored entry of A, in CSR order (sorted by row, then "
     "column, no duplicates), diagonal included"),
    "values (E,) float64: the entries of A",
    ("feat (n, 3) float64: node features (diag(A), coefficient, b) as learnsolve.data.make_system builds "
     "them; only column 1, the coefficient, is read (ones for a matrix file)"),
]


def check_choice(model: str, arg: str, value, choices) -> None:
    """ValueError ``"<model>: unknown <arg> <value>; choose one of ..."`` unless ``value`` is in
    ``choices``."""
    if value not in choices:
        raise ValueError(f"{model}: unknown {arg} {value!r}; choose one of {', '.join(choices)}")


def check_int(model: str, arg: str, value, low: int) -> int:
    """``int(value)``, or ValueError ``"<model>: <arg> must be an integer >= <low>, got ..."``."""
    try:
        ok = int(value) == value and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{model}: {arg} must be an integer >= {low}, got {value!r}")
    return int(value)


def system_tensors(data) -> tuple[Tensor, Tensor, Tensor]:
    """The program inputs (edge_index int64, values float64, feat float64) of one system (a PyG Data)."""
    return (data.edge_index.long().contiguous(), data.edge_attr.to(torch.float64).contiguous(),
            data.feat.to(torch.float64).contiguous())


def one_system_batch(data):
    """A PyG Batch holding the one system ``data``: what the models' batched code paths take."""
    from torch_geometric.data import Batch

    return Batch.from_data_list([data])


@dataclass
class MatrixExport:
    """The preconditioner of one matrix as arrays: ``type`` a key of :data:`MATRIX_TYPES`, ``arrays`` as it
    says."""

    type: str
    arrays: dict[str, Any]


def matrix_export_of(P: Preconditioner) -> MatrixExport | None:
    """The arrays of a preconditioner of ONE system, learned or classical: an :class:`LLT` (IC(0), MIC(0), a
    learned factor) as ``"llt"``, Jacobi as ``"llt"`` with L = diag(A)^(1/2), a :class:`LowRankDiagonal` as
    ``"lowrank_diag"``; None for any other preconditioner."""
    import scipy.sparse as sp

    if isinstance(P, LLT):
        L = P.L.to_scipy().tocsr()
        L.sort_indices()
        return MatrixExport("llt", {"L": L})
    if isinstance(P, Jacobi):
        d = (1.0 / P.inv_diag.reshape(-1)).detach().to(torch.float64).cpu().numpy()
        return MatrixExport("llt", {"L": sp.diags(d ** 0.5, format="csr")})
    if isinstance(P, LowRankDiagonal):
        return MatrixExport("lowrank_diag", {k: getattr(P, k)[0].detach().to(torch.float64).cpu().numpy()
                                             for k in ("D", "U", "V")})
    return None


# [(edge_index, edge_attr, batch vector, versions, num_nodes, A)]: the last batch's matrix
_LAST_MATRIX: list = []


def system_matrix(batch) -> SparseMatrix:
    """The detached block-diagonal A of a PyG batch (``SparseMatrix.from_pyg(batch).detach()``), built once
    for the last batch seen: the learned factor, its classical base, the safeguard's fallback and the solve
    then share one matrix, and so the sparsity analysis cached on its pattern (CSR order, transpose,
    triangular patterns). Measured at 256x256 (one thread): IC(0) of a fresh matrix took 18 ms, of an analysed
    one 2.5 ms. Rebuilt when the batch's edge tensors are other tensors or were modified in place (inference
    tensors, which keep no version counter: when they are other tensors)."""
    ei, ea, vec = batch.edge_index, batch.edge_attr, getattr(batch, "batch", None)
    versions = tuple(None if t is None or t.is_inference() else t._version for t in (ei, ea, vec))
    n = int(batch.num_nodes)
    if _LAST_MATRIX:
        lei, lea, lvec, lver, ln, A = _LAST_MATRIX[0]
        if lei is ei and lea is ea and lvec is vec and lver == versions and ln == n:
            return A
    A = SparseMatrix.from_pyg(batch).detach()
    _LAST_MATRIX[:] = [(ei, ea, vec, versions, n, A)]
    return A


def _spd_like(A: SparseMatrix) -> bool:
    """Symmetric with a positive diagonal: what CG and IC(0) need (indefiniteness shows up as a breakdown)."""
    return bool((A.diagonal() > 0).all()) and A.is_symmetric(rtol=1e-10)


class ProgramModule(nn.Module):
    """Base of the module of a :class:`ProgramSpec`: it holds the model, and its ``forward`` calls the model's
    own tensor functions (the code path of the model's batched forward), never a copy of its formulas."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


@dataclass
class ProgramSpec:
    """A model's network as a plain tensor function of ONE system, for torch.export / TorchScript.

    ``module(edge_index, values, feat, *extra)`` (inputs as :data:`SYSTEM_INPUTS`, then one length-n vector
    per entry of ``extra_inputs``, of length n (per node) or E (per entry of A)); ``inputs(data, seed)``
    builds its input tuple for a PyG Data (random extras from ``seed``); ``reference(data, inputs)`` computes
    the same outputs, in the same form, through the model's batched path (export checks the compiled program
    against it); ``outputs`` describes them.
    """

    module: ProgramModule
    outputs: list[str]
    reference: Callable[[Any, tuple], tuple]
    inputs: Callable[[Any, int], tuple] = field(default=lambda data, seed: system_tensors(data))
    extra_inputs: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"inputs": SYSTEM_INPUTS + self.extra_inputs, "outputs": self.outputs}


class LearnedModel(nn.Module, abc.ABC):
    """A learned solver, preconditioner or surrogate on PyG batches of linear systems (block-diagonal A).

    Subclasses set ``kind`` and implement :meth:`training_loss`, plus what their kind needs: a preconditioner
    :meth:`preconditioner_for` (then :meth:`solve` is PCG, or flexible CG when not ``is_linear``), a solver
    :meth:`solve`, a surrogate :meth:`metrics`.
    """

    kind: ClassVar[str]
    requires_spd: bool = True  # only SPD systems (CG / flexible CG inside); an instance may refine it
    is_linear: ClassVar[bool] = False  # preconditioner_for is a fixed linear map (PCG); else flexible CG
    matrix_type: ClassVar[str | None] = None  # form of export_matrix's arrays (a key of MATRIX_TYPES)
    num_nodes: int | None = None  # the one system size the model serves (None: any size)
    # steps / probes of its safeguard race (linalg.preconditioners.safeguard's defaults)
    safeguard_options: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if getattr(cls, "kind", None) not in KINDS:
            raise TypeError(f"{cls.__name__}: class attribute kind must be one of {', '.join(KINDS)}, got "
                            f"{getattr(cls, 'kind', None)!r}")
        if cls.matrix_type is not None and (cls.matrix_type not in MATRIX_TYPES or not cls.is_linear):
            raise TypeError(f"{cls.__name__}: matrix_type {cls.matrix_type!r} needs is_linear and one of "
                            f"{', '.join(MATRIX_TYPES)}")

    @classmethod
    def implements(cls, method: str) -> bool:
        """Whether the class provides the optional ``method`` ("solve", "preconditioner_for", "metrics");
        ``solve`` is provided by every model with a preconditioner."""
        if method not in OPTIONAL:
            raise ValueError(f"implements: {method!r} is not one of {', '.join(OPTIONAL)}")
        own = getattr(cls, method) is not getattr(LearnedModel, method)
        return own or (method == "solve" and cls.implements("preconditioner_for"))

    def classical_start(self) -> str | None:
        """The classical method this model equals at its initial parameters (its output layers start at zero),
        in words; None when it has none (surrogates, or a start that is not a classical method). Evaluation's
        ``untrained`` rows run the model at those parameters: learned / untrained is what training bought."""
        return None

    def _unsupported(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} is a {self.kind} model: it has no {what}")

    # -- training ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        """(scalar loss, dict of float logs) on a batch."""

    # -- solving -------------------------------------------------------------------------------------
    def preconditioner_for(self, batch) -> Preconditioner:
        """M^{-1} on canonical (1, N, k) blocks of the batch's block-diagonal A (linear iff ``is_linear``)."""
        raise self._unsupported("preconditioner")

    def fallback_for(self, batch) -> Preconditioner:
        """The classical preconditioner this model's preconditioner falls back to where the safeguard rejects
        it: on a symmetric A with a positive diagonal the faster of MIC(0) and IC(0) per system
        (:func:`learnsolve.linalg.fastest_factor`: MIC(0) where it does not break down and its pivots are not
        tiny, else a short race against IC(0) on the batch's right-hand side), Jacobi otherwise. A model may
        override it (lowrank_precond's forward side: Jacobi; neural_if reuses its MIC(0) base)."""
        A = system_matrix(batch)
        if not _spd_like(A):
            return Jacobi(A)
        b = getattr(batch, "b", None)
        return fastest_factor(A, b=None if b is None else b.view(-1), mic=self.reusable_mic0(A))

    def reusable_mic0(self, A: SparseMatrix) -> Preconditioner | None:
        """A MIC(0) factor of A the model already built (its base), for :meth:`fallback_for`; None by
        default."""
        return None

    @torch.no_grad()
    def safe_preconditioner_for(self, batch, *, rhs: bool = True, candidate: Preconditioner | None = None
                                ) -> tuple[Preconditioner, SafeguardResult | None]:
        """(M^{-1}, check): :meth:`preconditioner_for` where
        :func:`learnsolve.linalg.preconditioners.safeguard` accepts it against :meth:`fallback_for` (built
        lazily), graph by graph, the fallback elsewhere. ``rhs``: the race's first probe is the batch's
        right-hand side ``b`` (the systems about to be solved); False: random probes only (a matrix without
        its right-hand side, e.g. an exported preconditioner). The check is None, and M the raw map, for a
        nonlinear preconditioner (the PCG race needs a fixed linear M). Cost: the network plus
        ``check.seconds`` (a few PCG iterations with both and the fallback's setup). ``candidate``: the
        batch's :meth:`preconditioner_for`, already built (e.g. to time the network and the check apart)."""
        P = self.preconditioner_for(batch) if candidate is None else candidate
        if not (self.is_linear and P.linear):
            return P, None
        A = system_matrix(batch)
        b = getattr(batch, "b", None) if rhs else None
        check = safeguard(A, P, lambda: self.fallback_for(batch), b=None if b is None else b.view(-1),
                          **self.safeguard_options)
        return check.preconditioner, check

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000,
              safeguard: bool = True) -> tuple[Tensor, SolveInfo]:
        """(x (N,), per-graph SolveInfo) for every system of the batch. Default: CG with
        :meth:`safe_preconditioner_for` (``safeguard=False``: the raw :meth:`preconditioner_for`, for studies;
        flexible CG when it is not linear)."""
        if not self.implements("preconditioner_for"):
            raise self._unsupported("solve")
        M = self.safe_preconditioner_for(batch)[0] if safeguard else self.preconditioner_for(batch)
        return self.solve_with(batch, M, rtol, maxiter)

    @torch.no_grad()
    def solve_with(self, batch, M: Preconditioner, rtol: float = 1e-6,
                   maxiter: int = 2000) -> tuple[Tensor, SolveInfo]:
        """(x (N,), per-graph SolveInfo): CG on the batch's systems with the preconditioner M (flexible CG
        when M is nonlinear), e.g. the first item of :meth:`safe_preconditioner_for`."""
        A = system_matrix(batch)
        method = cg if getattr(M, "linear", self.is_linear) else fcg
        return method(A, batch.b.view(-1).to(A.dtype), M, rtol=rtol, maxiter=maxiter)

    def metrics(self, batch) -> dict[str, Tensor]:
        """Surrogates: scalar tensors (means over the graphs of the batch)."""
        raise self._unsupported("metrics (it is evaluated by its solves)")

    # -- export --------------------------------------------------------------------------------------
    def matrix_export_reason(self, name: str | None = None) -> str | None:
        """Why the model has no per-matrix export (None when it has one); ``name`` names it in the message."""
        name = name or type(self).__name__
        if self.matrix_type is not None:
            return None
        if self.kind == "surrogate":
            return (f"{name} is a surrogate model (it predicts solutions), not a preconditioner: there is no "
                    "matrix to export")
        if self.implements("preconditioner_for") and not self.is_linear:
            return f"{name} is a nonlinear preconditioner (z = f(r)); it cannot be written as a fixed matrix"
        return f"{name} is a learned {self.kind} without a fixed preconditioner matrix M to export"

    def export_matrix(self, batch) -> MatrixExport:
        """The preconditioner of the ONE system in ``batch`` as arrays of type ``matrix_type``. Default: read
        off the :class:`LLT` / :class:`LowRankDiagonal` that :meth:`preconditioner_for` returns."""
        reason = self.matrix_export_reason()
        if reason is not None:
            raise NotImplementedError(reason)
        with torch.no_grad():
            P = self.preconditioner_for(batch)
        exported = matrix_export_of(P)
        if exported is not None and exported.type == self.matrix_type:
            return exported
        raise TypeError(f"{type(self).__name__} declares matrix_type {self.matrix_type!r}, but "
                        f"preconditioner_for returned a {type(P).__name__}: override export_matrix")

    def export_program(self) -> ProgramSpec | str:
        """The model's compiled program (:class:`ProgramSpec`), or the reason why there is none."""
        return (f"{type(self).__name__} is a {self.kind} model without a compiled program: exported as "
                "weights and config only (rebuild it with learnsolve.export.load_exported_model)")


__all__ = [
    "BASE_TITLES",
    "KINDS",
    "MATRIX_TYPES",
    "SYSTEM_INPUTS",
    "LearnedModel",
    "MatrixExport",
    "ProgramModule",
    "ProgramSpec",
    "check_choice",
    "check_int",
    "matrix_export_of",
    "one_system_batch",
    "system_tensors",
]
