"""Parity with the peers: OpenCLIP, OpenAI's layout, Hugging Face CLIP and SigLIP.

Each peer model is built from its own pip package with random weights (every parameter
perturbed, so LayerNorm weights and zero-initialised biases are not ones and zeros),
saved in its native format, loaded into clipforge and compared on the same inputs:
image features, text features and logits, computed in float64 (on copies of the models)
to a tolerance derived from rounding (:data:`TERMS`). Exports go the other way.
Helpers without the ``test_`` prefix are shared with the other test_convert* files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from clipforge.errors import ClipforgeError
from clipforge.models import CLIP, ModelConfig, TextConfig, VisionConfig, load
from clipforge.models.convert import read_checkpoint, save_checkpoint
from tests.spiece import add_spiece
from tests.tolerance import CANCEL, clip_terms, reorder_bound, tower_terms

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

VOCAB, CTX, IMG, PATCH, WIDTH, EMBED = 1000, 16, 32, 8, 64, 32
SOT, EOT = VOCAB - 2, VOCAB - 1  # as in CLIP's vocabulary, the end token is the largest id


# The micro peers: 8 x 8 x 3 patch pixels, 2 blocks of width 64 (MLP up to 4 x 64, heads up
# to 64 wide), 17 image tokens, 16 text tokens: 4,681 terms.
TERMS = clip_terms(
    tower_terms(3 * PATCH * PATCH, WIDTH, 2, (IMG // PATCH) ** 2 + 1, 4 * WIDTH, WIDTH),
    tower_terms(1, WIDTH, 2, CTX, 4 * WIDTH, WIDTH),
    EMBED,
)


def double(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy: there the rounding bound is ~1e-9 of the scale (assert_parity), far
    under any mapping mistake; in float32 the same bound is half the scale."""
    return copy.deepcopy(model).double()


