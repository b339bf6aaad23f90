"""Semantic patterns: one forward pass of a frozen ViT -> a few L2-normalised vectors per image.

For each image: patch tokens of the second-to-last block (after the final norm), the last
block's [CLS]->patch attention averaged over heads, the patches holding the top
``attention_ratio`` of that attention mass, and K-means over those patches.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from .bfloat16 import native_bfloat16
from .images import ImageLoadError, load_image
from .kmeans import batched_kmeans
from .models import DEFAULT_MODEL, BackboneSpec, create_backbone

Precision = Literal["fp32", "bf16"]
# "auto": bf16 where the device multiplies bfloat16 natively, fp32 elsewhere (native_precision).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
Source = TypeVar("Source")


# One pattern per image, from every patch token (no attention filter): the setting that beat
# random by the most on held-out data (docs/quality.md). The paper's multi-object setting is
# K=5, ratio 0.5.
DEFAULT_PATTERNS_PER_IMAGE = 1
DEFAULT_ATTENTION_RATIO = 1.0


def native_precision(device: torch.device) -> Precision:
    """bf16 where ``device`` multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX, GPUs
    from NVIDIA Ampere on), fp32 elsewhere: emulated bfloat16 is no faster than float32. The
    patterns differ by bfloat16's rounding (quality of both measured in docs/quality.md)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if device.type == "cpu":
        return "bf16" if native_bfloat16() else "fp32"
    return "fp32"


@dataclass(frozen=True)
class ExtractorSettings:
    """Everything that changes the patterns an image gets (and so their stored version)."""

    model: str = DEFAULT_MODEL
    patterns_per_image: int = DEFAULT_PATTERNS_PER_IMAGE
    attention_ratio: float = DEFAULT_ATTENTION_RATIO
    image_size: int | None = None
    kmeans_iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patterns_per_image < 1:
            raise ValueError(f"patterns_per_image must be >= 1, got {self.patterns_per_image}")
        if not 0.0 <= self.attention_ratio <= 1.0:
            raise ValueError(f"attention_ratio must be within [0, 1], got {self.attention_ratio}")


@dataclass(frozen=True)
class PatchDetails:
    """Per-image internals, for reports: which patches were kept and which pattern owns each."""

    grid: tuple[int, int]
    attention: np.ndarray  # (N,) [CLS]->patch attention, sums to 1
    kept: np.ndarray  # (N,) bool
    pattern_of_patch: np.ndarray  # (N,) int, -1 for patches that were not kept


@dataclass(frozen=True)
class Extracted(Generic[Source]):
    """The outcome for one source: its patterns, or the error that stopped it."""

    index: int
    source: Source
    patterns: np.ndarray | None = None
    error: str | None = None


@dataclass
class ExtractionTimings:
    """Where :meth:`PatternExtractor.extract_sources` spent its time, added up over its runs.

    ``open_s``: the background threads opening images (``open_image``, whatever it does: read a
    file, download) and resizing them to tensors, summed over the threads; it overlaps the
    forward. ``forward_s``: the model and the patterns (attention filter, K-means), in the
    calling thread. ``images``: the sources handled, failed ones included.
    """

    images: int = 0
    open_s: float = 0.0
    forward_s: float = 0.0


