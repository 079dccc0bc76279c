"""The header index sees exactly the members TFDS's `iter_archive` yields, reading headers only."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from imagenet_fleet.engine import tarindex
from imagenet_fleet.errors import UserError


def _tar(path: Path, members: list[tuple[str, bytes | None]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _tfds_view(path: Path) -> list[tuple[str, bytes]]:
    """What TFDS's extractor yields (given a file object, it needs no TensorFlow)."""
    from tensorflow_datasets.core.download import extractor

    with path.open("rb") as f:
        return [(name, fobj.read()) for name, fobj in extractor.iter_tar(f)]


def _ours(path: Path) -> list[tuple[str, bytes]]:
    chain = tarindex.Chain(str(path), 0, path.stat().st_size, "train", label=0)
    (index,) = tarindex.index_chains([chain])
    data = path.read_bytes()
    return [(n, data[o : o + s]) for n, o, s in zip(index.names, index.offsets, index.sizes, strict=True)]


EDGE_MEMBERS: list[tuple[str, bytes | None]] = [
    ("n01440764_1.JPEG", b"\xff\xd8 one"),
    ("./n01440764_2.JPEG", b"two"),  # './' prefix: normalised away
    ("dir", None),
    ("dir/n01440764_3.JPEG", b"three"),
    (".hidden.JPEG", b"skipped by TFDS"),
    ("backup.JPEG~", b"skipped by TFDS"),
    ("empty.JPEG", b""),
    ("d/" + "long_" * 30 + ".JPEG", b"GNU long name"),
    ("n01440764_4.JPEG", os.urandom(5000)),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_equal_tfds_iter_tar(tmp_path: Path, fmt: int) -> None:
    members = EDGE_MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in EDGE_MEMBERS if len(m[0]) < 100]
    if fmt == tarfile.USTAR_FORMAT:
        members = [*members, ("p" * 90 + "/" + "q" * 60 + ".JPEG", b"ustar prefix")]
    path = _tar(tmp_path / "x.tar", members, fmt)
    assert _ours(path) == _tfds_view(path)


def _assert_flat_walks_agree(tar_path: Path) -> None:
    """The fast parser (a flat tar's chunked walk) sees what Python's tarfile sees."""
    chain = tarindex.Chain(str(tar_path), 0, tar_path.stat().st_size, "validation", flat=True)
    fd = tarindex.open_for(chain)
    try:
        assert tarindex._walk_fast(fd, chain) == tarindex._walk_tarfile(fd, chain)
    finally:
        os.close(fd)


def test_fast_parser_agrees_with_tarfile_on_sample_tars(sample_dir: Path) -> None:
    for tar_path in sorted(sample_dir.glob("*.tar")):
        _assert_flat_walks_agree(tar_path)


def test_inner_tars_are_indexed_in_place(sample_dir: Path) -> None:
    """The train tar's inner tars are read at their offsets inside the outer file, as TFDS reads them."""
    outer = sample_dir / "ILSVRC2012_img_train.tar"
    chain = tarindex.Chain(str(outer), 0, outer.stat().st_size, "train")
    fd = tarindex.open_for(chain)
    try:
        members = tarindex.walk(fd, chain)
    finally:
        os.close(fd)
    data = outer.read_bytes()
    name, offset, size, _ = members[0]
    inner = tarindex.Chain(str(outer), offset, offset + size, "train", label=0)
    (index,) = tarindex.index_chains([inner])
    expected = _tfds_view_bytes(data[offset : offset + size])
    assert [(n, data[o : o + s]) for n, o, s in zip(index.names, index.offsets, index.sizes, strict=True)] == expected


def _tfds_view_bytes(blob: bytes) -> list[tuple[str, bytes]]:
    from tensorflow_datasets.core.download import extractor

    return [(name, fobj.read()) for name, fobj in extractor.iter_tar(io.BytesIO(blob), stream=True)]


def test_links_are_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "l.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("link.JPEG")
        info.type, info.linkname = tarfile.SYMTYPE, "x.JPEG"
        tar.addfile(info)
    with pytest.raises(UserError, match="link"):
        _ours(path)


def test_truncated_tar_is_a_user_error(tmp_path: Path) -> None:
    path = _tar(tmp_path / "t.tar", [("a.JPEG", os.urandom(10_000))])
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(UserError, match="past the end|truncated|unreadable"):
        _ours(path)


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagenet_fleet import sample

    out = tmp_path_factory.mktemp("tarindex-sample")
    sample.make_sample(out, sample.SampleSpec(classes=3, images_per_class=4, val_images=5, test_images=2))
    return out


@pytest.mark.parametrize("chunk", [tarindex.BLOCK, 3 * tarindex.BLOCK, 4096])
def test_flat_walk_in_chunks_agrees_with_tarfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """A flat tar's walk reads `FLAT_CHUNK` bytes at a time: headers across chunk ends, images larger than a chunk."""
    monkeypatch.setattr(tarindex, "FLAT_CHUNK", chunk)
    sizes = [0, 1, 511, 512, 513, 4095, 4096, 9000, 3, 70_000, 100]
    _assert_flat_walks_agree(
        _tar(tmp_path / "flat.tar", [(f"ILSVRC2012_val_{i:08d}.JPEG", os.urandom(n)) for i, n in enumerate(sizes)])
    )
