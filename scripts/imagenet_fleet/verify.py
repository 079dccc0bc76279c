"""Check a TFDS imagenet2012 build: counts, labels, names, and that a sample of images decodes.

One streaming pass per split reads every record without decoding images (memory stays bounded) and checks:
- the records in the shards number what dataset_info.json says, what `--expect` says, and (with `--manual-dir`)
  what the tars hold, counted from tar headers (the train tar's inner tars included) without extracting;
- with `--manual-dir`, the build's file names are the tars' member names (an order-free digest of the names);
- every label is in range (0..999; test: -1); a train example's label is the synset its file name starts with;
  validation labels are TFDS's `validation_labels.txt` zipped with the sorted file names;
- a sample of N images per split, plus every CMYK/PNG special-case image present, is a JPEG (not CMYK: TFDS
  converts those) and decodes the way `tfds.load` decodes it, to the declared shape (3 channels).
The first mismatch stops the run: exit 1, `mismatch: split ..., example ...: expected ..., found ...` on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_fleet import cli, imagenet
from imagenet_fleet.errors import UserError
from imagenet_fleet.prepare import version_dir

log = logging.getLogger(__name__)

BATCH = 1024
DIGEST_MOD = 1 << 64
SAMPLE_SEED = 0


class Mismatch(Exception):
    """The build disagrees with what it should hold (exit 1)."""

    def __init__(self, split: str, what: str, expected: object, found: object, example: str | None = None) -> None:
        where = f"split {split}" + (f", example {example}" if example else "")
        super().__init__(f"{where}: {what}: expected {expected}, found {found}")
        self.split, self.example = split, example


# ---------------------------------------------------------------- the tars' side


def _tfds_member_name(member: tarfile.TarInfo) -> str | None:
    """The file name TFDS gives a tar member, or None when TFDS skips it (mirrors its `iter_archive`)."""
    if not (member.isfile() or member.islnk() or member.issym()):
        return None
    path = os.path.normpath(member.path)
    if path.startswith(".") or os.path.isabs(path) or path.endswith("~") or os.path.basename(path).startswith("."):
        return None
    return path


def name_digest(name: str) -> int:
    """Order-free digest term: the sum of these over a set of names (mod 2**64) compares multisets cheaply."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def _members(fileobj: Any) -> Iterator[str]:
    """File names in a tar read header by header (seeks over data: never reads image bytes)."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for member in tar:
            name = _tfds_member_name(member)
            if name is not None:
                yield name


def tar_images(split: str, path: Path) -> tuple[int, int]:
    """(image count, name digest) of a split's tar; for train, of the images in its inner tars."""
    count = digest = 0
    with path.open("rb") as f:
        if split != "train":
            names: Iterator[str] = _members(f)
        else:
            names = _train_names(f)
        for name in names:
            count += 1
            digest = (digest + name_digest(name)) % DIGEST_MOD
    return count, digest


def _train_names(f: Any) -> Iterator[str]:
    with tarfile.open(fileobj=f, mode="r:") as outer:
        for member in outer:
            if _tfds_member_name(member) is None:
                continue
            inner = outer.extractfile(member)
            assert inner is not None
            yield from _members(inner)


# ---------------------------------------------------------------- the build's side


@dataclass
class SplitResult:
    examples: int = 0
    digest: int = 0
    validation: list[tuple[str, int]] = field(default_factory=list)
    sample: list[tuple[str, bytes]] = field(default_factory=list)
    special: list[tuple[str, bytes]] = field(default_factory=list)


def parse_expect(text: str | None) -> dict[str, int]:
    """`train=N,validation=M,test=T` -> {'train': N, ...}."""
    expect: dict[str, int] = {}
    for part in filter(None, (text or "").split(",")):
        split, _, value = part.partition("=")
        split = split.strip()
        if split not in imagenet.SPLITS or not value.strip().isdigit():
            raise UserError(
                f"bad --expect entry {part!r}", f"write SPLIT=COUNT, SPLIT one of {', '.join(imagenet.SPLITS)}"
            )
        expect[split] = int(value)
    return expect


