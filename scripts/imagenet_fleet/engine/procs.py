"""Starting worker processes safely from any caller.

- Workers come from a fork server (a clean interpreter), not from the caller, which may hold TensorFlow's threads
  (forking those deadlocks or crashes).
- The fork server preloads only the header indexer (no NumPy): the workers start indexing ~0.3 s sooner; each then
  imports the writers (NumPy) in the background while its index reads wait on the disk.
- Children re-import the parent's `__main__` by path: the repo's CLIs (`scripts/*.py`) run `main()` only under an
  `if __name__ == "__main__"` guard, so that is harmless.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.context
import threading

PRELOAD = ["imagenet_fleet.engine.tarindex"]
BACKGROUND = "imagenet_fleet.engine.write"


def worker_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_init() -> None:
    """Runs first in every worker."""
    threading.Thread(target=importlib.import_module, args=(BACKGROUND,), daemon=True).start()
