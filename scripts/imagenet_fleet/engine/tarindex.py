"""Index tars by their headers only: names, data offsets and sizes, a 512-byte read per member, never the data.

ILSVRC2012's train tar is a tar of tars; the inner tars sit contiguously in the outer file, so their members'
headers are read in place (absolute offsets in the outer file). Each tar (or inner tar) is a chain of headers that
must be walked in order (a header gives the next one's offset); chains are walked concurrently (threads in each
worker process) so the disk sees many reads at once. Readahead is switched off on these file descriptors
(`POSIX_FADV_RANDOM`) so a header read costs one page, not the image behind it.

Members are reported the way TFDS's `iter_archive` sees them (Python's `tarfile`: regular files only, names through
TFDS's `_normpath`, hidden or absolute names skipped). A fast parser handles plain ustar/GNU headers; any other
header kind (long names, PAX, sparse) makes that chain be read again with `tarfile` itself, so both agree by
construction (`tests/test_engine_tarindex.py` compares them).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from array import array
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from imagenet_fleet.engine import records
from imagenet_fleet.errors import UserError

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\x00", b"7")  # tarfile.REGULAR_TYPES without sparse ('S' goes to the slow path)
_NO_DATA = (b"3", b"4", b"5", b"6")  # char/block device, directory, fifo: tarfile skips no data for these
_LINKS = (b"1", b"2")
ENCODING = "utf-8"
ERRORS = "surrogateescape"  # tarfile's defaults on Linux
CHAIN_THREADS = 32
FLAT_CHUNK = 4 << 20


Walk = list[tuple[str, int, int, bool]]  # (tarfile name, absolute data offset, size, is_regular) per member


class TarError(UserError):
    """A tar that is not what ILSVRC2012 ships (truncated, not a tar, unexpected members)."""


class _SlowPath(Exception):
    """A header the fast parser does not handle: read this chain with tarfile."""


@dataclass(frozen=True)
class Chain:
    """One tar's member list to walk: [start, end) of `path`; `label` is the train synset's label (None: later)."""

    path: str
    start: int
    end: int
    split: str
    label: int | None = None
    keep_raw_names: bool = False
    flat: bool = False  # a whole flat tar (validation, test), not an inner tar of the train tar
    fetch: frozenset[str] = frozenset()  # keys whose image bytes to read too (the CMYK/PNG images)
    staged: tuple[str, int, int, int] | None = None  # its members as staging recorded them (`memberlist.ref`)


@dataclass
class ChainIndex:
    """Regular members of a chain in tar order (absolute data offsets), with TFDS's hash of each key. Numbers are
    kept in plain arrays, not lists of ints: ILSVRC2012's train split has 1.28M members, and these travel from the
    index workers to the build's process and are held there until the split is laid out."""

    name_blob: bytearray = field(default_factory=bytearray)  # the keys, encoded as tarfile decoded them, each + NUL
    name_ends: array[int] = field(default_factory=lambda: array("q"))  # where each key's NUL ends in name_blob
    offsets: array[int] = field(default_factory=lambda: array("q"))
    sizes: array[int] = field(default_factory=lambda: array("q"))
    digests: bytearray = field(default_factory=bytearray)  # 16 bytes a member, md5(split + key): TFDS's shuffle key
    record_sizes: array[int] = field(default_factory=lambda: array("q"))  # empty when the label is not known yet
    raw_names: list[str] = field(default_factory=list)  # every member's tarfile name (validation labels)
    label: int | None = None  # the chain's label, when it has one for all its members
    fetched: dict[str, bytes] = field(default_factory=dict)  # the image bytes of the chain's `fetch` keys

    def add_name(self, key: str) -> None:
        self.name_blob += key.encode(ENCODING, ERRORS) + b"\0"  # (a tar member's name holds no NUL)
        self.name_ends.append(len(self.name_blob))

    @property
    def names(self) -> list[str]:
        return self.name_blob[:-1].decode(ENCODING, ERRORS).split("\0") if self.name_ends else []


def normpath(path: str) -> str | None:
    """TFDS's `extractor._normpath`: the key of a member, or None for members TFDS skips."""
    path = os.path.normpath(path)
    if path.startswith(".") or os.path.isabs(path) or path.endswith("~") or os.path.basename(path).startswith("."):
        return None
    return path


def hash_digest(split: str, key: str) -> bytes:
    """TFDS's `hashing.Hasher(split).hash_key(key)` as 16 big-endian bytes (sorting them sorts the int keys)."""
    md5 = hashlib.md5(split.encode("utf-8"))
    md5.update(key.replace("\\", "/").encode("utf-8"))
    return md5.digest()


