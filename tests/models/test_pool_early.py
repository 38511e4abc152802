"""A tower that pools one token runs its last block for that token alone: the embeddings
and every gradient must equal the full pass, in every setting that takes that path."""

import pytest
import torch

from clipforge.models import create_model
from clipforge.models.lora import add_lora
from tests.tolerance import CANCEL, reorder_bound, tower_terms

# One block of width 32 (MLP 128, 16-wide heads) over at most 24 tokens, compared in
# float64: the two paths sum the same terms in other orders (other matmul shapes, an
# explicit causal mask instead of is_causal), so they differ by a reordering of the
# terms behind one output, with LayerNorm's allowance for cancellation.
TERMS = tower_terms(16 * 3, 32, 1, 24, 4 * 32, 16)


def _tol(ref: torch.Tensor) -> float:
    return reorder_bound(TERMS, CANCEL * (1 + float(ref.detach().abs().max())), torch.float64)


def _tokens() -> torch.Tensor:
    # Captions of different lengths: the shorter ones' rows see padding after their end
    # token, which the lone causal query must not attend to.
    t = torch.zeros(3, 24, dtype=torch.long)
    for i, n in enumerate((3, 9, 6)):
        t[i, 0], t[i, 1 : n - 1], t[i, n - 1] = 49406, torch.arange(400, 400 + n - 2), 49407
    return t


def _model(micro_args: dict, **over: object) -> torch.nn.Module:
    torch.manual_seed(0)
    args = {**micro_args, "vision.pool": "cls", **over}
    return create_model("tiny", args).double()


def _compare(tower: torch.nn.Module, inputs: torch.Tensor) -> None:
    def grads(out: torch.Tensor) -> list[torch.Tensor]:
        tower.zero_grad()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return [p.grad.clone() for p in tower.parameters() if p.grad is not None]

    early = tower(inputs)
    full = tower(inputs, with_tokens=True)[0]
    assert torch.allclose(early, full, rtol=0, atol=_tol(full))
    g_early, g_full = grads(tower(inputs)), grads(tower(inputs, with_tokens=True)[0])
    assert len(g_early) == len(g_full) == sum(p.requires_grad for p in tower.parameters())
    for a, b in zip(g_early, g_full, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=_tol(b))


@pytest.mark.parametrize("causal", [True, False])
def test_text_tower_pooled_early_equals_the_full_pass(micro_args, causal):
    over = {} if causal else {"text.causal": False, "text.pool": "last"}
    m = _model(micro_args, **over).train()
    assert m.text.transformer.can_pool_early()
    _compare(m.text, _tokens())


def test_class_token_tower_pooled_early_equals_the_full_pass(micro_args):
    m = _model(micro_args).train()
    calls = []
    attn = m.visual.transformer.blocks[-1].attn
    real = attn.forward_at
    attn.forward_at = lambda *a, **k: calls.append(1) or real(*a, **k)  # type: ignore[method-assign]
    _compare(m.visual, torch.randn(3, 3, 16, 16, dtype=torch.float64))
    assert calls, "class-token pooling did not take the early path"
    # Mean pooling reads every token: it must not.
    calls.clear()
    mean = _model(micro_args, **{"vision.pool": "mean"})
    attn = mean.visual.transformer.blocks[-1].attn
    attn.forward_at = lambda *a, **k: calls.append(1)  # type: ignore[method-assign]
    mean.visual(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert not calls


def test_the_early_path_keeps_lora_and_gradient_checkpointing(micro_args):
    m = _model(micro_args)
    add_lora(m, 4, 8.0, ("qkv", "proj", "fc1", "fc2"))
    # LoRA starts at zero: give its up-projections values, so a skipped adapter shows.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.1)
    m.visual.transformer.checkpointing = m.text.transformer.checkpointing = True
    m.train()
    _compare(m.visual, torch.randn(3, 3, 16, 16, dtype=torch.float64))
    _compare(m.text, _tokens())


def test_the_early_path_is_not_taken_where_the_last_block_must_see_every_token(micro_args):
    assert not _model(micro_args, **{"text.pos": "rope"}).text.transformer.can_pool_early()
    # A deliberately wrong early path (the lone query ignoring the causal mask) is caught
    # by the comparison: the short captions' rows then read their padding.
    m = _model(micro_args).eval()
    attn = m.text.transformer.blocks[-1].attn
    real = attn.forward_at
    attn.forward_at = lambda x, at, causal=False: real(x, at, False)  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        _compare(m.text, _tokens())
