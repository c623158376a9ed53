"""``python train.py [model=NAME] [data=FAMILY] [trainer=cpu] [logger=wandb|csv|none] ...``: the work is
:func:`learnsolve.training.train.train` (returns the optimized metric, which Hydra hands to a sweeper)."""

from __future__ import annotations

import sys

from ._hydra import run_command


def train_command(cfg):
    from learnsolve.training.train import train

    return train(cfg)


def main() -> int:
    return run_command("learnsolve-train", "train", train_command)


if __name__ == "__main__":
    sys.exit(main())
