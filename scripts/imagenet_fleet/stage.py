"""Stage the ILSVRC2012 tars from object storage into TFDS's manual dir: verified once, never re-hashed.

For each split's tar the object is HEADed (size, ETag, `sha256` metadata). A local tar counts as staged when its
marker `DIR/.<tar>.verified.json` matches the file's size and mtime_ns and the object's size and sha256 metadata
(or ETag when the object has no sha256): then nothing is read. Otherwise the tar is downloaded to a temp name,
its size and digests are checked (the `sha256` metadata our uploader sets; with `official=True` the official
ILSVRC2012 MD5 too), and only then renamed into place, the marker written last. The same read pass lists the
tar's members (`engine.memberlist`, saved as `DIR/.<tar>.members`), so that the build reads no headers itself.
A local tar without a valid marker whose size matches and whose digest can be checked is hashed instead of
downloaded ("verified"): a tar copied in by hand is adopted without a transfer.

Plan first, act second: every object is HEADed and the free space checked before anything is downloaded, so a
missing required tar or a full disk fails in seconds, not after hours of transfer.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagenet_fleet import cli, s3
from imagenet_fleet.atomic import atomic_write_json
from imagenet_fleet.engine import memberlist
from imagenet_fleet.engine.tarindex import Walk
from imagenet_fleet.errors import UserError
from imagenet_fleet.imagenet import SPLITS, TAR_NAMES
from imagenet_fleet.manifest import hash_file

log = logging.getLogger(__name__)

# The official ILSVRC2012 tars' MD5s (image-net.org); checked only with official=True (samples and mirrors differ).
OFFICIAL_MD5: dict[str, str] = {
    TAR_NAMES["train"]: "1d675b47d978889d74fa0da5fadfb00e",
    TAR_NAMES["validation"]: "29b22e2961454d5413ddabcf34fc5622",
}
MARKER_FORMAT = "imagenet-fleet-staged/1"
LOCK_NAME = ".stage.lock"

# Actions in the summary, per tar.
DOWNLOADED, PRESENT, VERIFIED, MISSING_OPTIONAL = "downloaded", "present", "verified", "missing-optional"
WOULD_DOWNLOAD, WOULD_VERIFY = "would-download", "would-verify"


def marker_path(manual_dir: Path, name: str) -> Path:
    """`DIR/.ILSVRC2012_img_train.tar.verified.json`: what was verified about `DIR/<name>`, and when."""
    return manual_dir / f".{name}.verified.json"


def parse_splits(text: str, *, option: str) -> tuple[str, ...]:
    """`"train,validation"` -> `("train", "validation")`; UserError on an unknown split."""
    splits = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in splits if s not in TAR_NAMES]
    if unknown:
        raise UserError(f"{option} names unknown split(s) {unknown}", f"use a subset of {','.join(SPLITS)}")
    return splits


@dataclass(frozen=True)
class Expected:
    """The digests a tar must have, and where each came from."""

    sha256: str | None
    md5: str | None

    @property
    def known(self) -> bool:
        return bool(self.sha256 or self.md5)

    def check(self, uri: str, sha256: str, md5: str | None) -> None:
        """UserError naming the URI, the expected and the actual digest, on a mismatch."""
        fix = "the bad copy was discarded; re-upload the object (or fix its sha256 metadata) and run again"
        if self.sha256 and sha256 != self.sha256:
            raise UserError(f"sha256 mismatch for {uri}: expected {self.sha256} (object metadata), got {sha256}", fix)
        if self.md5 and md5 != self.md5:
            raise UserError(f"md5 mismatch for {uri}: expected {self.md5} (official ILSVRC2012), got {md5}", fix)


@dataclass
class Item:
    """One tar: where it is, what the object says, and what this run will do with it."""

    split: str
    name: str
    bucket: str
    key: str
    local: Path
    remote: s3.ObjectInfo | None
    expected: Expected
    action: str = ""

    @property
    def uri(self) -> str:
        return s3.s3_uri(self.bucket, self.key)


def _load_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def marker_matches(item: Item) -> dict[str, Any] | None:
    """The marker when it vouches for the local tar as the current object (no hashing), else None."""
    remote = item.remote
    marker = _load_marker(marker_path(item.local.parent, item.name))
    if remote is None or marker is None:
        return None
    try:
        st = item.local.stat()
    except FileNotFoundError:
        return None
    if marker.get("file") != item.name or (marker.get("size"), marker.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None
    if st.st_size != remote.size:
        return None
    if remote.sha256:
        if marker.get("sha256") != remote.sha256:
            return None
    elif marker.get("etag") != remote.etag:
        return None
    if item.expected.md5 and marker.get("md5") != item.expected.md5:
        return None
    return marker


def _plan(s3c: s3.S3Client, source: str, manual_dir: Path, splits: Sequence[str], optional: Sequence[str],
          official: bool) -> list[Item]:
    bucket, prefix = s3.parse_s3_uri(source)
    items: list[Item] = []
    for split in splits:
        name = TAR_NAMES[split]
        key = prefix + name
        remote = s3.head(s3c, bucket, key)
        expected = Expected(
            sha256=remote.sha256 if remote else None,
            md5=OFFICIAL_MD5.get(name) if official else None,
        )
        item = Item(split, name, bucket, key, manual_dir / name, remote, expected)
        uri = item.uri
        if remote is None:
            if split not in optional:
                raise UserError(
                    f"no {name} at {uri} (the {split} split is required)",
                    f"upload it there, fix --source, or make {split} optional with --optional {split}",
                )
            log.info("note: %s is absent; the optional %s split is skipped", uri, split)
            item.action = MISSING_OPTIONAL
        elif marker_matches(item) is not None:
            item.action = PRESENT
        elif item.local.is_file() and item.local.stat().st_size == remote.size and expected.known:
            item.action = VERIFIED  # hash the local copy; download only if it does not match
        else:
            item.action = DOWNLOADED
        items.append(item)
    return items


def preflight_space(manual_dir: Path, items: Sequence[Item]) -> None:
    """UserError when the disk under `manual_dir` cannot hold what `items` will download (stale copies: free)."""
    need = 0
    for item in items:
        if item.action == DOWNLOADED and item.remote is not None:
            have = item.local.stat().st_size if item.local.is_file() else 0  # the stale copy is removed first
            need += max(0, item.remote.size - have)
    probe = manual_dir if manual_dir.exists() else next(p for p in manual_dir.parents if p.exists())
    free = shutil.disk_usage(probe).free
    free += sum(p.stat().st_size for item in items for p in manual_dir.glob(f".{item.name}.*.part"))
    if need > free:
        raise UserError(
            f"not enough free space in {manual_dir}: the downloads need {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            "free disk space there or point --manual-dir at a bigger disk",
        )


@contextmanager
def _lock(manual_dir: Path) -> Iterator[None]:
    """One stage run per manual dir at a time (a second one fails at once instead of racing the first)."""
    with open(manual_dir / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(f"another stage run holds {manual_dir / LOCK_NAME}", "wait for it to finish") from exc
        yield


def _write_marker(item: Item, sha256: str, md5: str | None) -> None:
    assert item.remote is not None
    st = item.local.stat()
    marker: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "file": item.name,
        "source": item.uri,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "etag": item.remote.etag,
        "sha256": sha256,
        "verified_against": [k for k, v in (("sha256-metadata", item.expected.sha256),
                                            ("official-md5", item.expected.md5)) if v] or ["size-only"],
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if md5 is not None:
        marker["md5"] = md5
    atomic_write_json(marker_path(item.local.parent, item.name), marker)


@dataclass
class Digests:
    """What the one read pass over a tar found: its digests, and its member lists (`memberlist`: the engine then
    reads no headers of its own), None when the recorder could not list it."""

    sha256: str
    md5: str | None
    members: dict[int, Walk] | None


def _hash(item: Item, path: Path) -> Digests:
    recorder = memberlist.Recorder(path.stat().st_size, nested=item.name == TAR_NAMES["train"])
    sha256, md5 = hash_file(path, md5=item.expected.md5 is not None, also=recorder.feed)
    return Digests(sha256, md5, recorder.walks())


def _verify_local(item: Item) -> Digests | None:
    """Hash a local tar that has no valid marker; its digests when they match what is expected, else None."""
    log.info("hashing the local %s (no valid marker) to check it against %s", item.local, item.uri)
    digests = _hash(item, item.local)
    try:
        item.expected.check(item.uri, digests.sha256, digests.md5)
    except UserError as exc:
        log.info("local %s does not match (%s): downloading it again", item.local, exc.cause)
        return None
    return digests


def _download(s3c: s3.S3Client, item: Item, threads: int) -> Digests:
    assert item.remote is not None
    marker_path(item.local.parent, item.name).unlink(missing_ok=True)
    memberlist.sidecar_path(item.local).unlink(missing_ok=True)
    item.local.unlink(missing_ok=True)  # stale or unverifiable: free its space before the new copy lands
    found: list[Digests] = []

    def verify(tmp: Path) -> None:
        digests = _hash(item, tmp)
        item.expected.check(item.uri, digests.sha256, digests.md5)
        if not item.expected.known:
            log.info("note: %s has no sha256 metadata: checked its size only (sha256 %s)", item.uri, digests.sha256)
        found.append(digests)

    s3.download(s3c, item.bucket, item.key, item.local, threads=threads, expected_size=item.remote.size, verify=verify)
    return found[0]


def _save_members(item: Item, digests: Digests) -> None:
    if digests.members is None:
        log.info("%s: its headers could not all be listed while hashing: the engine will read them", item.local)
        memberlist.sidecar_path(item.local).unlink(missing_ok=True)
    else:
        memberlist.save(item.local, digests.members)


def stage(
    source: str,
    manual_dir: Path,
    *,
    s3c: s3.S3Client,
    splits: Sequence[str] = SPLITS,
    optional: Sequence[str] = ("test",),
    check: bool = False,
    official: bool = False,
    threads: int = s3.DEFAULT_THREADS,
) -> dict[str, Any]:
    """Stage the tars of `splits` from `source` (an s3:// folder) into `manual_dir`; the CLI's JSON summary."""
    started = time.monotonic()
    if manual_dir.exists() and not manual_dir.is_dir():
        raise UserError(f"--manual-dir {manual_dir} is not a folder", "point it at a folder on fast local disk")
    items = _plan(s3c, source, manual_dir, splits, optional, official)
    files: dict[str, dict[str, Any]] = {}
    if check:
        preflight_space(manual_dir, items)
        for item in items:
            action = {DOWNLOADED: WOULD_DOWNLOAD, VERIFIED: WOULD_VERIFY}.get(item.action, item.action)
            marker = marker_matches(item) if item.action == PRESENT else None
            files[item.name] = _entry(item, action, marker.get("sha256") if marker else None, 0.0)
        changed = any(f["action"] in (WOULD_DOWNLOAD, WOULD_VERIFY) for f in files.values())
        return _summary(source, manual_dir, files, changed, started, check=True)

    manual_dir.mkdir(parents=True, exist_ok=True)
    with _lock(manual_dir):
        for item in items:
            for stale in s3.remove_stale_temps(item.local):
                log.info("removed %s left by an interrupted run", stale)
        preflight_space(manual_dir, items)
        for item in items:
            t0 = time.monotonic()
            sha256: str | None = None
            action = item.action
            if action == PRESENT:
                marker = marker_matches(item)
                sha256 = marker.get("sha256") if marker else None
                log.info("%s: present and verified earlier (marker matches %s)", item.local, item.uri)
            elif action in (VERIFIED, DOWNLOADED):
                digests = _verify_local(item) if action == VERIFIED else None
                if digests is None:
                    action = DOWNLOADED
                    log.info("downloading %s -> %s", item.uri, item.local)
                    digests = _download(s3c, item, threads)
                sha256 = digests.sha256
                _save_members(item, digests)
                _write_marker(item, sha256, digests.md5)
            files[item.name] = _entry(item, action, sha256, time.monotonic() - t0)
    changed = any(f["action"] in (DOWNLOADED, VERIFIED) for f in files.values())
    return _summary(source, manual_dir, files, changed, started, check=False)


def _entry(item: Item, action: str, sha256: str | None, seconds: float) -> dict[str, Any]:
    size = item.remote.size if item.remote else 0
    moved = action == DOWNLOADED
    return {
        "action": action,
        "uri": item.uri,
        "bytes": size,
        "sha256": sha256,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 1) if moved and seconds > 0 else None,
    }


