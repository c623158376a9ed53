"""Training data from a mixture of families and sizes (``LinearSystemDataModule(mixture=...)``, data=mixed):
counts per component, seeds disjoint between splits, mixed batches that collate and solve per graph, the
cache reused, DDP sharding, conf/data/mixed.yaml, and `python train.py model=neural_if data=mixed` end to end."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch
from hydra import compose, initialize_config_dir
from torch_geometric.loader import DataLoader

from learnsolve.cli._hydra import CONF_DIR
from learnsolve.data import GENERATORS, to_scipy
from learnsolve.data.generators import SYMMETRIC
from learnsolve.linalg import SparseMatrix, cg, make_preconditioner
from learnsolve.training.datamodule import (
    COMPONENT_STRIDE,
    SPLIT_OFFSETS,
    LinearSystemDataModule,
    MixtureDataset,
    apportion,
    parse_mixture,
)

from .cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]

# tiny systems of four families (n from 36 to 64); poisson3d has fixed counts, the others share the rest by weight
MIX = [{"family": "diffusion2d", "sizes": [6, 8], "params": {"sigma2": 1.0}, "weight": 2},
       {"family": "poisson3d", "size": 4, "count": {"train": 3, "val": 1, "test": 1}},
       {"family": "fem_poisson", "size": 60},
       {"family": "elasticity2d", "size": 4}]
# train 12: poisson3d 3, the other 9 by weight 2:1:1 -> 5 (3 + 2 over two sizes), 2, 2; val / test 5: 1 each
EXPECTED = {"train": [3, 2, 3, 2, 2], "val": [1, 1, 1, 1, 1], "test": [1, 1, 1, 1, 1]}
FAMILIES = ["diffusion2d", "diffusion2d", "poisson3d", "fem_poisson", "elasticity2d"]


def counting(calls: Counter) -> dict:
    def wrap(name):
        def gen(size, **kw):
            calls[name] += 1
            return GENERATORS[name](size, **kw)
        return gen
    return {name: wrap(name) for name in GENERATORS}


def make_dm(tmp_path, mixture=MIX, generators=None, **kw):
    args = {"family": "mixed", "size": None, "num_train": 12, "num_val": 5, "num_test": 5, "seed": 7,
            "batch_size": 4, "data_dir": str(tmp_path), "progress": False, "generators": generators,
            "mixture": mixture}
    return LinearSystemDataModule(**{**args, **kw})


def component_of(data) -> int:
    return (int(data.seed) - 7) % 1_000_000 // COMPONENT_STRIDE


def test_counts_per_component_and_seeds_unique_and_disjoint_between_splits(tmp_path):
    dm = make_dm(tmp_path, extra_test_sizes=[10])
    assert dm.is_mixture and dm.size is None and dm.families == ["diffusion2d", "poisson3d", "fem_poisson",
                                                                  "elasticity2d"]
    assert dm.component_counts == EXPECTED and dm.counts == {"train": 12, "val": 5, "test": 5}
    assert [s[:3] for s in dm.split_specs()] == [("train", "mixed", 12), ("val", "mixed", 5), ("test", "mixed", 5),
                                                 ("test_10", 10, 5)]
    dm.prepare_data()
    dm.setup("fit")
    seeds = {}
    for split, counts in EXPECTED.items():
        ds = dm.datasets[split]
        assert isinstance(ds, MixtureDataset) and len(ds) == sum(counts)
        got = Counter(component_of(d) for d in ds)
        assert [got[i] for i in range(len(counts))] == counts
        for d in ds:  # the right family, and the component's size
            c = dm.components[component_of(d)]
            assert d.family == FAMILIES[c.index] == c.family
            assert json.loads(d.params)[{"fem_poisson": "size"}.get(c.family, "m")] == c.size
            assert int(d.seed) - 7 - SPLIT_OFFSETS[split] - COMPONENT_STRIDE * c.index in range(counts[c.index])
        seeds[split] = [int(d.seed) for d in ds]
    extra = dm.datasets["test_10"]  # the diffusion2d component (its params) at the larger size
    assert {d.family for d in extra} == {"diffusion2d"} and extra[0].num_nodes == 100
    assert extra[0].params["sigma2"] == 1.0
    seeds["test_10"] = [int(d.seed) for d in extra]
    every = [s for v in seeds.values() for s in v]
    assert len(every) == len(set(every))  # unique across components AND splits
    rows = dm.mixture_specs()
    assert sum(r["count"] for r in rows if r["split"] == "train") == 12 and all(r["count"] for r in rows)


def test_mixed_batches_collate_and_solve_per_graph(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    batch = next(iter(DataLoader(dm.datasets["train"], batch_size=12, shuffle=False)))
    assert batch.num_graphs == 12 and set(batch.family) == set(FAMILIES)
    assert batch.pos.shape == (batch.num_nodes, 3)  # 2D positions padded to poisson3d's 3
    A = SparseMatrix.from_pyg(batch)
    b = batch.b.to(torch.float64)
    x, info = cg(A, b, M=make_preconditioner("ic0", A), rtol=1e-10, maxiter=2000)
    assert info.converged.shape == (12,) and bool(info.converged.all())
    assert (info.iterations > 0).all()
    for g in range(batch.num_graphs):  # each graph is its own system: scipy's direct solve per graph
        d = batch.get_example(g)
        ref = spla.spsolve(to_scipy(d).tocsc(), d.b.numpy())
        xg = x[batch.ptr[g]:batch.ptr[g + 1]].numpy()
        assert np.linalg.norm(xg - ref) <= 1e-7 * np.linalg.norm(ref), (g, d.family)
        assert torch.allclose(d.x.double(), torch.from_numpy(ref), rtol=1e-8, atol=1e-10)


def test_second_construction_reuses_the_caches(tmp_path):
    calls = Counter()
    dm = make_dm(tmp_path, generators=counting(calls))
    dm.prepare_data()
    assert sum(calls.values()) == sum(map(sum, EXPECTED.values()))
    assert calls == Counter({"diffusion2d": 9, "poisson3d": 5, "fem_poisson": 4, "elasticity2d": 4})
    calls.clear()
    dm2 = make_dm(tmp_path, generators=counting(calls))
    t0 = time.perf_counter()
    dm2.setup("fit")
    assert not calls and time.perf_counter() - t0 < 5.0  # loaded, not regenerated
    for split in EXPECTED:
        assert dm2.datasets[split].roots == dm.datasets[split].roots
        assert all(torch.equal(a.edge_attr, b.edge_attr) for a, b in zip(dm.datasets[split], dm2.datasets[split]))
    make_dm(tmp_path, generators=counting(calls), seed=8).setup("fit")  # another seed: new caches
    assert sum(calls.values()) == sum(map(sum, EXPECTED.values()))


def test_ddp_ranks_together_cover_the_single_process_batches(tmp_path):
    dm = make_dm(tmp_path)
    dm.setup("fit")
    single = [[int(s) for s in b.seed] for b in dm.train_dataloader()]
    assert sorted(s for b in single for s in b) == sorted(int(d.seed) for d in dm.datasets["train"])
    ranks = []
    for r in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=r)
        ranks.append([[int(s) for s in b.seed] for b in dm.train_dataloader()])
    for i, b in enumerate(single):
        assert sorted(ranks[0][i] + ranks[1][i]) == sorted(b)


def test_apportion_and_invalid_mixtures(tmp_path):
    assert apportion(256, [1] * 6) == [43, 43, 43, 43, 42, 42] and apportion(0, [1, 2]) == [0, 0]
    assert apportion(5, [2, 1, 1]) == [3, 1, 1] and sum(apportion(7, [0.3, 0.3, 0.4])) == 7
    comps = parse_mixture([{"family": "poisson2d", "sizes": [8, 16], "count": 2}])
    assert [(c.size, c.index, c.counts["val"]) for c in comps] == [(8, 0, 2), (16, 1, 2)]
    dm = make_dm(tmp_path, mixture=[{"family": "poisson2d", "sizes": [8, 16], "count": {"train": 4}},
                                    {"family": "poisson2d", "size": 12, "count": {"val": 1, "test": 2}}])
    assert dm.component_counts == {"train": [4, 4, 0], "val": [0, 0, 1], "test": [0, 0, 2]}  # num_* unused
    bad = [
        ({"mixture": [{"family": "poisson2d"}]}, "exactly one of size or sizes"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "sizes": [8]}]}, "exactly one of size or sizes"),
        ({"mixture": [{"family": "nope", "size": 8}]}, "unknown data family 'nope'"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "weigth": 1}]}, "unknown keys"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "weight": 1, "count": 2}]}, "weight or count"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "weight": 0}]}, "positive number"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "count": {"tran": 2}}]}, "count must be"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "count": 20}, {"family": "poisson3d", "size": 4}]},
         "fixed counts take 20 train systems"),
        ({"mixture": [{"family": "poisson2d", "size": 8, "count": {"train": 2}}]}, "val split has no system"),
        ({"mixture": []}, "non-empty list"),
        ({"size": 32}, "no module-level size or params"),
        ({"params": {"sigma2": 1.0}}, "no module-level size or params"),
        ({"family": "diffusion2d"}, "needs family='mixed'"),
        ({"mixture": None}, "needs family='mixed'"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            make_dm(tmp_path, **kw)
    assert LinearSystemDataModule(family="poisson2d", size=8).families == ["poisson2d"]  # one family: unchanged


def _compose(name, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_the_mixed_config_spd_families_of_500_to_5000_unknowns(tmp_path):
    import hydra

    cfg = _compose("generate", "data=mixed", f"paths.root_dir={tmp_path}")
    assert cfg.data.family == "mixed" and cfg.data.size is None
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.counts == {"train": 256, "val": 32, "test": 32}
    assert set(dm.families) == {"diffusion2d", "anisotropic2d", "poisson2d", "poisson3d", "fem_poisson",
                                "elasticity2d"}
    assert all(SYMMETRIC[f] for f in dm.families) and SYMMETRIC.get(cfg.data.family, True)  # train.py's check
    per_family = Counter()
    for c, n in zip(dm.components, dm.component_counts["train"]):
        per_family[c.family] += n
        assert n > 0 and all(k > 0 for k in (dm.component_counts["val"][c.index], dm.component_counts["test"][c.index]))
        assert 500 <= GENERATORS[c.family](c.size, seed=0, **c.params).num_nodes <= 5000, c
    assert max(per_family.values()) - min(per_family.values()) <= 1  # equal weights
    assert dm.extra_test_component.family == "diffusion2d" and dm.extra_test_sizes == [64, 128]
    assert dm.extra_test_component.params == {"sigma2": 1.0, "corr_len": 0.1}
    train = _compose("train", "data=mixed", "model=neural_if").data  # what mixed.yaml sets is what train.py runs
    assert (train.num_train, train.num_val, train.num_test, list(train.extra_test_sizes)) == (256, 32, 32, [64, 128])


def test_train_neural_if_on_the_mixture_end_to_end(tmp_path):
    out = run_cli("train", "model=neural_if", "data=mixed", f"paths.root_dir={tmp_path}", "data.num_train=6",
                  "data.num_val=6", "data.num_test=6", "data.batch_size=3", "data.progress=false",
                  "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none", "report=false",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/iters" in out.stdout
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert (run / "checkpoints" / "last.ckpt").exists()
    families = {p.parent.parent.name for p in (tmp_path / "data").glob("*/*/systems.pt")}
    assert families == {"diffusion2d", "anisotropic2d", "poisson2d", "poisson3d", "fem_poisson", "elasticity2d"}


def test_components_of_one_system_collate_with_larger_ones(tmp_path):
    """A one-system cache returns scalars (seed, symmetric) as Python numbers, a larger one as (1,) tensors: the
    mixture makes them agree, so a split whose component holds a single system still batches (regression:
    the 256-system data=mixed crashed in validation)."""
    mix = [{"family": "diffusion2d", "size": 6, "count": {"train": 2, "val": 3, "test": 1}},
           {"family": "poisson2d", "size": 5, "count": {"train": 2, "val": 1, "test": 1}}]
    dm = make_dm(tmp_path, mixture=mix)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    seeds = torch.cat([b.seed.view(-1) for b in batches])
    assert seeds.numel() == 4 and seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 4
