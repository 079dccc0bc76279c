"""Publishing a build to a real SeaweedFS as a content-named release, verifying it, and seeding a bucket."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import ScriptResult, run_main, run_script

from imagenet_fleet import s3
from imagenet_fleet.manifest import content_id, sha256_file
from imagenet_fleet.publish import main, main_upload_objects, main_verify, release_id

VERSION = "5.1.0"


def _build(data_dir: Path) -> Path:
    """A small TFDS-shaped build: data_dir/imagenet2012/5.1.0/{dataset_info.json, features.json, shards}."""
    build = data_dir / "imagenet2012" / VERSION
    build.mkdir(parents=True)
    (build / "dataset_info.json").write_text(json.dumps({"name": "imagenet2012", "version": VERSION}))
    (build / "features.json").write_text("{}")
    for split, shards in (("train", 3), ("validation", 1)):
        for i in range(shards):
            (build / f"imagenet2012-{split}.tfrecord-{i:05d}-of-{shards:05d}").write_bytes(os.urandom(70_000 + i))
    return data_dir


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return _build(tmp_path / "tfds")


def publish(capsys: pytest.CaptureFixture[str], data_dir: Path, dest: str, *extra: str) -> ScriptResult:
    return run_main(main, ["--data-dir", data_dir, "--dest", dest, *extra], capsys)


def verify(capsys: pytest.CaptureFixture[str], uri: str) -> ScriptResult:
    return run_main(main_verify, ["--uri", uri], capsys)


def test_publish_real_tfds_build_then_verify(tfds_build: Any, s3_server: Any, s3_env: dict[str, str],
                                             s3_bucket: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "tfds"
    shutil.copytree(tfds_build.data_dir, data_dir)  # publish writes its hash cache into the data dir
    dest = f"s3://{s3_bucket}/releases/"
    result = run_script("publish_dataset.py", "--data-dir", data_dir, "--dest", dest)  # the real CLIs
    assert result.rc == 0, result.stderr
    s = result.summary
    files = sorted(p for p in (data_dir / "imagenet2012" / VERSION).rglob("*") if p.is_file())
    assert s["changed"] is True and s["files"] == s["uploaded_files"] == len(files)
    assert s["bytes"] == sum(p.stat().st_size for p in files)
    assert s["release_id"] == f"imagenet2012-{VERSION}-{s['release_id'][-12:]}" and len(s["release_id"]) == 31
    assert s["uri"] == f"{dest}{s['release_id']}/" and s["manifest_uri"] == f"{s['uri']}manifest.json"

    stored = s3.get_bytes(s3_server.client(), s3_bucket, f"releases/{s['release_id']}/manifest.json")
    assert stored is not None
    manifest = json.loads(stored)
    assert manifest["release_id"] == s["release_id"] == release_id(VERSION, manifest["content_id"])
    assert manifest["content_id"] == content_id(manifest["files"])
    assert {f["path"] for f in manifest["files"]} == {p.relative_to(data_dir).as_posix() for p in files}
    some = manifest["files"][0]
    head = s3.head(s3_server.client(), s3_bucket, f"releases/{s['release_id']}/{some['path']}")
    assert head is not None and head.sha256 == some["sha256"] == sha256_file(data_dir / some["path"])

    checked = run_script("verify_release.py", "--uri", s["uri"])
    assert checked.rc == 0, checked.stderr
    assert checked.summary["ok"] is True and checked.summary["files"] == len(files)
    assert checked.summary["bytes"] == s["bytes"] and checked.summary["problems"] == []


def test_publish_twice_uploads_nothing(s3_env: dict[str, str], s3_bucket: str, data_dir: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"s3://{s3_bucket}/releases"
    first = publish(capsys, data_dir, dest)
    assert first.rc == 0 and first.summary["uploaded_files"] == 6
    second = publish(capsys, data_dir, dest)
    assert second.rc == 0
    assert second.summary["changed"] is False and second.summary["uploaded_files"] == 0
    assert second.summary["release_id"] == first.summary["release_id"]


def test_changed_build_is_a_new_release(s3_env: dict[str, str], s3_bucket: str, data_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"s3://{s3_bucket}/releases/"
    first = publish(capsys, data_dir, dest).summary
    (data_dir / "imagenet2012" / VERSION / "features.json").write_text('{"changed": true}')
    second = publish(capsys, data_dir, dest).summary
    assert second["changed"] is True and second["release_id"] != first["release_id"]
    assert second["uploaded_files"] == 6  # a release is self-contained
    assert verify(capsys, first["uri"]).rc == 0 and verify(capsys, second["uri"]).rc == 0


def test_release_without_manifest_is_absent_and_publish_resumes(s3_server: Any, s3_env: dict[str, str],
                                                                s3_bucket: str, data_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    dest = f"s3://{s3_bucket}/releases/"
    first = publish(capsys, data_dir, dest).summary
    admin = s3_server.client()
    prefix = f"releases/{first['release_id']}/"
    admin.delete_object(Bucket=s3_bucket, Key=prefix + "manifest.json")  # as if interrupted before the commit
    shard = "imagenet2012/5.1.0/imagenet2012-train.tfrecord-00001-of-00003"
    admin.put_object(Bucket=s3_bucket, Key=prefix + shard, Body=b"half-written")  # and one object is wrong

    absent = verify(capsys, first["uri"])
    assert absent.rc == 2
    assert f"no release at {first['uri']}" in absent.error and "manifest.json does not exist" in absent.error

    resumed = publish(capsys, data_dir, dest)
    assert resumed.rc == 0 and resumed.summary["changed"] is True
    assert resumed.summary["uploaded_files"] == 1  # only the wrong object; the other five were kept
    assert verify(capsys, first["uri"]).summary["ok"] is True


def test_tampered_or_extra_object_fails_verification(s3_server: Any, s3_env: dict[str, str], s3_bucket: str,
                                                     data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = publish(capsys, data_dir, f"s3://{s3_bucket}/r/").summary
    admin = s3_server.client()
    prefix = f"r/{s['release_id']}/"
    shard = "imagenet2012/5.1.0/imagenet2012-validation.tfrecord-00000-of-00001"
    size = (data_dir / shard).stat().st_size
    admin.put_object(Bucket=s3_bucket, Key=prefix + shard, Body=os.urandom(size),
                     Metadata={"sha256": sha256_file(data_dir / shard)})  # same size, same metadata, other bytes
    admin.put_object(Bucket=s3_bucket, Key=prefix + "stray.txt", Body=b"x")
    result = run_script("verify_release.py", "--uri", s["uri"])
    assert result.rc == 1
    problems = result.summary["problems"]
    assert result.summary["ok"] is False and len(problems) == 2
    assert problems[0].startswith(f"sha256 mismatch: {s['uri']}{shard}: ")
    assert problems[1] == f"not in manifest: {s['uri']}stray.txt"
    assert f"{s['uri']}{shard}" in result.stderr


def test_readonly_identity_cannot_publish(s3_readonly_env: dict[str, str], s3_bucket: str, data_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    result = publish(capsys, data_dir, f"s3://{s3_bucket}/releases/")
    assert result.rc == 2
    assert result.error.startswith(f"error: access denied to s3://{s3_bucket}/releases/imagenet2012-5.1.0-")
    assert s3_readonly_env["AWS_SECRET_ACCESS_KEY"] not in result.stderr


def test_missing_bucket_and_missing_build(s3_env: dict[str, str], data_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    no_bucket = publish(capsys, data_dir, "s3://no-such-bucket-y/releases/")
    assert no_bucket.rc == 2 and "bucket 'no-such-bucket-y' does not exist" in no_bucket.error
    assert "s3://no-such-bucket-y/releases/" in no_bucket.error
    no_build = publish(capsys, tmp_path / "empty", "s3://no-such-bucket-y/releases/")
    assert no_build.rc == 2 and "is not a TFDS build" in no_build.error


def test_check_changes_nothing(s3_server: Any, s3_env: dict[str, str], s3_bucket: str, data_dir: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    check = publish(capsys, data_dir, f"s3://{s3_bucket}/releases/", "--check")
    assert check.rc == 0 and check.summary["changed"] is True and check.summary["uploaded_files"] == 6
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_upload_objects_is_idempotent(s3_server: Any, s3_env: dict[str, str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    files = []
    for name, size in (("ILSVRC2012_img_val.tar", 50_000), ("ILSVRC2012_img_test.tar", 20_000)):
        files.append(tmp_path / name)
        files[-1].write_bytes(os.urandom(size))
    bucket = "t-upload-objects"
    dest = f"s3://{bucket}/ILSVRC2012/"
    check = run_main(main_upload_objects, ["--dest", dest, "--create-bucket", "--check", *files], capsys)
    assert check.rc == 0 and check.summary["changed"] is True and not s3.bucket_exists(s3_server.client(), bucket)
    first = run_script("upload_objects.py", "--dest", dest, "--create-bucket", *files)
    assert first.rc == 0, first.stderr
    assert first.summary["bucket_created"] is True
    assert {f["action"] for f in first.summary["files"].values()} == {"uploaded"}
    info = s3.head(s3_server.client(), bucket, "ILSVRC2012/ILSVRC2012_img_val.tar")
    assert info is not None and info.sha256 == sha256_file(files[0]) and info.size == 50_000
    again = run_main(main_upload_objects, ["--dest", dest, "--create-bucket", *files], capsys)
    assert again.summary["changed"] is False
    assert {f["action"] for f in again.summary["files"].values()} == {"present"}
    files[1].write_bytes(os.urandom(20_000))
    changed = run_main(main_upload_objects, ["--dest", dest, *files], capsys)
    assert {n: f["action"] for n, f in changed.summary["files"].items()} == {
        "ILSVRC2012_img_val.tar": "present", "ILSVRC2012_img_test.tar": "uploaded"}
