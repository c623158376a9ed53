"""LightningDataModule over cached generated datasets.

Splits are separated by seed: train uses seeds ``seed + [0, num_train)``, val starts at
``seed + 1_000_000``, test at ``seed + 2_000_000`` and each extra (larger) test size at
``seed + 3_000_000 + 1_000_000 * i``, so no system appears in two splits. Batches are PyG batches
(block-diagonal A; ``SparseMatrix.from_pyg(batch)`` solves each graph as its own system). Under DDP
``batch_size`` is the global batch: each process loads ``batch_size // world_size`` systems.
Shuffling uses a generator seeded from ``seed``, so runs are reproducible.

The training loader always samples through a ``DistributedSampler`` (``num_replicas = world size``,
one replica in a single process) seeded from ``seed``: it draws one permutation per epoch and rank
``r`` takes positions ``r, r + W, r + 2W, ...``, so step ``i`` of every rank together covers exactly
the systems of step ``i`` of a single process with the same global batch. DDP averages the per-rank
gradients, so 1 and W processes take the same optimisation steps up to rounding. Validation and test
loaders are sharded only when ``W > 1``; ``report_dataloader`` is never sharded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DistributedSampler
from torch_geometric.loader import DataLoader

from learnsolve.data.dataset import LinearSystemDataset

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}


class LinearSystemDataModule(pl.LightningDataModule):
    def __init__(self, family: str = "diffusion2d", size: int = 32, num_train: int = 64, num_val: int = 16,
                 num_test: int = 16, seed: int = 0, rhs: str = "random", params: Mapping[str, Any] | None = None,
                 batch_size: int = 8, data_dir: str = "data", extra_test_sizes: Sequence[int] = (),
                 num_workers: int = 0, progress: bool = True, generators=None):
        super().__init__()
        for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                        ("batch_size", batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.family, self.size, self.seed, self.rhs = family, int(size), int(seed), rhs
        self.params = dict(params or {})
        self.counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.batch_size = int(batch_size)
        self.data_dir = str(data_dir)
        self.extra_test_sizes = [int(s) for s in extra_test_sizes]
        self.num_workers = int(num_workers)
        self.progress = progress
        self.generators = generators
        self.datasets: dict[str, LinearSystemDataset] = {}

    def _dataset(self, size: int, count: int, offset: int) -> LinearSystemDataset:
        return LinearSystemDataset(self.data_dir, self.family, size, count, seed=self.seed + offset, rhs=self.rhs,
                                   params=self.params, generators=self.generators, progress=self.progress)

    def prepare_data(self) -> None:
        """Generate the caches once (rank zero); ``setup`` then only loads them."""
        self._build_all()

    def split_specs(self) -> list[tuple[str, int, int, int]]:
        """(name, size, count, seed offset) of every split, extra test sets included."""
        specs = [(k, self.size, self.counts[k], off) for k, off in SPLIT_OFFSETS.items()]
        specs += [(f"test_{s}", s, self.counts["test"], 3_000_000 + 1_000_000 * i)
                  for i, s in enumerate(self.extra_test_sizes)]
        return specs

    def build(self, name: str) -> LinearSystemDataset:
        """Generate or load one split (cached in ``self.datasets``)."""
        if name not in self.datasets:
            spec = {k: (size, count, off) for k, size, count, off in self.split_specs()}
            if name not in spec:
                raise KeyError(f"unknown split {name!r}; have {', '.join(spec)}")
            size, count, off = spec[name]
            self.datasets[name] = self._dataset(size, count, off)
        return self.datasets[name]

    def _check_data_dir(self) -> None:
        root = Path(self.data_dir)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"data_dir {str(root)!r} exists but is not a folder: point data.data_dir "
                                     "(or paths.data_dir) to a folder for the generated datasets")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the dataset folder data_dir={str(root)!r} ({e.strerror}): set "
                          "data.data_dir (or paths.data_dir) to a writable folder") from e

    def _build_all(self) -> None:
        self._check_data_dir()
        for name, *_ in self.split_specs():
            self.build(name)

    def setup(self, stage: str | None = None) -> None:
        self._build_all()

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        return int(getattr(self.trainer, "world_size", 1)), int(getattr(self.trainer, "global_rank", 0))

    @property
    def per_device_batch_size(self) -> int:
        world, _ = self._world()
        if self.batch_size % world:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by the world size {world}")
        return self.batch_size // world

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        world, rank = self._world()
        if shuffle or world > 1:
            # our own sampler (Lightning keeps an existing DistributedSampler): the same global batches at any W
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
            return DataLoader(ds, batch_size=self.per_device_batch_size, sampler=sampler,
                              num_workers=self.num_workers)
        return DataLoader(ds, batch_size=self.per_device_batch_size, shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self):
        return self._loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self):
        keys = ["test"] + [f"test_{s}" for s in self.extra_test_sizes]
        loaders = [self._loader(self.datasets[k], shuffle=False) for k in keys]
        return loaders[0] if len(loaders) == 1 else loaders

    def report_dataloader(self) -> DataLoader:
        """The whole test split, unsharded, in batches of the global batch size (rank-zero report)."""
        return DataLoader(self.build("test"), batch_size=self.batch_size, shuffle=False)
