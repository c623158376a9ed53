"""Input checks shared by solve() and the Krylov entry points."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .base import DenseOperator, LinearOperator
from .sparse import SparseMatrix

SOLVABLE_DTYPES = (torch.float32, torch.float64)


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
    if op.dtype not in SOLVABLE_DTYPES:
        raise TypeError(f"A and b are {op.dtype}: solves run in float32 or float64 (half precision has no "
                        "sparse, factorisation or compiled kernels and cannot hold the Krylov recurrences); "
                        "cast both with .float() or .double()")
    if b.device != op.device:
        raise ValueError(f"device mismatch: A is on {op.device}, b is on {b.device}; move one of them")
    if b.device.type == "meta":
        raise ValueError("A and b are meta tensors (a shape without values): a solve needs data; build "
                         "them on 'cpu' or 'cuda'")
    if isinstance(op, SparseMatrix):
        if op.nnz == 0:
            raise ValueError(f"A ({n} x {n}) has no stored entries: the zero matrix is singular")
        vals = op.values
    elif isinstance(op, DenseOperator):
        vals = op.A
    else:
        vals = None
    if vals is not None and vals.numel():
        lo, hi = torch.aminmax(vals.detach())  # one pass: NaN/Inf, and the zero matrix
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError("A contains NaN or Inf")
        if float(lo) == 0.0 == float(hi):
            every = "" if op.batch_size is None else f", all {op.batch_size} of the batch"
            raise ValueError(f"A is the zero matrix ({n} x {n}{every}): it is singular")
    if not _all_finite(b):
        raise ValueError("b contains NaN or Inf")


def _real(value, name: str) -> float:
    """``float(value)`` for a real number (a Python/numpy real or a one-element real tensor); TypeError naming
    ``name`` otherwise (a bool, a string, None, a complex number)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(value, Tensor):
        ok = value.numel() == 1 and not (value.dtype.is_complex or value.dtype == torch.bool)
    if not ok:
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    return float(value)


def validate_tolerances(rtol: float | None, atol: float, prefix: str = "") -> None:
    """ValueError unless 0 <= rtol < 1 (None: the default) and atol >= 0, both finite: rtol >= 1 would accept
    x = 0 as converged; TypeError for a value that is not a real number. ``prefix`` names whose tolerances
    they are in the message (``"adjoint "``)."""
    if rtol is not None and not (math.isfinite(r := _real(rtol, f"{prefix}rtol")) and 0.0 <= r < 1.0):
        raise ValueError(f"{prefix}rtol must lie in [0, 1) (a relative residual reduction; rtol >= 1 accepts "
                         f"x = 0), got {rtol!r}")
    if atol is not None or not prefix:  # an adjoint's atol may be None (the forward's)
        a = _real(atol, f"{prefix}atol")
        if not (math.isfinite(a) and a >= 0.0):
            raise ValueError(f"{prefix}atol must be a finite number >= 0, got {atol!r}")


MAXITER_CAP = 2**62  # larger caps mean "no cap": the compiled kernels count iterations in int64


def validate_count(value, name: str, minimum: int, cap: int | None = None,
                   optional: bool = True) -> int | None:
    """An iteration count or size option as an int >= ``minimum`` (None passes through when ``optional``); an
    integral float (``1e4``) is accepted, ``cap`` bounds the result. TypeError / ValueError naming ``name``
    otherwise."""
    if value is None and optional:
        return None
    if (isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex
            and value.dtype != torch.bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type "
                        f"{type(value).__name__}")
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value if cap is None else min(value, cap)


def validate_x0(x0, b: Tensor) -> None:
    """x0 like b: a tensor of b's shape, dtype and device, without NaN/Inf."""
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor shaped like b, got {type(x0).__name__}")
    if x0.shape != b.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, expected b's shape {tuple(b.shape)}")
    if x0.dtype != b.dtype or x0.device != b.device:
        raise TypeError(f"x0 is {x0.dtype} on {x0.device}, b is {b.dtype} on {b.device}; cast x0 with "
                        "x0.to(b)")
    if not _all_finite(x0):
        raise ValueError("x0 contains NaN or Inf")
