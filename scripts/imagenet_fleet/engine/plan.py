"""From the tars' headers to where every record goes: TFDS's order, shard count, shard boundaries and file names,
and from the record sizes, each record's byte offset in its shard file.

TFDS (4.9.10) writes a split like this (`writer.Writer` + `shuffle.Shuffler`): each example's key (its file name)
is hashed with md5, salted with the split name (`hashing.Hasher`); examples are sorted by that 128-bit hash; the
shard count comes from `ShardConfig.get_number_shards(total_size, num_examples)` where total_size is the sum of
the serialized examples' lengths; `shard_utils.get_shard_boundaries` cuts the sorted list by count; the file names
come from the builder's `ShardedFileTemplate`. We call TFDS's own shard functions (`tfds_shard_utils`: that module
alone, loaded without importing TFDS, which costs ~1 s of CPU that the layout would otherwise wait for). The
hashing is redone here (with hashlib, in the index workers) and the file names' template written out
(`shard_name`); both are pinned against TFDS by tests.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from imagenet_fleet import imagenet
from imagenet_fleet.engine import arrayrecord
from imagenet_fleet.engine.records import TFRECORD_OVERHEAD
from imagenet_fleet.engine.tarindex import ENCODING, ERRORS, ChainIndex
from imagenet_fleet.errors import UserError


@dataclass
class Names:
    """A split's keys in tar order: one blob (each key + NUL) and the end of each in it. At ILSVRC2012's size a list
    of str would hold 1.28M objects, ~145 MB in the build's process for the whole build; this holds ~40 MB."""

    blob: bytes = b""
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, names: Iterable[str]) -> Names:
        part = ChainIndex()
        for name in names:
            part.add_name(name)
        return cls.join([part])

    @classmethod
    def join(cls, parts: Sequence[ChainIndex]) -> Names:
        """The keys of index parts, end to end."""
        shifts = np.cumsum([0] + [len(part.name_blob) for part in parts], dtype=np.int64)
        ends = [np.asarray(part.name_ends, dtype=np.int64) + shift for part, shift in zip(parts, shifts, strict=False)]
        return cls(b"".join(part.name_blob for part in parts), np.concatenate(ends) if ends else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        return self.slice(i, i + 1)[0]

    def _start(self, i: int) -> int:
        return int(self.ends[i - 1]) if i else 0

    def slice(self, start: int, end: int) -> list[str]:
        """The keys [start, end): one decode."""
        if start >= end:
            return []
        return self.blob[self._start(start) : int(self.ends[end - 1]) - 1].decode(ENCODING, ERRORS).split("\0")

    def take(self, sel: Sequence[int] | np.ndarray) -> list[str]:
        """The keys at the indices `sel`."""
        sel = np.asarray(sel, dtype=np.int64)
        if len(sel) and bool((np.diff(sel) == 1).all()):
            return self.slice(int(sel[0]), int(sel[-1]) + 1)  # (a work unit: a run of the tar)
        starts, ends = np.where(sel > 0, self.ends[sel - 1], 0).tolist(), self.ends[sel].tolist()
        return [self.blob[a : b - 1].decode(ENCODING, ERRORS) for a, b in zip(starts, ends, strict=True)]


@dataclass
class SplitPlan:
    """One split: its records in tar order, and (after `lay_out`) their places in the shard files."""

    split: str
    tar_path: str
    names: Names
    offsets: np.ndarray  # int64, absolute offset of the image bytes in the tar
    sizes: np.ndarray  # int64, image bytes in the tar
    labels: np.ndarray  # int64
    digests: np.ndarray  # uint8 (n, 16): TFDS's hash of each key, big-endian
    record_sizes: np.ndarray  # int64, serialized example length (after the special images' re-encoding)
    specials: dict[int, bytes] = field(default_factory=dict)  # tar-order index -> re-encoded image bytes
    fetched_at: dict[str, int] = field(default_factory=dict)  # the keys the index read the images of -> index
    num_shards: int = 0
    shard_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    dest: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # offset in its shard (`lay_out`)
    rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # position in TFDS's order
    shard_lengths: list[int] = field(default_factory=list)
    shard_file_sizes: list[int] = field(default_factory=list)
    shard_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def total_size(self) -> int:
        return int(self.record_sizes.sum())


def tfds_order(digests: np.ndarray) -> np.ndarray:
    """Indices that sort the records as TFDS's shuffler does (ascending 128-bit hash)."""
    keys = digests.reshape(-1, 16).copy().view(">u8").reshape(-1, 2)
    hi, lo = keys[:, 0].astype(np.uint64), keys[:, 1].astype(np.uint64)
    order = np.lexsort((lo, hi))
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    if same.any():
        raise UserError(
            "two images in one split have the same file name (TFDS would stop with DuplicatedKeysError)",
            "use the original ILSVRC2012 tars, where every file name is unique",
        )
    return order


@functools.cache
def tfds_shard_utils() -> ModuleType:
    """TFDS's `core/utils/shard_utils.py` (standard library imports only), run from the installed package's file
    without running `tensorflow_datasets/__init__` (`find_spec` of a top-level package does not import it)."""
    name = "tensorflow_datasets.core.utils.shard_utils"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("tensorflow_datasets")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("tensorflow_datasets is not installed")
    path = Path(package.submodule_search_locations[0]) / "core" / "utils" / "shard_utils.py"
    spec = importlib.util.spec_from_file_location("imagenet_fleet.engine._tfds_shard_utils", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def shard_name(split: str, file_format: str, index: int, num_shards: int) -> str:
    """A shard's file name: the builder's `ShardedFileTemplate`, TFDS's default template
    (`{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`)."""
    digits = max(len(str(num_shards)), 5)  # (naming._num_digits_needed)
    return f"{imagenet.DATASET}-{split}.{file_format}-{index:0{digits}d}-of-{num_shards:0{digits}d}"


def lay_out(plan: SplitPlan, num_shards: int | None, file_format: str) -> None:
    """Fill in the plan's shard count (TFDS's rule, or `num_shards` as TFDS's `DownloadConfig` takes it), boundaries,
    file names, and every record's shard and offset: TFRecord, the byte offset of its framed record; ArrayRecord, its
    chunk's logical place (`arrayrecord.physical` maps it to the file), with `shard_file_sizes` up to the footer."""
    shard_utils = tfds_shard_utils()
    n = len(plan)
    if n == 0:
        raise UserError(f"the {plan.split} tar holds no images", "stage a complete ILSVRC2012 tar")
    order = tfds_order(plan.digests)
    num_shards = shard_utils.ShardConfig(num_shards=num_shards).get_number_shards(plan.total_size, n)
    bounds = np.asarray(shard_utils.get_shard_boundaries(n, num_shards), dtype=np.int64)
    rank_shard = np.searchsorted(bounds, np.arange(n), side="right").astype(np.int32)
    sizes = plan.record_sizes[order]
    framed = chunk_sizes(sizes) if file_format == "array_record" else sizes + TFRECORD_OVERHEAD
    ends = np.cumsum(framed)
    starts = ends - framed
    shard_first = np.concatenate(([0], bounds[:-1]))
    shard_base = np.concatenate(([0], ends))[shard_first]
    dest_sorted = starts - shard_base[rank_shard]
    plan.num_shards = num_shards
    plan.shard_of = np.empty(n, np.int32)
    plan.shard_of[order] = rank_shard
    plan.dest = np.empty(n, np.int64)
    plan.dest[order] = dest_sorted
    plan.rank = np.empty(n, np.int64)
    plan.rank[order] = np.arange(n, dtype=np.int64)
    plan.shard_lengths = np.diff(np.concatenate(([0], bounds))).astype(int).tolist()
    plan.shard_file_sizes = np.bincount(rank_shard, weights=framed, minlength=num_shards).astype(np.int64).tolist()
    if file_format == "array_record":  # chunks' logical places; the file up to the footer (`arrayrecord`)
        plan.dest += arrayrecord.FIRST_CHUNK
        plan.shard_file_sizes = [arrayrecord.physical(arrayrecord.FIRST_CHUNK + n) for n in plan.shard_file_sizes]
    plan.shard_names = [shard_name(plan.split, file_format, i, num_shards) for i in range(num_shards)]


def chunk_sizes(record_sizes: np.ndarray) -> np.ndarray:
    """`arrayrecord.chunk_size` of each record size (a size's varint is at most 10 bytes: its length's is 1)."""
    varint = 1 + sum((record_sizes >= 1 << (7 * k)).astype(np.int64) for k in range(1, 10))
    return arrayrecord.CHUNK_HEADER + 2 + varint + record_sizes


def units(plan: SplitPlan, unit_bytes: int) -> list[tuple[int, int]]:
    """Cut the records (tar order) into runs of about `unit_bytes` of tar: the writers' work units, as [start, end)
    ranges of record indices."""
    offsets = plan.offsets
    out: list[tuple[int, int]] = []
    start = 0
    n = len(plan)
    while start < n:
        end = int(np.searchsorted(offsets, offsets[start] + unit_bytes, side="left"))
        end = max(end, start + 1)
        out.append((start, end))
        start = end
    return out


def fingerprint(plan: SplitPlan, version: str, file_format: str) -> str:
    """What a split's output depends on; a resumed run continues only a journal with the same fingerprint."""
    h = hashlib.sha256(f"{version}|{file_format}|records-v3".encode())
    h.update(f"|{plan.split}|{plan.tar_path}|{len(plan)}|{plan.num_shards}|".encode())
    h.update(plan.names.blob)
    h.update(np.ascontiguousarray(plan.names.ends).tobytes())
    for array in (plan.offsets, plan.sizes, plan.labels, plan.record_sizes, plan.shard_of, plan.dest):
        h.update(np.ascontiguousarray(array).tobytes())
    for index in sorted(plan.specials):
        h.update(index.to_bytes(8, "little") + hashlib.sha256(plan.specials[index]).digest())
    return h.hexdigest()
