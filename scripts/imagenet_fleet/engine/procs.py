"""Starting worker processes safely from any caller.

- Workers are forked from the caller when that is safe (one thread, no TensorFlow loaded: the CLI's case), which
  costs nothing; otherwise (a caller that may hold TensorFlow's threads, whose fork deadlocks or crashes: a test
  process, say) they come from a fork server, a clean interpreter (~0.3 s more at start).
- The fork server preloads only the header indexer; each worker imports the writers in the background while its
  index reads wait on the disk. Neither needs NumPy or TFDS.
- Children re-import the parent's `__main__` by path: the repo's CLIs (`scripts/*.py`) run `main()` only under an
  `if __name__ == "__main__"` guard, so that is harmless.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import multiprocessing
import multiprocessing.context
import sys
import threading

PRELOAD = ["imagenet_fleet.engine.tarindex"]
BACKGROUND = "imagenet_fleet.engine.write"


def worker_context() -> multiprocessing.context.BaseContext:
    if threading.active_count() == 1 and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_init() -> None:
    """Runs first in every worker."""
    threading.Thread(target=importlib.import_module, args=(BACKGROUND,), daemon=True).start()


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None  # (musl, macOS: nothing to do)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`). After a split's layout the build's
    process has freed ~150 MB of temporary arrays at ILSVRC2012's size, but glibc keeps freed heap memory mapped: the
    process would hold it through the whole write pass."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
