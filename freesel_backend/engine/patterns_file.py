"""A pool's patterns in one ``.npz`` file: every image's patterns stacked, the image each row
belongs to, the image paths and the provenance (model, weights) as JSON. ``select --save-patterns``
writes it; ``select --load-patterns`` and ``report --patterns`` read it back without the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def save_patterns_file(
    path: Path, paths: Sequence[str], patterns: Sequence[np.ndarray], *, provenance: dict[str, Any]
) -> None:
    stacked = np.concatenate(patterns).astype(np.float32) if patterns else np.zeros((0, 0), np.float32)
    owner = np.repeat(np.arange(len(patterns)), [len(p) for p in patterns]).astype(np.int64)
    np.savez_compressed(
        path, patterns=stacked, owner=owner, paths=np.asarray(paths, dtype=str), provenance=json.dumps(provenance)
    )


def load_provenance(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return json.loads(str(data["provenance"])) if "provenance" in data else {}


def load_patterns_file(path: Path) -> tuple[list[str], list[np.ndarray]]:
    with np.load(path) as data:
        stacked, owner, paths = data["patterns"], data["owner"], [str(p) for p in data["paths"]]
    return paths, [stacked[owner == image] for image in range(len(paths))]
