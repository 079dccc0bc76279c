"""Publish a TFDS build to S3 as a release named by its content, verify a release, seed a bucket.

A release is the folder `<dest>/<release_id>/`, release_id = `imagenet2012-<version>-<content_id[:12]>`:

    <dest>/<release_id>/imagenet2012/<version>/<file>   every file of the build, with `sha256` metadata
    <dest>/<release_id>/manifest.json                   written LAST: the commit point

Manifest paths are relative to the release folder (`imagenet2012/5.1.0/dataset_info.json`), so a puller that
copies the release to `<root>/releases/<release_id>/` gets a TFDS data dir there. A release without its manifest is
incomplete and invisible: publishing it again resumes (objects with the right size and sha256 are kept).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from imagenet_fleet import cli, s3
from imagenet_fleet.errors import UserError
from imagenet_fleet.imagenet import DATASET, DEFAULT_VERSION
from imagenet_fleet.manifest import Manifest, build_manifest, manifest_bytes, parse_manifest, sha256_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DEFAULT_FILE_THREADS = 4  # files uploaded at once; each multipart upload uses PART_THREADS more
PART_THREADS = 4

T = TypeVar("T")
R = TypeVar("R")


def release_id(version: str, content_id: str) -> str:
    """`imagenet2012-5.1.0-0123456789ab`: dataset, version, and the first 12 hex digits of the content id."""
    return f"{DATASET}-{version}-{content_id[:12]}"


def _parallel(fn: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """Run `fn` over `items` on `threads` threads; the first exception cancels what has not started and is raised."""
    todo = list(items)
    if threads <= 1 or len(todo) <= 1:
        return [fn(x) for x in todo]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures: list[Future[R]] = [pool.submit(fn, x) for x in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in done:
            if fut.exception() is not None:
                for other in futures:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
        return [f.result() for f in futures]


def _existing_ok(s3c: s3.S3Client, bucket: str, key: str, size: int, sha256: str) -> bool:
    """True when an object from an earlier (interrupted) run already holds these bytes (size + sha256 metadata)."""
    info = s3.head(s3c, bucket, key)
    return info is not None and info.size == size and info.sha256 == sha256


def publish(
    data_dir: Path,
    dest: str,
    *,
    s3c: s3.S3Client,
    version: str = DEFAULT_VERSION,
    check: bool = False,
    threads: int = DEFAULT_FILE_THREADS,
) -> dict[str, Any]:
    """Upload the build `data_dir/imagenet2012/<version>/` as a release under `dest`; the CLI's JSON summary."""
    started = time.monotonic()
    bucket, prefix = s3.parse_s3_uri(dest)
    subdir = f"{DATASET}/{version}"
    build = data_dir / subdir
    if not (build / "dataset_info.json").is_file():
        raise UserError(
            f"{build} is not a TFDS build (no dataset_info.json)",
            "run the prepare step first, or fix --data-dir/--version",
        )
    manifest = build_manifest(data_dir, subdir=subdir, extra={"dataset": DATASET, "version": version})
    rid = release_id(version, manifest["content_id"])
    manifest["release_id"] = rid
    release_prefix = f"{prefix}{rid}/"
    manifest_key = release_prefix + MANIFEST_NAME
    body = manifest_bytes(manifest)
    summary: dict[str, Any] = {
        "changed": False,
        "check": check,
        "release_id": rid,
        "uri": s3.s3_uri(bucket, release_prefix),
        "manifest_uri": s3.s3_uri(bucket, manifest_key),
        "files": manifest["file_count"],
        "bytes": manifest["total_bytes"],
        "uploaded_files": 0,
        "uploaded_bytes": 0,
        "seconds": 0.0,
    }

    existing = s3.get_bytes(s3c, bucket, manifest_key)
    if existing is not None:
        if existing == body or _same_release(existing, manifest, summary["manifest_uri"]):
            log.info("%s is already published with this content: nothing to upload", summary["manifest_uri"])
            summary["seconds"] = round(time.monotonic() - started, 3)
            return summary
        raise UserError(
            f"{summary['manifest_uri']} exists with different content under the same release id",
            "inspect that release; delete it if it is damaged, then publish again",
        )

    listed = {o.key: o.size for o in s3.list_objects(s3c, bucket, release_prefix)}
    files = manifest["files"]

    def needs_upload(entry: Mapping[str, Any]) -> bool:
        key = release_prefix + entry["path"]
        if listed.get(key) != entry["size"]:
            return True
        return not _existing_ok(s3c, bucket, key, entry["size"], entry["sha256"])

    todo = [f for f, need in zip(files, _parallel(needs_upload, files, 2 * threads), strict=True) if need]
    log.info("release %s: %d of %d files to upload (%d resumed from an earlier run)",
             rid, len(todo), len(files), len(files) - len(todo))
    summary.update(
        changed=True,
        uploaded_files=len(todo),
        uploaded_bytes=sum(f["size"] for f in todo),
    )
    if check:
        summary["seconds"] = round(time.monotonic() - started, 3)
        return summary

    def put(entry: Mapping[str, Any]) -> None:
        s3.upload(s3c, data_dir / entry["path"], bucket, release_prefix + entry["path"],
                  metadata={s3.SHA256_METADATA: entry["sha256"]}, threads=PART_THREADS)

    _parallel(put, todo, threads)
    after = build_manifest(data_dir, subdir=subdir, extra={"dataset": DATASET, "version": version})
    if after["content_id"] != manifest["content_id"]:
        raise UserError(f"{build} changed while it was published", "let the build finish, then publish again")
    s3.put_bytes(s3c, bucket, manifest_key, body)  # the commit point: the release exists from here on
    log.info("published %s (%d files, %d bytes)", summary["uri"], len(files), manifest["total_bytes"])
    summary["seconds"] = round(time.monotonic() - started, 3)
    return summary


