"""ArrayRecord output: each TFRecord shard the engine wrote is re-written record by record with TFDS's own
`ArrayRecordFileAdapter` (same writer, same options as TFDS's build), then removed.

ArrayRecord compresses every record (zstd), so a record's final offset cannot be known from the tar headers: the
TFRecord shards serve as the staging area. This costs a second write of the output (temp space up to the size of
the output), unlike the TFRecord path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator


def _tfrecords(path: str) -> Iterator[tuple[int, bytes]]:
    """(index, data) of each record of a TFRecord file, streamed (lengths trusted: the engine wrote the file)."""
    with open(path, "rb", buffering=1 << 20) as f:
        i = 0
        while head := f.read(12):
            (length,) = struct.unpack_from("<Q", head)
            data = f.read(length)
            f.read(4)
            if len(data) != length:
                raise OSError(f"{path}: truncated record {i}")
            yield i, data
            i += 1


def convert(src: str, dst: str) -> str:
    """Write `dst` (ArrayRecord) from the TFRecord file `src`, atomically, then remove `src`."""
    from tensorflow_datasets.core import file_adapters

    tmp = f"{dst}.tmp-{os.getpid()}"
    file_adapters.ArrayRecordFileAdapter.write_examples(tmp, _tfrecords(src))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    os.unlink(src)
    return dst
