"""neural_if: a learned L L^T factor on tril(A), used as the PCG preconditioner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.data.system import to_scipy
from learnsolve.linalg import IC0, LLT, MIC0, Jacobi, SparseMatrix, cg
from learnsolve.models.base import system_matrix
from learnsolve.models.neural_if import NeuralIF

from .conftest import adam_losses


def _batch(seeds, m=8, family="diffusion2d"):
    sizes = m if isinstance(m, (list, tuple)) else [m] * len(seeds)
    return Batch.from_data_list([GENERATORS[family](k, seed=s) for s, k in zip(seeds, sizes)])


def _perturbed(seed=0, hidden=8, layers=2, scale=0.3, **kw):
    """A float64 model whose output layers are random, so that w != 0 (the factor is not SSOR)."""
    torch.manual_seed(seed)
    model = NeuralIF(hidden=hidden, layers=layers, **kw).double()
    with torch.no_grad():
        for head in (model.edge_head, model.diag_head):
            head[-1].weight.normal_(0.0, scale)
            head[-1].bias.normal_(0.0, scale)
    return model


def _cg_iters(batch, M, rtol=1e-6):
    A = SparseMatrix.from_pyg(batch).detach()
    _, info = cg(A, batch.b.view(-1), M, rtol=rtol, maxiter=5000)
    return info.iterations.view(-1).double(), info.converged.view(-1)


def test_untrained_model_is_symmetric_gauss_seidel_and_spd():
    model = NeuralIF(hidden=8, layers=2).double()
    data = [GENERATORS["diffusion2d"](m, seed=s) for s, m in [(3, 5), (4, 4)]]
    _, L, _ = model.factor(Batch.from_data_list(data))
    Ld = L.to_dense().detach()
    Md = (Ld @ Ld.T).numpy()
    off = 0
    for g in data:
        A = to_scipy(g).toarray()
        D = np.diag(np.diag(A))
        DL = D + np.tril(A, -1)
        ssor = DL @ np.linalg.inv(D) @ DL.T  # symmetric Gauss-Seidel (SSOR, omega = 1)
        n = A.shape[0]
        blk = Md[off:off + n, off:off + n]
        assert np.abs(blk - ssor).max() <= 1e-12 * np.abs(ssor).max()
        assert np.linalg.eigvalsh(blk).min() > 0
        off += n
    assert np.linalg.eigvalsh(Md).min() > 0


def test_factor_has_the_pattern_of_tril_a_with_positive_diagonal_per_graph():
    model = _perturbed(seed=1)
    batch = _batch([0, 1, 2], m=[3, 5, 4])
    A, L, _ = model.factor(batch)
    Ad, Ld = A.to_dense(), L.to_dense().detach()
    assert torch.equal(Ld != 0, torch.tril(Ad) != 0)  # no fill-in, nothing dropped
    assert bool((torch.diagonal(Ld) > 0).all())
    assert torch.equal(L.pattern.crow, A.tril().pattern.crow) and torch.equal(L.pattern.col, A.tril().pattern.col)
    ptr = batch.ptr.tolist()
    for g in range(3):  # block structure: no entry couples two graphs
        blk = slice(ptr[g], ptr[g + 1])
        outside = Ld[blk].clone()
        outside[:, blk] = 0
        assert bool((outside == 0).all())
    # the random heads really moved the factor away from SSOR
    L0 = NeuralIF(hidden=8, layers=2).double().factor(batch)[1].to_dense().detach()
    assert float((Ld - L0).abs().max()) > 1e-2


def test_factor_is_scale_equivariant():
    model = _perturbed(seed=2)
    batch = _batch([5], m=5)
    _, L, _ = model.factor(batch)
    scaled = batch.clone()
    scaled.edge_attr = 7.0 * batch.edge_attr
    scaled.feat = batch.feat.clone()
    scaled.feat[:, 0] *= 7.0
    _, L7, _ = model.factor(scaled)
    assert torch.allclose(L7.values, np.sqrt(7.0) * L.values, rtol=1e-12, atol=0)


def test_preconditioner_apply_matches_dense_solve_and_is_symmetric():
    model = _perturbed(seed=3)
    batch = _batch([0, 1], m=[4, 5])
    M = model.preconditioner_for(batch)
    Ld = M.L.to_dense()
    R = torch.randn(1, batch.num_nodes, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.solve(Ld @ Ld.T, R[0])
    assert torch.allclose(M.apply(R)[0], ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(M.apply_transpose(R), M.apply(R), rtol=1e-12, atol=0)
    # the batched factor equals the per-graph factors (graphs are independent)
    single = model.preconditioner_for(_batch([1], m=5))
    n0 = int(batch.ptr[1])
    assert torch.allclose(M.apply(R)[:, n0:], single.apply(R[:, n0:].contiguous()), rtol=1e-12, atol=1e-14)


def test_training_loss_decreases():
    torch.manual_seed(0)
    model = NeuralIF(hidden=16, layers=3)
    batch = _batch(range(4), m=8)
    losses = adam_losses(model, batch, steps=40, lr=3e-3)
    assert set(model.training_loss(batch)[1]) == {"rel_mismatch", "log_diag_rms"}
    assert losses[-1] < 0.5 * losses[0], losses


def test_data_loss_matches_dense_formula():
    model = _perturbed(seed=4, diag_reg=0.1)
    batch = _batch([0, 1], m=[3, 4])
    loss, _ = model.training_loss(batch)
    _, L, w = model.factor(batch)
    Ld = L.to_dense().detach()
    ref = []
    for g in range(2):
        s = slice(int(batch.ptr[g]), int(batch.ptr[g + 1]))
        d = (Ld @ Ld.T)[s, s] @ batch.x[s] - batch.b[s]
        ref.append(float(d @ d / (batch.b[s] @ batch.b[s])))
    assert abs(float(loss.detach()) - (np.mean(ref) + 0.1 * float((w.detach() ** 2).mean()))) < 1e-12


class _Loss(torch.nn.Module):
    """The model's training loss as a module forward, for torch.func.functional_call."""

    def __init__(self, model, seed=None):
        super().__init__()
        self.model, self.seed = model, seed

    def forward(self, batch):
        if self.seed is not None:  # the same probes on every call
            torch.manual_seed(self.seed)
        return self.model.training_loss(batch)[0]


