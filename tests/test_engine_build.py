"""The parallel engine against TFDS's own build of the same tars: same files, same records in the same order, same
metadata; byte-identical between runs and worker counts; resumable after SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagenet_fleet import imagenet, sample
from imagenet_fleet.engine import memberlist, pipeline, schedule, write
from imagenet_fleet.engine.compare import differences
from imagenet_fleet.errors import UserError

REPO = Path(__file__).resolve().parent.parent
VERSION = imagenet.DEFAULT_VERSION


def tfds_build(manual: Path, data_dir: Path, file_format: str, num_shards: int | None) -> Path:
    import tensorflow_datasets as tfds

    builder = tfds.builder(imagenet.DATASET, data_dir=str(data_dir), version=VERSION)
    config = tfds.download.DownloadConfig(manual_dir=str(manual), try_download_gcs=False, num_shards=num_shards)
    with contextlib.redirect_stdout(sys.stderr):
        builder.download_and_prepare(download_config=config, file_format=file_format)
    return data_dir / imagenet.DATASET / VERSION


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="session")
def special_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every split, the 23 CMYK/PNG special images, ~240 images."""
    out = tmp_path_factory.mktemp("engine-special")
    sample.make_sample(out, sample.SampleSpec(classes=6, images_per_class=25, val_images=40, test_images=12,
                                              special=True))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def plain_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engine-plain")
    sample.make_sample(out, sample.SampleSpec(classes=5, images_per_class=30, val_images=30, seed=1))
    return out


