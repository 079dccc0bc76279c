"""The facts about ILSVRC2012 and TFDS's `imagenet2012` that the rest of the package relies on, in one place.

Everything that TFDS itself defines (label names, validation labels, the CMYK/PNG special cases, the versions)
is read from the installed `tensorflow_datasets` package's files, never copied and never by importing TensorFlow:
the text files through `importlib.resources`, the builder's constants by parsing its source with `ast`.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATASET = "imagenet2012"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
TAR_NAMES: dict[str, str] = {
    "train": "ILSVRC2012_img_train.tar",
    "validation": "ILSVRC2012_img_val.tar",
    "test": "ILSVRC2012_img_test.tar",
}
SPLIT_SIZES: dict[str, int] = {"train": 1_281_167, "validation": 50_000, "test": 100_000}
NUM_CLASSES = 1000
DEFAULT_VERSION = "5.1.0"  # TFDS 4.9's builder VERSION (a test checks it against the installed builder)
TEST_LABEL = -1

VAL_NAME_FORMAT = "ILSVRC2012_val_{:08d}.JPEG"
TEST_NAME_FORMAT = "ILSVRC2012_test_{:08d}.JPEG"
SYNSET_RE = re.compile(r"^n\d{8}$")
INNER_TAR_RE = re.compile(r"^n\d{8}\.tar$")
TRAIN_NAME_RE = re.compile(r"^(n\d{8})_\d+\.JPEG$")
VAL_NAME_RE = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
TEST_NAME_RE = re.compile(r"^ILSVRC2012_test_(\d{8})\.JPEG$")

_PACKAGE = "tensorflow_datasets"
_DATA = "datasets/imagenet2012"
_BUILDER_SOURCE = f"{_DATA}/imagenet2012_dataset_builder.py"


def train_name(synset: str, index: int) -> str:
    """`n01440764_7.JPEG`: a train image's member name inside its synset's inner tar."""
    return f"{synset}_{index}.JPEG"


def val_name(number: int) -> str:
    """`ILSVRC2012_val_00000001.JPEG` (numbers start at 1)."""
    return VAL_NAME_FORMAT.format(number)


def test_name(number: int) -> str:
    """`ILSVRC2012_test_00000001.JPEG` (numbers start at 1)."""
    return TEST_NAME_FORMAT.format(number)


def synset_of(file_name: str) -> str:
    """The synset prefix of a train file name (`n01440764_7.JPEG` -> `n01440764`)."""
    return file_name.split("_", 1)[0]


def _tfds_file(relative: str) -> Path:
    """A file of the installed tensorflow_datasets package, found without importing it (find_spec only)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{_PACKAGE} is not installed in this Python ({_PACKAGE} is required)")
    return Path(spec.submodule_search_locations[0]) / relative


def _read_lines(relative: str) -> tuple[str, ...]:
    return tuple(_tfds_file(relative).read_text(encoding="utf-8").strip().splitlines())


@cache
def label_names() -> tuple[str, ...]:
    """The 1000 synsets in label order (TFDS's `labels.txt`): `label_names()[label]` is the label's synset."""
    return _read_lines(f"{_DATA}/labels.txt")


@cache
def label_index() -> dict[str, int]:
    """Synset -> label id."""
    return {name: i for i, name in enumerate(label_names())}


@cache
def validation_labels() -> tuple[str, ...]:
    """TFDS's `validation_labels.txt`: the synset of the i-th validation image in sorted name order (50,000)."""
    return _read_lines(f"{_DATA}/validation_labels.txt")


@dataclass(frozen=True)
class BuilderFacts:
    """Constants of TFDS's imagenet2012 builder, read from its source."""

    version: str
    supported_versions: tuple[str, ...]
    cmyk_images: frozenset[str]
    png_images: frozenset[str]

    @property
    def special_images(self) -> frozenset[str]:
        return self.cmyk_images | self.png_images


def _version_arg(node: ast.expr) -> str:
    """`tfds.core.Version('5.1.0')` -> '5.1.0'."""
    if isinstance(node, ast.Call) and node.args:
        value = ast.literal_eval(node.args[0])
        if isinstance(value, str):
            return value
    raise ValueError(f"unexpected version expression: {ast.dump(node)}")


@cache
def builder_facts() -> BuilderFacts:
    """Parse the imagenet2012 builder's module for its versions and special file names (no TF import)."""
    tree = ast.parse(_tfds_file(_BUILDER_SOURCE).read_text(encoding="utf-8"))
    found: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found.setdefault(node.targets[0].id, node.value)
    missing = {"VERSION", "SUPPORTED_VERSIONS", "CMYK_IMAGES", "PNG_IMAGES"} - found.keys()
    if missing:
        raise ValueError(f"TFDS's imagenet2012 builder no longer defines {sorted(missing)}")
    supported = found["SUPPORTED_VERSIONS"]
    assert isinstance(supported, ast.List)
    return BuilderFacts(
        version=_version_arg(found["VERSION"]),
        supported_versions=tuple(_version_arg(v) for v in supported.elts),
        cmyk_images=frozenset(ast.literal_eval(found["CMYK_IMAGES"])),
        png_images=frozenset(ast.literal_eval(found["PNG_IMAGES"])),
    )


def buildable_versions() -> tuple[str, ...]:
    """Versions this TFDS can generate: only the builder's VERSION (older ones are read-only)."""
    return (builder_facts().version,)


def readable_versions() -> tuple[str, ...]:
    """Versions this TFDS can read."""
    facts = builder_facts()
    return (facts.version, *facts.supported_versions)
