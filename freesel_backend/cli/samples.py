"""The demo's sample images: real photographs from scikit-image's package (its wheel is fetched
from PyPI with pip, not installed), each as a whole and as two overlapping crops, so the pool
holds distinct scenes and near-duplicates. Without a package registry: generated scenes
(:func:`scene_image`, the one synthetic-image generator, also used by the tests and benchmarks)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SCIKIT_IMAGE = "scikit-image==0.26.0"
# the photographs among scikit-image's bundled data (no drawings, logos or test patterns)
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
LONGEST_SIDE = 320
COMPLETE_MARKER = ".complete"
GENERATED_SCENES = 20


def ensure_sample_images(folder: Path) -> Path:
    """``folder`` filled with the sample images (once; later calls reuse them)."""
    if (folder / COMPLETE_MARKER).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        photos = _scikit_image_photos()
    except (OSError, subprocess.CalledProcessError, zipfile.BadZipFile) as error:
        print(f"sample photographs unavailable ({error}); using generated scenes instead", file=sys.stderr)
        for seed in range(GENERATED_SCENES):
            write_views(folder, f"scene_{seed:02d}", scene_image(seed, (LONGEST_SIDE, LONGEST_SIDE * 3 // 4)))
    else:
        for name, image in photos.items():
            write_views(folder, Path(name).stem, image)
    (folder / COMPLETE_MARKER).touch()
    return folder


def _scikit_image_photos() -> dict[str, Image.Image]:
    with tempfile.TemporaryDirectory(prefix="freesel-samples-") as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
             "--only-binary=:all:", SCIKIT_IMAGE, "-d", download],
            check=True, capture_output=True, timeout=600,
        )
        wheel = next(Path(download).glob("scikit_image-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            return {name: Image.open(BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB") for name in PHOTOS}


def write_views(folder: Path, stem: str, photo: Image.Image) -> None:
    """The photo (longest side 320 px) and its left and right two-thirds, as JPEG files."""
    photo = photo.copy()
    photo.thumbnail((LONGEST_SIDE, LONGEST_SIDE))
    width, height = photo.size
    views = {"": photo, "_left": photo.crop((0, 0, width * 2 // 3, height)),
             "_right": photo.crop((width // 3, 0, width, height))}
    for suffix, view in views.items():
        view.save(folder / f"{stem}{suffix}.jpg", quality=88)


def scene_image(seed: int, size: tuple[int, int] = (192, 144)) -> Image.Image:
    """A generated 'photo': a two-colour gradient background with a few random shapes.

    Distinct seeds give distinct scenes; a pretrained ViT sees objects, edges and textures in
    them, unlike in noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        x1, y1 = x0 + rng.integers(15, width // 2), y0 + rng.integers(15, height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=2)
        else:
            for stripe in range(x0, x1, 6):
                draw.line((stripe, y0, stripe + 10, y1), fill=colour, width=3)
    return image


def write_scenes(folder: Path, count: int, size: tuple[int, int] = (192, 144), *, first_seed: int = 0) -> list[Path]:
    """``count`` generated scenes (seeds ``first_seed``...) as JPEG files scene_0000.jpg, ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"scene_{index:04d}.jpg"
        scene_image(first_seed + index, size).save(path, quality=90)
        paths.append(path)
    return paths