Batch = tuple[Any, Sequence[bytes], Sequence[bytes]]  # labels (numpy int array), file names, encoded images


def _batches(builder: Any, split: str) -> Iterator[Batch]:
    """A split's records in batches, images left encoded: tf.data for TFRecord, a data source for ArrayRecord."""
    import numpy as np
    import tensorflow_datasets as tfds

    skip = {"image": tfds.decode.SkipDecoding()}
    if builder.info.file_format.value == "array_record":
        source = builder.as_data_source(split=split, decoders=skip)
        for start in range(0, len(source), BATCH):
            items = source.__getitems__(range(start, min(start + BATCH, len(source))))
            yield np.array([x["label"] for x in items]), [x["file_name"] for x in items], [x["image"] for x in items]
        return
    # Our own count check replaces TFDS's cardinality assertion, so label and name checks name an example first.
    read_config = tfds.ReadConfig(assert_cardinality=False, try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config, decoders=skip)
    for batch in tfds.as_numpy(ds.batch(BATCH).prefetch(2)):
        yield batch["label"], batch["file_name"], batch["image"]


def _check_array_record_shards(build_dir: Path, split: str, shard_lengths: list[int]) -> None:
    """ArrayRecord reads trust dataset_info's shard lengths: compare them with each file's own record count."""
    from array_record.python.array_record_module import ArrayRecordReader

    for i, expected in enumerate(shard_lengths):
        path = build_dir / f"{imagenet.DATASET}-{split}.array_record-{i:05d}-of-{len(shard_lengths):05d}"
        reader = ArrayRecordReader(str(path))
        try:
            found = reader.num_records()
        finally:
            reader.close()
        if found != expected:
            raise Mismatch(split, f"records in {path.name}", f"{expected} (dataset_info)", found)


def _scan_split(builder: Any, split: str, sample: int) -> SplitResult:
    """One pass over a split's records, images left encoded; checks labels as it goes."""
    import numpy as np
    import tensorflow as tf

    names = imagenet.label_names()
    special = imagenet.builder_facts().special_images
    rng = random.Random(SAMPLE_SEED)
    result = SplitResult()
    try:
        for labels, files, images in _batches(builder, split):
            if split == "test":
                bad = np.flatnonzero(labels != imagenet.TEST_LABEL)
                wanted: object = imagenet.TEST_LABEL
            else:
                bad = np.flatnonzero((labels < 0) | (labels >= imagenet.NUM_CLASSES))
                wanted = f"0..{imagenet.NUM_CLASSES - 1}"
            if bad.size:
                i = int(bad[0])
                raise Mismatch(split, "label out of range", wanted, int(labels[i]), _text(files[i]))
            for i, raw in enumerate(files):
                name, label = _text(raw), int(labels[i])
                if split == "train" and imagenet.synset_of(name) != names[label]:
                    raise Mismatch(split, "label of file", imagenet.synset_of(name), names[label], name)
                if split == "validation":
                    result.validation.append((name, label))
                result.digest = (result.digest + name_digest(name)) % DIGEST_MOD
                result.examples += 1
                if name in special:
                    result.special.append((name, bytes(images[i])))
                if len(result.sample) < sample:  # reservoir sampling: uniform over the split, bounded memory
                    result.sample.append((name, bytes(images[i])))
                elif sample and (j := rng.randrange(result.examples)) < sample:
                    result.sample[j] = (name, bytes(images[i]))
    except tf.errors.OpError as exc:
        raise Mismatch(split, "records readable", "readable shards", f"{type(exc).__name__}: {exc.message}") from None
    except (OSError, IndexError, ValueError) as exc:  # ArrayRecord reads past a shard's end, or a damaged file
        raise Mismatch(split, "records readable", "readable shards", f"{type(exc).__name__}: {exc}") from None
    return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_validation_labels(pairs: list[tuple[str, int]]) -> None:
    """TFDS labels validation images by zipping sorted names with validation_labels.txt."""
    truth = imagenet.validation_labels()
    index = imagenet.label_index()
    pairs.sort()
    if len(pairs) > len(truth):
        raise Mismatch("validation", "examples", f"at most {len(truth)}", len(pairs))
    for (name, label), synset in zip(pairs, truth, strict=False):  # a sample holds the first N names
        if label != index[synset]:
            names = imagenet.label_names()
            raise Mismatch("validation", "label", f"{index[synset]} ({synset})", f"{label} ({names[label]})", name)


