"""Build the TFDS imagenet2012 dataset from the ILSVRC2012 tars in a manual dir: preflight, idempotent, atomic.

- Preflight (instant, no TensorFlow import): the manual dir exists and holds at least one tar, every tar is a tar
  whose first member looks right and that ends with the end-of-archive marker (a cut-short download does not), the
  version can be built, the data dir's filesystem has room (>= SPACE_FACTOR x the tars).
- Idempotent: a complete build of this version made from the same inputs (names, sizes and mtimes of the tars,
  and the file format; recorded in `<data-dir>/imagenet2012/.<version>.inputs.json` once a build is in place) is
  left alone (`changed: false`).
- Atomic: every build goes to a temporary data dir beside the live one and is swapped in by rename (an atomic
  exchange where the kernel has one), so a reader never sees half a dataset and the old build stays until the new
  one is complete.
- Engines plug in through `ENGINES` (name -> build function with the `Engine` signature); `tfds` is the
  reference: TFDS's own builder.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from imagenet_fleet import cli, imagenet
from imagenet_fleet.atomic import atomic_write_json, fsync_dir
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)

Engine = Callable[[Path, Path, str, str, int | None], None]
"""build(manual_dir, data_dir, version, file_format, workers): write `<data_dir>/imagenet2012/<version>/`."""

FILE_FORMATS: tuple[str, ...] = ("tfrecord", "array_record")
SPACE_FACTOR = 2.2  # TFDS spills examples to bucket files, then writes shards: ~2x the tars, plus headroom
FIRST_MEMBER = {
    "train": imagenet.INNER_TAR_RE,
    "validation": imagenet.VAL_NAME_RE,
    "test": imagenet.TEST_NAME_RE,
}


def build_with_tfds(manual_dir: Path, data_dir: Path, version: str, file_format: str, workers: int | None) -> None:
    """The reference engine: TFDS's imagenet2012 builder, single process (`workers` is not used)."""
    import tensorflow_datasets as tfds

    if workers not in (None, 1):
        log.info("engine tfds runs in one process; --workers %s is ignored", workers)
    tfds.disable_progress_bar()
    builder = tfds.builder(imagenet.DATASET, data_dir=str(data_dir), version=version)
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints; stdout is reserved for the JSON summary
        builder.download_and_prepare(download_config=config, file_format=file_format)


def build_with_parallel(manual_dir: Path, data_dir: Path, version: str, file_format: str, workers: int | None) -> None:
    """The parallel engine (imagenet_fleet.engine): TFDS's records in TFDS's order, deterministic bytes, every core."""
    from imagenet_fleet.engine import special

    special.start_early(manual_dir)
    from imagenet_fleet.engine.pipeline import build_engine

    build_engine(manual_dir, data_dir, version, file_format, workers)


ENGINES: dict[str, Engine] = {"tfds": build_with_tfds, "parallel": build_with_parallel}


# ---------------------------------------------------------------- paths and state on disk


def dataset_dir(data_dir: Path) -> Path:
    return data_dir / imagenet.DATASET


def version_dir(data_dir: Path, version: str) -> Path:
    """Where TFDS reads the build: `<data_dir>/imagenet2012/<version>`."""
    return dataset_dir(data_dir) / version


def inputs_path(data_dir: Path, version: str) -> Path:
    """The record of what the live build was made from (outside the version folder)."""
    return dataset_dir(data_dir) / f".{version}.inputs.json"


def read_splits(build_dir: Path) -> dict[str, dict[str, int]]:
    """Per split: examples, shards, bytes, from the build's dataset_info.json (no TensorFlow needed)."""
    info = json.loads((build_dir / "dataset_info.json").read_text())
    splits: dict[str, dict[str, int]] = {}
    for split in info.get("splits", []):
        lengths = [int(n) for n in split.get("shardLengths", [])]
        splits[split["name"]] = {"examples": sum(lengths), "shards": len(lengths), "bytes": int(split["numBytes"])}
    return splits


