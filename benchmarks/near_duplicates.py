"""Copy detection: recall per kind of copy, false merges among distinct images, cost per image.

The pool: scikit-image's sample photographs (read from its wheel, fetched with pip), generated
scenes and Fashion-MNIST test images (Debian's dataset-fashion-mnist). Each photograph and scene
gets altered copies (JPEG quality 30-90, resize 0.25-2x, crops of 2-10 %, brightness and contrast
+-10 %, rotations of 1-3 degrees, PNG -> JPEG, and burst pairs: two crops of 80 % of it, shifted by
3 % of its width). Hard negatives: crops of one photograph shifted by 30 %, distinct generated
scenes, same-class Fashion-MNIST items. Distinct pairs are all pairs of images from different
sources, plus the 30 %-shifted crops.

The copy detector (``freesel_backend.engine.copies``) runs at several thresholds, with imagehash's
pHash and dHash at imagededup's default (Hamming distance <= 10) beside it, and the default
model's pattern extraction timed on the same decoded images.

    .venv/bin/python benchmarks/near_duplicates.py [--fashion 2000] [--scenes 60] [--model auto]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality.data import load_split  # noqa: E402
from freesel_backend.cli.samples import PHOTOS, SCIKIT_IMAGE, scene_image  # noqa: E402
from freesel_backend.engine.copies import (  # noqa: E402
    DEFAULT_COPY_THRESHOLD,
    CopySignature,
    copy_groups,
    copy_signature,
    scored_candidates,
)

THRESHOLDS = (0.9, 0.93, 0.95, DEFAULT_COPY_THRESHOLD, 0.98)
HASH_DISTANCE = 10  # imagededup's default max_distance_threshold for its hashes
POOL_AT_SCALE = 50_000
SIGNATURE_BYTES = len(copy_signature(scene_image(0)).to_bytes())


@dataclass
class Item:
    image: Image.Image
    source: str  # images of one source are copies of each other, or ambiguous
    kind: str  # "original", a kind of copy, or "shifted" (a hard negative of its source)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return Image.open(BytesIO(buffer.getvalue())).convert("RGB")


def cropped(image: Image.Image, share: float, rng: np.random.Generator) -> Image.Image:
    """``share`` of the width and of the height cut off, split at random between the two sides."""
    width, height = image.size
    left, top = rng.uniform(0, share), rng.uniform(0, share)
    return image.crop((round(width * left), round(height * top),
                       round(width * (1 - share + left)), round(height * (1 - share + top))))


def copy_kinds(rng: np.random.Generator) -> dict[str, Callable[[Image.Image], Image.Image]]:
    def resize(factor: float) -> Callable[[Image.Image], Image.Image]:
        return lambda image: image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                                          Image.Resampling.BICUBIC)

    return {
        "jpeg q30": lambda image: jpeg(image, 30), "jpeg q60": lambda image: jpeg(image, 60),
        "jpeg q90": lambda image: jpeg(image, 90),
        "resize 0.25x": resize(0.25), "resize 0.5x": resize(0.5), "resize 2x": resize(2.0),
        "crop 2%": lambda image: cropped(image, 0.02, rng), "crop 5%": lambda image: cropped(image, 0.05, rng),
        "crop 10%": lambda image: cropped(image, 0.10, rng),
        "brightness +10%": lambda image: ImageEnhance.Brightness(image).enhance(1.1),
        "brightness -10%": lambda image: ImageEnhance.Brightness(image).enhance(0.9),
        "contrast +-10%": lambda image: ImageEnhance.Contrast(image).enhance(float(rng.choice([0.9, 1.1]))),
        "rotate 1 deg": lambda image: image.rotate(float(rng.choice([-1, 1])), Image.Resampling.BICUBIC),
        "rotate 3 deg": lambda image: image.rotate(float(rng.choice([-3, 3])), Image.Resampling.BICUBIC),
        "png -> jpeg": lambda image: jpeg(image, 85),
    }


def scikit_image_photos() -> dict[str, Image.Image]:
    with tempfile.TemporaryDirectory(prefix="freesel-bench-") as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        SCIKIT_IMAGE, "-d", download], check=True, capture_output=True, timeout=600)
        with zipfile.ZipFile(next(Path(download).glob("scikit_image-*.whl"))) as archive:
            return {name: Image.open(BytesIO(archive.read(f"skimage/data/{name}"))).convert("RGB") for name in PHOTOS}


def build_pool(n_scenes: int, n_fashion: int, seed: int, first: int) -> list[Item]:
    """The pool; ``first``: the first generated scene's seed and Fashion-MNIST index (a pool
    with another ``first`` shares only the photographs)."""
    rng = np.random.default_rng(seed)
    kinds = copy_kinds(rng)
    bases = {name: photo for name, photo in scikit_image_photos().items()}
    bases.update({f"scene {i}": scene_image(i, (320, 240)) for i in range(first, first + n_scenes)})
    pool: list[Item] = []
    for name, base in bases.items():
        pool.append(Item(base, name, "original"))
        pool.extend(Item(make(base), name, kind) for kind, make in kinds.items())
        width, height = base.size
        window = round(width * 0.7)
        step = round(width * 0.03)
        burst = f"{name} burst"
        pool.append(Item(base.crop((0, 0, window, height)), burst, "original"))
        pool.append(Item(base.crop((step, 0, step + window, height)), burst, "burst 3%"))
        pool.append(Item(base.crop((width - window, 0, width, height)), f"{name} shifted", "shifted"))
    fashion = load_split("t10k")
    for index in range(first, first + n_fashion):
        pool.append(Item(Image.fromarray(fashion.images[index]), f"fashion {index}", "original"))
    return pool


def related(a: Item, b: Item) -> bool:
    """Images cut from one photograph: copies (same source) or ambiguous (a burst crop and the
    whole photo), except the 30 %-shifted crop, which is a hard negative of the burst crops."""
    root_a, root_b = a.source.split(" burst")[0].split(" shifted")[0], b.source.split(" burst")[0].split(" shifted")[0]
    if root_a != root_b:
        return False
    shifted_against_burst = {a.kind, b.kind} & {"shifted"} and (" burst" in a.source or " burst" in b.source)
    return not shifted_against_burst


def recall_per_kind(pool: list[Item], matched: Callable[[int, int], bool]) -> dict[str, float]:
    """Recall per kind of copy: the share of copies matched with their source's original."""
    originals = {item.source: index for index, item in enumerate(pool) if item.kind == "original"}
    recall: dict[str, list[bool]] = {}
    for index, item in enumerate(pool):
        if item.kind not in ("original", "shifted"):
            recall.setdefault(item.kind, []).append(matched(originals[item.source], index))
    return {kind: float(np.mean(found)) for kind, found in recall.items()}


