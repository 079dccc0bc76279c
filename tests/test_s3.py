"""imagenet_fleet.s3 against a real SeaweedFS: URIs, transfers, and the errors a user sees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from imagenet_fleet import s3
from imagenet_fleet.errors import UserError

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://imagenet/ILSVRC2012/", ("imagenet", "ILSVRC2012/")),
        ("s3://imagenet/ILSVRC2012", ("imagenet", "ILSVRC2012/")),
        ("s3://imagenet/a/b/", ("imagenet", "a/b/")),
        ("s3://imagenet", ("imagenet", "")),
        ("s3://imagenet/", ("imagenet", "")),
        ("s3://my.bucket-1/x", ("my.bucket-1", "x/")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert s3.parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["imagenet/ILSVRC2012/", "https://x/y", "s3://", "s3://Upper/x", "s3://ab/x", "s3://b_b/x",
            "s3://bucket//x", "s3://bucket/a\nb"],
)
def test_parse_s3_uri_rejects(uri: str) -> None:
    with pytest.raises(UserError) as err:
        s3.parse_s3_uri(uri)
    assert "s3://<bucket>/<prefix>/" in err.value.fix


def _client(server: Any, **kwargs: Any) -> Any:
    return s3.client(server.endpoint_url, **kwargs)


def test_upload_download_multipart_roundtrip(s3_server: Any, s3_env: dict[str, str], s3_bucket: str,
                                             tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 123)  # 3 parts of 5 MiB (S3's minimum part size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    c = _client(s3_server)
    s3.upload(c, src, s3_bucket, "a/b.bin", metadata={"sha256": digest}, threads=3, part_size=5 * MiB)

    info = s3.head(c, s3_bucket, "a/b.bin")
    assert info is not None and info.size == len(data) and info.sha256 == digest
    assert info.etag.endswith("-3")  # it really was a multipart upload
    assert s3.stream_digest(c, s3_bucket, "a/b.bin") == (len(data), digest)
    assert [(o.key, o.size) for o in s3.list_objects(c, s3_bucket, "a/")] == [("a/b.bin", len(data))]

    dest_dir = tmp_path / "out"
    dest_dir.mkdir()
    dest = dest_dir / "b.bin"
    s3.download(c, s3_bucket, "a/b.bin", dest, threads=3, part_size=5 * MiB, expected_size=len(data))
    assert dest.read_bytes() == data
    assert os.listdir(dest_dir) == ["b.bin"]  # no temp file left


def test_download_failing_verification_leaves_nothing(s3_server: Any, s3_env: dict[str, str], s3_bucket: str,
                                                      tmp_path: Path) -> None:
    c = _client(s3_server)
    s3.put_bytes(c, s3_bucket, "x.json", b"{}")
    dest = tmp_path / "x.json"
    dest.write_bytes(b"old")

    def reject(path: Path) -> None:
        assert path.read_bytes() == b"{}" and path != dest
        raise UserError("bad digest", "none")

    with pytest.raises(UserError, match="bad digest"):
        s3.download(c, s3_bucket, "x.json", dest, verify=reject)
    assert dest.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.json"]
    with pytest.raises(UserError, match="expected 5"):
        s3.download(c, s3_bucket, "x.json", dest, expected_size=5)
    assert os.listdir(tmp_path) == ["x.json"]


def test_head_and_get_bytes_missing_key_is_none(s3_server: Any, s3_env: dict[str, str], s3_bucket: str) -> None:
    c = _client(s3_server)
    assert s3.head(c, s3_bucket, "nope") is None
    assert s3.get_bytes(c, s3_bucket, "nope") is None


def test_missing_bucket_names_the_uri(s3_server: Any, s3_env: dict[str, str]) -> None:
    c = _client(s3_server)
    for call in (lambda: s3.head(c, "no-such-bucket", "k"), lambda: s3.get_bytes(c, "no-such-bucket", "k"),
                 lambda: list(s3.list_objects(c, "no-such-bucket", "p/"))):
        with pytest.raises(UserError) as err:
            call()
        assert "bucket 'no-such-bucket' does not exist" in err.value.cause
        assert "s3://no-such-bucket/" in err.value.cause


def test_wrong_secret(s3_server: Any, s3_env: dict[str, str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(UserError) as err:
        s3.head(_client(s3_server), s3_bucket, "k")
    assert "secret key does not match" in err.value.cause and f"s3://{s3_bucket}/k" in err.value.cause
    assert "not-the-secret" not in str(err.value)


def test_unknown_access_key(s3_server: Any, s3_env: dict[str, str], s3_bucket: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOBODY")
    with pytest.raises(UserError, match="does not know this access key id"):
        s3.get_bytes(_client(s3_server), s3_bucket, "k")


def test_no_credentials(s3_server: Any, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError) as err:
        s3.head(_client(s3_server), "imagenet", "k")
    assert "no usable S3 credentials" in err.value.cause and "AWS_PROFILE" in err.value.fix


def test_readonly_identity_cannot_write(s3_server: Any, s3_readonly_env: dict[str, str], s3_bucket: str,
                                        tmp_path: Path) -> None:
    c = _client(s3_server)
    assert s3.head(c, s3_bucket, "k") is None  # reading is allowed
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(UserError) as err:
        s3.upload(c, path, s3_bucket, "k")
    assert err.value.cause.startswith(f"access denied to s3://{s3_bucket}/k")
    with pytest.raises(UserError, match="access denied"):
        s3.put_bytes(c, s3_bucket, "k", b"x")


def test_unreachable_endpoint(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(UserError) as err:
        s3.head(s3.client("http://127.0.0.1:9"), "imagenet", "k")
    assert "cannot reach the S3 endpoint" in err.value.cause and "s3://imagenet/k" in err.value.cause


def test_ensure_bucket(s3_server: Any, s3_env: dict[str, str]) -> None:
    c = _client(s3_server)
    assert not s3.bucket_exists(c, "t-ensure-bucket")
    assert s3.ensure_bucket(c, "t-ensure-bucket") is True
    assert s3.ensure_bucket(c, "t-ensure-bucket") is False
    assert s3.bucket_exists(c, "t-ensure-bucket")
