"""The `parallel` preparation engine: the same shards as TFDS's imagenet2012 build, written once, by every core.

`pipeline.build(manual_dir, data_dir, version, file_format, workers)` is the entry point; the modules: `tarindex`
(tar headers), `records` (record bytes), `plan` (TFDS's order and shard layout), `schedule` (the writers' work
units and their queue), `journal` (what is written, for resuming), `write` (the writers), `special`
(the CMYK/PNG re-encoding), `reencoder` and `tfops` (its helper process, with TF's kernels), `metadata` (TFDS's
metadata files), `procs` (the worker processes), `compare` (record-level comparison with a TFDS build, for tests
and the bench).

This package imports nothing itself: the worker processes import only `tarindex` and `write` (no NumPy, no TFDS).
"""
