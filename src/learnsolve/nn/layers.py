"""Message passing on the graph of a sparse matrix."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(sizes: list[int], act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _functional() -> bool:
    """True where the per-edge steps must be out of place: autograd records them, or a program is being traced
    (torch.export / TorchScript: buffer reuse would put data-dependent shape checks into the program)."""
    return (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting())


def edge_workspace(h: Tensor, num_edges: int, channels: int) -> tuple[Tensor, Tensor] | None:
    """Two (E, C) buffers that :func:`pair_hidden` reuses in inference (None where it works out of place)."""
    if _functional():
        return None
    return (h.new_empty(num_edges, channels), h.new_empty(num_edges, channels))


def pair_hidden(first: nn.Linear, act: nn.Module, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor,
                work: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``act(first(cat([h[row], h[col], edge_attr], -1)))``, (E, C_out), without forming the (E, 2C + F)
    concatenation: ``first``'s weight is split as ``W_a h_i + W_b h_j + W_c e`` (two node-level products and
    two gathers).

    Without autograd (inference) every per-edge step is done in place, in ``work`` (:func:`edge_workspace`;
    the result is then a view of ``work[0]``, valid until the next call) or in one fresh buffer: on one core a
    fresh 21 MB tensor per elementwise step cost as much as the arithmetic (page faults: an add of two
    (327680, 16) float32 tensors took 5.9 ms out of place and 0.8 ms in place).
    """
    C = h.shape[-1]
    W = first.weight
    # contiguous: fast gathers and broadcasts (a strided (1, Co) factor took addcmul's slow path: 3 ms
    # instead of 0.6)
    a, b, Wc = h @ W[:, :C].T, h @ W[:, C:2 * C].T, W[:, 2 * C:].T.contiguous()
    if _functional():  # the same operations in the same order as below, out of place: bitwise the same result
        pre = a.index_select(0, row) + b.index_select(0, col) + first.bias
        pre = (torch.addcmul(pre, edge_attr, Wc) if edge_attr.shape[-1] == 1
               else torch.addmm(pre, edge_attr, Wc))
        return act(pre)
    E, Co = row.shape[0], a.shape[1]
    if work is None or work[0].shape[0] < E or work[0].shape[1] != Co:
        work = (h.new_empty(E, Co), h.new_empty(E, Co))
    pre = torch.index_select(a, 0, row, out=work[0][:E])
    pre.add_(torch.index_select(b, 0, col, out=work[1][:E])).add_(first.bias)
    if edge_attr.shape[-1] == 1:
        pre.addcmul_(edge_attr, Wc)
    else:
        pre.addmm_(edge_attr, Wc)
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return torch.ops.aten.gelu_(pre)
    return act(pre)


class SystemConv(nn.Module):
    r"""Residual edge-conditioned convolution on the graph of A.

    .. math::
        m_i = \sum_{j \in N(i)} \phi([h_i, h_j, e_{ij}]), \qquad h_i' = h_i + \psi([h_i, m_i])

    with :math:`\phi, \psi` two-layer MLPs and :math:`e_{ij}` edge features (e.g. the normalised
    entry :math:`a_{ij}/\sqrt{a_{ii} a_{jj}}`). Shapes: ``h`` (N, C), ``edge_index`` (2, E) (row i = the node
    that aggregates, column j = its neighbour), ``edge_attr`` (E, F) -> (N, C). Permutation equivariant.

    Computed without the (E, 2C + F) concatenation (:func:`pair_hidden`), and :math:`\phi`'s linear second
    layer is applied after the sum over neighbours, :math:`\sum_j (W_2 a_{ij} + b_2) = W_2 \sum_j a_{ij} +
    \deg_i b_2`: same parameters and result as the per-edge form (:meth:`message_reference`), O(E C) per layer
    instead of O(E C^2).
    """

    def __init__(self, channels: int, edge_dim: int = 1, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.channels, self.edge_dim = int(channels), int(edge_dim)
        self.phi = mlp([2 * channels + edge_dim, channels, channels], act)
        self.psi = mlp([2 * channels, channels, channels], act)

    def reset_parameters(self) -> None:
        for m in (*self.phi, *self.psi):
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor,
                work: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``work``: optional (E, C) buffers from :func:`edge_workspace`, shared by the layers of a
        forward."""
        row, col = edge_index[0], edge_index[1]
        act = pair_hidden(self.phi[0], self.phi[1], h, row, col, edge_attr, work)  # (E, C)
        s = h.new_zeros(h.shape[0], self.channels).index_add(0, row, act)
        second = self.phi[2]
        # (torch.bincount would give the program a data-dependent size: torch.export warns about unbacked
        # symbols)
        deg = h.new_zeros(h.shape[0]).index_add(0, row, h.new_ones(row.shape[0]))
        m = torch.addmm(deg.unsqueeze(-1) * second.bias, s, second.weight.T)
        return h + self.psi(torch.cat([h, m], dim=-1))

    def message_reference(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """The per-edge form, O(E C^2) (for tests): h + psi([h, sum_j phi([h_i, h_j, e_ij])])."""
        row, col = edge_index[0], edge_index[1]
        msg = self.phi(torch.cat([h[row], h[col], edge_attr], dim=-1))
        m = h.new_zeros(h.shape[0], self.channels).index_add(0, row, msg)
        return h + self.psi(torch.cat([h, m], dim=-1))
