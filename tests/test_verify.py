"""verify_dataset / imagenet_fleet.verify: passes on a good build, names the first mismatch on a bad one."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from s3_fixtures import ScriptResult, run_script

from imagenet_fleet import imagenet
from imagenet_fleet.errors import UserError
from imagenet_fleet.sample import SampleSpec, make_sample
from imagenet_fleet.verify import Mismatch, parse_expect, tar_images, verify

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> ScriptResult:
    return run_script("verify_dataset.py", *args)


def copy_of(tfds_build, tmp_path: Path) -> tuple[Path, Path]:
    """(data dir, build dir) of a private copy of the session build, safe to tamper with."""
    data = tmp_path / "data"
    shutil.copytree(tfds_build.data_dir, data)
    return data, data / "imagenet2012" / "5.1.0"


def shard(build: Path, split: str) -> Path:
    (path,) = build.glob(f"imagenet2012-{split}.tfrecord-*")
    return path


def rewrite_shard(path: Path, edit: Callable[[object], None]) -> None:
    """Parse every record of a TFRecord shard, let `edit` change the tf.train.Example, write it back."""
    import tensorflow as tf

    examples = []
    for raw in tf.data.TFRecordDataset(str(path)):
        example = tf.train.Example.FromString(raw.numpy())
        edit(example)
        examples.append(example.SerializeToString())
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in examples:
            writer.write(data)


def file_name(example: object) -> str:
    return example.features.feature["file_name"].bytes_list.value[0].decode()  # type: ignore[attr-defined]


def test_good_build_passes_every_check(tfds_build, sample_tars) -> None:
    counts = sample_tars.counts
    expect = ",".join(f"{s}={n}" for s, n in counts.items())
    result = run_cli(
        "--data-dir",
        str(tfds_build.data_dir),
        "--manual-dir",
        str(sample_tars.dir),
        "--expect",
        expect,
        "--sample",
        "5",
    )
    assert result.rc == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["splits"] == counts
    assert set(summary["checks"]) == {
        "records_match_dataset_info", "labels_in_range", "sample_decodes", "train_labels_match_file_names",
        "validation_labels_match_tfds", "expected_counts", "counts_match_tars", "names_match_tars",
    }  # fmt: skip


def test_wrong_expect_fails_naming_the_split(tfds_build) -> None:
    result = run_cli("--data-dir", str(tfds_build.data_dir), "--expect", "train=143,validation=31")
    assert result.rc == 1
    assert "mismatch: split validation: examples (--expect): expected 31, found 30" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is False and summary["split"] == "validation"


def test_expected_split_missing_from_the_build_fails(tfds_build, tmp_path: Path) -> None:
    data, build = copy_of(tfds_build, tmp_path)
    info = json.loads((build / "dataset_info.json").read_text())
    info["splits"] = [s for s in info["splits"] if s["name"] != "test"]
    (build / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(Mismatch, match="^split test: examples .--expect.: expected 10, found no such split"):
        verify(data, expect={"test": 10}, sample=0)


def test_bad_arguments_exit_2(tfds_build, tmp_path: Path) -> None:
    for args in (["--data-dir", str(tmp_path)], ["--data-dir", str(tfds_build.data_dir), "--expect", "trian=3"]):
        result = run_cli(*args)
        assert result.rc == 2 and result.stderr.startswith("error: ") and "(fix: " in result.stderr
    with pytest.raises(UserError, match="no imagenet2012 5.1.0 build"):
        verify(tmp_path)
    assert parse_expect("train=1, validation=2,test=3") == {"train": 1, "validation": 2, "test": 3}


def test_shard_swapped_for_another_splits_shard_fails(tfds_build, tmp_path: Path) -> None:
    data, build = copy_of(tfds_build, tmp_path)
    shutil.copy(shard(build, "validation"), shard(build, "train"))
    with pytest.raises(Mismatch, match=r"^split train, example ILSVRC2012_val_\d{8}\.JPEG: label of file") as exc:
        verify(data)
    assert exc.value.split == "train"


def test_dataset_info_with_a_wrong_count_fails(tfds_build, tmp_path: Path) -> None:
    data, build = copy_of(tfds_build, tmp_path)
    info_path = build / "dataset_info.json"
    info = json.loads(info_path.read_text())
    (val,) = [s for s in info["splits"] if s["name"] == "validation"]
    val["shardLengths"] = ["29"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(
        Mismatch, match=r"^split validation: records in the shards: expected 29 .dataset_info., found 30"
    ):
        verify(data)


def test_wrong_validation_label_fails_naming_the_example(tfds_build, tmp_path: Path) -> None:
    data, build = copy_of(tfds_build, tmp_path)
    target = imagenet.val_name(7)

    def relabel(example: object) -> None:
        if file_name(example) == target:
            label = example.features.feature["label"].int64_list.value  # type: ignore[attr-defined]
            label[0] = (label[0] + 1) % imagenet.NUM_CLASSES

    rewrite_shard(shard(build, "validation"), relabel)
    with pytest.raises(Mismatch, match=rf"^split validation, example {target}: label: expected \d+ \(n\d+\), found"):
        verify(data)


def test_unconverted_cmyk_image_fails(tfds_build, sample_tars, tmp_path: Path) -> None:
    data, build = copy_of(tfds_build, tmp_path)
    name = sorted(imagenet.builder_facts().cmyk_images)[0]
    with tarfile.open(sample_tars.dir / "ILSVRC2012_img_train.tar") as outer:
        inner_bytes = outer.extractfile(f"{imagenet.synset_of(name)}.tar").read()  # type: ignore[union-attr]
        cmyk = tarfile.open(fileobj=io.BytesIO(inner_bytes)).extractfile(name).read()  # type: ignore[union-attr]

    def put_back_cmyk(example: object) -> None:
        if file_name(example) == name:
            image = example.features.feature["image"].bytes_list.value  # type: ignore[attr-defined]
            image[0] = cmyk

    rewrite_shard(shard(build, "train"), put_back_cmyk)
    expected = rf"^split train, example {name}: image format: .* found a JPEG of 4 components \(CMYK\)"
    with pytest.raises(Mismatch, match=expected):
        verify(data, sample=0)  # special-case images are always checked, whatever the sample size


def test_manual_dir_disagreeing_with_the_build_fails(tfds_build, sample_tars, tmp_path: Path) -> None:
    manual = tmp_path / "manual"
    shutil.copytree(sample_tars.dir, manual)
    make_sample(manual, SampleSpec(classes=0, images_per_class=0, val_images=29))
    with pytest.raises(
        Mismatch, match=r"^split validation: examples .images in ILSVRC2012_img_val.tar.: expected 29, found 30"
    ):
        verify(tfds_build.data_dir, manual_dir=manual, sample=0)
    (manual / "ILSVRC2012_img_test.tar").unlink()
    with pytest.raises(Mismatch, match=r"^split test: examples: expected none"):
        verify(tfds_build.data_dir, manual_dir=manual, sample=0)


def test_tar_images_counts_inner_tars_from_headers(sample_tars) -> None:
    for split, count in sample_tars.counts.items():
        assert tar_images(split, sample_tars.dir / imagenet.TAR_NAMES[split])[0] == count


def test_array_record_build_verifies_and_its_shard_counts_are_checked(sample_tars, tmp_path: Path) -> None:
    from imagenet_fleet.prepare import prepare

    build = Path(prepare(sample_tars.dir, tmp_path, file_format="array_record")["build_dir"])
    assert verify(tmp_path, manual_dir=sample_tars.dir, sample=2)["splits"] == sample_tars.counts
    info = json.loads((build / "dataset_info.json").read_text())
    (test,) = [s for s in info["splits"] if s["name"] == "test"]
    test["shardLengths"] = ["9"]
    (build / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(Mismatch, match=r"^split test: records in imagenet2012-test.array_record-00000-of-00001"):
        verify(tmp_path, sample=0)


def test_jpeg_components_reads_the_frame_header(tmp_path: Path) -> None:
    from io import BytesIO

    from PIL import Image

    from imagenet_fleet.verify import jpeg_components

    def encode(mode: str, fmt: str = "JPEG") -> bytes:
        out = BytesIO()
        Image.new(mode, (16, 8)).save(out, fmt)
        return out.getvalue()

    assert jpeg_components(encode("RGB")) == 3
    assert jpeg_components(encode("L")) == 1
    assert jpeg_components(encode("CMYK")) == 4
    assert jpeg_components(encode("RGB", "PNG")) is None
    assert jpeg_components(b"\xff\xd8\xff") is None
