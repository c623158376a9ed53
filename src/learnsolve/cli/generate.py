"""`learnsolve-generate`: not implemented yet (lands with its own issue)."""

import sys


def main() -> int:
    print("learnsolve-generate: not implemented yet; see README.md for what works today.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
