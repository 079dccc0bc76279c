"""imagenet_fleet.manifest: hashing, content ids, the hash cache, atomic writes, local verification."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from imagenet_fleet.errors import UserError
from imagenet_fleet.manifest import (
    CACHE_NAME,
    FORMAT,
    build_manifest,
    content_id,
    hash_file,
    load_manifest,
    manifest_bytes,
    parse_manifest,
    sha256_file,
    verify_local,
    write_manifest,
)


def _tree(root: Path) -> Path:
    (root / "imagenet2012" / "5.1.0").mkdir(parents=True)
    (root / "imagenet2012" / "5.1.0" / "dataset_info.json").write_text('{"name": "imagenet2012"}')
    (root / "imagenet2012" / "5.1.0" / "shard-00000-of-00002").write_bytes(os.urandom(300_000))
    (root / "imagenet2012" / "5.1.0" / "shard-00001-of-00002").write_bytes(os.urandom(5_000_000))
    (root / "other.txt").write_text("not part of the build")
    return root


def test_sha256_and_md5_match_hashlib(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)  # spans several read chunks
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert hash_file(path, md5=True) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    assert hash_file(path)[1] is None


def test_build_manifest_lists_every_file_sorted_with_content_id(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    m = build_manifest(root)
    assert m["format"] == FORMAT
    assert [f["path"] for f in m["files"]] == [
        "imagenet2012/5.1.0/dataset_info.json",
        "imagenet2012/5.1.0/shard-00000-of-00002",
        "imagenet2012/5.1.0/shard-00001-of-00002",
        "other.txt",
    ]
    assert (root / CACHE_NAME).is_file()  # the sidecar exists and is not listed
    for f in m["files"]:
        assert f["size"] == (root / f["path"]).stat().st_size
        assert f["sha256"] == hashlib.sha256((root / f["path"]).read_bytes()).hexdigest()
    assert m["file_count"] == 4 and m["total_bytes"] == sum(f["size"] for f in m["files"])
    assert m["content_id"] == content_id(m["files"])

    sub = build_manifest(root, subdir="imagenet2012/5.1.0", extra={"dataset": "imagenet2012"})
    assert [f["path"] for f in sub["files"]] == [f["path"] for f in m["files"][:3]]
    assert sub["dataset"] == "imagenet2012" and sub["subdir"] == "imagenet2012/5.1.0"


def test_content_id_follows_content_not_time_or_place(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    m1 = build_manifest(a)
    os.utime(a / "other.txt", ns=(1, 1))
    (a / "imagenet2012").rename(a / "moved")
    (a / "moved").rename(a / "imagenet2012")
    m2 = build_manifest(a)
    assert m2["content_id"] == m1["content_id"]
    assert manifest_bytes(m2) == manifest_bytes(m1)  # deterministic: no timestamps
    (a / "other.txt").write_text("not part of the build!")
    assert build_manifest(a)["content_id"] != m1["content_id"]


def test_hash_cache_skips_unchanged_files_and_rehashes_changed_ones(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    shard = root / "imagenet2012" / "5.1.0" / "shard-00001-of-00002"
    first = build_manifest(root)
    original = next(f["sha256"] for f in first["files"] if f["path"].endswith("00001-of-00002"))

    # Same size, same mtime, different bytes: a run that re-hashed would see the change; the cache does not.
    st = shard.stat()
    shard.write_bytes(os.urandom(st.st_size))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    cached = build_manifest(root)
    assert next(f["sha256"] for f in cached["files"] if f["path"] == first["files"][2]["path"]) == original

    # A new mtime (what any real write gives) invalidates the entry.
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fresh = build_manifest(root)
    assert next(f["sha256"] for f in fresh["files"] if f["path"] == first["files"][2]["path"]) == sha256_file(shard)

    # Without the cache, the truth.
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert build_manifest(root, use_cache=False)["content_id"] == fresh["content_id"]


def test_unreadable_cache_is_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    (root / CACHE_NAME).write_text("{not json")
    assert build_manifest(root)["content_id"] == build_manifest(root, use_cache=False)["content_id"]
    assert json.loads((root / CACHE_NAME).read_text())["entries"]  # rewritten


def test_write_and_load_roundtrip_atomically(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    m = build_manifest(root)
    out = tmp_path / "out"
    out.mkdir()
    write_manifest(out / "manifest.json", m)
    assert os.listdir(out) == ["manifest.json"]
    assert load_manifest(out / "manifest.json") == m
    assert (out / "manifest.json").read_bytes() == manifest_bytes(m)


def test_parse_manifest_rejects_damage(tmp_path: Path) -> None:
    m = build_manifest(_tree(tmp_path / "data"))
    tampered = dict(m, files=[dict(m["files"][0], size=1), *m["files"][1:]])
    with pytest.raises(UserError, match="content_id does not match"):
        parse_manifest(manifest_bytes(tampered), source="s3://b/r/manifest.json")
    with pytest.raises(UserError, match="not valid JSON"):
        parse_manifest(b"{", source="x")
    with pytest.raises(UserError, match="not an imagenet-fleet-manifest"):
        parse_manifest(b"{}", source="x")
    evil = dict(m, files=[{"path": "../etc/passwd", "size": 1, "sha256": "0" * 64}])
    evil["content_id"] = content_id(evil["files"])
    with pytest.raises(UserError, match="not a clean relative path"):
        parse_manifest(manifest_bytes(evil), source="x")
    with pytest.raises(UserError, match="no manifest at"):
        load_manifest(tmp_path / "absent.json")


def test_verify_local_finds_every_kind_of_problem(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    m = build_manifest(root)
    assert verify_local(root, m) == []
    build = root / "imagenet2012" / "5.1.0"
    (build / "dataset_info.json").unlink()
    (build / "shard-00000-of-00002").write_bytes(b"short")
    shard = build / "shard-00001-of-00002"
    shard.write_bytes(os.urandom(shard.stat().st_size))
    (build / "stray").write_text("x")
    problems = verify_local(root, m)
    assert problems == [
        "missing: imagenet2012/5.1.0/dataset_info.json",
        "size mismatch: imagenet2012/5.1.0/shard-00000-of-00002: 5 bytes, manifest says 300000",
        f"sha256 mismatch: imagenet2012/5.1.0/shard-00001-of-00002: {sha256_file(shard)}, "
        f"manifest says {m['files'][2]['sha256']}",
        "not in manifest: imagenet2012/5.1.0/stray",
    ]


def test_symlinks_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    (root / "link").symlink_to(root / "other.txt")
    with pytest.raises(UserError, match="not a regular file"):
        build_manifest(root)
