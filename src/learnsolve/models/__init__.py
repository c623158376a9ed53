"""Learned solvers and preconditioners (plain nn.Modules) and their registry.

Every model derives from :class:`~learnsolve.models.base.LearnedModel`, and the training module, evaluation
and export ask it rather than test its class:

- class attributes ``kind`` ("solver": solves A x = b itself; "preconditioner": M^{-1} used in (flexible) CG;
  "surrogate": predicts solutions or trajectories), ``requires_spd``, ``is_linear`` (the preconditioner is a
  fixed linear map: PCG), ``matrix_type`` (what its per-matrix export holds) and ``num_nodes``;
- ``training_loss(batch) -> (loss, logs)`` on a PyG batch of systems (block-diagonal A);
- solvers and preconditioners: ``solve(batch, rtol, maxiter) -> (x, SolveInfo)`` with per-graph iteration
  counts; preconditioners ``preconditioner_for(batch) -> linalg.Preconditioner``;
- surrogates: ``metrics(batch) -> dict`` of scalar tensors;
- export: ``matrix_export_reason(name)``, ``export_matrix(batch)``, ``export_program()``.

``conf/model/NAME.yaml`` builds a model with ``hydra.utils.instantiate`` and names its default data
family and monitored metric; :func:`learnsolve.models.checkpoint.load_model` rebuilds a trained one.
"""

from .base import LearnedModel, MatrixExport, ProgramSpec
from .gnn_solver import GNNSolver
from .lowrank_precond import LowRankPreconditioner
from .neural_if import NeuralIF
from .neural_ode import NeuralODE
from .physics_nn import PhysicsNN
from .unrolled_cg import UnrolledCG

MODELS: dict[str, type[LearnedModel]] = {
    "unrolled_cg": UnrolledCG,
    "lowrank_precond": LowRankPreconditioner,
    "neural_if": NeuralIF,
    "gnn_solver": GNNSolver,
    "physics_nn": PhysicsNN,
    "neural_ode": NeuralODE,
}

__all__ = [
    "MODELS",
    "GNNSolver",
    "LearnedModel",
    "LowRankPreconditioner",
    "MatrixExport",
    "NeuralIF",
    "NeuralODE",
    "PhysicsNN",
    "ProgramSpec",
    "UnrolledCG",
]
