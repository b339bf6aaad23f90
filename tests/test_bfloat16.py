"""bfloat16 products of ``a.q - 1``: every one within its error bound, a floor and a ceiling
around the exact nearest similarity, and exact nearest similarities through bfloat16 candidates,
on random and adversarial unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freesel_backend.engine import bfloat16
from freesel_backend.engine.bfloat16 import (
    UNIT_ROUNDOFF,
    Bfloat16Rows,
    augmented_bfloat16,
    constant_error,
    native_bfloat16,
    result_error,
)


def unit(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def exact_nearest(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return (rows.astype(np.float64) @ queries.astype(np.float64).T).max(axis=1)


def hard_cases(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and queries where bfloat16 rounding bites: clustered directions (many near-ties),
    one dominant component, equal components, and rows that are copies or negatives of queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    clustered = centres[rng.integers(0, 6, 300)] + 0.05 * rng.normal(size=(300, dim))
    spiky = np.eye(dim)[rng.integers(0, dim, 40)] + 0.01 * rng.normal(size=(40, dim))
    flat = np.ones((10, dim)) + 0.001 * rng.normal(size=(10, dim))
    queries = unit(np.concatenate([clustered[:120], spiky[:10], flat[:2], rng.normal(size=(30, dim))]))
    rows = unit(np.concatenate([clustered, spiky, flat, queries[:20], -queries[20:30], rng.normal(size=(100, dim))]))
    return rows, queries


def largest_error(rows: Bfloat16Rows, queries: np.ndarray) -> float:
    """The error bound of any product of ``rows`` and ``queries`` (``|a.q - 1| <= 2``)."""
    query_rounding = float(augmented_bfloat16(queries, last=-1.0)[1].max())
    return float(constant_error(rows.row_rounding, query_rounding, rows.dim).max() + result_error(np.float32(2.0)))


@pytest.mark.parametrize("dim", [8, 384, 1024])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_floor_and_ceiling_hold_the_exact_nearest_similarity_within_two_errors(dim: int, seed: int) -> None:
    rows, queries = hard_cases(dim, seed)
    in_bfloat16 = Bfloat16Rows(rows, 50 * len(queries))  # several blocks
    floor, ceiling = in_bfloat16.nearest_similarity_bounds(queries)
    exact = exact_nearest(rows, queries)
    assert np.all(floor <= exact) and np.all(exact <= ceiling)
    assert np.all(ceiling - floor <= 2 * largest_error(in_bfloat16, queries))


@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_every_bfloat16_product_is_minus_the_distance_within_its_error(dim: int) -> None:
    rows, queries = hard_cases(dim, seed=2)
    in_bfloat16 = Bfloat16Rows(rows, 2**22)
    transposed, query_rounding = augmented_bfloat16(queries, last=-1.0)
    products = in_bfloat16._products_of(in_bfloat16.rows, transposed.T).float().numpy()
    minus_distance = rows.astype(np.float64) @ queries.astype(np.float64).T - 1.0
    error = constant_error(in_bfloat16.row_rounding, float(query_rounding.max()), dim)[:, None] + result_error(products)
    assert np.all(np.abs(minus_distance - products) <= error)


def test_the_rounding_of_each_vector_is_measured_and_never_exceeds_the_unit_roundoff() -> None:
    rows, _ = hard_cases(384, seed=5)
    augmented, rounding = augmented_bfloat16(rows, last=1.0)
    assert augmented.dtype == torch.bfloat16 and augmented.shape == (len(rows), 385)
    assert np.all(augmented[:, -1].float().numpy() == 1.0)
    measured = np.linalg.norm(rows.astype(np.float64) - augmented[:, :-1].float().numpy(), axis=1)
    assert np.all(rounding >= measured)
    assert np.all(rounding <= UNIT_ROUNDOFF * 1.001)
    # Typical vectors round by well under the worst case: the bound uses what was measured.
    assert np.median(rounding) < 0.6 * UNIT_ROUNDOFF


def test_ordered_bits_compare_like_the_numbers_against_a_negative_threshold() -> None:
    values = torch.tensor([-2.0, -0.5, -0.125, -0.1, -1e-30, -0.0, 0.0, 1e-3, 0.5], dtype=torch.bfloat16)
    for threshold in (-1.0, -0.125, -0.11, -1e-20):
        negative = bfloat16._negative_bfloat16_below(np.array([threshold], np.float32))
        assert negative.item() <= threshold < 0
        by_bits = bfloat16._ordered_bits(values) <= bfloat16._ordered_bits(negative)
        assert by_bits.tolist() == (values >= negative).tolist()


@pytest.mark.parametrize("through_candidates", [True, False])
@pytest.mark.parametrize("dim", [8, 384])
def test_nearest_similarity_is_exact_whether_through_candidates_or_float32(
    monkeypatch: pytest.MonkeyPatch, through_candidates: bool, dim: int
) -> None:
    monkeypatch.setattr(bfloat16, "CANDIDATES_MIN_PRODUCT", 0 if through_candidates else 2**40)
    rows, queries = hard_cases(dim, seed=3)
    # A small block: the rows go through the candidate search in several blocks.
    nearest = Bfloat16Rows(rows, 50 * len(queries)).nearest_similarity(np.arange(len(rows)), queries)
    assert np.allclose(nearest, exact_nearest(rows, queries), rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_distance", [0.0, 0.001, 0.02, 0.3])
@pytest.mark.parametrize("dense_share", [1.0, 0.0])
def test_pairs_within_a_distance_are_exactly_those_of_the_float64_product(
    monkeypatch: pytest.MonkeyPatch, max_distance: float, dense_share: float
) -> None:
    """Through candidates (every block sparse) or through whole exact blocks (every block dense)."""
    monkeypatch.setattr(bfloat16, "DENSE_CANDIDATES", dense_share)
    rows, queries = hard_cases(384, seed=5)
    pairs = np.concatenate([
        np.stack(found, axis=1) for found in Bfloat16Rows(rows, 50 * len(queries)).pairs_within(queries, max_distance)
    ])
    distance = 1.0 - rows.astype(np.float64) @ queries.astype(np.float64).T
    clear = np.abs(distance - max_distance) > 1e-6  # float32 cannot decide closer to the limit
    found = np.zeros(distance.shape, dtype=bool)
    found[pairs[:, 0], pairs[:, 1]] = True
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert np.array_equal(found[clear], (distance < max_distance)[clear])


def test_near_ties_that_bfloat16_cannot_tell_apart_are_settled_exactly() -> None:
    rng = np.random.default_rng(4)
    row = unit(rng.normal(size=(1, 384)))
    # Two queries whose similarities to the row differ by ~1e-4: the same value in bfloat16.
    away = unit(rng.normal(size=(1, 384)))
    queries = unit(np.concatenate([row + 0.30 * away, row + 0.3001 * away, -row]))
    rows = np.repeat(row, 2000, axis=0)  # enough rows for the candidate path
    nearest = Bfloat16Rows(rows, 2**22).nearest_similarity(np.arange(len(rows)), queries)
    assert np.allclose(nearest, exact_nearest(rows, queries), rtol=0, atol=1e-6)
    assert np.all(nearest == nearest[0])


def test_the_error_bound_grows_with_the_dimension_the_rounding_and_the_distance() -> None:
    half = np.float32(UNIT_ROUNDOFF / 2)
    assert constant_error(half, 0.0, 1024) > constant_error(half, 0.0, 8)
    assert constant_error(2 * half, 0.0, 384) > constant_error(half, 0.0, 384)
    assert constant_error(half, float(2 * half), 384) > constant_error(half, float(half), 384)
    assert result_error(np.float32(-0.5)) > result_error(np.float32(-0.1))
    # At a distance of 0.2 (the bound on a product of similarities: ~0.011): worst-case rounding,
    # and typical rounding (0.42 u per vector, measured).
    assert constant_error(2 * half, float(2 * half), 384) + result_error(np.float32(-0.2)) < 0.009
    assert constant_error(0.84 * half, float(0.84 * half), 384) + result_error(np.float32(-0.2)) < 0.0045


def test_native_bfloat16_is_a_plain_answer() -> None:
    assert isinstance(native_bfloat16(), bool)
