"""``runtime="compile"``: the Inductor-compiled image tower against eager PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.data.tokenizer import get_tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import Embedder
from clipforge.models import create_model
from tests.conftest import MICRO_ARGS

# The compiled graph computes the same float32 function with its sums in other orders
# (fused, pre-packed kernels); each entry of a unit feature moves by the reordering bound
# of its chain, about 1e-4 for this model (as for onnxruntime, tests/models/test_wise_export.py).
REORDER = 1e-4


def test_compiled_tower_matches_eager_and_pads_the_last_batch():
    torch.manual_seed(0)
    model = create_model("tiny", dict(MICRO_ARGS)).eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(7)]
    eager = Embedder(model, tok, batch_size=4, progress=False, precision="fp32")
    compiled = Embedder(model, tok, batch_size=4, progress=False, precision="fp32",
                        runtime="compile")  # fmt: skip
    want = torch.cat([eager.image_batch(images[:4]), eager.image_batch(images[4:])])
    got = torch.cat([compiled.image_batch(images[:4]), compiled.image_batch(images[4:])])
    assert got.shape == (7, model.cfg.embed_dim)
    assert (got - want).abs().max() < REORDER  # the 3 padded rows too
    rec = compiled.precision_record
    assert rec["runtime"] == "compile" and rec["image_parity"]["min_cosine"] > 1 - REORDER
    # Texts stay eager: the very same features.
    assert torch.equal(compiled.text_batch(["a red circle"]), eager.text_batch(["a red circle"]))
    assert compiled.cache_dir is None and compiled.fingerprint == eager.fingerprint


def test_compile_without_a_cpp_compiler_is_refused_in_one_line(monkeypatch):
    import clipforge.models.compiled as compiled

    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    model = create_model("tiny", dict(MICRO_ARGS)).eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    with pytest.raises(ClipforgeError, match="needs a C.. compiler"):
        Embedder(model, tok, progress=False, runtime="compile")
