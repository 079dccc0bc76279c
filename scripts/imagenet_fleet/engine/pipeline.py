"""The parallel engine: index the tars' headers, lay the records out as TFDS would, write each record once.

Each split goes through these steps on its own, as soon as its tar's headers are read (the train split's serial
walks and the flat validation/test tars' are indexed concurrently, and one split's writes overlap another's index):
1. index   — in the worker processes: from the member lists staging recorded in its sha256 pass (`memberlist`:
             no reads of the tars at all), or else from the tars: the train tar's headers only (of its image
             bytes, only the 23 CMYK/PNG images'), the flat tars streamed in chunks (`tarindex.open_for`);
             meanwhile a thread imports TFDS (no TensorFlow) for the metadata and, if the train tar has the
             CMYK/PNG synsets, a helper loads TF's image kernels;
2. special — (train) the 23 CMYK/PNG images are read and re-encoded by the helper, warm by then: their new sizes
             are known before anything is laid out;
3. layout  — TFDS's order, shard count, boundaries and names (TFDS's shard rule, without importing TFDS: `plan`);
             every record's offset (ArrayRecord: its chunk's); shard files preallocated;
4. write   — one sequential pass over the tar in work units (every image byte read once, in tar order), each
             record written into its place: TFRecord's framed record `pwritev`'d; ArrayRecord's chunk, as
             array_record's own writer makes it, cut out of a scratch file in memory (`arrayrecord`), and a job per
             shard for its block headers, footer and postscript; each image's tar header, read with it, is checked
             against the index;
then, for all splits: fdatasync, TFDS metadata, rename into `<data_dir>/imagenet2012/<version>`.

Resume: the work happens in a stable folder beside `data_dir` (`work_dir`), with a journal per split of its finished
units (`A:<split>:<first record>`; `F:<split>:<shard>` for an ArrayRecord shard's frame), headed by the split's
fingerprint. A re-run with the same inputs skips the journaled units; a split whose inputs changed starts over.
Output bytes depend only on the tars (not on `workers`, timing, or which units were resumed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_fleet import imagenet
from imagenet_fleet.atomic import fsync_dir
from imagenet_fleet.engine import journal, memberlist, procs, records, schedule, special, tarindex, write
from imagenet_fleet.engine.plan import Names, SplitPlan, fingerprint, lay_out
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)

UNIT_BYTES = 32 << 20  # tar bytes per write unit (the resume granularity)
FILE_FORMATS = ("tfrecord", "array_record")


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def default_work_dir(data_dir: Path, version: str, file_format: str) -> Path:
    """Beside `data_dir` (not inside it: prepare.py builds into a fresh temp data dir each run)."""
    return data_dir.absolute().parent / f".{imagenet.DATASET}-{version}-{file_format}.engine-partial"


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: dict[str, float] = {}
        self.events: dict[str, float] = {}

    def mark(self, event: str) -> None:
        """When something happened, in seconds since the start (the stats' timeline)."""
        self.events[event] = round(time.monotonic() - self.start, 3)

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase] = round(now - self.last, 3)
        log.info("engine: %s done in %.2f s", phase, now - self.last)
        self.last = now


# ---------------------------------------------------------------- index


