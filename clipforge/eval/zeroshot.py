"""Zero-shot classification with prompt templates and template ensembling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from clipforge.data.tokenizer import Tokenizer
from clipforge.models import CLIP


@torch.no_grad()
def classifier_weights(
    model: CLIP,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    batch_size: int = 256,
) -> torch.Tensor:
    """``[C, D]`` class embeddings: mean of the normalised template embeddings, renormalised.

    A template is a format string with ``{}`` for the class name, or a function of it.
    """
    device = next(model.parameters()).device
    weights = []
    for name in classnames:
        texts = [t(name) if callable(t) else t.format(name) for t in templates]
        emb = []
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(texts[i : i + batch_size]).to(device)
            emb.append(model.encode_text(tok, normalize=True).float())
        weights.append(F.normalize(torch.cat(emb).mean(dim=0), dim=-1))
    return torch.stack(weights)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top-1, top-5 accuracy and mean per-class recall of ``logits [N, C]``.

    Ties are broken towards the lower class index (``topk`` order), as in common practice.
    """
    n, c = logits.shape
    k = min(5, c)
    top = logits.topk(k, dim=1).indices
    top1 = (top[:, 0] == labels).float()
    top5 = (top == labels[:, None]).any(dim=1).float()
    recalls = []
    for cls in labels.unique():
        m = labels == cls
        recalls.append(top1[m].mean())
    return {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "mean_per_class_recall": float(torch.stack(recalls).mean()),
    }


@torch.no_grad()
def zero_shot(
    image_features: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor,
) -> dict[str, float]:
    """Classify normalised image features by cosine similarity to the class embeddings."""
    logits = image_features.float() @ class_weights.T
    return classification_metrics(logits, labels)
