"""Image loading: files or bytes -> RGB PIL images, with a clear error for each bad input."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)
# Refuse anything larger before decoding it (a 30,000 x 30,000 PNG is a decompression bomb).
DEFAULT_MAX_PIXELS = 100_000_000


class ImageLoadError(ValueError):
    """One image could not be used; the message says why, in words a user can act on."""


def load_image(source: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``source`` (a path or the encoded bytes) as an upright RGB image, fully decoded."""
    data = _read_bytes(source)
    if len(data) == 0:
        raise ImageLoadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image, max_pixels)
            image.seek(0)  # animated images: the first frame
            image.load()
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(_describe_unreadable(data, error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"corrupt or truncated image: {error}") from error
    return to_rgb(ImageOps.exif_transpose(image))


def _read_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise ImageLoadError(f"cannot read file: {error.strerror or error}") from error


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image too large: {width} x {height} = {width * height:,} pixels "
            f"(limit {max_pixels:,}); refused before decoding"
        )
    if width == 0 or height == 0:
        raise ImageLoadError(f"image has no pixels ({width} x {height})")


def _describe_unreadable(data: bytes, error: Exception) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "not an image: the content is an HTML page"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large: {error}; refused before decoding"
    return "not an image file (unknown or unsupported format)"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white, 16-bit is rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max() if values.size and values.max() > 0 else 1.0
        return Image.fromarray((values / peak * 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def list_image_files(source: str | Path) -> list[Path]:
    """The images named by ``source``: a folder (recursive, sorted) or a text/JSON list of paths.

    A folder yields every file whose suffix looks like an image; listed paths are kept as given
    (relative ones resolved against the list's folder) so unreadable entries can be reported.
    """
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not path.is_file():
        raise FileNotFoundError(f"no such folder or list file: {path}")
    return [_resolve(entry, path.parent) for entry in _listed_entries(path)]


def _listed_entries(list_file: Path) -> Iterable[str]:
    text = list_file.read_text(encoding="utf-8")
    if list_file.suffix.lower() == ".json":
        entries = json.loads(text)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{list_file}: a JSON image list must be an array of path strings")
        return entries
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _resolve(entry: str, base: Path) -> Path:
    candidate = Path(entry).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


# Truncated files must raise, not be padded with grey silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
