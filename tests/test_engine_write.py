"""The writers' reads: O_DIRECT (aligned reads into aligned buffers) and buffered reads give the same bytes; reads
fit their buffers, and the buffers are huge pages where the kernel has them."""

from __future__ import annotations

import ctypes
import os
import random
from array import array
from pathlib import Path

import pytest

from imagenet_fleet.engine import write

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.parametrize("direct", [True, False])
def test_reads_return_the_exact_ranges(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * write.READ_BYTES // 2 + 1234)  # (not a multiple of the alignment)
    path.write_bytes(data)
    reader = write._Reader(write.READ_BYTES)
    rng = random.Random(7)
    ranges = [(0, 1), (1, 4097), (4095, 4097), (len(data) - 10, len(data)), (100, 100 + write.READ_BYTES + 5)]
    ranges.append((0, len(data)))  # larger than a read buffer (an image over READ_BYTES)
    ranges += [(a, a + rng.randrange(1, 300_000)) for a in (rng.randrange(len(data) - 300_000) for _ in range(20))]
    for start, end in ranges:
        view, base = reader.read(str(path), start, end, direct).result()
        try:
            assert bytes(view[start - base : end - base]) == data[start:end]
            if direct and reader._direct.get(str(path)) is not None:
                assert base % write.ALIGN == 0
        finally:
            view.release()


def test_a_short_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(OSError, match="short read"):
        write._Reader(write.READ_BYTES).read(str(path), 4000, 6000, True).result()


@pytest.mark.parametrize("workers", [1, 2, 8, 9, 16, 64, 512])
def test_read_buffers_stay_within_the_budget_on_many_cores(workers: int) -> None:
    size = write.read_bytes(workers)
    assert size % write.ALIGN == 0 and (1 << 20) <= size <= write.READ_BYTES
    assert size < write.HUGE_PAGE or size % write.HUGE_PAGE == 0  # (whole huge pages: see `read_buffer`)
    assert workers * (write.AHEAD + 1) * size <= max(write.READ_BUDGET, workers * (write.AHEAD + 1) << 20)
    if workers <= 4:
        assert size == write.READ_BYTES  # (this machine's 2 cores read as before)


@pytest.mark.parametrize("read_bytes", [1 << 20, 2 << 20, write.READ_BYTES])
def test_every_read_fits_its_buffer(read_bytes: int) -> None:
    rng = random.Random(read_bytes)
    choices = [1, 511, 4096, 110_000, 600_000, read_bytes - 1, 3 * read_bytes]
    sizes = array("q", (rng.choice(choices) for _ in range(400)))
    offsets, at = array("q"), 0
    for size in sizes:
        at += write.BLOCK + rng.choice([0, 0, 1024, write.MAX_GAP + 1])  # a header, sometimes a gap
        offsets.append(at)
        at += -(-size // write.BLOCK) * write.BLOCK
    empty = array("q")
    unit = write.Unit("A:train:0", "t", [], [], offsets, sizes, empty, empty, empty, read_bytes=read_bytes)
    spans = write._spans(unit)
    assert [k for i, j in spans for k in range(i, j)] == list(range(len(sizes)))  # every image once, in order
    for i, j in spans:
        start = (offsets[i] - write.BLOCK) // write.ALIGN * write.ALIGN  # an O_DIRECT read, aligned
        end = -(-(offsets[j - 1] + sizes[j - 1]) // write.ALIGN) * write.ALIGN
        assert end - start <= read_bytes or j == i + 1  # (an image larger than a buffer is read on its own)


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
def test_read_buffers_are_huge_pages() -> None:
    """(On this VM: O_DIRECT reads into huge pages reach the disk as 4 MB requests, into 4 KB pages as ~0.6 MB ones.)"""
    buf = write.read_buffer(write.READ_BYTES)
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert address % write.HUGE_PAGE == 0
        buf.write(b"x" * len(buf))
        huge_kb = None
        mapping = None
        for line in Path("/proc/self/smaps").read_text().splitlines():
            if "-" in line.split(" ", 1)[0] and not line.endswith(":"):
                mapping = int(line.split("-", 1)[0], 16)
            elif mapping == address and line.startswith("AnonHugePages:"):
                huge_kb = int(line.split()[1])
        assert huge_kb == write.READ_BYTES // 1024
    finally:
        buf.close()
