"""Numerical tolerances derived from floating-point rounding, not from what one run gave.

A sum of ``n`` floating-point terms, computed in any order, lies within
``(n - 1) * u * sum|terms|`` of the exact sum, ``u = eps / 2`` being the unit roundoff
(recursive summation; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§4.2). Two evaluations of one expression that sum in different orders (another BLAS
blocking, another thread count, a gather across processes, DDP's all-reduce) therefore
differ by at most ``n * eps * sum|terms|``. A chain of such sums adds its lengths, so
``n`` is the number of terms behind one output entry, summed over the chain.
"""

from __future__ import annotations

import torch


def reorder_bound(n_terms: int, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """Largest difference between two evaluation orders of a sum of ``n_terms`` terms whose
    absolute values add up to ``magnitude``."""
    return n_terms * torch.finfo(dtype).eps * magnitude
