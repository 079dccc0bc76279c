"""The parallel engine: index the tars' headers, lay the records out as TFDS would, write each record once.

Phases (logged with their times):
1. index   — header reads only, all chains concurrently, in the worker processes; meanwhile the main process imports
             TFDS (no TensorFlow) and, if the train tar has the CMYK/PNG synsets, a helper starts importing TF;
2. layout  — TFDS's order, shard count, boundaries and names; every record's offset, with the CMYK/PNG images at
             their tar sizes for now; shard files preallocated;
3. write   — one sequential pass over each tar in work units, each record `pwritev`'d into place: every record but
             those at or after a CMYK/PNG image in its shard (most of them on real data: 23 images, 1,024 shards);
4. special — the re-encoded images arrive (the helper converted them meanwhile; the complete shards are fdatasync'd
             while we wait): the affected shards are resized and their remaining records written (a second read of
             those records' tar bytes: ~1% of the train tar on real data, ~half of it on the 12k bench sample);
5. finish  — (ArrayRecord: convert), fdatasync, TFDS metadata, rename into `<data_dir>/imagenet2012/<version>`.

The workers run at a low priority: the helper's TF import is on the critical path on a small host (`procs`).

Resume: the work happens in a stable folder beside `data_dir` (`work_dir`), with a journal of finished units
headed by the plan's fingerprint (units of pass 3 are `A:<split>:<first record>`, of pass 4 `B:…`, or `F:…` in the
rare case where the new sizes change the train shard count and train is written again). A re-run with the same
inputs skips the journaled units; with different inputs it starts over. Output bytes depend only on the tars (not
on `workers`, timing, or which units were resumed).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from imagenet_fleet import imagenet
from imagenet_fleet.atomic import fsync_dir
from imagenet_fleet.engine import arrayrecord, procs, records, special, tarindex, write
from imagenet_fleet.engine.plan import SplitPlan, dependent, fingerprint, lay_out, units
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)

UNIT_BYTES = 32 << 20  # tar bytes per write unit (the resume granularity)
FILE_FORMATS = ("tfrecord", "array_record")
JOURNAL = "journal.jsonl"


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def default_work_dir(data_dir: Path, version: str, file_format: str) -> Path:
    """Beside `data_dir` (not inside it: prepare.py builds into a fresh temp data dir each run)."""
    return data_dir.absolute().parent / f".{imagenet.DATASET}-{version}-{file_format}.engine-partial"


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: dict[str, float] = {}

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


def _train_chains(path: str) -> tuple[list[tarindex.Chain], set[str]]:
    """The outer train tar's members (read here: one header per synset) as chains over the inner tars."""
    label_index = imagenet.label_index()
    size = os.path.getsize(path)
    fd = tarindex.open_random(path)
    try:
        members = tarindex.walk(fd, tarindex.Chain(path, 0, size, "train"))
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
        chains.append(tarindex.Chain(path, offset, offset + length, "train", label=label_index[synset]))
    return chains, synsets