def _summary(source: str, manual_dir: Path, files: Mapping[str, Any], changed: bool, started: float,
             *, check: bool) -> dict[str, Any]:
    return {
        "changed": changed,
        "check": check,
        "source": source,
        "manual_dir": str(manual_dir),
        "files": dict(files),
        "bytes_downloaded": sum(f["bytes"] for f in files.values() if f["action"] == DOWNLOADED),
        "seconds": round(time.monotonic() - started, 3),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="s3:// folder holding ILSVRC2012_img_{train,val,test}.tar")
    p.add_argument("--manual-dir", required=True, type=Path, help="TFDS manual dir on fast local disk")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--region", default=None)
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated: train,validation,test")
    p.add_argument("--optional", default="test", help="splits that may be absent from the source (skipped)")
    p.add_argument("--official", action="store_true", help="also check the official ILSVRC2012 MD5s")
    p.add_argument("--check", action="store_true", help="report what would be downloaded; change nothing")
    p.add_argument("--threads", type=int, default=s3.DEFAULT_THREADS, help="parallel parts per download")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> Mapping[str, Any]:
        splits = parse_splits(args.splits, option="--splits")
        optional = parse_splits(args.optional, option="--optional")
        if args.threads < 1:
            raise UserError(f"--threads {args.threads} is not positive", "pass --threads 1 or more")
        s3c = s3.client(args.endpoint_url, args.region, max_pool_connections=2 * args.threads)
        return stage(args.source, args.manual_dir, s3c=s3c, splits=splits, optional=optional,
                     check=args.check, official=args.official, threads=args.threads)

    return cli.run(body)
