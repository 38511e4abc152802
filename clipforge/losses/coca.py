"""A captioning head trained beside the contrastive loss (CoCa, Yu et al., 2022).

A small decoder (:class:`~clipforge.models.decoder.CaptionDecoder`) cross-attends to the
image tower's token features and predicts each caption token from the ones before it;
its teacher-forced cross-entropy is this objective, added to a contrastive one with
``--loss clip+coca``. Captioning makes the image tokens say which colour sits on which
shape, in order, which a pooled contrastive embedding may blur. The decoder is a part
of the trained model: it is saved in every checkpoint and ``clipforge caption`` uses it.

SyCoCa's attentive masking (Ma et al., 2024) is an option: each caption's decoder sees
only the image tokens most similar to that caption's embedding (``--coca-keep``), so the
caption must be read from the part of the image it describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective
from clipforge.losses.registry import LossSpec, register
from clipforge.models.decoder import CaptionDecoder, DecoderConfig
from clipforge.ranges import count, fraction, integers


def next_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced cross-entropy, averaged over the valid target tokens::

        L = sum_{c,t} w_c v_ct (-log softmax(z_ct)[y_ct]) / sum_{c,t} w_c v_ct

    ``logits`` ``[C, L, V]``, ``targets`` ``[C, L]`` decoder indices, ``valid`` ``[C, L]``
    bool (the caption's tokens after the start token, its end token included; padding
    False), ``weights`` ``[C]`` per-caption weights (1 when None).
    """
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    w = valid.to(ce.dtype).view_as(targets)
    if weights is not None:
        w = w * weights[:, None].to(ce.dtype)
    return (ce.view_as(targets) * w).sum() / w.sum()


