"""The ArrayRecord layout against array_record's own writer: a shard spliced from chunks written in another order,
around a frame written from zero-filled records, is byte for byte what the writer writes given the records in order."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from imagenet_fleet.engine import arrayrecord

# sizes around the varint steps and the 64 KiB blocks, so that chunks and chunk headers are cut by block headers
EDGES = [1, 127, 128, 16383, 16384, 65471, 65472, 65511, 65512, 65536, 131024, 110_000]


def reference(path: Path, records: list[bytes]) -> bytes:
    writer = ArrayRecordWriter(str(path), arrayrecord.OPTIONS)
    for record in records:
        writer.write(record)
    writer.close()
    return path.read_bytes()


def splice(path: Path, records: list[bytes], seed: int) -> bytes:
    """What the engine does: lay out, chunks from scratch writes in a shuffled order, the frame, in two passes."""
    at, places = arrayrecord.FIRST_CHUNK, []
    for record in records:
        places.append(at)
        at += arrayrecord.chunk_size(len(record))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    scratch = arrayrecord.Scratch()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        half = len(order) // 2
        for part in (order[:half], order[half:]):  # (two runs of the tar, two scratch writes)
            part_records = [records[k] for k in part]
            written = arrayrecord.write_records(scratch, part_records, [(str(path), places[k]) for k in part],
                                                {str(path): fd}.__getitem__)  # fmt: skip
            assert written == sum(arrayrecord.chunk_size(len(r)) for r in part_records)
        size = arrayrecord.write_frame(scratch, fd, [len(r) for r in records], places)
    finally:
        os.close(fd)
        scratch.close()
    assert size == path.stat().st_size
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(6))
def test_a_spliced_shard_is_the_writers_file(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    count = rng.choice([1, 2, 7, 60, 250])
    records = [rng.randbytes(rng.choice(EDGES + [rng.randrange(1, 300_000)])) for _ in range(count)]
    assert splice(tmp_path / "spliced", records, seed) == reference(tmp_path / "reference", records)


def test_chunks_that_end_on_a_block_boundary(tmp_path: Path) -> None:
    # the first chunk fills the first block exactly, the second starts right after the block header
    first = arrayrecord.USABLE - arrayrecord.FIRST_CHUNK - arrayrecord.CHUNK_HEADER - 5  # (5: 1 + 1 + a 3-byte size)
    records = [b"x" * first, b"y" * 1000, b"z" * 70_000]
    assert arrayrecord.FIRST_CHUNK + arrayrecord.chunk_size(first) == arrayrecord.USABLE
    assert splice(tmp_path / "spliced", records, 0) == reference(tmp_path / "reference", records)


def test_the_frame_fails_where_the_writer_lays_chunks_out_otherwise(tmp_path: Path) -> None:
    scratch = arrayrecord.Scratch()
    fd = os.open(tmp_path / "shard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(arrayrecord.LayoutError, match="is not a chunk of one 500-byte record"):
            arrayrecord.write_frame(scratch, fd, [100, 500], [arrayrecord.FIRST_CHUNK, arrayrecord.FIRST_CHUNK + 150])
    finally:
        os.close(fd)
        scratch.close()


def test_shards_use_tfds_adapter_options_uncompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers call array_record's writer with the options TFDS's adapter gives it (caught here, so a TFDS that
    changes them fails this test), plus `uncompressed`; a spliced shard holds the examples, in order, stored as such."""
    from array_record.python import array_record_module
    from tensorflow_datasets.core import file_adapters

    writer, seen = array_record_module.ArrayRecordWriter, []

    def spy(path: str, options: str) -> object:
        seen.append(options)
        return writer(path, options)

    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", spy)
    file_adapters.ArrayRecordFileAdapter.write_examples(tmp_path / "tfds", enumerate([b"x"]))
    assert len(seen) == 1 and arrayrecord.OPTIONS == seen[0] + ",uncompressed"
    monkeypatch.undo()

    rng = random.Random(7)
    examples = [rng.randbytes(rng.randrange(1, 200_000)) for _ in range(40)] + [b"", bytes(70_000)]
    splice(tmp_path / "ours", examples, 7)
    reader = array_record_module.ArrayRecordReader(str(tmp_path / "ours"))
    try:
        assert reader.read_all() == examples
        assert "uncompressed" in reader.writer_options_string()
    finally:
        reader.close()


def test_the_layouts_chunk_sizes_are_the_modules() -> None:
    """`plan.lay_out` sizes chunks with NumPy (`plan.chunk_sizes`), the tests above with `arrayrecord.chunk_size`."""
    import numpy as np

    from imagenet_fleet.engine import plan

    sizes = sorted({0, *EDGES, *(1 << (7 * k) for k in range(1, 9)), *((1 << (7 * k)) - 1 for k in range(1, 9))})
    assert plan.chunk_sizes(np.array(sizes, np.int64)).tolist() == [arrayrecord.chunk_size(n) for n in sizes]
