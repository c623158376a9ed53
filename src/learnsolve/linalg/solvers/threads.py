"""Thread pools where torch and numpy's BLAS meet in one loop.

torch runs its kernels on its OpenMP pool; numpy and scipy run BLAS on OpenBLAS's own pool. When a Krylov loop
in torch applies a preconditioner that runs serial host code every iteration (pyamg's V-cycle: C++ relaxation
sweeps and small numpy BLAS calls, :class:`learnsolve.linalg.AMG`), both pools want every core, and their idle
workers spin against each other and against the serial cycle. Measured on 2 cores, CG with pyamg's
smoothed-aggregation V-cycle on a 256^2 i.i.d. lognormal system (19 iterations): 0.37-0.72 s through the torch
loop, 0.15-0.16 s with scipy's CG; 0.16-0.17 s through the torch loop once OpenBLAS is held to one thread for
the solve. With another process busy on the machine, holding OpenBLAS alone left the torch loop at 1.26-1.38x
scipy's time on the four hard families at 256^2 (torch's workers spin between its small vector kernels while
the serial cycle waits for the core); holding torch's pool to one thread as well removes that: the vector work
of such an iteration is a few percent of the cycle.

:func:`host_blas_single_threaded` holds numpy's BLAS pools and torch's intra-op pool to one thread for the
duration of a block (about 60 us to enter and leave), and is a no-op when torch itself runs on one thread
(nothing to contend). The Krylov driver (``learnsolve.linalg.solvers.krylov._run_method``) enters it for every
solve whose preconditioner declares ``host_blas`` (every solve path: ``solve``, the Krylov functions, training
and evaluation go through it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

# [threadpoolctl.ThreadpoolController | None], built on first use (it scans the libraries)
_CONTROLLER: list = []


def _controller():
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
            _CONTROLLER.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 -- no threadpoolctl, or a library it cannot inspect: do nothing
            _CONTROLLER.append(None)
    return _CONTROLLER[0]


@contextlib.contextmanager
def host_blas_single_threaded(enabled: bool = True) -> Iterator[None]:
    """Hold numpy/scipy's BLAS thread pools and torch's intra-op pool to one thread inside the block (when
    ``enabled`` and torch uses more than one thread); both are restored on exit. Without threadpoolctl only
    torch's pool is held."""
    threads = torch.get_num_threads()
    if not enabled or threads <= 1:
        yield
        return
    ctl = _controller()
    torch.set_num_threads(1)
    try:
        if ctl is None:
            yield
        else:
            with ctl.limit(limits=1, user_api="blas"):
                yield
    finally:
        torch.set_num_threads(threads)


def uses_host_blas(M) -> bool:
    """Whether the preconditioner ``M`` (a :class:`Preconditioner`, its bound ``apply``, or None) calls numpy
    BLAS per application (its class sets ``host_blas = True``)."""
    owner = getattr(M, "__self__", M)
    return bool(getattr(owner, "host_blas", False))


def host_threads_for_preconditioner(run):
    """Decorator of a Krylov driver ``run(method, op, B, M, ...)``: the call runs inside
    :func:`host_blas_single_threaded` when its preconditioner ``M`` (4th argument) :func:`uses_host_blas`."""
    @functools.wraps(run)
    def wrapped(method, op, B, M, *args, **kwargs):
        with host_blas_single_threaded(uses_host_blas(M)):
            return run(method, op, B, M, *args, **kwargs)
    return wrapped


__all__ = ["host_blas_single_threaded", "host_threads_for_preconditioner", "uses_host_blas"]
