"""The writers' reads: O_DIRECT (aligned reads into aligned buffers) and buffered reads give the same bytes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from imagenet_fleet.engine import write


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
    assert workers * (write.AHEAD + 1) * size <= max(write.READ_BUDGET, workers * (write.AHEAD + 1) << 20)
    if workers <= 4:
        assert size == write.READ_BYTES  # (this machine's 2 cores read as before)