def inputs(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and CLIP-style token rows: start, words, end (largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, IMG, IMG, generator=g)
    tokens = torch.zeros(n, CTX, dtype=torch.long)
    for i, length in enumerate([3, CTX, 9, 6][:n]):
        tokens[i, :length] = torch.randint(1, SOT, (length,), generator=g)
        tokens[i, 0], tokens[i, length - 1] = SOT, EOT
    return images, tokens


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so that no tensor keeps a trivial initial value."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@torch.no_grad()
def ours(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model, images = double(model), images.double()
    out = model(images, tokens)
    logits = out.scale * out.image @ out.text.T
    if out.bias is not None:
        logits = logits + out.bias
    return {
        "image": model.encode_image(images),
        "text": model.encode_text(tokens),
        "logits": logits,
    }


@torch.no_grad()
def openclip_outputs(model, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model, images = double(model), images.double()
    logits, _ = model.get_logits(images, tokens)
    return {
        "image": model.encode_image(images),
        "text": model.encode_text(tokens),
        "logits": logits,
    }


def _pooled(x):
    # transformers 5 returns model outputs from get_*_features, older versions tensors.
    return x if isinstance(x, torch.Tensor) else x.pooler_output


@torch.no_grad()
def hf_outputs(model, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model, images = double(model), images.double()
    return {
        "image": _pooled(model.get_image_features(pixel_values=images)),
        "text": _pooled(model.get_text_features(input_ids=tokens)),
        "logits": model(input_ids=tokens, pixel_values=images).logits_per_image,
    }


def assert_parity(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], terms: int = TERMS
) -> None:
    for key in ("image", "text", "logits"):
        assert a[key].shape == b[key].shape, key
        assert a[key].dtype == b[key].dtype == torch.float64, key
        # A mapping mistake shows up as O(1) differences; a faithful one only as rounding:
        # 4,681 x 2.2e-16 x 10^3 = 1e-9 of the scale for the micro models.
        scale = 1 + float(b[key].abs().max())
        tol = reorder_bound(terms, CANCEL * scale, torch.float64)
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=tol, msg=key)
    assert a["logits"].abs().max() > 0.1  # the comparison is not between zeros


def openclip_model(quick_gelu: bool = True, text_heads: int = 1, head_width: int = 64, **kw):
    """An OpenCLIP ``CLIP`` with the micro shapes (OpenAI's layout)."""
    vision = open_clip.model.CLIPVisionCfg(
        layers=2, width=WIDTH, patch_size=PATCH, image_size=IMG, head_width=head_width
    )
    text = open_clip.model.CLIPTextCfg(
        context_length=CTX, vocab_size=VOCAB, width=WIDTH, heads=text_heads, layers=2
    )
    return perturb(open_clip.model.CLIP(EMBED, vision, text, quick_gelu=quick_gelu, **kw))


HF_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    intermediate_size=3 * WIDTH,  # not 4x: the MLP width must come from the tensors
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=CTX,
    bos_token_id=SOT,
    eos_token_id=EOT,
    pad_token_id=0,
)
HF_VISION = dict(
    hidden_size=WIDTH,
    intermediate_size=3 * WIDTH,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMG,
    patch_size=PATCH,
)


def hf_clip_model(**text):
    cfg = transformers.CLIPConfig(
        text_config={**HF_TEXT, **text}, vision_config=HF_VISION, projection_dim=EMBED
    )
    return perturb(transformers.CLIPModel(cfg))


def hf_siglip_model():
    cfg = transformers.SiglipConfig(text_config=HF_TEXT, vision_config=HF_VISION)
    return perturb(transformers.SiglipModel(cfg))


def siglip_config() -> ModelConfig:
    """A clipforge config with SigLIP's tower details."""
    return ModelConfig(
        embed_dim=WIDTH,
        vision=VisionConfig(
            image_size=IMG,
            patch_size=PATCH,
            width=WIDTH,
            layers=2,
            heads=2,
            pool="map",
            pre_norm=False,
            class_token=False,
            patch_bias=True,
            proj_type="none",
            norm_eps=1e-6,
        ),
        text=TextConfig(
            context_length=CTX,
            vocab_size=VOCAB,
            width=WIDTH,
            layers=2,
            heads=2,
            causal=False,
            pool="last",
            proj_bias=True,
            norm_eps=1e-6,
        ),
        act="gelu_tanh",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize_mode="squash",
        logit_scale_max=None,
    )


def clip_config(act: str = "quick_gelu", heads: int = 1, **vision) -> ModelConfig:
    return ModelConfig(
        embed_dim=EMBED,
        vision=VisionConfig(
            image_size=IMG, patch_size=PATCH, width=WIDTH, layers=2, heads=heads, **vision
        ),
        text=TextConfig(context_length=CTX, vocab_size=VOCAB, width=WIDTH, layers=2, heads=heads),
        act=act,
    )


# --- OpenCLIP and OpenAI -> clipforge ----------------------------------------------------


@pytest.mark.parametrize("container", ["plain", "wrapped", "safetensors"])
def test_openclip_state_dict_parity(tmp_path: Path, container: str) -> None:
    peer = openclip_model()
    sd = peer.state_dict()
    if container == "plain":
        path = tmp_path / "model.pt"
        torch.save(sd, path)
    elif container == "wrapped":  # an OpenCLIP training checkpoint from DDP
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    # A bare state dict does not say its heads or activation: refused, not guessed.
    with pytest.raises(ClipforgeError, match="head counts and activation cannot be read"):
        read_checkpoint(path)
    given = {"act": "quick_gelu", "vision.heads": 1, "text.heads": 1}
    ckpt = read_checkpoint(path, overrides=given)
    assert ckpt.format == "openclip"
    assert (ckpt.config.act, ckpt.config.vision.heads, ckpt.config.text.heads) == (
        "quick_gelu",
        1,
        1,
    )
    x, t = inputs()
    assert_parity(ours(load(path, overrides=given), x, t), openclip_outputs(peer, x, t))


def _odd_openclip(tmp_path: Path):
    """An OpenCLIP model whose heads are not 64 wide (width 96: 3 heads of 32, text 2 of 48)
    and GELU, saved as open_clip_train saves a DDP run: RUN/checkpoints/epoch_3.pt."""
    vision = open_clip.model.CLIPVisionCfg(
        layers=2, width=96, patch_size=PATCH, image_size=IMG, head_width=32
    )
    text = open_clip.model.CLIPTextCfg(
        context_length=CTX, vocab_size=VOCAB, width=96, heads=2, layers=2
    )
    peer = perturb(open_clip.model.CLIP(EMBED, vision, text, quick_gelu=False))
    path = tmp_path / "run" / "checkpoints" / "epoch_3.pt"
    path.parent.mkdir(parents=True)
    sd = {f"module.{k}": v for k, v in peer.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, path)
    return peer, path


def test_openclip_run_checkpoint_is_refused_until_its_heads_are_known(tmp_path: Path) -> None:
    peer, path = _odd_openclip(tmp_path)
    with pytest.raises(ClipforgeError, match=r"vision\.heads=N,text\.heads=N"):
        load(path)
    x, t = inputs()
    given = {"act": "gelu", "vision.heads": 3, "text.heads": 2}
    assert_parity(ours(load(path, overrides=given), x, t), openclip_outputs(peer, x, t))
    # A run folder's params.txt naming a model clipforge's table lacks is refused too.
    (tmp_path / "run" / "params.txt").write_text("batch_size: 8\nmodel: my-custom-vit\n")
    with pytest.raises(ClipforgeError, match="my-custom-vit"):
        load(path)


def test_open_clip_config_beside_the_file_fixes_the_architecture(tmp_path: Path) -> None:
    peer, path = _odd_openclip(tmp_path)
    model_cfg = {
        "embed_dim": EMBED,
        "vision_cfg": {"image_size": IMG, "layers": 2, "width": 96, "patch_size": PATCH,
                       "head_width": 32},
        "text_cfg": {"context_length": CTX, "vocab_size": VOCAB, "width": 96, "heads": 2,
                     "layers": 2},
    }  # fmt: skip
    (path.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    model = load(path)
    assert (model.cfg.act, model.cfg.vision.heads, model.cfg.text.heads) == ("gelu", 3, 2)
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))


