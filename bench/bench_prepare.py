#!/usr/bin/env python3
"""Benchmark: TFDS's own imagenet2012 build vs the `parallel` engine, side by side, on synthetic tars.

    .venv/bin/python bench/bench_prepare.py [--sets 12k,95k] [--file-format tfrecord|array_record] [--root DIR]
        [--workers N] [--rounds N]

For each sample set (made once under --root, then reused): the I/O floor (read the tars once + write the output's
bytes once), TFDS's build, and the engine three ways, each once before and once after TFDS's build (on this VM a run
that follows one that wrote and freed many GB, as TFDS's does, can take 2.5x the kernel CPU: both cases show):
reading the tars' headers itself (as is, and with the tars evicted from the page cache between its index and write
passes: what happens when the tars do not fit in memory), and with the member lists staging makes in its sha256
pass (`engine.memberlist`: one pass over the tars, no header reads; the CPU that listing adds to staging is
measured too). All engine builds must be byte-identical; a build made before TFDS's counts as the same as TFDS's
when its bytes are those of one compared with TFDS's record by record. With `--rounds N`, TFDS's build and the
engine's three runs alternate N times after that first engine round (runs #1 are before TFDS's first build), and
the table adds, per kind of run, the median of its runs and its ratio to the median of TFDS's: this VM's speed
swings by up to 2.5x from one run to the next, TFDS's included, and one pair of runs can land on either side. Each
round then ends with one copy of the I/O floor (the engine's way to read), so every engine run is also compared
with a floor measured minutes from it, not only with the four copies made at the end ("x floor": against the
fastest of those four; in brackets, against the same round's copy).

Every run, the I/O floor included, is measured the same way: start after `sync`, with the tars and the previous
run's output evicted from the page cache (`posix_fadvise(DONTNEED)`), and stop after the process has exited AND a
`sync` has written its output back to disk (TFDS does not fsync its shards, the engine does: ending every
measurement with `sync` charges both for getting the data onto the disk). The I/O floor copies the tars' bytes
two ways, twice each, and keeps the fastest: with O_DIRECT reads into huge pages, two reads ahead of the writes,
two streams per core (the engine's way to read, the fastest copy found on this VM), and with plain buffered reads,
one stream per core. Prints a table: seconds (and how much of it
was the closing `sync`), images/s, CPU seconds of the whole process tree (and per image: what decides the ratio on
a host with many cores), ratio to TFDS, peak memory, bytes written, temp peak, same as TFDS, deterministic.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from imagenet_fleet import cli, imagenet, sample  # noqa: E402

SETS = {
    "12k": sample.SampleSpec(classes=100, images_per_class=100, val_images=2000, special=True),
    "95k": sample.SampleSpec(classes=1000, images_per_class=85, val_images=10000, special=True),
}


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def tars_of(manual: Path) -> list[Path]:
    return [manual / n for n in imagenet.TAR_NAMES.values() if (manual / n).exists()]


def ensure_sample(root: Path, name: str) -> tuple[Path, int]:
    return sample_at(root / f"sample-{name}", SETS[name])


def sample_at(manual: Path, spec: sample.SampleSpec) -> tuple[Path, int]:
    """The sample `spec` in `manual` (made there unless it already is); returns it and its image count."""
    stamp = manual / "sample.json"
    want = json.dumps(spec.__dict__, sort_keys=True)
    if not (stamp.exists() and json.loads(stamp.read_text()).get("spec") == want):
        shutil.rmtree(manual, ignore_errors=True)
        summary = sample.make_sample(manual, spec)
        stamp.write_text(json.dumps({"spec": want, "counts": summary["counts"]}))
    counts = json.loads(stamp.read_text())["counts"]
    return manual, sum(counts.values())


# ---------------------------------------------------------------- one run, in a child process


def child(engine: str, manual: Path, data: Path, workers: int | None, evict_between: bool, file_format: str) -> None:
    """Runs inside the measured process."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    cli.exit_without_scan()  # (as `prepare_imagenet.py` does, whichever engine: `cli.run`)
    if engine == "tfds":
        from imagenet_fleet.prepare import build_with_tfds

        build_with_tfds(manual, data, imagenet.DEFAULT_VERSION, file_format, None)
    else:
        from imagenet_fleet.engine import special

        special.start_early(manual)  # (as `prepare.build_with_parallel` does)
        from imagenet_fleet.engine import pipeline

        hook = (lambda path: evict([Path(path)])) if evict_between else None
        stats = pipeline.build(manual, data, imagenet.DEFAULT_VERSION, file_format, workers, before_write=hook)
        # Reap the fork server now (it reaped the workers): their CPU time then reaches this process's
        # RUSAGE_CHILDREN, and from there the benchmark's (a private API, for this measurement only).
        from multiprocessing import forkserver

        getattr(getattr(forkserver, "_forkserver", None), "_stop", lambda: None)()
        print(json.dumps(stats))


