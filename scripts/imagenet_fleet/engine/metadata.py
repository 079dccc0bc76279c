"""The metadata TFDS writes next to the shards (dataset_info.json, features.json, label.labels.txt), written with
TFDS's own API the way `download_and_prepare` does: `SplitInfo` per split, `info.set_splits`, `write_to_directory`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from imagenet_fleet import imagenet


def make_builder(data_dir: Path, version: str, file_format: str) -> Any:
    """TFDS's imagenet2012 builder (no TensorFlow import), the file format set as `download_and_prepare` sets it."""
    import tensorflow_datasets as tfds

    with contextlib.redirect_stdout(sys.stderr):
        builder = tfds.builder(imagenet.DATASET, data_dir=str(data_dir), version=version)
    builder.info.set_file_format(file_format, override=True)
    return builder


def write_metadata(builder: Any, version_dir: Path, splits: list[tuple[str, list[int], int]]) -> None:
    """`splits`: (name, shard lengths, total serialized bytes) in TFDS's generation order."""
    import tensorflow_datasets as tfds

    infos = [
        tfds.core.SplitInfo(
            name=name,
            shard_lengths=lengths,
            num_bytes=num_bytes,
            filename_template=builder._get_filename_template(split_name=name),
        )
        for name, lengths, num_bytes in splits
    ]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.download_size = 0  # DownloadManager.downloaded_size: nothing is downloaded from a manual dir
    builder.info.write_to_directory(version_dir)
