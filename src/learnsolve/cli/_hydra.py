"""What every command line entry point shares: where the Hydra configs live and how a command maps its outcome
to an exit status.

``conf/`` lies at the repository root (editable install or checkout). :func:`run_command` composes the config
with Hydra, calls the command's one function and returns its exit status: the function's own (an int), or
0 when it returns something else (``train`` returns the optimized metric, which Hydra hands to the sweeper);
2 when Hydra cannot compose the config (Hydra said why) or the function raises one of ``user_errors`` (the
message goes to stderr, prefixed with the program name, without a traceback). W&B stays offline unless the
user sets ``WANDB_MODE``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")
BAD_ARGUMENTS = 2


def run_command(prog: str, config_name: str, command: Callable[[Any], Any],
                user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``command(cfg)`` on the composed ``conf/<config_name>.yaml``; returns the exit status."""
    import hydra

    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
    os.environ.setdefault("WANDB_SILENT", "true")
    state: dict[str, Any] = {}

    def _main(cfg):
        state["started"] = True  # past Hydra's composition: a failure from here on is not a bad override
        try:
            result = command(cfg)
        except user_errors as e:
            print(f"{prog}: {e}", file=sys.stderr)
            state["code"] = BAD_ARGUMENTS
            return None
        state["code"] = result if isinstance(result, int) and not isinstance(result, bool) else 0
        return result

    _main.__module__ = f"learnsolve.cli.{config_name}"  # Hydra names the job (and its .log file) after it
    _main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(_main)
    try:
        _main()
    except SystemExit as e:
        if e.code not in (0, None) and not state.get("started"):
            return BAD_ARGUMENTS  # Hydra could not compose the config (unknown group option, bad override)
        raise
    return int(state.get("code", 0))
