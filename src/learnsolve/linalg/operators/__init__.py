"""Operators: :class:`LinearOperator` and its dense, matrix-free and sparse (:class:`SparseMatrix`, batched
CSR with O(nnz) gradients) forms, the canonical (B, n, k) layout of right-hand sides, input validation and
``as_operator``.
"""
