"""Thin entry point: ``python scripts/evaluate.py ckpt_path=PATH benchmark=pyamg ...`` -> learnsolve.cli.evaluate."""

import sys

from learnsolve.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
