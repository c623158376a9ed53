"""Atomic file writing, used by every layer that writes files (standard library only).

A reader never sees a half-written file: the content goes to a hidden temporary sibling in the same folder
(same file system, so the rename is atomic), which is flushed, fsynced and renamed over the target with
``os.replace``. On any failure the temporary file is removed and an existing target keeps its old content.

- :func:`atomic_path`: a context manager yielding the temporary path, for writers that take a path
  (``torch.save``, ``np.savez``, ``savefig``, a dataset's ``save``); the suffix is kept, so writers that
  infer the format from it still work.
- :func:`atomic_open`: a context manager yielding an open file object (text or binary).
- :func:`write_text`, :func:`write_bytes`, :func:`write_json`: one-call forms.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write of {str(path)!r}: the writer did not create {str(tmp)!r}")
        with open(tmp, "rb+") as fh:  # make the content durable before the rename publishes it
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                mkdir: bool = True) -> Iterator[IO]:
    """``open(path, mode)`` that publishes the file only when the block ends without an exception."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, mkdir=mkdir) as tmp, open(tmp, mode,
                                                     encoding=None if "b" in mode else encoding) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kwargs) -> Path:
    """``json.dumps(obj)`` written atomically, with a final newline."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


__all__ = ["atomic_open", "atomic_path", "write_bytes", "write_json", "write_text"]
