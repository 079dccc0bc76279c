"""S3 access for staging and publishing: URIs, a configured client, transfers, and errors a user can act on.

Credentials come from boto3's standard chain (environment, `AWS_PROFILE`/`~/.aws`, instance role) and the
endpoint from `--endpoint-url` or `AWS_ENDPOINT_URL`; nothing here logs or accepts a secret.
Every S3 call that can fail for a reason the user can fix runs inside `s3_errors(uri)`, which turns botocore's
exceptions into one `UserError` naming the s3:// URI and the fix.

`download` and `upload` are the only two functions that move object bodies to and from local files, so a faster
transfer engine (parallel ranged GETs) can replace them without touching their callers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
import botocore.exceptions
import botocore.loaders
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError

from imagenet_fleet.atomic import fsync_dir
from imagenet_fleet.errors import UserError

S3Client = Any  # botocore builds its client classes at run time; no stubs dependency just for this alias

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_THREADS = 8
DEFAULT_PART_SIZE = 64 * MiB
READ_CHUNK = 256 * 1024  # streaming reads: 256 KiB measured faster than 1 MiB against SeaweedFS here
SHA256_METADATA = "sha256"  # user metadata (x-amz-meta-sha256) our uploads carry: hex sha256 of the body

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CREDENTIALS_FIX = (
    "give the host credentials through boto3's standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE with ~/.aws/credentials, or an instance role"
)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> `("bucket", "some/prefix/")`.

    The path is a folder: a non-empty prefix always ends with `/` (`s3://b/p` and `s3://b/p/` are the same).
    """
    match = re.fullmatch(r"s3://([^/]*)/?(.*)", uri.strip())
    fix = "write it as s3://<bucket>/<prefix>/, e.g. s3://imagenet/ILSVRC2012/"
    if not match:
        raise UserError(f"{uri!r} is not an s3:// URI", fix)
    bucket, prefix = match.group(1), match.group(2)
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise UserError(f"{uri!r} has no valid bucket name ({bucket!r}: 3-63 of a-z 0-9 . -)", fix)
    if any(ord(c) < 32 for c in prefix) or "//" in prefix or prefix.startswith("/"):
        raise UserError(f"{uri!r} has an invalid key prefix {prefix!r}", fix)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def s3_uri(bucket: str, key: str = "") -> str:
    """The s3:// URI of a bucket and key (or prefix)."""
    return f"s3://{bucket}/{key}"


def client(
    endpoint_url: str | None,
    region: str | None = None,
    *,
    max_pool_connections: int = 2 * DEFAULT_THREADS,
    connect_timeout: float = 10.0,
    read_timeout: float = 120.0,
    max_attempts: int | None = None,
) -> S3Client:
    """An S3 client with the standard credential chain, standard retries and a pool sized for parallel transfers.

    `endpoint_url=None` leaves the endpoint to boto3 (`AWS_ENDPOINT_URL`, the profile, or AWS itself).
    Size `max_pool_connections` to at least the number of threads that use the client at once.
    `max_attempts=None` keeps boto3's standard-mode default (3 attempts) or AWS_MAX_ATTEMPTS / the profile's.
    """
    config = Config(
        retries={"mode": "standard", **({"max_attempts": max_attempts} if max_attempts else {})},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # SeaweedFS, MinIO and Ceph need path-style; AWS accepts it for every bucket name we allow.
        s3={"addressing_style": "path"} if endpoint_url or os.environ.get("AWS_ENDPOINT_URL") else None,
    )
    with s3_errors(endpoint_url or "the S3 endpoint", action="configuring a client for"):
        core = botocore.session.Session()
        core.register_component("data_loader", _data_loader())
        session = boto3.session.Session(botocore_session=core, region_name=region or None)
        return session.client("s3", endpoint_url=endpoint_url or None, config=config)


@lru_cache(maxsize=1)
def _data_loader() -> botocore.loaders.Loader:
    """One loader per process: it caches the parsed S3 service model (~0.3 s to load) for every later client.

    Each client still gets its own session, so credentials are resolved afresh (environment, profile, role).
    """
    return botocore.loaders.create_loader()


def transfer_config(threads: int = DEFAULT_THREADS, part_size: int = DEFAULT_PART_SIZE) -> TransferConfig:
    """boto3's managed transfers: multipart above `part_size`, `threads` parts at once, in-process (no CRT)."""
    return TransferConfig(
        multipart_threshold=part_size,
        multipart_chunksize=part_size,
        max_concurrency=threads,
        io_chunksize=READ_CHUNK,
        use_threads=threads > 1,
        preferred_transfer_client="classic",  # the CRT client ignores http:// endpoints (see ENVIRONMENT.md)
    )


# --- errors ---------------------------------------------------------------------------------------------------


