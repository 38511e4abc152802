"""Greedy and beam decoding: beam 1 is greedy, and beam search finds what greedy misses."""

import math

import torch

from clipforge.models.decoder import CaptionDecoder, DecoderConfig
from clipforge.models.generate import beam, greedy

SOT, EOT = 49406, 49407


def test_beam_one_is_greedy_exactly():
    torch.manual_seed(0)
    cfg = DecoderConfig(image_dim=8, vocab=7, context_length=10, width=16, layers=2, heads=2)
    dec = CaptionDecoder(cfg, torch.tensor([5, 6, 7, 9, 11, SOT, EOT])).eval()
    # Unit-variance weights everywhere (not the small initial ones) make the random
    # decoder's choices vary between images and steps.
    with torch.no_grad():
        for p in dec.parameters():
            p.copy_(torch.randn_like(p))
    tokens = torch.randn(6, 4, 8)
    g = greedy(dec, tokens, SOT, EOT, max_len=8)
    assert beam(dec, tokens, SOT, EOT, beams=1, max_len=8) == g
    assert len({tuple(x) for x in g}) > 1  # not one caption for every image
    assert all(set(x) <= {5, 6, 7, 9, 11} for x in g)  # never start, end or unknown


class TableDecoder(CaptionDecoder):
    """Next-token probabilities that depend only on the last token: a hand-made chain.

    Decoder indices: 0 = A, 1 = B, 2 = C, 3 = start, 4 = end. From start: A 0.6, B 0.4.
    After A: C 0.5, end 0.5 / 2 (the rest on A again, 0.25). After B: end 0.9, C 0.1. After C:
    end 1. Greedy takes A (0.6) then C (0.5) then end: 0.3. The best caption is B, end:
    0.36, which a beam of 2 keeps.
    """

    TABLE = {3: [0.6, 0.4, 0, 0, 0], 0: [0.25, 0, 0.5, 0, 0.25], 1: [0, 0, 0.1, 0, 0.9],
             2: [0, 0, 0, 0, 1.0]}  # fmt: skip

    def forward(self, index, image_tokens=None, *, memory=None, mask=None):
        probs = torch.tensor([self.TABLE[int(i)] for i in index[:, -1]])
        logits = torch.full((index.shape[0], index.shape[1], 6), -math.inf)
        logits[:, -1, :5] = probs.log()
        return logits


def test_beam_search_finds_the_likelier_caption():
    cfg = DecoderConfig(image_dim=2, vocab=5, context_length=8, width=4, layers=0, heads=1)
    dec = TableDecoder(cfg, torch.tensor([100, 200, 300, SOT, EOT]))
    tokens = torch.zeros(1, 1, 2)
    assert greedy(dec, tokens, SOT, EOT) == [[100, 300]]  # A C: 0.6 * 0.5 * 1 = 0.3
    assert beam(dec, tokens, SOT, EOT, beams=2) == [[200]]  # B: 0.4 * 0.9 = 0.36
    # max_len cuts a caption that has not ended: room for one token leaves A alone.
    assert greedy(dec, tokens, SOT, EOT, max_len=1) == [[100]]
    assert beam(dec, tokens, SOT, EOT, beams=1, max_len=1) == [[100]]
