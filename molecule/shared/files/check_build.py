"""Run on a test host with the venv's Python: does the build hold, for every example, the image it came from?

The sample generator writes `synset=<wnid> file=<name>` into each JPEG's comment segment (COM). TFDS stores
JPEG bytes verbatim, so every stored image still says which synset and file it was made for: each example's
label must name that synset (validation included, whose labels TFDS takes from its own list) and its file_name
that file. The 23 CMYK/PNG images TFDS re-encodes lose their comment: they must decode to 3-channel RGB.
Prints one JSON line: per split, the examples read, those checked by comment, those decoded, and the problems.
"""

from __future__ import annotations

import json
import sys

import tensorflow as tf
import tensorflow_datasets as tfds


def jpeg_comment(data: bytes) -> dict[str, str]:
    """The `key=value` pairs of the first COM segment before the image data, or {} if there is none."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] not in (0xD9, 0xDA):
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if data[at + 1] == 0xFE:
            text = data[at + 4 : at + 2 + length].decode()
            return dict(part.split("=", 1) for part in text.split() if "=" in part)
        at += 2 + length
    return {}


def main(data_dir: str, version: str) -> int:
    builder = tfds.builder(f"imagenet2012:{version}", data_dir=data_dir)
    names = builder.info.features["label"].names
    report: dict[str, dict[str, object]] = {}
    for split in sorted(builder.info.splits):
        # What a training job does, with the image left encoded so that its comment can be read.
        ds = tfds.load(f"imagenet2012:{version}", split=split, data_dir=data_dir,
                       decoders={"image": tfds.decode.SkipDecoding()})
        seen = by_comment = decoded = 0
        problems: list[str] = []
        for example in tfds.as_numpy(ds):
            seen += 1
            image, label, file_name = example["image"], int(example["label"]), example["file_name"].decode()
            source = jpeg_comment(image)
            if source:
                by_comment += 1
                expected = -1 if split == "test" else names.index(source["synset"])
                if label != expected or file_name != source["file"]:
                    problems.append(f"{file_name}: label {label} file_name {file_name}, source says {source}")
            else:
                decoded += 1
                shape = tf.io.decode_jpeg(image).shape
                if shape[-1] != 3:
                    problems.append(f"{file_name}: re-encoded image has shape {shape}, expected 3 channels")
        report[split] = {"examples": seen, "by_comment": by_comment, "decoded": decoded, "problems": problems[:10]}
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
