"""Where the Hydra configs live: ``conf/`` at the repository root (editable install or checkout)."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