def _client_error_to_user_error(exc: botocore.exceptions.ClientError, uri: str, action: str) -> UserError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = error.get("Message", "")
    bucket = uri[5:].split("/", 1)[0] if uri.startswith("s3://") else uri
    if code == "NoSuchBucket":
        return UserError(
            f"bucket {bucket!r} does not exist (while {action} {uri})",
            "check the bucket name in the s3:// URI (and the endpoint), or create the bucket",
        )
    if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and not code):
        return UserError(f"no object at {uri} (while {action} it)", "check the s3:// URI: the key is case-sensitive")
    if code == "InvalidAccessKeyId":
        return UserError(
            f"the S3 endpoint does not know this access key id (while {action} {uri})",
            "check AWS_ACCESS_KEY_ID / AWS_PROFILE and that --endpoint-url points at the right store",
        )
    if code == "SignatureDoesNotMatch":
        return UserError(
            f"the S3 secret key does not match the access key (while {action} {uri})",
            "check AWS_SECRET_ACCESS_KEY (or the profile's secret) for this access key",
        )
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
        return UserError(
            f"access denied to {uri} (while {action} it)",
            "grant this identity the S3 permissions it needs there (read: GetObject/ListBucket; "
            "publish: PutObject too), or use credentials that have them",
        )
    if code in ("ExpiredToken", "TokenRefreshRequired", "InvalidToken"):
        return UserError(f"the S3 session token is expired or invalid (while {action} {uri})",
                         "refresh the credentials")
    return UserError(
        f"S3 refused {action} {uri}: {code or status} {message}".rstrip(),
        "check the s3:// URI, the endpoint and this identity's permissions; retry if the store was overloaded",
    )


@contextmanager
def s3_errors(uri: str, *, action: str = "accessing") -> Iterator[None]:
    """Turn botocore/s3transfer failures inside the block into one UserError naming `uri` and the fix."""
    try:
        yield
    except UserError:
        raise
    except botocore.exceptions.ClientError as exc:
        raise _client_error_to_user_error(exc, uri, action) from exc
    except boto3.exceptions.S3UploadFailedError as exc:  # upload_file wraps the ClientError that says why
        why = exc.__cause__ or exc.__context__
        if isinstance(why, botocore.exceptions.ClientError):
            raise _client_error_to_user_error(why, uri, action) from exc
        raise UserError(f"upload to {uri} failed: {exc}", "retry; check the network and the store") from exc
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
        raise UserError(f"no usable S3 credentials (while {action} {uri}): {exc}", _CREDENTIALS_FIX) from exc
    except botocore.exceptions.ProfileNotFound as exc:
        raise UserError(f"{exc} (while {action} {uri})", "set AWS_PROFILE to a profile in ~/.aws/config") from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError, RetriesExceededError) as exc:
        raise UserError(
            f"cannot reach the S3 endpoint (while {action} {uri}): {exc}",
            "check --endpoint-url / AWS_ENDPOINT_URL, the network, and that the object store is up",
        ) from exc
    except botocore.exceptions.NoRegionError as exc:
        raise UserError(f"no AWS region configured (while {action} {uri})", "pass --region or set AWS_REGION") from exc


# --- objects --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or a listing) tells about an object."""

    bucket: str
    key: str
    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)

    @property
    def sha256(self) -> str | None:
        """The sha256 our uploader recorded in the object's user metadata, if any (lowercase hex)."""
        value = self.metadata.get(SHA256_METADATA)
        return value.strip().lower() if value else None


def head(s3: S3Client, bucket: str, key: str) -> ObjectInfo | None:
    """HEAD an object: its size, ETag and metadata; None when the key does not exist (the bucket does).

    A HEAD error carries no error code, so a 403/404 is diagnosed with a one-byte GET that does: a missing
    bucket, a wrong secret or a denied read each become their own UserError naming the URI.
    """
    uri = s3_uri(bucket, key)
    with s3_errors(uri, action="reading"):
        try:
            resp = s3.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (400, 403, 404):
                raise
            try:
                s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
            except botocore.exceptions.ClientError as diag:
                if diag.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return None
                raise diag from None
            raise  # the GET worked where the HEAD did not: report the HEAD's own error
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=int(resp["ContentLength"]),
        etag=str(resp.get("ETag", "")).strip('"'),
        metadata=dict(resp.get("Metadata") or {}),
    )


