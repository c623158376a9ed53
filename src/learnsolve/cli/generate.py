"""``learnsolve-generate data=FAMILY [data.size=..] [paths.data_dir=..]``: build the dataset caches; the work
is :func:`learnsolve.training.generate.generate`."""

from __future__ import annotations

import sys

from ._hydra import run_command


def generate_command(cfg):
    from learnsolve.training.generate import generate

    return generate(cfg)


def main() -> int:
    return run_command("learnsolve-generate", "generate", generate_command)


if __name__ == "__main__":
    sys.exit(main())
