"""The 23 images TFDS re-encodes (22 CMYK JPEGs, 1 PNG), re-encoded as the builder's `_fix_image` does.

Their new sizes move the records after them in their shards, so those records are written once the sizes are known
(the others meanwhile). That needs TensorFlow, whose import and start cost seconds of CPU: a helper process
(spawned: a fresh interpreter, whose imports do not hold this process's GIL) starts as soon as the train tar is
known to hold any of those synsets, imports TF, warms it up on a tiny image, and converts the images when they
arrive. It exits afterwards, so its memory is held only that long.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any

from imagenet_fleet import imagenet


def special_names() -> frozenset[str]:
    return imagenet.builder_facts().special_images


def special_synsets() -> frozenset[str]:
    return frozenset(imagenet.synset_of(name) for name in special_names())


def reencode(tf: Any, name: str, data: bytes) -> bytes:
    """The imagenet2012 builder's `_fix_image` (versions >= 3.0.0, TFDS 4.9.10), without importing TFDS: its
    `jpeg_cmyk_to_rgb` / `png_to_jpeg` are these TF ops, run eagerly (`TFGraphRunner.run` under TF 2). Importing
    TFDS and making the builder would add most of a second of CPU to the critical path; the tests compare the
    result with TFDS's own build, byte for byte (records) and with `_fix_image` itself."""
    facts = imagenet.builder_facts()
    if name in facts.cmyk_images:
        image = tf.image.decode_jpeg(data).numpy()
    elif name in facts.png_images:
        image = tf.image.decode_png(data, channels=3).numpy()
    else:
        return data
    return bytes(tf.image.encode_jpeg(image, format="rgb", quality=100).numpy())


def _serve(conn: multiprocessing.connection.Connection) -> None:
    """Helper process: import TF and warm it up, then convert what arrives."""
    import contextlib
    import logging
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import tensorflow as tf

            # TF's first ops start its runtime (most of a second): run both conversions on a tiny image now
            tiny = tf.zeros([2, 2, 3], tf.uint8)
            facts = imagenet.builder_facts()
            reencode(tf, min(facts.png_images), tf.io.encode_png(tiny).numpy())
            reencode(tf, min(facts.cmyk_images), tf.io.encode_jpeg(tiny).numpy())
            items: list[tuple[str, bytes]] = conn.recv()
            out = [(name, reencode(tf, name, data)) for name, data in items]
        conn.send(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class Converter:
    """Runs `_fix_image` for the special images in a helper process started early."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: safe whatever this process holds
        self._conn, child = ctx.Pipe()
        self._proc: Any = ctx.Process(target=_serve, args=(child,), name="imagenet-special", daemon=True)
        self._proc.start()
        child.close()

    def convert(self, items: list[tuple[str, bytes]]) -> dict[str, bytes]:
        """name -> re-encoded bytes (blocks until the helper has them)."""
        self._conn.send(items)
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError("the image re-encoding helper died (out of memory?)") from None
        finally:
            self.close()  # (not join: TF's teardown at exit takes a second)
        if status != "ok":
            raise RuntimeError(f"re-encoding the CMYK/PNG images failed: {payload}")
        return dict(payload)

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
