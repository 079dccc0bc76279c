"""Member lists recorded from a tar's bytes as they stream past: the same as the engine's own header walks, saved
beside the tar, trusted only while the tar is unchanged; and the writers' check of every header against the index."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from imagenet_fleet import imagenet
from imagenet_fleet.engine import memberlist, tarindex
from imagenet_fleet.engine.tarindex import Walk


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagenet_fleet import sample

    out = tmp_path_factory.mktemp("memberlist-sample")
    sample.make_sample(out, sample.SampleSpec(classes=3, images_per_class=4, val_images=5, test_images=2))
    return out


def _disk_walks(tar: Path, nested: bool) -> dict[int, Walk]:
    """What the engine reads from disk: the tar's walk, and each inner tar's."""
    fd = os.open(tar, os.O_RDONLY)
    try:
        outer = tarindex.walk(fd, tarindex.Chain(str(tar), 0, tar.stat().st_size, "x"))
        walks = {0: outer}
        if nested:
            for _, offset, size, _ in outer:
                walks[offset] = tarindex.walk(fd, tarindex.Chain(str(tar), offset, offset + size, "x"))
        return walks
    finally:
        os.close(fd)


def _record(data: bytes, nested: bool, chunk: int) -> dict[int, Walk] | None:
    recorder = memberlist.Recorder(len(data), nested)
    for at in range(0, len(data), chunk):
        recorder.feed(data[at : at + chunk])
    return recorder.walks()


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("chunk", [511, 512, 513, 4097, 1 << 20])
def test_recorded_walks_equal_the_disk_walks(sample_dir: Path, chunk: int) -> None:
    """Any chunking of the stream (headers split across chunks) gives the engine's own walks."""
    for split, name in imagenet.TAR_NAMES.items():
        tar = sample_dir / name
        assert _record(tar.read_bytes(), split == "train", chunk) == _disk_walks(tar, split == "train")


def test_recorded_byte_by_byte(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(_tar_bytes([("a.JPEG", os.urandom(1000)), ("b.JPEG", b""), ("c.JPEG", b"x" * 512)]))
    assert _record(tar.read_bytes(), nested=False, chunk=1) == _disk_walks(tar, nested=False)


def test_long_names_leave_the_tar_or_that_inner_tar_to_the_engine() -> None:
    plain = _tar_bytes([("n01440764_1.JPEG", b"x" * 700), ("n01440764_2.JPEG", b"y" * 3)])
    long = _tar_bytes([("n01443537_" + "9" * 120 + ".JPEG", b"z" * 10)])
    outer = _tar_bytes([("n01440764.tar", plain), ("n01443537.tar", long)])
    walks = _record(outer, nested=True, chunk=4096)
    assert walks is not None
    starts = [offset for _, offset, _, _ in walks[0]]
    assert set(walks) == {0, starts[0]}  # the plain inner tar is listed, the one with a long name is not
    assert [item[0] for item in walks[starts[0]]] == ["n01440764_1.JPEG", "n01440764_2.JPEG"]
    assert _record(long, nested=False, chunk=4096) is None  # a flat tar with a long name: not listed at all


def test_truncated_stream_lists_nothing(sample_dir: Path) -> None:
    data = (sample_dir / imagenet.TAR_NAMES["validation"]).read_bytes()
    assert _record(data[: len(data) // 2], nested=False, chunk=4096) is None
    assert _record(b"", nested=True, chunk=4096) == {0: []}  # (as the disk walk of an empty file)


def test_saved_lists_load_only_while_the_tar_is_unchanged(sample_dir: Path, tmp_path: Path) -> None:
    tar = tmp_path / imagenet.TAR_NAMES["train"]
    tar.write_bytes((sample_dir / tar.name).read_bytes())
    walks = memberlist.record_file(tar, nested=True)
    assert walks is not None
    path = memberlist.save(tar, walks)
    assert path == tmp_path / f".{tar.name}.members"
    loaded = memberlist.load(tar)
    assert loaded is not None
    assert {start: memberlist.read_walk(loaded.ref(start)) for start in walks} == walks
    st = tar.stat()
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert memberlist.load(tar) is None  # touched: not trusted
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert memberlist.load(tar) is not None
    path.write_bytes(b"not a member list\n")
    assert memberlist.load(tar) is None


def test_headers_are_checked_against_the_index(tmp_path: Path) -> None:
    members = [
        ("n01440764_1.JPEG", b"\xff\xd8 one"),
        ("./n01440764_2.JPEG", b"two"),
        ("d/" + "long_" * 30 + ".JPEG", b"GNU long name"),
        ("n01440764_\u00e9.JPEG", b"not ascii"),
    ]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / "t.tar"
        path.write_bytes(_tar_bytes(members, fmt))
        data = path.read_bytes()
        with tarfile.open(path) as tar:
            infos = tar.getmembers()
        for info in infos:
            key = tarindex.normpath(info.name)
            assert key is not None
            block = data[info.offset_data - 512 : info.offset_data]
            tarindex.check_header(str(path), block, info.offset_data, key, info.size)  # as indexed: passes
            with pytest.raises(tarindex.ChangedTar, match="the tar changed"):
                tarindex.check_header(str(path), block, info.offset_data, key, info.size + 1)
        first = infos[0]
        with pytest.raises(tarindex.ChangedTar):  # another member's name
            tarindex.check_header(str(path), data[first.offset_data - 512 : first.offset_data], first.offset_data,
                                  "n01440764_9.JPEG", first.size)  # fmt: skip
        with pytest.raises(tarindex.ChangedTar):  # not a header at all
            tarindex.check_header(str(path), data[first.offset_data : first.offset_data + 512], first.offset_data,
                                  "n01440764_1.JPEG", first.size)  # fmt: skip