@pytest.fixture(scope="session")
def reference_4_shards(special_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TFDS's own build, 4 shards per split (TFDS's `num_shards` option: multi-shard layout on small data)."""
    return tfds_build(special_sample, tmp_path_factory.mktemp("tfds-4"), "tfrecord", 4)


@pytest.fixture(scope="session")
def engine_4_shards(special_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("engine-4")
    stats = pipeline.build(special_sample, data / "d", VERSION, "tfrecord", 2, work_dir=data / "w", num_shards=4)
    assert stats["special_images"] == 23
    assert not (data / "w").exists()  # the work folder is gone once the build is in place
    return data / "d" / imagenet.DATASET / VERSION


def test_same_records_and_metadata_as_tfds(engine_4_shards: Path, reference_4_shards: Path) -> None:
    assert sorted(p.name for p in engine_4_shards.iterdir()) == sorted(p.name for p in reference_4_shards.iterdir())
    assert len(list(engine_4_shards.glob("imagenet2012-train.tfrecord-*-of-00004"))) == 4
    assert differences(engine_4_shards, reference_4_shards) == []


def test_our_bytes_are_tfds_records_serialized_deterministically(
    engine_4_shards: Path, reference_4_shards: Path
) -> None:
    from imagenet_fleet.engine.compare import canonical, iter_records

    for shard in sorted(reference_4_shards.glob("*.tfrecord-*")):
        ours = list(iter_records(engine_4_shards / shard.name))
        assert ours == [canonical(r) for r in iter_records(shard)]


def test_tfds_reads_the_engine_build(engine_4_shards: Path) -> None:
    import tensorflow_datasets as tfds

    data_dir = engine_4_shards.parent.parent
    ds = tfds.load(imagenet.DATASET, split="validation", data_dir=str(data_dir), download=False)
    labels = imagenet.validation_labels()
    for example in ds.take(5):
        name = example["file_name"].numpy().decode()
        number = int(name.rsplit("_", 1)[1].split(".")[0])
        assert int(example["label"]) == imagenet.label_index()[labels[number - 1]]
        assert example["image"].shape[-1] == 3


def test_byte_identical_across_runs_and_worker_counts(
    special_sample: Path, engine_4_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one worker, one record per work unit: a completely different schedule
    pipeline.build(special_sample, tmp_path / "d", VERSION, "tfrecord", 1, work_dir=tmp_path / "w", num_shards=4,
                unit_bytes=1)  # fmt: skip
    assert digests(tmp_path / "d" / imagenet.DATASET / VERSION) == digests(engine_4_shards)
    # three workers, the reads as short as on a host with hundreds of cores (`write.read_bytes`)
    monkeypatch.setattr(write, "READ_BUDGET", 0)
    pipeline.build(special_sample, tmp_path / "d3", VERSION, "tfrecord", 3, work_dir=tmp_path / "w", num_shards=4)
    assert digests(tmp_path / "d3" / imagenet.DATASET / VERSION) == digests(engine_4_shards)


def _copy_with_member_lists(sample_dir: Path, to: Path) -> Path:
    """The tars as staging leaves them: each with the member lists recorded in its hash pass."""
    to.mkdir()
    for split, name in imagenet.TAR_NAMES.items():
        if (sample_dir / name).exists():
            shutil.copy2(sample_dir / name, to / name)
            walks = memberlist.record_file(to / name, nested=split == "train")
            assert walks is not None
            memberlist.save(to / name, walks)
    return to


def test_staged_member_lists_give_the_same_build(special_sample: Path, engine_4_shards: Path, tmp_path: Path) -> None:
    manual = _copy_with_member_lists(special_sample, tmp_path / "manual")
    stats = pipeline.build(manual, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=tmp_path / "w", num_shards=4)
    assert stats["member_lists"] == ["test", "train", "validation"]
    assert digests(tmp_path / "d" / imagenet.DATASET / VERSION) == digests(engine_4_shards)


@pytest.mark.parametrize("file_format", ["tfrecord", "array_record"])
def test_a_member_list_that_lies_fails_the_build_and_is_dropped(
    plain_sample: Path, tmp_path: Path, file_format: str
) -> None:
    """A list stamped with the tar's size and mtime but wrong (the tar rewritten in place, mtime restored): the
    writers' header checks catch it, the list is removed, and the next run reads the headers itself."""
    manual = _copy_with_member_lists(plain_sample, tmp_path / "manual")
    tar = manual / imagenet.TAR_NAMES["validation"]
    loaded = memberlist.load(tar)
    assert loaded is not None
    walk = memberlist.read_walk(loaded.ref(0))
    (a_name, a_off, a_size, a_reg), (b_name, b_off, b_size, b_reg) = walk[0], walk[1]
    walk[0], walk[1] = (b_name, a_off, a_size, a_reg), (a_name, b_off, b_size, b_reg)  # two names swapped
    memberlist.save(tar, {0: walk})
    with pytest.raises(UserError, match="the tar changed"):
        pipeline.build(manual, tmp_path / "d", VERSION, file_format, 2, work_dir=tmp_path / "w")
    assert not memberlist.sidecar_path(tar).exists()
    stats = pipeline.build(manual, tmp_path / "d", VERSION, file_format, 2, work_dir=tmp_path / "w")
    assert stats["member_lists"] == ["train"]
    reference = tmp_path / "ref"
    pipeline.build(plain_sample, reference, VERSION, file_format, 2, work_dir=tmp_path / "w2")
    assert digests(tmp_path / "d" / imagenet.DATASET / VERSION) == digests(reference / imagenet.DATASET / VERSION)


def test_default_shard_rule_and_array_record_match_tfds(plain_sample: Path, tmp_path: Path) -> None:
    reference = tfds_build(plain_sample, tmp_path / "tfds", "array_record", None)
    pipeline.build(plain_sample, tmp_path / "d", VERSION, "array_record", 2, work_dir=tmp_path / "w")
    ours = tmp_path / "d" / imagenet.DATASET / VERSION
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert differences(ours, reference) == []
    assert json.loads((ours / "dataset_info.json").read_text())["fileFormat"] == "array_record"


