"""Cosine distances to the nearest query from bfloat16 matrix products, with bounded error.

On a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), a bfloat16 product runs about
5x faster than numpy's float32 one (this project's 2-core EPYC, 25,000 x 384 by 384 x 640: 877
vs 175 Gflop/s). Its values are not exact, but their error is bounded.

Each product computes ``a.q - 1``, minus the cosine distance, directly: rows carry one more
component, 1, and queries -1, so the result is rounded to bfloat16 relative to the distance
(0.1-0.5 where it matters) instead of the similarity (0.5-1): the bound is about 2.5x tighter.
For unit vectors ``a``, ``q`` whose bfloat16 copies are ``e_a``, ``e_q`` away from them (Euclidean
norms, measured once per vector: about 0.42 u on average and never above u, for u = 2**-8):

    |(a.q - 1) - result| <= e_a (1 + e_q) + e_q              rounding the inputs (Cauchy-Schwarz)
                          + (D + 1) 2**-24 ((1 + u)**2 + 1)  float32 accumulation of D + 1 products
                          + u |result| / (1 - u)             rounding the result to bfloat16

plus a slack for the float32 evaluations it is compared with (exact similarities summed in
another order, ``1 - similarity``). So a bfloat16 product gives a bound on the nearest distance
good enough to keep distance *upper bounds* (which is all the lazy draws need), and a short list
of candidates for the exact nearest similarity.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-8
# Rounding a value x to bfloat16 moves it by at most this times the rounded value's magnitude.
RESULT_ROUNDOFF = UNIT_ROUNDOFF / (1.0 - UNIT_ROUNDOFF)
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
SMALLEST_NORMAL = np.finfo(np.float32).tiny
# Unit rows are unit in float32 (norms off by a few float32 roundings), and the exact
# similarities the bounds are compared with are float32 sums in another order: a float32
# evaluation of a similarity of unit vectors differs from the real value by at most D 2**-24,
# twice that between two evaluations, plus this for the norms and for ``1 - x`` conversions.
NORM_SLACK = 1e-6
# Rows per block when measuring the rows' rounding: keeps the float32 temporaries in cache.
ROUNDING_BLOCK_ROWS = 2048


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively: elsewhere bfloat16 products are emulated
    and no faster than float32 ones."""
    supported = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in supported if check is not None)


def constant_error(row_rounding: np.ndarray, query_rounding: float, dim: int) -> np.ndarray:
    """The part of a product's error bound that does not depend on its value: the inputs'
    rounding (``row_rounding`` per row, ``query_rounding`` for every query), the float32
    accumulation, and the slack for the float32 evaluations compared with it."""
    inputs = row_rounding * (1.0 + query_rounding) + query_rounding
    accumulation = (dim + 1) * FLOAT32_UNIT_ROUNDOFF * ((1.0 + UNIT_ROUNDOFF) ** 2 + 1.0)
    evaluation = 2 * dim * FLOAT32_UNIT_ROUNDOFF + NORM_SLACK
    return (inputs + accumulation + evaluation).astype(np.float32)


def result_error(product: np.ndarray) -> np.ndarray:
    """The error bound's part from rounding ``product`` (``a.q - 1``, in bfloat16) itself."""
    return (RESULT_ROUNDOFF * np.abs(product)).astype(np.float32)


