"""Section ``jax``: ``learnsolve.jax.solve`` against lineax (a JAX linear-solve library), forward + backward.

JAX and lineax are optional (``pip install -e '.[jax]'`` and ``pip install lineax``); the section is skipped with a
note when either is absent. Protocol: float64 (``jax_enable_x64``), Jacobi-preconditioned CG to rtol 1e-8 in the
2-norm for the forward and the adjoint; loss = <c, x> with c random; one pass = ``jax.grad`` of the loss w.r.t. A's
stored values (a BCOO's data) and b, jitted, compiled before timing (compile time reported apart); passes
alternate between the contenders; medians of ``--repeats`` passes.

- learnsolve, ``backend="jax"``: JAX-native Krylov loop, implicit backward by ``jax.custom_vjp`` (one adjoint CG).
- learnsolve, ``backend="torch"``: the torch core (compiled CG kernel) through ``jax.pure_callback``.
- lineax: ``lx.linear_solve(FunctionLinearOperator(x -> A @ x with A the BCOO, positive_semidefinite_tag), b,
  lx.CG(rtol=1e-8, atol=0, norm=2-norm), options={"preconditioner": diagonal 1/diag(A)})``; its backward is also
  an adjoint solve. The BCOO product is JAX's own (a scatter-add on the CPU); learnsolve's JAX-native loop uses an
  ELL layout (gathers only) when the pattern is a constant, as here: most of the difference under ``jax.vmap`` is
  that layout, not the Krylov loop: the row "lineax + ELL product" (reference, no goal) gives lineax the same
  gather-only product.

Problems: one ``diffusion2d`` system on a 128 x 128 grid (32 x 32 with ``--quick``), and a ``jax.vmap`` over 64
systems (different matrices, one pattern) of 64 x 64 (16 x 16 with ``--quick``). Goal: faster than lineax on both
(ratio < 1). Checked: the gradients of all contenders agree (relative difference).
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import numpy as np

from .harness import Section, ms
from .problems import Config, Problems, diffusion_systems

NAME = "jax"
TITLE = "9. JAX: learnsolve.jax.solve vs lineax (Jacobi-PCG, forward + implicit backward)"
RTOL = 1e-8


def _setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import lineax as lx
    from jax.experimental import sparse as jsparse

    from learnsolve.jax import solve

    def two_norm(r):
        return jnp.sqrt(jnp.sum(r * r))

    def ours(backend):
        def loss(data, b, idx, c):
            A = jsparse.BCOO((data, idx), shape=(b.shape[0], b.shape[0]))
            return jnp.vdot(c, solve(A, b, method="cg", precond="jacobi", rtol=RTOL, backend=backend))
        return loss

    def theirs(data, b, idx, c, ell=False):
        n = b.shape[0]
        A = jsparse.BCOO((data, idx), shape=(n, n))
        d = jax.ops.segment_sum(jnp.where(idx[:, 0] == idx[:, 1], data, 0.0), idx[:, 0], num_segments=n)

        def mv(x):
            return A @ x

        if ell:  # the same gather-only ELL product learnsolve's loop uses (the pattern is a constant here)
            src, ecols = _ell(n, np.asarray(idx))
            P = jnp.concatenate([data, jnp.zeros(1, data.dtype)])[src]

            def mv(x):
                return jnp.sum(P * x[ecols], axis=1)

        op = lx.FunctionLinearOperator(mv, jax.ShapeDtypeStruct((n,), b.dtype), tags=lx.positive_semidefinite_tag)
        pre = lx.DiagonalLinearOperator(jax.lax.stop_gradient(1.0 / d))
        pre = lx.TaggedLinearOperator(pre, lx.positive_semidefinite_tag)
        sol = lx.linear_solve(op, b, lx.CG(rtol=RTOL, atol=0.0, norm=two_norm, max_steps=100 * n),
                              options={"preconditioner": pre})
        return jnp.vdot(c, sol.value)

    return jax, jnp, {"learnsolve (jax)": ours("jax"), "learnsolve (torch)": ours("torch"), "lineax": theirs,
                      "lineax + ELL product": partial(theirs, ell=True)}


def _ell(n: int, idx: np.ndarray):
    """(src (n, K): entry of each slot, nnz for padding; ecols (n, K)) for COO indices sorted by row."""
    rows, cols = idx[:, 0], idx[:, 1]
    if np.any(np.diff(rows) < 0):
        raise ValueError("the benchmark's ELL layout wants row-sorted indices")
    cnt = np.bincount(rows, minlength=n)
    K = int(cnt.max())
    pos = np.arange(rows.size) - np.concatenate([[0], np.cumsum(cnt)[:-1]])[rows]
    src = np.full((n, K), rows.size)
    src[rows, pos] = np.arange(rows.size)
    ecols = np.zeros((n, K), dtype=np.int64)
    ecols[rows, pos] = cols
    return src, ecols


def _closed(f, idx, data, b, c):
    return f(data, b, idx, c)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-300))


def _case(jax, jnp, fns, mats, bs, c, vmapped: bool, repeats: int):
    idx = jnp.asarray(np.stack([mats[0].tocoo().row, mats[0].tocoo().col], 1).astype(np.int32))
    datas = jnp.asarray(np.stack([m.tocoo().data for m in mats]))
    B = jnp.asarray(bs)
    C = jnp.asarray(c)
    compiled, compile_s, grads = {}, {}, {}
    for name, f in fns.items():
        g = jax.grad(partial(_closed, f, idx), argnums=(0, 1))  # the pattern is a constant of the jitted function
        if vmapped:
            g = jax.vmap(g)
            args = (datas, B, C)
        else:
            args = (datas[0], B[0], C[0])
        t0 = time.perf_counter()
        fn = jax.jit(g)
        grads[name] = jax.block_until_ready(fn(*args))
        compile_s[name] = time.perf_counter() - t0
        compiled[name] = (fn, args)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, (fn, args) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    ref = grads["lineax"]
    diffs = {name: max(_rel(g[0], ref[0]), _rel(g[1], ref[1])) for name, g in grads.items()}
    return times, compile_s, diffs


def run(cfg: Config, P: Problems, sec: Section) -> None:
    try:
        import jax
        import lineax  # noqa: F401
    except ImportError as e:
        sec.notes.append(f"jax: {e.name} is not installed (pip install -e '.[jax]' lineax); section skipped")
        return
    jax, jnp, fns = _setup()
    quick = cfg.n_side <= 200
    m1, mb, count = (32, 16, 64) if quick else (128, 64, 64)
    rng = np.random.default_rng(cfg.seed + 9)
    cases = [(f"diffusion2d {m1}x{m1}, one system", m1, 1, False),
             (f"{count} systems diffusion2d {mb}x{mb}, jax.vmap", mb, count, True)]
    for label, m, cnt, vm in cases:
        mats, bs = diffusion_systems(m, cnt, cfg.seed + 11)
        c = rng.standard_normal(bs.shape)
        times, comp, diffs = _case(jax, jnp, fns, mats, bs, c, vm, cfg.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in ("learnsolve (jax)", "learnsolve (torch)"):
            sec.row(f"grad of <c, x>, {label}: {name}", ms(med[name]), ms(med["lineax"]), baseline_name="lineax",
                    ratio=med[name] / med["lineax"], target=("<=", 1.0),
                    note=f"gradients differ from lineax's by {diffs[name]:.1e}; compile {comp[name]:.1f} s vs "
                         f"{comp['lineax']:.1f} s")
        sec.row(f"grad of <c, x>, {label}: lineax + ELL product (reference)", ms(med["lineax + ELL product"]),
                ms(med["lineax"]), baseline_name="lineax", ratio=med["lineax + ELL product"] / med["lineax"],
                note="lineax with learnsolve's gather-only product: how much of the gap is the sparse layout; "
                     f"gradients differ by {diffs['lineax + ELL product']:.1e}")
        sec.details[label] = {"seconds": times, "compile_s": comp, "gradient_rel_diff_vs_lineax": diffs}
    sec.notes.append("jax: float64, Jacobi-PCG rtol 1e-8 (2-norm) forward and adjoint, jitted grad w.r.t. "
                     "(BCOO data, b), compile excluded; passes alternate")
