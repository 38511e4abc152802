"""SigLIP 2 (NaFlex) folders read for one square input size, against transformers.

A random micro ``Siglip2Model`` (every parameter perturbed) is saved by transformers with
a Gemma-style ``tokenizer.json`` (tests/spiece.py) and a ``preprocessor_config.json``,
loaded by clipforge, and compared with ``Siglip2Model`` on the same square images: its
inputs are the patches of transformers' own ``convert_image_to_patches`` with a full
``pixel_attention_mask`` and the ``spatial_shapes`` of the grid. Features are compared in
float64 to the rounding bound of the towers (tests/tolerance.py).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.hf_tokenizers import JsonTokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import model_fingerprint
from clipforge.models import image_transform, load, tokenizer_for
from clipforge.models.convert import convert, read_checkpoint
from tests.models.test_convert import (
    CTX,
    HF_TEXT,
    PATCH,
    WIDTH,
    _pooled,
    assert_parity,
    double,
    hf_outputs,
    hf_siglip_model,
    ours,
    perturb,
)
from tests.spiece import add_gemma_json
from tests.tolerance import clip_terms, reorder_bound, tower_terms

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from transformers.models.siglip2.image_processing_siglip2 import (  # noqa: E402
    convert_image_to_patches,
)

SIDE = 4  # the learned positions: a 4 x 4 grid, so 16 patches of 8 px: 32 px by default
CAPTIONS = [
    "A Photo of a RED circle",  # upper case: SigLIP 2's tokenizer lower-cases
    "three big striped stars above two small triangles",
    " ".join(["a dark dog on the left"] * 6),  # longer than the context: cut
    "",
]


def terms(tokens: int) -> int:
    """Terms behind one logit of the micro towers with ``tokens`` image patches (8 x 8 x 3
    pixels each, width 64, 2 blocks, an MLP under 4 x 64, heads under 64, the 64-wide
    embedding): ~5,000 at 16 patches, the bound ~1e-9 of the scale in float64."""
    image = tower_terms(3 * PATCH * PATCH, WIDTH, 2, tokens, 4 * WIDTH, WIDTH)
    return clip_terms(image, tower_terms(1, WIDTH, 2, CTX, 4 * WIDTH, WIDTH), WIDTH)


def hf_siglip2_model(**vision):
    cfg = transformers.Siglip2Config(
        text_config=HF_TEXT,
        vision_config=dict(
            hidden_size=WIDTH, intermediate_size=3 * WIDTH, num_hidden_layers=2,
            num_attention_heads=2, patch_size=PATCH, num_patches=SIDE * SIDE, **vision,
        ),
    )  # fmt: skip
    return perturb(transformers.Siglip2Model(cfg))


def save_folder(peer, folder: Path, padding_side: str | None = "right", **pre) -> Path:
    peer.save_pretrained(folder)
    add_gemma_json(folder, padding_side)
    processor = {"image_processor_type": "Siglip2ImageProcessor", "patch_size": PATCH,
                 "max_num_patches": SIDE * SIDE, **pre}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def hf_ids(folder: Path) -> torch.Tensor:
    """transformers' own tokenizer of the folder, as SigLIP 2's processor calls it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        return tok(CAPTIONS, padding="max_length", truncation=True, max_length=CTX,
                   return_tensors="pt").input_ids  # fmt: skip