def row_blocks(n_rows: int, n_queries: int, block_elements: int) -> list[slice]:
    """Slices of ``n_rows`` rows, each with at most ``block_elements`` products against
    ``n_queries`` queries (at least one row): bounds the memory a product holds at once."""
    rows_per_block = max(1, block_elements // n_queries)
    return [slice(start, start + rows_per_block) for start in range(0, n_rows, rows_per_block)]


# Similarities from which an exact product goes through bfloat16 candidates: below it the
# candidate search costs more than it saves.
CANDIDATES_MIN_PRODUCT = 2**18
# Share of a block's pairs above which :meth:`Bfloat16Rows.pairs_within` multiplies the block
# exactly: gathering that many candidates one by one costs more than the whole product.
DENSE_CANDIDATES = 1 / 64


class Bfloat16Rows:
    """Unit rows, multiplied by unit queries at bfloat16 speed.

    Its products of many rows run in torch, the exact small ones too: numpy's BLAS threads would
    otherwise spin beside torch's on the same cores and slow the large products down (measured:
    up to 2x). Only :meth:`.NearestDistances.refresh_one`'s one-row product stays in numpy, where
    it costs half as much.
    """

    def __init__(self, rows: np.ndarray, block_elements: int) -> None:
        self.exact_rows = torch.from_numpy(rows)
        self.rows, self.row_rounding = augmented_bfloat16(rows, last=1.0)
        self.dim = rows.shape[1]
        self.block_elements = block_elements
        # One output buffer, grown as needed, for every product: a fresh result per product
        # costs about as much again in page faults as the product itself.
        self._products = torch.empty(0, dtype=torch.bfloat16)

    def nearest_similarity_bounds(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every row, values at most and at least its exact similarity to the nearest of
        ``queries`` (a floor and a ceiling)."""
        transposed, query_rounding = _transposed_queries(queries)
        largest, error = [], []
        for block in row_blocks(len(self.rows), len(queries), self.block_elements):
            block_largest = self._products_of(self.rows[block], transposed).amax(dim=1).float().numpy()
            largest.append(block_largest)
            error.append(
                constant_error(self.row_rounding[block], query_rounding, self.dim) + result_error(block_largest)
            )
        # The largest exact value is at most the largest of (product + its error), which is the
        # largest product's: ``x + error(x)`` grows with ``x``.
        nearest, nearest_error = np.concatenate(largest), np.concatenate(error)
        return 1.0 + (nearest - nearest_error), 1.0 + (nearest + nearest_error)

    def nearest_similarity(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """For each of ``rows`` (indices), its exact float32 similarity to the nearest of
        ``queries``."""
        if len(rows) * len(queries) < CANDIDATES_MIN_PRODUCT:
            exact = torch.index_select(self.exact_rows, 0, torch.from_numpy(rows)) @ torch.from_numpy(queries).T
            return exact.amax(dim=1).numpy()
        transposed, query_rounding = _transposed_queries(queries)
        return np.concatenate([
            self._nearest_from_candidates(rows[block], queries, transposed, query_rounding)
            for block in row_blocks(len(rows), len(queries), self.block_elements)
        ])

    def pairs_within(self, queries: np.ndarray, max_distance: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Block by block of rows, the (row, query) index pairs whose exact float32 cosine distance
        is below ``max_distance``: the bfloat16 product leaves the pairs that may be (within its
        error), whose similarities are then computed exactly. A block where candidates abound (many
        rows near many queries) is multiplied exactly as a whole instead."""
        transposed, query_rounding = _transposed_queries(queries)
        exact_queries = torch.from_numpy(queries)
        for block in row_blocks(len(self.rows), len(queries), self.block_elements):
            products = self._products_of(self.rows[block], transposed)
            constant = constant_error(self.row_rounding[block], query_rounding, self.dim)
            # Exact a.q - 1 > -max_distance for the pair to count.
            within = np.full(len(constant), -max_distance, np.float32)
            row, column = _at_least(products, _lowest_candidate(within, constant))
            if len(row) > products.numel() * DENSE_CANDIDATES:
                distance = 1.0 - (self.exact_rows[block] @ exact_queries.T).numpy()
                row, column = np.nonzero(distance < max_distance)
            else:
                exact_rows = self.exact_rows.numpy()[block]
                near = 1.0 - np.einsum("ij,ij->i", exact_rows[row], queries[column]) < max_distance
                row, column = row[near], column[near]
            yield row + block.start, column

    def _nearest_from_candidates(
        self, rows: np.ndarray, queries: np.ndarray, transposed: torch.Tensor, query_rounding: float
    ) -> np.ndarray:
        """The bfloat16 product leaves a few candidates per row (those that, within their error,
        may reach the row's largest value less its error), whose similarities are then computed
        exactly."""
        products = self._products_of(torch.index_select(self.rows, 0, torch.from_numpy(rows)), transposed)
        largest = products.amax(dim=1).float().numpy()
        constant = constant_error(self.row_rounding[rows], query_rounding, self.dim)
        row, column = _at_least(products, _lowest_candidate(largest - constant - result_error(largest), constant))
        exact = np.einsum("ij,ij->i", self.exact_rows.numpy()[rows[row]], queries[column])
        # The candidates come row by row, and every row has one (its largest).
        return np.maximum.reduceat(exact, np.flatnonzero(np.diff(row, prepend=-1)))

    def _products_of(self, rows: torch.Tensor, transposed_queries: torch.Tensor) -> torch.Tensor:
        needed = len(rows) * transposed_queries.shape[1]
        if needed > len(self._products):
            self._products = torch.empty(needed, dtype=torch.bfloat16)
        products = self._products[:needed].view(len(rows), transposed_queries.shape[1])
        return torch.matmul(rows, transposed_queries, out=products)


def augmented_bfloat16(vectors: np.ndarray, last: float) -> tuple[torch.Tensor, np.ndarray]:
    """(``vectors`` in bfloat16 with one more component, ``last``; each vector's distance to its
    bfloat16 copy). The distances enter an upper bound: they are raised by the most a float32
    sum of D squares can miss."""
    exact = torch.from_numpy(vectors)
    augmented = torch.empty(len(vectors), vectors.shape[1] + 1, dtype=torch.bfloat16)
    augmented[:, -1] = last
    rounding = np.empty(len(vectors), np.float32)
    for start in range(0, len(vectors), ROUNDING_BLOCK_ROWS):
        block = slice(start, start + ROUNDING_BLOCK_ROWS)
        augmented[block, :-1] = exact[block]
        rounding[block] = torch.linalg.vector_norm(exact[block] - augmented[block, :-1].float(), dim=1).numpy()
    return augmented, rounding * np.float32(1.0 + vectors.shape[1] * FLOAT32_UNIT_ROUNDOFF)


def _transposed_queries(queries: np.ndarray) -> tuple[torch.Tensor, float]:
    """(D + 1, Q) the queries in bfloat16 with a last component -1, converted once for every block
    of rows; and the largest distance from a query to its bfloat16 copy."""
    augmented, rounding = augmented_bfloat16(queries, last=-1.0)
    return augmented.T, float(rounding.max(initial=0.0))


def _at_least(products: torch.Tensor, lowest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the ``products`` that are at least their row's ``lowest`` (a product may
    exceed it by its rounding: compared against the next bfloat16 below), row by row."""
    is_candidate = np.less_equal(_ordered_bits(products), _ordered_bits(_negative_bfloat16_below(lowest))[:, None])
    # numpy's flatnonzero finds the few candidates ~3x faster than torch.nonzero (measured).
    return np.divmod(np.flatnonzero(is_candidate), products.shape[1])


def _lowest_candidate(target: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """The least product ``x`` whose largest possible exact value, ``x + constant + result
    error(x)``, reaches ``target``: that function of ``x`` increases, so this is where it equals
    ``target``, on the side of zero where that lies."""
    reach = target - constant
    return np.where(reach <= 0, reach / (1.0 - RESULT_ROUNDOFF), reach / (1.0 + RESULT_ROUNDOFF)).astype(np.float32)


def _negative_bfloat16_below(values: np.ndarray) -> torch.Tensor:
    """Negative bfloat16 numbers at most ``values``: lowered by one bfloat16 step before rounding
    to the nearest, and kept below zero (products ``a.q - 1`` are candidates from below zero:
    their thresholds always are; one that was not would only let more candidates through)."""
    lowered = np.minimum(values - np.abs(values) * 2.0**-7, -SMALLEST_NORMAL)
    return torch.from_numpy(lowered.astype(np.float32)).to(torch.bfloat16)


def _ordered_bits(negative_side: torch.Tensor) -> np.ndarray:
    """The bits of bfloat16 numbers as unsigned integers: for a negative threshold ``t``, a
    number ``x`` is at least ``t`` exactly where its bits are at most ``t``'s (sign and
    magnitude: zero and positive numbers lie below every negative one, and negative ones in order
    of magnitude). One integer comparison in numpy costs a quarter of torch's subtraction and sign
    test (measured)."""
    return negative_side.view(torch.int16).numpy().view(np.uint16)
