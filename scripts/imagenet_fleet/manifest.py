"""Manifests: the size and sha256 of every file of a build, named by content, checked the same way everywhere.

A manifest is deterministic JSON (no timestamps), so two manifests of the same files are equal byte for byte:

    {"format": "imagenet-fleet-manifest/1", "content_id": "<sha256 of the canonical file list>",
     "file_count": N, "total_bytes": N, "files": [{"path": "a/b", "size": N, "sha256": "<hex>"}, ...], ...extra}

Paths are relative POSIX paths, sorted. `content_id` names a release by what it contains.
Hashing is the slow part (~1.3 GB/s per core), so `build_manifest` keeps a hash cache in a sidecar JSON keyed by
(relative path, size, mtime_ns): a re-run hashes only files that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from imagenet_fleet.atomic import atomic_write_bytes, atomic_write_json
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "imagenet-fleet-manifest/1"
CACHE_NAME = ".imagenet-fleet-hashcache.json"  # sidecar at the manifest root; never listed in a manifest
CACHE_FORMAT = "imagenet-fleet-hashcache/1"
HASH_CHUNK = 4 * 1024 * 1024

Manifest = dict[str, Any]


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes that content ids are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read 4 MiB at a time (hashlib releases the GIL, so threads hash in parallel)."""
    return hash_file(path)[0]


def hash_file(
    path: Path, *, md5: bool = False, also: Callable[[memoryview], None] | None = None
) -> tuple[str, str | None]:
    """(sha256, md5 or None) of a file in one read pass; `also` sees every chunk of that pass, in order."""
    sha = hashlib.sha256()
    md = hashlib.md5(usedforsecurity=False) if md5 else None
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            sha.update(view[:n])
            if md is not None:
                md.update(view[:n])
            if also is not None:
                also(view[:n])
    return sha.hexdigest(), (md.hexdigest() if md is not None else None)


