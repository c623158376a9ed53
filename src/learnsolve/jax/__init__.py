"""learnsolve for JAX: ``learnsolve.jax.solve``, a differentiable sparse linear solve (``jax.custom_vjp``).

Forward: JAX-native Krylov loops (``lax.while_loop``; jit, vmap, any device) or, with ``backend="torch"``, the
torch core through ``jax.pure_callback`` (compiled CPU kernels, IC(0) / ILU(0) / AMG). Backward: one adjoint
solve with A^T and the transposed preconditioner; gradients w.r.t. a BCOO's data in O(nnz). Float64 needs
``jax.config.update("jax_enable_x64", True)``.
"""

from ._solve import SolveInfo, solve

__all__ = ["SolveInfo", "solve"]
