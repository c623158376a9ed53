"""learnsolve.export: trained models and per-matrix preconditioners in portable files, and loading them back.

- :func:`export_model`: a training checkpoint -> a self-contained folder (config.json, model.safetensors, a
  compiled program, optionally ``preconditioners/`` for given matrices), written atomically.
- :func:`export_preconditioners`: a model (or an exported folder) applied to Matrix Market files ->
  ``<stem>_L.mtx`` / ``<stem>_L.npz`` (neural_if, M = L L^T) or ``<stem>_lowrank.npz`` (lowrank_precond,
  M = D + U U^T) plus ``<stem>.json``.
- :func:`load_model`: an exported folder -> the nn.Module (no Lightning, no Hydra);
  :func:`load_program`: its compiled program (torch.export or TorchScript).
- :func:`load_preconditioner`: ``<stem>.json`` -> scipy ``LinearOperator`` applying M^{-1} (``M=`` of
  ``scipy.sparse.linalg.cg``) or a :class:`learnsolve.linalg.Preconditioner` (``backend="torch"``).

Nonlinear models (gnn_solver), learned solvers (unrolled_cg) and surrogates define no fixed matrix: they are
exported as a model (and a program where one exists) only. Errors are :class:`ExportError`.
"""

from ._io import ExportError
from .model import ExportReport, export_model, load_model, load_program, read_config
from .preconditioners import export_preconditioners, load_preconditioner

__all__ = [
    "ExportError",
    "ExportReport",
    "export_model",
    "export_preconditioners",
    "load_model",
    "load_preconditioner",
    "load_program",
    "read_config",
]
