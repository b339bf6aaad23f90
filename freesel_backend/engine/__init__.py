"""The pure FreeSel engine: image loading, semantic patterns and selection.

Nothing here imports Label Studio, Flask, Redis or RQ.
"""

from .duplicates import DEFAULT_DUPLICATE_THRESHOLD, DuplicateGroups, find_near_duplicates
from .images import ImageLoadError, list_image_files, load_image
from .models import DEFAULT_MODEL, BackboneSpec, WeightsError
from .patterns import (
    DEFAULT_ATTENTION_RATIO,
    DEFAULT_PATTERNS_PER_IMAGE,
    PRECISIONS,
    ExtractionTimings,
    ExtractorSettings,
    PatternExtractor,
)
from .presets import PRESET_FIELDS, TASKS, preset
from .selection import STRATEGIES, Ranking, select

__all__ = [
    "DEFAULT_DUPLICATE_THRESHOLD",
    "DEFAULT_ATTENTION_RATIO",
    "DEFAULT_MODEL",
    "DEFAULT_PATTERNS_PER_IMAGE",
    "DuplicateGroups",
    "PRECISIONS",
    "PRESET_FIELDS",
    "STRATEGIES",
    "TASKS",
    "BackboneSpec",
    "ExtractionTimings",
    "ExtractorSettings",
    "ImageLoadError",
    "PatternExtractor",
    "Ranking",
    "WeightsError",
    "find_near_duplicates",
    "list_image_files",
    "load_image",
    "preset",
    "select",
]
