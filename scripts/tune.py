"""Thin entry point: ``python scripts/tune.py matrix=PATH.mtx ckpt_path=CKPT [budget_s=60] ...`` -> learnsolve.cli.tune."""

import sys

from learnsolve.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
