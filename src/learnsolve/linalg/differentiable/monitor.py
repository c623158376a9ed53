"""Diagnostics hooks of :func:`learnsolve.linalg.solve`: record every solve made inside a block, or run every
solve of a block with another backward mode. Used by training callbacks that check the gradient a model trains
with (the model's code stays unchanged)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

BACKWARD_MODES = ("implicit", "unrolled", "truncated", "stochastic")
_RECORDERS: list[SolveRecorder] = []
_OVERRIDES: list[dict] = []


@dataclass
class SolveRecorder:
    """The forward :class:`SolveInfo` of every solve made inside :func:`record_solves` (their ``adjoint`` is
    filled once backward ran)."""

    infos: list = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        """``solves``, ``fwd_iters`` / ``adjoint_iters`` (summed over solves, max over their systems),
        ``not_converged`` (systems, forward and adjoint)."""
        fwd = sum(i.niter for i in self.infos)
        adj = [i.adjoint for i in self.infos if i.adjoint is not None]
        bad = sum(int((~i.converged).sum()) for i in self.infos) + sum(int((~a.converged).sum()) for a in adj)
        return {"solves": len(self.infos), "fwd_iters": float(fwd),
                "adjoint_iters": float(sum(a.niter for a in adj)) if adj else float("nan"),
                "not_converged": float(bad)}


@contextlib.contextmanager
def record_solves() -> Iterator[SolveRecorder]:
    """``with record_solves() as rec: ...``: ``rec.infos`` lists the solves made in the block (nested blocks
    each see them)."""
    rec = SolveRecorder()
    _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        _RECORDERS.remove(rec)


@contextlib.contextmanager
def override_backward(mode: str, unroll_steps: int | None = None) -> Iterator[None]:
    """Every :func:`solve` inside the block differentiates with ``mode`` (and ``unroll_steps`` for
    "truncated"), whatever its caller asked; direct solves stay implicit."""
    if mode not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {mode!r}; choose one of {', '.join(BACKWARD_MODES)}")
    if mode == "truncated" and (unroll_steps is None or int(unroll_steps) < 1):
        raise ValueError("override_backward('truncated') needs unroll_steps >= 1")
    _OVERRIDES.append({"backward": mode, "unroll_steps": unroll_steps})
    try:
        yield
    finally:
        _OVERRIDES.pop()


def _overridden(backward: str, unroll_steps):
    if not _OVERRIDES:
        return backward, unroll_steps
    o = _OVERRIDES[-1]
    return o["backward"], o["unroll_steps"] if o["unroll_steps"] is not None else unroll_steps


def _record(info) -> None:
    for rec in _RECORDERS:
        rec.infos.append(info)
