"""Canonical vector layout and per-system reductions.

Every solver in :mod:`learnsolve.linalg` works on right-hand-side blocks of shape ``(B, n, k)``:
``B`` independent matrices (a batch sharing one sparsity pattern, or 1), ``n`` unknowns and ``k``
right-hand sides per matrix. A block-diagonal matrix assembled from a PyG batch is one matrix
(``B = 1``) made of ``G`` independent diagonal blocks; the solvers treat every block as its own
system, so Krylov scalars (step lengths, residual norms, convergence flags) have shape
``(B, G, k)`` everywhere. :class:`Reducer` computes those per-system inner products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def block_sum(X: Tensor, segment: Tensor, G: int, lengths: Tensor | None = None) -> Tensor:
    """Sum the rows of each block: (B, n, *rest) -> (B, G, *rest), row i into block ``segment[i]``.

    ``lengths`` (G,): the block sizes when the blocks are contiguous and in order (rows of block g before
    those of block g + 1); then, where no gradient is recorded, ``torch.segment_reduce`` (it has no double
    backward). Otherwise ``index_add`` along the LEADING axis (differentiable twice). Measured on one core (n
    = 65536, float64): ``index_add`` along the middle axis of a (1, n, 1) block took 2.5 ms,
    ``segment_reduce`` 0.06 ms, the leading-axis ``index_add`` 0.2 ms.
    """
    Xt = X.movedim(1, 0)  # (n, B, *rest)
    if lengths is not None and not (torch.is_grad_enabled() and X.requires_grad):
        return torch.segment_reduce(Xt, "sum", lengths=lengths, axis=0).movedim(0, 1)
    return Xt.new_zeros(G, *Xt.shape[1:]).index_add(0, segment, Xt.contiguous()).movedim(0, 1)


class Reducer:
    """Per-system inner products over the ``n`` axis of ``(B, n, k)`` blocks.

    ``segment`` (n,) int64 maps each row to its diagonal block (``None``: one block); the blocks are
    contiguous and in order (rows of block g come before those of block g + 1), as in a PyG batch. Scalars
    returned by :meth:`dot` have shape ``(B, G, k)``; :meth:`expand` broadcasts them back to rows.

    Cost: one pass over the vectors (:func:`block_sum`); one block is a plain dot product.
    """

    def __init__(self, segment: Tensor | None = None, num_segments: int = 1):
        self.segment = segment
        self.G = 1 if segment is None else int(num_segments)
        self.lengths = None if segment is None else torch.bincount(segment, minlength=self.G)

    def dot(self, u: Tensor, v: Tensor) -> Tensor:
        if self.G == 1:
            if u.shape[0] == 1 and u.shape[2] == 1 and v.shape == u.shape:
                return torch.dot(u.reshape(-1), v.reshape(-1)).reshape(1, 1, 1)
            return (u * v).sum(1, keepdim=True)
        return block_sum(u * v, self.segment, self.G, self.lengths)

    def norm(self, u: Tensor) -> Tensor:
        if self.G == 1:
            return torch.linalg.vector_norm(u, dim=1, keepdim=True)
        return self.dot(u, u).clamp_min(0).sqrt()

    def expand(self, s: Tensor) -> Tensor:
        """(B, G, k) -> something broadcastable against (B, n, k)."""
        if self.G == 1:
            return s
        return s[:, self.segment]


@dataclass
class Layout:
    """How a user's right-hand side maps to the canonical ``(B, n, k)`` block and back."""

    shape: tuple[int, ...]  # the user's b shape (or the broadcast output shape)
    batched: bool  # a leading batch axis is present in the user's shape
    vector: bool  # no trailing k axis in the user's shape
    blocks: int | None  # number of diagonal blocks (PyG batch) or None

    def unpack(self, X: Tensor) -> Tensor:
        return X.reshape(self.shape)

    def system_shape(self, B: int, G: int, k: int) -> tuple[int, ...]:
        """Shape of per-system quantities (convergence flags, iterations) for the user."""
        shp: list[int] = []
        if self.batched:
            shp.append(B)
        if self.blocks is not None:
            shp.append(G)
        if not self.vector:
            shp.append(k)
        return tuple(shp)


def canonicalize(b: Tensor, n: int, op_batch: int | None, blocks: int | None, name: str = "b"):
    """Return ``(X, layout)`` with ``X`` of shape (B, n, k) following torch.linalg.solve's rules.

    Unbatched operator: ``(n,)`` vector, ``(n, k)`` matrix, ``(B, n, k)`` a batch of matrices sharing A.
    Operator with batch ``B``: ``(B, n)`` one vector per system, ``(B, n, k)``, or ``(n,)`` shared by all.
    """
    if not isinstance(b, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    shp = tuple(b.shape)
    expect = (
        f"(n,), (n, k) or (B, n, k) with n = {n}"
        if op_batch is None
        else f"({op_batch}, {n}), ({op_batch}, {n}, k) or ({n},) for a batch of {op_batch} matrices"
    )
    if op_batch is None:
        if b.ndim == 1 and shp[0] == n:
            return b.reshape(1, n, 1), Layout(shp, False, True, blocks)
        if b.ndim == 2 and shp[0] == n:
            return b.unsqueeze(0), Layout(shp, False, False, blocks)
        if b.ndim == 3 and shp[1] == n:
            return b, Layout(shp, True, False, blocks)
    else:
        if b.ndim == 1 and shp[0] == n:
            X = b.reshape(1, n, 1).expand(op_batch, n, 1)
            return X, Layout((op_batch, n), True, True, blocks)
        if b.ndim == 2 and shp == (op_batch, n):
            return b.unsqueeze(-1), Layout(shp, True, True, blocks)
        if b.ndim == 3 and shp[0] == op_batch and shp[1] == n:
            return b, Layout(shp, True, False, blocks)
    raise ValueError(f"{name} has shape {shp}, expected {expect}")
