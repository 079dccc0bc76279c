"""The 23 images TFDS re-encodes (22 CMYK JPEGs, 1 PNG), re-encoded as the builder's `_fix_image` does.

Their new sizes decide where every record after them in their shards goes, so they are converted before the layout.
That needs TensorFlow's image ops: a helper process (a fresh interpreter that holds none of this process's
state) starts as soon as the train tar is known to hold any of those synsets (or before the engine is imported,
where the train tar is staged: `start_early`), loads TF's kernels through its C API
(`tfops`: ~0.25 s, against ~4.9 s of CPU for `import tensorflow`) and warms them up while the tars are indexed, then
converts the images when they arrive and exits, so its memory is held only that long.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imagenet_fleet import imagenet
from imagenet_fleet.engine import reencoder
from imagenet_fleet.errors import UserError


def special_names() -> frozenset[str]:
    return imagenet.builder_facts().special_images


def special_synsets() -> frozenset[str]:
    return frozenset(imagenet.synset_of(name) for name in special_names())


def kind_of(name: str) -> str | None:
    """How the builder's `_fix_image` re-encodes this image: "cmyk", "png", or None (it leaves it as it is)."""
    facts = imagenet.builder_facts()
    return "cmyk" if name in facts.cmyk_images else "png" if name in facts.png_images else None


_HELPER = (
    "import sys; sys.path.insert(0, sys.argv[1])\n"
    "from imagenet_fleet.engine import reencoder\n"
    "reencoder.serve(int(sys.argv[2]), int(sys.argv[3]))"
)


class Converter:
    """Runs `_fix_image` for the special images in a helper process started early."""

    def __init__(self) -> None:
        # a fresh interpreter (safe whatever this process holds) that imports only what it needs (`reencoder`),
        # started as a plain command: multiprocessing's spawn would first re-import the caller's __main__, ~0.5 s
        # more before the kernels start loading
        child_read, self._write_fd = os.pipe()
        self._read_fd, child_write = os.pipe()
        scripts = str(Path(__file__).resolve().parents[2])
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _HELPER, scripts, str(child_read), str(child_write)],
                pass_fds=[child_read, child_write],
            )
        except BaseException:
            os.close(self._write_fd)
            os.close(self._read_fd)
            raise
        finally:
            os.close(child_read)
            os.close(child_write)
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="imagenet-special-send")
        self._sent: list[Future[None]] = []
        self._lock = threading.Lock()  # (closed by the collector thread or by the build's, whichever comes first)
        self._closed = False

    def submit(self, items: list[tuple[str, bytes]]) -> None:
        """Hand (name, bytes) pairs to the helper; `result()` collects them, re-encoded. Sent by a thread: the pipe
        holds 64 KB, and the helper reads only once its kernels are loaded (a send from the caller's thread stalled
        the build's main loop ~0.8 s there)."""
        message = [(name, kind_of(name), data) for name, data in items]
        self._sent.append(self._sender.submit(reencoder.send, self._write_fd, message))

    def result(self) -> dict[str, bytes]:
        """name -> re-encoded bytes of the oldest `submit` not collected yet (blocks until the helper has them)."""
        try:
            self._sent.pop(0).result()
            status, payload = reencoder.receive(self._read_fd)
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
        """Stop the helper. A send still blocked on the pipe fails then (its reader is gone), and a `result()`
        waiting on the other one sees its end (the helper held its only write end)."""
        with self._lock:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._sender.shutdown(wait=True)
            if not self._closed:
                self._closed = True
                os.close(self._write_fd)
                os.close(self._read_fd)


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
