"""The 23 images TFDS re-encodes (22 CMYK JPEGs, 1 PNG), re-encoded as the builder's `_fix_image` does.

Their new sizes decide where every record after them in their shards goes, so they are converted before the layout.
That needs TensorFlow's image ops: a helper process (a fresh interpreter that holds none of this process's
state) starts as soon as the train tar is known to hold any of those synsets (or before the engine is imported,
where the train tar is staged: `start_early`), loads TF's kernels through its C API
(`tfops`: ~0.25 s, against ~4.9 s of CPU for `import tensorflow`) and warms them up while the tars are indexed, then
converts the images when they arrive and exits, so its memory is held only that long.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imagenet_fleet import imagenet
from imagenet_fleet.engine import tfops
from imagenet_fleet.errors import UserError


def special_names() -> frozenset[str]:
    return imagenet.builder_facts().special_images


def special_synsets() -> frozenset[str]:
    return frozenset(imagenet.synset_of(name) for name in special_names())


def reencode(tf: tfops.Eager, name: str, data: bytes) -> bytes:
    """The imagenet2012 builder's `_fix_image` (versions >= 3.0.0, TFDS 4.9.10): its `jpeg_cmyk_to_rgb` /
    `png_to_jpeg` are TF ops, run here through TF's C API (`tfops`); the tests compare the result with TFDS's own
    build, byte for byte (records) and with `_fix_image` itself."""
    facts = imagenet.builder_facts()
    if name in facts.cmyk_images:
        return tfops.jpeg_cmyk_to_rgb(tf, data)
    if name in facts.png_images:
        return tfops.png_to_jpeg(tf, data)
    return data


def _reencode_named(tf: tfops.Eager, name: str, data: bytes) -> bytes:
    try:
        return reencode(tf, name, data)
    except tfops.TFError as exc:
        raise tfops.TFError(f"{name}: {exc}") from None


def tiny_png() -> bytes:
    """A 2x2 black RGB PNG (to warm TF's kernels up before the real images arrive)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + bytes(6) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def serve(fd: int) -> None:
    """The helper process's main (`Converter`): load TF's kernels and warm them up, then convert what arrives on
    the connection `fd`, until None (or the parent is gone)."""
    conn = multiprocessing.connection.Connection(fd)
    try:
        tf = tfops.load()
        tfops.png_to_jpeg(tf, tiny_png())
        with ThreadPoolExecutor(os.cpu_count() or 1) as threads:  # (the ops run outside the GIL)
            while (items := conn.recv()) is not None:
                try:
                    out = list(threads.map(lambda item: (item[0], _reencode_named(tf, *item)), items))
                except tfops.TFError as exc:
                    conn.send(("bad image", str(exc)))
                    return
                conn.send(("ok", out))
    except EOFError:
        pass  # the parent is gone
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


_HELPER = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from imagenet_fleet.engine import special\n"
    "special.serve(int(sys.argv[2]))"
)


class Converter:
    """Runs `_fix_image` for the special images in a helper process started early."""

    def __init__(self) -> None:
        # a fresh interpreter (safe whatever this process holds), started as a plain command: multiprocessing's
        # spawn would first re-import the caller's __main__, ~0.5 s more before the kernels start loading
        self._conn, child = multiprocessing.Pipe()
        scripts = str(Path(__file__).resolve().parents[2])
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _HELPER, scripts, str(child.fileno())], pass_fds=[child.fileno()]
            )
        finally:
            child.close()
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="imagenet-special-send")
        self._sent: list[Future[None]] = []

    def submit(self, items: list[tuple[str, bytes]]) -> None:
        """Hand (name, bytes) pairs to the helper; `result()` collects them, re-encoded. Sent by a thread: the pipe
        holds 64 KB, and the helper reads only once its kernels are loaded (a send from the caller's thread stalled
        the build's main loop ~0.8 s there)."""
        self._sent.append(self._sender.submit(self._conn.send, items))

    def result(self) -> dict[str, bytes]:
        """name -> re-encoded bytes of the oldest `submit` not collected yet (blocks until the helper has them)."""
        try:
            self._sent.pop(0).result()
            status, payload = self._conn.recv()
        except (EOFError, OSError):  # (the pipe broke: it is gone)
            self.close()
            raise RuntimeError("the image re-encoding helper died (out of memory?)") from None
        if status == "bad image":
            self.close()
            raise UserError(f"TensorFlow cannot re-encode {payload}", "stage the train tar again (it is damaged)")
        if status != "ok":
            self.close()
            raise RuntimeError(f"re-encoding the CMYK/PNG images failed: {payload}")
        return dict(payload)

    def convert(self, items: list[tuple[str, bytes]]) -> dict[str, bytes]:
        self.submit(items)
        return self.result()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()  # (a send still blocked on the pipe fails now)
        self._sender.shutdown(wait=True)


_early: Converter | None = None


def start_early(manual_dir: Path) -> None:
    """Start the helper now, where the train tar is staged, before the caller imports the engine (NumPy and the
    rest: ~0.3 s in which the kernels load too). The build takes it over (`take_early`), or closes it where the
    tar holds none of the special images' synsets."""
    global _early
    if _early is None and (manual_dir / imagenet.TAR_NAMES["train"]).is_file():
        _early = Converter()


def take_early() -> Converter | None:
    """The helper `start_early` started, if any (once)."""
    global _early
    converter, _early = _early, None
    return converter


def close_early() -> None:
    """Close the helper `start_early` started, if no build took it over."""
    if (converter := take_early()) is not None:
        converter.close()