def is_complete(build_dir: Path) -> bool:
    """A build is complete when its dataset_info.json exists and every shard it declares is there."""
    try:
        info = json.loads((build_dir / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return False
    file_format = info.get("fileFormat", "tfrecord")
    for split in info.get("splits", []):
        shards = len(split.get("shardLengths", []))
        for i in range(shards):
            if not (build_dir / f"{imagenet.DATASET}-{split['name']}.{file_format}-{i:05d}-of-{shards:05d}").is_file():
                return False
    return bool(info.get("splits"))


def fingerprint(tars: dict[str, Path], file_format: str) -> dict[str, Any]:
    """What a build depends on: the tars' names, sizes and mtimes, and the file format."""
    files = {}
    for split, path in sorted(tars.items()):
        st = path.stat()
        files[path.name] = {"split": split, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"file_format": file_format, "tars": files}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def why_build(data_dir: Path, version: str, inputs: dict[str, Any]) -> str | None:
    """Why a build is needed, or None when the live build is complete and made from these inputs."""
    build_dir = version_dir(data_dir, version)
    if not build_dir.exists():
        return "no build yet"
    if not is_complete(build_dir):
        return "the existing build is incomplete"
    recorded = _read_json(inputs_path(data_dir, version))
    if recorded is None:
        return "the existing build has no record of its inputs"
    if recorded.get("file_format") != inputs["file_format"]:
        return f"file format changed ({recorded.get('file_format')} -> {inputs['file_format']})"
    if recorded.get("tars") != inputs["tars"]:
        old, new = recorded.get("tars", {}), inputs["tars"]
        return f"inputs changed ({', '.join(sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n)))})"
    return None


# ---------------------------------------------------------------- preflight


def find_tars(manual_dir: Path) -> dict[str, Path]:
    """The split tars present in the manual dir (at least one), each checked cheaply."""
    if not manual_dir.is_dir():
        raise UserError(
            f"manual dir {manual_dir} does not exist", "stage the ILSVRC2012 tars first, or fix --manual-dir"
        )
    tars = {split: manual_dir / name for split, name in imagenet.TAR_NAMES.items() if (manual_dir / name).exists()}
    if not tars:
        names = ", ".join(imagenet.TAR_NAMES.values())
        raise UserError(f"no ILSVRC2012 tar in {manual_dir}", f"stage at least one of {names} there")
    for split, path in tars.items():
        check_tar(split, path)
    return tars


def check_tar(split: str, path: Path) -> None:
    """Cheap structural check: whole 512-byte blocks, a first header that parses and looks like this split's,
    and the end-of-archive marker (zero blocks) at the end. Reads a few KB, never the whole file."""
    fix = "stage the file again (it is damaged or was cut short) or remove it"
    if not path.is_file():
        raise UserError(f"{path} is not a regular file", fix)
    size = path.stat().st_size
    if size < 1024 or size % tarfile.BLOCKSIZE:
        raise UserError(f"{path} is truncated or not a tar ({size} bytes is not a whole number of tar blocks)", fix)
    with path.open("rb") as f:
        try:
            first = tarfile.open(fileobj=f, mode="r:").next()
        except tarfile.TarError as exc:
            raise UserError(f"{path} is not a tar file ({exc})", fix) from None
        if first is None:
            raise UserError(f"{path} is an empty tar", fix)
        if not FIRST_MEMBER[split].match(first.name):
            raise UserError(
                f"{path} does not look like the {split} tar (first member {first.name!r})",
                f"put the ILSVRC2012 {split} tar under the name {imagenet.TAR_NAMES[split]}",
            )
        f.seek(size - 2 * tarfile.BLOCKSIZE)
        if f.read().strip(b"\0"):
            raise UserError(f"{path} is truncated (no end-of-archive marker at its end)", fix)


def check_version(version: str) -> None:
    buildable = imagenet.buildable_versions()
    if version not in buildable:
        raise UserError(
            f"version {version} cannot be built by the installed TFDS (it builds {', '.join(buildable)};"
            f" reads {', '.join(imagenet.readable_versions())})",
            f"pass --version {buildable[0]}",
        )


def free_bytes(path: Path) -> int:
    """Free space for an unprivileged writer on the filesystem that holds `path` (or its nearest parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk_space(data_dir: Path, tars: dict[str, Path], factor: float = SPACE_FACTOR) -> None:
    total = sum(p.stat().st_size for p in tars.values())
    needed, free = int(total * factor), free_bytes(data_dir)
    if free < needed:
        raise UserError(
            f"not enough free space for the build in {data_dir}: {free:,} bytes free, {needed:,} needed "
            f"({factor}x the tars' {total:,} bytes)",
            "free space there or point --data-dir at a larger disk",
        )


# ---------------------------------------------------------------- build and swap


@contextlib.contextmanager
def locked(data_dir: Path, version: str) -> Iterator[None]:
    """One prepare per data dir and version at a time (a second one waits)."""
    lock_path = dataset_dir(data_dir) / f".{version}.lock"
    with lock_path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in(new_build: Path, target: Path) -> None:
    """Put `new_build` at `target`; the old build (if any) ends up beside `new_build`, for removal."""
    if not target.exists():
        os.rename(new_build, target)
    elif not exchange(new_build, target):
        os.rename(target, new_build.with_name(new_build.name + ".old"))  # fallback: target is missing only
        os.rename(new_build, target)  # between these two renames
    fsync_dir(target.parent)


def _remove_leftovers(data_dir: Path, version: str) -> None:
    """Temporary build dirs of earlier runs that died (we hold the lock, so none is in use)."""
    for stale in dataset_dir(data_dir).glob(f".{version}.build-*"):
        log.info("removing leftover %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def build(
    manual_dir: Path,
    data_dir: Path,
    version: str,
    file_format: str,
    engine: str,
    workers: int | None,
    inputs: dict[str, Any],
) -> None:
    """Build into a temporary data dir beside the live build, then swap it in and record its inputs."""
    tmp_data_dir = Path(tempfile.mkdtemp(prefix=f".{version}.build-", dir=dataset_dir(data_dir)))
    try:
        ENGINES[engine](manual_dir, tmp_data_dir, version, file_format, workers)
        new_build = version_dir(tmp_data_dir, version)
        if not is_complete(new_build):
            raise RuntimeError(f"engine {engine} finished without a complete build in {new_build}")
        target = version_dir(data_dir, version)
        inputs_path(data_dir, version).unlink(missing_ok=True)  # no record that could describe the wrong build
        swap_in(new_build, target)
        record = {
            **inputs,
            "version": version,
            "engine": engine,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(inputs_path(data_dir, version), record)
    finally:
        shutil.rmtree(tmp_data_dir, ignore_errors=True)


def prepare(
    manual_dir: Path,
    data_dir: Path,
    version: str = imagenet.DEFAULT_VERSION,
    file_format: str = "tfrecord",
    engine: str = "parallel",
    workers: int | None = None,
    check: bool = False,
) -> dict[str, Any]:
    """Build the dataset if needed; return the CLI summary. `check`: only say whether a build would happen."""
    started = time.monotonic()
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}", f"pass one of {', '.join(sorted(ENGINES))}")
    if file_format not in FILE_FORMATS:
        raise UserError(f"unknown file format {file_format!r}", f"pass one of {', '.join(FILE_FORMATS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} is below 1", "pass 1 or more, or leave it out")
    check_version(version)
    tars = find_tars(manual_dir)
    data_dir = data_dir.absolute()
    inputs = fingerprint(tars, file_format)
    reason = why_build(data_dir, version, inputs)
    if reason is not None:
        check_disk_space(data_dir, tars)
    if reason is not None and not check:
        dataset_dir(data_dir).mkdir(parents=True, exist_ok=True)
        with locked(data_dir, version):
            reason = why_build(data_dir, version, inputs)  # another run may have built it meanwhile
            if reason is not None:
                log.info("building %s %s with engine %s: %s", imagenet.DATASET, version, engine, reason)
                _remove_leftovers(data_dir, version)
                build(manual_dir, data_dir, version, file_format, engine, workers, inputs)
    else:
        log.info("%s", f"would build: {reason}" if reason else "up to date: nothing to do")
    build_dir = version_dir(data_dir, version)
    summary: dict[str, Any] = {
        "changed": reason is not None,
        "reason": reason or "up to date",
        "engine": engine,
        "version": version,
        "file_format": file_format,
        "data_dir": str(data_dir),
        "build_dir": str(build_dir),
        "splits": read_splits(build_dir) if is_complete(build_dir) else {},
        "seconds": round(time.monotonic() - started, 3),
    }
    if check:
        summary["check"] = True
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual-dir", type=Path, required=True, help="folder holding the ILSVRC2012_img_*.tar")
    parser.add_argument(
        "--data-dir", type=Path, default=os.environ.get("TFDS_DATA_DIR"),
        help="TFDS data dir to build into (default: $TFDS_DATA_DIR)",
    )  # fmt: skip
    parser.add_argument("--version", default=imagenet.DEFAULT_VERSION, help="dataset version (default %(default)s)")
    parser.add_argument("--file-format", default="tfrecord", choices=FILE_FORMATS)
    parser.add_argument(
        "--engine",
        default="parallel",
        help="parallel (default: every core, the same records as TFDS's build, the same bytes on every run) or "
        "tfds (TFDS's own builder, one process: the reference)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes, for engines that use them")
    parser.add_argument("--check", action="store_true", help="only report whether a build would happen")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> dict[str, Any]:
        if args.data_dir is None:
            raise UserError("no data dir given", "pass --data-dir or set TFDS_DATA_DIR")
        return prepare(
            args.manual_dir, args.data_dir, args.version, args.file_format, args.engine, args.workers, args.check
        )

    return cli.run(body)