class PatternExtractor:
    """Turns images into FreeSel semantic patterns with a frozen timm ViT.

    ``model_id`` names the model actually used (``auto`` resolved, weights' digest included);
    stored patterns carry it so a model change recomputes them.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        patterns_per_image: int = DEFAULT_PATTERNS_PER_IMAGE,
        attention_ratio: float = DEFAULT_ATTENTION_RATIO,
        device: str | None = None,
        random_init: bool = False,
        weights: str | Path | None = None,
        precision: Precision | Literal["auto"] = "fp32",
        batch_size: int = 32,
        image_size: int | None = None,
        kmeans_iterations: int = 100,
        seed: int = 0,
        decode_workers: int = 2,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.settings = ExtractorSettings(
            model=model,
            patterns_per_image=patterns_per_image,
            attention_ratio=attention_ratio,
            image_size=image_size,
            kmeans_iterations=kmeans_iterations,
            seed=seed,
        )
        self.backbone_spec = BackboneSpec(
            name=model, weights=Path(weights) if weights else None, random_init=random_init, image_size=image_size,
            **({"cache_dir": Path(cache_dir)} if cache_dir else {}),
        )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision: Precision = native_precision(self.device) if precision == "auto" else precision
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        backbone, self.model_id = create_backbone(self.backbone_spec)
        self.model = backbone.to(self.device)
        config = self.model.pretrained_cfg
        self.input_size: tuple[int, int] = tuple(self.model.patch_embed.img_size)  # type: ignore[assignment]
        self.mean = torch.tensor(config.get("mean", (0.485, 0.456, 0.406)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(config.get("std", (0.229, 0.224, 0.225)), device=self.device).view(1, 3, 1, 1)

    # ---- public API -------------------------------------------------------------------------

    def extract(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """(k_i, D) float32 arrays of L2-normalised patterns, one per PIL image."""
        results: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.to_tensor(image) for image in images[start : start + self.batch_size]])
            results.extend(self.patterns_of_batch(batch))
        return results

    def extract_sources(
        self,
        sources: Iterable[Source],
        open_image: Callable[[Source], Image.Image] = load_image,  # type: ignore[assignment]
        *,
        on_batch: Callable[[int], None] | None = None,
        timings: ExtractionTimings | None = None,
    ) -> Iterator[Extracted[Source]]:
        """Open ``sources`` in ``decode_workers`` background threads while the model runs, up
        to two batches ahead, in input order.

        Each source yields one :class:`Extracted`; one that cannot be opened carries its error
        and never stops the others. ``on_batch(n)`` is told how many sources each batch covered;
        ``timings`` (when given) gets the time spent opening and in the forward added to it.
        """
        timings = timings if timings is not None else ExtractionTimings()

        def prepare(item: tuple[int, Source]) -> tuple[int, Source, torch.Tensor | str, float]:
            index, source = item
            started = time.perf_counter()
            try:
                opened: torch.Tensor | str = self.to_tensor(open_image(source))
            except ImageLoadError as error:
                opened = str(error)
            return index, source, opened, time.perf_counter() - started

        report = on_batch or (lambda covered: None)
        with ThreadPoolExecutor(max_workers=self.decode_workers) as pool:
            prepared = _prefetching_map(pool, prepare, enumerate(sources), lookahead=2 * self.batch_size)
            pending: list[tuple[int, Source, torch.Tensor]] = []
            covered = 0
            for index, source, tensor_or_error, open_seconds in prepared:
                covered += 1
                timings.images += 1
                timings.open_s += open_seconds
                if isinstance(tensor_or_error, str):
                    yield Extracted(index, source, error=tensor_or_error)
                    continue
                pending.append((index, source, tensor_or_error))
                if len(pending) == self.batch_size:
                    yield from self._run_pending(pending, timings)
                    report(covered)
                    pending, covered = [], 0
            if pending:
                yield from self._run_pending(pending, timings)
            if covered:
                report(covered)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """Bicubic resize to the model's input size -> (3, H, W) uint8 tensor."""
        height, width = self.input_size
        resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)

    @torch.inference_mode()
    def patterns_of_batch(self, batch: torch.Tensor) -> list[np.ndarray]:
        """Patterns for a (B, 3, H, W) uint8 batch from :meth:`to_tensor`."""
        features, attention = self.features_and_attention(batch)
        return self.patterns_of_features(features, attention)

    @torch.inference_mode()
    def patterns_and_embeddings_of_batch(self, batch: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
        """Patterns and the (B, D) global embeddings (final [CLS] token after the final norm)
        of a uint8 batch, from one forward pass."""
        features, attention, embeddings = self.features_attention_and_embeddings(batch)
        return self.patterns_of_features(features, attention), embeddings.cpu().numpy()

    def patterns_of_features(
        self,
        features: torch.Tensor,
        attention: torch.Tensor,
        *,
        patterns_per_image: int | None = None,
        attention_ratio: float | None = None,
    ) -> list[np.ndarray]:
        """Patterns from :meth:`features_and_attention`'s output; K and the attention ratio
        default to the extractor's settings (others serve experiments on the same pass)."""
        ratio = self.settings.attention_ratio if attention_ratio is None else attention_ratio
        kept = attention_mask(attention, features, ratio)
        return self._cluster(features, kept, patterns_per_image or self.settings.patterns_per_image)[0]

    @torch.inference_mode()
    def details_of_batch(self, batch: torch.Tensor) -> list[PatchDetails]:
        """Which patches each image kept and which pattern each belongs to (for reports)."""
        features, attention = self.features_and_attention(batch)
        kept = attention_mask(attention, features, self.settings.attention_ratio)
        _, owners = self._cluster(features, kept, self.settings.patterns_per_image)
        grid = self.model.patch_embed.grid_size
        return [
            PatchDetails(tuple(grid), attention[b].float().cpu().numpy(), kept[b].cpu().numpy(), owners[b])
            for b in range(len(batch))
        ]

    def features_and_attention(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) patch features of the second-to-last block after the final norm, and the
        last block's (B, N) [CLS]->patch attention averaged over heads, summing to 1."""
        features, attention, _ = self._forward(batch, with_embeddings=False)
        return features, attention

    def features_attention_and_embeddings(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`features_and_attention` plus the (B, D) final [CLS] token after the final
        norm (the image's global embedding); the last block then runs in full."""
        features, attention, embeddings = self._forward(batch, with_embeddings=True)
        assert embeddings is not None
        return features, attention, embeddings

    # ---- internals --------------------------------------------------------------------------

    def _forward(
        self, batch: torch.Tensor, *, with_embeddings: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        model = self.model
        pixels = (batch.to(self.device, non_blocking=True).float() / 255.0 - self.mean) / self.std
        embeddings = None
        with self._autocast():
            # the tokens entering the last block, not normalised (timm stops there: stop_early)
            ((patches, prefix),) = model.forward_intermediates(
                pixels, indices=[len(model.blocks) - 2], return_prefix_tokens=True, stop_early=True,
                output_fmt="NLC", intermediates_only=True,
            )
            tokens = torch.cat([prefix, patches], dim=1)
            features = model.norm(patches)
            attention = cls_attention(model.blocks[-1], tokens)[:, model.num_prefix_tokens :]
            if with_embeddings:
                embeddings = model.norm(model.blocks[-1](tokens))[:, 0].float()
        attention = attention.float()
        return features.float(), attention / attention.sum(dim=1, keepdim=True), embeddings

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _cluster(
        self, features: torch.Tensor, kept: torch.Tensor, k: int
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        centroids, members, assignment = batched_kmeans(
            features, kept, k, iterations=self.settings.kmeans_iterations, generator=generator
        )
        n_kept = kept.sum(dim=1)
        centroids, members, assignment = centroids.cpu(), members.cpu(), assignment.cpu()
        features_cpu, kept_cpu = features.cpu(), kept.cpu()
        patterns, owners = [], []
        for b in range(len(features)):
            if int(n_kept[b]) <= k:
                # Too few kept patches to cluster: each kept patch is a pattern.
                image_patterns = features_cpu[b][kept_cpu[b]]
                owner = torch.full((kept.shape[1],), -1, dtype=torch.long)
                owner[kept_cpu[b]] = torch.arange(int(n_kept[b]))
            else:
                non_empty = members[b] > 0
                image_patterns = centroids[b][non_empty]
                renumber = torch.cumsum(non_empty.long(), 0) - 1
                owner = torch.where(assignment[b] >= 0, renumber[assignment[b].clamp(min=0)], -1)
            patterns.append(_l2_normalised(image_patterns.numpy()))
            owners.append(owner.numpy())
        return patterns, owners

    def _run_pending(
        self, pending: list[tuple[int, Source, torch.Tensor]], timings: ExtractionTimings
    ) -> Iterator[Extracted[Source]]:
        started = time.perf_counter()
        batch = torch.stack([tensor for _, _, tensor in pending])
        patterns_of_batch = self.patterns_of_batch(batch)
        timings.forward_s += time.perf_counter() - started
        for (index, source, _), patterns in zip(pending, patterns_of_batch):
            yield Extracted(index, source, patterns=patterns)


def cls_attention(block: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The [CLS] token's attention over all tokens in ``block``, averaged over heads: (B, T).

    Only the [CLS] query row is computed, so the cost is one qkv projection, not a full block.
    """
    attn = block.attn
    batch, n_tokens, _ = tokens.shape
    qkv = attn.qkv(block.norm1(tokens)).reshape(batch, n_tokens, 3, attn.num_heads, attn.head_dim)
    query, key = qkv[:, :1, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    query, key = attn.q_norm(query), attn.k_norm(key)
    scores = (query.float() * attn.scale) @ key.float().transpose(-2, -1)
    return scores.softmax(dim=-1).mean(dim=1).squeeze(1)


def attention_mask(attention: torch.Tensor, features: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep the patches that together hold the top ``ratio`` of attention mass: (B, N) bool.

    Sorted ascending, a patch is kept where the cumulative mass exceeds ``1 - ratio``. An image
    where nothing survives keeps its patch with the largest feature norm.
    """
    ordered, order = attention.sort(dim=1)
    kept_sorted = ordered.cumsum(dim=1) > 1.0 - ratio
    kept = torch.zeros_like(kept_sorted).scatter(1, order, kept_sorted)
    empty = ~kept.any(dim=1)
    if empty.any():
        strongest = features.norm(dim=-1).argmax(dim=1)
        rows = torch.nonzero(empty).squeeze(1)
        kept[rows, strongest[rows]] = True
    return kept


def _l2_normalised(patterns: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(patterns, axis=1, keepdims=True)
    return (patterns / np.maximum(norms, 1e-12)).astype(np.float32)


def _prefetching_map(
    pool: ThreadPoolExecutor, function: Callable, items: Iterable, *, lookahead: int
) -> Iterator:
    """``map`` over a thread pool that keeps at most ``lookahead`` results in flight, in order."""
    in_flight: deque = deque()
    for item in items:
        in_flight.append(pool.submit(function, item))
        if len(in_flight) >= lookahead:
            yield in_flight.popleft().result()
    for future in in_flight:
        yield future.result()

