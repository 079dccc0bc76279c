"""Atomic files: a reader sees the old file or the new one, never half of one, and a crash leaves no debris.

Write to a temp name in the same folder, fsync, rename over the target, fsync the folder (so the rename itself
survives a power cut). Every module that writes state (markers, manifests, tars, input records) goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Make the renames and creations inside folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Write `path` through a temp file in the same folder: fsync, rename, fsync the folder; unlink on error."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """`data` becomes the content of `path`, atomically."""
    with atomic_file(path, mode=mode) as f:
        f.write(data)


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644) -> None:
    """`value` as sorted, indented JSON becomes the content of `path`, atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"), mode=mode)
