"""Cached datasets of generated linear systems.

``LinearSystemDataset`` is a PyG ``InMemoryDataset`` stored under
``<data_dir>/<family>/<hash of the generating config>/``:

- ``meta.json``: the generating config, its hash and the format version;
- ``systems.pt``: the collated systems (PyG's ``InMemoryDataset.save`` format).

Both are written to temporary names and renamed into place, ``systems.pt`` last, so an interrupted
generation never leaves a folder that loads as valid. On load, a ``systems.pt`` that cannot be read,
or a ``meta.json`` describing another config (a foreign or hand-edited cache), raises
:class:`CacheError` naming the file; nothing is silently regenerated over it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch_geometric.data import InMemoryDataset

from learnsolve.files import atomic_path, write_json

FORMAT_VERSION = 1


class CacheError(RuntimeError):
    """A dataset cache folder holds a file that is corrupt or belongs to another config."""


def plain(value: Any) -> Any:
    """Nested Mapping / Sequence (OmegaConf containers included) -> dict / list: JSON-serialisable cache keys,
    and the plain lists that generators take for ranges (e.g. ``epsilon: [1.0e-4, 1.0e-2]``)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a JSON-serialisable generating config."""
    blob = json.dumps({"format": FORMAT_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class LinearSystemDataset(InMemoryDataset):
    """``count`` systems of one generator family, seeds ``seed, seed + 1, ...``.

    Args:
        data_dir: cache root (``paths.data_dir``, default ``data/``).
        family: generator name (key of ``generators``).
        size: generator size argument (grid side or number of vertices).
        count: number of systems.
        seed: seed of the first system.
        rhs: right-hand side kind ("random" | "smooth" | "point").
        params: extra generator parameters (part of the cache key).
        generators: name -> generator mapping (defaults to the registry in ``generators``).
        progress: show a progress bar while generating.
    """

    def __init__(self, data_dir: str | os.PathLike, family: str, size: int, count: int, seed: int = 0,
                 rhs: str = "random", params: Mapping[str, Any] | None = None,
                 generators: Mapping[str, Callable] | None = None, progress: bool = True):
        if generators is None:
            from .generators import GENERATORS as generators
        if family not in generators:
            raise ValueError(f"unknown data family {family!r}; choose one of {', '.join(sorted(generators))}")
        if int(count) < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.generator = generators[family]
        self.config = {"family": family, "size": int(size), "count": int(count), "seed": int(seed),
                       "rhs": rhs, "params": plain(params or {})}
        self.hash = config_hash(self.config)
        self.progress = progress
        super().__init__(str(Path(data_dir) / family / self.hash), log=False)
        self._check_meta()
        try:
            self.load(self.processed_paths[0])
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CacheError(f"cannot load dataset cache {self.processed_paths[0]} ({type(e).__name__}: "
                             f"{reason[:200]}); delete that folder to regenerate it") from e
        if len(self) != self.config["count"]:
            raise CacheError(f"dataset cache {self.processed_paths[0]} holds {len(self)} systems, "
                             f"expected {self.config['count']}; delete that folder to regenerate it")

    # PyG's layout: <root>/processed/...; we keep everything directly in the hash folder
    @property
    def processed_dir(self) -> str:
        return self.root

    @property
    def processed_file_names(self) -> list[str]:
        return ["systems.pt"]

    @property
    def raw_file_names(self) -> list[str]:
        return []

    def _meta_path(self) -> Path:
        return Path(self.root) / "meta.json"

    def _check_meta(self) -> None:
        path = self._meta_path()
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise CacheError(f"dataset cache {self.root} has systems.pt but no meta.json: not written by "
                             "learnsolve or interrupted; delete that folder to regenerate it") from None
        except (OSError, ValueError) as e:
            raise CacheError(f"cannot read {path}: {e}; delete that folder to regenerate it") from e
        if meta.get("hash") != self.hash or meta.get("config") != json.loads(json.dumps(self.config)):
            raise CacheError(f"{path} describes another dataset (hash {meta.get('hash')!r}, expected "
                             f"{self.hash!r}); delete that folder to regenerate it")

    def process(self) -> None:
        from tqdm.auto import tqdm

        c = self.config
        seeds = range(c["seed"], c["seed"] + c["count"])
        it = tqdm(seeds, desc=f"generating {c['family']} (size {c['size']})", disable=not self.progress,
                  leave=False)
        systems = [self.generator(c["size"], seed=s, rhs=c["rhs"], **c["params"]) for s in it]
        Path(self.root).mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "hash": self.hash, "config": self.config}
        write_json(self._meta_path(), meta, default=str)
        with atomic_path(self.processed_paths[0]) as tmp:
            self.save(systems, str(tmp))
