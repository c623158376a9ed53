"""Dataset caching (atomic, validated) and the DataModule, with a small independent generator."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from learnsolve.data import make_rhs, make_system
from learnsolve.data.dataset import CacheError, LinearSystemDataset
from learnsolve.linalg import SparseMatrix, solve
from learnsolve.training.datamodule import LinearSystemDataModule

CALLS = []


def tridiag(m, seed=0, rhs="random", shift=0.0, fail_at=None):
    """1D variable-coefficient diffusion (SPD), the reference needs no learnsolve code."""
    if fail_at is not None and seed == fail_at:
        raise KeyboardInterrupt("simulated interruption")
    CALLS.append(seed)
    rng = np.random.default_rng(seed)
    k = np.exp(rng.standard_normal(m + 1))
    A = sp.diags([-k[1:-1], k[:-1] + k[1:] + shift, -k[1:-1]], [-1, 0, 1], shape=(m, m))
    pos = np.linspace(0, 1, m)[:, None]
    return make_system(A, make_rhs(rhs, pos, rng), pos=pos, coeff=k[:-1], family="tridiag",
                       params={"m": m, "shift": shift}, seed=seed)


GENS = {"tridiag": tridiag}


def make(tmp_path, **kw):
    args = {"data_dir": tmp_path, "family": "tridiag", "size": 7, "count": 4, "seed": 10, "generators": GENS, "progress": False}
    args.update(kw)
    return LinearSystemDataset(**args)


def test_generated_once_reused_and_keyed_by_config(tmp_path):
    CALLS.clear()
    ds = make(tmp_path)
    assert CALLS == [10, 11, 12, 13] and len(ds) == 4
    ds2 = make(tmp_path)
    assert CALLS == [10, 11, 12, 13]  # loaded from the cache, not regenerated
    for i in range(4):
        assert torch.equal(ds[i].edge_attr, ds2[i].edge_attr) and torch.equal(ds[i].b, ds2[i].b)
        A = sp.csr_matrix((ds[i].edge_attr.numpy(), ds[i].edge_index.numpy()), shape=(7, 7))
        assert np.linalg.norm(A @ ds[i].x.numpy() - ds[i].b.numpy()) < 1e-12 * np.linalg.norm(ds[i].b.numpy())
    ds3 = make(tmp_path, params={"shift": 1.0})
    assert ds3.root != ds.root and len(CALLS) == 8
    assert not torch.equal(ds3[0].edge_attr, ds[0].edge_attr)


def test_interrupted_generation_leaves_no_loadable_cache(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, params={"fail_at": 12})
    folders = list((tmp_path / "tridiag").iterdir())
    assert len(folders) == 1
    assert not (folders[0] / "systems.pt").exists()
    assert not [p for p in folders[0].iterdir() if ".tmp-" in p.name]


def test_corrupt_and_foreign_caches_are_reported(tmp_path):
    ds = make(tmp_path)
    path = os.path.join(ds.root, "systems.pt")
    with open(path, "wb") as f:
        f.write(b"not a torch file")
    with pytest.raises(CacheError, match="systems.pt"):
        make(tmp_path)
    ds = make(tmp_path, seed=99)
    with open(os.path.join(ds.root, "meta.json")) as f:
        meta = json.loads(f.read())
    meta["config"]["seed"] = 5
    with open(os.path.join(ds.root, "meta.json"), "w") as f:
        f.write(json.dumps(meta))
    with pytest.raises(CacheError, match="another dataset"):
        make(tmp_path, seed=99)


def test_datamodule_splits_batches_and_solve(tmp_path):
    dm = LinearSystemDataModule(family="tridiag", size=9, num_train=6, num_val=2, num_test=2, seed=0, batch_size=3,
                                data_dir=str(tmp_path), extra_test_sizes=[15], generators=GENS, progress=False)
    dm.prepare_data()
    dm.setup("fit")
    seeds = {k: {int(d.seed) for d in ds} for k, ds in dm.datasets.items()}
    assert all(not (seeds[a] & seeds[b]) for a in seeds for b in seeds if a < b)
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 3 and batch.num_nodes == 27
    A = SparseMatrix.from_pyg(batch)
    x, info = solve(A, batch.b, rtol=1e-12, return_info=True)
    assert info.converged.shape == (3,)
    assert torch.allclose(x, batch.x, rtol=1e-9, atol=1e-12)
    loaders = dm.test_dataloader()
    assert [next(iter(ld)).num_nodes for ld in loaders] == [2 * 9, 2 * 15]
    order1 = [int(s) for b in dm.train_dataloader() for s in b.seed]
    order2 = [int(s) for b in dm.train_dataloader() for s in b.seed]
    assert order1 == order2  # deterministic shuffling


def test_global_batch_is_divided_by_the_world_size(tmp_path):
    from types import SimpleNamespace

    dm = LinearSystemDataModule(family="tridiag", size=5, num_train=8, num_val=2, num_test=2, batch_size=4,
                                data_dir=str(tmp_path), generators=GENS, progress=False)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.per_device_batch_size == 2
    assert next(iter(dm.train_dataloader())).num_graphs == 2
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        dm.train_dataloader()