def list_objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
    """Every object under `prefix` (recursively), with size and ETag (listings carry no metadata)."""
    with s3_errors(s3_uri(bucket, prefix), action="listing"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(bucket, item["Key"], int(item["Size"]), str(item.get("ETag", "")).strip('"'))


def get_bytes(s3: S3Client, bucket: str, key: str) -> bytes | None:
    """A small object's body (a manifest, a marker); None when the key does not exist."""
    with s3_errors(s3_uri(bucket, key), action="reading"):
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise
        try:
            return bytes(body.read())
        finally:
            body.close()


def put_bytes(s3: S3Client, bucket: str, key: str, data: bytes, *, content_type: str = "application/json") -> None:
    """PUT a small object in one request (atomic on S3: readers see the old object or the new one), with its sha256."""
    with s3_errors(s3_uri(bucket, key), action="writing"):
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Metadata={SHA256_METADATA: hashlib.sha256(data).hexdigest()},
        )


def bucket_exists(s3: S3Client, bucket: str) -> bool:
    """Whether `bucket` exists (and this identity may see it)."""
    with s3_errors(s3_uri(bucket), action="checking the bucket"):
        try:
            s3.head_bucket(Bucket=bucket)
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise
            return False


def ensure_bucket(s3: S3Client, bucket: str) -> bool:
    """Create `bucket` when it does not exist; True when it was created."""
    if bucket_exists(s3, bucket):
        return False
    with s3_errors(s3_uri(bucket), action="creating the bucket"):
        try:
            s3.create_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
            return False
    log.info("created bucket %s", s3_uri(bucket))
    return True


def stream_digest(s3: S3Client, bucket: str, key: str) -> tuple[int, str]:
    """(size, sha256 hex) of an object's body, streamed: nothing is written to disk."""
    digest = hashlib.sha256()
    size = 0
    with s3_errors(s3_uri(bucket, key), action="reading"):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        finally:
            body.close()
    return size, digest.hexdigest()


# --- transfers ------------------------------------------------------------------------------------------------


class _Progress:
    """Logs a transfer's progress to stderr about every `every` seconds (boto3 calls it from several threads)."""

    def __init__(self, what: str, total: int, every: float = 10.0) -> None:
        self.what, self.total, self.every = what, total, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, amount: int) -> None:
        with self.lock:
            self.done += amount
            now = time.monotonic()
            if now - self.last < self.every:
                return
            self.last = now
        rate = self.done / max(now - self.start, 1e-9) / 1e6
        pct = 100.0 * self.done / self.total if self.total else 100.0
        log.info("%s: %.1f%% (%d/%d bytes, %.0f MB/s)", self.what, pct, self.done, self.total, rate)


def temp_path(dest: Path) -> Path:
    """A hidden temp name beside `dest` (same filesystem, so the final rename is atomic)."""
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Delete temp files that an interrupted `download` of `dest` left behind; returns them."""
    stale = sorted(dest.parent.glob(f".{dest.name}.*.part"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def download(
    s3: S3Client,
    bucket: str,
    key: str,
    dest: Path,
    *,
    threads: int = DEFAULT_THREADS,
    part_size: int = DEFAULT_PART_SIZE,
    expected_size: int | None = None,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Download an object to `dest` atomically: temp name beside it, size check, `verify(temp)`, fsync, rename.

    `verify` (e.g. a checksum check) runs on the complete temp file before it takes `dest`'s name; if it or
    anything else fails, the temp file is removed and `dest` is left as it was.
    """
    uri = s3_uri(bucket, key)
    tmp = temp_path(dest)
    progress = _Progress(f"download {uri}", expected_size or 0)
    try:
        with s3_errors(uri, action="downloading"), open(tmp, "wb") as fh:
            s3.download_fileobj(bucket, key, fh, Config=transfer_config(threads, part_size), Callback=progress)
            fh.flush()
            os.fsync(fh.fileno())
        size = tmp.stat().st_size
        if expected_size is not None and size != expected_size:
            raise UserError(
                f"downloaded {size} bytes from {uri}, expected {expected_size}",
                "retry; if it persists the object changed during the download or the store is faulty",
            )
        if verify is not None:
            verify(tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {dest} while downloading {uri}: {exc.strerror or exc}",
            f"free disk space in {dest.parent} or fix its permissions",
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def upload(
    s3: S3Client,
    path: Path,
    bucket: str,
    key: str,
    *,
    metadata: Mapping[str, str] | None = None,
    threads: int = DEFAULT_THREADS,
    part_size: int = DEFAULT_PART_SIZE,
) -> None:
    """Upload a file (multipart above `part_size`) with user metadata.

    S3 makes an object visible only once its PUT (or CompleteMultipartUpload) succeeds, so a reader never sees
    half an object: no temp key is needed; a failed multipart upload is aborted by boto3.
    """
    uri = s3_uri(bucket, key)
    size = path.stat().st_size
    extra: dict[str, Any] = {"Metadata": dict(metadata or {})}
    with s3_errors(uri, action="uploading to"):
        s3.upload_file(
            str(path),
            bucket,
            key,
            ExtraArgs=extra,
            Config=transfer_config(threads, part_size),
            Callback=_Progress(f"upload {uri}", size),
        )
