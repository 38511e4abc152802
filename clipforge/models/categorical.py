"""An encoder for a categorical modality (a metadata field, a label): one-hot -> embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CategoricalEncoder(nn.Module):
    """``k`` categories -> L2-normalised ``embed_dim`` vectors through a small MLP.

    An embedding table is a linear map of the one-hot vector; the hidden layer lets the
    modality be a third tower like the others (Symile's third view in the shapes world).
    """

    def __init__(self, categories: int, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.categories = categories
        self.embed = nn.Embedding(categories, width)
        self.proj = nn.Sequential(nn.GELU(), nn.Linear(width, embed_dim))

    def forward(self, index: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.proj(self.embed(index.long()))
        return F.normalize(x, dim=-1) if normalize else x
