"""Lightning training of learned solvers: LearnedSolverModule and train(cfg)."""

from .module import LearnedSolverModule

__all__ = ["LearnedSolverModule"]