def jpeg_components(data: bytes) -> int | None:
    """The number of colour components a JPEG's frame header declares (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK), or
    None when `data` is not a JPEG. Reads the markers only: the hosts' venv has no image library besides TF."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: length, precision, h, w, Nf
            return data[at + 9] if at + 9 < len(data) else None
        if marker == 0xDA:  # image data before any frame header
            return None
        at += 2 + length
    return None


def _check_decodes(split: str, images: list[tuple[str, bytes]], feature: Any) -> None:
    """Each image is a JPEG in a colour space TFDS keeps (not CMYK: TFDS converts those) and decodes the way
    `tfds.load` decodes it, to the feature's declared shape."""
    import tensorflow as tf

    shape = tuple(feature.shape)
    for name, data in images:
        components = jpeg_components(data)
        if components not in (1, 3):
            found = "not a JPEG" if components is None else f"a JPEG of {components} components (CMYK)"
            raise Mismatch(split, "image format", "an RGB or greyscale JPEG", found, name)
        try:
            decoded = tuple(feature.decode_example(tf.constant(data)).shape)
        except tf.errors.OpError as exc:
            raise Mismatch(split, "image decodes", "a decodable JPEG", exc.message, name) from None
        if len(decoded) != len(shape) or any(d is not None and d != f for d, f in zip(shape, decoded, strict=True)):
            raise Mismatch(split, "image shape", shape, decoded, name)


def _build_dir(data_dir: Path, version: str) -> Path:
    if version not in imagenet.readable_versions():
        raise UserError(
            f"version {version} is not one TFDS can read", f"pass one of {', '.join(imagenet.readable_versions())}"
        )
    build_dir = version_dir(data_dir, version)
    if not (build_dir / "dataset_info.json").is_file():
        raise UserError(
            f"no {imagenet.DATASET} {version} build in {data_dir}",
            "run prepare_imagenet.py first, or fix --data-dir/--version",
        )
    return build_dir


def _open_builder(data_dir: Path, version: str) -> Any:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    return tfds.builder(imagenet.DATASET, data_dir=str(data_dir), version=version)


