"""Lightning training of learned solvers: the DataModule, LearnedSolverModule and train(cfg)."""

from .datamodule import LinearSystemDataModule
from .module import LearnedSolverModule

__all__ = ["LearnedSolverModule", "LinearSystemDataModule"]