def _tree_memory(pid: int) -> tuple[int, int]:
    """(PSS of the whole process tree, largest RSS of one process in it)."""
    import psutil

    total = largest = 0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        total += info.pss
        largest = max(largest, info.rss)
    return total, largest


def _disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


@dataclass
class Measured:
    """One measured run."""

    seconds: float  # start to exit, and the closing `sync`
    sync: float  # of it, the closing `sync`
    pss: int  # peak PSS of the whole process tree
    maxrss: int  # largest RSS of one process in it
    written: int  # bytes written
    cpu: float  # CPU time of the whole process tree (user + system): what decides the ratio on more cores
    temp_peak: int  # disk used beyond the final output, at most
    output: int  # the final output's size on disk
    stats: str  # the engine's statistics (its last stdout line), "" for TFDS


def measure(args: list[str], run_dir: Path) -> Measured:
    """Run the child; sample its memory (PSS of the whole tree) and the run folder's disk use."""
    os.sync()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peaks = {"pss": 0, "rss": 0, "disk": 0}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample_loop() -> None:
        while not stop.wait(0.5):  # (PSS: ~15 ms of the sampler's CPU per process with TF loaded)
            pss, rss = _tree_memory(proc.pid)
            peaks["pss"], peaks["rss"] = max(peaks["pss"], pss), max(peaks["rss"], rss)
            peaks["disk"] = max(peaks["disk"], _disk_usage(run_dir))

    sampler = threading.Thread(target=sample_loop, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    exited = time.monotonic()
    os.sync()  # the output on disk, whoever wrote it and however
    synced = time.monotonic()
    seconds = synced - started
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.stderr.write(err.decode()[-4000:])
        raise SystemExit(f"run {args} failed ({proc.returncode})")
    final = _disk_usage(run_dir)
    stats = out.decode().strip().splitlines()[-1] if out.strip() else ""
    return Measured(
        seconds=seconds,
        sync=synced - exited,
        pss=peaks["pss"],
        maxrss=peaks["rss"],
        # bytes the run dirtied: rusage of reaped children (TFDS: one process); the engine's writers live under a
        # fork server, outside that accounting, so the engine reports what it wrote itself
        written=json.loads(stats)["bytes_written"] + _metadata_bytes(run_dir)
        if stats
        else (after.ru_oublock - before.ru_oublock) * 512,
        cpu=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        temp_peak=max(0, peaks["disk"] - final),
        output=final,
        stats=stats,
    )


def _metadata_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.rglob("*.json")) + sum(
        p.stat().st_size for p in run_dir.rglob("*.txt")
    )


def _slices(tars: list[Path], lo: int, hi: int) -> list[tuple[Path, int, int]]:
    """[lo, hi) of the tars' bytes taken end to end, as (tar, start, end) within each tar."""
    out, base = [], 0
    for path in tars:
        size = path.stat().st_size
        if max(lo, base) < min(hi, base + size):
            out.append((path, max(lo, base) - base, min(hi, base + size) - base))
        base += size
    return out


