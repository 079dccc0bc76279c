"""Shared, session-scoped fixtures: expensive things are made once per test run.

Data fixtures: `sample_tars` (small ILSVRC2012 tars) and `tfds_build` (a TFDS imagenet2012 build of them).
Tests must not modify what these fixtures return: copy first (`shutil.copytree`, `shutil.copy2` keeps mtimes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagenet_fleet.sample import SampleSpec, make_sample

pytest_plugins = ["s3_fixtures"]

# 10 synsets x 12 images + the 23 CMYK/PNG special-case images (in 23 more synsets), 30 validation, 10 test.
SAMPLE_SPEC = SampleSpec(classes=10, images_per_class=12, val_images=30, test_images=10, special=True, seed=7)


@dataclass(frozen=True)
class SampleTars:
    dir: Path  # the manual dir holding ILSVRC2012_img_{train,val,test}.tar
    spec: SampleSpec
    summary: dict[str, Any]  # make_sample's summary: paths, counts, bytes, classes, special

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.summary["counts"])


@dataclass(frozen=True)
class TfdsBuild:
    data_dir: Path  # a TFDS data dir: <data_dir>/imagenet2012/<version>/
    build_dir: Path
    manual_dir: Path
    summary: dict[str, Any]  # prepare's summary


@pytest.fixture(scope="session")
def sample_tars(tmp_path_factory: pytest.TempPathFactory) -> SampleTars:
    out = tmp_path_factory.mktemp("manual")
    return SampleTars(out, SAMPLE_SPEC, make_sample(out, SAMPLE_SPEC))


@pytest.fixture(scope="session")
def tfds_build(sample_tars: SampleTars, tmp_path_factory: pytest.TempPathFactory) -> TfdsBuild:
    from imagenet_fleet.prepare import prepare

    data_dir = tmp_path_factory.mktemp("tfds")
    summary = prepare(sample_tars.dir, data_dir, engine="tfds")
    return TfdsBuild(data_dir, Path(summary["build_dir"]), sample_tars.dir, summary)
