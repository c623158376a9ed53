"""Thread pools where torch and numpy's BLAS meet in one loop.

torch runs its kernels on its OpenMP pool; numpy and scipy run BLAS on OpenBLAS's own pool. When a Krylov loop in
torch applies a preconditioner that calls numpy BLAS every iteration (pyamg's V-cycle and its dense coarse solve,
:class:`learnsolve.linalg.AMG`), both pools want every core, and their idle workers spin against each other.
Measured on 2 cores, CG with pyamg's smoothed-aggregation V-cycle on a 256^2 i.i.d. lognormal system (19 iterations):
0.37-0.72 s through the torch loop, 0.15-0.16 s with scipy's CG; 0.16-0.17 s through the torch loop once OpenBLAS
is held to one thread for the solve (the BLAS calls inside a V-cycle are small: one thread loses nothing).

:func:`host_blas_single_threaded` holds numpy's BLAS pools to one thread for the duration of a block (about 60 us to
enter and leave), and is a no-op when torch itself runs on one thread (nothing to contend) or threadpoolctl is
absent. :func:`learnsolve.linalg.krylov` enters it for every solve whose preconditioner declares ``host_blas``
(every solve path: ``solve``, the Krylov functions, training and evaluation go through it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_CONTROLLER: list = []  # [threadpoolctl.ThreadpoolController | None], built on first use (it scans the libraries)


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
    """Hold numpy/scipy's BLAS thread pools to one thread inside the block (when ``enabled`` and torch uses more
    than one thread). torch's own pool is left as it is."""
    ctl = _controller() if enabled and torch.get_num_threads() > 1 else None
    if ctl is None:
        yield
        return
    with ctl.limit(limits=1, user_api="blas"):
        yield


def uses_host_blas(M) -> bool:
    """Whether the preconditioner ``M`` (a :class:`Preconditioner`, its bound ``apply``, or None) calls numpy BLAS
    per application (its class sets ``host_blas = True``)."""
    owner = getattr(M, "__self__", M)
    return bool(getattr(owner, "host_blas", False))


__all__ = ["host_blas_single_threaded", "uses_host_blas"]
