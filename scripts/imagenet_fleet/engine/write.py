"""The writers: one sequential read of a run of the tar, each record written straight into its place.

A work unit is a run of consecutive members of one tar. The worker reads it front to back in large reads and, for
each image, sends `TFRecord head + example prefix + image + example suffix + CRC` to the record's precomputed
offset in its (preallocated) shard file with one `pwritev` — the image bytes go from the read buffer to the page
cache without another copy. Units are independent and idempotent: writing one again writes the same bytes at the
same places, which is what makes a killed run resumable.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from imagenet_fleet.engine import records

READ_BYTES = 8 << 20  # one read covers up to this much of the tar (a larger image gets a read of its own)
MAX_OPEN_SHARDS = 256


@dataclass
class Unit:
    """What a worker needs to write one run of records (arrays in tar order)."""

    key: str  # "<split>:<first index>", the journal's name for it
    tar_path: str
    shard_paths: list[str]
    names: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    shard_of: np.ndarray
    dest: np.ndarray
    specials: dict[int, bytes] = field(default_factory=dict)  # index within the unit -> image bytes


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
        while j < n and int(offsets[j] + sizes[j]) - start <= READ_BYTES:
            j += 1
        span = int(offsets[j - 1] + sizes[j - 1]) - start
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


def preallocate(path: str, size: int) -> None:
    """Create the shard file at its final size (blocks reserved where the filesystem can: a full disk fails now)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, 0)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (95,):  # EOPNOTSUPP: fall back to a sparse file
                    raise
                os.ftruncate(fd, size)
    finally:
        os.close(fd)
