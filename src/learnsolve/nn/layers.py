"""Message passing on the graph of a sparse matrix."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing


def mlp(sizes: list[int], act: type[nn.Module] = nn.GELU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class SystemConv(MessagePassing):
    r"""Residual edge-conditioned convolution on the graph of A.

    .. math::
        m_i = \sum_{j \in N(i)} \phi([h_i, h_j, e_{ij}]), \qquad h_i' = h_i + \psi([h_i, m_i])

    with :math:`\phi, \psi` two-layer MLPs and :math:`e_{ij}` edge features (e.g. the normalised
    entry :math:`a_{ij}/\sqrt{a_{ii} a_{jj}}`). Shapes: ``h`` (N, C), ``edge_index`` (2, E),
    ``edge_attr`` (E, F) -> (N, C). Cost O(E C^2). Permutation equivariant.
    """

    def __init__(self, channels: int, edge_dim: int = 1):
        # target_to_source: node i = edge_index[0] (the row of a_ij) aggregates over its columns j
        super().__init__(aggr="add", flow="target_to_source")
        self.phi = mlp([2 * channels + edge_dim, channels, channels])
        self.psi = mlp([2 * channels, channels, channels])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in (*self.phi, *self.psi):
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        m = self.propagate(edge_index, h=h, edge_attr=edge_attr)
        return h + self.psi(torch.cat([h, m], dim=-1))

    def message(self, h_i: Tensor, h_j: Tensor, edge_attr: Tensor) -> Tensor:
        return self.phi(torch.cat([h_i, h_j, edge_attr], dim=-1))
