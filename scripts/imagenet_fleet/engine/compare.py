"""Is a build the same as another, record by record? (For the tests and the benchmark; no TensorFlow needed.)

TFDS's own shard bytes differ from run to run (protobuf map order), so two builds are compared by file names, the
metadata files, and every record parsed as a `tf.train.Example` — in the same order, shard by shard.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

METADATA_FILES = ("dataset_info.json", "features.json", "label.labels.txt")


def iter_records(path: Path) -> Iterator[bytes]:
    """Records of a TFRecord or ArrayRecord shard, streamed."""
    if ".array_record-" in path.name:
        from array_record.python.array_record_module import ArrayRecordReader

        reader = ArrayRecordReader(str(path))
        try:
            for i in range(reader.num_records()):
                yield reader.read([i])[0]
        finally:
            reader.close()
        return
    with path.open("rb", buffering=1 << 20) as f:
        while head := f.read(12):
            (length,) = struct.unpack_from("<Q", head)
            data = f.read(length)
            f.read(4)
            yield data


def canonical(record: bytes) -> bytes:
    """The record's deterministic serialization (sorted map keys)."""
    from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2.Example.FromString(record).SerializeToString(deterministic=True)


def differences(ours: Path, reference: Path, limit: int = 5) -> list[str]:
    """Differences between two `<data_dir>/imagenet2012/<version>` folders (empty: the same)."""
    out: list[str] = []
    names_a = sorted(p.name for p in ours.iterdir())
    names_b = sorted(p.name for p in reference.iterdir())
    if names_a != names_b:
        return [f"files differ: {sorted(set(names_a) ^ set(names_b))}"]
    for name in METADATA_FILES:
        a, b = ours / name, reference / name
        if a.exists() != b.exists():
            out.append(f"{name}: only in one build")
        elif a.exists():
            same = (
                json.loads(a.read_text()) == json.loads(b.read_text())
                if name.endswith(".json")
                else (a.read_bytes() == b.read_bytes())
            )
            if not same:
                out.append(f"{name} differs")
    for name in names_a:
        if name in METADATA_FILES:
            continue
        count = 0
        for count, (ra, rb) in enumerate(_zip_strict(iter_records(ours / name), iter_records(reference / name)), 1):
            if ra is None or rb is None:
                out.append(f"{name}: different number of records (from record {count - 1})")
                break
            if ra != rb and canonical(ra) != canonical(rb):
                out.append(f"{name}: record {count - 1} differs")
                break
        if len(out) >= limit:
            break
    return out


def _zip_strict(a: Iterator[bytes], b: Iterator[bytes]) -> Iterator[tuple[bytes | None, bytes | None]]:
    sentinel = None
    while True:
        x, y = next(a, sentinel), next(b, sentinel)
        if x is None and y is None:
            return
        yield x, y
