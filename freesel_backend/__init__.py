"""FreeSel for Label Studio: pick the images worth labelling first, with no training.

Public API (the engine): :func:`select` ranks images from their semantic patterns;
:class:`PatternExtractor` computes those patterns with a frozen pretrained ViT; :func:`preset`
gives the settings for a kind of labelling task ("classification", "detection", "segmentation").
"""

from .engine import (
    DEFAULT_MODEL,
    STRATEGIES,
    ImageLoadError,
    PatternExtractor,
    Ranking,
    WeightsError,
    load_image,
    preset,
    select,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "STRATEGIES",
    "ImageLoadError",
    "PatternExtractor",
    "Ranking",
    "WeightsError",
    "__version__",
    "load_image",
    "preset",
    "select",
]
