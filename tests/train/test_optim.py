import pytest
import torch

from clipforge.models import create_model
from clipforge.train.optim import build_optimizer, cosine_lr, param_groups


def test_cosine_schedule_values():
    assert cosine_lr(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, 0.1) == pytest.approx(1.0)
    # halfway through the decay: 0.1 + 0.9 * 0.5
    assert cosine_lr(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert cosine_lr(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_weight_decay_exclusions(micro_args):
    m = create_model("tiny", {**micro_args, "vision.stem": "patch"}, init_logit_bias=-10.0)
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    dn = {names[id(p)] for p in decay["params"]}
    nn_ = {names[id(p)] for p in no_decay["params"]}
    assert "visual.transformer.blocks.0.attn.qkv.weight" in dn
    assert "visual.patch_embed.weight" in dn
    for n in (
        "logit_scale",
        "logit_bias",
        "text.token_embed.weight",
        "text.pos_embed",
        "visual.class_embedding",
        "visual.pos_embed",
        "visual.norm_post.weight",
        "text.transformer.blocks.0.mlp.fc1.bias",
    ):
        assert n in nn_, n
    assert len(dn) + len(nn_) == len(list(m.parameters()))
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # Conv stem: convolution kernels decay, BatchNorm gains and biases do not.
    conv = create_model("tiny", {**micro_args, "vision.stem": "conv"})
    d2, n2 = param_groups(conv, 0.05)
    names2 = {id(p): n for n, p in conv.named_parameters()}
    assert "visual.patch_embed.net.0.weight" in {names2[id(p)] for p in d2["params"]}
    assert "visual.patch_embed.net.1.weight" in {names2[id(p)] for p in n2["params"]}
    opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.98), 1e-6)
    assert isinstance(opt, torch.optim.AdamW)
