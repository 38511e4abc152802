"""Numerical tolerances derived from floating-point rounding, not from what one run gave.

A sum of ``n`` floating-point terms, computed in any order, lies within
``(n - 1) * u * sum|terms|`` of the exact sum, ``u = eps / 2`` being the unit roundoff
(recursive summation; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§4.2). Two evaluations of one expression that sum in different orders (another BLAS
blocking, another thread count, a gather across processes, DDP's all-reduce) therefore
differ by at most ``n * eps * sum|terms|``. A chain of such sums adds its lengths, so
``n`` is the number of terms behind one output entry, summed over the chain.

Counting every other rounding on the chain (a product, an exp, a division) as one more
term, the same bound covers one evaluation against the exact value (a float32 loss
against a float64 loop on the same inputs) with a factor 2 to spare; an input that the
reference reads exactly but float32 rounds (0.6, log 3) is one rounding more.
"""

from __future__ import annotations

import math

import torch


def reorder_bound(n_terms: float, magnitude: float, dtype: torch.dtype = torch.float32) -> float:
    """Largest difference between two evaluation orders of a sum of ``n_terms`` terms whose
    absolute values add up to ``magnitude``."""
    return n_terms * torch.finfo(dtype).eps * magnitude


def count_mean_bound(value: float, dtype: torch.dtype = torch.float32) -> float:
    """Error of a fraction ``k / n`` (a recall, an accuracy, a mean of small integers)
    computed as a ``dtype`` mean: the count is exact (below 2^24 in float32) and the
    division rounds once, or twice by way of ``1 / n``: at most ``eps * value``."""
    return reorder_bound(1, abs(value), dtype)


def printed_bound(decimals: int) -> float:
    """Half a unit in the last place of a constant written with ``decimals`` decimals."""
    return 0.5 * 10.0**-decimals


def norm_bound(dim: int, dtype: torch.dtype = torch.float32) -> float:
    """``|x| - 1`` for a row L2-normalised in ``dtype`` and measured again: each pass sums
    ``dim`` squares, takes a square root and (normalising) divides."""
    return reorder_bound(dim + 2, 1.0, dtype)


def softmax_loss_bound(
    dim: int,
    columns: int,
    rows: int,
    scale: float,
    *,
    weighted: bool = False,
    decimal_inputs: bool = False,
    extra_terms: int = 0,
    dtype: torch.dtype = torch.float32,
) -> float:
    """A softmax cross-entropy over logits ``s x.y`` of unit rows (CLIP, InfoLOOB, CWCL,
    Symile...) in ``dtype`` against its exact value on the same inputs, or two evaluations
    of it that sum in different orders.

    The roundings behind the loss, counted along the chain: a logit is ``dim`` products
    and the scale, and enters twice (its log-sum-exp and the positive): ``2 (dim + 1)``;
    a log-sum-exp takes ``columns`` exponentials of logit - max, sums them, takes the log
    and adds the max back: ``columns + 4``; the mean over ``rows`` and the average of the
    two directions: ``rows + 2``, and ``rows + 1`` more when the mean is weighted (the
    weights are summed too). ``extra_terms``: roundings a particular loss adds (soft
    targets, several positives). Every term is at most ``max(1, 2s + log columns)``:
    ``|logit| <= s`` by Cauchy-Schwarz (``scale`` also takes any bias or log-weight added
    to the logits), ``|logit - max| <= 2s``, each row's loss ``<= 2s + log columns``, and
    the exponentials (each ``<= 1``) leave an absolute error of at most their count in the
    log. ``decimal_inputs``: the reference reads inputs such as 0.6 exactly that
    ``dtype`` rounds, by ``u |x|`` per factor: one more rounding per product.
    """
    dim += int(decimal_inputs)
    n = 2 * (dim + 1) + columns + 4 + rows + 2 + (rows + 1) * int(weighted) + extra_terms
    return reorder_bound(n, max(1.0, 2 * scale + math.log(columns)), dtype)


def sigmoid_loss_bound(
    dim: int,
    columns: int,
    rows: int,
    scale: float,
    bias: float,
    loss: float,
    *,
    decimal_inputs: bool = False,
    dtype: torch.dtype = torch.float32,
) -> float:
    """SigLIP's loss ``1/B sum_ij softplus(-z_ij (s x_i.y_j + b))`` in ``dtype`` against
    its exact value (or two evaluation orders).

    A logit is ``dim`` products, the scale and the bias, and its softplus a few roundings
    more (exp, log1p, the sign): ``dim + 6`` at ``|logit| + log 2 <= s + |b| + 1``. Each
    row sums ``columns`` softplus values, so the logits' errors reach the loss ``columns``
    times over (``d loss / d logit <= 1 / B`` for each of ``B x columns`` logits); the
    row sums and the mean over ``rows`` add ``columns + rows + 1`` terms whose absolute
    values add up to the loss.
    """
    dim += int(decimal_inputs)
    return reorder_bound(columns * (dim + 6), scale + abs(bias) + 1, dtype) + reorder_bound(
        columns + rows + 1, loss, dtype
    )


# sum|terms| next to a model's output: LayerNorm subtracts the mean and divides by the
# spread, so terms can cancel; as in tests/train/test_distributed.py, allow them to be 10^3
# times the output's scale.
CANCEL = 1_000


def tower_terms(inputs: int, width: int, layers: int, tokens: int, mlp: int, head: int) -> int:
    """Terms behind one output of a transformer tower, summed along its chain (as in
    the module docstring): the input embedding (``inputs`` products); a LayerNorm is a mean
    and a variance over ``width`` and ~4 roundings; attention is q/k/v (``width``), the
    scores (``head``), a softmax and the mix over ``tokens``, the output projection; the
    MLP ``width``, an activation and ``mlp``; a final LayerNorm, an attention pool (SigLIP's;
    counted for every tower) and the projection."""
    ln = 2 * width + 4
    attn = width + head + 2 * tokens + 4 + width
    block = 2 * ln + attn + width + 3 + mlp + 2
    return inputs + ln + layers * block + ln + attn + width


def clip_terms(image: int, text: int, embed: int) -> int:
    """Behind a logit: both towers, normalising both features (``embed + 2`` each), their
    dot and the scale (and a bias)."""
    return image + text + 2 * (embed + 2) + embed + 2
