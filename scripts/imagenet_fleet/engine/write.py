"""The writers, in the worker processes.

TFRecord: a work unit is a run of consecutive members of one tar, in tar order. The worker reads it front to back in
large reads (`AHEAD` of them in flight in a reader thread, into huge pages: `read_buffer`; the train tar with
O_DIRECT; a gap over `MAX_GAP`, such as a huge member that is not an image, skipped) and, for each image, sends
`TFRecord head + example prefix + image + example suffix + CRC` to the record's precomputed offset in its
(preallocated) shard file with one `pwritev`: the image bytes go from the read buffer to the page cache without
another copy. Each image's header, read with it, is checked against the index on the way (`tarindex.check_header`).
Units are independent and idempotent: writing one again writes the same bytes at the same places, which is what
makes a killed run resumable.

ArrayRecord: the same units, in the same pass; each read's records go through array_record's own writer (a scratch
file in memory) and each record's chunk is written to its planned place (`arrayrecord`); a job per shard writes what
the shard holds besides its chunks (`FrameJob`).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from array import array
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from imagenet_fleet.engine import arrayrecord, records, tarindex

READ_BYTES = 8 << 20  # one read covers up to this much of the tar (a larger image gets a read of its own)
READ_BUDGET = 128 << 20  # the read buffers of all the workers together: reads get shorter past 5 workers
MAX_OPEN_SHARDS = 256
BLOCK = 512
ALIGN = 4096  # O_DIRECT reads: offset, length and buffer aligned to this
SLACK = BLOCK + 2 * ALIGN  # what a read adds to its records' bytes: the first one's tar header, the alignment
HUGE_PAGE = 2 << 20  # read buffers are sized in these (`read_buffer`)
AHEAD = 2  # reads in flight per worker
MAX_GAP = 1 << 20  # a read spans a gap of up to this many bytes that are not images


@dataclass
class Unit:
    """What a worker needs to write one run of records (arrays in tar order: plain `array`s, so that the workers
    never import NumPy, ~0.3 s of CPU each at start)."""

    key: str  # "A:<split>:<first index>", the journal's name for it
    tar_path: str
    shard_paths: list[str]
    names: list[str]
    offsets: array[int]
    sizes: array[int]
    labels: array[int]
    shard_of: array[int]
    dest: array[int]
    specials: dict[int, bytes] = field(default_factory=dict)  # index within the unit -> image bytes
    # Evict the tar's bytes from the page cache once written: they are not read again, and at scale (tars and output
    # far larger than memory) the kernel otherwise spends most of the CPU reclaiming pages (95k-image bench: the
    # write pass took 37 s without this, 19 s with it)
    drop: bool = False
    direct: bool = False  # read with O_DIRECT (a tar the index did not read: the train tar)
    read_bytes: int = READ_BYTES  # (`read_bytes(workers)`)
    array_record: bool = False  # `dest` is then each record's chunk's logical place (`arrayrecord`)


class _Files:
    """Open descriptors, least recently used closed first (a split can have 1,000+ shards)."""

    def __init__(self, flags: int, limit: int = MAX_OPEN_SHARDS, advice: int | None = None) -> None:
        self._flags, self._limit, self._advice = flags, limit, advice
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, path: str) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, self._flags)
            if self._advice is not None:
                os.posix_fadvise(fd, 0, 0, self._advice)
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


def _spans(unit: Unit) -> list[tuple[int, int]]:
    """The unit's reads: (first, end) record ranges, each read fitting a `read_bytes` buffer (or one image)."""
    offsets, sizes, n = unit.offsets, unit.sizes, len(unit.offsets)
    limit = unit.read_bytes - SLACK
    out = []
    i = 0
    while i < n:
        start = offsets[i]
        j = i + 1
        while (
            j < n
            and offsets[j] + sizes[j] - start <= limit
            and offsets[j] - offsets[j - 1] - sizes[j - 1] <= MAX_GAP
        ):
            j += 1
        out.append((i, j))
        i = j
    return out


