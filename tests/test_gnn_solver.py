"""gnn_solver (multigrid mode): the untrained model is classical smoothed aggregation, training helps on held-out
systems, gradients, the safeguard, the exported program, and a short training whose validation does not degrade."""

from __future__ import annotations

import csv

import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import cg, condition_estimate
from learnsolve.linalg.preconditioners.multigrid import build_multigrid
from learnsolve.models import GNNSolver
from learnsolve.models.base import system_matrix

from .cli_runner import run_cli


def _batch(size, seeds, family="diffusion2d"):
    return Batch.from_data_list([GENERATORS[family](size, seed=s) for s in seeds])


def _iterations(model, batch, safeguard=False):
    with torch.no_grad():
        _, info = model.solve(batch, rtol=1e-6, safeguard=safeguard)
    assert bool(info.converged.all())
    return info.iterations.view(-1).double()


def test_untrained_model_is_classical_smoothed_aggregation():
    batch = _batch(20, [1, 2])
    model = GNNSolver(hidden=8, layers=1, coarse_size=8).double()
    A = system_matrix(batch)
    r = torch.randn(1, A.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        learned = model.preconditioner_for(batch)
        classical = build_multigrid(A, coarse_size=8)
        assert learned.sizes() == classical.sizes() and learned.num_levels >= 3
        torch.testing.assert_close(learned.apply(r), classical.apply(r), rtol=1e-12, atol=1e-14)


def test_first_level_keeps_the_finest_prolongator_classical():
    batch = _batch(16, [3])
    model = GNNSolver(hidden=4, layers=0, coarse_size=4, first_level=1).double()
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)  # a non-trivial network
    with torch.no_grad():
        P_learned = model.preconditioner_for(batch).levels[0][1].to_dense()
        P_classical = build_multigrid(system_matrix(batch), coarse_size=4).levels[0][1].to_dense()
        P_all = GNNSolver(hidden=4, layers=0, coarse_size=4).double()
        P_all.load_state_dict(model.state_dict())
        P_all = P_all.preconditioner_for(batch).levels[0][1].to_dense()
    torch.testing.assert_close(P_learned, P_classical)
    assert not torch.allclose(P_all, P_classical)


def test_vcycle_gradient_wrt_network_parameters():
    batch = _batch(6, [4])
    model = GNNSolver(hidden=3, layers=1, coarse_size=3).double()
    torch.nn.init.normal_(model.head[-1].weight, std=0.3)
    A = system_matrix(batch)
    r = torch.randn(1, A.shape[0], 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    wrapper = _Apply(model, r)

    def f(*params):
        return torch.func.functional_call(wrapper, {f"model.{n}": p for n, p in zip(head, params)}, (batch,))

    params = [dict(model.named_parameters())[n].detach().clone().requires_grad_() for n in head]
    assert torch.autograd.gradcheck(f, params)


class _Apply(torch.nn.Module):
    def __init__(self, model, r):
        super().__init__()
        self.model, self.r = model, r

    def forward(self, batch):
        return self.model.preconditioner_for(batch).apply(self.r)


# the error loss (a third of the time) is the fast twin of the kappa loss
@pytest.mark.parametrize("loss, margin",
                         [pytest.param("kappa", 0.02, marks=pytest.mark.slow), ("error", 0.01)])
def test_training_beats_the_untrained_start_on_held_out_systems(loss, margin):
    torch.manual_seed(0)
    model = GNNSolver(hidden=8, layers=1, coarse_size=8, loss=loss)
    held_out = _batch(32, range(900, 904))
    A = system_matrix(held_out)

    def kappa():
        with torch.no_grad():
            return float(torch.log(condition_estimate(A, M=model.preconditioner_for(held_out), steps=30)).mean())

    k0, it0 = kappa(), _iterations(model, held_out)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        loss_value, _ = model.training_loss(_batch(32, range(4 * step, 4 * step + 4)))
        opt.zero_grad()
        loss_value.backward()
        opt.step()
    k1, it1 = kappa(), _iterations(model, held_out)
    assert k1 < k0 - margin, (k0, k1)
    assert float(it1.mean()) <= float(it0.mean()), (it0, it1)


def test_safeguard_race_is_short_and_keeps_a_good_hierarchy():
    batch = _batch(48, [11, 12])
    model = GNNSolver(hidden=4, layers=1).double()
    with torch.no_grad():
        _, check = model.safe_preconditioner_for(batch)
    assert check.steps == 3 and check.all_accepted
    its = _iterations(model, batch, safeguard=True)
    ic0 = cg(system_matrix(batch), batch.b.view(-1).double(), M="ic0", rtol=1e-6)[1].iterations.view(-1)
    assert bool((its < ic0.double() / 2).all())


def test_levels_larger_than_trained_keep_the_classical_prolongator():
    model = GNNSolver(hidden=4, layers=0, coarse_size=8).double()
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)
    model.training_loss(_batch(12, [0, 1]))  # records the largest trained level: 144 unknowns per system
    assert float(model.trained_level_size) == 144
    model.eval()
    big = _batch(40, [2])  # 1600 unknowns > 2 x 144: the finest level is classical, the coarser ones learned
    with torch.no_grad():
        learned = model.preconditioner_for(big)
        classical = build_multigrid(system_matrix(big), coarse_size=8)
    sizes = learned.sizes()
    assert sizes[0] == 1600 and sizes[1] <= 288 and learned.num_levels >= 3
    torch.testing.assert_close(learned.levels[0][1].to_dense(), classical.levels[0][1].to_dense())
    assert not torch.allclose(learned.levels[1][1].to_dense(), classical.levels[1][1].to_dense())


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="unknown loss"):
        GNNSolver(loss="log_residual")
    with pytest.raises(ValueError, match="theta"):
        GNNSolver(theta=1.0)
    with pytest.raises(ValueError, match="coarse_size"):
        GNNSolver(coarse_size=0)
    nonsym = _batch(8, [0], family="convdiff2d")
    with pytest.raises(ValueError, match="symmetric"):
        GNNSolver().preconditioner_for(nonsym)


