"""Starting worker processes safely from any caller.

- Workers come from a fork server (a clean interpreter), not from the caller, which may hold TensorFlow's threads
  (forking those deadlocks or crashes).
- Workers run at a low priority (`WORKER_NICE`): on a small host they would otherwise slow the helper that
  re-encodes the CMYK/PNG images (importing TensorFlow: seconds of CPU), which is on the critical path; the writers
  use whatever CPU it leaves (on a large host, cores to spare, it changes nothing).
- Children re-import the parent's `__main__` by path: the repo's CLIs (`scripts/*.py`) run `main()` only under an
  `if __name__ == "__main__"` guard, so that is harmless.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os

PRELOAD = ["imagenet_fleet.engine.write", "imagenet_fleet.engine.tarindex"]
WORKER_NICE = int(os.environ.get("IMAGENET_FLEET_WORKER_NICE", "19"))


def worker_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_init() -> None:
    """Runs first in every worker."""
    os.nice(WORKER_NICE)
