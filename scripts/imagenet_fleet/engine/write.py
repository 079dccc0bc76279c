"""The writers: one sequential read of a run of the tar, each record written straight into its place.

A work unit is a run of members of one tar, in tar order (consecutive, but for the records a pass leaves to the
other: see `pipeline`). The worker reads it front to back in large reads (skipping gaps over `MAX_GAP`) and, for
each image, sends `TFRecord head + example prefix + image + example suffix + CRC` to the record's precomputed
offset in its (preallocated) shard file with one `pwritev` — the image bytes go from the read buffer to the page
cache without another copy. Units are independent and idempotent: writing one again writes the same bytes at the
same places, which is what makes a killed run resumable.
"""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from imagenet_fleet.engine import records

READ_BYTES = 8 << 20  # one read covers up to this much of the tar (a larger image gets a read of its own)
MAX_OPEN_SHARDS = 256
BLOCK = 512
MAX_GAP = 1 << 20  # a read spans a gap of up to this many unwanted bytes (a unit may skip records)


@dataclass
class Unit:
    """What a worker needs to write one run of records (arrays in tar order: plain `array`s, so that the workers
    never import NumPy, ~0.3 s of CPU each at start)."""

    key: str  # "<split>:<first index>", the journal's name for it
    tar_path: str
    shard_paths: list[str]
    names: list[str]
    offsets: array[int]
    sizes: array[int]
    labels: array[int]
    shard_of: array[int]
    dest: array[int]
    specials: dict[int, bytes] = field(default_factory=dict)  # index within the unit -> image bytes
    drop: bool = False  # evict the tar bytes once written (see `_drop`)


class _Files:
    """Open descriptors, least recently used closed first (a split can have 1,000+ shards)."""

    def __init__(self, flags: int, limit: int = MAX_OPEN_SHARDS) -> None:
        self._flags, self._limit = flags, limit
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, self._flags)
            while len(self._fds) >= self._limit:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


_inputs = _Files(os.O_RDONLY, limit=8)
_outputs = _Files(os.O_WRONLY)


def _write_record(out_fd: int, dest: int, name: str, label: int, image: bytes | memoryview) -> int:
    prefix, suffix = records.example_parts(name, label, len(image))
    size = len(prefix) + len(image) + len(suffix)
    parts = [records.tfrecord_head(size), prefix, image, suffix, records.tfrecord_tail(prefix, image, suffix)]
    total = size + records.TFRECORD_OVERHEAD
    written = os.pwritev(out_fd, parts, dest)
    if written != total:  # a short write (full disk): finish it the slow way, or raise ENOSPC
        blob = b"".join(bytes(p) for p in parts)
        while written < total:
            written += os.pwrite(out_fd, blob[written:], dest + written)
    return total


def prefetch(fd: int, start: int, end: int) -> None:
    """Start reading [start, min(end, start + READ_BYTES)) into the page cache; returns at once."""
    os.posix_fadvise(fd, start, min(READ_BYTES, end - start), os.POSIX_FADV_WILLNEED)


def _drop(fd: int, offsets: array[int], sizes: array[int], i: int, j: int) -> None:
    """Evict the tar bytes of records i..j-1 from the page cache: they are not read again, and at scale (tars and
    output far larger than memory) the kernel otherwise spends most of the CPU reclaiming pages (95k-image bench:
    the write pass took 37 s without this, 19 s with it). Only runs of
    adjacent records (a header apart) are dropped, so the records a unit skips stay cached for the later pass."""
    start, end = int(offsets[i]), int(offsets[i] + sizes[i])
    for k in range(i + 1, j):
        at = int(offsets[k])
        if at - end > 2 * BLOCK:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
            start = at
        end = at + int(sizes[k])
    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def write_unit(unit: Unit) -> tuple[str, int, int]:
    """Write every record of the unit; returns (key, records, bytes written)."""
    in_fd = _inputs.get(unit.tar_path)
    n = len(unit.names)
    offsets, sizes = unit.offsets, unit.sizes
    buf = bytearray()
    written = 0
    i = 0
    while i < n:
        start = int(offsets[i])
        j = i + 1
        while (
            j < n
            and int(offsets[j] + sizes[j]) - start <= READ_BYTES
            and int(offsets[j] - offsets[j - 1] - sizes[j - 1]) <= MAX_GAP
        ):
            j += 1
        span = int(offsets[j - 1] + sizes[j - 1]) - start
        if j < n:  # the disk reads the next span while this one's records are written
            prefetch(in_fd, int(offsets[j]), int(offsets[n - 1] + sizes[n - 1]))
        if len(buf) < span:
            buf = bytearray(span)
        view = memoryview(buf)[:span]
        got = os.preadv(in_fd, [view], start)
        if got != span:
            raise OSError(f"{unit.tar_path}: short read at byte {start} ({got} of {span} bytes)")
        for k in range(i, j):
            rel = int(offsets[k]) - start
            image = unit.specials.get(k)
            if image is None:
                image = view[rel : rel + int(sizes[k])]
            out_fd = _outputs.get(unit.shard_paths[int(unit.shard_of[k])])
            written += _write_record(out_fd, int(unit.dest[k]), unit.names[k], int(unit.labels[k]), image)
        view.release()
        if unit.drop:
            _drop(in_fd, offsets, sizes, i, j)
        i = j
    return unit.key, n, written


def sync_files(paths: list[str]) -> int:
    """fdatasync each file (a worker's share of the shards): the data is on disk before the metadata is written."""
    _outputs.close()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return len(paths)


def preallocate(path: str, size: int, keep: bool = False) -> None:
    """Make the shard file `size` bytes long, blocks reserved where the filesystem can (a full disk fails now).

    `keep`: keep the bytes already there (a resize, or a resumed run); otherwise start from an empty file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if not keep:
            os.ftruncate(fd, 0)
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (95,):  # EOPNOTSUPP: fall back to a sparse file
                raise
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
