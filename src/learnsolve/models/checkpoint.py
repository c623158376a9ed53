"""The one way to turn a training checkpoint into a model: no Lightning, no Hydra, no code named by a file.

Every checkpoint written by ``learnsolve.training.module.LearnedSolverModule`` stores the composed run config
under ``learnsolve_config``; the model is ``target(**kwargs)`` for its ``model.net`` entry, with the module's
``model.*`` weights. Only the classes registered in :data:`learnsolve.models.MODELS` may be built
(:func:`resolve_target`): a config is data, and must not be able to import and run arbitrary code. Export
builds exported folders with the same functions.

Configs stored by older versions are upgraded on load (:func:`upgrade_config`): a ``_target_`` that has moved
since is rewritten, so the returned config instantiates with this version.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import LearnedModel

# _target_s that moved: old dotted name -> new one (applied anywhere in a stored config)
MOVED_TARGETS = {
    "learnsolve.data.datamodule.LinearSystemDataModule":
        "learnsolve.training.datamodule.LinearSystemDataModule",
}
STATE_PREFIX = "model."  # the LightningModule holds the network as `model`
INITIAL_STATE_KEY = "learnsolve_initial_state"  # the model's state_dict before training (its classical start)


class CheckpointError(RuntimeError):
    """A checkpoint (or model config) that is missing, unreadable, not from learnsolve, or names a model this
    learnsolve cannot build; the message names the file and the reason."""


@dataclass
class Checkpoint:
    """A loaded training checkpoint: the model (eval mode), its registry name, its class as a dotted name, the
    keyword arguments it was built with, and the (upgraded) run config."""

    model: LearnedModel
    name: str
    target: str
    kwargs: dict
    config: dict
    initial_state: dict | None = None  # the model's parameters before training (None: not stored)

    def untrained(self) -> tuple[LearnedModel, str]:
        """(the same model and configuration at its initial parameters, how they were obtained). The
        checkpoint's stored initial state when it has one; else the model built afresh with the run's seed
        (the same draw as the training's initial parameters when nothing else consumed random numbers first;
        exact for the models whose correction starts at zero, i.e. every model with a classical start)."""
        where = f"checkpoint of {self.name}"
        if self.initial_state is not None:
            return load_weights(build_model(type(self.model), self.kwargs, where), self.initial_state,
                                where), "stored"
        seed = self.config.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise CheckpointError(f"{where}: its config's seed {seed!r} is not an integer")
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            model = build_model(type(self.model), self.kwargs, where)
        dtypes = {v.dtype for v in self.model.state_dict().values() if v.is_floating_point()}
        model = model.to(dtypes.pop()) if len(dtypes) == 1 else model
        return model.eval(), f"rebuilt with seed {seed} (the checkpoint stores no initial state)"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (``state_dict``, ``learnsolve_config``, ...), checked; CheckpointError
    otherwise."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a folder; give a checkpoint file inside it, e.g. "
                              f"{str(p / 'checkpoints' / 'last.ckpt')!r}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist (give "
                              "ckpt_path=.../checkpoints/last.ckpt or a best-epoch file from a training run "
                              "folder)")
    _check_zip(p)
    try:
        # the checkpoint holds the run config (plain dicts/lists) next to tensors; written by this package
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({type(e).__name__}: {e}); "
                              "the file is damaged or not a PyTorch checkpoint") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(p)!r} has no state_dict: not a Lightning checkpoint")
    if not isinstance(ckpt.get("learnsolve_config"), dict):
        raise CheckpointError(f"checkpoint {str(p)!r} has no learnsolve_config: it was not written by "
                              "`python train.py` (learnsolve's LearnedSolverModule)")
    return ckpt


def _check_zip(p: Path) -> None:
    """A checkpoint in torch's zip format whose stored CRC-32 checksums do not match its bytes is damaged (a
    flipped byte in a tensor's data otherwise loads as a silently different weight); other formats pass."""
    try:
        if not zipfile.is_zipfile(p):
            return
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is damaged: its zip structure cannot be read "
                              f"({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CheckpointError(f"checkpoint {str(p)!r} is damaged: record {bad!r} does not match its CRC-32 "
                              "checksum (the file was altered or corrupted after it was written)")


