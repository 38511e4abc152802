"""CoCa's captioning loss: teacher forcing, the cross-entropy by hand, the objective's plumbing."""

import math

import pytest
import torch

from clipforge.data.shapes import ShapesWorld, captions_for
from clipforge.data.tokenizer import get_tokenizer
from clipforge.losses import Features
from clipforge.losses.coca import (
    CocaObjective,
    attentive_mask,
    next_token_loss,
    teacher_forcing,
    vocabulary,
)
from clipforge.models.decoder import CaptionDecoder, DecoderConfig
from tests.tolerance import reorder_bound

SOT, EOT = 49406, 49407


def test_next_token_loss_by_hand():
    ln2, ln3 = math.log(2), math.log(3)
    # Caption 0: softmax(0, ln 2, 0) = (1/4, 1/2, 1/4), target 1 -> ln 2; then uniform over
    # three, target 2 -> ln 3. Caption 1: target 0 of (1/4, 1/2, 1/4) -> ln 4, then a
    # padding position whose huge wrong logit must not count.
    logits = torch.tensor([[[0.0, ln2, 0.0], [0.0, 0.0, 0.0]], [[0.0, ln2, 0.0], [0.0, 50.0, 0.0]]])
    targets = torch.tensor([[1, 2], [0, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    want = (ln2 + ln3 + 2 * ln2) / 3
    # Three log-softmaxes of 3 terms (an exp and a log each) and a 3-term mean, of values
    # below ln 4, in float32; ln 2 itself is read rounded: one rounding more.
    tol = reorder_bound(3 * (3 + 2) + 3 + 1, 3 * math.log(4))
    assert float(next_token_loss(logits, targets, valid)) == pytest.approx(want, abs=tol)
    # Weights 1 and 3: caption 1's single token counts three times.
    got = float(next_token_loss(logits, targets, valid, torch.tensor([1.0, 3.0])))
    assert got == pytest.approx((ln2 + ln3 + 3 * 2 * ln2) / 5, abs=tol * 3)


def test_teacher_forcing_shifts_and_masks():
    tokens = torch.tensor([[SOT, 5, 6, EOT, 0, 0], [SOT, 7, EOT, 0, 0, 0]])
    inputs, targets, valid = teacher_forcing(tokens)
    # Cut after the longest caption's end token (position 3).
    assert inputs.tolist() == [[SOT, 5, 6], [SOT, 7, EOT]]
    assert targets.tolist() == [[5, 6, EOT], [7, EOT, 0]]
    assert valid.tolist() == [[True, True, True], [True, True, False]]


def _decoder(seed=0, vocab=6, **kw):
    torch.manual_seed(seed)
    cfg = DecoderConfig(image_dim=8, vocab=vocab, context_length=8, width=16, layers=2, heads=2,
                        **kw)  # fmt: skip
    ids = torch.tensor([5, 6, 7, 9, SOT, EOT][:vocab])
    return CaptionDecoder(cfg, ids).double()


def test_decoder_is_causal():
    dec = _decoder()
    memory = torch.randn(2, 4, 8, dtype=torch.float64)
    a = torch.tensor([[4, 0, 1, 2, 3], [4, 1, 1, 0, 5]])
    b = a.clone()
    b[:, 3:] = torch.tensor([[5, 5], [2, 3]])
    la, lb = dec(a, memory), dec(b, memory)
    # Positions before the change never see it: the same float64 operations on the same
    # values (the later keys are masked to an exact zero weight).
    assert torch.equal(la[:, :3], lb[:, :3])
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_unknown_ids_map_to_one_token():
    dec = _decoder()
    got = dec.to_decoder_ids(torch.tensor([SOT, 5, 9, 8, 0, EOT]))
    assert got.tolist() == [4, 0, 3, 6, 6, 5]
    assert dec.to_tokenizer_ids(got).tolist() == [SOT, 5, 9, -1, -1, EOT]


def test_the_objective_is_the_mean_over_captions_of_their_own_decoding():
    torch.manual_seed(1)
    obj = CocaObjective(_decoder(seed=2).cfg, torch.tensor([5, 6, 7, 9, SOT, EOT])).double()
    b, n, d = 3, 4, 8
    image_tokens = torch.randn(b, n, d, dtype=torch.float64)
    # Two captions of image 0, one of image 2, a hard negative (owner -1) and image 1's.
    ids = torch.tensor(
        [[SOT, 5, 6, EOT, 0], [SOT, 7, EOT, 0, 0], [SOT, 9, 9, 6, EOT], [SOT, 6, EOT, 0, 0],
         [SOT, 8, EOT, 0, 0]]
    )  # fmt: skip
    owner = torch.tensor([0, 0, 2, -1, 1])
    text = torch.nn.functional.normalize(torch.randn(5, d, dtype=torch.float64), dim=-1)
    f = Features(
        torch.zeros(b, d, dtype=torch.float64), text, torch.tensor(1.0), owner=owner,
        extra={"image_tokens": image_tokens, **obj.prepare(torch.zeros(b), ids)},
    )  # fmt: skip
    got = float(obj(f).detach())
    # By hand: each positive caption alone, the log-probability of each next token.
    dec = obj.decoder
    nll, count = 0.0, 0
    with torch.no_grad():
        for j in (0, 1, 2, 4):
            row = ids[j]
            end = int(row.argmax())
            index = dec.to_decoder_ids(row[: end + 1])
            logp = dec(index[None, :-1], image_tokens[owner[j]][None])[0].log_softmax(dim=-1)
            for t in range(end):
                nll -= float(logp[t, index[t + 1]])
                count += 1
    # float64 throughout; the batched and one-caption passes sum the same terms in other
    # orders: every logit is a chain of sums over at most 4 * width = 64 terms per layer
    # (MLP hidden), 2 layers plus embedding, norms and the head, so about 3 * 64 + 3 * 16
    # terms of magnitude below the largest |logit| summed (< 10 for these initial weights).
    tol = reorder_bound(3 * 64 + 3 * 16 + 2 * 6, 10.0 * count, torch.float64)
    assert got == pytest.approx(nll / count, abs=tol)
    assert 0.0 < obj.metrics()["coca/token_acc"] <= 1.0


def test_attentive_mask_keeps_the_most_similar_tokens():
    image_tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0]])
    mask = attentive_mask(image_tokens, text, keep=0.5, length=3)
    assert mask.shape == (1, 3, 4)
    assert mask[0, 0].tolist() == [True, False, True, False]
    assert bool((mask == mask[:, :1]).all())  # the same tokens at every position


def test_masked_decoder_ignores_hidden_tokens():
    dec = _decoder()
    memory = torch.randn(1, 4, 8, dtype=torch.float64)
    other = memory.clone()
    other[0, 1] = 100.0  # a hidden token changes
    mask = torch.tensor([True, False, True, True]).expand(1, 3, 4)
    index = torch.tensor([[4, 0, 1]])
    # A hidden token gets an exact zero weight, and the image norm is per token.
    assert torch.equal(dec(index, memory, mask=mask), dec(index, other, mask=mask))
    assert not torch.allclose(dec(index, memory), dec(index, other))


def test_the_shapes_vocabulary_covers_every_caption():
    known = set(vocabulary("shapes", 49408).tolist())
    tok = get_tokenizer(77)
    world = ShapesWorld(image_size=16, seed=3)
    for i in range(200):
        for caption in captions_for(world.scene(i), positions=True):
            assert set(tok(caption)[0].tolist()) - {0} <= known, caption
    assert len(known) < 120  # a closed vocabulary, far below CLIP's 49408
