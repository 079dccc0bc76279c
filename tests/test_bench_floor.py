"""The bench's I/O floor copies exactly the tars' bytes, both ways (a floor that copied less would flatter the
engine's ratio to it)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_prepare  # noqa: E402


@pytest.mark.parametrize("direct", [True, False])
def test_the_floor_copies_the_tars_bytes(tmp_path: Path, direct: bool) -> None:
    tars = [tmp_path / "a.tar", tmp_path / "b.tar"]
    tars[0].write_bytes(os.urandom(3 * (8 << 20) // 2 + 777))  # (more than a read, not a multiple of the alignment)
    tars[1].write_bytes(os.urandom(12_345))
    data = b"".join(t.read_bytes() for t in tars)
    if direct:
        try:
            os.close(os.open(tars[0], os.O_RDONLY | os.O_DIRECT))
        except OSError:
            pytest.skip("no O_DIRECT on this filesystem")
    copy = bench_prepare._copy_direct if direct else bench_prepare._copy_buffered
    for lo, hi in [(0, len(data)), (5, len(data) - 5), (len(data) - 20_000, len(data)), (4097, 8 << 20)]:
        out = io.BytesIO()
        left = copy(bench_prepare._slices(tars, lo, hi), out, hi - lo + 10)
        assert out.getvalue() == data[lo:hi] and left == 10  # (what is left: written after, as zeros)
        out = io.BytesIO()
        assert copy(bench_prepare._slices(tars, lo, hi), out, 100) == 0 and out.getvalue() == data[lo : lo + 100]
