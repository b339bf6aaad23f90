"""Copies: re-encoded, resized, cropped, re-lit or burst copies of a photo are grouped with it;
distinct pictures, and crops of one picture shifted far apart, are not; bad images get a reason."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from freesel_backend.cli.samples import scene_image
from freesel_backend.engine.copies import (
    CopySignature,
    CopySignatureError,
    content_digest,
    copy_score,
    copy_signature,
    find_copies,
    scored_candidates,
)
from freesel_backend.engine import copies
from freesel_backend.engine.images import load_image


def photo(folder: Path, stem: str) -> Image.Image:
    return load_image(folder / f"{stem}.jpg")


def cropped(image: Image.Image, share: float) -> Image.Image:
    """``share`` of the width and of the height cut off, most of it on the left and top."""
    width, height = image.size
    left, top = round(width * share * 0.7), round(height * share * 0.6)
    return image.crop((left, top, left + round(width * (1 - share)), top + round(height * (1 - share))))


def saved(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def signature_of_file(path: Path) -> CopySignature:
    return copy_signature(load_image(path))


def test_lossy_copies_of_a_photo_are_grouped_with_it_and_distinct_scenes_are_not(tmp_path: Path) -> None:
    scene = scene_image(7, (320, 240))
    width, height = scene.size
    files = [saved(scene, tmp_path / "original.png")]
    files.append(saved(scene, tmp_path / "jpeg.jpg", quality=40))
    files.append(saved(scene.resize((width // 2, height // 2), Image.Resampling.BICUBIC), tmp_path / "half.png"))
    files.append(saved(scene.crop((10, 6, width - 6, height - 5)), tmp_path / "crop.png"))
    files.append(saved(ImageEnhance.Brightness(scene).enhance(1.1), tmp_path / "brighter.png"))
    files.extend(saved(scene_image(seed, (320, 240)), tmp_path / f"other_{seed}.png") for seed in range(20, 30))
    found = find_copies([signature_of_file(path) for path in files])
    assert found.groups == [[0, 1, 2, 3, 4]]
    assert found.n_flagged == 4


def test_burst_crops_a_few_pixels_apart_are_copies_but_crops_shifted_by_a_third_are_not() -> None:
    photo = scene_image(3, (400, 240))
    window = 280
    first = copy_signature(photo.crop((0, 0, window, 240)))
    burst = copy_signature(photo.crop((12, 0, 12 + window, 240)))  # 3 % of the width
    shifted = copy_signature(photo.crop((120, 0, 120 + window, 240)))  # 30 % of the width
    found = find_copies([first, burst, shifted])
    assert found.groups == [[0, 1]]
    assert copy_score(first, shifted) < 0.9


def test_a_greyscale_copy_of_a_colour_photo_is_a_copy(tmp_path: Path) -> None:
    scene = scene_image(11, (256, 192))
    grey = saved(scene.convert("L"), tmp_path / "grey.png")
    assert Image.open(grey).mode == "L"
    assert find_copies([copy_signature(scene), signature_of_file(grey)]).groups == [[0, 1]]


def test_an_image_without_a_signature_is_never_grouped() -> None:
    scene = copy_signature(scene_image(5))
    found = find_copies([scene, None, scene, None])
    assert found.groups == [[0, 2]]
    assert found.group_of.tolist() == [0, -1, 0, -1]


def test_a_signature_survives_storage_as_bytes() -> None:
    signature = copy_signature(scene_image(2))
    stored = signature.to_bytes()
    restored = CopySignature.from_bytes(stored)
    assert np.array_equal(restored.thumbnail, signature.thumbnail)
    assert restored.aspect == pytest.approx(signature.aspect)
    with pytest.raises(ValueError, match="bytes"):
        CopySignature.from_bytes(stored[:-1])


def test_byte_identical_files_share_a_digest_whatever_their_names(tmp_path: Path) -> None:
    data = saved(scene_image(1), tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data)
    assert content_digest((tmp_path / "b.png").read_bytes()) == content_digest(data)
    assert content_digest(data) != content_digest(saved(scene_image(2), tmp_path / "c.png").read_bytes())


def test_a_too_small_image_gets_a_reason() -> None:
    with pytest.raises(CopySignatureError, match="too small.*12 x 40"):
        copy_signature(scene_image(1, (200, 150)).resize((12, 40)))


def test_an_animated_image_gets_a_reason(tmp_path: Path) -> None:
    frames = [scene_image(seed, (64, 48)) for seed in (1, 2)]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(CopySignatureError, match="animated image \\(2 frames\\)"):
        copy_signature(Image.open(path))


def test_a_truncated_file_gets_a_reason() -> None:
    buffer = BytesIO()
    scene_image(4, (320, 240)).save(buffer, format="JPEG", quality=90)
    truncated = Image.open(BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))
    with pytest.raises(CopySignatureError, match="corrupt or truncated"):
        copy_signature(truncated)


def test_a_blank_picture_gets_a_reason_so_two_blank_pages_are_not_copies() -> None:
    with pytest.raises(CopySignatureError, match="no detail"):
        copy_signature(Image.new("RGB", (200, 100), (250, 250, 250)))


def test_the_threshold_is_a_correlation() -> None:
    with pytest.raises(ValueError, match="correlation"):
        find_copies([], 1.5)


def garment(seed: int) -> Image.Image:
    """A 28 x 28 Fashion-MNIST-like item: one silhouette, with a few patches placed by ``seed``."""
    rng = np.random.default_rng(seed)
    item = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(item)
    draw.rectangle((6, 3, 21, 25), fill=160)
    for _ in range(4):
        x, y = rng.integers(7, 18, 2)
        draw.rectangle((int(x), int(y), int(x) + 3, int(y) + 3), fill=int(rng.integers(60, 255)))
    return item


def test_a_thumbnail_sized_picture_is_a_copy_only_when_it_matches_almost_pixel_for_pixel() -> None:
    item, same_silhouette = garment(1), garment(2)
    buffer = BytesIO()
    item.save(buffer, format="JPEG", quality=50)
    re_encoded = Image.open(BytesIO(buffer.getvalue()))
    found = find_copies([copy_signature(item), copy_signature(same_silhouette), copy_signature(re_encoded)])
    assert found.groups == [[0, 2]]


@pytest.mark.parametrize("degrees", [1, -2, 3])
def test_a_turned_photo_is_grouped_with_the_upright_one(photos: Path, degrees: float) -> None:
    upright = photo(photos, "chelsea")
    turned = upright.rotate(degrees, Image.Resampling.BICUBIC)  # corners filled black
    others = [photo(photos, stem) for stem in ("coffee", "astronaut", "rocket")]
    found = find_copies([copy_signature(image) for image in [upright, *others, turned]])
    assert found.groups == [[0, 4]]


@pytest.mark.parametrize("stem", ["motorcycle_right", "coins", "grass"])
def test_a_photo_cut_down_by_a_tenth_is_grouped_with_the_whole(photos: Path, stem: str) -> None:
    whole = photo(photos, stem)
    others = [photo(photos, other) for other in ("motorcycle_left", "gravel", "camera")]
    found = find_copies([copy_signature(image) for image in [whole, *others, cropped(whole, 0.10)]])
    assert found.groups == [[0, 4]]


def test_burst_shots_of_a_textured_photo_are_copies_and_crops_a_third_apart_are_not(photos: Path) -> None:
    gravel = photo(photos, "gravel")
    width, height = gravel.size
    window, step = round(width * 0.7), round(width * 0.03)
    first = gravel.crop((0, 0, window, height))
    burst = gravel.crop((step, 0, step + window, height))
    shifted = gravel.crop((width - window, 0, width, height))
    found = find_copies([copy_signature(image) for image in (first, burst, shifted)])
    assert found.groups == [[0, 1]]


def test_a_fine_texture_is_judged_more_leniently_than_a_smooth_picture(photos: Path) -> None:
    """The same small crop costs a fine texture more correlation than a smooth picture; the
    score makes up for it, so both stay copies, while two distinct textures stay apart."""
    for stem in ("grass", "moon"):
        texture = photo(photos, stem)
        assert copy_score(copy_signature(texture), copy_signature(cropped(texture, 0.05))) >= 0.97
    assert copy_score(copy_signature(photo(photos, "grass")), copy_signature(photo(photos, "gravel"))) < 0.9


@pytest.mark.parametrize(
    ("kept_images", "kept_grids"), [(1, 1), (copies.TURNED_CACHE_SIZE, copies.FINE_GRIDS_PER_IMAGE)]
)
def test_a_pair_scores_the_same_alone_as_among_many_images(
    photos: Path, kept_images: int, kept_grids: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring many pairs reuses each image's turned thumbnails and sums across its pairs; a
    pair's score is still exactly the one it gets alone, however few images are kept at once."""
    monkeypatch.setattr(copies, "TURNED_CACHE_SIZE", kept_images)
    monkeypatch.setattr(copies, "FINE_GRIDS_PER_IMAGE", kept_grids)
    images = []
    for stem in ("chelsea", "coffee", "grass", "moon", "gravel", "motorcycle_left", "motorcycle_right"):
        original = photo(photos, stem)
        turned = [original.rotate(degrees, Image.Resampling.BICUBIC) for degrees in (2, -3)]
        images += [original, *turned, cropped(original, 0.05), cropped(original, 0.1)]
    signatures = [copy_signature(image) for image in images]
    pairs, scores = scored_candidates(signatures)
    assert (scores >= 0.7).sum() >= 8  # pairs that went through the turned search
    alone = [copy_score(signatures[first], signatures[second]) for first, second in pairs.tolist()]
    assert scores.tolist() == alone
