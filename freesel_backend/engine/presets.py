"""Selection settings by kind of labelling task, each chosen on held-out data (docs/quality.md).

``classification`` (one label per image) was tuned on single-object Fashion-MNIST;
``detection`` (boxes, polygons, masks, keypoints: every object in an image gets labelled) on
scenes of 1-4 Fashion-MNIST objects with long-tailed classes. Segmentation labels every object
too, so it uses detection's preset.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from .patterns import DEFAULT_ATTENTION_RATIO, DEFAULT_PATTERNS_PER_IMAGE
from .selection import DEFAULT_STRATEGY

TASKS: tuple[str, ...] = ("classification", "detection", "segmentation")
PRESET_FIELDS: tuple[str, ...] = ("patterns_per_image", "attention_ratio", "strategy")

_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # The extractor's and select()'s defaults: one representative per cluster of the images'
        # whitened all-token mean patterns.
        "classification": MappingProxyType(
            {
                "patterns_per_image": DEFAULT_PATTERNS_PER_IMAGE,
                "attention_ratio": DEFAULT_ATTENTION_RATIO,
                "strategy": DEFAULT_STRATEGY,
            }
        ),
        # The paper's multi-object setting and farthest-first sampling on patterns.
        "detection": MappingProxyType({"patterns_per_image": 5, "attention_ratio": 0.5, "strategy": "fds"}),
    }
)
_SAME_AS = {"segmentation": "detection"}


def preset(kind: str) -> dict[str, Any]:
    """The settings for ``kind`` ("classification", "detection" or "segmentation"): at least
    ``patterns_per_image``, ``attention_ratio`` and ``strategy``; a new dict on every call."""
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; choose one of {', '.join(TASKS)}")
    return dict(_PRESETS[_SAME_AS.get(kind, kind)])
