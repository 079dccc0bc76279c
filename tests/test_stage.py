"""Staging the tars from a real SeaweedFS into a manual dir: download, verify, never re-hash, fail clearly."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import ScriptResult, run_main, run_script

from imagenet_fleet import s3
from imagenet_fleet.engine import memberlist
from imagenet_fleet.errors import UserError
from imagenet_fleet.publish import upload_objects
from imagenet_fleet.stage import Expected, Item, main, marker_path, preflight_space

TRAIN, VAL, TEST = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_img_test.tar"


def _write_tar(path: Path, members: int, size: int) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(members):
            info = tarfile.TarInfo(f"ILSVRC2012_val_{i + 1:08d}.JPEG")
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))


@pytest.fixture(scope="session")
def tars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small train and val tars (stage moves bytes; what is inside does not matter to it)."""
    out = tmp_path_factory.mktemp("tars")
    _write_tar(out / TRAIN, 8, 60_000)
    _write_tar(out / VAL, 4, 30_000)
    return out


def _upload(s3_server: Any, tars: Path, bucket: str) -> str:
    s3_server.client().create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/ILSVRC2012/"
    upload_objects([tars / TRAIN, tars / VAL], uri, s3c=s3_server.client())
    return uri


@pytest.fixture(scope="session")
def shared_source(s3_server: Any, tars: Path) -> str:
    """s3://<bucket>/ILSVRC2012/ with the train and val tars (no test tar), with sha256 metadata. Do not modify."""
    return _upload(s3_server, tars, f"stage-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def source(shared_source: str, s3_env: dict[str, str]) -> str:
    return shared_source


@pytest.fixture
def own_source(s3_server: Any, tars: Path, s3_env: dict[str, str]) -> str:
    """Like `source`, in a bucket of this test's own (which it may modify)."""
    return _upload(s3_server, tars, f"stage-{uuid.uuid4().hex[:12]}")


def stage(capsys: pytest.CaptureFixture[str], source: str, manual: Path, *extra: str) -> ScriptResult:
    return run_main(main, ["--source", source, "--manual-dir", manual, *extra], capsys)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stage_downloads_verifies_and_then_skips(source: str, tars: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    manual = tmp_path / "manual"
    first = run_script("stage_imagenet.py", "--source", source, "--manual-dir", manual)  # the real CLI, once
    assert first.rc == 0, first.stderr
    s = first.summary
    assert s["changed"] is True and s["source"] == source and s["manual_dir"] == str(manual)
    assert {n: f["action"] for n, f in s["files"].items()} == {
        TRAIN: "downloaded", VAL: "downloaded", TEST: "missing-optional"}
    for name in (TRAIN, VAL):
        assert (manual / name).read_bytes() == (tars / name).read_bytes()
        entry = s["files"][name]
        assert entry["sha256"] == _sha(manual / name) and entry["bytes"] == (manual / name).stat().st_size
        assert entry["seconds"] >= 0 and entry["mb_per_s"] is not None
        assert marker_path(manual, name).is_file()
    assert "optional test split is skipped" in first.stderr
    assert sorted(p.name for p in manual.iterdir() if not p.name.startswith(".")) == [TRAIN, VAL]
    for name in (TRAIN, VAL):  # the hash pass listed each tar's members, as the engine would read them
        listed = memberlist.load(manual / name)
        assert listed is not None
        walks = memberlist.record_file(tars / name, nested=name == TRAIN)
        assert walks is not None and all(memberlist.read_walk(listed.ref(start)) == w for start, w in walks.items())

    markers = {n: marker_path(manual, n).read_bytes() for n in (TRAIN, VAL)}
    mtimes = {n: (manual / n).stat().st_mtime_ns for n in (TRAIN, VAL)}
    # Prove the re-run does not read the tar: change its bytes but keep its size and mtime; a re-hash would notice.
    st = (manual / VAL).stat()
    (manual / VAL).write_bytes(b"\0" * st.st_size)
    os.utime(manual / VAL, ns=(st.st_atime_ns, st.st_mtime_ns))

    again = stage(capsys, source, manual)
    assert again.rc == 0 and again.summary["changed"] is False
    assert {n: f["action"] for n, f in again.summary["files"].items()} == {
        TRAIN: "present", VAL: "present", TEST: "missing-optional"}
    assert again.summary["files"][TRAIN]["sha256"] == s["files"][TRAIN]["sha256"]
    assert {n: marker_path(manual, n).read_bytes() for n in (TRAIN, VAL)} == markers
    assert {n: (manual / n).stat().st_mtime_ns for n in (TRAIN, VAL)} == mtimes


def test_corrupted_local_tar_is_downloaded_again(source: str, tars: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    manual = tmp_path / "manual"
    assert stage(capsys, source, manual).rc == 0
    size = (manual / TRAIN).stat().st_size
    (manual / TRAIN).write_bytes(os.urandom(size))  # same size, other bytes, a new mtime
    result = stage(capsys, source, manual)
    assert result.rc == 0 and result.summary["changed"] is True
    assert result.summary["files"][TRAIN]["action"] == "downloaded"
    assert result.summary["files"][VAL]["action"] == "present"
    assert (manual / TRAIN).read_bytes() == (tars / TRAIN).read_bytes()


def test_tar_copied_in_by_hand_is_verified_not_downloaded(source: str, tars: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.copy2(tars / TRAIN, manual / TRAIN)
    result = stage(capsys, source, manual)
    assert result.rc == 0
    assert result.summary["files"][TRAIN]["action"] == "verified"
    assert result.summary["files"][VAL]["action"] == "downloaded"
    assert result.summary["bytes_downloaded"] == (tars / VAL).stat().st_size
    assert memberlist.load(manual / TRAIN) is not None  # listed by the hash pass that verified it
    assert stage(capsys, source, manual).summary["changed"] is False


def test_object_replaced_upstream_is_downloaded_again(s3_server: Any, own_source: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = own_source
    manual = tmp_path / "manual"
    assert stage(capsys, source, manual).rc == 0
    new_val = tmp_path / VAL
    new_val.write_bytes(os.urandom(4096))
    upload_objects([new_val], source, s3c=s3_server.client())
    result = stage(capsys, source, manual)
    assert result.summary["files"][VAL]["action"] == "downloaded"
    assert (manual / VAL).read_bytes() == new_val.read_bytes()


def test_wrong_sha256_metadata_fails_and_leaves_nothing(s3_server: Any, s3_env: dict[str, str], s3_bucket: str,
                                                        tars: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    admin = s3_server.client()
    for name in (TRAIN, VAL):
        admin.upload_file(str(tars / name), s3_bucket, f"in/{name}",
                          ExtraArgs={"Metadata": {"sha256": "ab" * 32 if name == VAL else _sha(tars / name)}})
    manual = tmp_path / "manual"
    result = stage(capsys, f"s3://{s3_bucket}/in/", manual)
    assert result.rc == 2
    line = result.error
    assert f"sha256 mismatch for s3://{s3_bucket}/in/{VAL}" in line
    assert "ab" * 32 in line and _sha(tars / VAL) in line
    assert not (manual / VAL).exists() and not marker_path(manual, VAL).exists()
    assert not list(manual.glob(f".{VAL}*"))  # no temp file either


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("s3://no-such-bucket-x/ILSVRC2012/", "bucket 'no-such-bucket-x' does not exist"),
        ("{bucket}/elsewhere/", "no ILSVRC2012_img_train.tar at {bucket}/elsewhere/ILSVRC2012_img_train.tar"),
    ],
)
def test_missing_bucket_or_object(where: str, expected: str, source: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    bucket_uri = source.rsplit("/", 2)[0]
    result = stage(capsys, where.format(bucket=bucket_uri), tmp_path / "manual")
    assert result.rc == 2
    assert expected.format(bucket=bucket_uri) in result.error and "s3://" in result.error
    assert not (tmp_path / "manual").exists()


def test_required_test_split_missing_is_an_error(source: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    result = stage(capsys, source, tmp_path / "m", "--splits", "validation,test", "--optional", "")
    assert result.rc == 2 and f"no {TEST} at {source}{TEST}" in result.error
    only_val = stage(capsys, source, tmp_path / "m", "--splits", "validation")
    assert list(only_val.summary["files"]) == [VAL]


def test_wrong_secret_is_one_clear_line(source: str, tmp_path: Path, s3_env: dict[str, str]) -> None:
    result = run_script("stage_imagenet.py", "--source", source, "--manual-dir", tmp_path / "m",
                        env={**os.environ, "AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert result.rc == 2
    assert "secret key does not match" in result.error and source in result.error
    assert "wrong-secret" not in result.stderr + result.stdout and s3_env["AWS_SECRET_ACCESS_KEY"] not in result.stderr


def test_check_changes_nothing(source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manual = tmp_path / "manual"
    check = stage(capsys, source, manual, "--check")
    assert check.rc == 0 and check.summary["changed"] is True and check.summary["check"] is True
    assert check.summary["files"][TRAIN]["action"] == "would-download"
    assert not manual.exists()
    assert stage(capsys, source, manual).rc == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in manual.iterdir()}
    again = stage(capsys, source, manual, "--check")
    assert again.summary["changed"] is False and again.summary["files"][VAL]["action"] == "present"
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in manual.iterdir()} == before


def test_official_md5s_are_checked_only_when_asked(source: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    result = stage(capsys, source, tmp_path / "m", "--official", "--splits", "validation")
    assert result.rc == 2
    assert f"md5 mismatch for {source}{VAL}: expected 29b22e2961454d5413ddabcf34fc5622 (official" in result.error


def test_not_enough_disk_space(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    remote = s3.ObjectInfo("b", f"p/{TRAIN}", free + 10**9, "etag")
    item = Item("train", TRAIN, "b", f"p/{TRAIN}", tmp_path / TRAIN, remote, Expected(None, None), "downloaded")
    with pytest.raises(UserError) as err:
        preflight_space(tmp_path, [item])
    assert "not enough free space" in err.value.cause and "--manual-dir" in err.value.fix
    preflight_space(tmp_path, [Item("train", TRAIN, "b", "k", tmp_path / TRAIN,
                                    s3.ObjectInfo("b", "k", 1000, "e"), Expected(None, None), "downloaded")])
