"""``physics_nn``: learn the discretisation A(theta), b(theta) from solution data, through a linear solve.

A network maps problem features (the cell coefficient k, the geometry of the graph) to the coefficients
that ASSEMBLE a sparse matrix on the stencil of the data's A (its graph: off-diagonal entries = the edges
of ``edge_index``, diagonal = its self-loops) and a right-hand side; the prediction is the solution

    x(theta) = A(theta)^{-1} b(theta)

computed by ``learnsolve.linalg.solve`` (Jacobi-PCG, float64, implicit differentiation: one adjoint solve
per backward pass, memory O(nnz) whatever the iteration count). The loss is the mean over the graphs of
the batch of ||x(theta) - x_ref||^2 / ||x_ref||^2 with x_ref = ``batch.x``. The data's matrix values
(``edge_attr``) are never an input: the model must learn them from k and the solutions.

Sparse variant (default; cell-centred finite volumes are the target). For an edge (i, j) of the graph,
with d_ij = |pos_i - pos_j| and h_g the mean edge length of graph g,

    s_ij   = softplus(phi([log k_i, log k_j, log(d_ij / h_g)]))                      (edge MLP)
    t_ij   = sqrt(k_i k_j) / d_ij^2 * (s_ij + s_ji) / 2        > 0, symmetric         (transmissibility)
    beta_i = k_i / h_i^2 * softplus(g([log k_i, 2 dim - deg_i, min(dist_i / h_g, 3), log(h_i / h_g)]))
    a_ij   = -t_ij,   a_ii = sum_j t_ij + beta_i + eps * mean_g(sum_j t_ij + beta_i)
    b(theta)_i = b_i * exp(c(same node features))                                   (c: output zero-init)

with deg_i the number of neighbours of i, h_i its mean distance to them, dist_i the distance of pos_i to
the bounding box of its graph's positions (0 on boundary cells) and dim = pos.shape[1]. The prefactors
are dimensional analysis, not the answer: the finite-volume truth (``_fv_diffusion`` in
``learnsolve.data.generators.structured``) is t_ij = 2 k_i k_j / (k_i + k_j) / h^2, i.e.
(s_ij + s_ji)/2 = 1 / cosh((log k_i - log k_j) / 2) (harmonic over geometric mean), and the Dirichlet
term beta_i = 2 k_i / h^2 per boundary face, i.e. softplus(g) = 2 (2 dim - deg_i): both functions the
MLPs have to learn. A(theta) is a symmetric, weakly diagonally dominant M-matrix with positive diagonal,
so it is positive semidefinite (Gershgorin), and the ``eps`` shift makes it positive definite always.

Identifiability: (A, b) -> (alpha A, alpha b) leaves x unchanged, so a perfect fit of the solutions
fixes A only up to the scale that c absorbs; ``coef_rel_error`` (||A(theta) - A||_F / ||A||_F on the
stored entries) reports how close the learned discretisation is to the true one anyway.

Dense variant (``variant="dense"``, fixed ``num_nodes`` n, small n only): a linear layer maps the
flattened field log k (length n) of each graph to W (n x n), and

    A = sigma_g (W W^T / n + softplus(s) I)       (dense_form="spd", solved by CG)
    A = sigma_g (I + W)                            (dense_form="general", solved by dense LU)

with sigma_g = mean_g(k) / h_g^2 the operator's natural scale, b = b_data and the same loss. The layer
holds n^2 (n + 1) weights: O(n^3) memory, so n is capped at ``MAX_DENSE_NODES``.

Cost per training step (sparse): two MLP passes over the nnz entries / n nodes (O(nnz hidden^2)), one
Jacobi-PCG solve forward and one adjoint solve backward (O(nnz) per iteration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from learnsolve.linalg import SparseMatrix, solve
from learnsolve.nn.layers import mlp

from .base import LearnedModel, check_choice, check_int

VARIANTS = ("sparse", "dense")
DENSE_FORMS = ("spd", "general")
ON_FAIL = ("raise", "warn", "ignore")
MAX_DENSE_NODES = 400  # 20 x 20 grid: 64M weights (256 MB in float32); n = 1024 would need 4 GiB
NODE_FEATURES = 4  # log k, 2 dim - deg, capped distance to the boundary, log(h_i / h_g)
EDGE_FEATURES = 3  # log k_i, log k_j, log(d_ij / h_g)
DIST_CAP = 3.0  # cells deeper than this (in mean edge lengths) look alike to the boundary network


@dataclass
class Stencil:
    """Everything the model derives from a batch without the network (pattern, geometry, k).

    Shapes: N nodes, nnz stored entries (pattern order of ``A``), E off-diagonal entries, G graphs.
    ``A``: the data's matrix (detached; its values are used only by metrics). ``row``/``col`` (nnz,)
    int64; ``off`` (E,) positions of the off-diagonal entries; ``partner`` (E,) index into ``off`` of the
    transposed entry (j, i); ``diag`` (N,) positions of the diagonal entries; ``seg`` (N,) graph of each
    node; ``k`` (N,); ``dist`` (E,) |pos_i - pos_j|; ``h_node`` (N,) mean distance to the neighbours;
    ``h_graph`` (G,) mean edge length; ``node_feat`` (N, NODE_FEATURES), ``edge_feat`` (E, EDGE_FEATURES)
    float64 network inputs.
    """

    A: SparseMatrix
    row: Tensor
    col: Tensor
    off: Tensor
    partner: Tensor
    diag: Tensor
    seg: Tensor
    G: int
    k: Tensor
    dist: Tensor
    h_node: Tensor
    h_graph: Tensor
    node_feat: Tensor
    edge_feat: Tensor


def _per_graph_mean(v: Tensor, seg: Tensor, G: int, empty: float = 1.0) -> Tensor:
    """(G,) mean of v over each segment (``empty`` where a segment has no entries)."""
    s = v.new_zeros(G).index_add(0, seg, v)
    c = v.new_zeros(G).index_add(0, seg, torch.ones_like(v))
    return torch.where(c > 0, s / c.clamp_min(1), torch.full_like(s, empty))


def build_stencil(batch, name: str = "physics_nn") -> Stencil:
    """The data's stencil and geometry of a PyG batch (or single ``Data``); ValueError on unusable data.

    Cost: O(nnz log nnz) (the transpose permutation of the pattern) plus O(nnz) gathers.
    """
    for attr in ("edge_index", "edge_attr", "b", "pos", "feat"):
        if getattr(batch, attr, None) is None:
            raise ValueError(f"{name}: the batch has no `{attr}` (expected learnsolve linear-system data)")
    A = SparseMatrix.from_pyg(batch).detach()
    N = A.shape[0]
    pat = A.pattern
    row, col = pat.row.long(), pat.col.long()
    diag = pat.diag_positions()
    if bool((diag < 0).any()):
        raise ValueError(f"{name}: the stencil must contain every diagonal entry (self-loop); row "
                         f"{int((diag < 0).nonzero()[0])} has none")
    patT, perm = pat.transpose()
    if not patT.same_as(pat):
        raise ValueError(f"{name}: the graph of A must be symmetric (A(theta) is assembled symmetric); "
                         "this family's pattern is not")
    k = batch.feat[:, 1].to(torch.float64)
    if not bool(torch.isfinite(k).all()) or bool((k <= 0).any()):
        raise ValueError(f"{name}: needs a positive, finite cell coefficient k (feat[:, 1]); got min "
                         f"{float(k.min()):.3g} (a diffusion-type family)")
    seg = getattr(batch, "batch", None)
    seg = torch.zeros(N, dtype=torch.int64, device=k.device) if seg is None else seg.long()
    G = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
    off_mask = row != col
    off = off_mask.nonzero().squeeze(1)
    # entry e = (i, j) has transposed entry perm[e] = (j, i); renumber it among the off-diagonal entries
    where_off = torch.full((row.numel(),), -1, dtype=torch.int64, device=row.device)
    where_off[off] = torch.arange(off.numel(), device=row.device)
    partner = where_off[perm[off]]
    ri, cj = row[off], col[off]
    pos = batch.pos.to(torch.float64)
    dist = (pos[ri] - pos[cj]).norm(dim=1)
    if bool((dist <= 0).any()):
        raise ValueError(f"{name}: two coupled unknowns share a position (|pos_i - pos_j| = 0)")
    h_graph = _per_graph_mean(dist, seg[ri], G)
    h_node = _per_graph_mean(dist, ri, N, empty=0.0)
    deg = torch.bincount(ri, minlength=N).to(torch.float64)
    h_node = torch.where(deg > 0, h_node, h_graph[seg])
    # distance to the bounding box of the graph's positions: 0 on cells next to the domain boundary
    dim = pos.shape[1]
    idx = seg.unsqueeze(1).expand(-1, dim)
    lo = pos.new_full((G, dim), math.inf).scatter_reduce(0, idx, pos, "amin")
    hi = pos.new_full((G, dim), -math.inf).scatter_reduce(0, idx, pos, "amax")
    depth = torch.minimum(pos - lo[seg], hi[seg] - pos).amin(dim=1) / h_graph[seg]
    logk = torch.log(k)
    node_feat = torch.stack([logk, 2.0 * dim - deg, depth.clamp(0.0, DIST_CAP),
                             torch.log(h_node / h_graph[seg])], dim=1)
    edge_feat = torch.stack([logk[ri], logk[cj], torch.log(dist / h_graph[seg[ri]])], dim=1)
    return Stencil(A, row, col, off, partner, diag, seg, G, k, dist, h_node, h_graph, node_feat, edge_feat)


def assemble(st: Stencil, t: Tensor, beta: Tensor, eps: float = 0.0) -> Tensor:
    """Values (nnz,) of A on the stencil from transmissibilities and boundary terms (differentiable).

    ``t`` (E,) one value per off-diagonal entry (i, j) (symmetrised here: t_ij <- (t_ij + t_ji) / 2),
    ``beta`` (N,) node terms: a_ij = -t_ij, a_ii = sum_j t_ij + beta_i + eps * mean_g(sum_j t_ij + beta_i).
    Exact symmetry: both entries of a pair hold the same floating-point sum. Cost O(nnz).
    """
    t = 0.5 * (t + t[st.partner])
    ri = st.row[st.off]
    d = beta.new_zeros(beta.shape[0]).index_add(0, ri, t) + beta
    if eps:
        d = d + eps * _per_graph_mean(d, st.seg, st.G)[st.seg]
    vals = d.new_zeros(st.row.numel())
    return vals.index_add(0, st.off, -t).index_add(0, st.diag, d)


class PhysicsNN(LearnedModel):
    """Learned discretisation: an MLP-assembled sparse A(theta) and b(theta), fit to solutions through solve.

    Args: ``variant`` "sparse" | "dense"; ``hidden`` width and ``layers`` hidden layers of every MLP
    (sparse); ``num_nodes`` unknowns per system (dense only, <= MAX_DENSE_NODES); ``dense_form``
    "spd" | "general"; ``rtol`` of the forward and adjoint solves; ``eps`` >= 0 relative diagonal shift
    (keeps A(theta) SPD); ``on_fail`` "raise" | "warn" | "ignore" for a solve that misses ``rtol``.
    """

    kind = "surrogate"
    requires_spd = True  # the sparse variant assembles SPD M-matrices: symmetric families only

    def __init__(self, variant: str = "sparse", hidden: int = 32, layers: int = 2,
                 num_nodes: int | None = None, dense_form: str = "spd", rtol: float = 1e-8, eps: float = 1e-8,
                 on_fail: str = "warn"):
        super().__init__()
        for arg, value, choices in (("variant", variant, VARIANTS), ("dense_form", dense_form, DENSE_FORMS),
                                    ("on_fail", on_fail, ON_FAIL)):
            check_choice("physics_nn", arg, value, choices)
        hidden, layers = (check_int("physics_nn", "hidden", hidden, 1),
                          check_int("physics_nn", "layers", layers, 1))
        if not 0.0 < rtol < 1.0:
            raise ValueError(f"physics_nn: rtol must be in (0, 1), got {rtol!r}")
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"physics_nn: eps must be in [0, 1), got {eps!r}")
        self.variant, self.dense_form = variant, dense_form
        self.rtol, self.eps, self.on_fail = float(rtol), float(eps), on_fail
        self.num_nodes = None if num_nodes is None else int(num_nodes)
        if variant == "sparse":
            sizes = [hidden] * layers
            self.edge_net = mlp([EDGE_FEATURES, *sizes, 1])
            self.boundary_net = mlp([NODE_FEATURES, *sizes, 1])
            self.rhs_net = mlp([NODE_FEATURES, *sizes, 1])
            with torch.no_grad():
                # start at t = geometric-mean transmissibility (softplus(0.5413) = 1) and a small uniform
                # absorption (softplus(-3) = 0.049): an SPD guess the boundary network has to sharpen
                self.edge_net[-1].bias.fill_(math.log(math.e - 1.0))
                self.boundary_net[-1].bias.fill_(-3.0)
                # b(theta) = b at the start
                nn.init.zeros_(self.rhs_net[-1].weight)
                nn.init.zeros_(self.rhs_net[-1].bias)
        else:
            self.requires_spd = dense_form == "spd"
            n = self.num_nodes
            if n is None or n < 1:
                raise ValueError("physics_nn: variant='dense' needs num_nodes >= 1 (unknowns per system), "
                                 f"got {num_nodes!r}")
            if n > MAX_DENSE_NODES:
                gib = 4.0 * n * n * (n + 1) / 2**30
                raise ValueError(f"physics_nn: variant='dense' with num_nodes={n} needs a linear layer of "
                                 f"n^2 (n+1) = {n * n * (n + 1):.3g} weights ({gib:.3g} GiB in float32) plus "
                                 f"n x n dense matrices per system; the limit is {MAX_DENSE_NODES} unknowns: "
                                 "use variant='sparse'")
            self.dense = nn.Linear(n, n * n)
            with torch.no_grad():
                nn.init.zeros_(self.dense.weight)
                if dense_form == "spd":
                    # W = W0 at the start; W0 != 0, else W W^T has a zero gradient (a saddle)
                    nn.init.normal_(self.dense.bias)
                else:
                    nn.init.zeros_(self.dense.bias)  # A = sigma I at the start
            self.shift = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus(shift) = 1

    @property
    def _pdt(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- sparse variant: the learned discretisation ----------------------------------------------------
    def coefficients(self, st: Stencil) -> tuple[Tensor, Tensor, Tensor]:
        """Network outputs in float64: t (E,) unsymmetrised transmissibilities, beta (N,), log-scale c
        (N,)."""
        pdt = self._pdt
        ri, cj = st.row[st.off], st.col[st.off]
        s = F.softplus(self.edge_net(st.edge_feat.to(pdt))).squeeze(1).to(torch.float64)
        t = torch.sqrt(st.k[ri] * st.k[cj]) / st.dist**2 * s
        nf = st.node_feat.to(pdt)
        beta = st.k / st.h_node**2 * F.softplus(self.boundary_net(nf)).squeeze(1).to(torch.float64)
        c = self.rhs_net(nf).squeeze(1).to(torch.float64)
        return t, beta, c

    def system(self, batch) -> tuple[SparseMatrix, Tensor, Stencil]:
        """(A(theta) block-diagonal over the batch's graphs, b(theta) (N,), the stencil); float64."""
        if self.variant != "sparse":
            raise ValueError("physics_nn: system() assembles the sparse variant; this model is "
                             "variant='dense'")
        st = build_stencil(batch)
        t, beta, c = self.coefficients(st)
        A = st.A.with_values(assemble(st, t, beta, self.eps))
        b = batch.b.to(torch.float64) * torch.exp(c)
        return A, b, st

    # -- dense variant ---------------------------------------------------------------------------------
    def dense_system(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """(A(theta) (G, n, n), b (G, n), data A (G, n, n)) in float64 for the dense variant."""
        if self.variant != "dense":
            raise ValueError("physics_nn: dense_system() needs variant='dense'")
        n = self.num_nodes
        st = build_stencil(batch, "physics_nn (dense)")
        sizes = torch.bincount(st.seg, minlength=st.G)
        if bool((sizes != n).any()):
            bad = int(sizes[sizes != n][0])
            raise ValueError(f"physics_nn (dense): built for num_nodes={n} unknowns per system, got a system "
                             f"with {bad}; set model.net.num_nodes to the data's size (m^2 for an m x m "
                             "grid)")
        G = st.G
        f = torch.log(st.k).view(G, n).to(self._pdt)
        W = self.dense(f).view(G, n, n).to(torch.float64)
        sigma = (_per_graph_mean(st.k, st.seg, G) / st.h_graph**2).view(G, 1, 1)
        eye = torch.eye(n, dtype=torch.float64, device=W.device)
        if self.dense_form == "spd":
            A = sigma * (W @ W.mT / n + F.softplus(self.shift).to(torch.float64) * eye)
        else:
            A = sigma * (eye + W)
        A_data = st.A.to_dense().view(G, n, G, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        return A, batch.b.to(torch.float64).view(G, n), A_data

    # -- the prediction, loss and metrics --------------------------------------------------------------
    def _predict(self, batch) -> tuple[Tensor, Tensor, Tensor, dict]:
        """(x (N,), x_ref (N,), graph index (N,), extras) with x = A(theta)^{-1} b(theta)."""
        if getattr(batch, "x", None) is None:
            raise ValueError("physics_nn: needs the reference solutions `x` in the batch (solution data)")
        x_ref = batch.x.to(torch.float64)
        if self.variant == "sparse":
            A, b, st = self.system(batch)
            x, info = solve(A, b, method="cg", precond="jacobi", rtol=self.rtol, backward="implicit",
                            on_fail=self.on_fail, return_info=True)
            return x, x_ref, st.seg, {"A": A, "st": st, "iters": info.iterations}
        A, b, A_data = self.dense_system(batch)
        G, n = b.shape
        if self.dense_form == "spd":
            x, info = solve(A, b, method="cg", rtol=self.rtol, maxiter=10 * n, on_fail=self.on_fail,
                            return_info=True)
        else:
            x, info = solve(A, b, method="direct", on_fail=self.on_fail, return_info=True)
        seg = torch.arange(G, device=x.device).repeat_interleave(n)
        return x.reshape(-1), x_ref, seg, {"A": A, "A_data": A_data, "iters": info.iterations}

    @staticmethod
    def _ratios(x: Tensor, x_ref: Tensor, seg: Tensor, G: int) -> Tensor:
        """(G,) ||x - x_ref||^2 / ||x_ref||^2 per graph."""
        e = x.new_zeros(G).index_add(0, seg, (x - x_ref) ** 2)
        r = x.new_zeros(G).index_add(0, seg, x_ref**2)
        return e / r.clamp_min(torch.finfo(r.dtype).tiny)

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        """Mean over graphs of ||x(theta) - x_ref||^2 / ||x_ref||^2 (float64 scalar)."""
        x, x_ref, seg, ex = self._predict(batch)
        G = int(seg.max()) + 1
        ratios = self._ratios(x, x_ref, seg, G)
        # not "rel_error": metrics() reports that one under val/ and test/ (the same key would be logged
        # twice)
        logs = {"solve_iters": float(ex["iters"].to(torch.float64).mean())}
        return ratios.mean(), logs

    @torch.no_grad()
    def metrics(self, batch) -> dict[str, Tensor]:
        """Per-graph means of: ``rel_error`` ||x - x_ref|| / ||x_ref||; ``coef_rel_error`` ||A(theta) - A||_F
        / ||A||_F (sparse: on the stored entries; dense: on all n^2 entries); ``coef_rel_error_scaled`` the
        same for the best multiple alpha A(theta) (the scale that b(theta) can absorb, see the module
        docstring)."""
        x, x_ref, seg, ex = self._predict(batch)
        G = int(seg.max()) + 1
        rel = self._ratios(x, x_ref, seg, G).sqrt().mean()
        if self.variant == "sparse":
            st = ex["st"]
            # entries of all graphs, graph of each entry
            a, a0, g = ex["A"].values, st.A.values, st.seg[st.row]
        else:
            a, a0 = ex["A"].reshape(-1), ex["A_data"].reshape(-1)
            g = torch.arange(G, device=a.device).repeat_interleave(ex["A"][0].numel())

        def gsum(v: Tensor) -> Tensor:
            return v.new_zeros(G).index_add(0, g, v)

        ref = gsum(a0**2)
        coef = (gsum((a - a0) ** 2) / ref).sqrt().mean()
        # the best per-graph scale alpha = <a, a0> / <a, a> removes the (A, b) -> (alpha A, alpha b) ambiguity
        alpha = gsum(a * a0) / gsum(a * a).clamp_min(torch.finfo(a.dtype).tiny)
        coef_scaled = (gsum((alpha[g] * a - a0) ** 2) / ref).sqrt().mean()
        return {"rel_error": rel, "coef_rel_error": coef, "coef_rel_error_scaled": coef_scaled}


__all__ = ["MAX_DENSE_NODES", "PhysicsNN", "Stencil", "assemble", "build_stencil"]
