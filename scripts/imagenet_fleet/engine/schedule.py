"""The writers' work, from the plan: work units (runs of a tar, each record to its place), ArrayRecord's frame jobs
(a shard's block headers, footer and postscript), and the queue that keeps them flowing to the worker processes."""

from __future__ import annotations

import functools
import logging
import os
import time
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagenet_fleet.engine import write
from imagenet_fleet.engine.journal import Journal
from imagenet_fleet.engine.plan import SplitPlan, units

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0  # at most one progress line this often (ILSVRC2012's train split takes minutes)


def ints(values: np.ndarray) -> array[int]:
    """A plain array: the workers never import NumPy (~0.3 s of CPU each at start)."""
    return array("q", values.astype(np.int64).tobytes())


def records_of(plan: SplitPlan, sel: np.ndarray) -> dict[str, Any]:
    """The records `sel` (indices in tar order) as a worker gets them: plain arrays, the special images' bytes."""
    return {
        "names": plan.names.take(sel),
        "offsets": ints(plan.offsets[sel]),
        "sizes": ints(plan.sizes[sel]),
        "labels": ints(plan.labels[sel]),
        "specials": {k: plan.specials[int(sel[k])] for k in np.flatnonzero(np.isin(sel, [*plan.specials])).tolist()},
    }


@dataclass(frozen=True)
class Work:
    """A work unit or frame job by its journal key, made only when it is handed to a worker: each carries its
    records' names and numbers, and ILSVRC2012's made all at once would hold ~100 MB until the end."""

    key: str
    make: Callable[[], write.Unit | write.FrameJob]


def make_units(
    plan: SplitPlan, shard_paths: list[str], unit_bytes: int, direct: bool, workers: int, file_format: str
) -> list[Work]:
    # evict the tar's bytes once written only where the page cache will be under pressure: no gain otherwise
    drop = os.path.getsize(plan.tar_path) > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    read_bytes = write.read_bytes(workers)

    def unit(start: int, end: int) -> write.Unit:
        sel = np.arange(start, end)
        return write.Unit(
            key=f"A:{plan.split}:{start}",
            tar_path=plan.tar_path,
            shard_paths=shard_paths,
            shard_of=ints(plan.shard_of[sel]),
            dest=ints(plan.dest[sel]),
            drop=drop,
            direct=direct,
            read_bytes=read_bytes,
            array_record=file_format == "array_record",
            **records_of(plan, sel),
        )

    return [Work(f"A:{plan.split}:{start}", functools.partial(unit, start, end))
            for start, end in units(plan, unit_bytes)]  # fmt: skip


def frame_jobs(plan: SplitPlan, paths: list[str]) -> list[Work]:
    """ArrayRecord: a job per shard for what it holds besides its records' chunks (`arrayrecord.write_frame`)."""
    order = np.argsort(plan.rank, kind="stable")
    ends = np.cumsum(plan.shard_lengths)

    def job(k: int) -> write.FrameJob:
        sel = order[ends[k] - plan.shard_lengths[k] : ends[k]]
        return write.FrameJob(f"F:{plan.split}:{k}", paths[k], ints(plan.record_sizes[sel]), ints(plan.dest[sel]))

    return [Work(f"F:{plan.split}:{k}", functools.partial(job, k)) for k in range(len(paths))]


def interleave(first: list[Work], second: list[Work]) -> list[Work]:
    """Both lists, each in its order, the second spread evenly through the first."""
    placed = [((i + 0.5) / len(first), 0, work) for i, work in enumerate(first)]
    placed += [((i + 0.5) / len(second), 1, work) for i, work in enumerate(second)]
    return [work for _, _, work in sorted(placed, key=lambda item: item[:2])]


@dataclass
class _Split:
    """A split's writes: what is left of them, the callback when none is, and what the progress lines say."""

    name: str
    total: int
    left: int
    when_done: Callable[[], None]
    started: float = field(default_factory=time.monotonic)
    written: int = 0


class Writes:
    """Write units in flight (about two per worker: bounded memory), each journaled as it finishes; a callback
    when all the units of one `add` are written; a progress line at most every `PROGRESS_SECONDS`."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int) -> None:
        self._pool, self._limit = pool, 2 * workers
        self._queue: deque[tuple[Work, Journal]] = deque()
        self._running: dict[Future[tuple[str, int, int]], Journal] = {}
        self._splits: dict[Journal, _Split] = {}
        self._last_line = time.monotonic()
        self.written = 0

    def add(self, split: str, todo: list[Work], journal: Journal, when_done: Callable[[], None]) -> None:
        if not todo:
            when_done()
            return
        self._splits[journal] = _Split(split, len(todo), len(todo), when_done)
        self._queue.extend((unit, journal) for unit in todo)
        self._top_up()

    def _top_up(self) -> None:
        while self._queue and len(self._running) < self._limit:
            work, journal = self._queue.popleft()
            self._running[self._pool.submit(write.run, work.make())] = journal

    @property
    def queued(self) -> int:
        """Units not handed to a worker yet."""
        return len(self._queue)

    @property
    def pending(self) -> set[Future[tuple[str, int, int]]]:
        return set(self._running)

    def take(self, future: Future[tuple[str, int, int]]) -> None:
        key, _, nbytes = future.result()
        journal = self._running.pop(future)
        journal.add(key)
        self.written += nbytes
        self._top_up()
        split = self._splits[journal]
        split.left -= 1
        split.written += nbytes
        if not split.left:
            self._splits.pop(journal).when_done()
        elif time.monotonic() - self._last_line >= PROGRESS_SECONDS:
            self._progress(split)

    def _progress(self, split: _Split) -> None:
        """One line: how far the split's writes are, and about how long the rest takes at their pace so far."""
        now = self._last_line = time.monotonic()
        done = split.total - split.left
        left_s = (now - split.started) / done * split.left
        percent = 100 * done // split.total
        log.info("engine: %s: %d of %d write jobs done (%d%%), %.2f GB written, about %d s left",
                 split.name, done, split.total, percent, split.written / 1e9, round(left_s))  # fmt: skip
