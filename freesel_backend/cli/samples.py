"""The demo's sample images: real photographs from scikit-image's package (its wheel is fetched
from PyPI with pip, not installed), each as a whole and as two overlapping crops, so the pool
holds distinct scenes and near-duplicates. Without a package registry: generated shapes
(scripts/make_samples.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

from PIL import Image

SCIKIT_IMAGE = "scikit-image==0.26.0"
# the photographs among scikit-image's bundled data (no drawings, logos or test patterns)
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
LONGEST_SIDE = 320
COMPLETE_MARKER = ".complete"


def ensure_sample_images(folder: Path) -> Path:
    """``folder`` filled with the sample images (once; later calls reuse them)."""
    if (folder / COMPLETE_MARKER).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        photos = _scikit_image_photos()
    except (OSError, subprocess.CalledProcessError, zipfile.BadZipFile) as error:
        print(f"sample photographs unavailable ({error}); using generated shapes instead", file=sys.stderr)
        subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "make_samples.py"),
                        str(folder)], check=True)
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
