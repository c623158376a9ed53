"""Every registry entry (pdearena convention: one test parametrised over learnsolve.models.MODELS) declares a valid
kind and capabilities that match what it implements, checked numerically on small generated batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import Preconditioner
from learnsolve.models import MODELS
from learnsolve.models.base import KINDS, MATRIX_TYPES, LearnedModel, ProgramSpec, one_system_batch

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def _model(name: str) -> LearnedModel:
    """The registry entry built from its conf/model file, float64, with every parameter perturbed (zero-initialised
    output layers would make a nonlinear network look linear and every learned correction vanish)."""
    net = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))["net"]
    torch.manual_seed(0)
    model = MODELS[name](**{k: v for k, v in net.items() if k != "_target_"}).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _data(name: str, seeds=(1, 2)):
    if name == "neural_ode":
        return [GENERATORS["forced2d"](4, seed=s, num_times=3) for s in seeds]
    return [GENERATORS["diffusion2d"](m, seed=s) for m, s in zip((4, 5), seeds)]


def _dense(apply, n: int) -> torch.Tensor:
    """The n x n matrix of a map on canonical (1, n, 1) blocks, one column at a time (valid for a linear map)."""
    eye = torch.eye(n, dtype=torch.float64)
    return torch.stack([apply(eye[:, j].reshape(1, n, 1)).reshape(n) for j in range(n)], 1)


def _matrix_inverse(exported) -> np.ndarray:
    """M^{-1} (dense) from an export_matrix result, by its MATRIX_TYPES definition."""
    a = exported.arrays
    M = a["L"].toarray() @ a["L"].toarray().T if exported.type == "llt" else np.diag(a["D"]) + a["U"] @ a["V"].T
    return np.linalg.inv(M)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_entry_declares_consistent_capabilities(name):
    model = _model(name).eval()
    cls = type(model)
    assert isinstance(model, LearnedModel) and model.kind in KINDS
    assert isinstance(model.requires_spd, bool) and isinstance(cls.is_linear, bool)
    assert cls.matrix_type is None or cls.matrix_type in MATRIX_TYPES
    batch = Batch.from_data_list(_data(name))
    N, G = int(batch.num_nodes), int(batch.num_graphs)

    loss, logs = model.training_loss(batch)
    assert loss.ndim == 0 and bool(torch.isfinite(loss)) and all(np.isfinite(v) for v in logs.values())

    # what the kind needs is implemented, and what a model does not implement says so
    assert cls.implements("solve") == (model.kind != "surrogate")
    assert cls.implements("metrics") == (model.kind == "surrogate")
    if model.kind == "preconditioner":
        assert cls.implements("preconditioner_for")
    if model.kind == "surrogate":
        metrics = model.metrics(batch)
        assert metrics and all(v.ndim == 0 and bool(torch.isfinite(v)) for v in metrics.values())
        with pytest.raises(NotImplementedError, match="surrogate"):
            model.solve(batch)
    else:
        with pytest.raises(NotImplementedError):
            model.metrics(batch)
        x, info = model.solve(batch, rtol=1e-8, maxiter=500)
        assert info.iterations.shape == (G,) and bool(info.converged.all()) and bool(torch.isfinite(x).all())
    if not cls.implements("preconditioner_for"):
        with pytest.raises(NotImplementedError):
            model.preconditioner_for(batch)

    # the preconditioner's declared linearity and symmetry hold numerically
    if cls.implements("preconditioner_for"):
        with torch.no_grad():
            P = model.preconditioner_for(batch)
            assert isinstance(P, Preconditioner) and P.linear == cls.is_linear
            g = torch.Generator().manual_seed(3)
            x, y = (torch.randn(1, N, 1, generator=g, dtype=torch.float64) for _ in range(2))
            combo, parts = P.apply(2.0 * x - 3.0 * y), 2.0 * P.apply(x) - 3.0 * P.apply(y)
            linear = bool(torch.allclose(combo, parts, rtol=1e-10, atol=1e-12 * float(parts.abs().max())))
            assert linear == cls.is_linear  # a nonlinear one really is (perturbed weights): the flag is needed
            if cls.is_linear:
                Minv = _dense(P.apply, N)
                if P.symmetric:
                    assert torch.allclose(_dense(P.apply_transpose, N), Minv, rtol=1e-12, atol=1e-14)
                    assert torch.allclose(Minv, Minv.T, rtol=1e-10, atol=1e-12 * float(Minv.abs().max()))
                if model.requires_spd:
                    assert float(torch.linalg.eigvalsh(0.5 * (Minv + Minv.T)).min()) > 0

    # export: a per-matrix preconditioner that is the model's M, or a reason naming the model
    one = one_system_batch(_data(name, seeds=(7,))[0])
    reason = model.matrix_export_reason(name)
    if cls.matrix_type is None:
        assert isinstance(reason, str) and reason.startswith(name)
        with pytest.raises(NotImplementedError):
            model.export_matrix(one)
    else:
        assert reason is None and cls.is_linear and model.kind == "preconditioner"
        exported = model.export_matrix(one)
        assert exported.type == cls.matrix_type
        with torch.no_grad():
            ref = _dense(model.preconditioner_for(one).apply, int(one.num_nodes)).numpy()
        assert np.abs(_matrix_inverse(exported) - ref).max() <= 1e-9 * np.abs(ref).max()

    # export: a program that computes what the model computes, or a reason
    spec = model.export_program()
    if isinstance(spec, str):
        assert spec
    else:
        assert isinstance(spec, ProgramSpec) and spec.describe()["outputs"]
        data = _data(name, seeds=(9,))[0]
        inputs = spec.inputs(data, 0)
        with torch.no_grad():
            got, ref = spec.module(*inputs), spec.reference(data, inputs)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(ref) == len(spec.outputs)
        for a, b in zip(got, ref):
            assert a.shape == b.shape and torch.allclose(a.to(b.dtype), b, rtol=1e-10, atol=1e-12)


def test_system_matrix_is_shared_by_one_batch_and_rebuilt_when_it_changes():
    from learnsolve.linalg import SparseMatrix
    from learnsolve.models.base import system_matrix

    batch = Batch.from_data_list([GENERATORS["poisson2d"](5, seed=0), GENERATORS["poisson2d"](4, seed=1)])
    A = system_matrix(batch)
    assert system_matrix(batch) is A  # the factor, its base, the fallback and the solve share it
    ref = SparseMatrix.from_pyg(batch).to_dense()
    torch.testing.assert_close(A.to_dense(), ref)
    with torch.no_grad():
        batch.edge_attr.mul_(2.0)  # modified in place: rebuilt
    B = system_matrix(batch)
    assert B is not A
    torch.testing.assert_close(B.to_dense(), 2 * ref)
    other = Batch.from_data_list([GENERATORS["poisson2d"](5, seed=0)])
    assert system_matrix(other).shape == (25, 25)
    with torch.inference_mode():  # inference tensors keep no version counter: still cached by identity
        inf = Batch.from_data_list([GENERATORS["poisson2d"](3, seed=2)])
        assert system_matrix(inf) is system_matrix(inf)