def _copy_buffered(slices: list[tuple[Path, int, int]], out: BinaryIO, left: int) -> int:
    """Plain reads through the page cache, each written out before the next (the kernel reads ahead)."""
    buf = memoryview(bytearray(8 << 20))
    for path, start, end in slices:
        with path.open("rb", buffering=0) as f:
            f.seek(start)
            while start < end:
                n = f.readinto(buf[: min(len(buf), end - start)])
                start += n
                n = min(n, left)
                left -= out.write(buf[:n]) if n else 0
    return left


def _copy_direct(slices: list[tuple[Path, int, int]], out: BinaryIO, left: int) -> int:
    """The engine's way to read, with the engine's own reader (`write._Reader`): O_DIRECT into huge-page buffers,
    `AHEAD` reads in flight ahead of the write (on this VM's disk the fastest way found to read the tars)."""
    from collections import deque

    from imagenet_fleet.engine.write import AHEAD, READ_BYTES, SLACK, _Reader

    step = READ_BYTES - SLACK  # (a read of this many bytes, aligned, fits one buffer)
    spans = [(str(path), at, min(at + step, end)) for path, start, end in slices for at in range(start, end, step)]
    reader = _Reader(READ_BYTES)
    try:
        ahead = deque(reader.read(*spans[k], True) for k in range(min(AHEAD, len(spans))))
        for k, (_, start, end) in enumerate(spans):
            view, base = ahead.popleft().result()
            if k + AHEAD < len(spans):
                ahead.append(reader.read(*spans[k + AHEAD], True))
            try:
                n = min(end - start, left)
                left -= out.write(view[start - base : start - base + n]) if n > 0 else 0
            finally:
                view.release()
    finally:
        reader.close()
    return left


