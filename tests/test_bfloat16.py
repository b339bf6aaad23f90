"""bfloat16 products: a similarity floor that never exceeds the exact nearest similarity, and
exact nearest similarities through bfloat16 candidates, on random and adversarial unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freesel_backend.engine import bfloat16
from freesel_backend.engine.bfloat16 import Bfloat16Rows, native_bfloat16, similarity_error


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


@pytest.mark.parametrize("dim", [8, 384, 1024])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_floor_never_exceeds_the_exact_nearest_similarity_and_stays_within_two_errors(dim: int, seed: int) -> None:
    rows, queries = hard_cases(dim, seed)
    floor = Bfloat16Rows(rows, 50 * len(queries)).nearest_similarity_floor(queries)  # several blocks
    exact = exact_nearest(rows, queries)
    assert np.all(floor <= exact)
    assert np.all(exact - floor <= 2 * similarity_error(np.float32(1.01), dim))


@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_every_bfloat16_product_is_within_its_error_of_the_exact_one(dim: int) -> None:
    rows, queries = hard_cases(dim, seed=2)
    in_bfloat16 = Bfloat16Rows(rows, 2**22)
    products = in_bfloat16._products_of(in_bfloat16.rows, torch.from_numpy(queries).to(torch.bfloat16).T).float().numpy()
    exact = rows.astype(np.float64) @ queries.astype(np.float64).T
    assert np.all(np.abs(exact - products) <= similarity_error(products, dim))


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


def test_the_error_bound_grows_with_the_dimension_and_the_magnitude() -> None:
    assert similarity_error(np.float32(0.0), 1024) > similarity_error(np.float32(0.0), 8)
    assert similarity_error(np.float32(0.9), 384) > similarity_error(np.float32(0.1), 384)
    assert similarity_error(np.float32(1.0), 384) < 0.013


def test_native_bfloat16_is_a_plain_answer() -> None:
    assert isinstance(native_bfloat16(), bool)
