"""Wall time of the generators: ``python -m learnsolve.data.timing [--families ...] [--sizes ...]``.

For each (family, size) one system is generated with ``reference=False`` (matrix, right-hand side and
``Data`` packaging; the best of ``--repeats`` runs, since the first large allocation of a process costs
about 1 s more at n = 1e6) and, unless ``--no-reference`` or the size is above ``--reference-max-n``
unknowns, once more with the reference solve; both times are printed (seconds, ``time.perf_counter``),
with n and nnz. ``anisotropic2d`` uses the parameters of ``data=hard`` (random theta and epsilon, "fe").
Default sizes: 64, 256, 1024 per side for grid families; 4096, 65536, 1048576 nodes for ``graph_laplacian``.
"""

from __future__ import annotations

import argparse
import time

from .generators import GENERATORS

GRID_SIZES = (64, 256, 1024)
NODE_SIZES = {"graph_laplacian": (4096, 65536, 1048576), "fem_poisson": (4096, 65536, 262144)}
DEFAULT_FAMILIES = ("lognormal2d", "anisotropic2d", "channels2d", "graph_laplacian")
HARD_PARAMS = {"anisotropic2d": {"theta": "random", "epsilon": [1e-4, 1e-2], "stencil": "fe"}}


def time_generator(family: str, size: int, *, reference: bool, seed: int = 0,
                   **params) -> tuple[float, int, int]:
    """Seconds to generate one system, its number of unknowns and stored entries."""
    t0 = time.perf_counter()
    data = GENERATORS[family](size, seed=seed, reference=reference, **params)
    return time.perf_counter() - t0, int(data.num_nodes), int(data.edge_attr.numel())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=sorted(GENERATORS))
    ap.add_argument("--sizes", nargs="+", type=int, default=None,
                    help="sizes for every family (default: per family)")
    ap.add_argument("--repeats", type=int, default=2, help="runs without the reference solve (best reported)")
    ap.add_argument("--no-reference", action="store_true", help="skip the timing with the reference solve")
    ap.add_argument("--reference-max-n", type=int, default=300_000,
                    help="time the reference solve only up to this many unknowns (default 300000)")
    args = ap.parse_args(argv)
    print(f"{'family':16s} {'size':>8s} {'n':>9s} {'nnz':>9s} {'no ref [s]':>11s} {'with ref [s]':>12s}")
    for family in args.families:
        params = HARD_PARAMS.get(family, {})
        for size in args.sizes or NODE_SIZES.get(family, GRID_SIZES):
            runs = [time_generator(family, size, reference=False, **params)
                    for _ in range(max(1, args.repeats))]
            t, n, nnz = min(runs)
            ref = "-"
            if not args.no_reference and n <= args.reference_max_n:
                ref = f"{time_generator(family, size, reference=True, **params)[0]:.3f}"
            print(f"{family:16s} {size:8d} {n:9d} {nnz:9d} {t:11.3f} {ref:>12s}", flush=True)


if __name__ == "__main__":
    main()
