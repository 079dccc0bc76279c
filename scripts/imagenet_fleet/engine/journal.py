"""The engine's journals: per split, the work units already written, headed by the split's fingerprint (what its
output depends on). A re-run with the same inputs skips the journaled units; a split whose inputs changed starts
over. The work folder is locked while a build uses it."""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagenet_fleet import imagenet
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)


class Journal:
    """Finished units, one JSON line each, after a header line with the plan's fingerprint."""

    def __init__(self, path: Path, fp: str) -> None:
        self.done: set[str] = set()
        self.resumed = False
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and json_or_none(lines[0]) == {"fingerprint": fp}:
            for line in lines[1:]:
                entry = json_or_none(line)
                if entry and "done" in entry:
                    self.done.add(entry["done"])
            self.resumed = True
            self._f = path.open("a")
        else:
            self._f = path.open("w")
            self._f.write(json.dumps({"fingerprint": fp}) + "\n")
            self._f.flush()

    def add(self, key: str) -> None:
        self._f.write(json.dumps({"done": key}) + "\n")
        self._f.flush()  # in the page cache: survives SIGKILL of this process
        self.done.add(key)

    def close(self) -> None:
        self._f.close()


def json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


@contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    with (path / ".lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another engine run is using {path}", "wait for it to finish") from None
        yield


def open_journal(work_dir: Path, version_dir: Path, split: str, fp: str, fresh: bool = False) -> Journal:
    """The split's journal if it continues this build (same fingerprint); else a new one, and none of the split's
    files left from before (another build's, or files without a journal: an older engine's staging, say); the
    other splits' work is theirs: each split has its own journal."""
    path = work_dir / f"journal-{split}.jsonl"
    first = path.read_text().split("\n", 1)[0] if path.exists() else ""
    if fresh or (json_or_none(first) or {}).get("fingerprint") != fp:
        if path.exists():
            log.info("engine: %s holds another build's %s work: starting it over", work_dir, split)
            path.unlink()
        for old in version_dir.glob(f"{imagenet.DATASET}-{split}.*"):
            old.unlink()
    return Journal(path, fp)
