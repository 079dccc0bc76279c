"""Starting worker processes safely from any caller.

- Workers are forked from the caller when that is safe (one thread, no TensorFlow loaded: the CLI's case), which
  costs nothing; otherwise (a caller that may hold TensorFlow's threads, whose fork deadlocks or crashes: a test
  process, say) they come from a fork server, a clean interpreter (~0.3 s more at start).
- The fork server preloads only the header indexer; each worker imports the writers in the background while its
  index reads wait on the disk. Neither needs NumPy or TFDS.
- Children re-import the parent's `__main__` by path: the repo's CLIs (`scripts/*.py`) run `main()` only under an
  `if __name__ == "__main__"` guard, so that is harmless.
- Workers run at a lower CPU priority (`WORKER_NICE`): what the writers wait on comes first where the cores are
  short, the build's own process (it hands out the work) and the CMYK/PNG helper (the train split's layout waits
  on its TensorFlow load); so does anything else the host runs, a training job say. On an idle host with cores to
  spare it changes nothing.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import multiprocessing
import multiprocessing.context
import os
import sys
import threading

PRELOAD = ["imagenet_fleet.engine.tarindex"]
BACKGROUND = "imagenet_fleet.engine.write"
# 2-core VM, 12k bench sample, 16 alternating runs: 2.50 s median against 2.70 at the same priority (the helper's
# images converted ~0.1 s sooner, the train pass no slower); 95k: no difference beyond the VM's noise
WORKER_NICE = 10


def worker_context() -> multiprocessing.context.BaseContext:
    if threading.active_count() == 1 and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_init() -> None:
    """Runs first in every worker."""
    os.nice(WORKER_NICE)  # (raising one's own niceness needs no privilege)
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
