"""SystemConv and pair_hidden against the per-edge form, and linalg's per-system reductions (Reducer, block_sum,
LowRankDiagonal on one block) against plain sums and dense inverses: the fast paths (node-level split of the first
layer, in-place inference buffers, segment_reduce, leading-axis index_add) must give the reference's numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnsolve.linalg.operators.layout import Reducer
from learnsolve.nn.layers import SystemConv, edge_workspace, mlp, pair_hidden


@pytest.mark.parametrize("edge_dim", [1, 3])
def test_system_conv_matches_the_per_edge_form_with_and_without_autograd(edge_dim):
    torch.manual_seed(0)
    conv = SystemConv(8, edge_dim).double()
    N, E = 40, 260
    ei = torch.randint(0, N, (2, E))
    h, e = torch.randn(N, 8, dtype=torch.float64), torch.randn(E, edge_dim, dtype=torch.float64)
    ref = conv.message_reference(h, ei, e)
    # an independent reference: the per-edge MLP written out
    phi = conv.phi
    msg = phi[2](torch.nn.functional.gelu(phi[0](torch.cat([h[ei[0]], h[ei[1]], e], -1))))
    m = torch.zeros(N, 8, dtype=torch.float64)
    for k in range(E):
        m[ei[0, k]] += msg[k]
    torch.testing.assert_close(ref, h + conv.psi(torch.cat([h, m], -1)))
    torch.testing.assert_close(conv(h, ei, e), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        work = edge_workspace(h, E, 8)
        assert work is not None and work[0].shape == (E, 8)
        fast = conv(h, ei, e, work)
        again = conv(h, ei, e, work)  # the reused buffers do not leak between calls
    assert torch.equal(fast, conv(h, ei, e).detach())  # bitwise: same operations in the same order
    assert torch.equal(fast, again)


def test_pair_hidden_gradients_match_the_concatenated_mlp():
    torch.manual_seed(1)
    head = mlp([2 * 5 + 2, 5, 1]).double()
    h = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    row, col = torch.randint(0, 12, (30,)), torch.randint(0, 12, (30,))
    e = torch.randn(30, 2, dtype=torch.float64)
    out = head[2](pair_hidden(head[0], head[1], h, row, col, e))
    ref = head(torch.cat([h[row], h[col], e], -1))
    torch.testing.assert_close(out, ref)
    g1 = torch.autograd.grad(out.sum(), [h, *head.parameters()])
    g2 = torch.autograd.grad(ref.sum(), [h, *head.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert edge_workspace(h, 30, 5) is None  # autograd on: nothing is reused
    with torch.no_grad():
        torch.testing.assert_close(head[2](pair_hidden(head[0], nn.ReLU(), h, row, col, e)),
                                   head[2](torch.relu(head[0](torch.cat([h[row], h[col], e], -1)))))


@pytest.mark.parametrize("sizes", [[7], [3, 0, 5, 1]])
def test_reducer_dot_and_expand_against_plain_sums(sizes):
    torch.manual_seed(2)
    seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    red = Reducer(seg, len(sizes))
    n = sum(sizes)
    u = torch.randn(2, n, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, n, 3, dtype=torch.float64)
    ref = torch.stack([(u[:, seg == g] * v[:, seg == g]).sum(1) for g in range(len(sizes))], 1)
    torch.testing.assert_close(red.dot(u, v), ref)  # autograd: the index_add path
    with torch.no_grad():
        torch.testing.assert_close(red.dot(u, v), ref)  # segment_reduce path
    torch.autograd.gradcheck(lambda x: red.dot(x, v), (u,))
    torch.autograd.gradgradcheck(lambda x: red.dot(x, x), (u,))
    s = torch.randn(2, len(sizes), 3, dtype=torch.float64)
    torch.testing.assert_close(red.expand(s).expand(2, n, 3), s[:, seg])
    norms = torch.stack([torch.linalg.vector_norm(u[:, seg == g], dim=1) for g in range(len(sizes))], 1)
    torch.testing.assert_close(red.norm(u), norms)


def test_block_sum_with_unsorted_blocks_and_the_single_block_lowrank_path():
    from learnsolve.linalg import LowRankDiagonal
    from learnsolve.linalg.operators.layout import block_sum

    torch.manual_seed(3)
    seg = torch.tensor([2, 0, 1, 0, 2, 2, 1])  # not contiguous: the index_add path
    X = torch.randn(2, 7, 3, 2, dtype=torch.float64, requires_grad=True)
    ref = torch.stack([X[:, seg == g].sum(1) for g in range(3)], 1)
    torch.testing.assert_close(block_sum(X, seg, 3), ref)
    torch.autograd.gradgradcheck(lambda x: block_sum(x * x, seg, 3), (X,))
    # a segment with one block is the plain (no-segment) Woodbury path, with M^-1 equal to the dense inverse
    D = torch.rand(9, dtype=torch.float64) + 1
    U = torch.randn(9, 2, dtype=torch.float64)
    M1 = LowRankDiagonal(D, U, segment=torch.zeros(9, dtype=torch.long))
    assert M1.segment is None and M1.C.shape == (1, 1, 2, 2)
    R = torch.randn(1, 9, 2, dtype=torch.float64)
    dense = torch.linalg.inv(torch.diag(D) + U @ U.T)
    torch.testing.assert_close(M1.apply(R), (dense @ R[0]).unsqueeze(0))
