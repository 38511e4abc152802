"""Re-ranking search hits with a few-shot adapter (``clipforge search --adapter``).

An adapter from :mod:`clipforge.adapt` classifies image features into the classes it was
fitted on. Search keeps the collection's features in its index, so re-ranking needs no
re-embedding: the top ``candidates`` hits of the plain search come back with their stored
image features, the adapter scores them, and they are ordered by its probability of the
query's class (then by their cosine, for ties). The query's class is

* for a text query, the class whose name is the query (case and spaces aside) or, failing
  that, the class whose name the text tower puts nearest the query;
* for an image query, the class the adapter gives the query image.

Hits below the candidates keep the plain order; only their top ``k`` are returned.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clipforge.errors import ClipforgeError

if TYPE_CHECKING:
    from clipforge.adapt import Adapter
    from clipforge.index.search import Hit

CANDIDATES = 100  # hits re-ranked by default: past k, few enough to score at once


def load_adapter(path: str | os.PathLike[str], embedder: Any) -> Adapter:
    """The adapter at ``path``, checked against the index's model (one-line errors)."""
    from clipforge.adapt import load

    adapter = load(path, embedder)
    if not adapter.info.get("classnames"):
        raise ClipforgeError(f"{path}: the adapter names no classes; it cannot re-rank")
    return adapter


def text_class(adapter: Adapter, embedder: Any, query: str) -> int:
    """The adapter class a text query names (see the module docstring)."""
    names = list(adapter.info["classnames"])
    key = " ".join(query.lower().split())
    for i, name in enumerate(names):
        if " ".join(str(name).lower().split()) == key:
            return i
    q = embedder.text_batch([query]).float()
    c = embedder.text_batch([str(n) for n in names]).float()
    return int((q @ c.T).argmax())


def image_class(adapter: Adapter, feature: np.ndarray) -> int:
    """The adapter class of an image query's feature ``[1, D]``."""
    return int(adapter.logits(torch.from_numpy(np.asarray(feature, np.float32))).argmax())


def rerank(hits: list[Hit], vectors: np.ndarray, adapter: Adapter, cls: int) -> list[Hit]:
    """``hits`` (with their image features ``vectors``, ``[len(hits), D]``) ordered by the
    adapter's probability of class ``cls``, best first, and ranked again; each hit keeps
    its cosine ``score`` and gains ``adapter_p``."""
    if not hits:
        return []
    x = torch.nn.functional.normalize(torch.from_numpy(np.asarray(vectors, np.float32)), dim=-1)
    p = torch.softmax(adapter.logits(x).float(), dim=1)[:, cls].tolist()
    order = sorted(range(len(hits)), key=lambda j: (-p[j], -hits[j].score, hits[j].id))
    return [replace(hits[j], rank=r, adapter_p=p[j]) for r, j in enumerate(order, 1)]


__all__ = ["CANDIDATES", "image_class", "load_adapter", "rerank", "text_class"]
