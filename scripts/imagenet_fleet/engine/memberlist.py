"""A tar's member lists, recorded while its bytes stream past once anyway, kept beside the tar.

Staging reads every tar front to back to check its sha256 (`stage._download`, `stage._verify_local`). A
`Recorder` fed the same chunks walks the headers as they go by (the train tar's inner tars too), for ~15-20 µs of
CPU per member (3-4% of that pass's CPU, measured) and no extra I/O, and `save` writes the result beside the tar
(`.<tar>.members`). The engine then needs no header reads of its own: reading ILSVRC2012's 1.33M headers from disk
costs one random read each (~100 s on a disk serving ~13k reads/s), the longest step of the build before a single
record can be laid out.

The list is trusted only while the tar's size and mtime_ns are the ones it was made from (`load`), and the writers
check every member's header against it as they pass over it (`tarindex.check_header`), so a stale list fails the
build instead of writing wrong records. Anything the fast parser does not handle (long names, PAX headers) makes
the recorder give up on that tar, or on that inner tar only: the engine then reads those headers itself.

File layout: one JSON line (format, the tar's size and mtime_ns, and each section's place), then one binary
section per walk (the whole tar's, at start 0; each inner tar's, at its data offset): int64 offsets, int64 sizes,
uint8 is-regular flags, then the raw names, NUL-separated (tarfile's decoding: utf-8 with surrogateescape).
"""

from __future__ import annotations

import json
import logging
from array import array
from pathlib import Path
from typing import Any

from imagenet_fleet.atomic import atomic_write_bytes
from imagenet_fleet.engine.tarindex import BLOCK, ENCODING, ERRORS, PastEnd, TarError, Walk, _SlowPath, walker
from imagenet_fleet.manifest import hash_file

log = logging.getLogger(__name__)

FORMAT = "imagenet-fleet-members/1"


def sidecar_path(tar: Path) -> Path:
    return tar.with_name(f".{tar.name}.members")


class Recorder:
    """Fed a tar's bytes in order (`feed`), walks its headers; `walks()` is the result, or None if the stream did
    not let it finish (truncated, or a header kind the fast parser leaves to `tarfile`)."""

    def __init__(self, size: int, nested: bool) -> None:
        self._inner: dict[int, Walk] = {}
        self._gen = walker(0, size, self._inner if nested else None)
        self._want: int | None = None
        self._fed = 0
        self._partial = bytearray()  # the start of the wanted header, when it began in an earlier chunk
        self._outer: Walk | None = None
        try:
            self._want = next(self._gen)
        except StopIteration as done:  # (shorter than a header: nothing to read)
            self._outer = done.value

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        start, self._fed = self._fed, self._fed + len(view)
        while self._want is not None:
            if self._partial:
                self._partial += view[: BLOCK - len(self._partial)]
                if len(self._partial) < BLOCK:
                    return
                block = bytes(self._partial)
                self._partial = bytearray()
            else:
                rel = self._want - start
                if rel >= len(view):
                    return
                if rel + BLOCK > len(view):
                    self._partial = bytearray(view[rel:])
                    return
                block = bytes(view[rel : rel + BLOCK])
            self._send(block)

    def _send(self, block: bytes) -> None:
        try:
            self._want = self._gen.send(block)
        except StopIteration as done:
            self._want, self._outer = None, done.value
        except (_SlowPath, PastEnd):
            self._want = None  # not a tar the fast parser can list: the engine reads it itself

    def walks(self) -> dict[int, Walk] | None:
        """{0: the tar's members, data offset: that inner tar's members, ...}; None when incomplete."""
        if self._outer is None:
            return None
        return {0: self._outer, **self._inner}


def _section(items: Walk) -> bytes:
    offsets = array("q", (item[1] for item in items))
    sizes = array("q", (item[2] for item in items))
    regular = bytes(int(item[3]) for item in items)
    names = "\0".join(item[0] for item in items).encode(ENCODING, ERRORS)
    return offsets.tobytes() + sizes.tobytes() + regular + names


def save(tar: Path, walks: dict[int, Walk]) -> Path:
    """Write the member lists beside `tar` (atomically), stamped with the tar's current size and mtime_ns."""
    st = tar.stat()
    sections = {start: _section(items) for start, items in walks.items()}
    places: dict[str, list[int]] = {}
    at = 0
    for start, blob in sections.items():
        places[str(start)] = [at, len(walks[start]), len(blob)]
        at += len(blob)
    head = {"format": FORMAT, "tar": tar.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sections": places}
    path = sidecar_path(tar)
    atomic_write_bytes(path, json.dumps(head).encode() + b"\n" + b"".join(sections.values()))
    return path


class MemberList:
    """A loaded `.members` file: the section of any walk, read on demand (`walk`)."""

    def __init__(self, path: Path, body: int, sections: dict[int, list[int]]) -> None:
        self.path, self._body, self._sections = path, body, sections

    def __contains__(self, start: int) -> bool:
        return start in self._sections

    def ref(self, start: int) -> tuple[str, int, int, int]:
        """What a worker needs to read one walk (`read_walk`): the file, the section's place, its member count."""
        at, count, length = self._sections[start]
        return str(self.path), self._body + at, count, length


def read_walk(ref: tuple[str, int, int, int]) -> Walk:
    path, at, count, length = ref
    with open(path, "rb") as fh:
        fh.seek(at)
        blob = fh.read(length)
    if len(blob) != length:
        raise TarError(f"{path} is truncated", f"delete {path}: the engine then reads the tar's headers itself")
    offsets, sizes = array("q"), array("q")
    offsets.frombytes(blob[: 8 * count])
    sizes.frombytes(blob[8 * count : 16 * count])
    regular = blob[16 * count : 17 * count]
    names = blob[17 * count :].decode(ENCODING, ERRORS).split("\0") if count else []
    return [(names[i], offsets[i], sizes[i], bool(regular[i])) for i in range(count)]


def load(tar: Path) -> MemberList | None:
    """The member lists recorded for `tar`, if any and if made from the tar as it is now (size, mtime_ns)."""
    path = sidecar_path(tar)
    try:
        with open(path, "rb") as fh:
            head: dict[str, Any] = json.loads(fh.readline())
            body = fh.tell()
        st = tar.stat()
    except (OSError, ValueError):
        return None
    if head.get("format") != FORMAT or (head.get("size"), head.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        log.info("%s does not match %s as it is now: reading the tar's headers instead", path, tar)
        return None
    return MemberList(path, body, {int(k): v for k, v in head["sections"].items()})


def record_file(tar: Path, nested: bool) -> dict[int, Walk] | None:
    """Record `tar`'s member lists in a sha256 pass over it, as staging does (tests)."""
    recorder = Recorder(tar.stat().st_size, nested)
    hash_file(tar, also=recorder.feed)
    return recorder.walks()
