"""The CMYK/PNG re-encoding helper's own process (`special.Converter` starts it): it loads TF's kernels (`tfops`),
warms them up, then re-encodes the images that arrive on its pipe until the pipe is closed.

Its start is on the build's critical path (the train split's layout waits for these images' new sizes), so it
imports only `tfops`, pickle and concurrent.futures: ~0.04 s, against ~0.09 s through `special`, the engine's
side, which brings multiprocessing (its `Connection` alone: ~15 ms more than the framing below) and the dataset's
facts. A message either way is an 8-byte length, then a pickle: to the helper, a list of (name, kind, bytes)
(`kind`: "cmyk", "png", or None to pass the bytes through), or None to stop; from it, ("ok", [(name, bytes)]),
("bad image", why) or ("error", why).
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from imagenet_fleet.engine import tfops

_LENGTH = 8


def send(fd: int, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(_LENGTH, "little") + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the pipe was closed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def receive(fd: int) -> Any:
    """The next message; EOFError once the other end is closed."""
    return pickle.loads(_read_exactly(fd, int.from_bytes(_read_exactly(fd, _LENGTH), "little")))


def reencode(tf: tfops.Eager, kind: str | None, data: bytes) -> bytes:
    """The imagenet2012 builder's `_fix_image` (versions >= 3.0.0, TFDS 4.9.10) for an image of that kind: its
    `jpeg_cmyk_to_rgb` / `png_to_jpeg` are TF ops, run here through TF's C API; the tests compare the results with
    TFDS's own build, byte for byte (records) and with `_fix_image` itself."""
    if kind == "cmyk":
        return tfops.jpeg_cmyk_to_rgb(tf, data)
    if kind == "png":
        return tfops.png_to_jpeg(tf, data)
    return data


def tiny_png() -> bytes:
    """A 2x2 black RGB PNG (to warm TF's kernels up before the real images arrive)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + bytes(6) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _named(tf: tfops.Eager, item: tuple[str, str | None, bytes]) -> tuple[str, bytes]:
    name, kind, data = item
    try:
        return name, reencode(tf, kind, data)
    except tfops.TFError as exc:
        raise tfops.TFError(f"{name}: {exc}") from None


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's main: load TF's kernels and warm them up, then convert what arrives until None (or until the
    parent is gone)."""
    try:
        tf = tfops.load()
        tfops.png_to_jpeg(tf, tiny_png())
        with ThreadPoolExecutor(os.cpu_count() or 1) as threads:  # (TF's ops run outside the GIL)
            while (items := receive(read_fd)) is not None:
                try:
                    send(write_fd, ("ok", list(threads.map(lambda item: _named(tf, item), items))))
                except tfops.TFError as exc:
                    send(write_fd, ("bad image", str(exc)))
                    return
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises it
        send(write_fd, ("error", f"{type(exc).__name__}: {exc}"))