def check_state(state, where: str) -> dict:
    """``state`` as a state dict: a mapping of parameter names to tensors (CheckpointError naming
    ``where``)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the weights are a {type(state).__name__}, not a mapping of names to "
                              "tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: weight {k!r} is a {type(v).__name__}, not a tensor under a name")
    return state


def upgrade_config(config):
    """A copy of a stored run config with every moved ``_target_`` (:data:`MOVED_TARGETS`) rewritten."""
    config = copy.deepcopy(config)
    todo = [config]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if key == "_target_" and isinstance(value, str) and value in MOVED_TARGETS:
                node[key] = MOVED_TARGETS[value]
            elif isinstance(value, (dict, list)):
                todo.append(value)
    return config


def _known() -> str:
    from learnsolve.models import MODELS

    return ", ".join(f"{c.__module__}.{c.__name__}" for c in MODELS.values())


def resolve_target(target, where: str) -> type[LearnedModel]:
    """The model class named ``target``; only the classes registered in ``learnsolve.models.MODELS``."""
    from learnsolve.models import MODELS

    if not isinstance(target, str) or "." not in target:
        raise CheckpointError(f"{where}: model target {target!r} is not a dotted class name")
    module, _, name = target.rpartition(".")
    if module != "learnsolve.models" and not module.startswith("learnsolve.models."):
        raise CheckpointError(f"{where}: model target {target!r} is outside learnsolve.models; refusing to "
                              "import it")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"{where}: model target {target!r} does not exist in this learnsolve "
                              f"({e})") from e
    if not (isinstance(obj, type) and obj in MODELS.values()):
        raise CheckpointError(f"{where}: {target!r} is not a learnsolve model class (known: {_known()})")
    return obj


def build_model(cls: type[LearnedModel], kwargs, where: str, state: dict | None = None) -> LearnedModel:
    """``cls(**kwargs)``; plain values only (a nested ``_target_`` object is refused). With ``state`` (the
    weights it will receive), the model is first built on the meta device (no memory; every registered model
    builds there) and its parameter names and shapes compared with them: arguments asking for a larger model
    than the weights hold (``hidden: 1000000``, ``layers: 1000000``) are refused before anything of that size
    is allocated."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{where}: model kwargs must be a mapping, got {type(kwargs).__name__}")
    if any(isinstance(v, dict) and "_target_" in v for v in kwargs.values()):
        raise CheckpointError(f"{where}: nested objects (_target_) in the model arguments are not supported")
    try:
        if state is not None:
            try:
                with torch.device("meta"), _bounded(2 * len(state) + 16, 20 * len(state) + 100):
                    shapes = {k: tuple(v.shape) for k, v in cls(**kwargs).state_dict().items()}
            except _TooLarge as e:
                raise CheckpointError(f"{where}: the arguments {kwargs} build a {cls.__name__} with {e} than "
                                      f"the {len(state)} stored weights; refusing to build it") from None
            except (TypeError, ValueError):
                raise
            except Exception as e:  # e.g. a size whose storage overflows int64
                raise CheckpointError(f"{where}: cannot build {cls.__name__} from {kwargs} "
                                      f"({type(e).__name__}: {e})") from e
            _compare(cls, shapes, state, where)
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: cannot build {cls.__name__} from {kwargs}: {e}") from e


class _TooLarge(Exception):
    pass