def test_exported_weights_program_matches_the_model():
    data = GENERATORS["diffusion2d"](10, seed=5)
    model = GNNSolver(hidden=4, layers=1).double()
    torch.nn.init.normal_(model.head[-1].weight, std=0.3)
    spec = model.export_program()
    inputs = spec.inputs(data, 0)
    with torch.no_grad():
        out = spec.module(*inputs)
        ref = spec.reference(data, inputs)[0]
    assert out.shape == (data.edge_index.shape[1],)
    torch.testing.assert_close(out, ref)
    assert "multigrid" in model.matrix_export_reason()


def test_short_training_does_not_raise_validation_iterations(tmp_path):
    run = tmp_path / "run"
    out = run_cli("train", f"paths.root_dir={tmp_path}", f"hydra.run.dir={run}", "data.size=24", "data.num_train=16",
                  "data.num_val=4", "data.num_test=2", "data.batch_size=4", "data.progress=false",
                  "trainer.enable_progress_bar=false", "trainer.max_epochs=5", "logger=csv",
                  "callbacks.convergence_curves.every_n_epochs=0", "callbacks.gradient_quality.every_n_epochs=0",
                  "report=false", "test=false")
    assert out.returncode == 0, out.stderr[-3000:]
    (metrics,) = run.glob("csv/*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/iters")]
    iters = [float(r["val/iters"]) for r in rows]
    kappas = [float(r["val/log_kappa"]) for r in rows]
    assert len(iters) >= 5 and iters[-1] <= iters[0] and max(iters[1:]) <= iters[0] + 0.5, iters
    assert kappas[-1] < kappas[0], kappas


def test_weights_program_exports_with_dynamic_sizes():
    """torch.export of the multigrid weights program (n and the number of entries dynamic), checked on another size."""
    from torch.export import Dim, export

    model = GNNSolver(hidden=4, layers=1).double().eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.3)
    spec = model.export_program()
    n, e = Dim("n", min=2), Dim("e", min=2)
    prog = export(spec.module, spec.inputs(GENERATORS["diffusion2d"](10, seed=5), 0),
                  dynamic_shapes=({1: e}, {0: e}, {0: n}, {0: e})).module()
    other = GENERATORS["diffusion2d"](13, seed=6)
    inputs = spec.inputs(other, 0)
    with torch.no_grad():
        torch.testing.assert_close(prog(*inputs), spec.reference(other, inputs)[0])


def _hard_batch(family, size, seeds, **params):
    return Batch.from_data_list([GENERATORS[family](size, seed=s, reference=False, **params) for s in seeds])


