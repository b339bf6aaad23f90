"""Multi-object scenes built from real Fashion-MNIST objects, for detection-style labelling.

Each scene is a square greyscale canvas holding objects, each a Fashion-MNIST image scaled up and
placed without overlap. Object classes follow a long-tailed distribution (the most frequent class
``imbalance`` times as frequent as the rarest), as in detection datasets. Labelling a scene labels
all of its objects (their boxes and classes), so what a pick buys is its objects. Four pools
(:data:`POOLS`) differ in object statistics: ``mosaic`` (1-4 objects of 56-96 px), ``crowded``
(6-12 small objects of 24-40 px), ``dominant`` (one object of 120-180 px among unlabelled clutter:
small fragments of other images) and ``tail`` (1-3 objects, classes so imbalanced that the rarest
appear in under 1 % of the scenes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .data import LabelledImages

N_CLASSES = 10


@dataclass(frozen=True)
class SceneSettings:
    n_scenes: int = 3000
    canvas: int = 224
    min_objects: int = 1
    max_objects: int = 4
    min_object_size: int = 56
    max_object_size: int = 96
    imbalance: float = 20.0
    seed: int = 0
    clutter: tuple[int, int] = (0, 0)  # unlabelled fragments per scene, min and max
    clutter_size: tuple[int, int] = (12, 24)  # their size in pixels, min and max


POOLS: dict[str, SceneSettings] = {
    "mosaic": SceneSettings(),
    "crowded": SceneSettings(min_objects=6, max_objects=12, min_object_size=24, max_object_size=40),
    "dominant": SceneSettings(min_objects=1, max_objects=1, min_object_size=120, max_object_size=180, clutter=(4, 8)),
    "tail": SceneSettings(min_objects=1, max_objects=3, imbalance=500.0),
}


@dataclass(frozen=True)
class Scenes:
    """Canvases and, per object, its source image, class and scene."""

    canvases: np.ndarray  # (S, canvas, canvas) uint8
    object_images: np.ndarray  # (M, 28, 28) uint8: each object as it came from Fashion-MNIST
    object_sources: np.ndarray  # (M,) int64: its index in the source images
    object_labels: np.ndarray  # (M,) int64
    object_scene: np.ndarray  # (M,) int64: which canvas holds the object
    class_frequencies: np.ndarray  # (N_CLASSES,) the long-tailed distribution the classes were drawn from

    def __len__(self) -> int:
        return len(self.canvases)

    def objects_of(self, scenes: np.ndarray) -> np.ndarray:
        """Indices of the objects held by ``scenes``: what labelling them yields."""
        return np.flatnonzero(np.isin(self.object_scene, scenes))

    def objects_per_scene(self) -> np.ndarray:
        return np.bincount(self.object_scene, minlength=len(self.canvases))

    def rarest_classes(self, n: int = 3) -> np.ndarray:
        return np.argsort(self.class_frequencies)[:n]

    def subset(self, scenes: np.ndarray) -> "Scenes":
        """The scenes ``scenes`` (sorted) with their objects, renumbered."""
        scenes = np.sort(scenes)
        kept = self.objects_of(scenes)
        renumber = np.full(len(self.canvases), -1)
        renumber[scenes] = np.arange(len(scenes))
        return Scenes(
            self.canvases[scenes], self.object_images[kept], self.object_sources[kept], self.object_labels[kept],
            renumber[self.object_scene[kept]], self.class_frequencies,
        )


def long_tailed_frequencies(imbalance: float, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying class frequencies from 1 to 1/imbalance, in a random class order."""
    frequencies = imbalance ** (-np.arange(N_CLASSES) / (N_CLASSES - 1))
    return rng.permutation(frequencies / frequencies.sum())


def build_scenes(source: LabelledImages, settings: SceneSettings = SceneSettings()) -> Scenes:
    """``settings.n_scenes`` scenes from ``source``'s images, each image used at most once."""
    rng = np.random.default_rng(settings.seed)
    frequencies = long_tailed_frequencies(settings.imbalance, rng)
    unused = {c: list(rng.permutation(np.flatnonzero(source.labels == c))) for c in range(N_CLASSES)}
    canvases = np.zeros((settings.n_scenes, settings.canvas, settings.canvas), dtype=np.uint8)
    sources, labels, owners = [], [], []
    for scene in range(settings.n_scenes):
        if settings.clutter[1] > 0:  # (the mosaic pool's random stream stays as it was)
            _add_clutter(canvases[scene], source, settings, rng)
        count = int(rng.integers(settings.min_objects, settings.max_objects + 1))
        for box in _boxes(count, settings, rng):
            label = int(rng.choice(N_CLASSES, p=frequencies))
            if not unused[label]:
                raise ValueError(f"not enough images of class {label} for {settings.n_scenes} scenes")
            index = unused[label].pop()
            _paste(canvases[scene], source.images[index], box)
            sources.append(index)
            labels.append(label)
            owners.append(scene)
    object_sources = np.asarray(sources, dtype=np.int64)
    return Scenes(
        canvases, source.images[object_sources], object_sources, np.asarray(labels, dtype=np.int64),
        np.asarray(owners, dtype=np.int64), frequencies,
    )


Box = tuple[int, int, int]  # top, left, size


def _boxes(count: int, settings: SceneSettings, rng: np.random.Generator) -> list[Box]:
    """Up to ``count`` non-overlapping square boxes (fewer only if rejection sampling fails)."""
    boxes: list[Box] = []
    for _ in range(50 * count):
        if len(boxes) == count:
            break
        size = int(rng.integers(settings.min_object_size, settings.max_object_size + 1))
        top, left = (int(v) for v in rng.integers(0, settings.canvas - size + 1, size=2))
        if all(not _overlap((top, left, size), other) for other in boxes):
            boxes.append((top, left, size))
    return boxes


def _add_clutter(canvas: np.ndarray, source: LabelledImages, settings: SceneSettings, rng: np.random.Generator) -> None:
    """Unlabelled fragments (a quarter of a random source image each) anywhere on the canvas."""
    for _ in range(int(rng.integers(settings.clutter[0], settings.clutter[1] + 1))):
        image = source.images[int(rng.integers(len(source)))]
        top, left = (int(v) for v in rng.integers(0, 15, size=2))
        size = int(rng.integers(settings.clutter_size[0], settings.clutter_size[1] + 1))
        box = (*(int(v) for v in rng.integers(0, settings.canvas - size + 1, size=2)), size)
        _paste(canvas, np.ascontiguousarray(image[top : top + 14, left : left + 14]), box)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def _paste(canvas: np.ndarray, image: np.ndarray, box: Box) -> None:
    top, left, size = box
    scaled = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    region = canvas[top : top + size, left : left + size]
    np.maximum(region, scaled, out=region)


def balanced_objects(source: LabelledImages, per_class: int, exclude: np.ndarray, seed: int) -> LabelledImages:
    """``per_class`` images of each class from ``source``, none of the indices in ``exclude``."""
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(source), dtype=bool)
    allowed[exclude] = False
    chosen = [
        rng.choice(np.flatnonzero(allowed & (source.labels == c)), per_class, replace=False) for c in range(N_CLASSES)
    ]
    return source.subset(np.sort(np.concatenate(chosen)))
