"""prepare_imagenet / imagenet_fleet.prepare: real TFDS builds of the sample tars."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from s3_fixtures import ScriptResult, run_script

from imagenet_fleet import imagenet, prepare
from imagenet_fleet.errors import UserError
from imagenet_fleet.sample import SampleSpec, make_sample, parse_comment

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> ScriptResult:
    return run_script("prepare_imagenet.py", *args)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def snapshot(root: Path, dir_mtimes: bool = True) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its inode, size and mtime: equal snapshots = nothing was touched."""
    return {
        str(p.relative_to(root)): (st.st_ino, st.st_size, st.st_mtime_ns if dir_mtimes or not p.is_dir() else 0)
        for p in root.rglob("*")
        for st in [p.stat()]
    }


def copy_build(tfds_build, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the session's tars and build (mtimes kept, so the build is up to date for them)."""
    manual, data = tmp_path / "manual", tmp_path / "data"
    shutil.copytree(tfds_build.manual_dir, manual)
    shutil.copytree(tfds_build.data_dir, data)
    return manual, data


def test_build_matches_the_tars(tfds_build, sample_tars) -> None:
    import tensorflow_datasets as tfds

    summary = tfds_build.summary
    assert summary["changed"] is True and summary["engine"] == "tfds" and summary["version"] == "5.1.0"
    assert tfds_build.build_dir == tfds_build.data_dir / "imagenet2012" / "5.1.0"
    assert {s: v["examples"] for s, v in summary["splits"].items()} == sample_tars.counts
    assert all(v["shards"] >= 1 and v["bytes"] > 0 for v in summary["splits"].values())
    special = imagenet.builder_facts().special_images
    names = imagenet.label_names()
    for split, count in sample_tars.counts.items():
        ds = tfds.load(
            "imagenet2012",
            split=split,
            data_dir=str(tfds_build.data_dir),
            download=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
        examples = list(tfds.as_numpy(ds))
        assert len(examples) == count
        for ex in examples:
            name = ex["file_name"].decode()
            image = Image.open(io.BytesIO(ex["image"]))
            assert image.format == "JPEG" and image.mode == "RGB"  # CMYK and PNG were converted
            if name in special:
                continue  # re-encoded by TFDS: the source comment is gone
            source = parse_comment(image.info["comment"])
            assert source["file"] == name  # the very image the tar held, stored verbatim
            expected = -1 if split == "test" else names.index(source["synset"])
            assert ex["label"] == expected
    assert not list((tfds_build.data_dir / "imagenet2012").glob(".5.1.0.build-*"))  # temp build dir removed


def test_rerun_is_a_no_op(tfds_build) -> None:
    before = snapshot(tfds_build.data_dir)
    result = run_cli("--manual-dir", str(tfds_build.manual_dir), "--data-dir", str(tfds_build.data_dir))
    assert result.rc == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["changed"] is False and summary["splits"] == tfds_build.summary["splits"]
    assert snapshot(tfds_build.data_dir) == before


def test_check_mode_changes_nothing(sample_tars, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("--manual-dir", str(sample_tars.dir), "--data-dir", str(data), "--check")
    assert result.rc == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["changed"] is True and summary["check"] is True and summary["reason"] == "no build yet"
    assert not data.exists()


def test_changed_input_rebuilds_beside_the_old_build_then_swaps(tfds_build, tmp_path: Path, monkeypatch) -> None:
    manual, data = copy_build(tfds_build, tmp_path)
    live = data / "imagenet2012" / "5.1.0"
    assert prepare.prepare(manual, data)["changed"] is False
    old = snapshot(live)
    make_sample(manual, SampleSpec(classes=0, images_per_class=0, val_images=20, seed=1))  # rewrites the val tar
    seen: list[Path] = []

    def watching_engine(manual_dir: Path, data_dir: Path, *args: object) -> None:
        assert snapshot(live) == old  # the old build is intact while the new one is built elsewhere
        assert data_dir != data and data_dir.parent == data / "imagenet2012"  # beside it, same filesystem
        seen.append(data_dir)
        prepare.build_with_tfds(manual_dir, data_dir, *args)  # type: ignore[arg-type]
        assert snapshot(live) == old

    monkeypatch.setitem(prepare.ENGINES, "watching", watching_engine)
    summary = prepare.prepare(manual, data, engine="watching")
    assert summary["changed"] is True and "ILSVRC2012_img_val.tar" in summary["reason"]
    assert summary["splits"]["validation"]["examples"] == 20
    assert summary["splits"]["train"]["examples"] == tfds_build.summary["splits"]["train"]["examples"]
    assert seen and not seen[0].exists()  # the temp data dir (now holding the old build) is gone
    assert sorted(p.name for p in (data / "imagenet2012").iterdir()) == [".5.1.0.inputs.json", ".5.1.0.lock", "5.1.0"]
    record = json.loads((data / "imagenet2012" / ".5.1.0.inputs.json").read_text())
    assert (
        record["engine"] == "watching"
        and record["tars"]["ILSVRC2012_img_val.tar"]["size"] == (manual / "ILSVRC2012_img_val.tar").stat().st_size
    )
    assert prepare.prepare(manual, data)["changed"] is False  # and now it is up to date


def test_failed_build_keeps_the_old_build(tfds_build, tmp_path: Path, monkeypatch) -> None:
    manual, data = copy_build(tfds_build, tmp_path)
    os.utime(manual / "ILSVRC2012_img_test.tar")  # a new mtime: inputs changed
    before = snapshot(data, dir_mtimes=False)  # the temp build dir comes and goes beside the live build

    def failing_engine(*args: object) -> None:
        raise RuntimeError("engine died")

    monkeypatch.setitem(prepare.ENGINES, "failing", failing_engine)
    with pytest.raises(RuntimeError, match="engine died"):
        prepare.prepare(manual, data, engine="failing")
    assert snapshot(data, dir_mtimes=False) == before
    assert prepare.prepare(manual, data, check=True)["reason"] == "inputs changed (ILSVRC2012_img_test.tar)"


def test_incomplete_build_is_rebuilt_and_unrecorded_build_is_not_trusted(tfds_build, tmp_path: Path) -> None:
    manual, data = copy_build(tfds_build, tmp_path)
    live = data / "imagenet2012" / "5.1.0"
    next(live.glob("imagenet2012-train.tfrecord-*")).unlink()
    assert prepare.prepare(manual, data, check=True)["reason"] == "the existing build is incomplete"
    (data / "imagenet2012" / ".5.1.0.inputs.json").unlink()
    shutil.rmtree(live)
    shutil.copytree(tfds_build.build_dir, live)
    assert prepare.prepare(manual, data, check=True)["reason"] == "the existing build has no record of its inputs"
    assert prepare.prepare(manual, data, file_format="array_record", check=True)["changed"] is True


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.rc == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_bad_inputs_give_one_clear_line(sample_tars, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    one_error_line(run_cli("--manual-dir", str(tmp_path / "nope"), "--data-dir", data), "does not exist")
    (tmp_path / "empty").mkdir()
    one_error_line(run_cli("--manual-dir", str(tmp_path / "empty"), "--data-dir", data), "no ILSVRC2012 tar")
    one_error_line(
        run_cli("--manual-dir", str(sample_tars.dir), "--data-dir", data, "--version", "5.0.0"), "version 5.0.0"
    )
    one_error_line(
        run_cli("--manual-dir", str(sample_tars.dir), "--data-dir", data, "--engine", "nope"), "unknown engine"
    )
    assert not Path(data).exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("cut_in_a_block", "not a whole number of tar blocks"),
        ("cut_at_a_block", "no end-of-archive marker"),
        ("not_a_tar", "is not a tar file"),
        ("wrong_tar", "does not look like the train tar"),
    ],
)
def test_damaged_tar_is_refused(sample_tars, tmp_path: Path, damage: str, needle: str) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    train = manual / "ILSVRC2012_img_train.tar"
    data = (sample_tars.dir / "ILSVRC2012_img_train.tar").read_bytes()
    if damage == "cut_in_a_block":
        train.write_bytes(data[: len(data) // 2 + 100])
    elif damage == "cut_at_a_block":
        train.write_bytes(data[: (len(data) // 2) // 512 * 512])
    elif damage == "not_a_tar":
        train.write_bytes(b"\x89PNG" + b"\x17" * 10236)
    else:
        shutil.copy(sample_tars.dir / "ILSVRC2012_img_val.tar", train)
    one_error_line(run_cli("--manual-dir", str(manual), "--data-dir", str(tmp_path / "data")), needle, str(train))


def test_not_enough_disk_space_names_both_numbers(sample_tars, tmp_path: Path) -> None:
    tars = prepare.find_tars(sample_tars.dir)
    with pytest.raises(UserError, match=r"bytes free, [\d,]+ needed") as exc:
        prepare.check_disk_space(tmp_path / "new" / "data", tars, factor=1e12)
    total = sum(p.stat().st_size for p in tars.values())
    assert f"{int(total * 1e12):,} needed" in exc.value.cause and str(tmp_path / "new" / "data") in exc.value.cause
    prepare.check_disk_space(tmp_path, tars)  # the real factor fits here


def test_engines_are_a_plain_registry() -> None:
    assert prepare.ENGINES["tfds"] is prepare.build_with_tfds
    assert "--workers" in run_cli("--help").stdout