def _same_release(existing: bytes, manifest: Manifest, source: str) -> bool:
    try:
        theirs = parse_manifest(existing, source=source)
    except UserError:
        return False
    return bool(theirs["content_id"] == manifest["content_id"] and theirs["files"] == manifest["files"])


def verify_release(uri: str, *, s3c: s3.S3Client, threads: int = 8) -> dict[str, Any]:
    """Stream every object of a release, compare size + sha256 with its manifest; flag unlisted objects.

    Returns `{"ok", "uri", "release_id", "files", "bytes", "problems", "seconds"}`; a missing manifest (an
    incomplete or absent release) is a UserError.
    """
    started = time.monotonic()
    bucket, prefix = s3.parse_s3_uri(uri)
    if not prefix:
        raise UserError(f"{uri} names a bucket, not a release", "pass s3://<bucket>/<releases>/<release_id>/")
    manifest_uri = s3.s3_uri(bucket, prefix + MANIFEST_NAME)
    data = s3.get_bytes(s3c, bucket, prefix + MANIFEST_NAME)
    if data is None:
        raise UserError(
            f"no release at {uri}: {manifest_uri} does not exist (absent, or an interrupted publish)",
            "check the URI, or publish the release again",
        )
    manifest = parse_manifest(data, source=manifest_uri)
    problems: list[str] = []
    name = prefix.rstrip("/").rsplit("/", 1)[-1]
    if manifest.get("release_id") not in (None, name) or not name.endswith(manifest["content_id"][:12]):
        problems.append(f"{manifest_uri}: release id {manifest.get('release_id')!r} does not match the folder {name!r}")

    def check_one(entry: Mapping[str, Any]) -> str | None:
        key = prefix + entry["path"]
        info = s3.head(s3c, bucket, key)
        if info is None:
            return f"missing: {s3.s3_uri(bucket, key)}"
        if info.size != entry["size"]:
            return f"size mismatch: {s3.s3_uri(bucket, key)}: {info.size} bytes, manifest says {entry['size']}"
        size, digest = s3.stream_digest(s3c, bucket, key)
        if size != entry["size"] or digest != entry["sha256"]:
            return f"sha256 mismatch: {s3.s3_uri(bucket, key)}: {digest}, manifest says {entry['sha256']}"
        return None

    problems.extend(p for p in _parallel(check_one, manifest["files"], threads) if p)
    listed = {prefix + f["path"] for f in manifest["files"]} | {prefix + MANIFEST_NAME}
    problems.extend(f"not in manifest: {o.uri}" for o in s3.list_objects(s3c, bucket, prefix) if o.key not in listed)
    for problem in problems:
        log.error("%s", problem)
    return {
        "ok": not problems,
        "uri": s3.s3_uri(bucket, prefix),
        "release_id": manifest.get("release_id", name),
        "files": manifest["file_count"],
        "bytes": manifest["total_bytes"],
        "problems": problems,
        "seconds": round(time.monotonic() - started, 3),
    }


