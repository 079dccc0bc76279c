#!/usr/bin/env python3
"""Benchmark: how the `parallel` engine scales with cores (the same build at 1, 2, 4, ... workers).

    .venv/bin/python bench/bench_scaling.py [--workers 1,2,4,8,16] [--classes 1000 --images-per-class 24
        --val-images 2000] [--no-special] [--headers] [--root DIR]

`bench_prepare.py` compares the engine with TFDS on this 2-core machine; this one is for a host with more cores.
It makes (or reuses) one sample set under --root, lists its members the way staging does (or, with --headers,
leaves the engine to read the tars' headers itself), then builds it once per worker count, each run measured
as in `bench_prepare.py` (start after `sync` with the tars evicted from the page cache, stop after the process has
exited and a `sync`). Prints a table: seconds, images/s, speedup over one worker, parallel efficiency, CPU seconds
of the whole process tree (and per image), peak PSS, and whether the build is byte-identical to the first one
(the engine's output depends only on the tars, not on how many workers wrote it).

The special CMYK/PNG images need TensorFlow (the engine re-encodes them with TF's kernels): `--no-special` makes a
sample without them, for a host that has no TensorFlow.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_prepare as bp  # noqa: E402  (this folder's sibling: its sample, eviction and measurement)

from imagenet_fleet import imagenet, sample  # noqa: E402


def default_workers() -> list[int]:
    cores = len(os.sched_getaffinity(0))
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return counts if counts[-1] == cores else [*counts, cores]


def ensure_sample(root: Path, spec: sample.SampleSpec) -> tuple[Path, int]:
    name = f"scaling-{spec.classes}x{spec.images_per_class}-{spec.val_images}"
    return bp.sample_at(root / f"{name}{'-special' * spec.special}{'-tiny' * spec.tiny}", spec)


def run(root: Path, spec: sample.SampleSpec, counts: list[int], headers: bool) -> list[dict[str, str]]:
    manual, images = ensure_sample(root, spec)
    bp.drop_member_lists(manual)
    staging = "headers read from the tars" if headers else bp.stage_member_lists(manual)
    runs_root = root / "scaling-runs"
    shutil.rmtree(runs_root, ignore_errors=True)
    first: dict[str, str] | None = None
    results = []
    for workers in counts:
        run_dir = runs_root / f"w{workers}"
        data = run_dir / "data"
        data.mkdir(parents=True)
        bp.evict(bp.tars_of(manual))
        m = bp.measure(["--child", "parallel", "--manual", str(manual), "--data", str(data),
                        "--workers", str(workers)], run_dir)  # fmt: skip
        hashes = bp.digests(data / imagenet.DATASET / imagenet.DEFAULT_VERSION)
        first = first or hashes
        print(f"[scaling] {workers} workers: {m.seconds:.2f} s {m.stats[:300]}", file=sys.stderr)
        results.append((workers, m, hashes == first))
        shutil.rmtree(run_dir)
    bp.drop_member_lists(manual)
    base = results[0][1].seconds * results[0][0]  # (one worker's time, scaled if the list starts above 1)
    rows = []
    for workers, m, same in results:
        seconds = m.seconds
        rows.append(
            {
                "workers": str(workers),
                "seconds": f"{seconds:.2f}",
                "images/s": f"{images / seconds:,.0f}",
                "speedup": f"{base / seconds:.2f}x",
                "efficiency": f"{base / seconds / workers:.0%}",
                "CPU s": f"{m.cpu:.1f}",
                "CPU ms/image": f"{1000 * m.cpu / images:.2f}",
                "peak PSS": f"{m.pss / 2**20:,.0f} MiB",
                "same bytes as first": "yes" if same else "no",
            }
        )
    note = f"({images:,} images, {len(os.sched_getaffinity(0))} cores; {staging})"
    rows.append({"workers": note, **{k: "" for k in rows[0] if k != "workers"}})
    shutil.rmtree(runs_root, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default=",".join(map(str, default_workers())),
                        help="comma-separated worker counts (default: powers of two up to the cores, %(default)s)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images-per-class", type=int, default=24)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--no-special", action="store_true", help="no CMYK/PNG images (a host without TensorFlow)")
    parser.add_argument("--tiny", action="store_true", help="8x8-pixel images: per-record costs and memory at "
                        "ILSVRC2012's member count (--images-per-class 1281 --val-images 50000)")  # fmt: skip
    parser.add_argument("--headers", action="store_true", help="no member lists: the engine reads the headers")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "imagenet-fleet-bench",
                        help="sample and runs go here (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()
    spec = sample.SampleSpec(classes=args.classes, images_per_class=args.images_per_class,
                             val_images=args.val_images, special=not args.no_special, tiny=args.tiny)  # fmt: skip
    spec.validate()
    counts = [int(n) for n in args.workers.split(",")]
    compileall.compile_dir(str(bp.REPO / "scripts"), quiet=1)  # (as bench_prepare: compiled once, as on a host)
    bp.print_table(run(args.root, spec, counts, args.headers))


if __name__ == "__main__":
    main()
