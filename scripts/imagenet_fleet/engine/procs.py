"""Starting worker processes safely from any caller.

- Workers come from a fork server (a clean interpreter), not from the caller, which may hold TensorFlow's threads
  (forking those deadlocks or crashes).
- The repo's CLIs (`scripts/*.py`) call `main()` at import, without an `if __name__ == "__main__"` guard, and
  spawn/forkserver children re-import the parent's `__main__` by path: while processes are launched, `__main__`'s
  `__file__` is hidden so the children do not run the CLI again.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PRELOAD = ["imagenet_fleet.engine.write", "imagenet_fleet.engine.tarindex"]


def worker_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@contextmanager
def hidden_main() -> Iterator[None]:
    """Launch processes inside this block: they will not re-import the caller's `__main__` script."""
    main = sys.modules.get("__main__")
    saved = main.__dict__.pop("__file__", None) if main is not None else None
    try:
        yield
    finally:
        if main is not None and saved is not None:
            main.__dict__["__file__"] = saved