@torch.no_grad()
def hf2_outputs(peer, images: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Siglip2Model`` on square ``images``: transformers' patches, every one attended."""
    peer, images = double(peer), images.double()
    n, grid = images.shape[0], images.shape[-1] // PATCH
    kw = {
        "pixel_values": torch.stack([convert_image_to_patches(x, PATCH) for x in images]),
        "pixel_attention_mask": torch.ones(n, grid * grid, dtype=torch.long),
        "spatial_shapes": torch.tensor([[grid, grid]] * n),
    }
    return {
        "image": _pooled(peer.get_image_features(**kw)),
        "text": _pooled(peer.get_text_features(input_ids=ids)),
        "logits": peer(input_ids=ids, **kw).logits_per_image,
    }


def images(size: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def siglip2(tmp_path: Path):
    peer = hf_siglip2_model()
    return peer, save_folder(peer, tmp_path / "siglip2")


def test_siglip2_folder_matches_transformers_at_its_default_size(siglip2):
    peer, folder = siglip2
    ckpt = read_checkpoint(folder)
    cfg = ckpt.config
    assert ckpt.format == "hf-siglip2"
    # max_num_patches 16 of 8 px for a square image: 32 px; SigLIP 2's processor's
    # normalisation and bilinear resize; SigLIP's towers.
    assert (cfg.vision.image_size, cfg.vision.patch_size) == (32, PATCH)
    assert (cfg.mean, cfg.std, cfg.interpolation, cfg.resize_mode) == (
        (0.5,) * 3, (0.5,) * 3, "bilinear", "squash",
    )  # fmt: skip
    assert (cfg.vision.pool, cfg.vision.class_token, cfg.text.pool, cfg.act) == (
        "map", False, "last", "gelu_tanh",
    )  # fmt: skip
    model = load(folder)
    tok = tokenizer_for(model)
    want = hf_ids(folder)
    ids = tok(CAPTIONS)
    assert isinstance(tok, JsonTokenizer) and torch.equal(ids, want)  # id for id
    assert want[0, 0] == 2 and want[3, 1] == 0  # <bos> first, then <pad> on the right
    # Image, text features and logits: clipforge's model (a patch convolution, the
    # position table as is) against Siglip2Model's linear patches and resized grid. A
    # wrong flatten order or grid moves features by O(1); rounding by ~1e-9 of the scale.
    x = images(32)
    assert_parity(ours(model, x, ids), hf2_outputs(peer, x, want), terms(SIDE * SIDE))


def test_siglip2_preprocessing_equals_its_image_processor_on_square_images(siglip2):
    # transformers' Siglip2ImageProcessor, read from the folder, on a square photo: resized
    # to the 4 x 4 patch grid (32 px, bilinear), rescaled and normalised, as patches.
    # clipforge's tensor route resizes with the same torchvision kernel, so the pixels are
    # the same up to the two normalisations' rounding: each rounds at most 5 times, every
    # rounding worth at most (1 + mean) / std of the output (as in test_preprocess.py).
    _, folder = siglip2
    cfg = load(folder).cfg
    g = torch.Generator().manual_seed(1)
    photo = torch.randint(0, 256, (3, 96, 96), generator=g, dtype=torch.uint8)
    photo = (photo.float().cumsum(1) / 96).to(torch.uint8)  # some smooth structure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = transformers.AutoImageProcessor.from_pretrained(folder)
        out = proc(images=[photo], return_tensors="pt")
    assert out["spatial_shapes"].tolist() == [[SIDE, SIDE]]
    assert bool(out["pixel_attention_mask"].all())  # a square image fills the grid
    ours = convert_image_to_patches(image_transform(cfg)(photo), PATCH)
    tol = reorder_bound(5, (1 + max(cfg.mean)) / min(cfg.std))
    torch.testing.assert_close(ours, out["pixel_values"][0], rtol=0, atol=tol)


@pytest.mark.parametrize("padding_side", [None, "right"])
def test_siglip2_tokenizer_lowercases_and_pads_as_transformers(tmp_path, padding_side):
    # transformers runs a siglip2 folder's tokenizer.json through Siglip2Tokenizer (not the
    # Gemma class the hub folders name): lower-cased, and padded on the left unless
    # tokenizer_config.json says otherwise.
    folder = save_folder(hf_siglip2_model(), tmp_path / "s", padding_side)
    want = hf_ids(folder)
    tok = tokenizer_for(load(folder))
    assert torch.equal(tok(CAPTIONS), want)
    assert tok.encode("A RED Circle") == tok.encode("a red circle")
    # The empty text: <bos> and padding, the padding in front when on the left.
    bos, pad = (-1, 0) if padding_side is None else (0, 1)
    assert want[3, bos] == 2 and want[3, pad] == 0


@pytest.mark.parametrize("padding_side", [None, "right"])
def test_fixed_size_siglip2_folders_tokenize_as_transformers(tmp_path, padding_side):
    # SigLIP 2's fixed-resolution releases are SiglipModel folders with Gemma's
    # tokenizer.json: transformers runs it through GemmaTokenizer, which keeps case and
    # pads on the left unless tokenizer_config.json says otherwise.
    folder = tmp_path / "fixed"
    hf_siglip_model().save_pretrained(folder)
    add_gemma_json(folder, padding_side)
    want = hf_ids(folder)
    tok = tokenizer_for(load(folder))
    assert torch.equal(tok(CAPTIONS), want)
    assert tok.encode("A RED Circle") != tok.encode("a red circle")
    assert want[3, -1 if padding_side is None else 0] == 2
    # Written back (--to hf), the folder tokenizes the same for transformers and clipforge.
    convert(folder, tmp_path / "out", "hf")
    assert torch.equal(hf_ids(tmp_path / "out"), want)
    assert load(tmp_path / "out").tokenizer_spec == load(folder).tokenizer_spec


def test_another_square_size_resizes_the_positions_as_transformers(siglip2, tmp_path):
    peer, _ = siglip2
    # Positions on a 1/1024 lattice: doubling the grid weighs neighbours by 1/16 .. 9/16,
    # so transformers' float32 resize and clipforge's are both exact, and the features
    # compare at the float64 bound, as at the default size.
    with torch.no_grad():
        pos = peer.vision_model.embeddings.position_embedding.weight
        pos.copy_(torch.round(pos * 1024) / 1024)
    folder = save_folder(peer, tmp_path / "lattice")
    model = load(folder, overrides={"vision.image_size": 64})
    assert model.cfg.vision.image_size == 64 and model.visual.pos_embed.shape[0] == 64
    ids = hf_ids(folder)
    x = images(64)
    assert_parity(ours(model, x, ids), hf2_outputs(peer, x, ids), terms(64))
    assert model_fingerprint(model) != model_fingerprint(load(folder))
    # The same size chosen on the command line, into a checkpoint that records it.
    args = ["convert", str(folder), str(tmp_path / "s2-64.pt"), "--to", "clipforge"]
    assert main([*args, "--model-args", "vision.image_size=64"]) == 0
    assert model_fingerprint(load(tmp_path / "s2-64.pt")) == model_fingerprint(model)

    # Other sizes (shrinking, where antialiasing widens the filter, and a factor of 2.5):
    # the table equals transformers' own resize, which runs in float32: each entry sums the
    # 16 grid rows (weights summing to 1), after ~8 roundings making the weights and one
    # of clipforge's (rounding its float64 result).
    grid = pos.detach().reshape(SIDE, SIDE, WIDTH)
    for size in (16, 24, 40):
        g = size // PATCH
        theirs = transformers.models.siglip2.modeling_siglip2.Siglip2VisionEmbeddings
        want = theirs.resize_positional_embeddings(grid, torch.tensor([[g, g]]), g * g)[0]
        got = load(folder, overrides={"vision.image_size": size}).visual.pos_embed.detach()
        tol = reorder_bound(SIDE * SIDE + 8 + 1, float(grid.abs().max()))
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


def test_siglip2_converts_and_keeps_its_fingerprint(siglip2, tmp_path):
    peer, folder = siglip2
    model = load(folder)
    fp = model_fingerprint(model)
    convert(folder, tmp_path / "s2.pt", "clipforge")
    convert(folder, tmp_path / "hf", "hf")  # a SiglipModel folder: SigLIP 2 at 32 px
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "siglip"
    for path in (tmp_path / "s2.pt", tmp_path / "hf"):
        again = load(path)
        assert model_fingerprint(again) == fp  # weights, size and tokenizer kept
        assert again.tokenizer_spec == model.tokenizer_spec
    # transformers reads the written folder to the same ids and features.
    ids = hf_ids(tmp_path / "hf")
    assert torch.equal(ids, hf_ids(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v1 = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    x = images(32)
    assert_parity(hf_outputs(v1, x, ids), hf2_outputs(peer, x, ids), terms(SIDE * SIDE))


def _one_line_refusal(folder: Path, *words: str) -> None:
    with pytest.raises(ClipforgeError) as e:
        load(folder)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_what_siglip2_cannot_be_read_as_is_refused_by_name(tmp_path):
    peer = hf_siglip2_model()
    # 20 patches are no square grid: the size must be chosen, and then it loads.
    folder = save_folder(peer, tmp_path / "a", max_num_patches=20)
    _one_line_refusal(folder, "max_num_patches 20", "vision.image_size")
    assert load(folder, overrides={"vision.image_size": 48}).cfg.vision.image_size == 48
    assert math.isqrt(20) ** 2 != 20
    _one_line_refusal(save_folder(peer, tmp_path / "b", patch_size=16), "patch_size 16")
    _one_line_refusal(save_folder(peer, tmp_path / "c", do_normalize=False), "do_normalize")
    folder = save_folder(peer, tmp_path / "d")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["num_patches"] = 25
    (folder / "config.json").write_text(json.dumps(config))
    _one_line_refusal(folder, "num_patches 25", "16 learned positions")
    folder = save_folder(peer, tmp_path / "e")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    _one_line_refusal(folder, "without its text tokenizer")