def _nts(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(ENCODING, ERRORS)


def _parse(buf: bytes) -> tuple[str, int, bytes] | None:
    """(tarfile name, size, type) of a plain header; None at the end-of-archive block."""
    if buf == _ZERO_BLOCK:
        return None
    if buf[124] & 0x80 or buf[148] & 0x80:
        raise _SlowPath  # base-256 numbers
    try:
        chksum = int(_nts(buf[148:156]).strip() or "0", 8)
        size = int(_nts(buf[124:136]).strip() or "0", 8)
    except ValueError:
        raise _SlowPath from None
    if chksum != 256 + sum(buf) - sum(buf[148:156]):
        raise _SlowPath  # tarfile also accepts the signed sum, or rejects the header: let it decide
    kind = buf[156:157]
    name = _nts(buf[0:100])
    if kind == b"\x00" and name.endswith("/"):
        kind = b"5"
    if kind not in _REGULAR and kind not in _NO_DATA:
        raise _SlowPath
    if kind == b"5":
        name = name.rstrip("/")
    prefix = _nts(buf[345:500])
    if prefix:
        name = prefix + "/" + name
    return name, size, kind


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _member_error(path: str, where: int, what: str) -> TarError:
    return TarError(
        f"{path}: {what} at byte {where}",
        "stage the tar again (it is damaged or not an ILSVRC2012 tar)",
    )


class _Chunks:
    """Header reads for a flat tar's serial walk: large reads (`FLAT_CHUNK`), each serving the headers it holds.
    A read per header would be a disk round trip each (50,000 for ILSVRC2012's validation tar), and so would the
    kernel's readahead windows (~2 images each): behind the writers' reads, those waits made the 95k bench's
    validation index take 37 s instead of 6."""

    def __init__(self, fd: int, end: int) -> None:
        self._fd, self._end = fd, end
        self._start, self._buf = 0, b""

    def __call__(self, pos: int) -> bytes:
        rel = pos - self._start
        if not (0 <= rel and rel + BLOCK <= len(self._buf)):
            self._start, self._buf = pos, os.pread(self._fd, min(FLAT_CHUNK, max(BLOCK, self._end - pos)), pos)
            rel = 0
        return self._buf[rel : rel + BLOCK]


class PastEnd(Exception):
    """A member runs past the end of its tar."""


def walker(start: int, end: int, inner: dict[int, Walk] | None = None) -> Generator[int, bytes, Walk]:
    """The fast parser's walk of the tar at [start, end): yields the offset of each header it needs, is sent its
    512 bytes, returns (tarfile name, absolute data offset, size, is_regular) of every member. Driven by reads
    (`_walk_fast`) or by a stream going past (`memberlist.Recorder`). With `inner`, every regular member named
    `*.tar` is walked as a tar too, into `inner` by its start (one this parser cannot walk is left out)."""
    out: Walk = []
    pos = start
    while pos + BLOCK <= end:
        parsed = _parse((yield pos))
        if parsed is None:
            return out
        name, size, kind = parsed
        item = (name, pos + BLOCK, size, kind in _REGULAR)
        out.append(item)
        if inner is not None and item[3] and name.endswith(".tar"):
            try:
                inner[item[1]] = yield from walker(item[1], item[1] + size)
            except (_SlowPath, PastEnd):
                pass  # this inner tar's headers are left to the engine's own walk
        pos += BLOCK + (_blocks(size) if item[3] else 0)
    if pos > end:
        raise PastEnd
    return out


def _walk_fast(fd: int, chain: Chain) -> Walk:
    """`walker` fed by reads of the chain's headers."""
    read = _Chunks(fd, chain.end) if chain.flat else lambda at: os.pread(fd, BLOCK, at)
    steps = walker(chain.start, chain.end)
    try:
        pos = next(steps)
        while True:
            buf = read(pos)
            if len(buf) < BLOCK:
                raise _member_error(chain.path, pos, "truncated header")
            pos = steps.send(buf)
    except StopIteration as done:
        return done.value
    except PastEnd:
        raise _member_error(chain.path, chain.end, "member runs past the end of the archive") from None


class _Window:
    """A read-only file object over [start, end) of a file descriptor, for tarfile."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd, self._start, self._end, self._pos = fd, start, end, 0

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._start - self._pos
        n = left if n < 0 else min(n, left)
        data = os.pread(self._fd, n, self._start + self._pos) if n > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._end - self._start}[whence]
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos


def _walk_tarfile(fd: int, chain: Chain) -> Walk:
    """Same as `_walk_fast`, by Python's tarfile (every header kind it knows)."""
    out: Walk = []
    try:
        with tarfile.open(fileobj=_Window(fd, chain.start, chain.end), mode="r:") as tar:  # type: ignore[call-overload]
            for member in tar:
                if member.islnk() or member.issym():
                    raise TarError(
                        f"{chain.path}: member {member.name!r} is a link (links are not supported)",
                        "use the original ILSVRC2012 tars, which hold regular files only",
                    )
                regular = member.isreg() or member.type not in tarfile.SUPPORTED_TYPES
                out.append((member.name, chain.start + member.offset_data, member.size, regular))
    except tarfile.TarError as exc:
        raise _member_error(chain.path, chain.start, f"unreadable tar ({exc})") from None
    return out


def walk(fd: int, chain: Chain) -> Walk:
    if chain.staged is not None:
        from imagenet_fleet.engine import memberlist

        return memberlist.read_walk(chain.staged)
    try:
        return _walk_fast(fd, chain)
    except _SlowPath:
        return _walk_tarfile(fd, chain)


def check_header(path: str, block: bytes | memoryview, offset: int, key: str, size: int) -> None:
    """The writers' check that the 512 bytes before an image (at `offset`) are its header as indexed: a valid
    header, of that size, under that name. A tar changed since its headers were read (or a stale member list)
    fails the build instead of writing wrong records. (A name too long or not ASCII lives in an extended header
    before this one, which the index read: only the size is checked then.)"""
    raw = bytes(block)
    name = key.encode(ENCODING, ERRORS)
    if len(name) < 100 and raw.startswith(name) and raw[len(name)] == 0:
        try:
            if int(raw[124:136].strip(b"\0 "), 8) == size:
                return  # the common case: a plain header holding the key itself
        except ValueError:
            pass
    try:
        info = tarfile.TarInfo.frombuf(raw, ENCODING, ERRORS)  # (checksum checked, any number format)
    except tarfile.HeaderError:
        raise ChangedTar(path, offset, key, size) from None
    if info.issparse():
        return  # its size field is not the file's: the index read it through tarfile
    if info.size == size and (normpath(info.name) == key or len(name) >= 100 or not key.isascii()):
        return
    raise ChangedTar(path, offset, key, size)


class ChangedTar(TarError):
    """A member is not where or what the index said: the tar changed since its headers were read."""

    def __init__(self, path: str, offset: int, key: str, size: int) -> None:
        super().__init__(
            f"{path}: the member at byte {offset} is not {key!r} of {size} bytes as indexed (the tar changed)",
            "run the build again: it reads the tar's headers afresh",
        )
        self.path, self._args = path, (path, offset, key, size)

    def __reduce__(self) -> tuple[type[ChangedTar], tuple[str, int, str, int]]:  # type: ignore[override]
        return (type(self), self._args)  # (raised in a worker process, it reaches the parent intact)


def index_chain(fd: int, chain: Chain) -> ChainIndex:
    index = ChainIndex(label=chain.label)
    for raw_name, offset, size, regular in walk(fd, chain):
        if chain.keep_raw_names:
            index.raw_names.append(raw_name)
        key = normpath(raw_name) if regular else None
        if key is None:
            continue
        index.add_name(key)
        index.offsets.append(offset)
        index.sizes.append(size)
        index.digests += hash_digest(chain.split, key)
        if chain.label is not None:
            index.record_sizes.append(records.record_size(key, chain.label, size))
        if key in chain.fetch:
            index.fetched[key] = os.pread(fd, size, offset)
    return index


def open_for(chain: Chain) -> int:
    """A descriptor for the chain's header reads. An inner tar's: no readahead, so a 512-byte read costs one page,
    never the image behind it (those bytes are read once, by the writers). A flat tar's (validation, test: one long
    serial walk, a header leading to the next): read in large chunks (`_Chunks`), image bytes included. On a disk
    that caps I/O operations per second (~13k here, with bandwidth to spare) a round trip per header would starve
    the walk behind the train tar's parallel reads (1 s for the 12k sample's 2,000 validation headers, against
    0.3 s streaming). The cost: the flat tars' bytes are read by the index; the split is written right after its
    index, while they are still in the page cache (a host short of memory reads them twice: +13% input bytes on
    ILSVRC2012)."""
    fd = os.open(chain.path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL if chain.flat else os.POSIX_FADV_RANDOM)
    return fd


def index_chains(chains: Sequence[Chain], threads: int = CHAIN_THREADS) -> list[ChainIndex]:
    """Index chains concurrently (a pool worker's task); results in the chains' order."""
    fds: dict[str, int] = {}
    try:
        for chain in chains:
            if chain.path not in fds:
                fds[chain.path] = open_for(chain)
        with ThreadPoolExecutor(max(1, min(threads, len(chains)))) as pool:
            return list(pool.map(lambda c: index_chain(fds[c.path], c), chains))
    finally:
        for fd in fds.values():
            os.close(fd)