def test_openclip_folder_with_config_parity(tmp_path: Path) -> None:
    # The hub layout: open_clip_config.json says GELU and 32-wide heads, which tensors cannot.
    peer = openclip_model(quick_gelu=False, text_heads=2, head_width=32, init_logit_bias=-5.0)
    folder = tmp_path / "hub"
    folder.mkdir()
    torch.save(peer.state_dict(), folder / "open_clip_pytorch_model.bin")
    model_cfg = {
        "embed_dim": EMBED,
        "init_logit_bias": -5.0,
        "vision_cfg": {"image_size": IMG, "patch_size": PATCH, "width": WIDTH, "layers": 2,
                       "head_width": 32},
        "text_cfg": {"context_length": CTX, "vocab_size": VOCAB, "width": WIDTH, "heads": 2,
                     "layers": 2},
    }  # fmt: skip
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    model = load(folder)
    cfg = model.cfg
    assert (cfg.act, cfg.vision.heads, cfg.text.heads) == ("gelu", 2, 2)
    assert (cfg.mean, cfg.std, cfg.resize_mode) == ((0.5,) * 3, (0.25,) * 3, "squash")
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))
    assert model.logit_bias is not None and model.logit_bias.item() != 0.0


def test_openclip_custom_text_variants_parity(tmp_path: Path) -> None:
    # OpenCLIP's CustomTextCLIP nests the text tower under "text."; this one has SigLIP's
    # text details (bidirectional, last-token pooling, projection bias, tanh GELU, eps 1e-6).
    text_cfg = {
        "context_length": CTX,
        "vocab_size": VOCAB,
        "width": WIDTH,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "pool_type": "last",
        "proj_bias": True,
        "norm_kwargs": {"eps": 1e-6},
        "act_kwargs": {"approximate": "tanh"},
    }
    vision_cfg = {"image_size": IMG, "patch_size": PATCH, "width": WIDTH, "layers": 2,
                  "head_width": 32, "norm_kwargs": {"eps": 1e-6},
                  "act_kwargs": {"approximate": "tanh"}}  # fmt: skip
    model_cfg = {"embed_dim": EMBED, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    peer = perturb(open_clip.model.CustomTextCLIP(**model_cfg))
    assert "text.text_projection.bias" in peer.state_dict()
    folder = tmp_path / "custom"
    folder.mkdir()
    torch.save(peer.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {**model_cfg, "custom_text": True}})
    )
    model = load(folder)
    cfg = model.cfg
    assert (cfg.act, cfg.text.causal, cfg.text.pool, cfg.text.proj_bias) == (
        "gelu_tanh",
        False,
        "last",
        True,
    )
    assert (cfg.vision.norm_eps, cfg.text.norm_eps) == (1e-6, 1e-6)
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))
    # ... and back: OpenCLIP's own loader builds the same model from our export.
    save_checkpoint(model, tmp_path / "back", "openclip")
    again = open_clip.create_model(f"local-dir:{tmp_path / 'back'}").eval()
    assert_parity(ours(model, x, t), openclip_outputs(again, x, t))