def distinct_pair_count(pool: list[Item]) -> int:
    return sum(1 for a, b in itertools.combinations(pool, 2) if not related(a, b))


def false_merges(pool: list[Item], pairs: list[tuple[int, int]]) -> dict[str, int]:
    """Distinct pairs matched, by the kinds of images they join (fashion, scene, photo)."""
    merged: dict[str, int] = {}
    for a, b in pairs:
        if not related(pool[a], pool[b]):
            kinds = " + ".join(sorted({_family(pool[a]), _family(pool[b])}))
            merged[kinds] = merged.get(kinds, 0) + 1
    return merged


def _family(item: Item) -> str:
    return item.source.split(" ")[0] if item.source.startswith(("fashion", "scene")) else "photo"


def hash_pairs(hashes: np.ndarray) -> set[tuple[int, int]]:
    """(a, b) pairs, a < b, whose 64-bit hashes differ in at most HASH_DISTANCE bits."""
    bits = np.unpackbits(hashes.view(np.uint8).reshape(len(hashes), 8), axis=1).astype(np.float32)
    distance = bits @ (1 - bits).T + (1 - bits) @ bits.T
    first, second = np.nonzero(np.triu(distance <= HASH_DISTANCE, k=1))
    return set(zip(first.tolist(), second.tolist()))


def timed(function: Callable[[Image.Image], object], images: list[Image.Image]) -> tuple[list[object], float]:
    started = time.perf_counter()
    results = [function(image) for image in images]
    return results, (time.perf_counter() - started) / len(images)