def teacher_forcing(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, valid) of tokenizer rows ``[C, L]`` (start, text, end, zeros).

    The end token has the largest id, so ``argmax`` finds it; the rows are cut after the
    longest caption's end token, since later positions are padding for every row.
    """
    end = tokens.argmax(dim=1)
    tokens = tokens[:, : int(end.max()) + 1]
    positions = torch.arange(1, tokens.shape[1], device=tokens.device)
    return tokens[:, :-1], tokens[:, 1:], positions[None, :] <= end[:, None]


def attentive_mask(
    image_tokens: torch.Tensor, text: torch.Tensor, keep: float, length: int
) -> torch.Tensor:
    """``[C, length, N]`` bool: each caption's ``ceil(keep * N)`` image tokens most similar
    to its embedding ``text`` ``[C, D]`` (SyCoCa's attentive masking); every position
    of the caption sees the same ones."""
    n = image_tokens.shape[1]
    k = max(1, math.ceil(keep * n))
    sim = torch.einsum("cnd,cd->cn", image_tokens, text)
    top = sim.topk(k, dim=1).indices
    mask = torch.zeros(sim.shape, dtype=torch.bool, device=sim.device)
    mask.scatter_(1, top, True)
    return mask[:, None, :].expand(-1, length, -1)


class CocaObjective(Objective):
    """The decoder's :func:`next_token_loss` on every positive caption of the batch.

    Hard-negative captions (``owner = -1``) describe no image and are not captioned;
    each other caption is decoded from the tokens of the image it belongs to. Per-sample
    ``weights`` weight their images' captions.
    """

    needs_tokens = True

    def __init__(self, cfg: DecoderConfig, ids: torch.Tensor, keep: float = 1.0) -> None:
        super().__init__()
        check_field(CocaOptions, "coca_keep", keep)
        self.decoder = CaptionDecoder(cfg, ids)
        self.keep = keep
        self._last: dict[str, float] = {}

    def prepare(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"text_ids": tokens}

    def heads(self) -> dict[str, nn.Module]:
        return {"decoder": self.decoder}

    def forward(self, f: Features) -> torch.Tensor:
        owner = f.owners()
        captioned = owner >= 0
        rows = owner[captioned]
        image_tokens = f.extra["image_tokens"][rows]
        inputs, targets, valid = teacher_forcing(f.extra["text_ids"][captioned].long())
        mask = None
        if self.keep < 1:
            with torch.no_grad():  # which tokens to show is a choice, not a prediction
                text = f.text[captioned]
                mask = attentive_mask(image_tokens.detach(), text.detach(), self.keep,
                                      inputs.shape[1])  # fmt: skip
        logits = self.decoder(self.decoder.to_decoder_ids(inputs), image_tokens, mask=mask)
        weights = None if f.weights is None else f.weights[rows]
        # The cross-entropy in float32 under bf16 autocast; a float64 run keeps float64.
        if logits.dtype != torch.float64:
            logits = logits.float()
        loss = next_token_loss(logits, self.decoder.to_decoder_ids(targets), valid, weights)
        with torch.no_grad():
            hit = (logits.argmax(dim=-1) == self.decoder.to_decoder_ids(targets)) & valid
            self._last = {"coca/token_acc": float(hit.sum() / valid.sum())}
        return loss

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class CocaOptions:
    coca_layers: int = option(2, "coca: decoder blocks", check=count)
    coca_width: int = option(0, "coca: decoder width (0 = the text tower's)", check=integers(0))
    coca_heads: int = option(4, "coca: decoder attention heads", check=count)
    coca_tied: bool = option(True, "coca: the output layer reuses the decoder's token embedding")
    coca_vocab: str = option(
        "auto", "coca: decoder vocabulary: 'shapes' (the shapes world's words), 'full' (all "
        "tokenizer ids) or 'auto' (shapes on the shapes world, else full)",
    )  # fmt: skip
    coca_keep: float = option(
        1.0, "coca: share of image tokens each caption's decoder sees, the most similar to the "
        "caption (SyCoCa's attentive masking; 1 = all)", check=fraction,
    )  # fmt: skip


def vocabulary(kind: str, vocab_size: int) -> torch.Tensor:
    """The tokenizer ids a decoder knows: ``full`` (all ``vocab_size``) or ``shapes`` (the
    shapes world's caption words and the start and end tokens), ascending."""
    if kind == "full":
        return torch.arange(vocab_size)
    if kind != "shapes":
        raise ClipforgeError(f"--coca-vocab: expected auto, shapes or full, got {kind!r}")
    from clipforge.data.shapes.captions import caption_words
    from clipforge.data.tokenizer import get_tokenizer

    tok = get_tokenizer()
    ids = {tok.sot_token_id, tok.eot_token_id}
    for word in caption_words():
        ids.update(tok.encode(word))
    return torch.tensor(sorted(ids))


def _build(o: CocaOptions, run: Any) -> Objective:
    from clipforge.models import get_model_config

    model = get_model_config(getattr(run, "model", "tiny"), getattr(run, "model_args", None))
    if model.vision.pool == "grid":
        raise ClipforgeError(
            "loss 'coca' reads single image tokens, which grid pooling does not project: "
            "use vision.pool=mean, cls or map"
        )
    kind = o.coca_vocab
    if kind == "auto":
        kind = "shapes" if getattr(run, "data", None) is None else "full"
    ids = vocabulary(kind, model.text.vocab_size)
    cfg = DecoderConfig(
        image_dim=model.embed_dim,
        vocab=int(ids.shape[0]),
        context_length=model.text.context_length,
        width=o.coca_width or model.text.width,
        layers=o.coca_layers,
        heads=o.coca_heads,
        tied=o.coca_tied,
        act=model.act,
    )
    if cfg.width % cfg.heads:
        raise ClipforgeError(
            f"--coca-width {cfg.width} must be a multiple of --coca-heads {cfg.heads}"
        )
    return CocaObjective(cfg, ids, o.coca_keep)


register(
    "coca",
    LossSpec(
        _build,
        summary="captioning head: a decoder's next-token loss over image tokens (CoCa, SyCoCa)",
        contrastive=False,
        options=CocaOptions,
    ),
)