class _Reader:
    """Reads a unit's spans `AHEAD` ahead, in threads (the disk works while the records of earlier spans are
    written). The train tar is read with O_DIRECT where the filesystem allows it: straight into an aligned buffer,
    without the page cache (whose insertion, copy and later reclaim cost most of the kernel's CPU per image: the
    tar is read once and never again); the flat tars, whose bytes the index has just read, through the cache."""

    def __init__(self, read_bytes: int) -> None:
        self.read_bytes = read_bytes
        self._pool = ThreadPoolExecutor(AHEAD, thread_name_prefix="imagenet-read")
        self._buffers = [read_buffer(read_bytes) for _ in range(AHEAD + 1)]
        self._direct: dict[str, int | None] = {}
        self._turn = 0

    def _fd(self, path: str, direct: bool) -> tuple[int, bool]:
        if direct and path not in self._direct:
            try:
                self._direct[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
            except OSError:
                self._direct[path] = None  # (tmpfs, some network filesystems)
        fd = self._direct.get(path) if direct else None
        return (fd, True) if fd is not None else (_inputs.get(path), False)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for buf in self._buffers:
            buf.close()
        for fd in self._direct.values():
            if fd is not None:
                os.close(fd)
        self._direct.clear()

    def read(self, path: str, start: int, end: int, direct: bool) -> Future[tuple[memoryview, int]]:
        """[start, end) of the file, as (view, offset of the view's first byte) once read."""
        buf = self._buffers[self._turn]  # (the span read AHEAD + 1 reads ago is written by now)
        self._turn = (self._turn + 1) % len(self._buffers)
        fd, is_direct = self._fd(path, direct)
        return self._pool.submit(self._read, buf, path, fd, is_direct, start, end)

    def _read(self, buf: mmap.mmap, path: str, fd: int, direct: bool, start: int, end: int) -> tuple[memoryview, int]:
        base, length = _aligned(start, end) if direct else (start, end - start)
        if length > len(buf):
            buf = read_buffer(length)  # (one image larger than a read)
        view = memoryview(buf)[:length]
        try:
            got = os.preadv(fd, [view], base)
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL:
                raise
            self._direct[path] = None  # O_DIRECT refused at read time: read through the cache from now on
            view.release()
            return self._read(buf, path, _inputs.get(path), False, start, end)
        if got < end - base:
            view.release()
            raise OSError(f"{path}: short read at byte {start} ({got - (start - base)} of {end - start} bytes)")
        return view, base


def _aligned(start: int, end: int) -> tuple[int, int]:
    """The O_DIRECT read that covers [start, end): its offset and length, both multiples of `ALIGN`."""
    base = start - start % ALIGN
    return base, -(-(end - base) // ALIGN) * ALIGN


def read_buffer(size: int) -> mmap.mmap:
    """A private anonymous buffer, in transparent huge pages where the kernel allows them (THP `madvise` or
    `always`). An O_DIRECT read into 4 KB pages reaches the disk cut into requests of at most `max_segments` pages
    (254 on this VM's virtio disk: ~0.6 MB); into 2 MB pages, it goes out in requests as large as the device takes
    (4 MB here). Measured on this VM, 2 threads reading the train tar with 8 MB reads: 0.5-0.6 GB/s in 4 KB pages,
    1.4-1.7 GB/s in huge pages. (The kernel aligns an anonymous mapping to huge pages only when its size is a
    multiple of one: `read_bytes` is.)"""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # (no MADV_HUGEPAGE on this platform, or THP off)
        buf.madvise(mmap.MADV_HUGEPAGE)
    return buf


_reader: _Reader | None = None
_scratch: arrayrecord.Scratch | None = None


def _scratch_file() -> arrayrecord.Scratch:
    """The worker's scratch file for array_record's writer (made on first use, kept for the worker's life)."""
    global _scratch
    _scratch = _scratch or arrayrecord.Scratch()
    return _scratch


def _write_records(unit: Unit, first: int, images: list[memoryview | bytes]) -> int:
    """TFRecord: each record of a read, framed, to its place."""
    written = 0
    for k, image in enumerate(images, first):
        out_fd = _outputs.get(unit.shard_paths[unit.shard_of[k]])
        written += _write_record(out_fd, unit.dest[k], unit.names[k], unit.labels[k], image)
    return written


def _write_chunks(unit: Unit, first: int, images: list[memoryview | bytes]) -> int:
    """ArrayRecord: the records of a read through array_record's writer, each chunk to its place (`arrayrecord`)."""
    examples = [records.serialize(unit.names[k], unit.labels[k], image) for k, image in enumerate(images, first)]
    places = [(unit.shard_paths[unit.shard_of[k]], unit.dest[k]) for k in range(first, first + len(examples))]
    return arrayrecord.write_records(_scratch_file(), examples, places, _outputs.get)


def write_unit(unit: Unit) -> tuple[str, int, int]:
    """Write every record of the unit; returns (key, records, bytes written)."""
    global _reader
    if _reader is None or _reader.read_bytes != unit.read_bytes:
        if _reader is not None:
            _reader.close()
        _reader = _Reader(unit.read_bytes)
    offsets, sizes = unit.offsets, unit.sizes
    spans = _spans(unit)
    written = 0

    def read(s: int) -> Future[tuple[memoryview, int]]:
        i, j = spans[s]
        assert _reader is not None
        return _reader.read(unit.tar_path, offsets[i] - BLOCK, offsets[j - 1] + sizes[j - 1], unit.direct)

    ahead = deque(read(s) for s in range(min(AHEAD, len(spans))))
    for s, (i, j) in enumerate(spans):
        view, base = ahead.popleft().result()
        if s + AHEAD < len(spans):
            ahead.append(read(s + AHEAD))
        try:
            images = []
            for k in range(i, j):
                rel = offsets[k] - base
                tarindex.check_header(unit.tar_path, view[rel - BLOCK : rel], offsets[k], unit.names[k], sizes[k])
                special = unit.specials.get(k)
                images.append(view[rel : rel + sizes[k]] if special is None else special)
            written += (_write_chunks if unit.array_record else _write_records)(unit, i, images)
            del images
        finally:
            view.release()
        if unit.drop and not unit.direct:  # (see `Unit.drop`)
            os.posix_fadvise(_inputs.get(unit.tar_path), offsets[i], offsets[j - 1] + sizes[j - 1] - offsets[i],
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
    return unit.key, len(offsets), written


def read_bytes(workers: int) -> int:
    """The size of a read buffer: 8 MB, less once `workers` x (AHEAD + 1) buffers would pass READ_BUDGET (the
    workers' memory stays bounded on a host with many cores), 1 MB at least; whole huge pages from 2 MB up."""
    size = max(1 << 20, min(READ_BYTES, READ_BUDGET // (workers * (AHEAD + 1))))
    return size // HUGE_PAGE * HUGE_PAGE if size >= HUGE_PAGE else size // ALIGN * ALIGN


@dataclass
class FrameJob:
    """ArrayRecord: what one shard holds besides its records' chunks (`arrayrecord.write_frame`)."""

    key: str  # "F:<split>:<shard>", the journal's name for it
    path: str
    record_sizes: array[int]  # in the shard's order
    chunks_at: array[int]  # their chunks' logical places


def write_frame(job: FrameJob) -> tuple[str, int, int]:
    size = arrayrecord.write_frame(_scratch_file(), _outputs.get(job.path), job.record_sizes, job.chunks_at)
    return job.key, 0, size - sum(arrayrecord.chunk_size(n) for n in job.record_sizes)


def run(job: Unit | FrameJob) -> tuple[str, int, int]:
    """A worker's task: a work unit, or an ArrayRecord shard's frame."""
    return write_unit(job) if isinstance(job, Unit) else write_frame(job)


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
    """Make the shard file an empty `size` bytes, blocks reserved where the filesystem can (a full disk fails now;
    and on ext4 the records' scattered writes then land in blocks laid out in file order: a sparse file instead made
    the 95k bench's build 30-50% slower)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (95,):  # EOPNOTSUPP: fall back to a sparse file
                raise
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
