"""Thin entry point: ``python scripts/generate_data.py data=diffusion2d ...`` -> learnsolve.cli.generate."""

import sys

from learnsolve.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
