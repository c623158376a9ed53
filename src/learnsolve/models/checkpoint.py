"""Rebuild a trained model from a training checkpoint, without Lightning, Hydra's runtime or retyped
overrides (here, in the models layer, so that evaluation and export can use it).

Every checkpoint written by ``learnsolve.training.module.LearnedSolverModule`` stores the composed
run config under ``learnsolve_config``; the model is ``hydra.utils.instantiate(config["model"]["net"])``
with the module's ``model.*`` weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not a learnsolve training checkpoint."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a folder; give a checkpoint file inside it, e.g. "
                              f"{str(p / 'checkpoints' / 'last.ckpt')!r}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist (give ckpt_path=.../checkpoints/last.ckpt "
                              "or a best-epoch file from a training run folder)")
    try:
        # the checkpoint holds the run config (plain dicts/lists) next to tensors; written by this package
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({type(e).__name__}: {e}); "
                              "the file is damaged or not a PyTorch checkpoint") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {str(p)!r} has no state_dict: not a Lightning checkpoint")
    if not isinstance(ckpt.get("learnsolve_config"), dict):
        raise CheckpointError(f"checkpoint {str(p)!r} has no learnsolve_config: it was not written by "
                              "`python train.py` (learnsolve's LearnedSolverModule)")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, composed run config) from a training checkpoint."""
    import hydra

    ckpt = read_checkpoint(path)
    cfg = ckpt["learnsolve_config"]
    try:
        net_cfg = cfg["model"]["net"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: its config has no model.net entry") from e
    model = hydra.utils.instantiate(net_cfg)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not fit model "
                              f"{cfg['model'].get('name', '?')!r} built from its own config: {e}") from e
    return model.to(map_location).eval(), cfg
