"""Compiled programs: a model's network as a plain tensor function of ONE linear system, saved and checked.

The model says what its program is (:meth:`learnsolve.models.base.LearnedModel.export_program`: a
:class:`~learnsolve.models.base.ProgramSpec` whose module calls the model's own tensor functions, or the
reason why it has none); this module compiles it, ``torch.export`` first (non-strict, dynamic n and E) and a
TorchScript trace when that fails, and keeps a program only when, loaded back from its file, it reproduces the
model's batched code path on the trace example AND on a system of another size (:func:`compile_program`).

Measured with torch 2.13: ``torch.export`` captures the neural_if, lowrank_precond and gnn_solver programs,
PyG's ``MessagePassing.propagate`` and the boolean masks included; the TorchScript trace fallback also
reproduces the models on other sizes (the traced ``feat.shape[0]`` stays symbolic).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from learnsolve.files import atomic_open

from .reader import PROGRAM_FILES, load_program_file


def example_system(rows: int, cols: int, seed: int):
    """A variable-coefficient 5-point diffusion system on a rows x cols grid (SPD, Dirichlet), as a PyG
    Data."""
    import numpy as np
    import scipy.sparse as sp

    from learnsolve.data import make_system

    rng = np.random.default_rng(seed)
    n = rows * cols
    k = np.exp(rng.standard_normal(n))
    idx = np.arange(n).reshape(rows, cols)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1, :].ravel(), idx[1:, :].ravel())]
    i = np.concatenate([p[0] for p in pairs])
    j = np.concatenate([p[1] for p in pairs])
    t = 2 * k[i] * k[j] / (k[i] + k[j])
    off = sp.coo_matrix((-t, (i, j)), shape=(n, n))
    A = (off + off.T).tocsr()
    A = (A + sp.diags(-np.asarray(A.sum(axis=1)).ravel() + k)).tocsr()  # diagonally dominant: SPD
    pos = np.stack(np.meshgrid(np.arange(rows) / rows, np.arange(cols) / cols, indexing="ij"),
                   -1).reshape(n, 2)
    return make_system(A, rng.standard_normal(n), pos=pos, coeff=k, family="export_check", params={},
                       seed=seed, x=np.zeros(n))


def check_systems(model: nn.Module):
    """(trace example, check system of another size): (5 x 6, 7 x 9) grids, or two grids of the model's one
    size."""
    n = getattr(model, "num_nodes", None)
    if n is None:
        return example_system(5, 6, 1), example_system(7, 9, 2)
    rows = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return example_system(rows, n // rows, 1), example_system(rows, n // rows, 2)


def compare(got: tuple, ref: tuple, float64: bool) -> float | None:
    """Largest relative deviation of ``got`` from ``ref`` when above tolerance (1e-10 when the network runs in
    float64, 1e-5 in float32), else None."""
    tol = 1e-10 if float64 else 1e-5
    worst = 0.0
    if len(got) != len(ref):
        return float("inf")
    for a, b in zip(got, ref):
        a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = float(b.abs().max()) if b.numel() else 0.0
        dev = float((a - b).abs().max()) / max(scale, 1e-300) if b.numel() else 0.0
        worst = max(worst, dev)
    return worst if not worst <= tol else None


def _save_program(fmt: str, module: nn.Module, example: tuple, dynamic: bool, path: Path) -> None:
    if fmt == "torch.export":
        from torch.export import Dim

        n = Dim("n", min=2) if dynamic else None
        E = Dim("E", min=2)
        vec = None if n is None else {0: n}
        num_entries, num_nodes = example[1].shape[0], example[2].shape[0]
        # extra inputs: per node (length n, like feat) or per entry of A (length E, like values)
        extra = tuple({0: E} if x.shape[0] == num_entries != num_nodes else vec for x in example[3:])
        shapes = ({1: E}, {0: E}, vec) + extra
        ep = torch.export.export(module, example, dynamic_shapes=shapes, strict=False)
        with atomic_open(path, "wb") as fh:
            torch.export.save(ep, fh)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated (torch.export is the first choice)
            ts = torch.jit.trace(module, example, check_trace=False)
            with atomic_open(path, "wb") as fh:
                torch.jit.save(ts, fh)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compile_program(model: nn.Module, folder: Path, formats=("torch.export", "torchscript")) -> dict:
    """Write the model's program into ``folder``: torch.export first (dynamic n and E unless the model serves
    one size), TorchScript (trace) when that fails. Returns the config.json fields ``program``,
    ``program_format``, ``program_note`` (why none, or what was checked) and ``program_inputs``."""
    spec = model.export_program()
    if isinstance(spec, str):
        return {"program": None, "program_format": None, "program_note": spec, "program_inputs": None}
    module = spec.module.eval()
    fixed = getattr(model, "num_nodes", None)
    systems = check_systems(model)
    inputs = [spec.inputs(d, seed) for seed, d in enumerate(systems)]
    float64 = all(p.dtype == torch.float64 for p in module.parameters())
    with torch.no_grad():
        refs = [_as_tuple(spec.reference(d, i)) for d, i in zip(systems, inputs)]
    describe = spec.describe()
    if fixed is not None:
        describe["inputs"] = [*describe["inputs"],
                              f"n must equal num_nodes = {fixed} (the one size it serves)"]
    describe["dynamic"] = ["E"] if fixed is not None else ["n", "E"]
    notes = []
    for fmt in formats:
        path = folder / PROGRAM_FILES[fmt]
        try:
            with torch.no_grad():
                _save_program(fmt, module, inputs[0], fixed is None, path)
                prog = load_program_file(fmt, path)
                devs = [compare(_as_tuple(prog(*i)), r, float64) for i, r in zip(inputs, refs)]
        except Exception as e:  # noqa: BLE001 -- any exporter failure means: try the next path
            path.unlink(missing_ok=True)
            notes.append(f"{fmt} failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})")
            continue
        bad = [(int(d.num_nodes), dev) for d, dev in zip(systems, devs) if dev is not None]
        if bad:
            path.unlink(missing_ok=True)
            notes.append(f"{fmt}: the program differs from the model on a system with n = {bad[0][0]} "
                         f"(relative deviation {bad[0][1]:.2e}); not kept")
            continue
        sizes = sorted({int(d.num_nodes) for d in systems})
        return {"program": path.name, "program_format": fmt,
                "program_note": "; ".join(notes + [f"checked against the model on n = {sizes}"]),
                "program_inputs": describe}
    return {"program": None, "program_format": None, "program_note": "no program: " + "; ".join(notes),
            "program_inputs": describe}


__all__ = ["check_systems", "compare", "compile_program", "example_system"]
