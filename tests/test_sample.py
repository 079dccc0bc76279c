"""make_sample_imagenet / imagenet_fleet.sample, and the TFDS facts in imagenet_fleet.imagenet."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from s3_fixtures import run_script

from imagenet_fleet import imagenet
from imagenet_fleet.errors import UserError
from imagenet_fleet.sample import SIZES, SampleSpec, make_sample, parse_comment, spread_synsets

ROOT = Path(__file__).resolve().parents[1]


def flat_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def train_members(path: Path) -> dict[str, dict[str, bytes]]:
    """Inner tar name -> {image name: bytes}."""
    with tarfile.open(path) as outer:
        result = {}
        for member in outer:
            inner = tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read()))  # type: ignore[union-attr]
            result[member.name] = {m.name: inner.extractfile(m).read() for m in inner}  # type: ignore[union-attr]
        return result


def comment_of(data: bytes) -> dict[str, str]:
    image = Image.open(io.BytesIO(data))
    return parse_comment(image.info.get("comment", b""))


# ---------------------------------------------------------------- imagenet.py: facts read from TFDS


def test_facts_match_the_tfds_builder() -> None:
    from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as tfds_builder

    facts = imagenet.builder_facts()
    assert facts.cmyk_images == set(tfds_builder.CMYK_IMAGES) and len(facts.cmyk_images) == 22
    assert facts.png_images == set(tfds_builder.PNG_IMAGES) == {"n02105855_2933.JPEG"}
    assert facts.version == str(tfds_builder.Builder.VERSION) == imagenet.DEFAULT_VERSION
    assert facts.supported_versions == tuple(str(v) for v in tfds_builder.Builder.SUPPORTED_VERSIONS)
    names = imagenet.label_names()
    assert len(names) == imagenet.NUM_CLASSES and names[0] == "n01440764" and len(set(names)) == 1000
    assert len(imagenet.validation_labels()) == imagenet.SPLIT_SIZES["validation"]
    assert set(imagenet.validation_labels()) == set(names)


def test_facts_do_not_import_tensorflow() -> None:
    code = (
        "import sys; from imagenet_fleet import imagenet as i; i.builder_facts(); i.label_names();"
        " i.validation_labels(); print(sorted(m for m in sys.modules if m.startswith('tensorflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "scripts"
    ).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- the sample's structure


def test_train_tar_structure(sample_tars) -> None:
    spec, facts = sample_tars.spec, imagenet.builder_facts()
    members = train_members(sample_tars.dir / "ILSVRC2012_img_train.tar")
    regular = spread_synsets(spec.classes)
    special_synsets = {imagenet.synset_of(n) for n in facts.special_images}
    assert list(members) == sorted(f"{s}.tar" for s in set(regular) | special_synsets)
    assert sample_tars.summary["classes"] == len(members) == 10 + 23
    for synset in regular:
        names = members[f"{synset}.tar"]
        assert list(names) == [f"{synset}_{i}.JPEG" for i in range(1, spec.images_per_class + 1)]
    for inner, images in members.items():
        synset = inner[: -len(".tar")]
        assert synset in imagenet.label_index()
        for name, data in images.items():
            assert imagenet.TRAIN_NAME_RE.match(name) and imagenet.synset_of(name) == synset
            assert comment_of(data)["synset"] == synset
    assert sample_tars.counts["train"] == sum(map(len, members.values())) == 10 * 12 + 23


def test_special_images_are_really_cmyk_and_png(sample_tars) -> None:
    facts = imagenet.builder_facts()
    members = train_members(sample_tars.dir / "ILSVRC2012_img_train.tar")
    found = {name: data for images in members.values() for name, data in images.items() if name in facts.special_images}
    assert set(found) == facts.special_images == set(sample_tars.summary["special"])
    for name in facts.cmyk_images:
        image = Image.open(io.BytesIO(found[name]))
        assert (image.format, image.mode) == ("JPEG", "CMYK")
        assert comment_of(found[name])["synset"] == imagenet.synset_of(name)
    for name in facts.png_images:
        assert found[name][:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(io.BytesIO(found[name])).format == "PNG"


def test_validation_and_test_tars_are_flat_and_numbered(sample_tars) -> None:
    val = flat_members(sample_tars.dir / "ILSVRC2012_img_val.tar")
    assert list(val) == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 31)]
    for i, data in enumerate(val.values(), start=1):
        assert comment_of(data)["synset"] == imagenet.validation_labels()[i - 1]
    test = flat_members(sample_tars.dir / "ILSVRC2012_img_test.tar")
    assert list(test) == [f"ILSVRC2012_test_{i:08d}.JPEG" for i in range(1, 11)]
    assert sample_tars.counts == {"train": 143, "validation": 30, "test": 10}


def test_images_are_realistic_jpegs(sample_tars) -> None:
    images = list(flat_members(sample_tars.dir / "ILSVRC2012_img_val.tar").values())
    images += list(flat_members(sample_tars.dir / "ILSVRC2012_img_test.tar").values())
    sizes = [len(d) for d in images]
    assert 80_000 < sum(sizes) / len(sizes) < 150_000
    assert len(set(images)) == len(images)  # every file differs (its comment names it)
    dims = set()
    for data in images:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode) == ("JPEG", "RGB") and image.size in SIZES
        dims.add(image.size)
    assert len(dims) > 3


def test_tar_headers_are_fixed(sample_tars) -> None:
    with tarfile.open(sample_tars.dir / "ILSVRC2012_img_val.tar") as tar:
        member = tar.next()
    assert member is not None and member.name.startswith("ILSVRC2012_val_")
    assert (member.uid, member.gid, member.uname, member.gname, member.mode) == (0, 0, "", "", 0o644)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    spec = SampleSpec(classes=2, images_per_class=3, val_images=4, test_images=2, special=False, seed=3)
    a, b, c = (
        make_sample(tmp_path / d, s) for d, s in (("a", spec), ("b", spec), ("c", SampleSpec(2, 3, 4, 2, seed=4)))
    )
    for split, path in a["paths"].items():
        assert Path(path).read_bytes() == Path(b["paths"][split]).read_bytes()
        assert Path(path).read_bytes() != Path(c["paths"][split]).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(imagenet.TAR_NAMES.values())  # no temp left


def test_cli_summary_and_bad_arguments(tmp_path: Path) -> None:
    ok = run_script(
        "make_sample_imagenet.py",
        "--out",
        str(tmp_path / "s"),
        "--classes",
        "1",
        "--images-per-class",
        "2",
        "--val-images",
        "3",
        "--seed",
        "1",
    )
    assert ok.rc == 0, ok.stderr
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["changed"] is True and summary["counts"] == {"train": 2, "validation": 3}
    assert set(summary["paths"]) == set(summary["bytes"]) == {"train", "validation"} and summary["seconds"] >= 0
    for args in (["--classes", "1001"], ["--classes", "1", "--val-images", "50001"], ["--classes", "0"]):
        bad = run_script(
            "make_sample_imagenet.py",
            "--out",
            str(tmp_path / "x"),
            "--images-per-class",
            "1",
            *(args if "--val-images" in args else [*args, "--val-images", "0"]),
        )
        assert bad.rc == 2
        assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1 and "fix:" in bad.stderr
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        make_sample(tmp_path / "file", SampleSpec(1, 1, 0))