@pytest.mark.parametrize("loss", ["data", "probe"])
def test_gradcheck_loss_wrt_output_layers(loss):
    model = _perturbed(seed=5, hidden=4, layers=1, scale=0.1, loss=loss, num_probes=2, diag_reg=0.05)
    batch = _batch([7], m=4)  # 4x4 grid, n = 16
    wrapped = _Loss(model, seed=0)
    names = ("model.edge_head.2.weight", "model.diag_head.2.weight")
    init = [dict(wrapped.named_parameters())[k].detach().clone().requires_grad_() for k in names]

    def loss_of_heads(e, d):
        return torch.func.functional_call(wrapped, dict(zip(names, (e, d))), (batch,))

    assert torch.autograd.gradcheck(loss_of_heads, tuple(init))


def test_gradcheck_llt_apply_wrt_factor_values():
    model = _perturbed(seed=5, hidden=4, layers=1, scale=0.1)
    batch = _batch([7], m=4)
    _, L, _ = model.factor(batch)
    vals = L.values.detach().clone().requires_grad_()
    R = torch.randn(1, 16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda v: LLT(L.with_values(v)).apply(R), (vals,))


def test_briefly_trained_model_beats_plain_cg_on_held_out_systems():
    torch.manual_seed(0)
    model = NeuralIF(hidden=16, layers=3)
    train = _batch(range(4), m=12)
    held_out = _batch(range(100, 104), m=12)
    _, info0 = model.solve(held_out, rtol=1e-6)
    untrained, conv0 = info0.iterations.view(-1).double(), info0.converged.view(-1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss, _ = model.training_loss(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, info = model.solve(held_out, rtol=1e-6)
    trained = info.iterations.view(-1).double()
    none, _ = _cg_iters(held_out, None)
    A = SparseMatrix.from_pyg(held_out)
    jac, _ = _cg_iters(held_out, Jacobi(A).apply)
    ic0, _ = _cg_iters(held_out, IC0(A).apply)
    print(f"\n12x12 held-out mean PCG iterations to 1e-6: none {none.mean():.2f}, jacobi {jac.mean():.2f}, "
          f"ic0 {ic0.mean():.2f}, untrained (SSOR) {untrained.mean():.2f}, trained {trained.mean():.2f}")
    assert bool(info.converged.all()) and bool(conv0.all())
    assert float(trained.mean()) < float(none.mean())


@pytest.mark.parametrize("base, cls", [("ic0", IC0), ("mic0", MIC0)])
def test_untrained_correction_is_exactly_its_base(base, cls):
    """base=ic0 / mic0: the untrained model's factor IS the classical factor, per graph of a mixed-size batch."""
    model = NeuralIF(hidden=8, layers=2, base=base).double()
    batch = _batch([1, 2, 3], m=[6, 9, 7])
    A = SparseMatrix.from_pyg(batch)
    L = model.factor(batch)[1]
    assert torch.equal(L.values, cls(A).L.values)
    # the fallback: MIC(0) on smooth diffusion (the base object itself where the base is MIC(0))
    fb = model.fallback_for(batch)
    assert isinstance(fb, MIC0) and torch.equal(fb.L.values, MIC0(A).L.values)
    if base == "mic0":
        assert fb is model.reusable_mic0(system_matrix(batch))
    R = torch.randn(1, A.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # both on the compiled no-grad path
        assert torch.equal(model.preconditioner_for(batch).apply(R), cls(A).apply(R))


# the light network (the default) is the fast twin of the larger gnn network
@pytest.mark.parametrize("arch, hidden, layers",
                         [pytest.param("gnn", 16, 3, marks=pytest.mark.slow), ("light", 8, 2)])
def test_kappa_training_beats_its_mic0_base_on_held_out_systems(arch, hidden, layers):
    """A short training of the MIC(0) correction with the kappa loss lowers PCG iterations on held-out systems of
    a larger size than it was trained on (fixed seed; measured 0.90x MIC(0) here for the gnn network). The light
    network's trained model runs its compiled inference path here."""
    torch.manual_seed(0)
    model = NeuralIF(hidden=hidden, layers=layers, base="mic0", loss="kappa", arch=arch).double()
    train, held = _batch(range(8), m=24), _batch(range(200, 206), m=32)
    A, b = SparseMatrix.from_pyg(held), held.b.view(-1)
    base = cg(A, b, MIC0(A), rtol=1e-6)[1].iterations.double()
    losses = adam_losses(model, train, steps=80, lr=5e-3)
    with torch.no_grad():
        _, info = cg(A, b, model.preconditioner_for(held), rtol=1e-6)
    trained = info.iterations.double()
    print(f"\n32x32 held-out PCG iterations to 1e-6: MIC(0) {base.tolist()}, trained {trained.tolist()}; "
          f"log kappa {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert bool(info.converged.all())
    assert float(trained.sum()) < 0.97 * float(base.sum())


def test_solve_converges_tightly_and_matches_reference():
    model = _perturbed(seed=6, scale=0.1)
    batch = _batch([11, 12, 13], m=[6, 7, 5])
    x, info = model.solve(batch, rtol=1e-8)
    assert bool(info.converged.all()) and info.iterations.shape == (3,)  # one count per graph
    assert torch.allclose(x, batch.x, rtol=1e-6, atol=1e-8 * float(batch.x.abs().max()))
    A = SparseMatrix.from_pyg(batch)
    assert float((A.mv(x.view(1, -1, 1)).view(-1) - batch.b).norm() / batch.b.norm()) < 1e-7


def test_bad_input_and_arguments_raise_clear_errors():
    model = NeuralIF(hidden=4, layers=1).double()
    bad = _batch([0], m=4)
    diag = bad.edge_index[0] == bad.edge_index[1]
    bad.edge_attr = torch.where(diag & (bad.edge_index[0] == 2), -bad.edge_attr, bad.edge_attr)
    with pytest.raises(ValueError, match="neural_if.*positive diagonal"):
        model.training_loss(bad)
    with pytest.raises(ValueError, match="neural_if.*symmetric"):
        model.solve(_batch([0], m=4, family="convdiff2d"))
    for kw, arg in [({"loss": "frobenius"}, "loss"), ({"hidden": 0}, "hidden"), ({"layers": -1}, "layers"),
                    ({"num_probes": 0}, "num_probes"), ({"diag_reg": -1.0}, "diag_reg")]:
        with pytest.raises(ValueError, match=f"neural_if.*{arg}"):
            NeuralIF(**kw)
