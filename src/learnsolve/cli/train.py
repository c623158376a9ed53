"""``python train.py [model=NAME] [data=FAMILY] [trainer=cpu] [logger=wandb|csv|none] ...``."""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from ._hydra import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from learnsolve.training.train import train

    return train(cfg)


def main() -> int:
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
    os.environ.setdefault("WANDB_SILENT", "true")
    _hydra_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
