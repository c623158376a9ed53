"""Thin entry point: `python train.py model=NAME` -> learnsolve.cli.train."""

import sys

from learnsolve.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