def content_id(files: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON of the file list (path, size, sha256 of each file, sorted by path)."""
    entries = sorted(({"path": f["path"], "size": int(f["size"]), "sha256": f["sha256"]} for f in files),
                     key=lambda f: f["path"])
    return hashlib.sha256(canonical_json(entries)).hexdigest()


class HashCache:
    """sha256 by (relative path, size, mtime_ns), kept in a JSON sidecar; a stale or unreadable cache is ignored."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("format") == CACHE_FORMAT and isinstance(data.get("entries"), dict):
                    self.entries = data["entries"]
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable hash cache %s: %s", path, exc)

    def get(self, rel: str, st: os.stat_result) -> str | None:
        entry = self.entries.get(rel)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            value = entry.get("sha256")
            return value if isinstance(value, str) else None
        return None

    def put(self, rel: str, st: os.stat_result, sha256: str) -> None:
        self.entries[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        self.dirty = True

    def prune(self, keep: Iterable[str], *, under: str = "") -> None:
        """Forget entries under `under` (a folder prefix, "" = all) that are not in `keep`."""
        keep_set = set(keep)
        for rel in [r for r in self.entries if r.startswith(under) and r not in keep_set]:
            del self.entries[rel]
            self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        try:
            atomic_write_json(self.path, {"format": CACHE_FORMAT, "entries": self.entries})
            self.dirty = False
        except OSError as exc:  # a read-only build dir still gets a manifest, just no cache
            log.warning("could not save the hash cache %s: %s", self.path, exc)


def list_files(root: Path, subdir: str | None = None) -> list[str]:
    """Relative POSIX paths of the regular files under `root/subdir` (or `root`), sorted; the cache is skipped.

    A symlink or special file is refused: a manifest describes bytes that a reader can fetch.
    """
    base = root / subdir if subdir else root
    if not base.is_dir():
        raise UserError(f"{base} is not a folder", "point at the folder the manifest should describe")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise UserError(f"{here / name} is a symlink", "replace it with a real folder; manifests list files")
        for name in filenames:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel == CACHE_NAME:
                continue
            if path.is_symlink() or not path.is_file():
                raise UserError(f"{path} is not a regular file", "remove it or replace it with a copy of its target")
            found.append(rel)
    return sorted(found)


def _check_rel(rel: str) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        raise UserError(f"manifest path {rel!r} is not a clean relative path", "rebuild the manifest")
    return rel


def build_manifest(
    root: Path,
    *,
    subdir: str | None = None,
    use_cache: bool = True,
    cache_path: Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Manifest:
    """The manifest of every file under `root` (or only under `root/subdir`, paths still relative to `root`).

    The hash cache lives at `cache_path` (default `root/.imagenet-fleet-hashcache.json`); unchanged files
    (same size and mtime_ns) are not read again. `extra` adds fields (e.g. dataset, version) to the manifest.
    """
    rels = list_files(root, subdir)
    cache = HashCache((cache_path or root / CACHE_NAME) if use_cache else None)
    files: list[dict[str, Any]] = []
    hashed = hashed_bytes = 0
    for rel in rels:
        path = root / rel
        st = path.stat()
        digest = cache.get(rel, st)
        if digest is None:
            digest = sha256_file(path)
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise UserError(f"{path} changed while it was hashed", "let the writer finish, then run again")
            cache.put(rel, st, digest)
            hashed += 1
            hashed_bytes += st.st_size
        files.append({"path": rel, "size": st.st_size, "sha256": digest})
    cache.prune(rels, under=f"{subdir.strip('/')}/" if subdir else "")
    cache.save()
    log.info("manifest of %s: %d files, hashed %d (%d bytes), %d from cache",
             root, len(files), hashed, hashed_bytes, len(files) - hashed)
    manifest: Manifest = dict(extra or {})
    manifest.update({
        "format": FORMAT,
        "content_id": content_id(files),
        "file_count": len(files),
        "total_bytes": sum(f["size"] for f in files),
        "files": files,
    })
    if subdir is not None:
        manifest["subdir"] = subdir
    return manifest


def manifest_bytes(manifest: Manifest) -> bytes:
    """The stored form of a manifest: indented, sorted keys, trailing newline (deterministic)."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


def parse_manifest(data: bytes, *, source: str) -> Manifest:
    """Parse and check a manifest's shape and its content_id; UserError naming `source` when it is not valid."""
    fix = "republish the release (its manifest is damaged or from another tool)"
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{source} is not valid JSON: {exc}", fix) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{source} is not an {FORMAT} manifest", fix)
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
        and isinstance(f.get("sha256"), str) for f in files
    ):
        raise UserError(f"{source} has a malformed file list", fix)
    for f in files:
        _check_rel(f["path"])
    if manifest.get("content_id") != content_id(files):
        raise UserError(f"{source}: content_id does not match its file list", fix)
    return manifest


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write a manifest atomically."""
    atomic_write_bytes(path, manifest_bytes(manifest))


def load_manifest(path: Path) -> Manifest:
    """Read and check a manifest file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UserError(f"no manifest at {path}", "publish or pull the release again") from exc
    return parse_manifest(data, source=str(path))


def verify_local(
    root: Path, manifest: Manifest, *, use_cache: bool = False, cache_path: Path | None = None
) -> list[str]:
    """Problems (empty when none) between the files under `root` and `manifest`: missing, extra, size, sha256.

    By default every file is hashed (this is the verification); `use_cache=True` trusts the hash cache for
    files whose size and mtime_ns are unchanged, for a quick re-check of a tree this host wrote itself.
    """
    problems: list[str] = []
    expected = {f["path"]: f for f in manifest["files"]}
    present = set(list_files(root, manifest.get("subdir")))
    cache = HashCache((cache_path or root / CACHE_NAME) if use_cache else None)
    for rel, entry in sorted(expected.items()):
        path = root / _check_rel(rel)
        if rel not in present:
            problems.append(f"missing: {rel}")
            continue
        st = path.stat()
        if st.st_size != entry["size"]:
            problems.append(f"size mismatch: {rel}: {st.st_size} bytes, manifest says {entry['size']}")
            continue
        cached = cache.get(rel, st)
        digest = cached or sha256_file(path)
        if digest != entry["sha256"]:
            problems.append(f"sha256 mismatch: {rel}: {digest}, manifest says {entry['sha256']}")
        elif use_cache and cached is None:
            cache.put(rel, st, digest)
    problems.extend(f"not in manifest: {rel}" for rel in sorted(present - expected.keys()))
    cache.save()
    return problems
