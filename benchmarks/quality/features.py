"""One forward pass per image -> global embeddings and patterns for several (K, ratio), cached.

The cache is an .npz per (model, image size, precision, image set): reruns load it in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from freesel_backend.engine import PatternExtractor

PatternConfig = tuple[int, float]  # (patterns per image K, attention ratio)
DEFAULT_CONFIGS: tuple[PatternConfig, ...] = ((1, 0.5), (3, 0.5), (5, 0.5), (1, 1.0), (3, 1.0), (5, 1.0))
DEFAULT_CACHE_DIR = Path(".cache") / "quality_bench"


@dataclass(frozen=True)
class ExtractionSettings:
    model: str = "offline"
    image_size: int = 112
    precision: str = "bf16"
    batch_size: int = 64
    random_init: bool = False
    configs: tuple[PatternConfig, ...] = DEFAULT_CONFIGS


@dataclass(frozen=True)
class Features:
    """Per image: its global embedding, and its patterns under each pattern config."""

    embeddings: np.ndarray  # (N, D) float32
    patterns: dict[PatternConfig, list[np.ndarray]]
    model_id: str
    seconds: float  # extraction time (0 when loaded from the cache)

    def __len__(self) -> int:
        return len(self.embeddings)

    def subset(self, indices: np.ndarray) -> "Features":
        picked = {config: [patterns[i] for i in indices] for config, patterns in self.patterns.items()}
        return Features(self.embeddings[indices], picked, self.model_id, self.seconds)


def cached_features(
    images: np.ndarray, name: str, settings: ExtractionSettings, cache_dir: Path = DEFAULT_CACHE_DIR
) -> Features:
    """Features of ``images`` ((N, H, W) uint8), from the cache when it has them."""
    path = cache_dir / f"{name}_{_cache_key(images, settings)}.npz"
    if path.is_file():
        return _load(path, settings.configs)
    features = extract_features(images, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save(path, features)
    return features


def extract_features(images: np.ndarray, settings: ExtractionSettings) -> Features:
    extractor = _extractor(
        settings.model, settings.image_size, settings.precision, settings.batch_size, settings.random_init
    )
    started = time.perf_counter()
    embeddings: list[np.ndarray] = []
    patterns: dict[PatternConfig, list[np.ndarray]] = {config: [] for config in settings.configs}
    for start in range(0, len(images), settings.batch_size):
        batch = torch.stack(
            [extractor.to_tensor(Image.fromarray(a)) for a in images[start : start + settings.batch_size]]
        )
        with torch.inference_mode():
            features, attention, batch_embeddings = extractor.features_attention_and_embeddings(batch)
            for k, ratio in settings.configs:
                patterns[(k, ratio)].extend(
                    extractor.patterns_of_features(features, attention, patterns_per_image=k, attention_ratio=ratio)
                )
        embeddings.append(batch_embeddings.numpy())
        done = min(start + settings.batch_size, len(images))
        rate = done / (time.perf_counter() - started)
        print(f"\r  extracted {done}/{len(images)} images ({rate:.0f} img/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    seconds = time.perf_counter() - started
    return Features(np.concatenate(embeddings).astype(np.float32), patterns, extractor.model_id, seconds)


@functools.lru_cache(maxsize=2)
def _extractor(model: str, image_size: int, precision: str, batch_size: int, random_init: bool) -> PatternExtractor:
    """One extractor per model and input size in a process: a benchmark extracts several image
    sets (scenes, their objects, evaluation objects) with the same model."""
    return PatternExtractor(
        model, image_size=image_size, precision=precision,  # type: ignore[arg-type]
        device="cpu", batch_size=batch_size, random_init=random_init,
    )


def _cache_key(images: np.ndarray, settings: ExtractionSettings) -> str:
    digest = hashlib.sha256(images.tobytes())
    digest.update(repr((settings.model, settings.image_size, settings.precision, settings.random_init)).encode())
    digest.update(repr(sorted(settings.configs)).encode())
    return digest.hexdigest()[:16]


def _config_tag(config: PatternConfig) -> str:
    return f"k{config[0]}_r{round(config[1] * 100)}"


def _save(path: Path, features: Features) -> None:
    arrays: dict[str, np.ndarray] = {"embeddings": features.embeddings}
    for config, patterns in features.patterns.items():
        arrays[f"patterns_{_config_tag(config)}"] = np.concatenate(patterns)
        arrays[f"counts_{_config_tag(config)}"] = np.array([len(p) for p in patterns])
    np.savez(path, model_id=np.array(features.model_id), seconds=np.array(features.seconds), **arrays)


def _load(path: Path, configs: Sequence[PatternConfig]) -> Features:
    with np.load(path) as stored:
        patterns = {
            config: np.split(
                stored[f"patterns_{_config_tag(config)}"], np.cumsum(stored[f"counts_{_config_tag(config)}"])[:-1]
            )
            for config in configs
        }
        return Features(stored["embeddings"], patterns, str(stored["model_id"]), 0.0)