def test_tfds_data_source_reads_array_record(plain_sample: Path, tmp_path: Path) -> None:
    import tensorflow_datasets as tfds

    pipeline.build(plain_sample, tmp_path / "d", VERSION, "array_record", 2, work_dir=tmp_path / "w")
    source = tfds.data_source(imagenet.DATASET, split="train", data_dir=str(tmp_path / "d"), download=False)
    assert len(source) == 150
    assert source[0]["file_name"].startswith(b"n") or source[0]["file_name"].startswith("n")


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {scripts!r})
    from imagenet_fleet.engine import journal, pipeline
    real_add = journal.Journal.add
    count = [0]
    def add(self, key):
        real_add(self, key)
        count[0] += key.startswith({prefix!r})
        if count[0] == {after}:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # the whole job dies at once: main and workers
    journal.Journal.add = add
    pipeline.build(Path({manual!r}), Path({data!r}), {version!r}, {file_format!r}, 2, work_dir=Path({work!r}),
                num_shards={shards}, unit_bytes={unit_bytes})
    """
)


def _kill_build_after(
    manual: Path, data: Path, work: Path, *, after: int, prefix: str, shards: int, unit_bytes: int,
    file_format: str = "tfrecord",
) -> None:  # fmt: skip
    """Run a build in a child process that SIGKILLs its whole session after `after` journaled units of `prefix`."""
    script = _KILLER.format(scripts=str(REPO / "scripts"), manual=str(manual), data=str(data), version=VERSION,
                            work=str(work), after=after, prefix=prefix, shards=shards, unit_bytes=unit_bytes,
                            file_format=file_format)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], start_new_session=True, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_resume_after_sigkill_keeps_written_units(plain_sample: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    pipeline.build(plain_sample, whole, VERSION, "tfrecord", 2, work_dir=tmp_path / "w0", num_shards=3,
                unit_bytes=1 << 20)  # fmt: skip
    data, work = tmp_path / "d", tmp_path / "w"
    _kill_build_after(plain_sample, data, work, after=6, prefix="", shards=3, unit_bytes=1 << 20)
    assert not (data / imagenet.DATASET / VERSION).exists()
    journaled = [line for f in work.glob("journal-*.jsonl") for line in f.read_text().splitlines()[1:]]
    assert len(journaled) == 6
    stats = pipeline.build(plain_sample, data, VERSION, "tfrecord", 2, work_dir=work, num_shards=3, unit_bytes=1 << 20)
    assert stats["units_resumed"] == 6
    assert digests(data / imagenet.DATASET / VERSION) == digests(whole / imagenet.DATASET / VERSION)


def test_resume_after_sigkill_with_reencoded_images(
    special_sample: Path, engine_4_shards: Path, tmp_path: Path
) -> None:
    """Killed mid-train, in shards whose layout depends on the re-encoded CMYK/PNG sizes."""
    data, work = tmp_path / "d", tmp_path / "w"
    _kill_build_after(special_sample, data, work, after=2, prefix="A:train:", shards=4, unit_bytes=1 << 19)
    assert (work / "journal-train.jsonl").read_text().count('"A:train:') == 2
    stats = pipeline.build(
        special_sample, data, VERSION, "tfrecord", 2, work_dir=work, num_shards=4, unit_bytes=1 << 19
    )
    assert stats["units_resumed"] >= 2
    assert digests(data / imagenet.DATASET / VERSION) == digests(engine_4_shards)


def test_array_record_resumes_after_sigkill_and_is_deterministic(plain_sample: Path, tmp_path: Path) -> None:
    """ArrayRecord shards are written as TFRecord's are (each record's chunk to its place, in units of the tar; each
    shard's frame a job of its own): after a kill mid-build the re-run keeps the journaled units and frames, and the
    result is byte-identical to an uninterrupted build."""
    whole = tmp_path / "whole"
    pipeline.build(plain_sample, whole, VERSION, "array_record", 2, work_dir=tmp_path / "w0", num_shards=4,
                   unit_bytes=1 << 20)  # fmt: skip
    data, work = tmp_path / "d", tmp_path / "w"
    _kill_build_after(plain_sample, data, work, after=3, prefix="A:train:", shards=4, unit_bytes=1 << 20,
                      file_format="array_record")  # fmt: skip
    journaled = (work / "journal-train.jsonl").read_text()
    assert journaled.count('"A:train:') == 3
    stats = pipeline.build(plain_sample, data, VERSION, "array_record", 2, work_dir=work, num_shards=4,
                           unit_bytes=1 << 20)  # fmt: skip
    assert stats["units_resumed"] >= 3 + journaled.count('"F:train:')
    assert digests(data / imagenet.DATASET / VERSION) == digests(whole / imagenet.DATASET / VERSION)


@pytest.mark.parametrize("journal", [True, False], ids=["another build's journal", "no journal"])
def test_changed_inputs_start_over(plain_sample: Path, tmp_path: Path, journal: bool) -> None:
    """Files a split's journal does not vouch for (another build's, or an older engine's staging) are not kept."""
    work = tmp_path / "w"
    work.mkdir()
    if journal:
        (work / "journal-train.jsonl").write_text(
            json.dumps({"fingerprint": "other"}) + "\n" + json.dumps({"done": "A:train:0"})
        )
    stale = work / imagenet.DATASET / VERSION / f"{imagenet.DATASET}-train.tfrecord-00000-of-00099"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"another build's shard")
    stats = pipeline.build(plain_sample, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=work)
    assert stats["units_resumed"] == 0
    built = tmp_path / "d" / imagenet.DATASET / VERSION
    assert (built / "dataset_info.json").exists() and not (built / stale.name).exists()


