"""The global batch the parallel and accumulated-step tests split: 12 samples."""

import torch

from clipforge.data.batches import Batch

B = 12


def mixed_batch(hard: bool = True) -> Batch:
    """A global batch of ``B`` samples; with ``hard``: two captions for rows 1 and 6, hard
    negatives of rows 0, 3, 5 and 9 at the end (so texts split in order are a permutation
    of the batch's) and sample weights."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 16, 16, generator=g)
    if not hard:
        tokens = torch.randint(1, 400, (B, 24), generator=g)
        return Batch(images, tokens, torch.ones(B), [""] * B, B)
    owner = [0, 1, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, -1, -1, -1, -1]
    text_row = [0, 1, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11, 0, 3, 5, 9]
    tokens = torch.randint(1, 400, (len(owner), 24), generator=g)
    weights = torch.rand(B, generator=g) + 0.5
    return Batch(
        images, tokens, weights, [""] * len(owner), B, {},
        torch.tensor(owner), torch.tensor(text_row),
    )  # fmt: skip
