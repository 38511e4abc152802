"""``clipforge link``: record linkage over an embedding folder, as in CLIPPINGS.

"Linking Representations with Multimodal Contrastive Learning" (Arora et al., 2023) links
records that show the same thing (the same news article clipped from several papers) by
their *pooled* representation: the mean of the image and the text embedding,
L2-normalised, so that what one modality leaves ambiguous the other can settle. Records
are then matched to their nearest neighbours and clustered by a threshold on the cosine.

Here:

* :func:`vectors` gives one unit vector per row for ``mode`` ``image``, ``text`` or
  ``both`` (pooled; a row without a caption falls back to its image alone);
* :func:`neighbours` finds each row's ``k`` nearest other rows by exact inner product;
* :func:`clusters` joins every neighbour pair whose cosine is at least the threshold and
  returns the connected components (single linkage, cut at the threshold, restricted to
  the ``k`` nearest neighbours of each row);
* :func:`pair_scores` scores clusters against known groups by pairs: precision is the
  share of linked pairs that belong together, recall the share of pairs that belong
  together that were linked;
* :func:`tune` picks the threshold with the best F1 on a validation half of the groups
  and reports it on the other half, so the reported F1 never saw its own threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.index.store import Embeddings

MODES = ("image", "text", "both")
GRID = 200  # thresholds tried by tune(): steps of 1/200 of the neighbour cosines' span


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def vectors(emb: Embeddings, mode: str) -> np.ndarray:
    """One L2-normalised float32 row per record for ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ClipforgeError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode != "text" and emb.images is None:
        raise ClipforgeError(
            f"--mode {mode}: the embedding folder holds texts only; use --mode text"
        )
    if mode == "image":
        return _unit(emb.images.astype(np.float32))  # type: ignore[union-attr]
    txt = _unit(emb.texts.astype(np.float32))
    if mode == "text":
        if not np.any(txt):
            raise ClipforgeError("--mode text: no row of the embedding folder has a caption")
        return txt
    # Each modality normalised first, so that neither dominates the mean by its norm
    # (stored float16 rows are unit only to 2^-11); a zero caption row adds nothing.
    return _unit(_unit(emb.images.astype(np.float32)) + txt)  # type: ignore[union-attr]


def neighbours(x: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, cosines)``, each ``[N, k']`` with ``k' = min(k, N - 1)``: every row's nearest
    other rows by exact inner product, best first. Computed ``block`` rows at a time, so
    memory is ``block x N`` floats, not ``N x N``."""
    n = len(x)
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
    ids = np.empty((n, kk), np.int64)
    sims = np.empty((n, kk), np.float32)
    for lo in range(0, n, block):
        s = x[lo : lo + block] @ x.T
        rows = np.arange(len(s))
        s[rows, rows + lo] = -np.inf  # a record is not its own match
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(s, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        ids[lo : lo + len(s)] = np.take_along_axis(part, order, 1)
        sims[lo : lo + len(s)] = np.take_along_axis(ps, order, 1)
    return ids, sims


def clusters(ids: np.ndarray, sims: np.ndarray, threshold: float) -> np.ndarray:
    """A cluster label per row: the connected components of the graph joining each row to
    those of its neighbours at cosine >= ``threshold``. Labels are the smallest row of
    each component, so they depend only on the components."""
    n = len(ids)
    keep = sims >= threshold
    a = np.repeat(np.arange(n), ids.shape[1])[keep.ravel()]
    b = ids[keep]
    label = np.arange(n)
    while True:  # min-label propagation with pointer jumping: O(log N) rounds in practice
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def _pairs(counts: np.ndarray) -> int:
    return int((counts * (counts - 1) // 2).sum())


@dataclass(frozen=True)
class Scores:
    """Pairwise scores of a clustering against known groups."""

    precision: float
    recall: float
    f1: float
    linked_pairs: int  # pairs in one predicted cluster
    true_pairs: int  # pairs in one known group
    correct_pairs: int  # both

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


def pair_scores(labels: np.ndarray, truth: np.ndarray) -> Scores:
    """Pairwise precision, recall and F1 of cluster ``labels`` against ``truth`` groups.

    With ``n_ij`` the rows in cluster i and group j, the correct pairs are
    ``sum C(n_ij, 2)``, the linked pairs ``sum_i C(n_i., 2)`` and the true pairs
    ``sum_j C(n_.j, 2)``. No linked pair is precision 1 (nothing wrongly linked); no true
    pair is recall 1 (nothing missed)."""
    _, lab = np.unique(labels, return_inverse=True)
    _, tru = np.unique(truth, return_inverse=True)
    joint = np.unique(lab.astype(np.int64) * (tru.max() + 1) + tru, return_counts=True)[1]
    correct = _pairs(joint)
    linked = _pairs(np.bincount(lab))
    true = _pairs(np.bincount(tru))
    p = correct / linked if linked else 1.0
    r = correct / true if true else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return Scores(p, r, f1, linked, true, correct)


def truth_of(emb: Embeddings, column: str) -> np.ndarray:
    """The known group of each row, from the rows' ``column`` (a manifest column)."""
    missing = [r.get("item", j) for j, r in enumerate(emb.rows) if r.get(column) is None]
    if missing:
        raise ClipforgeError(
            f"--truth {column}: {len(missing)} rows have no {column!r} column "
            f"(first: item {missing[0]})"
        )
    return np.array([str(r[column]) for r in emb.rows])


def halves(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the validation and test halves: alternate groups, in sorted order,
    so that no group is split between the two."""
    groups, inv = np.unique(truth, return_inverse=True)
    val = (np.arange(len(groups)) % 2 == 0)[inv]
    return np.flatnonzero(val), np.flatnonzero(~val)


def link(x: np.ndarray, threshold: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, ids, sims)``: the clusters of ``x`` at ``threshold`` and the neighbours."""
    ids, sims = neighbours(x, k)
    return clusters(ids, sims, threshold), ids, sims


def tune(x: np.ndarray, truth: np.ndarray, k: int) -> dict[str, Any]:
    """The threshold with the best F1 on the validation half, and the scores it gets on the
    test half (each half clustered on its own; see :func:`halves`)."""
    val, test = halves(truth)
    if len(val) < 2 or len(test) < 2:
        raise ClipforgeError("--truth: too few groups to split into validation and test halves")
    vi, vs = neighbours(x[val], k)
    finite = vs[np.isfinite(vs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    grid = np.linspace(lo, hi, GRID + 1)
    f1s = np.array([pair_scores(clusters(vi, vs, float(t)), truth[val]).f1 for t in grid])
    # The middle of the thresholds that share the best F1, not one end of that plateau:
    # the test half's cosines scatter like the validation half's, on either side.
    best = np.flatnonzero(f1s == f1s.max())
    threshold = round(float(grid[best[len(best) // 2]]), 6)
    ti, ts = neighbours(x[test], k)
    scores = pair_scores(clusters(ti, ts, threshold), truth[test])
    return {
        "threshold": threshold,
        "validation_f1": round(float(f1s.max()), 4),
        "validation_rows": len(val),
        "test_rows": len(test),
        "test": scores.to_dict(),
    }


__all__ = [
    "MODES",
    "Scores",
    "clusters",
    "halves",
    "link",
    "neighbours",
    "pair_scores",
    "truth_of",
    "tune",
    "vectors",
]