def test_bad_input_is_one_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no ILSVRC2012 tar"):
        pipeline.build(tmp_path, tmp_path / "d", VERSION, "tfrecord", 1)
    with pytest.raises(UserError, match="file format"):
        pipeline.build(tmp_path, tmp_path / "d", VERSION, "riegeli", 1)
    (tmp_path / imagenet.TAR_NAMES["validation"]).write_bytes(b"\x01" * 1024)
    with pytest.raises(UserError):
        pipeline.build(tmp_path, tmp_path / "d", VERSION, "tfrecord", 1, work_dir=tmp_path / "w")


def test_progress_lines_count_each_splits_writes(
    plain_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(schedule, "PROGRESS_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger=schedule.__name__)
    stats = pipeline.build(plain_sample, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=tmp_path / "w",
                           num_shards=3, unit_bytes=1 << 20)  # fmt: skip
    pattern = re.compile(
        r"engine: (\w+): (\d+) of (\d+) write jobs done \((\d+)%\), ([\d.]+) GB written, about \d+ s left"
    )
    lines = [m.groups() for r in caplog.records if (m := pattern.fullmatch(r.getMessage()))]
    by_split: dict[str, list[tuple[int, int, float]]] = {}
    for split, done, total, percent, gb in lines:
        assert int(percent) == 100 * int(done) // int(total)
        by_split.setdefault(split, []).append((int(done), int(total), float(gb)))
    assert set(by_split) == {"train", "validation"}
    for split, seen in by_split.items():
        # a line after each of the split's jobs but its last, the same total in each, the bytes growing
        total = seen[0][1]
        assert total > 2 and [done for done, _, _ in seen] == list(range(1, total)), split
        assert {t for _, t, _ in seen} == {total}
        assert [gb for _, _, gb in seen] == sorted(gb for _, _, gb in seen)
    assert sum(seen[-1][2] for seen in by_split.values()) <= stats["bytes_written"] / 1e9 + 0.005 * 2  # (2 decimals)


def test_prepare_cli_runs_the_engine(plain_sample: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_imagenet.py"), "--manual-dir", str(plain_sample),
         "--data-dir", str(tmp_path / "d"), "--engine", "parallel", "--workers", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["changed"] is True and summary["engine"] == "parallel"
    assert summary["splits"]["train"]["examples"] == 150
    # the engine's work folder (beside the temp data dir prepare.py builds into) is gone
    assert not list((tmp_path / "d" / imagenet.DATASET).glob(".*engine-partial"))


def test_reencode_is_the_builders_fix_image(special_sample: Path) -> None:
    """The helper (TF's kernels through the C API, in its own process) against TFDS's `_fix_image` (TF's Python API,
    here): every special image, and an ordinary one passed through unchanged."""
    import io
    import tarfile

    import tensorflow_datasets as tfds

    from imagenet_fleet.engine import special

    builder = tfds.builder(imagenet.DATASET, version=VERSION, data_dir=str(special_sample / "unused"))
    names = special.special_names()
    items: list[tuple[str, bytes]] = []
    with tarfile.open(special_sample / imagenet.TAR_NAMES["train"]) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for image in inner:
                    if image.name in names or not items:
                        items.append((image.name, inner.extractfile(image).read()))  # type: ignore[union-attr]
    assert len(items) == 24
    ours = special.Converter().convert(items)
    for name, data in items:
        assert ours[name] == builder._fix_image(name, io.BytesIO(data)).read(), name
    assert sum(ours[name] != data for name, data in items) == 23


def test_the_reencoding_helper_is_closed_once_its_images_are_back(special_sample: Path) -> None:
    """Its TF kernels hold ~300 MB: the build lets it go as soon as its batch is converted, not when the train split
    is laid out (at ILSVRC2012's size, after the index's memory peak)."""
    import tarfile

    from imagenet_fleet.engine import special

    names = special.special_names()
    images: dict[str, bytes] = {}
    with tarfile.open(special_sample / imagenet.TAR_NAMES["train"]) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                images.update((m.name, inner.extractfile(m).read()) for m in inner if m.name in names)  # type: ignore[union-attr]
    specials = pipeline._Specials()
    try:
        specials.submit(images)
        converter = specials._converter
        assert converter is not None
        assert sorted(specials._batches[0].result(timeout=300)) == sorted(names)
        assert specials._converter is None and converter._proc.poll() is not None  # the helper has exited
    finally:
        specials.close()


@pytest.fixture
def early_helper_cleared() -> Iterator[None]:
    """No helper started early outlives the test, whatever happens in it."""
    from imagenet_fleet.engine import special

    yield
    special.close_early()


@pytest.mark.usefixtures("early_helper_cleared")
def test_the_helper_started_early_is_the_one_the_build_uses(
    special_sample: Path, engine_4_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`special.start_early` (what the CLI calls before importing the engine) starts the helper; the build converts
    the images with it, starts no second one, and leaves none behind."""
    from imagenet_fleet.engine import special

    started: list[special.Converter] = []

    class Counted(special.Converter):
        def __init__(self) -> None:
            super().__init__()
            started.append(self)

    monkeypatch.setattr(special, "Converter", Counted)
    special.start_early(tmp_path)  # (no train tar there: nothing to start)
    assert special.take_early() is None and not started
    special.start_early(special_sample)
    assert len(started) == 1
    stats = pipeline.build(special_sample, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=tmp_path / "w",
                           num_shards=4)  # fmt: skip
    assert stats["special_images"] == 23 and len(started) == 1
    assert special.take_early() is None and started[0]._proc.poll() is not None
    assert digests(tmp_path / "d" / imagenet.DATASET / VERSION) == digests(engine_4_shards)


@pytest.mark.usefixtures("early_helper_cleared")
def test_a_helper_started_early_for_nothing_is_closed(plain_sample: Path, tmp_path: Path) -> None:
    from imagenet_fleet.engine import special

    assert not special.special_synsets() & {m.name[:-4] for m in _outer_members(plain_sample)}
    special.start_early(plain_sample)
    early = special._early
    assert early is not None
    stats = pipeline.build(plain_sample, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=tmp_path / "w")
    assert stats["special_images"] == 0
    assert special.take_early() is None and early._proc.poll() is not None
    special.start_early(plain_sample)  # a build refused at once (its target exists) closes it too
    early = special._early
    assert early is not None
    with pytest.raises(UserError):
        pipeline.build(plain_sample, tmp_path / "d", VERSION, "tfrecord", 2, work_dir=tmp_path / "w")
    assert special.take_early() is None and early._proc.poll() is not None


def _outer_members(sample_dir: Path) -> list[Any]:
    import tarfile

    with tarfile.open(sample_dir / imagenet.TAR_NAMES["train"]) as outer:
        return outer.getmembers()


def test_a_special_image_tf_cannot_decode_is_one_user_error() -> None:
    from imagenet_fleet.engine import special

    name = min(imagenet.builder_facts().cmyk_images)
    with pytest.raises(UserError, match=name) as raised:
        special.Converter().convert([(name, b"\xff\xd8 not a jpeg")])
    assert "stage the train tar again" in raised.value.fix


def test_a_helper_that_dies_is_one_clear_error() -> None:
    """The helper killed (out of memory, say) before it answers: the build gets an error naming it, not a hang."""
    from imagenet_fleet.engine import special

    converter = special.Converter()
    converter._proc.kill()
    converter._proc.wait()
    name = min(imagenet.builder_facts().cmyk_images)
    with pytest.raises(RuntimeError, match="re-encoding helper died"):
        converter.convert([(name, b"\xff\xd8")])
    converter.close()  # (again: closing twice is harmless)
