"""Batched CSR matrices with O(nnz) gradients.

A :class:`SparseMatrix` is a sparsity pattern (:class:`CSRPattern`: ``crow``, ``col``, ``row``, int32
where they fit, shared and cached between matrices with the same structure) plus values of shape
``(nnz,)`` or ``(B, nnz)`` (a batch of matrices sharing the pattern). A block-diagonal matrix from a
PyG batch is a single matrix that remembers its diagonal blocks (``blocks``), so that solvers treat
each block as an independent system.

SpMV ``Y = A X`` runs on torch's CSR kernels (MKL on CPU, cuSPARSE on CUDA). Its backward never
builds an n x n tensor:

    grad_values[e] = sum_k G[row[e], k] * X[col[e], k]         O(nnz k)
    grad_X         = A^T G   (through the cached transposed pattern and value permutation)

and it is itself differentiable, so double backward works.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .base import LinearOperator

_INT32_MAX = 2**31 - 1

# torch flags CSR as beta on every construction; we construct them internally and know.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


def _index_dtype(n: int, m: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(n, m, nnz) < _INT32_MAX else torch.int64


class CSRPattern:
    """An immutable CSR sparsity pattern (sorted, unique column indices in each row).

    Caches what is derived from the structure alone: per-entry row indices, the transposed pattern
    and the permutation mapping values to it, diagonal positions, triangular parts and the
    block-diagonal replication used for batched SpMV.
    """

    def __init__(self, crow: Tensor, col: Tensor, shape: tuple[int, int]):
        n, m = int(shape[0]), int(shape[1])
        idt = _index_dtype(n, m, int(col.numel()))
        self.crow = crow.to(idt).contiguous()
        self.col = col.to(idt).contiguous()
        self.shape = (n, m)
        counts = (self.crow[1:] - self.crow[:-1]).long()
        self.row = torch.repeat_interleave(torch.arange(n, device=crow.device, dtype=idt), counts)
        self._cache: dict = {}

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def device(self) -> torch.device:
        return self.crow.device

    def to(self, device) -> CSRPattern:
        if torch.device(device) == self.device:
            return self
        return CSRPattern(self.crow.to(device), self.col.to(device), self.shape)

    def transpose(self) -> tuple[CSRPattern, Tensor]:
        """(pattern of A^T, perm) with ``values_T = values[..., perm]``."""
        if "T" not in self._cache:
            n, m = self.shape
            key = self.col.long() * n + self.row.long()
            perm = torch.argsort(key, stable=True)
            counts = torch.bincount(self.col.long(), minlength=m)
            crow = torch.zeros(m + 1, dtype=torch.int64, device=self.device)
            crow[1:] = torch.cumsum(counts, 0)
            patT = CSRPattern(crow, self.row[perm], (m, n))
            patT._cache["T"] = (self, torch.argsort(perm))
            self._cache["T"] = (patT, perm)
        return self._cache["T"]

    def diag_positions(self) -> Tensor:
        """(min(n, m),) int64 position of each diagonal entry in the value array, -1 where absent."""
        if "diag" not in self._cache:
            d = min(self.shape)
            pos = torch.full((d,), -1, dtype=torch.int64, device=self.device)
            on = (self.row == self.col).nonzero().squeeze(1)
            pos[self.row[on].long()] = on
            self._cache["diag"] = pos
        return self._cache["diag"]

    def triangle(self, lower: bool, k: int = 0) -> tuple[CSRPattern, Tensor]:
        """(pattern of tril(A, k) or triu(A, k), index of its entries in A's value array)."""
        key = ("tril" if lower else "triu", k)
        if key not in self._cache:
            r, c = self.row.long(), self.col.long()
            keep = (c <= r + k) if lower else (c >= r + k)
            idx = keep.nonzero().squeeze(1)
            counts = torch.bincount(r[idx], minlength=self.shape[0])
            crow = torch.zeros(self.shape[0] + 1, dtype=torch.int64, device=self.device)
            crow[1:] = torch.cumsum(counts, 0)
            self._cache[key] = (CSRPattern(crow, self.col[idx], self.shape), idx)
        return self._cache[key]

    def replicated(self, B: int) -> tuple[Tensor, Tensor]:
        """crow/col of the block-diagonal (B n) x (B m) matrix with B copies of this pattern."""
        key = ("rep", B)
        if key not in self._cache:
            n, m = self.shape
            nnz = self.nnz
            idt = _index_dtype(B * n, B * m, B * nnz)
            off = torch.arange(B, device=self.device, dtype=torch.int64)
            crow = (self.crow[:-1].long().unsqueeze(0) + off.unsqueeze(1) * nnz).reshape(-1)
            crow = torch.cat([crow, torch.tensor([B * nnz], device=self.device)])
            col = (self.col.long().unsqueeze(0) + off.unsqueeze(1) * m).reshape(-1)
            self._cache[key] = (crow.to(idt), col.to(idt))
        return self._cache[key]

    def same_as(self, other: CSRPattern) -> bool:
        return self is other or (
            self.shape == other.shape and self.nnz == other.nnz
            and torch.equal(self.crow.long(), other.crow.long())
            and torch.equal(self.col.long(), other.col.long()))


def _check_scipy_indices(m) -> None:
    """ValueError for a scipy sparse matrix whose stored indices fall outside its shape (or whose index
    pointer is not monotone): scipy checks them on construction only, and its C++ conversions trust them."""
    try:
        if m.format in ("csr", "csc", "bsr"):
            m.check_format(full_check=True)
        elif m.format == "coo" and m.nnz:
            rc = (m.row, m.col) if hasattr(m, "row") else tuple(m.coords)
            if min(int(rc[0].min()), int(rc[1].min())) < 0 or int(rc[0].max()) >= m.shape[0] \
                    or int(rc[1].max()) >= m.shape[1]:
                raise ValueError(f"an index lies outside the shape {m.shape}")
    except ValueError as e:
        raise ValueError(f"malformed scipy sparse {m.format} matrix: {e}") from None


def values_version(v: Tensor) -> tuple:
    """Identity and in-place version of a values tensor: caches derived from it compare this key (inference
    tensors have no version counter; they are only writable inside inference_mode)."""
    return (id(v), v.data_ptr(), None if v.is_inference() else v._version)


def _torch_csr(pattern: CSRPattern, vals2d: Tensor) -> Tensor:
    """torch CSR tensor for (B, nnz) values: one matrix, or B copies on the block diagonal."""
    B = vals2d.shape[0]
    if B == 1:
        crow, col, size = pattern.crow, pattern.col, pattern.shape
    else:
        crow, col = pattern.replicated(B)
        size = (B * pattern.shape[0], B * pattern.shape[1])
    return torch.sparse_csr_tensor(crow, col, vals2d.reshape(-1), size, check_invariants=False)


def _spmm_raw(A: Tensor, B: int, shape: tuple[int, int], X: Tensor) -> Tensor:
    """Y = A X on canonical blocks; ``A`` is the torch CSR tensor of a (B, nnz) value batch."""
    n, m = shape
    Bx, _, k = X.shape
    if B == 1:
        if Bx == 1:
            if k == 1:
                return (A @ X.reshape(m)).reshape(1, n, 1)
            return (A @ X[0]).unsqueeze(0)
        X2 = X.permute(1, 0, 2).reshape(m, Bx * k)
        return (A @ X2).reshape(n, Bx, k).permute(1, 0, 2)
    if Bx == 1:
        X = X.expand(B, m, k)
    if k == 1:
        return (A @ X.reshape(B * m)).reshape(B, n, 1)
    return (A @ X.reshape(B * m, k)).reshape(B, n, k)


def edge_products(pattern: CSRPattern, U: Tensor, X: Tensor) -> Tensor:
    """``sum_k U[:, row, k] * X[:, col, k]`` of shape (max(Bu, Bx), nnz): d<U, A X>/d values."""
    if U.shape[2] == 1:
        return U[:, :, 0].index_select(1, pattern.row) * X[:, :, 0].index_select(1, pattern.col)
    return (U.index_select(1, pattern.row) * X.index_select(1, pattern.col)).sum(-1)


def _reduce_batch(g: Tensor, B: int) -> Tensor:
    return g if g.shape[0] == B else g.sum(0, keepdim=True)


class _SpMM(torch.autograd.Function):
    # forward/setup_context split: usable inside torch.func transforms (matrix-free vjp)
    @staticmethod
    def forward(mat: SparseMatrix, vals2d: Tensor, X: Tensor) -> Tensor:
        A = mat._csr() if vals2d is mat._vals2d else _torch_csr(mat.pattern, vals2d)
        return _spmm_raw(A, vals2d.shape[0], mat.shape, X)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mat, vals2d, X = inputs
        ctx.mat = mat
        ctx.save_for_backward(vals2d, X)

    @staticmethod
    def backward(ctx, G: Tensor):
        vals2d, X = ctx.saved_tensors
        mat: SparseMatrix = ctx.mat
        gv = gX = None
        if ctx.needs_input_grad[1]:
            gv = _reduce_batch(edge_products(mat.pattern, G, X), vals2d.shape[0])
        if ctx.needs_input_grad[2]:
            patT, perm = mat.pattern.transpose()
            matT = SparseMatrix(patT, vals2d.index_select(1, perm), blocks=mat.blocks)
            gX = _reduce_batch(matT.mv(G), X.shape[0])
        return None, gv, gX


class SparseMatrix(LinearOperator):
    """Batched CSR matrix: a :class:`CSRPattern` and values of shape (nnz,) or (B, nnz).

    Build with :meth:`from_coo`, :meth:`from_scipy`, :meth:`from_dense`, :meth:`from_torch`,
    :meth:`block_diag`, :meth:`from_edge_index` or :meth:`from_pyg`. ``A @ x`` accepts x of shape (m,),
    (m, k), (B, m) or (B, m, k). Values may require grad: the SpMV's gradient w.r.t. the values is
    ``g[row] * x[col]`` (O(nnz), never an n x n tensor), w.r.t. x a product with the cached transpose ``A.T``.
    A block-diagonal matrix (``blocks``: row offsets of the diagonal blocks, as built from a PyG batch) is
    solved as one independent system per block.

    Args:
        pattern: the shared CSR structure (row pointers, column indices, shape).
        values: the stored entries, one row per matrix of a batch.
        blocks: row offsets of diagonal blocks (length blocks + 1), or None.

    Raises:
        ValueError: values whose last dimension is not the pattern's nnz.

    Shapes:
        values: (nnz,) or (B, nnz); x: (m,), (m, k), (B, m) or (B, m, k); ``A @ x``: (n, ...) alike.
    """

    def __init__(self, pattern: CSRPattern, values: Tensor, blocks: Tensor | None = None):
        if values.ndim not in (1, 2) or values.shape[-1] != pattern.nnz:
            raise ValueError(
                f"values must have shape ({pattern.nnz},) or (B, {pattern.nnz}) for this pattern, "
                f"got {tuple(values.shape)}")
        if values.device != pattern.device:
            pattern = pattern.to(values.device)
        self.pattern = pattern
        self._values = values
        self.shape = pattern.shape
        self.batch_size = None if values.ndim == 1 else values.shape[0]
        self._blocks = blocks
        self._csr_cache: Tensor | None = None

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_coo(cls, row: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int] | int, *,
                 sum_duplicates: bool = True) -> SparseMatrix:
        """From COO triplets. Entries are sorted into CSR order; duplicates are summed (differentiably).

        Args:
            row: row index of each entry, (nnz_in,).
            col: column index of each entry, (nnz_in,).
            values: the entries, (nnz_in,) or (B, nnz_in); gradients flow back to them.
            shape: (n, m), or n for a square matrix.
            sum_duplicates: add repeated (row, col) entries; False raises on them instead.

        Returns:
            The matrix, with values (nnz,) or (B, nnz), nnz the number of distinct entries.

        Raises:
            ValueError: mismatched lengths, indices out of range, or duplicates with ``sum_duplicates=False``.
        """
        n, m = (shape, shape) if isinstance(shape, int) else (int(shape[0]), int(shape[1]))
        if n < 0 or m < 0:
            raise ValueError(f"shape must be non-negative, got ({n}, {m})")
        row = torch.as_tensor(row)
        col = torch.as_tensor(col)
        if row.ndim != 1 or col.ndim != 1 or row.numel() != col.numel():
            raise ValueError(f"row and col must be 1-D of equal length, got {tuple(row.shape)} and "
                             f"{tuple(col.shape)}")
        if any(t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool for t in (row, col)):
            raise TypeError(f"row and col must be integer index tensors, got {row.dtype} and {col.dtype} (a "
                            "float index such as 1.5 would be truncated)")
        if values.shape[-1] != row.numel() or values.ndim not in (1, 2):
            raise ValueError(f"values must have shape ({row.numel()},) or (B, {row.numel()}), "
                             f"got {tuple(values.shape)}")
        if (row.numel()
                and (int(row.min()) < 0 or int(row.max()) >= n or int(col.min()) < 0 or int(col.max()) >= m)):
            raise ValueError(f"row/col indices out of range for shape ({n}, {m})")
        row = row.to(values.device).long()
        col = col.to(values.device).long()
        key = row * m + col
        if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):
            uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
            if uniq.numel() != key.numel():
                if not sum_duplicates:
                    raise ValueError("duplicate (row, col) entries; pass sum_duplicates=True to add them")
                out = values.new_zeros(*values.shape[:-1], uniq.numel())
                values = out.index_add(values.ndim - 1, inv, values)
            else:
                values = values.index_select(values.ndim - 1, torch.argsort(key))
            key = uniq
        r, c = key // m, key % m
        crow = torch.zeros(n + 1, dtype=torch.int64, device=values.device)
        crow[1:] = torch.cumsum(torch.bincount(r, minlength=n), 0)
        return cls(CSRPattern(crow, c, (n, m)), values)

    @classmethod
    def from_scipy(cls, m, dtype: torch.dtype | None = None, device=None) -> SparseMatrix:
        """From a scipy.sparse matrix (any format; copied, duplicates summed, indices sorted).

        Args:
            m: the scipy sparse matrix (integer entries become float64).
            dtype: the values' dtype (default: the matrix's).
            device: the values' device (default: CPU).

        Raises:
            TypeError: ``m`` is not scipy sparse, or is complex.
        """
        import scipy.sparse as sp

        if not sp.issparse(m):
            raise TypeError(f"from_scipy expects a scipy.sparse matrix, got {type(m).__name__}")
        _check_scipy_indices(m)  # scipy's own conversions index memory with them unchecked
        csr = sp.csr_matrix(m, copy=True)
        csr.sum_duplicates()
        csr.sort_indices()
        if not np.issubdtype(csr.dtype, np.floating):
            if np.issubdtype(csr.dtype, np.complexfloating):
                raise TypeError("complex matrices are not supported")
            csr = csr.astype(np.float64)
        vals = torch.from_numpy(np.ascontiguousarray(csr.data))
        vals = vals.to(dtype=dtype or vals.dtype, device=device)
        pat = CSRPattern(torch.from_numpy(csr.indptr.astype(np.int64)),
                         torch.from_numpy(csr.indices.astype(np.int64)), csr.shape)
        return cls(pat.to(vals.device), vals)

    @classmethod
    def from_torch(cls, t: Tensor) -> SparseMatrix:
        """From a 2-D torch sparse CSR or COO tensor (values keep their autograd graph).

        Raises:
            TypeError: a strided (dense) or other layout; use :meth:`from_dense`.
            ValueError: a batched (3-D) sparse tensor.
        """
        if t.layout == torch.sparse_csr:
            if t.ndim != 2 or t.values().ndim != 1:
                raise ValueError("batched or hybrid torch CSR tensors: use SparseMatrix.from_coo with (B, "
                                 "nnz) values")
            n, m = t.shape
            crow, col = t.crow_indices().long(), t.col_indices().long()
            # torch builds CSR tensors without checking them: refuse what would index out of bounds
            if (crow.numel() != n + 1 or int(crow[0]) != 0 or int(crow[-1]) != col.numel()
                    or bool((crow[1:] < crow[:-1]).any()) or (col.numel() and (int(col.min()) < 0
                                                                               or int(col.max()) >= m))):
                raise ValueError(f"malformed torch CSR tensor of shape ({n}, {m}): crow_indices must rise "
                                 f"from 0 to nnz = {col.numel()} and col_indices lie in [0, {m})")
            row = torch.repeat_interleave(torch.arange(n, device=crow.device), crow[1:] - crow[:-1])
            key = row * m + col
            if key.numel() > 1 and not bool((key[1:] > key[:-1]).all()):  # unsorted or repeated columns
                return cls.from_coo(row, col, t.values(), (n, m))
            return cls(CSRPattern(crow, col, (n, m)), t.values())
        if t.layout == torch.sparse_coo:
            if t.sparse_dim() != 2 or t.dense_dim() != 0:
                raise ValueError("only 2-D torch sparse COO tensors are supported, got sparse_dim "
                                 f"{t.sparse_dim()} and dense_dim {t.dense_dim()}")
            i = t._indices()  # checked before coalesce(), which writes out of bounds on a bad index
            if (i.numel()
                    and (int(i.min()) < 0 or int(i[0].max()) >= t.shape[0] or int(i[1].max()) >= t.shape[1])):
                raise ValueError("torch sparse COO tensor has indices out of range for its shape "
                                 f"{tuple(t.shape)}")
            t = t.coalesce()
            i = t.indices()
            return cls.from_coo(i[0], i[1], t.values(), tuple(t.shape))
        raise TypeError(f"unsupported tensor layout {t.layout}")

    @classmethod
    def from_dense(cls, t: Tensor) -> SparseMatrix:
        """Pattern = nonzeros of ``t`` (union over the batch for (B, n, m)); values gathered differentiably.

        Args:
            t: dense (n, m) or (B, n, m) tensor.

        Raises:
            ValueError: ``t`` is not 2-D or 3-D.
        """
        if t.ndim not in (2, 3):
            raise ValueError(f"from_dense expects (n, m) or (B, n, m), got {tuple(t.shape)}")
        nzmask = (t != 0) if t.ndim == 2 else (t != 0).any(0)
        r, c = nzmask.nonzero(as_tuple=True)
        vals = t[..., r, c]
        return cls.from_coo(r, c, vals, tuple(t.shape[-2:]))

    @classmethod
    def block_diag(cls, mats: Sequence[SparseMatrix]) -> SparseMatrix:
        """One matrix with ``mats`` on the diagonal; solvers treat each block as its own system.

        Args:
            mats: square ``SparseMatrix`` blocks with equal batch sizes (blocks of blocks are flattened).

        Raises:
            ValueError: no blocks, non-square blocks or different batch sizes.
            TypeError: a block that is not a ``SparseMatrix``.
        """
        mats = list(mats)
        if not mats:
            raise ValueError("block_diag needs at least one matrix")
        if any(not isinstance(a, SparseMatrix) for a in mats):
            raise TypeError("block_diag expects SparseMatrix blocks")
        bs = {a.batch_size for a in mats}
        if len(bs) != 1:
            raise ValueError(f"all blocks must have the same batch size, got {sorted(map(str, bs))}")
        crows, cols, sizes = [], [], []
        nnz_off = 0
        col_off = 0
        row_off = 0
        for a in mats:
            if a.shape[0] != a.shape[1]:
                raise ValueError(f"block_diag blocks must be square, got {a.shape}")
            crows.append(a.pattern.crow[(1 if crows else 0):].long() + nnz_off)
            cols.append(a.pattern.col.long() + col_off)
            sub = a.blocks
            sizes.extend((sub[1:] - sub[:-1]).tolist() if sub is not None else [a.shape[0]])
            nnz_off += a.pattern.nnz
            col_off += a.shape[1]
            row_off += a.shape[0]
        pat = CSRPattern(torch.cat(crows), torch.cat(cols), (row_off, col_off))
        vals = torch.cat([a.values for a in mats], dim=-1)
        ptr = torch.zeros(len(sizes) + 1, dtype=torch.int64, device=vals.device)
        ptr[1:] = torch.cumsum(torch.tensor(sizes, device=vals.device), 0)
        return cls(pat, vals, blocks=ptr)

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, edge_attr: Tensor, num_nodes: int,
                        batch: Tensor | None = None) -> SparseMatrix:
        """A from a PyG graph: ``A[edge_index[0, e], edge_index[1, e]] = edge_attr[e]``.

        With ``batch`` (node -> graph, sorted as PyG makes it), the matrix is block diagonal and
        each graph is solved as an independent system.

        Args:
            edge_index: (2, nnz) row and column indices.
            edge_attr: (nnz,) or (nnz, 1) values.
            num_nodes: n.
            batch: (n,) graph index of each node, or None.

        Raises:
            ValueError: bad shapes, an unsorted ``batch``, or an edge between two graphs.
        """
        if edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, nnz), got {tuple(edge_index.shape)}")
        if edge_attr.ndim == 2 and edge_attr.shape[1] == 1:
            edge_attr = edge_attr.squeeze(1)
        if edge_attr.ndim != 1 or edge_attr.shape[0] != edge_index.shape[1]:
            raise ValueError(f"edge_attr must hold one value per edge: shape ({edge_index.shape[1]},), "
                             f"got {tuple(edge_attr.shape)}")
        A = cls.from_coo(edge_index[0], edge_index[1], edge_attr, (num_nodes, num_nodes))
        if batch is not None:
            batch = batch.to(edge_index.device).long()
            if batch.numel() != num_nodes:
                raise ValueError(f"batch has {batch.numel()} entries, expected num_nodes = {num_nodes}")
            if batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
                raise ValueError("batch must be sorted (nodes of each graph contiguous), as PyG batches are")
            if bool((batch[edge_index[0].long()] != batch[edge_index[1].long()]).any()):
                raise ValueError("an edge connects two different graphs of the batch")
            counts = torch.bincount(batch, minlength=int(batch.max()) + 1 if batch.numel() else 0)
            ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=batch.device)
            ptr[1:] = torch.cumsum(counts, 0)
            A._blocks = ptr
        return A

    @classmethod
    def from_pyg(cls, data) -> SparseMatrix:
        """A from a PyG ``Data``/``Batch`` (duck-typed: ``edge_index``, ``edge_attr``, ``num_nodes`` and,
        for a batch, ``batch``): the one bridge between the data layers and linalg."""
        return cls.from_edge_index(data.edge_index, data.edge_attr, int(data.num_nodes),
                                   getattr(data, "batch", None))

    # -- properties ----------------------------------------------------------------------------
    @property
    def values(self) -> Tensor:
        return self._values

    @property
    def _vals2d(self) -> Tensor:
        return self._values if self._values.ndim == 2 else self._values.unsqueeze(0)

    @property
    def dtype(self):
        return self._values.dtype

    @property
    def device(self):
        return self._values.device

    @property
    def nnz(self) -> int:
        return self.pattern.nnz

    @property
    def blocks(self) -> Tensor | None:
        return self._blocks

    def with_values(self, values: Tensor) -> SparseMatrix:
        """The same pattern (and blocks) with other values, (nnz,) or (B, nnz): how to make A's entries
        trainable."""
        return SparseMatrix(self.pattern, values, blocks=self._blocks)

    def to(self, *args, **kwargs) -> SparseMatrix:
        v = self._values.to(*args, **kwargs)
        blocks = None if self._blocks is None else self._blocks.to(v.device)
        return SparseMatrix(self.pattern.to(v.device), v, blocks=blocks)

    def detach(self) -> SparseMatrix:
        return self.with_values(self._values.detach())

    @property
    def T(self) -> SparseMatrix:
        patT, perm = self.pattern.transpose()
        out = SparseMatrix(patT, self._values.index_select(self._values.ndim - 1, perm), blocks=self._blocks)
        # the source and its values' version: an exactly symmetric source lends its kernel arrays to its
        # transpose
        out._transpose_of = (self, values_version(self._values))
        return out

    def diagonal(self) -> Tensor:
        pos = self.pattern.diag_positions()
        d = self._values.index_select(self._values.ndim - 1, pos.clamp_min(0))
        return torch.where(pos >= 0, d, torch.zeros((), dtype=d.dtype, device=d.device))

    def tril(self, k: int = 0) -> SparseMatrix:
        pat, idx = self.pattern.triangle(True, k)
        return SparseMatrix(pat, self._values.index_select(self._values.ndim - 1, idx), blocks=self._blocks)

    def triu(self, k: int = 0) -> SparseMatrix:
        pat, idx = self.pattern.triangle(False, k)
        return SparseMatrix(pat, self._values.index_select(self._values.ndim - 1, idx), blocks=self._blocks)

    def to_scipy(self, index: int | None = None):
        """scipy CSR copy (detached); for a batch, ``index`` selects the matrix."""
        import scipy.sparse as sp

        v = self._values
        if v.ndim == 2:
            if index is None:
                raise ValueError(f"this is a batch of {v.shape[0]} matrices: pass index=i to to_scipy")
            v = v[index]
        return sp.csr_matrix((v.detach().cpu().numpy(), self.pattern.col.cpu().numpy(),
                              self.pattern.crow.cpu().numpy()), shape=self.shape)

    def to_dense(self) -> Tensor:
        v2 = self._vals2d
        out = v2.new_zeros(v2.shape[0], *self.shape)
        b = torch.arange(v2.shape[0], device=v2.device).unsqueeze(1)
        out = out.index_put((b, self.pattern.row.long().unsqueeze(0),
                             self.pattern.col.long().unsqueeze(0)), v2)
        return out if self._values.ndim == 2 else out[0]

    def is_symmetric(self, rtol: float = 0.0) -> bool:
        if self.shape[0] != self.shape[1]:
            return False
        patT, perm = self.pattern.transpose()
        if not patT.same_as(self.pattern):
            return False
        v = self._vals2d.detach()
        vt = v.index_select(1, perm)
        return bool(((v - vt).abs() <= rtol * v.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)).all())

    # -- application ---------------------------------------------------------------------------
    def _csr(self) -> Tensor:
        if self._csr_cache is None:
            self._csr_cache = _torch_csr(self.pattern, self._vals2d)
        return self._csr_cache

    def mv(self, X: Tensor) -> Tensor:
        v2 = self._vals2d
        if torch.is_grad_enabled() and (v2.requires_grad or X.requires_grad):
            return _SpMM.apply(self, v2, X)
        return _spmm_raw(self._csr(), v2.shape[0], self.shape, X)

    # -- parameters ----------------------------------------------------------------------------
    def params(self):
        return (self._values,)

    def with_params(self, params):
        (v,) = params
        return self.with_values(v)

    def vjp_params(self, U, X):
        g = edge_products(self.pattern, U, X)
        if self._values.ndim == 1:
            return (g.sum(0),)
        return (g if g.shape[0] == self._values.shape[0] else g.sum(0, keepdim=True).expand_as(self._values),)

    def __repr__(self):
        b = "" if self.batch_size is None else f", batch={self.batch_size}"
        bl = "" if self._blocks is None else f", blocks={self._blocks.numel() - 1}"
        return f"SparseMatrix(shape={self.shape}, nnz={self.nnz}{b}{bl}, dtype={self.dtype})"