def _plan_from(split: str, path: str, parts: list[tarindex.ChainIndex], labels: list[int] | None = None) -> SplitPlan:
    names: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    digests: list[bytes] = []
    rec: list[int] = []
    for part in parts:
        names += part.names
        offsets += part.offsets
        sizes += part.sizes
        digests += part.digests
        rec += part.record_sizes
    n = len(names)
    if labels is None:
        labels = []
        for part in parts:
            if part.label is None:
                raise ValueError("a chain without labels needs explicit labels")
            labels += [part.label] * len(part.names)
    label_array = np.asarray(labels, dtype=np.int64)
    if len(rec) != n:
        rec = [
            records.record_size(name, int(label), size)
            for name, label, size in zip(names, label_array, sizes, strict=True)
        ]
    return SplitPlan(
        split=split,
        tar_path=path,
        names=names,
        offsets=np.asarray(offsets, dtype=np.int64),
        sizes=np.asarray(sizes, dtype=np.int64),
        labels=label_array,
        digests=np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(n, 16),
        record_sizes=np.asarray(rec, dtype=np.int64),
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


# ---------------------------------------------------------------- journal


class _Journal:
    """Finished units, one JSON line each, after a header line with the plan's fingerprint."""

    def __init__(self, path: Path, fp: str) -> None:
        self.done: set[str] = set()
        self.resumed = False
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and _json_or_none(lines[0]) == {"fingerprint": fp}:
            for line in lines[1:]:
                entry = _json_or_none(line)
                if entry and "done" in entry:
                    self.done.add(entry["done"])
            self.resumed = True
            self._f = path.open("a")
        else:
            self._f = path.open("w")
            self._f.write(json.dumps({"fingerprint": fp}) + "\n")
            self._f.flush()

    def add(self, key: str) -> None:
        self._f.write(json.dumps({"done": key}) + "\n")
        self._f.flush()  # in the page cache: survives SIGKILL of this process
        self.done.add(key)

    def close(self) -> None:
        self._f.close()


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


@contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    with (path / ".lock").open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another engine run is using {path}", "wait for it to finish") from None
        yield


# ---------------------------------------------------------------- the engine


def _run_units(pool: ProcessPoolExecutor, todo: list[write.Unit], journal: _Journal, workers: int) -> int:
    """Keep about two units per worker in flight (bounded memory); journal each as it finishes."""
    pending: set[Future[tuple[str, int, int]]] = set()
    written = 0
    queue = iter(todo)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < 2 * workers:
            unit = next(queue, None)
            if unit is None:
                exhausted = True
                break
            pending.add(pool.submit(write.write_unit, unit))
        if not pending:
            break
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            key, _, nbytes = future.result()
            journal.add(key)
            written += nbytes
    return written


def _make_units(
    plan: SplitPlan, shard_paths: list[str], unit_bytes: int, idx: np.ndarray, phase: str
) -> list[write.Unit]:
    # evict the tar's bytes once written only where the page cache will be under pressure: no gain otherwise
    drop = os.path.getsize(plan.tar_path) > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    out = []
    for sel in units(plan, unit_bytes, idx):
        out.append(
            write.Unit(
                key=f"{phase}:{plan.split}:{int(sel[0])}",
                tar_path=plan.tar_path,
                shard_paths=shard_paths,
                names=[plan.names[i] for i in sel],
                offsets=plan.offsets[sel],
                sizes=plan.sizes[sel],
                labels=plan.labels[sel],
                shard_of=plan.shard_of[sel],
                dest=plan.dest[sel],
                specials={k: plan.specials[int(i)] for k, i in enumerate(sel) if int(i) in plan.specials},
                drop=drop,
            )
        )
    return out


def _todo(
    plan: SplitPlan, shard_paths: list[str], unit_bytes: int, idx: np.ndarray, phase: str, journal: _Journal
) -> tuple[list[write.Unit], int]:
    """The units of `idx` not journaled yet, and how many units there are in all."""
    every = _make_units(plan, shard_paths, unit_bytes, idx, phase)
    return [u for u in every if u.key not in journal.done], len(every)


def _stage_paths(version_dir: Path, plan: SplitPlan, file_format: str) -> list[str]:
    """Where the engine writes the split's TFRecord shards (ArrayRecord: converted from these at the end)."""
    return [str(version_dir / name.replace(f".{file_format}-", ".tfrecord-")) for name in plan.shard_names]


def _open_journal(work_dir: Path, fp: str, fresh: bool = False) -> _Journal:
    """The work folder's journal if it continues this build (same fingerprint); else a new one, on a clean slate."""
    path = work_dir / JOURNAL
    first = path.read_text().split("\n", 1)[0] if path.exists() else ""
    if fresh or (path.exists() and (_json_or_none(first) or {}).get("fingerprint") != fp):
        log.info("engine: %s holds another build's work: starting over", work_dir)
        shutil.rmtree(work_dir / imagenet.DATASET, ignore_errors=True)
        path.unlink()
    return _Journal(path, fp)


def _rest_of_train(
    train: SplitPlan,
    stage: dict[str, list[str]],
    version_dir: Path,
    file_format: str,
    unit_bytes: int,
    later: np.ndarray,
    moved: bool,
    journal: _Journal,
) -> tuple[list[write.Unit], int]:
    """Once the re-encoded sizes are known: resize the train shards, and the units of the records not written yet.

    Normally only the records at or after a re-encoded image in its shard (`later`) are left. If the new sizes
    changed the shard count (`moved`: rare, near a shard-count threshold), every train record is written again."""
    if not moved:
        for path, size in zip(stage["train"], train.shard_file_sizes, strict=True):
            write.preallocate(path, size, keep=True)
        return _todo(train, stage["train"], unit_bytes, np.flatnonzero(later), "B", journal)
    log.info("engine: the re-encoded images change the train shard count: writing train again")
    fresh = not any(key.startswith("F:") for key in journal.done)
    if fresh:
        for path in stage["train"]:
            if os.path.exists(path):
                os.unlink(path)
    stage["train"] = _stage_paths(version_dir, train, file_format)
    for path, size in zip(stage["train"], train.shard_file_sizes, strict=True):
        write.preallocate(path, size, keep=not fresh and os.path.exists(path))
    return _todo(train, stage["train"], unit_bytes, np.arange(len(train), dtype=np.int64), "F", journal)


class _Fixing:
    """The special images' re-encoding: a thread waits on the helper process while the writers work."""

    def __init__(self, converter: special.Converter, plan: SplitPlan, wanted: list[int]) -> None:
        fd = os.open(plan.tar_path, os.O_RDONLY)
        try:
            items = [(plan.names[i], os.pread(fd, int(plan.sizes[i]), int(plan.offsets[i]))) for i in wanted]
        finally:
            os.close(fd)
        self._plan, self._wanted = plan, wanted
        self._result: dict[str, bytes] | BaseException = RuntimeError("the re-encoding did not finish")

        def run() -> None:
            try:
                self._result = converter.convert(items)
            except BaseException as exc:  # noqa: BLE001 - raised again by apply()
                self._result = exc

        self._thread = threading.Thread(target=run, name="imagenet-special", daemon=True)
        self._thread.start()

    def apply(self) -> None:
        """Wait for the re-encoded images; put them and their record sizes into the plan."""
        waited = time.monotonic()
        self._thread.join()
        log.info("engine: waited %.2f s for the re-encoded images", time.monotonic() - waited)
        if isinstance(self._result, BaseException):
            raise self._result
        fixed = self._result
        plan = self._plan
        for i in self._wanted:
            plan.specials[i] = fixed[plan.names[i]]
            plan.record_sizes[i] = records.record_size(plan.names[i], int(plan.labels[i]), len(plan.specials[i]))


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
    before_write: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Write `<data_dir>/imagenet2012/<version>/` from the tars in `manual_dir`; returns statistics.

    `num_shards` mirrors TFDS's `DownloadConfig(num_shards=...)` (tests); `before_write` is called before each
    write pass (the benchmark evicts the tars from the page cache there).
    """
    if file_format not in FILE_FORMATS:
        raise UserError(f"unknown file format {file_format!r}", f"pass one of {', '.join(FILE_FORMATS)}")
    workers = workers or default_workers()
    tars = {s: manual_dir / n for s, n in imagenet.TAR_NAMES.items() if (manual_dir / n).is_file()}
    if not tars:
        raise UserError(f"no ILSVRC2012 tar in {manual_dir}", f"stage one of {', '.join(imagenet.TAR_NAMES.values())}")
    target = data_dir / imagenet.DATASET / version
    if target.exists():
        raise UserError(f"{target} already exists", "remove it, or build into another data dir")
    work_dir = work_dir or default_work_dir(data_dir, version, file_format)
    return _build(manual_dir, tars, target, data_dir, version, file_format, workers, work_dir, num_shards,
                  unit_bytes, before_write)  # fmt: skip


def _build(
    manual_dir: Path,
    tars: dict[str, Path],
    target: Path,
    data_dir: Path,
    version: str,
    file_format: str,
    workers: int,
    work_dir: Path,
    num_shards: int | None,
    unit_bytes: int,
    before_write: Callable[[], None] | None,
) -> dict[str, Any]:
    clock = _Clock()
    converter: special.Converter | None = None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=procs.worker_context(), initializer=procs.worker_init)
    try:
        # 1. index: long serial chains (flat tars) first, then the train tar's inner tars in batches.
        futures: dict[str, list[Future[list[tarindex.ChainIndex]]]] = {}
        train_chains: list[tarindex.Chain] = []
        for split in ("validation", "test"):
            if split in tars:
                path = str(tars[split])
                chain = tarindex.Chain(
                    path, 0, os.path.getsize(path), split,
                    label=imagenet.TEST_LABEL if split == "test" else None,
                    keep_raw_names=split == "validation", flat=True,
                )  # fmt: skip
                futures[split] = [pool.submit(tarindex.index_chains, [chain])]
        if "train" in tars:
            train_chains, synsets = _train_chains(str(tars["train"]))
            if synsets & special.special_synsets():
                converter = special.Converter()
            batches = _batches(train_chains, 4 * workers)
            futures["train"] = [pool.submit(tarindex.index_chains, batch) for batch in batches]
        from imagenet_fleet.engine import metadata  # TFDS (no TensorFlow), imported while the disk works

        builder = metadata.make_builder(work_dir, version, file_format)
        from tensorflow_datasets.core.utils import shard_utils

        shard_config = shard_utils.ShardConfig(num_shards=num_shards)
        plans: list[SplitPlan] = []
        for split in imagenet.SPLITS:
            if split not in futures:
                continue
            parts = [part for f in futures[split] for part in f.result()]
            labels = _validation_labels(str(tars[split]), parts[0]) if split == "validation" else None
            plans.append(_plan_from(split, str(tars[split]), parts, labels))
        clock.lap("index")

        # 2. layout, with the CMYK/PNG images at their tar sizes for now: a helper re-encodes them meanwhile
        train = next((p for p in plans if p.split == "train"), None)
        names = special.special_names()
        wanted = [i for i, name in enumerate(train.names) if name in names] if train else []
        fixing: _Fixing | None = None
        if wanted and train is not None:
            converter = converter or special.Converter()
            fixing = _Fixing(converter, train, wanted)
        version_dir = work_dir / imagenet.DATASET / version
        for plan in plans:
            lay_out(plan, shard_config, builder._get_filename_template(split_name=plan.split))
        later = {p.split: dependent(p, wanted if p is train else []) for p in plans}
        if train is not None:
            log.info("engine: %d of %d train records wait for the re-encoded images", later["train"].sum(), len(train))
        fp = fingerprint(plans, version, file_format)
        with _locked_dir(work_dir):
            journal = _open_journal(work_dir, fp)
            version_dir.mkdir(parents=True, exist_ok=True)
            stage = {p.split: _stage_paths(version_dir, p, file_format) for p in plans}
            pending = [p for p in plans if f"shards:{p.split}" not in journal.done]
            if journal.resumed and not all(os.path.exists(f) for p in pending for f in stage[p.split]):
                journal.close()  # some shard files are gone: start over
                journal = _open_journal(work_dir, fp, fresh=True)
                version_dir.mkdir(parents=True, exist_ok=True)
                pending = list(plans)
            for plan in pending:
                for path, size in zip(stage[plan.split], plan.shard_file_sizes, strict=True):
                    if not (journal.resumed and os.path.exists(path)):
                        write.preallocate(path, size)
            clock.lap("layout")

            # 3. write every record whose place does not depend on the re-encoded sizes
            if before_write is not None:
                before_write()
            todo: list[write.Unit] = []
            n_units = 0
            for plan in pending:
                t, n = _todo(plan, stage[plan.split], unit_bytes, np.flatnonzero(~later[plan.split]), "A", journal)
                todo, n_units = todo + t, n_units + n
            written = _run_units(pool, todo, journal, workers)
            clock.lap("write")

            # 4. the re-encoded images, and the records after them in their shards; meanwhile, the shards that are
            # complete already go to disk
            early: list[str] = []
            if file_format == "tfrecord":
                for plan in pending:
                    open_shards = set(plan.shard_of[later[plan.split]].tolist())
                    early += [path for k, path in enumerate(stage[plan.split]) if k not in open_shards]
            syncing = [pool.submit(write.sync_files, early[i::workers]) for i in range(workers) if early[i::workers]]
            if fixing is not None and train is not None:
                fixing.apply()
                before = (train.num_shards, train.shard_of.copy(), train.dest.copy())
                lay_out(train, shard_config, builder._get_filename_template(split_name="train"))
                keep = ~later["train"]
                moved = before[0] != train.num_shards or not (
                    (before[1][keep] == train.shard_of[keep]).all() and (before[2][keep] == train.dest[keep]).all()
                )
                if moved:
                    _ = [f.result() for f in syncing]  # (before train's shards are replaced)
                if any(p is train for p in pending):
                    t, n = _rest_of_train(train, stage, version_dir, file_format, unit_bytes, later["train"], moved,
                                          journal)  # fmt: skip
                    todo, n_units = todo + t, n_units + n
                    if before_write is not None and t:
                        before_write()
                    written += _run_units(pool, t, journal, workers)
            if converter is not None:
                converter.close()
                converter = None
            skipped = n_units - len(todo)
            clock.lap("special")

            # 5. finish
            final_paths: list[str] = []
            for plan in plans:
                finals = [str(version_dir / name) for name in plan.shard_names]
                if file_format == "array_record" and f"shards:{plan.split}" not in journal.done:
                    list(pool.map(arrayrecord.convert, stage[plan.split], finals))
                    journal.add(f"shards:{plan.split}")
                final_paths += finals
            synced = set(early)
            rest = [path for path in final_paths if path not in synced]
            syncing += [pool.submit(write.sync_files, rest[i::workers]) for i in range(workers) if rest[i::workers]]
            _ = [f.result() for f in syncing]
            metadata.write_metadata(builder, version_dir, [(p.split, p.shard_lengths, p.total_size) for p in plans])
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(version_dir, target)
            fsync_dir(target.parent)
            journal.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        clock.lap("finish")
    finally:
        if converter is not None:
            converter.close()
        pool.shutdown(wait=True, cancel_futures=True)
    total = round(time.monotonic() - clock.start, 3)
    stats = {
        "seconds": total,
        "phases": clock.phases,
        "workers": workers,
        "examples": {p.split: len(p) for p in plans},
        "shards": {p.split: p.num_shards for p in plans},
        "bytes_written": written,
        "units_resumed": skipped,
        "special_images": len(wanted),
    }
    log.info("engine: built %s in %.2f s: %s", target, total, json.dumps(stats["examples"]))
    return stats


def build_engine(manual_dir: Path, data_dir: Path, version: str, file_format: str, workers: int | None) -> None:
    """The `prepare.ENGINES` signature."""
    build(manual_dir, data_dir, version, file_format, workers)
