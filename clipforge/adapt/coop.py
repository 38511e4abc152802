"""``coop``: learned context vectors before the class name, both towers frozen (CoOp,
Zhou et al. 2022, "Learning to Prompt for Vision-Language Models").

Each class's prompt is ``[start] v_1 .. v_M <class name>. [end]``: the ``M`` context
vectors replace word embeddings at the input of the text tower, one set shared by every
class or, with ``class_specific``, one per class (CoOp's CSC). Only they are trained, by
Adam on the cross-entropy of ``scale * x T(v)^T`` over the shot features; every tower
weight stays as it was, which the fit checks by hashing the model before and after
(``params["towers_unchanged"]``). With ``M = 4`` the vectors start as the embeddings of
"a photo of a" (CoOp's initialisation), otherwise from N(0, 0.02^2). The number of
steps is chosen on the validation shots among checkpoints of one run, then the context
is retrained on all shots. The adapter stores the resulting class embeddings, so scoring
needs no text tower; the context vectors are saved beside them.

CoCoOp, the image-conditioned variant, is :mod:`clipforge.adapt.cocoop`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register
from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import model_fingerprint
from clipforge.ranges import count, count0, integers, positive

CHECKPOINTS = (0, 10, 25, 50, 100, 200)
INIT_WORDS = "a photo of a"


@dataclass
class CoOpOptions:
    ctx: int = option(4, "learned context vectors (CoOp: 4 or 16)", check=integers(1, 64))
    class_specific: bool = option(False, "one context per class (CoOp's CSC)")
    epochs: int = option(50, "full-batch steps when there is no validation split", check=count0)
    max_epochs: int = option(100, "longest run the validation search considers", check=count)
    lr: float = option(2e-3, "Adam learning rate of the context", check=positive)


class PromptLearner:
    """The prompts of every class with ``M`` context slots, and the frozen text tower."""

    def __init__(
        self, model, tokenizer, classnames: list[str], m: int, per_class: bool,
        init_words: str = INIT_WORDS,
    ) -> None:  # fmt: skip
        self.model, self.text = model, model.text
        placeholder = " ".join(["x"] * m)
        self.tokens = tokenizer([f"{placeholder} {c}." for c in classnames])
        if int(self.tokens.argmax(dim=-1).max()) >= self.tokens.shape[1] - 1:
            # The end token would be cut off: the class name and context do not fit.
            raise ClipforgeError(
                f"--ctx {m}: the prompts do not fit the text context ({self.tokens.shape[1]})"
            )
        with torch.no_grad():
            words = tokenizer([init_words])[0, 1 : 1 + len(init_words.split())]
            if m == len(words):
                init = self.text.token_embed(words).clone()
            else:
                g = torch.Generator().manual_seed(0)
                init = torch.randn(m, self.text.cfg.width, generator=g) * 0.02
        shape = (len(classnames), m, init.shape[-1]) if per_class else init.shape
        self.ctx = torch.nn.Parameter(init.expand(shape).clone())
        self.m = m

    def class_embeddings(self) -> torch.Tensor:
        """``[C, D]`` normalised text features of the prompts with the current context."""
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(len(self.tokens), -1, -1)
        return encode_prompts(self.text, self.tokens, ctx)


def encode_prompts(text, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """``[P, D]`` normalised text features of ``P`` prompts whose token ids ``tokens [P, L]``
    hold ``M`` placeholders after the start token, replaced by ``ctx [P, M, width]`` at the
    input of the text tower ``text``; the rest runs as the tower's own forward does."""
    cfg, tok, m = text.cfg, tokens, ctx.shape[1]
    pos = tok.argmax(dim=-1) if cfg.pool == "argmax" else torch.full((len(tok),), tok.shape[1] - 1)
    if cfg.pool == "argmax" and cfg.causal:
        tok = tok[:, : int(pos.max()) + 1]  # as the tower does: the tail cannot matter
    emb = text.token_embed(tok)
    x = torch.cat([emb[:, :1], ctx.to(emb.dtype), emb[:, 1 + m :]], dim=1)
    x = text.add_positions(x)
    x = text.transformer(x, causal=cfg.causal)
    x = text.proj(text.norm_final(x[torch.arange(len(tok)), pos]))
    return torch.nn.functional.normalize(x.float(), dim=-1)


def train_context(
    learner: PromptLearner, scale: float, x: torch.Tensor, y: torch.Tensor, steps: int,
    lr: float, every: tuple[int, ...] = (),
) -> dict[int, torch.Tensor]:  # fmt: skip
    """Train the context for ``steps`` full-batch steps; class embeddings at ``every``
    step count (and at the end, under ``steps``)."""
    opt = torch.optim.Adam([learner.ctx], lr=lr)
    snaps: dict[int, torch.Tensor] = {}
    for step in range(steps + 1):
        if step in every or step == steps:
            with torch.no_grad():
                snaps[step] = learner.class_embeddings()
        if step == steps:
            break
        loss = torch.nn.functional.cross_entropy(scale * x @ learner.class_embeddings().T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return snaps


@contextmanager
def frozen_towers(model) -> Iterator[dict[str, Any]]:
    """Turn off every tower weight's gradient for the block, then restore the flags and
    check by hashing that no weight changed; yields ``{"before", "unchanged"}`` (set on
    exit). A changed weight is a bug, never a user error, so it raises RuntimeError."""
    record: dict[str, Any] = {"before": model_fingerprint(model)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)  # only what the method learns is trained
    try:
        yield record
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    record["unchanged"] = model_fingerprint(model) == record["before"]
    if not record["unchanged"]:
        raise RuntimeError("prompt learning changed the model's weights")


def coop_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    return p["scale"] * x @ t["text"].T


def fit(shots: Shots, o: CoOpOptions) -> tuple[Tensors, Params]:
    emb = shots.embedder
    if emb is None:
        raise ClipforgeError(
            "coop needs the model's text tower (fit it through clipforge.adapt.fit)"
        )
    with frozen_towers(emb.model) as hashes:

        def learner() -> PromptLearner:
            return PromptLearner(emb.model, emb.tokenizer, shots.classnames, o.ctx,
                                 o.class_specific)  # fmt: skip

        steps, table = o.epochs, None
        if shots.has_val:
            xt, yt = shots.part("train")
            xv, yv = shots.part("val")
            grid = tuple(c for c in CHECKPOINTS if c <= o.max_epochs)
            snaps = train_context(learner(), shots.scale, xt, yt, max(grid), o.lr, grid)
            table = [({"epochs": c}, accuracy(shots.scale * xv @ snaps[c].T, yv)) for c in grid]
            steps = max(table, key=lambda r: (r[1], -r[0]["epochs"]))[0]["epochs"]
        final = learner()
        x, y = shots.part("all")
        text = train_context(final, shots.scale, x, y, steps, o.lr)[steps]
    before, unchanged = hashes["before"], hashes["unchanged"]
    params = {"epochs": steps, "lr": o.lr, "ctx": o.ctx, "class_specific": o.class_specific,
              "scale": shots.scale, "towers_unchanged": unchanged, "model_hash": before}  # fmt: skip
    return {"text": text, "ctx": final.ctx.detach().clone()}, chosen(shots, params, table)


register(
    "coop",
    Method(
        "CoOp: learned context vectors before the class name, both towers frozen (hashed)",
        fit, coop_logits, CoOpOptions, "Zhou et al. 2022, CoOp",
    ),
)  # fmt: skip