def verify(
    data_dir: Path,
    version: str = imagenet.DEFAULT_VERSION,
    expect: dict[str, int] | None = None,
    manual_dir: Path | None = None,
    sample: int = 16,
) -> dict[str, Any]:
    """Check the build; return the summary, or raise Mismatch at the first disagreement."""
    started = time.monotonic()
    expect = expect or {}
    if sample < 0:
        raise UserError(f"--sample {sample} is negative", "pass 0 or more")
    tars: dict[str, Path] = {}
    if manual_dir is not None:
        if not manual_dir.is_dir():
            raise UserError(f"manual dir {manual_dir} does not exist", "fix --manual-dir")
        tars = {s: manual_dir / n for s, n in imagenet.TAR_NAMES.items() if (manual_dir / n).is_file()}
        if not tars:
            raise UserError(f"no ILSVRC2012 tar in {manual_dir}", "fix --manual-dir")
    build_dir = _build_dir(data_dir, version)
    # Cheap checks first, from dataset_info.json alone (no TensorFlow import): a wrong count fails in a blink.
    info = json.loads((build_dir / "dataset_info.json").read_text())
    file_format = info.get("fileFormat", "tfrecord")
    shard_lengths = {s["name"]: [int(n) for n in s.get("shardLengths", [])] for s in info.get("splits", [])}
    info_splits = {name: sum(lengths) for name, lengths in shard_lengths.items()}
    for split in imagenet.SPLITS:
        if split in expect and expect[split] != info_splits.get(split, expect[split]):
            raise Mismatch(split, "examples (--expect)", expect[split], info_splits[split])
        if split not in info_splits and split in expect:
            raise Mismatch(split, "examples (--expect)", expect[split], "no such split in the build")
        if split not in info_splits and split in tars:
            raise Mismatch(split, f"split built from {tars[split].name}", "present", "no such split in the build")
        if split in info_splits and tars and split not in tars:
            raise Mismatch(
                split, "examples", f"none ({imagenet.TAR_NAMES[split]} is not in {manual_dir})", info_splits[split]
            )
    builder = _open_builder(data_dir, version)
    image_feature = builder.info.features["image"]
    checks: list[str] = ["records_match_dataset_info", "labels_in_range", "sample_decodes"]
    counts: dict[str, int] = {}
    for split in [s for s in imagenet.SPLITS if s in info_splits]:
        log.info("checking split %s (%d examples)", split, info_splits[split])
        if file_format == "array_record":
            _check_array_record_shards(build_dir, split, shard_lengths[split])
        result = _scan_split(builder, split, sample)
        if result.examples != info_splits[split]:
            raise Mismatch(split, "records in the shards", f"{info_splits[split]} (dataset_info)", result.examples)
        if split in tars:
            log.info("counting images in %s", tars[split])
            tar_count, tar_digest = tar_images(split, tars[split])
            if tar_count != result.examples:
                raise Mismatch(split, f"examples (images in {tars[split].name})", tar_count, result.examples)
            if tar_digest != result.digest:
                raise Mismatch(split, f"file names (members of {tars[split].name})", "the same names", "other names")
        if split == "validation":
            _check_validation_labels(result.validation)
        _check_decodes(split, result.sample + result.special, image_feature)
        counts[split] = result.examples
    if "train" in counts:
        checks.append("train_labels_match_file_names")
    if "validation" in counts:
        checks.append("validation_labels_match_tfds")
    if expect:
        checks.append("expected_counts")
    if tars:
        checks += ["counts_match_tars", "names_match_tars"]
    return {
        "ok": True,
        "data_dir": str(data_dir),
        "version": version,
        "splits": counts,
        "checks": checks,
        "sample": sample,
        "seconds": round(time.monotonic() - started, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=os.environ.get("TFDS_DATA_DIR"),
        help="TFDS data dir holding the build (default: $TFDS_DATA_DIR)",
    )  # fmt: skip
    parser.add_argument("--version", default=imagenet.DEFAULT_VERSION, help="dataset version (default %(default)s)")
    parser.add_argument("--expect", help="expected counts, e.g. train=1281167,validation=50000,test=100000")
    parser.add_argument("--manual-dir", type=Path, help="the tars the build was made from: compare counts and names")
    parser.add_argument("--sample", type=int, default=16, help="images per split to decode (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed: list[Mismatch] = []

    def body() -> dict[str, Any]:
        if args.data_dir is None:
            raise UserError("no data dir given", "pass --data-dir or set TFDS_DATA_DIR")
        started = time.monotonic()
        try:
            return verify(args.data_dir, args.version, parse_expect(args.expect), args.manual_dir, args.sample)
        except Mismatch as exc:
            failed.append(exc)
            sys.stderr.write(f"mismatch: {exc}\n")
            return {
                "ok": False,
                "error": str(exc),
                "split": exc.split,
                "example": exc.example,
                "seconds": round(time.monotonic() - started, 3),
            }

    code = cli.run(body)
    return 1 if code == 0 and failed else code
