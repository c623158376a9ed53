"""learnsolve for TensorFlow: ``learnsolve.tensorflow.solve``, a differentiable sparse linear solve
(``tf.custom_gradient``; eager and ``tf.function``), with the torch core doing the solves on the host."""

from ._solve import SolveInfo, solve

__all__ = ["SolveInfo", "solve"]
