"""Errors, JSON reading and folder-level atomic writing for the export package.

One file is written atomically with :mod:`learnsolve.files` (temporary sibling, fsync, ``os.replace``). One
output folder: :class:`StagedFolder` fills a hidden temporary sibling folder and renames it into place only
once everything was written; on failure the sibling is removed (and any parent folders it had to create),
and with ``overwrite`` an existing folder is replaced only after success.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class ExportError(ValueError):
    """An export that cannot be done, or exported files that cannot be loaded: the message says which file
    or argument and why."""


def read_json(path: str | os.PathLike, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{what} {str(p)!r} does not exist")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        # RecursionError: deep nesting
        raise ExportError(f"{what} {str(p)!r} is not readable JSON ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ExportError(f"{what} {str(p)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def check_output_folder(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder, refused (ExportError) when it exists non-empty and ``overwrite`` is false, or when
    it is a file."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ExportError(f"output folder {str(out)!r} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ExportError(f"output folder {str(out)!r} already exists and is not empty: choose another "
                              "out_dir or pass overwrite=true to replace it")
    return out


class StagedFolder:
    """``with StagedFolder(out, overwrite) as tmp:`` fill ``tmp``; on success it becomes ``out``.

    The temporary folder ``.<name>.tmp-<pid>`` sits next to ``out`` (same file system, so the final
    rename is atomic). On an exception nothing is left behind: the temporary folder is removed, parent
    folders created for it are removed again, and an existing ``out`` (``overwrite``) is untouched.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = check_output_folder(out, overwrite).absolute()
        self.overwrite = overwrite
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self._created: list[Path] = []

    def __enter__(self) -> Path:
        missing = []
        p = self.out.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for q in reversed(missing):
            q.mkdir()
            self._created.append(q)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._commit()
                return False
            except BaseException:
                self._cleanup()
                raise
        self._cleanup()
        return False

    def _commit(self) -> None:
        check_output_folder(self.out, self.overwrite)  # still free (nothing appeared meanwhile)?
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.rename(old, self.out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        for q in reversed(self._created):  # deepest first
            try:
                q.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def export_errors() -> Iterator[None]:
    """Re-raise the checkpoint loader's errors as ExportError (same message) for export's users."""
    from learnsolve.models.checkpoint import CheckpointError

    try:
        yield
    except CheckpointError as e:
        raise ExportError(str(e)) from e
