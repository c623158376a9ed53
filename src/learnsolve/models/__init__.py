"""Learned solvers and preconditioners (plain nn.Modules) and their registry.

Each model provides ``training_loss(batch) -> (loss, logs)`` and ``solve(batch, rtol, maxiter) ->
(x, SolveInfo)``; ``conf/model/NAME.yaml`` builds it with ``hydra.utils.instantiate``.
"""

from .gnn_solver import GNNSolver

MODELS = {"gnn_solver": GNNSolver}

__all__ = ["MODELS", "GNNSolver"]
