"""ArrayRecord shards written the way TFRecord's are: each record straight to its planned place, in one pass over the
tar in tar order, so that no image is read at random.

An ArrayRecord file is a riegeli file. With TFDS's options, uncompressed (`OPTIONS`: one record a chunk, stored as it
is), two facts make that possible (`tests/test_engine_arrayrecord.py` checks both against array_record's writer):
- where each record's chunk lands depends only on the sizes of the records before it: the file opens with a block
  header and the signature chunk, then the chunks follow each other with no padding, a chunk being its 40-byte
  header and `chunk_size` - 40 bytes of data, and riegeli puts a 24-byte block header at every 64 KiB of the file,
  cutting through whatever is there (`physical`);
- a chunk's bytes (its header, with the hashes of itself and of its data, and the data) do not depend on where it
  lands.
So the layout (`plan.lay_out`) places every chunk from the record sizes alone. A worker gives each read's records,
in tar order, to array_record's own writer (a scratch file in memory) and writes each chunk from there to its place,
around the block headers (`write_records`). Everything else in a shard (the block headers, the signature,
array_record's footer and riegeli's postscript) depends only on the record sizes: `write_frame` has array_record's
writer write the shard with zero-filled records of the same sizes, in memory, keeps those bytes as they stream past
and writes them to the shard, and checks on the way that every record's chunk header is where the layout put it (a
build fails rather than write a file the writer would not).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable, Iterator, Sequence

from imagenet_fleet.engine.records import varint_len
from imagenet_fleet.errors import UserError

# The options TFDS's `ArrayRecordFileAdapter.write_examples` gives array_record's writer (TFDS 4.9.10: "group_size:1",
# a test checks it), uncompressed. With those options every record is compressed (array_record's default, zstd
# level 3): on JPEG bytes that saves nothing (a file 1.0013x the images' bytes either way) and costs ~0.55 ms of CPU
# per ~110 KB image, ~60% of the build's CPU (2-core VM, 12k sample, side by side: 3.9 s against 6.0). Records,
# metadata and readers (`tfds.data_source`, `tfds.load`: each chunk says how it is stored) are the same either way.
# The writer is called directly: importing TFDS's file_adapters costs each worker ~0.6 s of CPU (12k: 5.23 s median
# against 6.06, 6 alternating runs each).
OPTIONS = "group_size:1,uncompressed"
BLOCK_SIZE = 1 << 16  # riegeli: a block header at every multiple of this
BLOCK_HEADER = 24
USABLE = BLOCK_SIZE - BLOCK_HEADER
CHUNK_HEADER = 40
FIRST_CHUNK = CHUNK_HEADER  # logical position of the first record's chunk: after the signature chunk (a bare header)
_HEAD = BLOCK_HEADER + CHUNK_HEADER  # the file's first block header and the signature chunk
_RECORDS_CHUNK = ord("r")
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(None, use_errno=True)


class LayoutError(UserError):
    """array_record's writer did not lay a shard out as planned: an array_record whose files differ from the one
    this engine was checked against (0.8.6)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"array_record's writer lays files out otherwise than the engine expects: {what}",
            "build with --engine tfds (or --file-format tfrecord), and report the array_record version installed",
        )

    def __reduce__(self) -> tuple[type[LayoutError], tuple[str]]:  # type: ignore[override]
        return (type(self), (self.cause.split(": ", 1)[1],))


def chunk_size(record_size: int) -> int:
    """A record's chunk: header, compression type (none), the varint length of its size's varint, that varint, and
    the record."""
    return CHUNK_HEADER + 1 + varint_len(varint_len(record_size)) + varint_len(record_size) + record_size


