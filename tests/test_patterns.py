"""Semantic patterns: features, attention filter, batched K-means and the extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freesel_backend.engine.images import ImageLoadError
from freesel_backend.engine.kmeans import batched_kmeans
from freesel_backend.engine.patterns import ExtractionTimings, attention_mask, cls_attention
from tests.helpers import noise_image, tiny_extractor


def reference_kmeans(points: np.ndarray, initial: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Plain single-image Lloyd's algorithm."""
    centres = initial.astype(np.float64).copy()
    for _ in range(iterations):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        updated = np.array(
            [points[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(len(centres))]
        )
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


def blobs(rng: np.random.Generator, centres: np.ndarray, per_blob: int, spread: float = 0.05) -> np.ndarray:
    return np.concatenate([c + spread * rng.normal(size=(per_blob, centres.shape[1])) for c in centres])


def sorted_rows(array: np.ndarray) -> np.ndarray:
    return array[np.lexsort(array.T[::-1])]


def test_batched_kmeans_matches_a_per_image_reference() -> None:
    rng = np.random.default_rng(0)
    images = [blobs(rng, rng.normal(size=(3, 6)) * 4, per_blob=10) for _ in range(5)]
    points = torch.tensor(np.stack(images), dtype=torch.float32)
    mask = torch.ones(points.shape[:2], dtype=torch.bool)
    centroids, members, assignment = batched_kmeans(points, mask, 3, generator=torch.Generator().manual_seed(0))
    for b, image in enumerate(images):
        reference = reference_kmeans(image, centroids[b].numpy())  # a fixed point of Lloyd's iteration
        np.testing.assert_allclose(sorted_rows(centroids[b].numpy()), sorted_rows(reference), atol=1e-4)
        assert sorted(members[b].tolist()) == [10, 10, 10]
        assert (assignment[b] >= 0).all()


def test_kmeans_ignores_masked_out_points() -> None:
    rng = np.random.default_rng(1)
    kept = blobs(rng, np.array([[0.0, 0.0], [5.0, 5.0]]), per_blob=8)
    outliers = np.full((4, 2), 1000.0)
    points = torch.tensor(np.concatenate([kept, outliers])[None], dtype=torch.float32)
    mask = torch.tensor([[True] * 16 + [False] * 4])
    centroids, members, assignment = batched_kmeans(points, mask, 2, generator=torch.Generator().manual_seed(0))
    assert np.abs(centroids.numpy()).max() < 10
    assert members.sum() == 16
    assert (assignment[0, 16:] == -1).all()


def test_attention_filter_keeps_the_smallest_set_holding_the_requested_share() -> None:
    attention = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    features = torch.ones(1, 5, 3)
    kept = attention_mask(attention, features, 0.5)
    assert kept.tolist() == [[False, True, False, True, False]]  # 0.4 + 0.3 >= 0.5, 0.4 alone is not
    assert attention_mask(attention, features, 1.0).all()


def test_attention_filter_with_nothing_surviving_keeps_the_strongest_patch() -> None:
    attention = torch.full((1, 4), 0.25)
    features = torch.zeros(1, 4, 3)
    features[0, 2] = 5.0
    assert attention_mask(attention, features, 0.0).tolist() == [[False, False, True, False]]


def test_cls_attention_is_row_zero_of_the_full_attention_averaged_over_heads() -> None:
    extractor = tiny_extractor()
    block = extractor.model.blocks[-1]
    tokens = torch.randn(2, 17, extractor.model.embed_dim)
    attn = block.attn
    qkv = attn.qkv(block.norm1(tokens)).reshape(2, 17, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    full = ((qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
    with torch.inference_mode():
        torch.testing.assert_close(cls_attention(block, tokens), full[:, :, 0].mean(1), atol=1e-6, rtol=1e-5)


def test_features_are_the_second_to_last_block_after_the_final_norm() -> None:
    extractor = tiny_extractor()
    batch = torch.stack([extractor.to_tensor(noise_image(s)) for s in range(2)])
    with torch.inference_mode():
        features, attention = extractor.features_and_attention(batch)
        pixels = (batch.float() / 255.0 - extractor.mean) / extractor.std
        depth = len(extractor.model.blocks)
        intermediates = extractor.model.forward_intermediates(
            pixels, indices=[depth - 2], norm=True, output_fmt="NLC", intermediates_only=True
        )[0]
    torch.testing.assert_close(features, intermediates, atol=1e-5, rtol=1e-4)
    assert features.shape == (2, 16, extractor.model.embed_dim)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))


def test_global_embeddings_are_the_final_cls_token_from_the_same_pass_as_the_patterns() -> None:
    extractor = tiny_extractor(patterns_per_image=2)
    batch = torch.stack([extractor.to_tensor(noise_image(s)) for s in range(3)])
    patterns, embeddings = extractor.patterns_and_embeddings_of_batch(batch)
    with torch.inference_mode():
        pixels = (batch.float() / 255.0 - extractor.mean) / extractor.std
        cls_tokens = extractor.model.forward_features(pixels)[:, 0]
    np.testing.assert_allclose(embeddings, cls_tokens.numpy(), atol=1e-5, rtol=1e-4)
    for own, separate in zip(patterns, extractor.patterns_of_batch(batch)):
        np.testing.assert_array_equal(own, separate)


def test_patterns_of_features_takes_k_and_ratio_per_call() -> None:
    extractor = tiny_extractor(patterns_per_image=5)
    batch = torch.stack([extractor.to_tensor(noise_image(s)) for s in range(2)])
    with torch.inference_mode():
        features, attention = extractor.features_and_attention(batch)
    single = extractor.patterns_of_features(features, attention, patterns_per_image=1, attention_ratio=1.0)
    for b in range(2):
        mean = features[b].mean(0).numpy()
        np.testing.assert_allclose(single[b][0], mean / np.linalg.norm(mean), atol=1e-5)
    assert [len(p) for p in extractor.patterns_of_features(features, attention)] == [5, 5]


def test_extract_gives_each_image_at_most_k_unit_length_patterns() -> None:
    extractor = tiny_extractor(patterns_per_image=3)
    patterns = extractor.extract([noise_image(s, size=(40 + 9 * s, 50)) for s in range(6)])
    assert len(patterns) == 6
    for image_patterns in patterns:
        assert image_patterns.dtype == np.float32
        assert 1 <= image_patterns.shape[0] <= 3
        assert image_patterns.shape[1] == extractor.model.embed_dim
        np.testing.assert_allclose(np.linalg.norm(image_patterns, axis=1), 1.0, atol=1e-5)


def test_extract_sources_adds_its_opening_and_forward_time_to_the_timings_it_is_given() -> None:
    def open_image(seed: int):
        if seed == 2:
            raise ImageLoadError("not an image")
        return noise_image(seed)

    timings = ExtractionTimings()
    outcomes = list(tiny_extractor().extract_sources(range(6), open_image, timings=timings))
    assert [outcome.error for outcome in outcomes].count("not an image") == 1
    assert timings.images == 6 and timings.open_s > 0 and timings.forward_s > 0
    list(tiny_extractor().extract_sources(range(3), open_image, timings=timings))
    assert timings.images == 9  # summed over runs


def test_one_pattern_per_image_is_the_mean_of_the_kept_patches() -> None:
    extractor = tiny_extractor(patterns_per_image=1, attention_ratio=0.5)
    batch = torch.stack([extractor.to_tensor(noise_image(s)) for s in range(3)])
    with torch.inference_mode():
        features, attention = extractor.features_and_attention(batch)
    kept = attention_mask(attention, features, 0.5)
    patterns = extractor.patterns_of_batch(batch)
    for b in range(3):
        mean = features[b][kept[b]].mean(0).numpy()
        np.testing.assert_allclose(patterns[b][0], mean / np.linalg.norm(mean), atol=1e-5)


def test_with_fewer_kept_patches_than_k_every_kept_patch_is_a_pattern() -> None:
    extractor = tiny_extractor(patterns_per_image=5, attention_ratio=0.05)
    batch = torch.stack([extractor.to_tensor(noise_image(s)) for s in range(3)])
    details = extractor.details_of_batch(batch)
    for image_patterns, detail in zip(extractor.patterns_of_batch(batch), details):
        assert image_patterns.shape[0] == detail.kept.sum() <= 5
        assert set(detail.pattern_of_patch[detail.kept]) == set(range(image_patterns.shape[0]))


def test_extraction_is_deterministic() -> None:
    images = [noise_image(s) for s in range(5)]
    first = tiny_extractor().extract(images)
    second = tiny_extractor().extract(images)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_the_extractor_does_not_assume_patch_16_or_224() -> None:
    extractor = tiny_extractor()
    assert extractor.input_size == (64, 64)
    from freesel_backend import PatternExtractor

    patch14 = PatternExtractor("vit_small_patch14_dinov2", random_init=True, image_size=56, device="cpu")
    assert patch14.model.patch_embed.patch_size == (14, 14)
    patterns = patch14.extract([noise_image(1)])
    assert patterns[0].shape[1] == 384
    details = patch14.details_of_batch(torch.stack([patch14.to_tensor(noise_image(1))]))
    assert details[0].grid == (4, 4) and details[0].kept.shape == (16,)


@pytest.mark.slow
def test_bf16_features_stay_close_to_fp32() -> None:
    fp32, bf16 = tiny_extractor(), tiny_extractor(precision="bf16")
    batch = torch.stack([fp32.to_tensor(noise_image(s)) for s in range(2)])
    with torch.inference_mode():
        features_fp32, attention_fp32 = fp32.features_and_attention(batch)
        features_bf16, attention_bf16 = bf16.features_and_attention(batch)
    cosine = torch.nn.functional.cosine_similarity(features_fp32, features_bf16, dim=-1)
    assert float(cosine.mean()) > 0.98
    torch.testing.assert_close(attention_bf16, attention_fp32, atol=0.02, rtol=0.2)
    assert all(p.shape[1] == fp32.model.embed_dim for p in bf16.patterns_of_batch(batch))


@pytest.mark.parametrize("bad", [{"patterns_per_image": 0}, {"attention_ratio": 1.5}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        tiny_extractor(**bad)
