"""learnsolve.export: trained models and per-matrix preconditioners in portable files, and loading them back.

- :func:`export_model`: a training checkpoint -> a self-contained folder (config.json, model.safetensors, a
  compiled program, optionally ``preconditioners/`` for given matrices), written atomically.
- :func:`export_preconditioners`: a model (or an exported folder) applied to Matrix Market files ->
  ``<stem>_L.mtx`` / ``<stem>_L.npz`` (type "llt", M = L L^T: neural_if) or ``<stem>_lowrank.npz``
  (type "lowrank_diag", M = D + U U^T: lowrank_precond) plus ``<stem>.json``.
- :func:`load_exported_model`: an exported folder -> the nn.Module (no Lightning, no Hydra);
  :func:`load_program`: its compiled program (torch.export or TorchScript).
- :func:`load_preconditioner`: ``<stem>.json`` -> scipy ``LinearOperator`` applying M^{-1} (``M=`` of
  ``scipy.sparse.linalg.cg``) or a :class:`learnsolve.linalg.Preconditioner` (``backend="torch"``).

What is exported is asked of the model (:class:`learnsolve.models.base.LearnedModel`: ``export_program``,
``matrix_export_reason`` / ``export_matrix``): nonlinear models (gnn_solver), learned solvers (unrolled_cg)
and surrogates define no fixed matrix and are exported as a model (and a program where one exists) only. A
training checkpoint becomes a model through :mod:`learnsolve.models.checkpoint` (the one loader). Errors are
:class:`ExportError`.
"""

from ._io import ExportError
from .model import ExportReport, export_model
from .preconditioners import export_preconditioners
from .reader import load_exported_model, load_preconditioner, load_program, read_config

__all__ = [
    "ExportError",
    "ExportReport",
    "export_model",
    "export_preconditioners",
    "load_exported_model",
    "load_preconditioner",
    "load_program",
    "read_config",
]