def physical(logical: int) -> int:
    """A position in the file, from its position among the bytes that are not block headers."""
    return logical + BLOCK_HEADER * (logical // USABLE + 1)


def _segments(logical: int, length: int) -> Iterator[tuple[int, int, int]]:
    """[logical, logical + length) cut at the block headers: (file position, start, end) of each piece."""
    done = 0
    while done < length:
        at = logical + done
        take = min(USABLE - at % USABLE, length - done)
        yield physical(at), done, done + take
        done += take


def _writer(path: str) -> object:
    from array_record.python.array_record_module import ArrayRecordWriter  # (~7 ms; the workers need it only here)

    return ArrayRecordWriter(path, OPTIONS)


class Scratch:
    """A worker's scratch file in memory, for array_record's writer."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("imagenet-fleet-array-record")
        self.path = f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        os.close(self.fd)


def write_records(
    scratch: Scratch, records: Sequence[bytes], places: Sequence[tuple[str, int]], open_shard: Callable[[str], int]
) -> int:
    """Write each record's chunk, as array_record's writer makes it, to its place: `places[k]` is (shard file, the
    chunk's logical place in it), `open_shard` gives a descriptor for a shard file when its chunk is written. The
    chunks go from the scratch file's pages to the shards' with no copy in between. Returns the bytes written."""
    writer = _writer(scratch.path)  # (opening the path truncates the scratch file)
    try:
        for record in records:
            writer.write(record)  # type: ignore[attr-defined]
    finally:
        writer.close()  # type: ignore[attr-defined]
    size = os.fstat(scratch.fd).st_size
    written, at = 0, FIRST_CHUNK
    with mmap.mmap(scratch.fd, size, prot=mmap.PROT_READ) as file, memoryview(file) as view:
        for record, (shard, dest) in zip(records, places, strict=True):
            length = chunk_size(len(record))
            pieces = [view[p : p + end - start] for p, start, end in _segments(at, length)]
            try:
                header = b"".join(piece[:CHUNK_HEADER] for piece in pieces)[:CHUNK_HEADER]
                _check(header, len(record), f"the scratch file's chunk at {at}")
                _write_pieces(open_shard(shard), dest, pieces, length)
            finally:
                for piece in pieces:
                    piece.release()
            at += length
            written += length
    return written


def _write_pieces(out_fd: int, logical: int, pieces: list[memoryview], length: int) -> None:
    """Write `length` bytes, given in `pieces`, at a logical place in a shard, around its block headers."""
    source = iter(pieces)
    piece = next(source)
    for at, start, end in _segments(logical, length):
        iov, need = [], end - start
        while need:
            if not piece:
                piece = next(source)
            take = piece[:need]
            iov.append(take)
            piece, need = piece[len(take) :], need - len(take)
        done = os.pwritev(out_fd, iov, at)
        if done < end - start:  # (a short write: a full disk; the next write reports it)
            rest = b"".join(iov)[done:]
            while rest:
                rest = rest[os.pwrite(out_fd, rest, at + end - start - len(rest)) or _full(out_fd) :]


def _check(header: bytes, record_size: int, where: str) -> None:
    if header[24] != _RECORDS_CHUNK or int.from_bytes(header[8:16], "little") != chunk_size(record_size) - CHUNK_HEADER:
        raise LayoutError(f"{where} is not a chunk of one {record_size}-byte record")


def _full(fd: int) -> int:
    raise OSError(28, os.strerror(28), f"/proc/self/fd/{fd}")


_can_punch = True


def _punch(fd: int, end: int) -> None:
    """Free the scratch file's memory below `end` (its size stays). Where the kernel cannot (no hole punching in
    memory files), the frame's scratch file just holds the whole shard until the frame is written."""
    global _can_punch
    if _can_punch and end > 0 and _libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_long(0), ctypes.c_long(end)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
        _can_punch = False


def write_frame(scratch: Scratch, out_fd: int, record_sizes: Sequence[int], chunks_at: Sequence[int]) -> int:
    """Write what a shard holds besides its records' chunks (`chunks_at`: their logical places, as laid out, in the
    shard's order); returns the shard's size. Zero-filled records of the same sizes go through array_record's
    writer into the scratch file, which is read and freed as it grows (the writer flushes every ~16 MB): memory
    stays small whatever the shard's size."""
    records_end = physical(chunks_at[-1] + chunk_size(record_sizes[-1])) if chunks_at else physical(FIRST_CHUNK)
    checked = 0  # records whose chunk header was checked
    block = BLOCK_SIZE  # the next block header to copy (the first one is in the head)
    head = False
    seen = -1  # the scratch file's size when last looked at

    def take(size: int) -> None:
        nonlocal checked, block, head, seen
        if size == seen:
            return  # (nothing new: the writer flushes every ~16 MB)
        seen = size
        if not head and size >= _HEAD:
            os.pwrite(out_fd, os.pread(scratch.fd, _HEAD, 0), 0)
            head = True
        while checked < len(chunks_at) and physical(chunks_at[checked] + CHUNK_HEADER) <= size:
            _check_header(scratch.fd, chunks_at[checked], record_sizes[checked])
            checked += 1
        while block < records_end and block + BLOCK_HEADER <= size:
            os.pwrite(out_fd, os.pread(scratch.fd, BLOCK_HEADER, block), block)
            block += BLOCK_SIZE
        pending = [block] + ([physical(chunks_at[checked])] if checked < len(chunks_at) else [])
        _punch(scratch.fd, min(min(pending), records_end, size) // mmap.PAGESIZE * mmap.PAGESIZE if head else 0)

    writer = _writer(scratch.path)
    try:
        for n in record_sizes:
            writer.write(bytes(n))  # type: ignore[attr-defined]
            take(os.fstat(scratch.fd).st_size)
    finally:
        writer.close()  # type: ignore[attr-defined]
    size = os.fstat(scratch.fd).st_size
    take(size)
    if checked < len(chunks_at) or block < records_end or size < records_end:
        raise LayoutError(f"array_record's writer wrote {size} bytes for records that end at byte {records_end}")
    tail = os.pread(scratch.fd, size - records_end, records_end)
    os.pwrite(out_fd, tail, records_end)
    os.ftruncate(out_fd, size)
    return size


def _check_header(fd: int, logical: int, record_size: int) -> None:
    header = b"".join(os.pread(fd, end - start, at) for at, start, end in _segments(logical, CHUNK_HEADER))
    _check(header, record_size, f"the frame's chunk at logical position {logical}")
