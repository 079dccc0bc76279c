"""The `parallel` preparation engine: the same shards as TFDS's imagenet2012 build, written once, by every core.

`build(manual_dir, data_dir, version, file_format, workers)` is the entry point (see `pipeline.py`); the modules:
`tarindex` (tar headers), `records` (record bytes), `plan` (TFDS's order and shard layout), `write` (the writers),
`special` (CMYK/PNG re-encoding), `arrayrecord`, `metadata` (TFDS's metadata files).
"""

from __future__ import annotations

from imagenet_fleet.engine.pipeline import build, build_engine, default_workers

__all__ = ["build", "build_engine", "default_workers"]