def _batches(chains: list[tarindex.Chain], count: int) -> list[list[tarindex.Chain]]:
    """Split chains into `count` batches of similar total size, keeping each batch's chains in order."""
    count = max(1, min(count, len(chains)))
    out: list[list[tarindex.Chain]] = [[] for _ in range(count)]
    for i, chain in enumerate(chains):
        out[i * count // len(chains)].append(chain)
    return out


def _train_chains(
    path: str, fetch: frozenset[str], staged: memberlist.MemberList | None
) -> tuple[list[tarindex.Chain], set[str]]:
    """The outer train tar's members (read here, one header per synset, unless staging recorded them) as chains
    over the inner tars, each to read the bytes of its images named in `fetch` too."""
    label_index = imagenet.label_index()
    size = os.path.getsize(path)
    outer = tarindex.Chain(path, 0, size, "train", staged=staged.ref(0) if staged else None)
    fd = tarindex.open_for(outer)
    try:
        members = tarindex.walk(fd, outer)
    finally:
        os.close(fd)
    chains: list[tarindex.Chain] = []
    synsets: set[str] = set()
    for raw_name, offset, length, regular in members:
        name = tarindex.normpath(raw_name) if regular else None
        if name is None:
            continue
        synset = name[:-4]
        if synset not in label_index:
            raise UserError(
                f"{path}: member {name!r} is not a synset's tar (n########.tar)",
                "use the original ILSVRC2012 train tar",
            )
        synsets.add(synset)
        ref = staged.ref(offset) if staged and offset in staged else None
        chains.append(
            tarindex.Chain(path, offset, offset + length, "train", label=label_index[synset], fetch=fetch, staged=ref)
        )
    return chains, synsets


def _joined(parts: list[tarindex.ChainIndex], name: str) -> np.ndarray:
    """One int64 array of the parts' arrays `name`, end to end."""
    arrays = [np.asarray(getattr(part, name), dtype=np.int64) for part in parts]
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


def _plan_from(split: str, path: str, parts: list[tarindex.ChainIndex], labels: list[int] | None = None) -> SplitPlan:
    names = Names.join(parts)
    n = len(names)
    fetched_at: dict[str, int] = {}
    base = 0
    for part in parts:
        if part.fetched:  # (where the images the index read are: the CMYK/PNG ones)
            fetched_at.update((name, base + i) for i, name in enumerate(part.names) if name in part.fetched)
        base += len(part.name_ends)
    if labels is None:
        if any(part.label is None for part in parts):
            raise ValueError("a chain without labels needs explicit labels")
        counts = [len(part.name_ends) for part in parts]
        label_array = np.repeat([part.label for part in parts], counts).astype(np.int64)
    else:
        label_array = np.asarray(labels, dtype=np.int64)
    sizes = _joined(parts, "sizes")
    rec = _joined(parts, "record_sizes")
    if len(rec) != n:
        rec = np.fromiter(
            (records.record_size(name, label, size)
             for name, label, size in zip(names.slice(0, n), label_array.tolist(), sizes.tolist(), strict=True)),
            dtype=np.int64, count=n,
        )  # fmt: skip
    return SplitPlan(
        split=split,
        tar_path=path,
        names=names,
        offsets=_joined(parts, "offsets"),
        sizes=sizes,
        labels=label_array,
        digests=np.frombuffer(b"".join(part.digests for part in parts), dtype=np.uint8).reshape(n, 16),
        record_sizes=rec,
        fetched_at=fetched_at,
    )


def _validation_labels(path: str, index: tarindex.ChainIndex) -> list[int]:
    """TFDS's `get_validation_labels`: sorted member names zipped with validation_labels.txt."""
    by_name = dict(zip(sorted(index.raw_names), imagenet.validation_labels(), strict=False))
    label_index = imagenet.label_index()
    out = []
    for name in index.names:
        if name not in by_name:
            raise UserError(
                f"{path}: {name!r} has no validation label (TFDS labels the first 50,000 names in sorted order)",
                "use the original ILSVRC2012 validation tar",
            )
        out.append(label_index[by_name[name]])
    return out


# ---------------------------------------------------------------- the engine


class _Specials:
    """The train split's CMYK/PNG images, re-encoded as TFDS does by a helper process that loads TF's kernels while
    the disk works. The index reads those images' bytes with their headers, the tars of their synsets first, so
    they are converted while the rest of the train tar is indexed. A thread collects each batch as soon as it is
    converted, and the helper is closed once none is pending: its TF kernels hold ~300 MB, gone well before the
    index's own memory peaks (a later batch, from a tar that holds a special image outside its synset, starts a
    new one)."""

    def __init__(self) -> None:
        self._converter: special.Converter | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._collector = ThreadPoolExecutor(1, thread_name_prefix="imagenet-special")
        self._batches: list[Future[dict[str, bytes]]] = []

    def start(self) -> None:
        with self._lock:
            self._running()

    def _running(self) -> special.Converter:
        """The helper: the one running, or the one `special.start_early` started, or a new one (under the lock)."""
        self._converter = self._converter or special.take_early() or special.Converter()
        return self._converter

    def submit(self, images: dict[str, bytes]) -> None:
        if not images:
            return
        with self._lock:
            converter = self._running()
            converter.submit(sorted(images.items()))
            self._pending += 1
        self._batches.append(self._collector.submit(self._collect, converter))

    def _collect(self, converter: special.Converter) -> dict[str, bytes]:
        try:
            return converter.result()  # (batches are collected in the order they were submitted, as sent)
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending and self._converter is converter:
                    converter.close()
                    self._converter = None

    def apply(self, plan: SplitPlan) -> int:
        """Put the re-encoded images and their record sizes into the train plan; returns how many. (Every train
        chain reads the special images it holds, whatever its synset.) The helper is gone afterwards."""
        names = special.special_names()
        wanted = {name: i for name, i in plan.fetched_at.items() if name in names}
        try:
            fixed: dict[str, bytes] = {}
            for batch in self._batches:
                fixed.update(batch.result())
        finally:
            self.close()
        for name, i in wanted.items():
            plan.specials[i] = fixed[name]
            plan.record_sizes[i] = records.record_size(name, int(plan.labels[i]), len(plan.specials[i]))
        return len(wanted)

    def close(self) -> None:
        with self._lock:
            converter, self._converter = self._converter, None
        if converter is not None:
            converter.close()  # (a collector blocked on it gets an error now)
        self._collector.shutdown(wait=True)
        self._batches = []


class _Metadata:
    """TFDS's builder, for the metadata written at the end: imported in a thread (~1 s of CPU) while the last
    shards are written and synced (`_Build._import_tfds`)."""

    def __init__(self, work_dir: Path, version: str, file_format: str, clock: _Clock) -> None:
        self._args = (work_dir, version, file_format)
        self._clock = clock
        self._result: tuple[Any, Any] | BaseException | None = None
        self._thread = threading.Thread(target=self._load, name="imagenet-tfds-import", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            from imagenet_fleet.engine import metadata

            self._result = (metadata, metadata.make_builder(*self._args))
            self._clock.mark("TFDS imported")
        except BaseException as exc:  # noqa: BLE001 - raised again where the result is used
            self._result = exc

    def write(self, version_dir: Path, splits: list[tuple[str, list[int], int]]) -> None:
        self._thread.join()
        if isinstance(self._result, BaseException):
            raise self._result
        assert self._result is not None
        metadata, builder = self._result
        metadata.write_metadata(builder, version_dir, splits)
        self._clock.mark("metadata written")


class _Index:
    """The header reads, in the worker processes: first the train tar's inner tars of the CMYK/PNG synsets (their
    images' bytes read too), then one task per flat tar (validation, test: a long serial walk each), then the rest
    of the train tar, a task per worker. A split is ready when all its tasks are. A tar whose members staging
    recorded (`memberlist`) is not read at all here: its tasks read the member lists instead (`staged`)."""

    def __init__(self, pool: ProcessPoolExecutor, tars: dict[str, Path], workers: int) -> None:
        self.synsets: set[str] = set()
        lists = {split: memberlist.load(path) for split, path in tars.items()}
        self.staged = {split for split, found in lists.items() if found is not None and 0 in found}
        for split in sorted(set(tars) - self.staged):
            log.info("engine: no member list staged with %s: reading its headers", tars[split])
        self._tasks: dict[Future[list[tarindex.ChainIndex]], list[tarindex.Chain]] = {}
        self._parts: dict[str, dict[int, tarindex.ChainIndex]] = {}
        self._count: dict[str, int] = {}
        self._tars = tars
        train: list[list[tarindex.Chain]] = []
        if "train" in tars:
            names = special.special_names()
            label_index = imagenet.label_index()
            special_labels = {label_index[synset] for synset in special.special_synsets()}
            chains, self.synsets = _train_chains(str(tars["train"]), names, lists["train"])
            first = [chain for chain in chains if chain.label in special_labels]
            rest = [chain for chain in chains if chain.label not in special_labels]
            train = [first] if first else []
            train += _batches(rest, workers) if rest else []
            self._count["train"] = sum(len(task) for task in train)
            self._submit(pool, train[:1])
        for split in ("validation", "test"):
            if split in tars:
                path, found = str(tars[split]), lists[split]
                chain = tarindex.Chain(
                    path, 0, os.path.getsize(path), split,
                    label=imagenet.TEST_LABEL if split == "test" else None,
                    keep_raw_names=split == "validation", flat=True, staged=found.ref(0) if found else None,
                )  # fmt: skip
                self._count[split] = 1
                self._submit(pool, [[chain]])
        self._submit(pool, train[1:])

    def _submit(self, pool: ProcessPoolExecutor, tasks: list[list[tarindex.Chain]]) -> None:
        for task in tasks:
            self._tasks[pool.submit(tarindex.index_chains, task)] = task

    @property
    def pending(self) -> set[Future[list[tarindex.ChainIndex]]]:
        return set(self._tasks)

    def take(self, future: Future[list[tarindex.ChainIndex]]) -> tuple[dict[str, bytes], SplitPlan | None]:
        """Record a finished task: the image bytes it read, and its split's plan (in tar order) if it was the last."""
        task = self._tasks.pop(future)
        fetched: dict[str, bytes] = {}
        for chain, part in zip(task, future.result(), strict=True):
            self._parts.setdefault(chain.split, {})[chain.start] = part
            fetched.update(part.fetched)
        split = task[0].split
        if len(self._parts[split]) < self._count[split]:
            return fetched, None
        by_start = self._parts.pop(split)  # (not kept: at ILSVRC2012's size the plan alone is ~200 MB)
        parts = [by_start[start] for start in sorted(by_start)]
        path = str(self._tars[split])
        labels = _validation_labels(path, parts[0]) if split == "validation" else None
        return fetched, _plan_from(split, path, parts, labels)


def build(
    manual_dir: Path,
    data_dir: Path,
    version: str = imagenet.DEFAULT_VERSION,
    file_format: str = "tfrecord",
    workers: int | None = None,
    *,
    work_dir: Path | None = None,
    num_shards: int | None = None,
    unit_bytes: int = UNIT_BYTES,
    before_write: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write `<data_dir>/imagenet2012/<version>/` from the tars in `manual_dir`; returns statistics.

    `num_shards` mirrors TFDS's `DownloadConfig(num_shards=...)` (tests); `before_write(tar_path)` is called before
    a split's records are written (the benchmark evicts that tar from the page cache there).
    """
    try:
        if file_format not in FILE_FORMATS:
            raise UserError(f"unknown file format {file_format!r}", f"pass one of {', '.join(FILE_FORMATS)}")
        tars = {s: manual_dir / n for s, n in imagenet.TAR_NAMES.items() if (manual_dir / n).is_file()}
        if not tars:
            raise UserError(f"no ILSVRC2012 tar in {manual_dir}",
                            f"stage one of {', '.join(imagenet.TAR_NAMES.values())}")  # fmt: skip
        target = data_dir / imagenet.DATASET / version
        if target.exists():
            raise UserError(f"{target} already exists", "remove it, or build into another data dir")
        work_dir = work_dir or default_work_dir(data_dir, version, file_format)
        return _Build(tars, target, version, file_format, workers or default_workers(), work_dir, num_shards,
                      unit_bytes, before_write).run()  # fmt: skip
    finally:
        special.close_early()  # (one `special.start_early` started that the build did not take over)


class _Build:
    """One run of the engine: the steps of the module docstring, each split on its own as soon as it is indexed."""

    def __init__(self, tars: dict[str, Path], target: Path, version: str, file_format: str, workers: int,
                 work_dir: Path, num_shards: int | None, unit_bytes: int,
                 before_write: Callable[[str], None] | None) -> None:  # fmt: skip
        self.tars, self.target, self.version, self.file_format = tars, target, version, file_format
        self.workers, self.work_dir, self.unit_bytes, self.before_write = workers, work_dir, unit_bytes, before_write
        self.num_shards = num_shards
        self.version_dir = work_dir / imagenet.DATASET / version
        self.clock = _Clock()
        self.specials = _Specials()
        self.plans: list[SplitPlan] = []
        self.journals: dict[str, journal.Journal] = {}
        self.counts = {"units": 0, "todo": 0, "special": 0}

    def run(self) -> dict[str, Any]:
        # workers + one per flat tar: a flat tar's serial header walk holds a process while mostly waiting on the disk
        extra = sum(split in self.tars for split in ("validation", "test"))
        context = procs.worker_context()
        self.pool = ProcessPoolExecutor(self.workers + extra, mp_context=context, initializer=procs.worker_init)
        try:
            with journal.locked_dir(self.work_dir):
                self._index_and_write()
                self._finish()
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.clock.lap("finish")
        finally:
            self.specials.close()
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self._stats()

    def _index_and_write(self) -> None:
        # 1. index, a task per worker; meanwhile TF's kernels load in the helper, while this thread hands each
        # split to the writers as soon as its index is in; TFDS (no TensorFlow) is imported in a thread near the end
        self.index = index = _Index(self.pool, self.tars, self.workers)
        if index.synsets & special.special_synsets():
            self.specials.start()
        self.metadata: _Metadata | None = None
        self.writes = schedule.Writes(self.pool, self.workers)
        while index.pending or self.writes.pending:
            ready = self._wait()
            for plan in ready:  # (once the finished index tasks, with their results, are let go)
                self.plans.append(plan)
                self._start(plan)
            if self.metadata is None and self._time_to_import_tfds():
                self.metadata = self._import_tfds()
        self.metadata = self.metadata or self._import_tfds()
        self.clock.mark("written")
        self.plans.sort(key=lambda p: imagenet.SPLITS.index(p.split))
        self.clock.lap("index+write")

    def _time_to_import_tfds(self) -> bool:
        """TFDS's ~1 s of CPU, for the metadata, is best spent where the cores would idle otherwise: once the last
        units are in the workers' hands, so that it runs while the final fdatasync waits on the disk (on the 2-core
        VM the 12k build's train pass then took ~0.15 s less: 16 alternating runs, 2.70 s median against 2.77)."""
        if self.index.pending:
            return False
        return not self.writes.queued

    def _import_tfds(self) -> _Metadata:
        return _Metadata(self.work_dir, self.version, self.file_format, self.clock)

    def _wait(self) -> list[SplitPlan]:
        """Take what the workers finished next; returns the splits whose index is complete."""
        index, ready = self.index, []
        pending: set[Future[Any]] = index.pending | self.writes.pending
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            if future in index.pending:
                fetched, plan = index.take(future)
                self.specials.submit(fetched)
                if plan is not None:
                    ready.append(plan)
            else:
                try:
                    self.writes.take(future)
                except tarindex.ChangedTar as exc:  # (a member list that no longer holds: not used again)
                    memberlist.sidecar_path(Path(exc.path)).unlink(missing_ok=True)
                    raise
        return ready

    def _start(self, plan: SplitPlan) -> None:
        """A split's index is in: 2. its special images, 3. its layout, 4. its writes."""
        self.clock.mark(f"{plan.split} indexed")
        if plan.split == "train":
            self.counts["special"] = self.specials.apply(plan)
        lay_out(plan, self.num_shards, self.file_format)
        self.version_dir.mkdir(parents=True, exist_ok=True)
        paths = [str(self.version_dir / name) for name in plan.shard_names]
        every, todo, split_journal = self._work(plan, paths)
        self.journals[plan.split] = split_journal
        self.counts["units"] += len(every)
        self.counts["todo"] += len(todo)
        log.info("engine: %s laid out (%d records, %d shards): writing %d units of %d",
                 plan.split, len(plan), plan.num_shards, len(todo), len(every))  # fmt: skip
        procs.release_free_memory()  # (the index parts and the layout's temporaries are gone now)
        if self.before_write is not None:
            self.before_write(plan.tar_path)
        self.clock.mark(f"{plan.split} laid out")
        self.writes.add(plan.split, todo, split_journal, lambda: self.clock.mark(f"{plan.split} written"))

    def _work(
        self, plan: SplitPlan, paths: list[str]
    ) -> tuple[list[schedule.Work], list[schedule.Work], journal.Journal]:
        """The split's work (all of it, and what is left of it) and its journal; shard files preallocated."""
        fp = fingerprint(plan, self.version, self.file_format)
        split_journal = journal.open_journal(self.work_dir, self.version_dir, plan.split, fp)
        if split_journal.resumed and not all(os.path.exists(path) for path in paths):
            split_journal.close()  # some shard files are gone: start over
            split_journal = journal.open_journal(self.work_dir, self.version_dir, plan.split, fp, fresh=True)
        for path, size in zip(paths, plan.shard_file_sizes, strict=True):
            if not (split_journal.resumed and os.path.exists(path)):
                write.preallocate(path, size)
        # O_DIRECT for a tar the index did not read (the train tar; a listed one): no page cache for bytes read once
        direct = plan.split == "train" or plan.split in self.index.staged
        units = schedule.make_units(plan, paths, self.unit_bytes, direct, self.workers, self.file_format)
        if self.file_format == "array_record":
            units = schedule.interleave(units, schedule.frame_jobs(plan, paths))
        return units, [unit for unit in units if unit.key not in split_journal.done], split_journal

    def _finish(self) -> None:
        """5. Every shard on disk (fdatasync'd by the workers), TFDS's metadata, and the build renamed into place.
        (Syncing a split's shards as soon as it is written, during the train tar's index, was tried: no faster at
        95k, and more CPU.)"""
        paths = [str(self.version_dir / name) for plan in self.plans for name in plan.shard_names]
        n = min(self.workers, len(paths))
        _ = list(self.pool.map(write.sync_files, [paths[i::n] for i in range(n)]))
        self.clock.mark("synced")
        splits = [(p.split, p.shard_lengths, p.total_size) for p in self.plans]
        assert self.metadata is not None
        self.metadata.write(self.version_dir, splits)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.version_dir, self.target)
        fsync_dir(self.target.parent)
        for split_journal in self.journals.values():
            split_journal.close()

    def _stats(self) -> dict[str, Any]:
        total = round(time.monotonic() - self.clock.start, 3)
        stats = {
            "seconds": total,
            "phases": self.clock.phases,
            "timeline": self.clock.events,
            "workers": self.workers,
            "examples": {p.split: len(p) for p in self.plans},
            "shards": {p.split: p.num_shards for p in self.plans},
            "bytes_written": self.writes.written,
            "units_resumed": self.counts["units"] - self.counts["todo"],
            "special_images": self.counts["special"],
            "member_lists": sorted(self.index.staged),  # splits whose headers staging had listed (none read here)
        }
        log.info("engine: built %s in %.2f s: %s", self.target, total, json.dumps(stats["examples"]))
        return stats


def build_engine(manual_dir: Path, data_dir: Path, version: str, file_format: str, workers: int | None) -> None:
    """The `prepare.ENGINES` signature."""
    build(manual_dir, data_dir, version, file_format, workers)