def openai_torchscript(path: Path):
    """An OpenAI-style TorchScript archive (fp16 weights, hyper-parameters as tensors).

    Returns the fp32 OpenCLIP model it was scripted from. As in OpenAI's archives, the
    causal mask is a plain attribute, not a buffer, so OpenCLIP's own loader reads it.
    """
    peer = openclip_model()
    with torch.no_grad():  # fp16 storage must lose nothing for an exact comparison
        for p in peer.parameters():
            p.copy_(p.half().float())
    peer.register_buffer("input_resolution", torch.tensor(IMG))
    peer.attn_mask = peer._buffers.pop("attn_mask")
    torch.jit.script(peer.half()).save(str(path))
    return peer.float()


def test_openai_torchscript_parity(tmp_path: Path) -> None:
    path = tmp_path / "ViT-micro.pt"
    peer = openai_torchscript(path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "openai" and ckpt.config.act == "quick_gelu"
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values())
    model = load(path)
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))
    # OpenCLIP's OpenAI loader (which runs the archive through torch.jit) agrees.
    reference = open_clip.openai.load_openai_model(str(path), precision="fp32", device="cpu")
    assert_parity(ours(model, x, t), openclip_outputs(reference.eval(), x, t))


def test_openai_state_dict_parity(tmp_path: Path) -> None:
    # OpenAI's plain state dicts mix fp16 matrices with fp32 LayerNorms.
    peer = openclip_model()
    open_clip.model.convert_weights_to_lp(peer, dtype=torch.float16)
    path = tmp_path / "openai.pt"
    torch.save(peer.state_dict(), path)
    peer.float()
    x, t = inputs()
    # Without OpenAI's buffers (input_resolution, ...) nothing says whose conventions apply.
    given = {"act": "quick_gelu", "vision.heads": 1, "text.heads": 1}
    assert_parity(ours(load(path, overrides=given), x, t), openclip_outputs(peer, x, t))


# --- Hugging Face -> clipforge -------------------------------------------------------------


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hf_clip_parity(tmp_path: Path, weights: str) -> None:
    peer = hf_clip_model()
    peer.save_pretrained(tmp_path)
    if weights == "bin":  # the older layout: pytorch_model.bin next to config.json
        (tmp_path / "model.safetensors").unlink()
        torch.save(peer.state_dict(), tmp_path / "pytorch_model.bin")
    ckpt = read_checkpoint(tmp_path)
    assert ckpt.format == "hf-clip"
    assert (ckpt.config.vision.heads, ckpt.config.text.heads) == (2, 2)
    assert int(ckpt.config.vision.width * ckpt.config.vision.mlp_ratio) == 3 * WIDTH
    x, t = inputs()
    assert_parity(ours(load(tmp_path), x, t), hf_outputs(peer, x, t))


def test_hf_clip_legacy_eos_parity(tmp_path: Path) -> None:
    # Configs saved before transformers 4.31 carry eos_token_id=2: HF then pools at argmax.
    peer = hf_clip_model(eos_token_id=2)
    peer.save_pretrained(tmp_path)
    x, t = inputs()
    assert_parity(ours(load(tmp_path), x, t), hf_outputs(peer, x, t))


def test_hf_siglip_parity(tmp_path: Path) -> None:
    peer = hf_siglip_model()
    peer.save_pretrained(tmp_path)
    add_spiece(tmp_path)  # a SigLIP folder without its tokenizer is refused
    ckpt = read_checkpoint(tmp_path)
    cfg = ckpt.config
    assert ckpt.format == "hf-siglip"
    assert (cfg.vision.pool, cfg.vision.class_token, cfg.text.causal, cfg.text.pool) == (
        "map",
        False,
        False,
        "last",
    )
    assert (cfg.act, cfg.vision.norm_eps, cfg.logit_scale_max) == ("gelu_tanh", 1e-6, None)
    x, t = inputs()
    t[:, -1] = torch.arange(1, 5)  # SigLIP pools the last position, whatever it holds
    assert_parity(ours(load(tmp_path), x, t), hf_outputs(peer, x, t))


