"""Thin entry point: ``python scripts/export.py ckpt_path=PATH [matrices=DIR_OR_FILES] ...`` -> learnsolve.cli.export."""

import sys

from learnsolve.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