def io_floor(manual: Path, out_bytes: int, scratch: Path, streams: int, direct: bool) -> tuple[float, float]:
    """The least any build can take: read the tars once (cold) and write the output's size once, `streams` threads
    each copying its slice (the kernel does the work, without the GIL: every core busy), then `sync`, the way every
    run is measured. Returns (seconds, of which the closing sync)."""
    tars = tars_of(manual)
    total_in = sum(p.stat().st_size for p in tars)
    os.sync()
    evict(tars)
    scratch.mkdir(parents=True, exist_ok=True)

    def copy(i: int) -> None:
        slices = _slices(tars, total_in * i // streams, total_in * (i + 1) // streams)
        left = out_bytes * (i + 1) // streams - out_bytes * i // streams
        with open(scratch / f"floor-{i}.bin", "wb", buffering=0) as out:
            left = (_copy_direct if direct else _copy_buffered)(slices, out, left)
            while left > 0:  # (the output is a little larger than the tars)
                left -= out.write(bytes(min(8 << 20, left)))

    started = time.monotonic()
    threads = [threading.Thread(target=copy, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = time.monotonic()
    os.sync()
    seconds = time.monotonic() - started
    shutil.rmtree(scratch)
    return seconds, seconds - (written - started)


def drop_member_lists(manual: Path) -> None:
    from imagenet_fleet.engine import memberlist

    for tar in tars_of(manual):
        memberlist.sidecar_path(tar).unlink(missing_ok=True)
        _set_aside(memberlist.sidecar_path(tar)).unlink(missing_ok=True)


def _set_aside(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name + ".aside")


def use_member_lists(manual: Path, use: bool) -> bool:
    """Put staging's member lists beside the tars (`use`), or set them aside so the engine reads the headers itself;
    returns whether they were there to be used (staged earlier in this bench)."""
    from imagenet_fleet.engine import memberlist

    there = True
    for tar in tars_of(manual):
        live, aside = memberlist.sidecar_path(tar), _set_aside(memberlist.sidecar_path(tar))
        src, dst = (aside, live) if use else (live, aside)
        if src.exists():
            src.rename(dst)
        there = there and (live if use else aside).exists()
    return there


def stage_member_lists(manual: Path) -> str:
    """List the tars' members the way staging does (`stage._hash`: in the sha256 pass it makes anyway, from a cold
    cache here); returns what the listing adds to that pass: the CPU time spent in the recorder."""
    from imagenet_fleet.engine import memberlist
    from imagenet_fleet.manifest import hash_file

    spent = [0.0]
    hashing = time.process_time()
    for tar in tars_of(manual):
        evict([tar])
        recorder = memberlist.Recorder(tar.stat().st_size, nested=tar.name == imagenet.TAR_NAMES["train"])

        def feed(chunk: memoryview, recorder: memberlist.Recorder = recorder) -> None:
            t0 = time.thread_time()
            recorder.feed(chunk)
            spent[0] += time.thread_time() - t0

        hash_file(tar, also=feed)
        walks = recorder.walks()
        assert walks is not None, f"{tar}: not listed"
        memberlist.save(tar, walks)
    hashing = time.process_time() - hashing
    return f"staging's sha256 pass: {hashing:.1f} CPU s, of it listing the members {spent[0]:.2f} s"


def digests(build: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(build.iterdir())}


def bench_set(
    root: Path, name: str, workers: int | None, skip_tfds: bool, file_format: str, rounds: int = 1
) -> list[dict[str, str]]:
    from imagenet_fleet.engine.compare import differences

    manual, images = ensure_sample(root, name)
    runs_root = root / f"runs-{name}"
    shutil.rmtree(runs_root, ignore_errors=True)
    drop_member_lists(manual)
    # the engine before and after TFDS's build: on this VM, a run that follows one that wrote and freed many GB (as
    # TFDS's does) pays up to 2.5x the kernel CPU to copy its output into fresh guest pages; both cases are shown.
    # With `rounds` > 1, TFDS's build and the engine's alternate that many times, and medians are compared too.
    engine_round = [("parallel", ""), ("parallel", "between"), ("parallel", "lists")]
    if rounds > 1 and not skip_tfds:  # (a copy of the floor closes each round: engine runs against a floor near them)
        engine_round = [*engine_round, ("floor", "")]
    plan = engine_round + (engine_round if skip_tfds else [("tfds", ""), *engine_round]) * rounds
    cores = max(2, workers or len(os.sched_getaffinity(0)))
    results: list[tuple[str, Measured]] = []
    same: list[str] = []  # per run: same records as TFDS's build?
    hashes: list[dict[str, str]] = []  # per engine run: sha256 of every file
    matched: list[dict[str, str]] = []  # builds found record by record the same as TFDS's
    reference: Path | None = None
    staging = ""
    round_copies: list[float] = []  # the floor copy that closed each round
    round_floors: dict[int, float] = {}  # index in results -> the copy that closed its round
    for i, (engine, variant) in enumerate(plan):
        if engine == "floor":
            seconds = io_floor(manual, results[-1][1].output, runs_root / "floor", 2 * cores, True)[0]
            print(f"[{name}] I/O floor, this round's copy: {seconds:.2f} s", file=sys.stderr)
            round_copies.append(seconds)
            round_floors.update({k: seconds for k in range(len(results)) if k not in round_floors})
            continue
        if engine == "parallel":
            listed = use_member_lists(manual, variant == "lists")
            if variant == "lists" and not listed:
                staging = stage_member_lists(manual)
        run_dir = runs_root / f"{i}-{engine}"
        data = run_dir / "data"
        data.mkdir(parents=True)
        evict(tars_of(manual))
        args = ["--child", engine, "--manual", str(manual), "--data", str(data)]
        args += ["--workers", str(workers)] if workers else []
        args += ["--evict-between"] if variant == "between" else []
        args += ["--file-format", file_format]
        m = measure(args, run_dir)
        label = engine + {
            "": ", headers read from the tars" if engine == "parallel" else "",
            "between": ", headers read, tars evicted between passes",
            "lists": ", member lists from staging (one pass)",
        }[variant]
        if engine == "parallel" and not skip_tfds and rounds == 1:
            label += ", before TFDS's run" if reference is None else ", after TFDS's run"
        elif not skip_tfds and rounds > 1:  # (#1: the engine's runs before TFDS's first)
            label += f" #{1 + sum(earlier.startswith(label) for earlier, _ in results)}"
        label += " (2nd)" if any(earlier == label for earlier, _ in results) else ""
        results.append((label, m))
        build = data / imagenet.DATASET / imagenet.DEFAULT_VERSION
        print(f"[{name}] {label}: {m.seconds:.2f} s {m.stats[:300]}", file=sys.stderr)
        if engine == "tfds":
            same.append("-")
            evict([p for p in run_dir.rglob("*") if p.is_file()])  # (written back already: the next run starts cold)
            if reference is None:
                reference = build  # kept to the end (the 95k set's builds are ~11 GB each: one at a time besides it)
            else:
                shutil.rmtree(run_dir)
        else:
            hashes.append(digests(build))
            if reference is None:
                same.append("-")
            elif hashes[-1] in matched:  # (these bytes were compared with TFDS's record by record already)
                same.append("yes")
            else:
                same.append("yes" if not differences(build, reference) else "no")
                matched += [hashes[-1]] if same[-1] == "yes" else []
            shutil.rmtree(run_dir)
    # a build made before TFDS's is the same as TFDS's if its bytes are those of one checked against it after
    engine_runs = [k for k, (label, _) in enumerate(results) if label.startswith("parallel")]
    tfds_runs = [m.seconds for label, m in results if label.startswith("tfds")]
    for k, digest in zip(engine_runs, hashes, strict=True):
        if same[k] == "-" and matched:
            same[k] = "yes" if digest in matched else "no"
    out_bytes = results[-1][1].output
    floors = [(*io_floor(manual, out_bytes, runs_root / "floor", streams, direct), how)
              for direct, streams, how in [(True, 2 * cores, f"O_DIRECT reads, {2 * cores} streams"),
                                           (False, cores, f"buffered, {cores} streams")] for _ in range(2)]  # fmt: skip
    floor, floor_sync, floor_how = min(floors)  # (a bound: the fastest copy of the four)
    tfds_seconds = statistics.median(tfds_runs) if tfds_runs else None  # (of one run, unless `rounds` > 1)
    deterministic = all(h == hashes[0] for h in hashes[1:])
    each_round = f"; each round's: {', '.join(f'{f:.2f}' for f in round_copies)} s" if round_copies else ""
    rows = [
        _row(name, f"I/O floor (read tars + write output; best of 4: {floor_how}; all 4: "
                   f"{', '.join(f'{f[0]:.2f}' for f in floors)} s{each_round})", {  # (how much one copy swings here)
            "seconds": f"{floor:.2f}",
            "of it sync": f"{floor_sync:.2f}",
            "images/s": f"{images / floor:,.0f}",
            "ratio": f"{tfds_seconds / floor:.2f}x" if tfds_seconds else "-",
            "x floor": "1.00",
        })  # fmt: skip
    ]
    for k, ((label, m), same_as_tfds) in enumerate(zip(results, same, strict=True)):
        is_engine = label.startswith("parallel")
        its_round = f" ({m.seconds / round_floors[k]:.2f})" if k in round_floors else ""
        rows.append(
            _row(name, label, {
                "seconds": f"{m.seconds:.2f}",
                "of it sync": f"{m.sync:.2f}",
                "images/s": f"{images / m.seconds:,.0f}",
                "CPU s": f"{m.cpu:.1f}",
                "CPU ms/image": f"{1000 * m.cpu / images:.2f}",
                "ratio": f"{tfds_seconds / m.seconds:.2f}x" if tfds_seconds else "-",
                "x floor": f"{m.seconds / floor:.2f}{its_round}",
                "peak PSS": f"{m.pss / 2**20:,.0f} MiB",
                "largest RSS": f"{m.maxrss / 2**20:,.0f} MiB",
                "bytes written": f"{m.written / 1e9:.2f} GB",
                "temp peak": f"{m.temp_peak / 1e6:,.0f} MB",
                "same as TFDS": same_as_tfds,
                "deterministic": ("yes" if deterministic else "no") if is_engine else "-",
            })  # fmt: skip
        )
    if rounds > 1 and tfds_seconds:
        rows += median_rows(name, images, results, tfds_seconds, floor, statistics.median(f[0] for f in floors),
                            round_floors)  # fmt: skip
    drop_member_lists(manual)
    note = (f"({file_format}, {images:,} images, output {out_bytes / 1e9:.2f} GB, floor x1.3 = {floor * 1.3:.2f} s; "
            f"{staging})")  # fmt: skip
    rows.append(_row(name, note, {}, blank=""))
    shutil.rmtree(runs_root, ignore_errors=True)
    return rows


def median_rows(
    name: str,
    images: int,
    results: list[tuple[str, Measured]],
    tfds_seconds: float,
    floor: float,
    floor_median: float,
    round_floors: dict[int, float] | None = None,
) -> list[dict[str, str]]:
    """Per kind of run (TFDS's, and each of the engine's variants): the median of its runs, its ratio to TFDS's
    median (with the spread of its single runs' ratios to that median), and how far it is from the I/O floor: the
    fastest of the floor's four copies, their median (like against like: both medians of this VM's swings), and,
    where rounds closed with a copy of the floor (`round_floors`: index in `results` -> seconds), the median of
    each run's ratio to its own round's copy (the VM's drift over a bench cancels out)."""
    kinds: dict[str, list[float]] = {}
    per_round: dict[str, list[float]] = {}
    for k, (label, m) in enumerate(results):
        kind = label.split(" #")[0]
        kinds.setdefault(kind, []).append(m.seconds)
        if round_floors and k in round_floors:
            per_round.setdefault(kind, []).append(m.seconds / round_floors[k])
    rows = []
    for kind, runs in kinds.items():
        mid = statistics.median(runs)
        spread = f" ({tfds_seconds / max(runs):.2f}-{tfds_seconds / min(runs):.2f}x)" if len(runs) > 1 else ""
        same_round = f"; {statistics.median(per_round[kind]):.2f} of its round's" if kind in per_round else ""
        rows.append(
            _row(name, f"{kind}: median of {len(runs)} ({', '.join(f'{r:.2f}' for r in runs)} s)", {
                "seconds": f"{mid:.2f}",
                "images/s": f"{images / mid:,.0f}",
                "ratio": f"{tfds_seconds / mid:.2f}x{spread}",
                "x floor": f"{mid / floor:.2f} ({mid / floor_median:.2f} of its median{same_round})",
            })  # fmt: skip
        )
    return rows


COLUMNS = ("seconds", "of it sync", "images/s", "CPU s", "CPU ms/image", "ratio", "x floor", "peak PSS",
           "largest RSS", "bytes written", "temp peak", "same as TFDS", "deterministic")  # fmt: skip


def _row(name: str, run: str, cells: dict[str, str], blank: str = "-") -> dict[str, str]:
    """A table row: the set, the run, then every column in order, `blank` where `cells` has nothing."""
    assert set(cells) <= set(COLUMNS), set(cells) - set(COLUMNS)
    return {"set": name, "run": run, **{column: cells.get(column, blank) for column in COLUMNS}}


def print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(r[c].ljust(widths[c]) for c in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="12k", help="comma-separated: 12k (1.4 GB), 95k (~11 GB)")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(tempfile.gettempdir()) / "imagenet-fleet-bench",
        help="samples and runs go here (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=None, help="engine workers (default: all cores)")
    parser.add_argument("--skip-tfds", action="store_true", help="engine runs only")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="TFDS's build and the engine's three runs alternate this many times (after one first engine round); "
        "the table adds each kind's median and its ratio to TFDS's median (default: %(default)s)",
    )
    parser.add_argument("--file-format", default="tfrecord", choices=["tfrecord", "array_record"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--manual", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--evict-between", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.manual, args.data, args.workers, args.evict_between, args.file_format)
        return
    # the engine's modules byte-compiled once, as on a host after its first run (where PYTHONDONTWRITEBYTECODE is
    # set, every run would compile them again: ~0.3 s of CPU that TFDS, installed by pip, does not pay)
    compileall.compile_dir(str(REPO / "scripts"), quiet=1)
    rows: list[dict[str, str]] = []
    for name in args.sets.split(","):
        rows += bench_set(args.root, name, args.workers, args.skip_tfds, args.file_format, args.rounds)
    print_table(rows)


if __name__ == "__main__":
    main()
