"""Make small, structurally faithful ILSVRC2012 tars for tests and demos.

The tars look like the real ones to TFDS's imagenet2012 builder (see ENVIRONMENT.md):
- `ILSVRC2012_img_train.tar`: an outer tar of `n########.tar` inner tars, each a flat tar of `n########_<i>.JPEG`;
- `ILSVRC2012_img_val.tar`: flat `ILSVRC2012_val_%08d.JPEG` numbered 1..K (no `./`), image i of synset
  `validation_labels[i-1]`, so TFDS's zip of sorted names with its labels file gives the right labels;
- `ILSVRC2012_img_test.tar`: flat `ILSVRC2012_test_%08d.JPEG`.
Every image is a realistic textured JPEG (~110 KB on average, typical ImageNet sizes) that carries its source
synset in a JPEG comment (`synset=n01440764 file=<name>`), so a test can check a built example's label against the
image it came from. `special=True` adds TFDS's CMYK and PNG special-case names as real CMYK JPEG / real PNG bytes in
their own synsets' inner tars. `tiny=True` makes every image 8x8 pixels instead: ILSVRC2012's 1.33M members fit in
~2 GB, for measuring what grows with the member count (the engine's memory, its per-record CPU). The output is
byte-for-byte deterministic for a seed.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imagenet_fleet import cli, imagenet
from imagenet_fleet.atomic import atomic_file
from imagenet_fleet.errors import UserError

log = logging.getLogger(__name__)

# Typical ILSVRC2012 image sizes (width, height); the real average is ~400x350 and ~110 KB.
SIZES: tuple[tuple[int, int], ...] = (
    (500, 375), (375, 500), (500, 333), (333, 500), (500, 400),
    (500, 500), (400, 300), (640, 480), (500, 366), (450, 338),
)  # fmt: skip
TAR_MTIME = 1_335_830_400  # 2012-05-01, fixed so the tars are byte-for-byte reproducible
NOISE_AMPLITUDE = 36
JPEG_QUALITY = 90
TINY = ((8, 8),)
MAX_BASE_IMAGES = 128  # distinct renders (~10 ms each); every file still differs by its comment


@dataclass(frozen=True)
class SampleSpec:
    """What to generate."""

    classes: int
    images_per_class: int
    val_images: int
    test_images: int = 0
    special: bool = False
    seed: int = 0
    tiny: bool = False  # 8x8 images (~700 bytes): ILSVRC2012's member count in ~1/60 of its bytes (memory, CPU)

    def validate(self) -> None:
        if not 0 <= self.classes <= imagenet.NUM_CLASSES:
            raise UserError(f"--classes {self.classes} is out of range", f"pass 0..{imagenet.NUM_CLASSES}")
        if self.classes and self.images_per_class < 1:
            raise UserError(f"--images-per-class {self.images_per_class} is below 1", "pass 1 or more")
        limits = (("--val-images", self.val_images, "validation"), ("--test-images", self.test_images, "test"))
        for flag, value, split in limits:
            if not 0 <= value <= imagenet.SPLIT_SIZES[split]:
                raise UserError(f"{flag} {value} is out of range", f"pass 0..{imagenet.SPLIT_SIZES[split]}")
        if not (self.classes or self.special or self.val_images or self.test_images):
            raise UserError("nothing to generate", "pass --classes, --val-images, --test-images or --special")


def spread_synsets(count: int) -> list[str]:
    """`count` real synsets spread evenly over the 1000 labels (label 0 first), in label order."""
    names = imagenet.label_names()
    return [names[(j * len(names)) // count] for j in range(count)]


def train_layout(spec: SampleSpec) -> dict[str, list[str]]:
    """Synset -> its inner tar's member names, sorted by synset: `images_per_class` regular names
    (`<synset>_1.JPEG`, ... skipping TFDS's special names) plus, with `special`, each special name in its synset."""
    facts = imagenet.builder_facts()
    layout: dict[str, list[str]] = {}
    for synset in spread_synsets(spec.classes) if spec.classes else []:
        names: list[str] = []
        i = 0
        while len(names) < spec.images_per_class:
            i += 1
            name = imagenet.train_name(synset, i)
            if name not in facts.special_images:
                names.append(name)
        layout[synset] = names
    if spec.special:
        for name in sorted(facts.special_images):
            layout.setdefault(imagenet.synset_of(name), []).append(name)
    return dict(sorted(layout.items()))


class Renderer:
    """Renders textured images: a few distinct bases, each output made unique by its comment (cheap)."""

    def __init__(self, seed: int, bases: int, sizes: tuple[tuple[int, int], ...] = SIZES) -> None:
        import numpy as np

        self._np = np
        self._rng = np.random.default_rng(seed)
        self._pixels = [self._render(sizes[i % len(sizes)]) for i in range(max(1, bases))]
        self._jpegs = [self._encode(p) for p in self._pixels]

    def _render(self, size: tuple[int, int]) -> Any:
        """A smooth random colour field plus luminance and chroma noise: compresses like a photo (~110 KB)."""
        from PIL import Image

        np, rng = self._np, self._rng
        width, height = size
        grid_h, grid_w = (int(v) for v in rng.integers(3, 9, 2))
        field = Image.fromarray(rng.integers(0, 256, (grid_h, grid_w, 3), dtype=np.uint8))
        pixels = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        amp = NOISE_AMPLITUDE
        luma = rng.integers(-amp, amp + 1, (height, width, 1), dtype=np.int16)
        chroma = rng.integers(-amp // 3, amp // 3 + 1, (height // 2 + 1, width // 2 + 1, 3), dtype=np.int16)
        chroma = chroma.repeat(2, 0).repeat(2, 1)[:height, :width]
        return np.clip(pixels + luma + chroma, 0, 255).astype(np.uint8)

    @staticmethod
    def _encode(pixels: Any, fmt: str = "JPEG", mode: str = "RGB", comment: str | None = None) -> bytes:
        from PIL import Image, PngImagePlugin

        image = Image.fromarray(pixels).convert(mode)
        out = io.BytesIO()
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            if comment:
                info.add_text("comment", comment)
            image.save(out, "PNG", pnginfo=info)
        else:
            image.save(out, "JPEG", quality=JPEG_QUALITY, comment=(comment or "").encode())
        return out.getvalue()

    def _pick(self) -> int:
        return int(self._rng.integers(0, len(self._jpegs)))

    def jpeg(self, synset: str, name: str) -> bytes:
        """An RGB JPEG of `synset` (a base render with a `synset=... file=...` comment spliced in)."""
        return with_comment(self._jpegs[self._pick()], comment_for(synset, name))

    def cmyk_jpeg(self, synset: str, name: str) -> bytes:
        return self._encode(self._pixels[self._pick()], mode="CMYK", comment=comment_for(synset, name))

    def png(self, synset: str, name: str) -> bytes:
        return self._encode(self._pixels[self._pick()], fmt="PNG", comment=comment_for(synset, name))


def comment_for(synset: str, name: str) -> str:
    return f"synset={synset} file={name}"


def parse_comment(comment: bytes | str) -> dict[str, str]:
    """`synset=n01440764 file=x.JPEG` -> {'synset': 'n01440764', 'file': 'x.JPEG'}."""
    text = comment.decode() if isinstance(comment, bytes) else comment
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def with_comment(jpeg: bytes, comment: str) -> bytes:
    """Insert a COM segment after SOI (and after a JFIF APP0 segment, which must come first)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    at = 2
    if jpeg[2:4] == b"\xff\xe0":
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    payload = comment.encode()
    return jpeg[:at] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))


def _open_tar(f: IO[bytes]) -> tarfile.TarFile:
    return tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT)


def _write_train(path: Path, layout: dict[str, list[str]], renderer: Renderer) -> int:
    facts = imagenet.builder_facts()
    count = 0
    with atomic_file(path) as f, _open_tar(f) as outer:
        for synset, names in layout.items():
            inner_bytes = io.BytesIO()
            with _open_tar(inner_bytes) as inner:
                for name in names:
                    if name in facts.cmyk_images:
                        data = renderer.cmyk_jpeg(synset, name)
                    elif name in facts.png_images:
                        data = renderer.png(synset, name)
                    else:
                        data = renderer.jpeg(synset, name)
                    _add(inner, name, data)
                    count += 1
            _add(outer, f"{synset}.tar", inner_bytes.getvalue())
    return count


def _write_flat(path: Path, names_and_synsets: list[tuple[str, str]], renderer: Renderer) -> int:
    with atomic_file(path) as f, _open_tar(f) as tar:
        for name, synset in names_and_synsets:
            _add(tar, name, renderer.jpeg(synset, name))
    return len(names_and_synsets)


def make_sample(out: Path, spec: SampleSpec) -> dict[str, Any]:
    """Write the sample tars into `out` (created if missing) and return the CLI summary."""
    spec.validate()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory", "pass a directory path")
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    layout = train_layout(spec)
    val_synsets = imagenet.validation_labels()
    val = [(imagenet.val_name(i), val_synsets[i - 1]) for i in range(1, spec.val_images + 1)]
    total = sum(map(len, layout.values())) + len(val) + spec.test_images
    renderer = Renderer(spec.seed, min(total, 8 + total // 8, MAX_BASE_IMAGES), TINY if spec.tiny else SIZES)
    # Test images have no label; each still records the synset it was rendered "of", drawn from the seed.
    test_rng = random.Random(spec.seed)
    names = imagenet.label_names()
    test = [(imagenet.test_name(i), test_rng.choice(names)) for i in range(1, spec.test_images + 1)]

    counts: dict[str, int] = {}
    if layout:
        counts["train"] = _write_train(out / imagenet.TAR_NAMES["train"], layout, renderer)
    if val:
        counts["validation"] = _write_flat(out / imagenet.TAR_NAMES["validation"], val, renderer)
    if test:
        counts["test"] = _write_flat(out / imagenet.TAR_NAMES["test"], test, renderer)
    for split in imagenet.SPLITS:
        stale = out / imagenet.TAR_NAMES[split]
        if split not in counts and stale.exists():
            log.warning("left %s from an earlier run in place (not part of this sample)", stale)
    paths = {split: str(out / imagenet.TAR_NAMES[split]) for split in counts}
    sizes = {split: os.path.getsize(p) for split, p in paths.items()}
    special = sorted(n for names_ in layout.values() for n in names_ if n in imagenet.builder_facts().special_images)
    summary = {
        "changed": True,
        "out": str(out),
        "paths": paths,
        "counts": counts,
        "bytes": sizes,
        "classes": len(layout),
        "special": special,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("wrote %s images (%.1f MB) in %.1f s", sum(counts.values()), sum(sizes.values()) / 1e6, summary["seconds"])
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the ILSVRC2012_img_*.tar files")
    parser.add_argument("--classes", type=int, required=True, help="train synsets, spread over the 1000 labels")
    parser.add_argument("--images-per-class", type=int, required=True, help="train images per synset")
    parser.add_argument("--val-images", type=int, required=True, help="validation images (numbered 1..K)")
    parser.add_argument("--test-images", type=int, default=0, help="test images (default 0: no test tar)")
    parser.add_argument("--special", action="store_true", help="add TFDS's CMYK and PNG special-case images")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--tiny", action="store_true",
                        help="8x8-pixel images: a sample with ILSVRC2012's member count in a few GB")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = SampleSpec(
        args.classes, args.images_per_class, args.val_images, args.test_images, args.special, args.seed, args.tiny
    )
    return cli.run(lambda: make_sample(args.out, spec))
