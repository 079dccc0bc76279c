"""Bytes of one imagenet2012 record, computed without the image bytes: the `tf.train.Example` that TFDS's
serializer makes for `{file_name, image, label}`, as protobuf's deterministic mode writes it (map keys sorted), and
its TFRecord framing.

The image is the only large field and sits in the middle of the message, so a record is `prefix + image + suffix`:
the writer sends the three pieces straight from the tar's read buffer with one `pwritev`, and the record's size is
known from the tar header alone (`record_size`). `tests/test_engine_records.py` pins these bytes against
`Example.SerializeToString(deterministic=True)` of TFDS's own `ExampleSerializer`.
"""

from __future__ import annotations

import functools
import struct

import crc32c

TFRECORD_OVERHEAD = 16  # u64 length + u32 masked crc of the length + u32 masked crc of the data
_MASK_DELTA = 0xA282EAD8
_KEY_FILE_NAME = b"file_name"
_KEY_IMAGE = b"image"
_KEY_LABEL = b"label"


_SMALL = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take 10 bytes (two's complement), as protobuf writes them."""
    if 0 <= value < 128:
        return _SMALL[value]
    if 0 <= value < 16384:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, payload_len: int) -> bytes:
    """Tag byte of a length-delimited field (all fields here have numbers < 16) and the payload's length."""
    return bytes((tag,)) + varint(payload_len)


def _bytes_feature_head(value_len: int) -> bytes:
    """`Feature{bytes_list: BytesList{value: [v]}}` up to the value's bytes, for a value of `value_len` bytes."""
    bytes_list_len = 1 + len(varint(value_len)) + value_len
    return _field(0x0A, bytes_list_len) + _field(0x0A, value_len)


def _map_entry_head(key: bytes, feature_len: int) -> bytes:
    """A `map<string, Feature>` entry up to its Feature's bytes."""
    entry_len = 1 + len(varint(len(key))) + len(key) + 1 + len(varint(feature_len)) + feature_len
    return _field(0x0A, entry_len) + _field(0x0A, len(key)) + key + _field(0x12, feature_len)


def _bytes_entry(key: bytes, value: bytes) -> bytes:
    head = _bytes_feature_head(len(value))
    return _map_entry_head(key, len(head) + len(value)) + head + value


@functools.lru_cache(maxsize=4096)
def _label_entry(label: int) -> bytes:
    packed = varint(label)
    int64_list = _field(0x0A, len(packed)) + packed  # Int64List{value: [label]}, packed
    feature = _field(0x1A, len(int64_list)) + int64_list  # Feature{int64_list: ...} (field 3)
    return _map_entry_head(_KEY_LABEL, len(feature)) + feature


def example_parts(file_name: str, label: int, image_len: int) -> tuple[bytes, bytes]:
    """(prefix, suffix) such that `prefix + image + suffix` is the deterministic serialization of the example."""
    name_entry = _bytes_entry(_KEY_FILE_NAME, file_name.encode("utf-8"))
    image_head = _bytes_feature_head(image_len)
    image_entry_head = _map_entry_head(_KEY_IMAGE, len(image_head) + image_len) + image_head
    label_entry = _label_entry(label)
    features_len = len(name_entry) + len(image_entry_head) + image_len + len(label_entry)
    prefix = _field(0x0A, features_len) + name_entry + image_entry_head  # Example{features: Features{feature: ...}}
    return prefix, label_entry


def varint_len(value: int) -> int:
    """len(varint(value)) for value >= 0."""
    return max(1, -(-value.bit_length() // 7))


def _bytes_entry_len(key_len: int, value_len: int) -> int:
    """len(_bytes_entry(key, value)), arithmetically."""
    bytes_list_len = 1 + varint_len(value_len) + value_len
    feature_len = 1 + varint_len(bytes_list_len) + bytes_list_len
    entry_len = 1 + varint_len(key_len) + key_len + 1 + varint_len(feature_len) + feature_len
    return 1 + varint_len(entry_len) + entry_len


def record_size(file_name: str, label: int, image_len: int) -> int:
    """Length of the serialized example (what TFDS counts in `num_bytes` and in its shard-count rule), computed
    without building it (the indexers call this for every image)."""
    features_len = (
        _bytes_entry_len(len(_KEY_FILE_NAME), len(file_name.encode("utf-8")))
        + _bytes_entry_len(len(_KEY_IMAGE), image_len)
        + len(_label_entry(label))
    )
    return 1 + varint_len(features_len) + features_len


def serialize(file_name: str, label: int, image: bytes | memoryview) -> bytes:
    prefix, suffix = example_parts(file_name, label, len(image))
    return b"".join((prefix, image, suffix))  # (one copy of the image)


def masked_crc(*chunks: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of the concatenated chunks."""
    crc = 0
    for chunk in chunks:
        crc = crc32c.crc32c(chunk, value=crc)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord_head(data_len: int) -> bytes:
    length = struct.pack("<Q", data_len)
    return length + struct.pack("<I", masked_crc(length))


def tfrecord_tail(*data_chunks: bytes | memoryview) -> bytes:
    return struct.pack("<I", masked_crc(*data_chunks))


def tfrecord(data: bytes) -> bytes:
    """One framed record (for tests and the small special images)."""
    return tfrecord_head(len(data)) + data + tfrecord_tail(data)


def iter_tfrecords(blob: bytes | memoryview) -> list[memoryview]:
    """Split a TFRecord file's bytes into its records' data, checking every length and CRC."""
    view = memoryview(blob)
    out: list[memoryview] = []
    at = 0
    while at < len(view):
        if at + 12 > len(view):
            raise ValueError(f"truncated TFRecord header at byte {at}")
        (length,) = struct.unpack_from("<Q", view, at)
        (length_crc,) = struct.unpack_from("<I", view, at + 8)
        if length_crc != masked_crc(view[at : at + 8]):
            raise ValueError(f"bad length CRC at byte {at}")
        data = view[at + 12 : at + 12 + length]
        if len(data) != length or at + 16 + length > len(view):
            raise ValueError(f"truncated TFRecord at byte {at}")
        (data_crc,) = struct.unpack_from("<I", view, at + 12 + length)
        if data_crc != masked_crc(data):
            raise ValueError(f"bad data CRC at byte {at}")
        out.append(data)
        at += 16 + length
    return out
