"""learnsolve: learned linear solvers and preconditioners on a differentiable sparse solve core."""

__version__ = "0.1.0"
