"""neural_if's light network (arch="light"): the compiled inference path equals the training path, the untrained model
is its base (base=auto: the faster classical factor, its own fallback) and exact gradients. Its training against the
MIC(0) start: test_models_neural_if."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import IC0, MIC0, SparseMatrix, fastest_factor
from learnsolve.models.base import system_matrix
from learnsolve.models.neural_if import NeuralIF


def _batch(seeds, m=8, family="diffusion2d", **kw):
    sizes = m if isinstance(m, (list, tuple)) else [m] * len(seeds)
    return Batch.from_data_list([GENERATORS[family](k, seed=s, **kw) for s, k in zip(seeds, sizes)])


def _light(seed=0, hidden=6, layers=2, scale=0.3, dtype=torch.float64, **kw):
    """A light model with every parameter random (the output layers too, so the factor is not its base)."""
    torch.manual_seed(seed)
    model = NeuralIF(hidden=hidden, layers=layers, arch="light", **kw).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model


@pytest.mark.parametrize("base", ["none", "ic0", "mic0"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_compiled_inference_equals_the_training_path(base, dtype, tol):
    """The compiled kernel (no autograd, CPU) and the torch forward (autograd on) give the same factor and diagonal
    outputs per graph of a mixed-size batch, to the network dtype's rounding; the factor is far from its base."""
    model = _light(seed=1, base=base, dtype=dtype)
    batch = _batch([1, 2, 3], m=[7, 9, 5], family="lognormal2d")
    with torch.enable_grad():
        A, L_ref, w_ref = model.factor(batch)
    with torch.no_grad():
        _, L, w = model.factor(batch)
    assert L.values.dtype == torch.float64 and not L.values.requires_grad
    assert torch.equal(L.pattern.col, L_ref.pattern.col) and torch.equal(L.pattern.crow, L_ref.pattern.crow)
    scale = float(L_ref.values.detach().abs().max())
    assert float((L.values - L_ref.values.detach()).abs().max()) <= tol * scale
    assert float((w - w_ref.detach()).abs().max()) <= tol * max(1.0, float(w_ref.detach().abs().max()))
    B = model.base_factor(A)
    if B is not None:  # the random network moved the factor away from its base
        assert float((L.values - B.values).abs().max()) > 1e-2 * scale
    # the kernel's buffers are reused on a second call of the same size, and the result does not change
    with torch.no_grad():
        assert torch.equal(model.factor(batch)[1].values, L.values)


@pytest.mark.parametrize("base, cls", [("ic0", IC0), ("mic0", MIC0), ("auto", fastest_factor)])
def test_untrained_light_model_is_exactly_its_base(base, cls):
    """Untrained, the factor IS its base on both paths; base="auto" is the faster of MIC(0) and IC(0) per system
    (here a smooth system, MIC(0), and a high-contrast channels system, IC(0)) and is its own fallback."""
    model = NeuralIF(hidden=8, layers=2, base=base, arch="light").double()
    batch = Batch.from_data_list([GENERATORS["channels2d"](24, seed=1, contrast=1e2),
                                  GENERATORS["channels2d"](64, seed=2, contrast=1e6)])
    A = SparseMatrix.from_pyg(batch).detach()
    ref = cls(A).L.values
    with torch.no_grad():
        assert torch.equal(model.factor(batch)[1].values, ref)
    with torch.enable_grad():
        assert torch.equal(model.factor(batch)[1].values.detach(), ref)
    if base == "auto":
        assert model.fallback_for(batch) is model._base_preconditioner(system_matrix(batch))
        assert cls(A).name == "MIC(0) / IC(0) per system"


@pytest.mark.parametrize("loss", ["kappa", "data"])
def test_light_loss_gradient_matches_finite_differences(loss):
    """The training loss's gradient w.r.t. all parameters against a central difference along a random direction
    (float64, random output layers so every parameter matters, the same probes on every evaluation)."""
    model = _light(seed=2, hidden=4, layers=1, scale=0.05, base="mic0", loss=loss, num_probes=2)
    batch = _batch([7], m=5)
    params = list(model.parameters())

    def loss_at(step=0.0, v=None):
        torch.manual_seed(0)
        with torch.enable_grad():  # the training path (the compiled one is tested against it above)
            if v is not None:
                with torch.no_grad():
                    for p, vi in zip(params, v):
                        p.add_(step * vi)
            val = model.training_loss(batch)[0]
            if v is not None:
                with torch.no_grad():
                    for p, vi in zip(params, v):
                        p.sub_(step * vi)
        return val

    grads = torch.autograd.grad(loss_at(), params)
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    ad = sum(float((gi * vi).sum()) for gi, vi in zip(grads, v))
    h = 1e-5
    fd = (float(loss_at(h, v)) - float(loss_at(-h, v))) / (2 * h)
    assert abs(fd - ad) <= 1e-6 * max(1.0, abs(ad)), (fd, ad)


class _Factor(torch.nn.Module):
    """The factor's values as a module forward, for torch.func.functional_call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.factor(batch)[1].values


def test_gradcheck_light_factor_wrt_all_parameters():
    wrapped = _Factor(_light(seed=3, hidden=3, layers=1, scale=0.1, base="mic0"))
    batch = _batch([4], m=4)
    names = [k for k, _ in wrapped.named_parameters()]
    init = tuple(p.detach().clone().requires_grad_() for p in wrapped.parameters())

    def factor_values(*params):
        return torch.func.functional_call(wrapped, dict(zip(names, params)), (batch,))

    assert torch.autograd.gradcheck(factor_values, init)
