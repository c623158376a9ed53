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

Mixtures (``family="mixed"``, ``size=None``, ``mixture=[...]``, e.g. ``conf/data/mixed.yaml``): each split
draws from every component. A component is a mapping

    {family: NAME, size: S | sizes: [S1, S2, ...], params: {...}, rhs: KIND, weight: W | count: C}

``sizes`` expands into one component per size (``params`` and ``rhs``, default the module's ``rhs``, shared).
Counts per split: a component with ``count`` (an int: that many in every split; or ``{train: .., val: ..,
test: ..}``, missing splits 0; per size) takes exactly that; the components with ``weight`` (default 1) share
the rest of ``num_train`` / ``num_val`` / ``num_test`` by largest remainders, first across the listed entries
in proportion to their weights, then evenly across an entry's sizes (so a small split still covers the
families first). When every component has a ``count`` the ``num_*`` totals are not used. A component can get
no system in a small split. The expanded component ``i`` uses the seeds ``seed + split offset +
10_000 * i + [0, count)``: seeds are unique across the whole mixture (splits and components; at most 100
components of at most 10_000 systems per split), which keeps per-seed caches such as the validation
baselines' correct. Each (component, split) is its own ``LinearSystemDataset`` cache; a split is their
concatenation (:class:`MixtureDataset`), whose items are made collatable across families: ``pos`` is padded
with zero columns to at least 3 and ``params`` becomes its JSON string. ``extra_test_sizes`` of a mixture are
the first ``diffusion2d`` component (without one: the first component) at those sizes, plain
``LinearSystemDataset`` splits ``test_<size>`` as for one family.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DistributedSampler
from torch_geometric.loader import DataLoader

from learnsolve.data.dataset import LinearSystemDataset, plain

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
EXTRA_TEST_OFFSET, EXTRA_TEST_STRIDE = 3_000_000, 1_000_000
REPORT_OFFSET = 2_500_000  # the final table's held-out systems at a size of their own (report_dataloader)
# seed stride between the components of a mixture (and their most systems per split)
COMPONENT_STRIDE = 10_000
MAX_COMPONENTS = SPLIT_OFFSETS["val"] // COMPONENT_STRIDE  # seeds stay inside their split's range
MIXED = "mixed"            # the family name of a mixture
EXTRA_TEST_FAMILY = "diffusion2d"  # a mixture's extra_test_sizes: this component at the larger sizes
COMPONENT_KEYS = ("family", "size", "sizes", "params", "rhs", "weight", "count")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class MixtureComponent:
    """One (family, size, params) of a mixture: ``index`` in the expanded list (seed stride), ``entry`` the
    listed mapping it came from; ``counts`` fixed per split, or None when it takes a ``weight`` share."""

    family: str
    size: int
    params: dict = field(hash=False)
    rhs: str
    index: int
    entry: int
    weight: float | None = None
    counts: dict | None = field(default=None, hash=False)

    def seed(self, base: int, offset: int) -> int:
        return base + offset + COMPONENT_STRIDE * self.index


