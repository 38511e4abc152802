"""ONNX export of the two encoders, for serving without PyTorch.

``image.onnx`` maps ``pixels [B, 3, H, W]`` (preprocessed as the model's ``mean``/``std``
say) to L2-normalised ``features [B, D]``; ``text.onnx`` maps ``tokens [B, context]``
(int64, the tokenizer's output) to ``features [B, D]``. Both take any batch size. The
text tower exports without the trimming of the padded tail it does in PyTorch (a
data-dependent shape); the result is the same, because the end token cannot see later
positions under causal attention. ``model.yaml`` beside them records the architecture,
so a server knows the image size, context length and normalisation.

The model's tokenizer goes beside the graphs, so that a user of ``text.onnx`` makes the
ids the model was trained on (:func:`write_tokenizer`): CLIP's BPE as
``CLIPTokenizer``'s ``vocab.json`` + ``merges.txt``, or the SigLIP ``spiece.model`` /
``tokenizer.json`` the model was loaded with (and its ``tokenizer_config.json``), and
``tokenizer_info.json`` saying which kind it is, its options and the context length
(:func:`clipforge.models.onnx_runtime.export_tokenizer` reads it back).

Token merging (``--merge-tokens r``, :mod:`clipforge.models.tome`) set on the model is
built into ``image.onnx`` (and noted in ``model.yaml``); a mixture-of-experts model
(``clipforge upcycle``) exports with every expert run on every token behind zero gates
(:meth:`~clipforge.models.moe.MoEMLP._dense_dispatch`), since the graph cannot hold
the per-expert token counts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.checkpoint import plain_config
from clipforge.data.tokenizer import clip_bpe_files
from clipforge.errors import ClipforgeError
from clipforge.models.clip import CLIP

TOKENIZER_INFO = "tokenizer_info.json"
ONNX_FILES = ("image.onnx", "text.onnx", "model.yaml", TOKENIZER_INFO)
"""What every export holds (the tokenizer's own files are named in ``TOKENIZER_INFO``)."""
CLIP_BPE = "clip-bpe"  # tokenizer_info.json's kind for CLIP's BPE


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


class _TextEncoder(nn.Module):
    """The text tower with the end-token position taken by a one-hot product instead of
    indexing by a data-dependent argmax, which the exporter traces as one graph."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.text = model.text

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t, cfg = self.text, self.text.cfg
        x = t.add_positions(t.token_embed(tokens))
        x = t.transformer(x, causal=cfg.causal)
        if cfg.pool == "argmax":
            pick = F.one_hot(tokens.argmax(dim=-1), tokens.shape[1]).to(x.dtype)
        else:  # "last"
            pick = F.one_hot(torch.full_like(tokens[:, 0], tokens.shape[1] - 1), tokens.shape[1])
            pick = pick.to(x.dtype)
        x = t.norm_final(torch.einsum("bt,btd->bd", pick, x))
        return F.normalize(t.proj(x), dim=-1)


def check_onnx() -> None:
    """Refuse in one line when the exporter's packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ClipforgeError(
            "ONNX export needs the onnx extra: pip install 'clipforge[onnx]'"
        ) from None


def write_tokenizer(model: CLIP, out: str | Path) -> list[Path]:
    """Write ``model``'s tokenizer into the folder ``out``: its files (CLIP's BPE as
    ``vocab.json`` + ``merges.txt``, or the file of ``model.tokenizer_spec`` and its
    ``tokenizer_config.json``, all of which transformers reads) and ``tokenizer_info.json``
    (``kind``, ``context_length``, ``files``, and for SigLIP's kinds the spec's
    ``options`` and ``digest``); returns the files written."""
    out = Path(out)
    spec = getattr(model, "tokenizer_spec", None)
    info: dict[str, Any] = {"context_length": model.cfg.text.context_length}
    if spec is None:
        files = {
            **clip_bpe_files(),
            "tokenizer_config.json": b'{"tokenizer_class": "CLIPTokenizer"}\n',
        }
        info["kind"] = CLIP_BPE
    else:
        files = spec.hf_files()
        info.update(kind=spec.kind, options=dict(spec.options), digest=spec.digest)
    info["files"] = sorted(files)
    for name, data in files.items():
        (out / name).write_bytes(data)
    (out / TOKENIZER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return [out / name for name in sorted(files)]


def export_onnx(model: CLIP, out: str | Path) -> list[Path]:
    """Write ``image.onnx``, ``text.onnx``, ``model.yaml`` and the tokenizer
    (:func:`write_tokenizer`) of ``model`` into the folder ``out`` (which must exist);
    returns the files written."""
    check_onnx()
    import yaml

    out = Path(out)
    model = model.float().eval()
    v, t = model.cfg.vision, model.cfg.text
    pixels = torch.zeros(2, 3, v.image_size, v.image_size)
    tokens = torch.zeros(2, t.context_length, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 1, t.vocab_size - 1
    batch = torch.export.Dim("batch", min=1)
    jobs = (
        (_ImageEncoder(model), pixels, "pixels", "image.onnx"),
        (_TextEncoder(model), tokens, "tokens", "text.onnx"),
    )
    for module, example, name, file in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress notes, not ours
            program = torch.onnx.export(
                module, (example,), input_names=[name], output_names=["features"],
                dynamic_shapes={name: {0: batch}}, dynamo=True, verbose=False,
            )  # fmt: skip
        program.save(str(out / file))
    text = yaml.safe_dump(plain_config(model.cfg), sort_keys=False)
    merge = getattr(model.visual, "merge_tokens", 0)
    if merge:
        # A comment, not a key: model.yaml stays the architecture that a ModelConfig reads.
        text = (
            f"# image.onnx merges {merge} tokens after every block (--merge-tokens {merge})\n"
            + text
        )
    (out / "model.yaml").write_text(text)
    tokenizer_files = write_tokenizer(model, out)
    return [out / f for f in ONNX_FILES] + tokenizer_files
