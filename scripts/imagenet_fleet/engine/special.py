"""The 23 images TFDS re-encodes (22 CMYK JPEGs, 1 PNG), re-encoded by the builder's own `_fix_image`.

Their new sizes change the layout, so they are converted before the writers start. That needs TensorFlow, whose
import takes seconds: a helper process (spawned) starts importing it as soon as the train tar is known to hold any of those
synsets, while the headers are being indexed, and converts the images when they arrive. It exits afterwards, so
its memory is held only during that phase.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
from typing import Any

from imagenet_fleet import imagenet
from imagenet_fleet.engine import procs


def special_names() -> frozenset[str]:
    return imagenet.builder_facts().special_images


def special_synsets() -> frozenset[str]:
    return frozenset(imagenet.synset_of(name) for name in special_names())


def _serve(conn: multiprocessing.connection.Connection, version: str) -> None:
    """Helper process: import TF and the builder, then convert what arrives."""
    import contextlib
    import logging
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import tensorflow_datasets as tfds

            builder = tfds.builder(imagenet.DATASET, version=version, data_dir=os.devnull)
            import tensorflow  # noqa: F401  (the real import cost, paid before the images arrive)
        items: list[tuple[str, bytes]] = conn.recv()
        out = [(name, builder._fix_image(name, io.BytesIO(data)).read()) for name, data in items]
        conn.send(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class Converter:
    """Runs `_fix_image` for the special images in a helper process started early."""

    def __init__(self, version: str) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: safe whatever this process holds
        self._conn, child = ctx.Pipe()
        self._proc: Any = ctx.Process(target=_serve, args=(child, version), name="imagenet-special", daemon=True)
        with procs.hidden_main():
            self._proc.start()  # (the pipeline already hides it; this keeps Converter safe on its own)
        child.close()

    def convert(self, items: list[tuple[str, bytes]]) -> dict[str, bytes]:
        self._conn.send(items)
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError("the image re-encoding helper died (out of memory?)") from None
        finally:
            self._proc.join()
        if status != "ok":
            raise RuntimeError(f"re-encoding the CMYK/PNG images failed: {payload}")
        return dict(payload)

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
