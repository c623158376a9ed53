"""Run a command-line tool in the test process, as its console script would run it.

``python train.py ARGS`` in a subprocess pays Python, torch, Lightning and Hydra start-up (5-8 s on the test
machines) on every call. :func:`run_cli` calls the same ``main()`` (``learnsolve.cli.<tool>.main``: Hydra parses
``sys.argv``, composes ``conf/``, runs the command and maps its outcome to an exit status) with ``sys.argv`` set,
stdout and stderr captured, and returns what :func:`subprocess.run` would: ``returncode``, ``stdout``, ``stderr``.

What is left to subprocess tests (``tests/test_config.py``, ``tests/test_cli_generate.py``,
``tests/test_distributed.py``): the ``train.py`` file itself as a program, a killed run, and DDP, whose ranks
are processes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
from types import SimpleNamespace

PROGRAMS = {"train": "learnsolve-train", "evaluate": "learnsolve-evaluate", "export": "learnsolve-export",
            "generate": "learnsolve-generate", "tune": "learnsolve-tune"}


def run_cli(tool: str, *args, cwd=None) -> SimpleNamespace:
    """``learnsolve-<tool> ARGS`` in this process; ``returncode``, ``stdout`` and ``stderr`` as from a subprocess.

    The process state a run changes is put back: ``sys.argv``, the working directory, the root logger's handlers
    and level (Hydra configures logging for each job), torch's thread count and the W&B environment defaults."""
    import torch

    main = importlib.import_module(f"learnsolve.cli.{tool}").main
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (sys.argv, os.getcwd(), root.handlers[:], root.level, torch.get_num_threads(),
             {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")})
    # Hydra configures the job's logging with logging.config.dictConfig, which closes every live handler in
    # logging's private _handlerList, pytest's capture handlers included: hide them from it for the run
    outside = logging._handlerList[:]
    del logging._handlerList[:]
    try:
        sys.argv = [PROGRAMS[tool], *map(str, args)]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main()
            except SystemExit as e:  # as the interpreter maps it (a message goes to stderr, status 1)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception as e:  # noqa: BLE001 (an uncaught error is exit status 1 with a traceback)
                import traceback

                traceback.print_exception(e)
                code = 1
    finally:
        sys.argv, cwd0, handlers, level, threads, env = saved
        os.chdir(cwd0)
        for h in root.handlers:
            if h not in handlers:
                with contextlib.suppress(Exception):
                    h.close()
        root.handlers[:] = handlers
        logging._handlerList[:0] = outside
        root.setLevel(level)
        torch.set_num_threads(threads)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return SimpleNamespace(returncode=int(code), stdout=out.getvalue(), stderr=err.getvalue())


def load_script(name: str):
    """``scripts/<name>.py`` as a module (its ``main(argv)`` runs in this process)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
