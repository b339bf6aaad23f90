"""Image loading: every odd-but-valid image is handled, every bad one gets a specific error."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freesel_backend.engine.images import ImageLoadError, list_image_files, load_image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("jpeg", encoded(RGB, "JPEG")),
        ("cmyk jpeg", encoded(RGB.convert("CMYK"), "JPEG")),
        ("grayscale png", encoded(RGB.convert("L"), "PNG")),
        ("palette png", encoded(RGB.convert("P"), "PNG")),
        ("rgba png", encoded(RGB.convert("RGBA"), "PNG")),
        ("16-bit png", encoded(Image.fromarray((np.arange(1200).reshape(40, 30) * 50).astype(np.uint16)), "PNG")),
        ("webp", encoded(RGB, "WEBP")),
    ],
)
def test_valid_images_of_any_mode_load_as_rgb(name: str, data: bytes) -> None:
    image = load_image(data)
    assert image.mode == "RGB", name
    assert image.size == (30, 40)


def test_sixteen_bit_images_are_rescaled_not_clipped_to_white() -> None:
    ramp = (np.arange(1200).reshape(40, 30) * 50).astype(np.uint16)
    pixels = np.asarray(load_image(encoded(Image.fromarray(ramp), "PNG")))
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 100


def test_transparent_pixels_become_white() -> None:
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(encoded(clear, "PNG"))).min() == 255


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    red, green, blue = np.asarray(load_image(data))[0, 0]
    assert red > 200 and blue < 50


def test_exif_rotated_images_are_turned_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = encoded(RGB, "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (40, 30)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"just some text, not pixels\n", "not an image file"),
        (b"<!DOCTYPE html><html><body>login</body></html>", "HTML page"),
        (encoded(RGB, "JPEG")[:300], "corrupt or truncated"),
        (png_header_claiming(30_000, 30_000), "image too large.*900000000 pixels.*refused before decoding"),
    ],
)
def test_bad_input_gets_a_specific_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageLoadError, match=message):
        load_image(data)


def test_a_missing_file_is_an_image_error_naming_the_cause(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="cannot read file"):
        load_image(tmp_path / "nope.jpg")


def test_folders_are_listed_recursively_and_lists_resolve_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for relative in ("x.jpg", "a/y.PNG", "a/b/z.webp", "a/notes.txt"):
        (tmp_path / relative).write_bytes(b"?")
    assert [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)] == [
        "a/b/z.webp",
        "a/y.PNG",
        "x.jpg",
    ]
    (tmp_path / "list.txt").write_text("# picks\nx.jpg\n\n/abs/elsewhere.jpg\n")
    assert list_image_files(tmp_path / "list.txt") == [tmp_path / "x.jpg", Path("/abs/elsewhere.jpg")]
    (tmp_path / "list.json").write_text(json.dumps(["a/y.PNG"]))
    assert list_image_files(tmp_path / "list.json") == [tmp_path / "a" / "y.PNG"]
    with pytest.raises(FileNotFoundError):
        list_image_files(tmp_path / "missing")