def test_siglip_text_sees_padding_and_ignores_nothing() -> None:
    # Bidirectional text must not be trimmed: a change after the "end" changes the feature.
    model = perturb(CLIP(siglip_config(), init_logit_bias=-10.0))
    _, t = inputs(1)
    t2 = t.clone()
    t2[0, 5] = 7
    with torch.no_grad():
        diff = (model.encode_text(t) - model.encode_text(t2)).abs().max()
    assert diff > 1e-3


# --- clipforge -> peers (export round trips) ----------------------------------------------

CLIPFORGE_MODELS = {
    "openai-like": lambda: CLIP(clip_config()),
    "gelu-2heads": lambda: CLIP(clip_config(act="gelu", heads=2), init_logit_bias=-3.0),
    "mean-pool-no-prenorm": lambda: CLIP(clip_config(pool="mean", pre_norm=False, heads=2)),
}


@pytest.mark.parametrize("name", list(CLIPFORGE_MODELS))
def test_export_openclip_folder_round_trip(tmp_path: Path, name: str) -> None:
    model = perturb(CLIPFORGE_MODELS[name]())
    save_checkpoint(model, tmp_path / "oc", "openclip")
    peer = open_clip.create_model(f"local-dir:{tmp_path / 'oc'}").eval()
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer, x, t))
    back = load(tmp_path / "oc")
    assert back.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_export_openclip_file_loads_into_openclip(tmp_path: Path) -> None:
    model = perturb(CLIP(clip_config()))
    save_checkpoint(model, tmp_path / "w.safetensors", "openclip")
    peer = openclip_model()
    open_clip.load_checkpoint(peer, str(tmp_path / "w.safetensors"))
    x, t = inputs()
    assert_parity(ours(model, x, t), openclip_outputs(peer.eval(), x, t))


@pytest.mark.parametrize("name", ["openai-like", "gelu-2heads-nobias", "siglip"])
def test_export_hf_round_trip(tmp_path: Path, name: str) -> None:
    if name == "siglip":
        model = perturb(CLIP(siglip_config(), init_logit_bias=-10.0))
        cls = transformers.SiglipModel
    else:
        cfg = clip_config() if name == "openai-like" else clip_config(act="gelu", heads=2)
        model, cls = perturb(CLIP(cfg)), transformers.CLIPModel
    save_checkpoint(model, tmp_path / "hf", "hf")
    peer = cls.from_pretrained(tmp_path / "hf").eval()
    x, t = inputs()
    assert_parity(ours(model, x, t), hf_outputs(peer, x, t))
    back = load(tmp_path / "hf")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert (back.cfg.mean, back.cfg.resize_mode) == (model.cfg.mean, model.cfg.resize_mode)


def test_export_clipforge_is_read_by_the_trainer(tmp_path: Path) -> None:
    from clipforge.models import load

    model = perturb(CLIP(siglip_config(), init_logit_bias=-10.0))
    save_checkpoint(model, tmp_path / "m.pt", "clipforge")
    back = load(tmp_path / "m.pt")
    assert back.cfg == model.cfg
    x, t = inputs()
    assert_parity(ours(back, x, t), ours(model, x, t))


def test_export_refuses_what_the_target_cannot_hold(tmp_path: Path) -> None:
    siglip = CLIP(siglip_config(), init_logit_bias=-10.0)
    with pytest.raises(ClipforgeError, match="cannot be written as an OpenCLIP ViT: no class"):
        save_checkpoint(siglip, tmp_path / "x", "openclip")
    with pytest.raises(ClipforgeError, match="neither a Hugging Face CLIPModel nor a Siglip"):
        save_checkpoint(CLIP(clip_config(pool="mean")), tmp_path / "y", "hf")
    with pytest.raises(ClipforgeError, match="hf-clip has no place for these tensors: logit_bias"):
        save_checkpoint(CLIP(clip_config(), init_logit_bias=0.0), tmp_path / "z", "hf")
    conv_stem = CLIP(clip_config(stem="conv"))
    with pytest.raises(ClipforgeError, match="OpenCLIP ViT: convolutional stem"):
        save_checkpoint(conv_stem, tmp_path / "v", "openclip")
    with pytest.raises(ClipforgeError, match="for CLIP it lacks patch-embedding stem"):
        save_checkpoint(conv_stem, tmp_path / "u", "hf")
    with pytest.raises(ClipforgeError, match="unknown target format 'onnx'"):
        save_checkpoint(siglip, tmp_path / "w", "onnx")