@contextlib.contextmanager
def _bounded(max_tensors: int, max_modules: int):
    """Stop a model's construction (in this thread) once it registers more parameters and buffers, or
    submodules, than given: ``layers: 1000000`` takes many minutes to build, even on meta."""
    from torch.nn.modules import module as M

    me, count = threading.get_ident(), {"tensors": 0, "modules": 0}

    def counter(kind: str, limit: int):
        def hook(*_):
            if threading.get_ident() == me:
                count[kind] += 1
                if count[kind] > limit:
                    raise _TooLarge(f"more {kind}")
        return hook

    handles = [M.register_module_parameter_registration_hook(counter("tensors", max_tensors)),
               M.register_module_buffer_registration_hook(counter("tensors", max_tensors)),
               M.register_module_module_registration_hook(counter("modules", max_modules))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _compare(cls: type, shapes: dict, state: dict, where: str) -> None:
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    differ = [f"{k}: {tuple(state[k].shape)} stored, {shapes[k]} built" for k in shapes
              if k in state and tuple(state[k].shape) != shapes[k]]
    if missing or unexpected or differ:
        what = "; ".join(filter(None, (missing and f"missing {missing[:5]}", unexpected and f"unexpected "
                                       f"{unexpected[:5]}", differ and f"shapes differ: {differ[:3]}")))
        raise CheckpointError(f"{where}: weights do not fit {cls.__name__} built from its arguments ({what})")


def load_weights(model: LearnedModel, state: dict, where: str) -> LearnedModel:
    """``model`` with ``state`` loaded (strict), in the weights' dtype when they share one (a model trained in
    float64 stays float64), in eval mode. Refused: a weight whose kind (floating or integer) differs from the
    model's tensor, and NaN/Inf weights (a diverged training or a damaged file)."""
    check_state(state, where)
    own = model.state_dict()
    for k, v in state.items():
        if k in own and v.is_floating_point() != own[k].is_floating_point():
            raise CheckpointError(f"{where}: weight {k!r} is {v.dtype}, the model's is {own[k].dtype}")
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: weight {k!r} holds NaN or Inf (a diverged training or a damaged "
                                  "file)")
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model = model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not fit {type(model).__name__}: {e}") from e
    return model.eval()


def model_entry(config: dict, where: str) -> tuple[str, type[LearnedModel], dict]:
    """(registry name, class, kwargs) of a run config's ``model`` entry, checked against the registry."""
    from learnsolve.models import MODELS

    mcfg = config.get("model")
    net = mcfg.get("net") if isinstance(mcfg, dict) else None
    if not isinstance(net, dict):
        raise CheckpointError(f"{where}: its config has no model.net entry (not a learnsolve training "
                              "checkpoint)")
    name = mcfg.get("name")
    if not isinstance(name, str) or name not in MODELS:
        raise CheckpointError(f"{where} is from model family {name!r}, which this learnsolve does not know "
                              f"(known: {', '.join(MODELS)})")
    cls = resolve_target(net.get("_target_"), where)
    if cls is not MODELS[name]:
        raise CheckpointError(f"{where}: its model name {name!r} and its class {net.get('_target_')!r} "
                              "disagree")
    return name, cls, {k: v for k, v in net.items() if not str(k).startswith("_")}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The model of a training checkpoint and what it was built from.

    The model is rebuilt from the config stored in the checkpoint (no Hydra, no Lightning module); older
    configs are upgraded first.

    Args:
        path: a ``.ckpt`` file written by ``python train.py``.
        map_location: device of the returned model.

    Returns:
        A ``Checkpoint``: the model in eval mode, its registry name and class, its constructor arguments, the
            run config and (when stored) its parameters before training (``Checkpoint.untrained()``).

    Raises:
        CheckpointError: a missing, corrupt or foreign file, an unknown model family, or weights that do not
            fit the rebuilt model (the message names the file).
    """
    where = f"checkpoint {str(path)!r}"
    try:
        map_location = torch.device(map_location)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"map_location {map_location!r} is not a device: {e}") from None
    ckpt = read_checkpoint(path)
    config = upgrade_config(ckpt["learnsolve_config"])
    name, cls, kwargs = model_entry(config, where)
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith(STATE_PREFIX)}
    model = load_weights(build_model(cls, kwargs, where, check_state(state, where)), state, where)
    initial = ckpt.get(INITIAL_STATE_KEY)
    return Checkpoint(model.to(map_location), name, f"{cls.__module__}.{cls.__name__}", kwargs, config,
                      initial if isinstance(initial, dict) else None)


def load_model(path: str | os.PathLike,
               map_location: str | torch.device = "cpu") -> tuple[LearnedModel, dict]:
    """Rebuild a trained model anywhere from its training checkpoint alone.

    Args:
        path: a ``.ckpt`` file written by ``python train.py``.
        map_location: device of the returned model.

    Returns:
        ``(model, config)``: the model (an ``nn.Module``, eval mode) and the upgraded run config (a dict).

    Raises:
        CheckpointError: as :func:`load_checkpoint`.

    Example:
        ```python
        from learnsolve.models.checkpoint import load_model

        model, config = load_model("outputs/train/runs/RUN/checkpoints/last.ckpt")
        ```
    """
    ckpt = load_checkpoint(path, map_location)
    return ckpt.model, ckpt.config


__all__ = [
    "INITIAL_STATE_KEY",
    "MOVED_TARGETS",
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_entry",
    "read_checkpoint",
    "resolve_target",
    "upgrade_config",
]
