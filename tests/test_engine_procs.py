"""The engine's worker processes (`engine/procs.py`)."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from imagenet_fleet.engine import procs


def test_workers_run_below_the_builds_own_priority() -> None:
    """The writers yield the cores to what they wait on (the build's process, the CMYK/PNG helper) and to the
    host's other work: each worker is WORKER_NICE nicer than the process that started it."""
    here = os.nice(0)
    with ProcessPoolExecutor(2, mp_context=procs.worker_context(), initializer=procs.worker_init) as pool:
        niceness = set(pool.map(os.nice, [0, 0, 0, 0]))
    assert niceness == {min(19, here + procs.WORKER_NICE)}
    assert os.nice(0) == here  # (the caller's own priority is left alone)