def upload_objects(
    paths: Sequence[Path],
    dest: str,
    *,
    s3c: s3.S3Client,
    create_bucket: bool = False,
    check: bool = False,
) -> dict[str, Any]:
    """Upload files to `dest/<file name>` with `sha256` metadata; objects with equal size and sha256 are skipped."""
    started = time.monotonic()
    bucket, prefix = s3.parse_s3_uri(dest)
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is not a file", "pass the files to upload")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise UserError("two files to upload have the same name", "upload them to different --dest folders")
    created = False
    bucket_exists = True
    if create_bucket:
        if check:
            bucket_exists = s3.bucket_exists(s3c, bucket)
        else:
            created = s3.ensure_bucket(s3c, bucket)
    files: dict[str, dict[str, Any]] = {}
    for path in paths:
        key = prefix + path.name
        size = path.stat().st_size
        digest = sha256_file(path)
        present = bucket_exists and _existing_ok(s3c, bucket, key, size, digest)
        action = "present" if present else ("would-upload" if check else "uploaded")
        if action == "uploaded":
            log.info("uploading %s -> %s", path, s3.s3_uri(bucket, key))
            s3.upload(s3c, path, bucket, key, metadata={s3.SHA256_METADATA: digest})
        files[path.name] = {"action": action, "uri": s3.s3_uri(bucket, key), "bytes": size, "sha256": digest}
    return {
        "changed": created or not bucket_exists or any(f["action"] != "present" for f in files.values()),
        "check": check,
        "dest": s3.s3_uri(bucket, prefix),
        "bucket_created": created,
        "files": files,
        "seconds": round(time.monotonic() - started, 3),
    }


# --- CLIs -----------------------------------------------------------------------------------------------------


def _s3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--region", default=None)


def main(argv: Sequence[str] | None = None) -> int:
    """`publish_dataset.py --data-dir DIR [--version V] --dest s3://bucket/releases/ [--endpoint-url URL] [--check]`"""
    p = argparse.ArgumentParser(description="Publish a TFDS imagenet2012 build to S3; the manifest goes last.")
    p.add_argument("--data-dir", required=True, type=Path, help="TFDS data dir holding imagenet2012/<version>/")
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--dest", required=True, help="s3:// folder of releases")
    p.add_argument("--threads", type=int, default=DEFAULT_FILE_THREADS, help="files uploaded at once")
    p.add_argument("--check", action="store_true", help="report what would be uploaded; change nothing")
    _s3_args(p)
    args = p.parse_args(argv)

    def body() -> Mapping[str, Any]:
        s3c = s3.client(args.endpoint_url, args.region, max_pool_connections=max(2 * args.threads, 1) * PART_THREADS)
        return publish(args.data_dir, args.dest, s3c=s3c, version=args.version, check=args.check,
                       threads=max(args.threads, 1))

    return cli.run(body)


def main_verify(argv: Sequence[str] | None = None) -> int:
    """`verify_release.py --uri s3://bucket/releases/<release_id>/ [--endpoint-url URL]`: exit 1 on any problem."""
    p = argparse.ArgumentParser(description="Check every object of a release against its manifest.")
    p.add_argument("--uri", required=True, help="s3:// folder of one release")
    p.add_argument("--threads", type=int, default=8)
    _s3_args(p)
    args = p.parse_args(argv)
    result: dict[str, Any] = {}

    def body() -> Mapping[str, Any]:
        s3c = s3.client(args.endpoint_url, args.region, max_pool_connections=2 * max(args.threads, 1))
        result.update(verify_release(args.uri, s3c=s3c, threads=max(args.threads, 1)))
        return result

    rc = cli.run(body)
    return 1 if rc == 0 and not result.get("ok") else rc


def main_upload_objects(argv: Sequence[str] | None = None) -> int:
    """`upload_objects.py --dest s3://bucket/prefix/ [--endpoint-url URL] [--create-bucket] FILE...`"""
    p = argparse.ArgumentParser(description="Upload files to an s3:// folder with sha256 metadata (idempotent).")
    p.add_argument("--dest", required=True, help="s3:// folder; each file lands at <dest><file name>")
    p.add_argument("--create-bucket", action="store_true", help="create the bucket when it does not exist")
    p.add_argument("--check", action="store_true", help="report what would be uploaded; change nothing")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _s3_args(p)
    args = p.parse_args(argv)

    def body() -> Mapping[str, Any]:
        s3c = s3.client(args.endpoint_url, args.region)
        return upload_objects(args.files, args.dest, s3c=s3c, create_bucket=args.create_bucket, check=args.check)

    return cli.run(body)
