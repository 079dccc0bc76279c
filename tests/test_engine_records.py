"""Pins the engine's hand-made record bytes and TFDS's private helpers it mirrors (TFDS 4.9.10)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from s3_fixtures import SCRIPTS

from imagenet_fleet import imagenet
from imagenet_fleet.engine import plan, records, tarindex


@pytest.fixture(scope="module")
def tfds_features():
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import example_serializer

    builder = tfds.builder(imagenet.DATASET, data_dir=os.devnull)
    features = builder.info.features
    return features, example_serializer.ExampleSerializer(features.get_serialized_info())


@pytest.mark.parametrize(
    ("name", "label", "size"),
    [
        ("n01440764_10026.JPEG", "n01440764", 110_000),
        ("n15075141_9.JPEG", "n15075141", 127),  # label 999: two-byte varint
        ("ILSVRC2012_test_00000001.JPEG", -1, 3),  # test split: label -1, a ten-byte varint
        ("ILSVRC2012_val_00050000.JPEG", "n01443537", 0),
        ("é_" + "x" * 200 + ".JPEG", "n01443537", 16_384),  # non-ASCII, name longer than 127 bytes
        ("n01440764_1.JPEG", "n01440764", 3_000_000),  # three-byte varints
    ],
)
def test_record_bytes_equal_tfds_serializer_deterministic(tfds_features, name, label, size) -> None:
    features, serializer = tfds_features
    image = os.urandom(size)
    example = features.encode_example({"file_name": name, "image": image, "label": label})
    expected = serializer.get_tf_example(example).SerializeToString(deterministic=True)
    label_id = features["label"].str2int(label) if isinstance(label, str) else label
    assert records.serialize(name, label_id, image) == expected
    assert records.record_size(name, label_id, size) == len(expected)


def test_tfrecord_framing_matches_tensorflow(tmp_path) -> None:
    import tensorflow as tf

    data = [os.urandom(n) for n in (0, 1, 1000, 70_000)]
    path = tmp_path / "ref.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for d in data:
            writer.write(d)
    assert b"".join(records.tfrecord(d) for d in data) == path.read_bytes()
    assert [bytes(r) for r in records.iter_tfrecords(path.read_bytes())] == data


def test_iter_tfrecords_rejects_corruption() -> None:
    blob = bytearray(records.tfrecord(b"hello"))
    blob[13] ^= 1
    with pytest.raises(ValueError, match="CRC"):
        records.iter_tfrecords(bytes(blob))


def test_hash_digest_equals_tfds_hasher() -> None:
    from tensorflow_datasets.core import hashing

    for split in ("train", "validation", "test"):
        hasher = hashing.Hasher(split)
        for key in ("n01440764_1.JPEG", "ILSVRC2012_val_00000001.JPEG", "a\\b.JPEG", "é"):
            assert int.from_bytes(tarindex.hash_digest(split, key), "big") == hasher.hash_key(key)


def test_order_equals_tfds_shuffler(tmp_path) -> None:
    from tensorflow_datasets.core import shuffle

    keys = [f"n01440764_{i}.JPEG" for i in range(500)]
    shuffler = shuffle.Shuffler(tmp_path, hash_salt="train")
    for i, key in enumerate(keys):
        shuffler.add(key, struct.pack("<I", i))
    expected = [struct.unpack("<I", data)[0] for _, data in shuffler]
    digests = np.frombuffer(b"".join(tarindex.hash_digest("train", k) for k in keys), np.uint8).reshape(-1, 16)
    assert plan.tfds_order(digests).tolist() == expected


def test_duplicate_keys_are_a_user_error() -> None:
    from imagenet_fleet.errors import UserError

    digests = np.frombuffer(tarindex.hash_digest("train", "a") * 2, np.uint8).reshape(2, 16)
    with pytest.raises(UserError, match="same file name"):
        plan.tfds_order(digests)


def _train_plan(sizes: np.ndarray, record_sizes: np.ndarray) -> plan.SplitPlan:
    """A train SplitPlan over keys k0..kN with the given image and record sizes (offsets are not read)."""
    n = len(sizes)
    digests = b"".join(tarindex.hash_digest("train", f"k{i}") for i in range(n))
    return plan.SplitPlan(
        split="train", tar_path="x", names=plan.Names.of(f"k{i}" for i in range(n)),
        offsets=np.arange(n, dtype=np.int64), sizes=sizes, labels=np.zeros(n, np.int64),
        digests=np.frombuffer(digests, np.uint8).reshape(n, 16),
        record_sizes=record_sizes,
    )  # fmt: skip


def test_layout_follows_tfds_shard_functions() -> None:
    from tensorflow_datasets.core.utils import shard_utils

    n = 1000
    rng = np.random.default_rng(0)
    sizes = rng.integers(50_000, 150_000, n).astype(np.int64)
    p = _train_plan(sizes, sizes)
    plan.lay_out(p, 7, "tfrecord")
    assert p.num_shards == 7
    bounds = shard_utils.get_shard_boundaries(n, 7)
    assert np.cumsum(p.shard_lengths).tolist() == bounds
    assert p.shard_names[0] == "imagenet2012-train.tfrecord-00000-of-00007"
    order = plan.tfds_order(p.digests)
    # records are packed back to back in TFDS's order within each shard, first at offset 0
    for shard in range(7):
        members = [i for i in order if p.shard_of[i] == shard]
        assert len(members) == p.shard_lengths[shard]
        at = 0
        for i in members:
            assert p.dest[i] == at
            at += int(sizes[i]) + records.TFRECORD_OVERHEAD
        assert at == p.shard_file_sizes[shard]
    # the default rule: TFDS's shard count for this total size
    plan.lay_out(p, None, "tfrecord")
    assert p.num_shards == shard_utils.ShardConfig().get_number_shards(int(sizes.sum()), n)


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_shard_names_are_the_builders(tmp_path: Path, file_format: str) -> None:
    from imagenet_fleet.engine import metadata

    template = metadata.make_builder(tmp_path, imagenet.DEFAULT_VERSION, file_format)._get_filename_template
    for split in imagenet.SPLITS:
        for index, count in ((0, 1), (3, 16), (1023, 1024), (99_999, 100_000)):
            want = template(split_name=split).sharded_filepath(shard_index=index, num_shards=count).name
            assert plan.shard_name(split, file_format, index, count) == want


def test_shard_rule_is_tfds_own_code_loaded_without_tfds() -> None:
    grid = [(total, n) for total in (0, 10**6, 64 << 20, 3 << 30, 140 * 10**9) for n in (1, 7, 1024, 1_281_167)]
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1])\n"
        "from imagenet_fleet.engine import plan\n"
        "m = plan.tfds_shard_utils()\n"
        "assert 'tensorflow_datasets' not in sys.modules, 'TFDS was imported'\n"
        "grid = json.loads(sys.argv[2])\n"
        "print(json.dumps([m.__file__, [m.ShardConfig().get_number_shards(t, n) for t, n in grid],"
        " [m.get_shard_boundaries(n, 7) for t, n in grid if n >= 7]]))\n"
    )
    args = [sys.executable, "-c", code, str(SCRIPTS), json.dumps(grid)]
    path, counts, bounds = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    from tensorflow_datasets.core.utils import shard_utils

    assert Path(path) == Path(shard_utils.__file__)
    assert counts == [shard_utils.ShardConfig().get_number_shards(t, n) for t, n in grid]
    assert bounds == [shard_utils.get_shard_boundaries(n, 7) for t, n in grid if n >= 7]


@pytest.mark.parametrize("name", ["n01440764_10026.JPEG", "x", "é" * 70, "a" * 200])
def test_record_size_is_computed_without_building_the_record(name: str) -> None:
    edges = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 40, 2**21 - 5, 2**21, 2**28 - 30, 2**28 + 5, 123_457]
    for label in (0, 1, 127, 128, 999, -1):
        for size in edges:
            prefix, suffix = records.example_parts(name, label, size)
            assert records.record_size(name, label, size) == len(prefix) + size + len(suffix)


def test_names_hold_every_key_in_one_blob() -> None:
    first = ["n01440764_1.JPEG", "caf\udce9.JPEG"]  # (a name tarfile decoded with surrogateescape)
    second = ["x" * 300, "n01440764_22.JPEG"]
    parts = []
    for keys in (first, second):
        part = tarindex.ChainIndex()
        for key in keys:
            part.add_name(key)
        assert part.names == keys
        parts.append(part)
    names = plan.Names.join(parts)
    assert len(names) == 4
    assert names.take(range(4)) == first + second
    assert names.take([3, 0]) == [second[1], first[0]]
    assert names[1] == first[1]
    assert plan.Names.of(first + second).take(range(4)) == first + second
