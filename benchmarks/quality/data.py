"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, gzip-compressed)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class DatasetMissingError(RuntimeError):
    """The IDX files are not there; the message says which package installs them."""


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "LabelledImages":
        return LabelledImages(self.images[indices], self.labels[indices])


def load_split(split: str, root: Path = DEFAULT_ROOT) -> LabelledImages:
    """``split`` is ``train`` (60,000 images) or ``t10k`` (the 10,000 test images)."""
    images_path = root / f"{split}-images-idx3-ubyte.gz"
    labels_path = root / f"{split}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DatasetMissingError(
                f"Fashion-MNIST file {path} not found: install Debian's package with "
                f"`apt-get install -y {DEBIAN_PACKAGE}` (or pass --data-dir with the IDX .gz files)"
            )
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    return LabelledImages(images, labels)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An unsigned-byte IDX array: big-endian magic, one big-endian size per dimension, data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found}, expected {magic}")
    n_dims = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)
