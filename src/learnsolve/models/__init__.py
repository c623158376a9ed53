"""Learned solvers and preconditioners (plain nn.Modules) and their registry.

The contract every model follows (the training module, evaluation and export rely on it):

- class attributes ``kind`` ("solver": solves A x = b itself; "preconditioner": a linear SPD M^{-1}
  used in PCG; "surrogate": predicts solutions or trajectories) and ``requires_spd``;
- ``training_loss(batch) -> (loss, logs)`` on a PyG batch of systems (block-diagonal A);
- solvers and preconditioners: ``solve(batch, rtol, maxiter) -> (x, SolveInfo)`` with per-graph
  iteration counts; preconditioners also ``preconditioner(batch) -> linalg.Preconditioner``;
- surrogates: ``metrics(batch) -> dict`` of scalar tensors.

``conf/model/NAME.yaml`` builds a model with ``hydra.utils.instantiate`` and names its default data
family and monitored metric.
"""

from .gnn_solver import GNNSolver
from .lowrank_precond import LowRankPreconditioner
from .neural_if import NeuralIF
from .neural_ode import NeuralODE
from .physics_nn import PhysicsNN
from .unrolled_cg import UnrolledCG

MODELS = {
    "unrolled_cg": UnrolledCG,
    "lowrank_precond": LowRankPreconditioner,
    "neural_if": NeuralIF,
    "gnn_solver": GNNSolver,
    "physics_nn": PhysicsNN,
    "neural_ode": NeuralODE,
}

__all__ = ["MODELS", "GNNSolver", "LowRankPreconditioner", "NeuralIF", "NeuralODE", "PhysicsNN", "UnrolledCG"]