def signature_or_none(image: Image.Image) -> CopySignature | None:
    try:
        return copy_signature(image)
    except ValueError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--fashion", type=int, default=2000)
    parser.add_argument("--model", default="auto", help="the model whose pattern extraction is timed")
    parser.add_argument("--timed-images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the random crops and rotations")
    parser.add_argument("--first", type=int, default=0, help="first scene seed and Fashion-MNIST index")
    args = parser.parse_args()

    import imagehash

    pool = build_pool(args.scenes, args.fashion, args.seed, args.first)
    images = [item.image for item in pool]
    n_distinct = distinct_pair_count(pool)
    print(f"pool: {len(pool)} images, {n_distinct:,} distinct pairs")

    signatures, signature_seconds = timed(signature_or_none, images)
    refused = [pool[i].kind + " " + pool[i].source for i, s in enumerate(signatures) if s is None]
    print(f"signatures: {1000 * signature_seconds:.2f} ms/image; no signature: {len(refused)} {refused[:5]}")
    started = time.perf_counter()
    scored_pairs, scores = scored_candidates(signatures)  # type: ignore[arg-type]
    grouping_seconds = time.perf_counter() - started
    rows = []
    for threshold in THRESHOLDS:
        groups = copy_groups(len(signatures), scored_pairs, scores, threshold)
        together = set(itertools.chain.from_iterable(itertools.combinations(g, 2) for g in groups.groups))
        recall = recall_per_kind(pool, lambda a, b: (min(a, b), max(a, b)) in together)
        rows.append((f"copies >= {threshold}, groups", recall, false_merges(pool, sorted(together))))
        verified = {tuple(pair) for pair in scored_pairs[scores >= threshold].tolist()}
        recall = recall_per_kind(pool, lambda a, b: (min(a, b), max(a, b)) in verified)
        rows.append((f"copies >= {threshold}, pairs", recall, false_merges(pool, sorted(verified))))
    for name, hasher in (("pHash <= 10", imagehash.phash), ("dHash <= 10", imagehash.dhash)):
        hashes, hash_seconds = timed(lambda image: int(str(hasher(image)), 16), images)
        pairs = hash_pairs(np.array(hashes, dtype=np.uint64))
        recall = recall_per_kind(pool, lambda a, b: (min(a, b), max(a, b)) in pairs)
        rows.append((f"{name} ({1000 * hash_seconds:.2f} ms/image)", recall, false_merges(pool, sorted(pairs))))

    kinds = list(rows[0][1])
    print("\n| detector | " + " | ".join(kinds) + " | false merges (per 10,000 distinct pairs): by kind |")
    print("|---" * (len(kinds) + 2) + "|")
    for name, recall, merges in rows:
        cells = " | ".join(f"{recall[kind]:.2f}" for kind in kinds)
        total = sum(merges.values())
        print(f"| {name} | {cells} | {total} ({10_000 * total / n_distinct:.2f}): {merges} |")

    per_pair = grouping_seconds / max(1, len(scored_pairs))
    pairs_per_image = len(scored_pairs) / len(pool)
    print(f"\ngrouping {len(pool)} signatures: {grouping_seconds:.1f} s, {len(scored_pairs)} candidate pairs, "
          f"{1000 * per_pair:.2f} ms per pair")
    print(f"at {POOL_AT_SCALE:,} images: signatures {POOL_AT_SCALE * SIGNATURE_BYTES / 2**20:.0f} MiB, "
          f"~{POOL_AT_SCALE * pairs_per_image:,.0f} candidate pairs -> grouping ~"
          f"{POOL_AT_SCALE * pairs_per_image * per_pair / 60:.0f} min on these cores; "
          f"signing {POOL_AT_SCALE * signature_seconds / 60:.1f} min")

    from freesel_backend import PatternExtractor

    photographs = [item.image for item in pool if item.kind == "original" and item.image.width >= 200]
    timed_images = photographs[: args.timed_images]
    extractor = PatternExtractor(args.model, device="cpu")
    started = time.perf_counter()
    extractor.extract(timed_images)
    pattern_seconds = (time.perf_counter() - started) / len(timed_images)
    _, photo_signature_seconds = timed(copy_signature, timed_images)
    print(f"\nsame {len(timed_images)} photographs: patterns ({extractor.model_id}) "
          f"{1000 * pattern_seconds:.1f} ms/image, "
          f"copy signature {1000 * photo_signature_seconds:.2f} ms/image "
          f"(+{100 * photo_signature_seconds / pattern_seconds:.1f} %)")


if __name__ == "__main__":
    main()
