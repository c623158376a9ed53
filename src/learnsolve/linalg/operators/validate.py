"""Input checks shared by solve() and the Krylov entry points."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DenseOperator, LinearOperator
from .sparse import SparseMatrix


def _all_finite(t: Tensor) -> bool:
    """No NaN/Inf in t: one reduction pass (min and max propagate NaN and expose +-Inf), where
    ``isfinite(t).all()`` makes several passes with temporaries the size of t."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def validate_system(op: LinearOperator, b: Tensor) -> None:
    """Clear errors for systems that cannot be solved (shape, dtype, device, NaN/Inf, empty)."""
    n, m = op.shape
    if n != m:
        raise ValueError(f"A must be square, got shape {op.shape}")
    if n == 0:
        raise ValueError("A is an empty (0 x 0) system")
    if not isinstance(b, Tensor):
        raise TypeError(f"b must be a torch.Tensor, got {type(b).__name__}")
    if not (b.dtype.is_floating_point and op.dtype.is_floating_point):
        raise TypeError(f"A and b must be floating point, got A {op.dtype} and b {b.dtype}")
    if b.dtype != op.dtype:
        raise TypeError(f"dtype mismatch: A is {op.dtype}, b is {b.dtype}; cast one (e.g. b.to(A.dtype))")
    if b.device != op.device:
        raise ValueError(f"device mismatch: A is on {op.device}, b is on {b.device}; move one of them")
    if isinstance(op, SparseMatrix):
        vals = op.values
    elif isinstance(op, DenseOperator):
        vals = op.A
    else:
        vals = None
    if vals is not None and not _all_finite(vals):
        raise ValueError("A contains NaN or Inf")
    if not _all_finite(b):
        raise ValueError("b contains NaN or Inf")


def validate_tolerances(rtol: float | None, atol: float) -> None:
    """ValueError unless 0 <= rtol < 1 (None: the default) and atol >= 0, both finite: rtol >= 1 would accept
    x = 0 as converged."""
    import math

    if rtol is not None and not (math.isfinite(float(rtol)) and 0.0 <= float(rtol) < 1.0):
        raise ValueError(f"rtol must lie in [0, 1) (a relative residual reduction; rtol >= 1 accepts x = 0), got "
                         f"{rtol!r}")
    if not (math.isfinite(float(atol)) and float(atol) >= 0.0):
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
