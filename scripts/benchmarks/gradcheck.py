"""Section ``gradcheck``: relative error of implicit gradients vs a dense float64 reference.

Protocol: relative error (2-norm) of the gradients of loss = ||x||^2 w.r.t. A's values and b, implicit
``solve(rtol=1e-12)`` vs a dense float64 reference (``torch.linalg.solve`` on ``to_dense()`` with
autograd, dense gradient gathered at the pattern), on one variable-coefficient system of the generator
``diffusion2d`` (seed ``seed + 5``, i.i.d. log-normal cell coefficient, :mod:`benchmarks.problems`) on a
20 x 20 grid (10 x 10 with ``--quick``). Also reported: cond(A), the relative error of x and the
forward / adjoint iteration counts. Goal: <= 1e-8.
"""

from __future__ import annotations

import torch

from learnsolve.linalg import SparseMatrix, solve

from .harness import Section, rel_diff, requiring_grad
from .problems import Config, Problems, diffusion_systems

NAME = "gradcheck"
TITLE = "7. Gradient relative error vs dense float64 reference"


def run(cfg: Config, P: Problems, sec: Section) -> None:
    m = cfg.grad_grid
    (A,), bs = diffusion_systems(m, 1, cfg.seed + 5)
    S = SparseMatrix.from_scipy(A)
    n = A.shape[0]
    b0 = torch.from_numpy(bs[0])

    Ag, vals, b = requiring_grad(S, b0)
    x, info = solve(Ag, b, rtol=1e-12, return_info=True)
    x.square().sum().backward()

    D = S.to_dense().detach().clone().requires_grad_(True)
    bref = b0.clone().requires_grad_(True)
    xr = torch.linalg.solve(D, bref)
    xr.square().sum().backward()
    row, col = S.pattern.row.long(), S.pattern.col.long()
    gv_ref = D.grad[row, col]

    cond = float(torch.linalg.cond(D.detach()))
    for label, got, want in (("dL/d values", vals.grad, gv_ref), ("dL/d b", b.grad, bref.grad)):
        e = rel_diff(got, want)
        sec.row(
            f"grad rel. error {label} ({m}x{m} var. coeff.)",
            e,
            unit="",
            ratio=e,
            target=("<=", 1e-8),
            note="vs dense torch.linalg.differentiable.solve float64",
        )
    sec.details.update(
        grid=m,
        n=n,
        cond=cond,
        x_rel_err=rel_diff(x, xr),
        forward_iterations=int(info.iterations),
        adjoint_iterations=int(info.adjoint.iterations) if info.adjoint is not None else None,
    )
    sec.notes.append(
        f"gradcheck: n={n}, cond(A)={cond:.1e}, rtol=1e-12, loss=||x||^2, "
        f"x rel. err {sec.details['x_rel_err']:.1e}"
    )
