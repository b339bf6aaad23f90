"""Bounds on the similarity to the nearest query from bfloat16 matrix products.

On a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), a bfloat16 product runs about
5x faster than numpy's float32 one (this project's 2-core EPYC, 25,000 x 384 by 384 x 640: 877
vs 175 Gflop/s). Its values are not exact, but their error is bounded. For unit vectors ``a``,
``q`` rounded to bfloat16 (relative error at most ``u = 2**-8`` per component):

    |a.q - result| <= u (2 + u)                  rounding the inputs (Cauchy-Schwarz)
                    + D 2**-24 (1 + u)**2        float32 accumulation of D products
                    + u |result| / (1 - u)       rounding the result to bfloat16

So a bfloat16 product gives a bound on the nearest similarity good enough to lower distance
*upper bounds* (which is all the lazy draws need), and a short list of candidates for the exact
nearest one.
"""

from __future__ import annotations

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-8
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# Unit rows are unit in float32: their norms may differ from 1 by a few float32 roundings.
NORM_SLACK = 1e-6


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively: elsewhere bfloat16 products are emulated
    and no faster than float32 ones."""
    supported = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in supported if check is not None)


def similarity_error(similarity: np.ndarray, dim: int) -> np.ndarray:
    """The largest possible difference between the exact similarity of two unit vectors of
    ``dim`` components and ``similarity``, their bfloat16 product."""
    inputs = UNIT_ROUNDOFF * (2.0 + UNIT_ROUNDOFF) + NORM_SLACK
    accumulation = dim * FLOAT32_UNIT_ROUNDOFF * (1.0 + UNIT_ROUNDOFF) ** 2
    result = UNIT_ROUNDOFF * np.abs(similarity) / (1.0 - UNIT_ROUNDOFF)
    return (inputs + accumulation + result).astype(np.float32)


def row_blocks(n_rows: int, n_queries: int, block_elements: int) -> list[slice]:
    """Slices of ``n_rows`` rows, each with at most ``block_elements`` products against
    ``n_queries`` queries (at least one row): bounds the memory a product holds at once."""
    rows_per_block = max(1, block_elements // n_queries)
    return [slice(start, start + rows_per_block) for start in range(0, n_rows, rows_per_block)]


# Similarities from which an exact product goes through bfloat16 candidates: below it the
# candidate search costs more than it saves.
CANDIDATES_MIN_PRODUCT = 2**18


class Bfloat16Rows:
    """Unit rows, multiplied by unit queries at bfloat16 speed.

    Its products of many rows run in torch, the exact small ones too: numpy's BLAS threads would
    otherwise spin beside torch's on the same cores and slow the large products down (measured:
    up to 2x). Only :meth:`.NearestDistances.refresh_one`'s one-row product stays in numpy, where
    it costs half as much.
    """

    def __init__(self, rows: np.ndarray, block_elements: int) -> None:
        self.exact_rows = torch.from_numpy(rows)
        self.rows = self.exact_rows.to(torch.bfloat16)
        self.dim = rows.shape[1]
        self.block_elements = block_elements
        # Products of unit vectors rounded to bfloat16 stay within 1.01 in magnitude.
        self.largest_error = similarity_error(np.float32(1.01), self.dim)
        # One output buffer, grown as needed, for every product: a fresh 30 MB result per
        # product costs as much again in page faults as the product itself.
        self._products = torch.empty(0, dtype=torch.bfloat16)

    def nearest_similarity_floor(self, queries: np.ndarray) -> np.ndarray:
        """For every row, a value at most its exact similarity to the nearest of ``queries``."""
        transposed = _transposed_bfloat16(queries)
        largest = np.concatenate([
            self._products_of(self.rows[block], transposed).amax(dim=1).float().numpy()
            for block in row_blocks(len(self.rows), len(queries), self.block_elements)
        ])
        return largest - similarity_error(largest, self.dim)

    def nearest_similarity(self, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """For each of ``rows`` (indices), its exact float32 similarity to the nearest of
        ``queries``."""
        if len(rows) * len(queries) < CANDIDATES_MIN_PRODUCT:
            exact = self.exact_rows[torch.from_numpy(rows)] @ torch.from_numpy(queries).T
            return exact.amax(dim=1).numpy()
        transposed = _transposed_bfloat16(queries)
        return np.concatenate([
            self._nearest_from_candidates(rows[block], queries, transposed)
            for block in row_blocks(len(rows), len(queries), self.block_elements)
        ])

    def _nearest_from_candidates(self, rows: np.ndarray, queries: np.ndarray, transposed: torch.Tensor) -> np.ndarray:
        """The bfloat16 product leaves a few candidates per row (those within its error of the
        row's largest value), whose similarities are then computed exactly."""
        products = self._products_of(self.rows[torch.from_numpy(rows)], transposed)
        largest = products.amax(dim=1).float().numpy()
        lowest_candidate = largest - similarity_error(largest, self.dim) - self.largest_error
        # Compared in bfloat16, where a difference keeps the sign of the exact one: the bound is
        # lowered by one bfloat16 step first, so that rounding it cannot exclude a candidate.
        lowest_candidate -= np.abs(lowest_candidate) * 2.0**-7
        torch.sub(products, torch.from_numpy(lowest_candidate).to(torch.bfloat16)[:, None], out=products)
        row, column = torch.nonzero(products.view(torch.int16) >= 0, as_tuple=True)
        row, column = row.numpy(), column.numpy()
        exact = np.einsum("ij,ij->i", self.exact_rows.numpy()[rows[row]], queries[column])
        # nonzero lists candidates row by row, and every row has one (its largest).
        return np.maximum.reduceat(exact, np.flatnonzero(np.diff(row, prepend=-1)))

    def _products_of(self, rows: torch.Tensor, transposed_queries: torch.Tensor) -> torch.Tensor:
        needed = len(rows) * transposed_queries.shape[1]
        if needed > len(self._products):
            self._products = torch.empty(needed, dtype=torch.bfloat16)
        products = self._products[:needed].view(len(rows), transposed_queries.shape[1])
        return torch.matmul(rows, transposed_queries, out=products)


def _transposed_bfloat16(queries: np.ndarray) -> torch.Tensor:
    """(D, Q) the queries in bfloat16, converted once for every block of rows."""
    return torch.from_numpy(queries).to(torch.bfloat16).T
