"""The bench's own arithmetic: its I/O floor copies exactly the tars' bytes, both ways (a floor that copied less
would flatter the engine's ratio to it), and its medians compare like with like."""

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


def test_medians_are_per_kind_of_run_against_tfds_median() -> None:
    def run(seconds: float) -> bench_prepare.Measured:
        return bench_prepare.Measured(seconds, 0.0, 0, 0, 0, 0.0, 0, 0, "")

    results = [
        ("parallel, member lists #1", run(4.0)),
        ("tfds #1", run(20.0)),
        ("parallel, member lists #2", run(2.0)),
        ("tfds #2", run(30.0)),
        ("parallel, member lists #3", run(5.0)),
    ]
    rows = bench_prepare.median_rows("12k", 1000, results, tfds_seconds=25.0, floor=2.0, floor_median=3.2)
    by_kind = {row["run"].split(":")[0]: row for row in rows}
    assert set(by_kind) == {"parallel, member lists", "tfds"}
    lists = by_kind["parallel, member lists"]
    assert lists["seconds"] == "4.00" and lists["images/s"] == "250"
    assert lists["ratio"] == "6.25x (5.00-12.50x)"  # 25 / 4, and 25 / 5 to 25 / 2
    assert lists["x floor"] == "2.00 (1.25 of its median)"
    assert by_kind["tfds"]["seconds"] == "25.00" and by_kind["tfds"]["ratio"] == "1.00x (0.83-1.25x)"


def test_each_run_is_also_compared_with_its_own_rounds_floor() -> None:
    def run(seconds: float) -> bench_prepare.Measured:
        return bench_prepare.Measured(seconds, 0.0, 0, 0, 0, 0.0, 0, 0, "")

    results = [("parallel, member lists #1", run(4.0)), ("tfds #1", run(20.0)), ("parallel, member lists #2", run(3.0))]
    round_floors = {0: 2.0, 1: 3.0, 2: 3.0}  # (round 1 closed by a 2 s copy, round 2 by a 3 s one)
    rows = bench_prepare.median_rows("12k", 1000, results, 20.0, floor=2.0, floor_median=2.5, round_floors=round_floors)
    lists = next(row for row in rows if row["run"].startswith("parallel, member lists:"))
    assert lists["seconds"] == "3.50"
    assert lists["x floor"] == "1.75 (1.40 of its median; 1.50 of its round's)"  # median of 4 / 2 and 3 / 3