ROTATED = {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"}


def test_learned_vcycle_is_spd_with_learned_strength_and_weights():
    """Whatever the strength network and the weights say, the V-cycle is symmetric positive definite (dense check)."""
    batch = _hard_batch("anisotropic2d", 12, [5], **ROTATED)
    torch.manual_seed(3)
    model = GNNSolver(hidden=4, layers=1, coarse_size=4, strength="learned", strength_hidden=4,
                      strength_layers=1, size_factor=None).double()
    torch.nn.init.normal_(model.head[-1].weight, std=1.0)
    torch.nn.init.normal_(model.strength_net.head[-1].weight, std=2.0)
    torch.nn.init.zeros_(model.strength_net.head[-1].bias)
    model.eval()
    with torch.no_grad():
        M = model.preconditioner_for(batch)
        n = batch.num_nodes
        Minv = M.apply(torch.eye(n, dtype=torch.float64).unsqueeze(0))[0]
    assert M.num_levels >= 2
    torch.testing.assert_close(Minv, Minv.T, rtol=0, atol=1e-10 * float(Minv.abs().max()))
    assert float(torch.linalg.eigvalsh(0.5 * (Minv + Minv.T)).min()) > 0


def test_evolution_strong_flags_pyamgs_evolution_pattern():
    import numpy as np
    import pyamg

    from learnsolve.linalg.preconditioners.multigrid import evolution_strong

    A = system_matrix(_hard_batch("anisotropic2d", 10, [2], **ROTATED)).detach()
    flags = evolution_strong(A).numpy()
    S = A.to_scipy().tocsr()
    C = pyamg.strength.evolution_strength_of_connection(S, B=np.ones((S.shape[0], 1)), epsilon=4.0, k=2,
                                                        proj_type="l2").toarray() != 0
    row, col = A.pattern.row.numpy(), A.pattern.col.numpy()
    assert (flags == C[row, col]).all() and 0.2 < flags.mean() < 0.95  # some entries weak, some strong


def test_strength_network_learns_the_evolution_measure_and_is_used_at_every_size():
    """Training the strength network alone (weights=False) lowers its cross-entropy against the evolution labels on
    held-out systems of another size; the untrained network flags every entry strong (classical aggregation), and the
    trained one runs on every level at both sizes (no size guard)."""
    torch.manual_seed(0)
    model = GNNSolver(hidden=4, layers=0, coarse_size=8, strength="learned", strength_hidden=8, strength_layers=2,
                      weights=False, size_factor=None)
    held = _hard_batch("anisotropic2d", 24, [900, 901], **ROTATED)

    def agreement(batch):
        from learnsolve.linalg.preconditioners.multigrid import evolution_strong

        A = system_matrix(batch).detach()
        with torch.no_grad():
            pred = model.strength_net(A) > 0
        off = A.pattern.row != A.pattern.col
        return float((pred == evolution_strong(A))[off].float().mean())

    a0 = agreement(held)
    with torch.no_grad():
        assert bool((model.strength_net(system_matrix(held).detach()) > 0).all())  # untrained: all strong
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    model.train()
    for step in range(40):
        loss, _ = model.training_loss(_hard_batch("anisotropic2d", 16, [2 * step, 2 * step + 1], **ROTATED))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    a1 = agreement(held)
    assert a1 > a0 + 0.1 and a1 > 0.75, (a0, a1)
    for size in (16, 48):  # the same network flags entries on every level of both sizes
        calls = []
        net = model.strength_net
        model.strength_net = _Recorder(net, calls)
        with torch.no_grad():
            M = model.preconditioner_for(_hard_batch("anisotropic2d", size, [7], **ROTATED))
        model.strength_net = net
        assert len(calls) >= M.num_levels - 1 >= 1 and calls[0] == size * size


class _Recorder(torch.nn.Module):
    def __init__(self, net, calls):
        super().__init__()
        self.net, self.calls = net, calls

    def forward(self, A):
        self.calls.append(A.shape[0])
        return self.net(A)


@pytest.mark.parametrize("layers", [0, 2])
def test_compiled_strength_network_matches_its_torch_forward(layers):
    """The fused CPU kernel of the strength network gives the torch forward's logits (random weights, a batch of two
    systems of different sizes: per-system feature normalisation), and inference without autograd uses it."""
    from learnsolve.models.gnn_solver import StrengthNet

    torch.manual_seed(layers)
    net = StrengthNet(6, layers).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    batch = Batch.from_data_list([GENERATORS["channels2d"](9, seed=1, reference=False),
                                  GENERATORS["channels2d"](12, seed=2, reference=False)])
    A = system_matrix(batch).detach()
    with torch.no_grad():
        ref, got = net.reference(A), net.compiled(A)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * float(ref.abs().max()))
        torch.testing.assert_close(net(A), got, rtol=0, atol=0)
    assert net(A).requires_grad  # with autograd: the torch path


def test_strength_options_are_checked():
    with pytest.raises(ValueError, match="strength"):
        GNNSolver(strength="lerned")
    with pytest.raises(ValueError, match="weights=false leaves nothing to train"):
        GNNSolver(weights=False)
    with pytest.raises(ValueError, match="size_factor"):
        GNNSolver(size_factor=0)
    assert GNNSolver(size_factor=None).size_factor is None and not hasattr(GNNSolver(), "strength_net")


def test_untrained_weights_skip_the_network_exactly():
    """An output layer of zeros makes W = 1 exactly: inference skips the weight network (the untrained row then costs
    what classical SA costs) and gives the classical hierarchy; with autograd the network still runs."""
    model = GNNSolver(hidden=4, layers=1, coarse_size=8).double()
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = _batch(16, [1])
    with torch.no_grad():
        M = model.preconditioner_for(batch)
        ref = build_multigrid(system_matrix(batch), coarse_size=8)
    assert not calls and M.sizes() == ref.sizes()
    torch.testing.assert_close(M.levels[0][1].to_dense(), ref.levels[0][1].to_dense(), rtol=0, atol=0)
    model.training_loss(batch)
    assert calls
