"""Second derivatives through solves: Hessian-vector products by double backward.

``hvp(f, x, v, *args)`` returns ``H v`` with ``H`` the Hessian of the scalar ``f(x, *args)`` w.r.t. the
tensor ``x``: one backward pass with ``create_graph=True`` gives ``g(x) = df/dx`` as a differentiable
function of ``x``, a second backward pass of ``<g, v>`` gives ``H v``. Through
:func:`learnsolve.linalg.solve` (implicit mode, or ``method="direct"``) the first pass costs one adjoint
solve, the second two more solves (the transposed adjoint's own backward and the forward-sensitivity
solve), never an n x n matrix: for ``x`` = A's sparse values the cost is O(nnz) plus three solves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["hvp"]


def hvp(f: Callable[..., Tensor], x: Tensor, v: Tensor, *args) -> Tensor:
    """Hessian of the scalar ``f(x, *args)`` w.r.t. ``x``, applied to ``v`` (same shape as ``x``).

    ``x`` is detached from any graph it belongs to (the result is a plain tensor of ``x``'s shape);
    ``args`` are passed through unchanged. A part of ``f`` that is linear in ``x`` contributes zero.

    Solves inside ``f`` should use ``backward="implicit"`` (default) or ``method="direct"``: the double
    backward of ``backward="unrolled"`` differentiates the iterations twice, and once CG has converged
    that second derivative of the recorded steps is not the solution's (measured: see the Gradients page of
    the Benchmarks in the docs).

    Args:
        f: scalar function ``f(x, *args)``, differentiable in ``x`` (it may call :func:`solve`).
        x: the point, a floating-point tensor (e.g. a ``SparseMatrix``'s values).
        v: the direction, same shape, dtype and device as ``x``.
        *args: further arguments of ``f``, passed unchanged.

    Returns:
        ``H v``, shape of ``x``, detached. Cost through implicit solves: three solves plus O(nnz).

    Raises:
        TypeError: non-tensor, non-floating, or mismatched dtype / device of ``x`` and ``v``.
        ValueError: ``v``'s shape differs from ``x``'s, or ``f`` does not return a scalar depending on ``x``.

    Example:
        ```python
        import torch
        from learnsolve.linalg import SparseMatrix, hvp, solve

        A = SparseMatrix.from_dense(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
        b = torch.ones(2, dtype=torch.float64)
        f = lambda vals, b: solve(A.with_values(vals), b).square().sum()
        Hv = hvp(f, A.values, torch.ones_like(A.values), b)  # shape (nnz,)
        ```
    """
    if not isinstance(x, Tensor) or not isinstance(v, Tensor):
        raise TypeError(f"hvp: x and v must be tensors, got {type(x).__name__} and {type(v).__name__}")
    if v.shape != x.shape:
        raise ValueError(f"hvp: v has shape {tuple(v.shape)}, expected x's shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"hvp: x must be a floating-point tensor, got {x.dtype}")
    if v.dtype != x.dtype or v.device != x.device:
        raise TypeError(f"hvp: v ({v.dtype}, {v.device}) must match x ({x.dtype}, {x.device})")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(x, *args)
        if not isinstance(y, Tensor) or y.numel() != 1:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"hvp: f must return a scalar tensor, got {shape}")
        if not y.requires_grad:
            raise ValueError("hvp: f's result does not depend on x differentiably (no graph to x)")
        (g,) = torch.autograd.grad(y.reshape(()), x, create_graph=True, allow_unused=True)
        if g is None:
            raise ValueError("hvp: f's result does not depend on x (only on other tensors)")
        if not g.requires_grad:  # f is linear in x: the gradient is constant
            return torch.zeros_like(x)
        (Hv,) = torch.autograd.grad(g, x, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(x) if Hv is None else Hv.detach()