def parse_mixture(mixture: Sequence[Mapping[str, Any]], rhs: str = "random",
                  families: Sequence[str] | None = None) -> list[MixtureComponent]:
    """Validate the listed components and expand ``sizes`` (see the module docstring)."""
    out: list[MixtureComponent] = []
    if isinstance(mixture, (str, bytes, Mapping)) or not len(mixture):
        raise ValueError("mixture must be a non-empty list of components {family, size|sizes, params, "
                         "weight|count}")
    for e, raw in enumerate(plain(mixture)):
        where = f"mixture[{e}]"
        if not isinstance(raw, dict):
            raise TypeError(f"{where} must be a mapping with keys {', '.join(COMPONENT_KEYS)}; got {raw!r}")
        unknown = sorted(set(raw) - set(COMPONENT_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {', '.join(COMPONENT_KEYS)}")
        family = raw.get("family")
        if families is not None and family not in families:
            raise ValueError(f"{where}: unknown data family {family!r}; choose one of "
                             f"{', '.join(sorted(families))}")
        if ("size" in raw) == ("sizes" in raw):
            raise ValueError(f"{where} ({family}): give exactly one of size or sizes")
        sizes = [raw["size"]] if "size" in raw else raw["sizes"]
        if not isinstance(sizes, list) or not sizes or not all(_count(s) and s >= 1 for s in sizes):
            raise ValueError(f"{where} ({family}): sizes must be a non-empty list of positive integers; got "
                             f"{sizes!r}")
        if "weight" in raw and "count" in raw:
            raise ValueError(f"{where} ({family}): give weight or count, not both")
        weight, counts = None, None
        if "count" in raw:
            c = raw["count"]
            counts = ({k: c.get(k, 0) for k in SPLIT_OFFSETS} if isinstance(c, dict)
                      else dict.fromkeys(SPLIT_OFFSETS, c))
            if (isinstance(c, dict) and set(c) - set(SPLIT_OFFSETS)) or \
                    not all(_count(v) and v <= COMPONENT_STRIDE for v in counts.values()):
                raise ValueError(f"{where} ({family}): count must be an integer in [0, {COMPONENT_STRIDE}] "
                                 f"or a mapping {{train, val, test}} of such integers; got {c!r}")
        else:
            weight = raw.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 < weight < math.inf:
                raise ValueError(f"{where} ({family}): weight must be a positive number; got {weight!r}")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise TypeError(f"{where} ({family}): params must be a mapping; got {params!r}")
        for s in sizes:
            out.append(MixtureComponent(family, int(s), params, raw.get("rhs", rhs), len(out), e,
                                        None if weight is None else float(weight) / len(sizes), counts))
    if len(out) > MAX_COMPONENTS:
        raise ValueError(f"a mixture has at most {MAX_COMPONENTS} components (sizes expanded); got "
                         f"{len(out)}")
    return out


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``total`` in proportion to ``weights`` (ties: first listed first)."""
    wsum = float(sum(weights))
    quotas = [total * w / wsum for w in weights]
    counts = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-round(quotas[i] - counts[i], 9), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def mixture_counts(components: Sequence[MixtureComponent], totals: Mapping[str, int]) -> dict[str, list[int]]:
    """Systems per component in each split: fixed counts, then the weighted components share the rest
    of the split's total, across the listed entries by weight, then evenly across an entry's sizes."""
    out = {}
    for split, total in totals.items():
        counts = [c.counts[split] if c.counts is not None else 0 for c in components]
        weighted = [c for c in components if c.weight is not None]
        rest = int(total) - sum(counts)
        if weighted and rest < 0:
            raise ValueError(f"mixture: the fixed counts take {sum(counts)} {split} systems, more than "
                             f"num_{split}={total}; raise num_{split} or lower the counts")
        if weighted:
            entries = list(dict.fromkeys(c.entry for c in weighted))
            per_entry = apportion(rest, [sum(c.weight for c in weighted if c.entry == e) for e in entries])
            for e, k in zip(entries, per_entry):
                members = [c for c in weighted if c.entry == e]
                for c, n in zip(members, apportion(k, [c.weight for c in members])):
                    counts[c.index] = n
        if sum(counts) < 1:
            raise ValueError(f"mixture: the {split} split has no system; raise num_{split} or a component's "
                             "count")
        if max(counts) > COMPONENT_STRIDE:
            raise ValueError(f"mixture: at most {COMPONENT_STRIDE} {split} systems per component; got "
                             f"{max(counts)}")
        out[split] = counts
    return out


def _json_value(v: Any) -> Any:
    """A cached system's parameter value (a stored scalar comes back as a 1-element tensor) as JSON."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    return str(v)


class MixtureDataset(ConcatDataset):
    """One split of a mixture: the components' ``LinearSystemDataset`` caches concatenated. Items are
    shallow copies made collatable across families: ``pos`` padded with zero columns to ``pos_dim`` (at
    least 3), ``params`` as its JSON string (families have different parameter keys), and scalar attributes
    (``seed``, ``symmetric``, ...) as (1,) tensors (a one-system cache returns them as Python numbers, a
    larger one as tensors: PyG cannot collate the two together)."""

    def __init__(self, parts: Sequence[tuple[MixtureComponent, LinearSystemDataset]], root: str):
        super().__init__([ds for _, ds in parts])
        self.components = [c for c, _ in parts]
        self.root = str(root)  # the cache root; each part's folder is parts[i][1].root
        self.roots = [ds.root for _, ds in parts]
        firsts = [ds[0] for _, ds in parts]
        keys = [set(d.keys()) for d in firsts]
        for c, k in zip(self.components, keys):
            if k != keys[0]:
                raise ValueError(f"mixture: {c.family} (size {c.size}) systems carry {sorted(k ^ keys[0])} "
                                 f"unlike {self.components[0].family}'s: they cannot share a batch")
        self.pos_dim = max([3]
                           + [int(d.pos.shape[-1]) for d in firsts if getattr(d, "pos", None) is not None])

    def __getitem__(self, idx):
        data = copy.copy(super().__getitem__(idx))
        pos = getattr(data, "pos", None)
        if pos is not None and pos.shape[-1] < self.pos_dim:
            data.pos = torch.cat([pos, pos.new_zeros(pos.shape[0], self.pos_dim - pos.shape[-1])], dim=-1)
        if isinstance(getattr(data, "params", None), Mapping):
            data.params = json.dumps(data.params, sort_keys=True, default=_json_value)
        for key, value in data.items():
            if isinstance(value, (bool, int, float)) and key != "num_nodes":
                data[key] = torch.tensor([value])
        return data


class LinearSystemDataModule(pl.LightningDataModule):
    def __init__(self, family: str = "diffusion2d", size: int | None = 32, num_train: int = 64,
                 num_val: int = 16, num_test: int = 16, seed: int = 0, rhs: str = "random",
                 params: Mapping[str, Any] | None = None, batch_size: int = 8, data_dir: str = "data",
                 extra_test_sizes: Sequence[int] = (), num_workers: int = 0, progress: bool = True,
                 generators=None, mixture: Sequence[Mapping[str, Any]] | None = None):
        super().__init__()
        for name, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                        ("batch_size", batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.family, self.seed, self.rhs = family, int(seed), rhs
        self.params = dict(params or {})
        self.counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.batch_size = int(batch_size)
        self.data_dir = str(data_dir)
        self.extra_test_sizes = [int(s) for s in extra_test_sizes]
        self.num_workers = int(num_workers)
        self.progress = progress
        self.generators = generators
        self.datasets: dict[str, LinearSystemDataset | MixtureDataset] = {}
        self.components: list[MixtureComponent] = []
        self.component_counts: dict[str, list[int]] = {}
        if mixture is None and family != MIXED:
            self.size = int(size)
            return
        if mixture is None or family != MIXED:
            raise ValueError(f"a mixture needs family={MIXED!r} and a mixture list (got family={family!r}, "
                             f"mixture={'none' if mixture is None else 'given'})")
        if size is not None or self.params:
            raise ValueError("a mixture has no module-level size or params (set size: null, params: {}): "
                             "give each component its own size/sizes and params")
        if generators is None:
            from learnsolve.data.generators import GENERATORS as generators
        self.size = None
        self.components = parse_mixture(mixture, rhs, families=list(generators))
        self.component_counts = mixture_counts(self.components, self.counts)
        self.counts = {k: sum(v) for k, v in self.component_counts.items()}

    @property
    def is_mixture(self) -> bool:
        return bool(self.components)

    @property
    def families(self) -> list[str]:
        """The generator families this module draws from (one, or a mixture's in order)."""
        return list(dict.fromkeys(c.family for c in self.components)) if self.is_mixture else [self.family]

    @property
    def extra_test_component(self) -> MixtureComponent | None:
        """The mixture component the extra test sets enlarge (None for one family)."""
        if not self.is_mixture:
            return None
        return next((c for c in self.components if c.family == EXTRA_TEST_FAMILY), self.components[0])

    def _dataset(self, size: int, count: int, offset: int, component: MixtureComponent | None = None):
        family, params, rhs, seed = self.family, self.params, self.rhs, self.seed + offset
        if component is not None:
            family, params, rhs, seed = (component.family, component.params, component.rhs,
                                         component.seed(self.seed, offset))
        return LinearSystemDataset(self.data_dir, family, size, count, seed=seed, rhs=rhs, params=params,
                                   generators=self.generators, progress=self.progress)

    def prepare_data(self) -> None:
        """Generate the caches once (rank zero); ``setup`` then only loads them."""
        self._build_all()

    def split_specs(self) -> list[tuple[str, int | str, int, int]]:
        """(name, size, count, seed offset) of every split, extra test sets included (a mixture's own splits
        have size ``"mixed"``; :meth:`mixture_specs` lists their components)."""
        size = MIXED if self.is_mixture else self.size
        specs = [(k, size, self.counts[k], off) for k, off in SPLIT_OFFSETS.items()]
        specs += [(f"test_{s}", s, self.counts["test"], EXTRA_TEST_OFFSET + EXTRA_TEST_STRIDE * i)
                  for i, s in enumerate(self.extra_test_sizes)]
        return specs

    def mixture_specs(self) -> list[dict[str, Any]]:
        """One row per (split, component) of a mixture with at least one system: split, family, size,
        params, rhs, count and first seed (empty for one family)."""
        return [{"split": split, "family": c.family, "size": c.size, "params": c.params, "rhs": c.rhs,
                 "count": n, "seed": c.seed(self.seed, SPLIT_OFFSETS[split])}
                for split, counts in self.component_counts.items()
                for c, n in zip(self.components, counts) if n]

    def build(self, name: str) -> LinearSystemDataset | MixtureDataset:
        """Generate or load one split (cached in ``self.datasets``)."""
        if name not in self.datasets:
            spec = {k: (size, count, off) for k, size, count, off in self.split_specs()}
            if name not in spec:
                raise KeyError(f"unknown split {name!r}; have {', '.join(spec)}")
            size, count, off = spec[name]
            if not self.is_mixture:
                self.datasets[name] = self._dataset(size, count, off)
            elif name in SPLIT_OFFSETS:
                parts = [(c, self._dataset(c.size, n, off, c))
                         for c, n in zip(self.components, self.component_counts[name]) if n]
                self.datasets[name] = MixtureDataset(parts, self.data_dir)
            else:
                self.datasets[name] = self._dataset(size, count, off, self.extra_test_component)
        return self.datasets[name]

    def _check_data_dir(self) -> None:
        root = Path(self.data_dir)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"data_dir {str(root)!r} exists but is not a folder: point "
                                     "data.data_dir (or paths.data_dir) to a folder for the generated "
                                     "datasets")
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
            # our own sampler (Lightning keeps an existing DistributedSampler): the same global batches at any
            # W
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
            return DataLoader(ds, batch_size=self.per_device_batch_size, sampler=sampler,
                              num_workers=self.num_workers)
        return DataLoader(ds, batch_size=self.per_device_batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self):
        return self._loader(self.datasets["val"], shuffle=False)

    def test_dataloader(self):
        keys = ["test"] + [f"test_{s}" for s in self.extra_test_sizes]
        loaders = [self._loader(self.datasets[k], shuffle=False) for k in keys]
        return loaders[0] if len(loaders) == 1 else loaders

    def report_dataloader(self, size: int | None = None) -> DataLoader:
        """The whole test split, unsharded, in batches of the global batch size (rank-zero report); with
        ``size`` (not the training size) held-out systems of that size instead: the extra test set of that
        size, or as many systems as the test split from their own seed range (a mixture: of its extra-test
        component)."""
        if size is None or (not self.is_mixture and int(size) == self.size):
            ds = self.build("test")
        elif int(size) in self.extra_test_sizes:
            ds = self.build(f"test_{int(size)}")
        else:
            key = f"report_{int(size)}"
            if key not in self.datasets:
                self._check_data_dir()
                self.datasets[key] = self._dataset(int(size), self.counts["test"], REPORT_OFFSET,
                                                   self.extra_test_component)
            ds = self.datasets[key]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False)
