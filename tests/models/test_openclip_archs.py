"""clipforge's table of OpenCLIP architectures, against the installed OpenCLIP, and a run
folder whose params.txt names one of them."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch

from clipforge.models import load
from clipforge.models.convert.openclip_models import OPENCLIP_MODELS
from tests.tolerance import CANCEL, reorder_bound, tower_terms


def _theirs(name: str) -> dict:
    folder = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")
    with open(os.path.join(folder, f"{name}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(OPENCLIP_MODELS))
def test_table_matches_openclip(name: str) -> None:
    ours, theirs = OPENCLIP_MODELS[name], _theirs(name)
    assert ours["embed_dim"] == theirs["embed_dim"]
    assert ours.get("quick_gelu", False) == theirs.get("quick_gelu", False)
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in ours[tower].items():
            assert theirs[tower][key] == value, (tower, key)
    # Every field that shapes the towers is in the table (the rest are OpenCLIP defaults).
    for key in ("layers", "width", "head_width", "patch_size", "image_size", "mlp_ratio"):
        assert (key in ours["vision_cfg"]) == (key in theirs["vision_cfg"]), key
    for key in ("layers", "width", "heads", "context_length", "vocab_size"):
        assert (key in ours["text_cfg"]) == (key in theirs["text_cfg"]), key


def test_params_txt_names_the_architecture(tmp_path) -> None:
    # The smallest standard model, random weights, saved as open_clip_train saves a run.
    peer = open_clip.create_model("ViT-S-32-alt").eval()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("batch_size: 256\nmodel: ViT-S-32-alt\nprecision: amp\n")
    sd = {f"module.{k}": v for k, v in peer.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, run / "checkpoints" / "epoch_3.pt")
    model = load(run / "checkpoints" / "epoch_3.pt")
    spec = OPENCLIP_MODELS["ViT-S-32-alt"]
    assert model.cfg.vision.heads == spec["vision_cfg"]["width"] // spec["vision_cfg"].get(
        "head_width", 64
    )
    assert model.cfg.text.heads == spec["text_cfg"]["heads"]
    assert model.cfg.act == ("quick_gelu" if spec.get("quick_gelu") else "gelu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 224, 224, generator=g)
    t = torch.randint(1, 1000, (2, 77), generator=g)
    t[:, -1] = 49407  # the end token the text tower pools at
    model, peer, x = model.double(), peer.double(), x.double()
    with torch.no_grad():
        a = model.encode_image(x, normalize=True)
        b = peer.encode_image(x, normalize=True)
        c = model.encode_text(t, normalize=True)
        d = peer.encode_text(t, normalize=True)
    # Both towers in float64: the terms along the chain (tests/tolerance.py), CANCEL for
    # cancellation, on unit vectors. In float32 that bound would exceed 1; in float64 it is
    # ~1e-9, and a wrong head count or activation moves the features by ~0.1.
    v, tt = spec["vision_cfg"], spec["text_cfg"]
    tol_img = reorder_bound(tower_terms(3 * 32 * 32, v["width"], v["layers"], 50, 4 * v["width"],
                                        64), CANCEL, torch.float64)  # fmt: skip
    tol_txt = reorder_bound(tower_terms(tt["width"], tt["width"], tt["layers"], 77,
                                        4 * tt["width"], 64), CANCEL, torch.float64)  # fmt: skip
    assert tol_img < 1e-6 and tol_txt < 1e-6  # still far below a wrong architecture's error
    assert float((a - b).abs().max()) < tol_img
    assert float((c - d).abs().max()) < tol_txt
