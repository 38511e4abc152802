"""``cocoop``: CoOp's learned context, conditioned on each image (CoCoOp, Zhou et al. 2022,
"Conditional Prompt Learning for Vision-Language Models").

A small meta-net ``pi(x) = W2 relu(W1 x + b1) + b2`` (hidden width ``D / reduction``) maps
an image's normalised feature ``x`` to one bias added to every context vector, so the
prompts of image ``x`` are ``[start] v_1 + pi(x) .. v_M + pi(x) <class name>. [end]`` and
its logits are ``scale * cos(x, T(v + pi(x), c))`` for every class ``c``. Only ``v`` and the
meta-net are trained (Adam, cross-entropy over mini-batches of shots); both towers stay
frozen, which the fit checks by hashing the model (``params["towers_unchanged"]``).

``W2`` and ``b2`` start at zero, so before any step the prompts are CoOp's (the context
initialised to "a photo of a" at ``ctx = 4``): step 0 is the zero-shot prompt, and the
validation search (steps among checkpoints of one run, as in coop) may keep it. With a
meta-net of zeros the method *is* CoOp with the same context.

With ``class_aware`` the meta-net reads ``sqrt(D) x * t_c`` (``t_c`` the zero-shot class
embedding) and gives one bias per image and class: the class-aware text prompt (CTP) of
TOMML ("Task-Oriented Multi-Modal Mutual Learning for Vision-Language Models"), so each class's
prompt takes the image information related to its label instead of all prompts sharing
one bias. TOMML's other half, text-guided feature tuning, re-weights the image tower's
tokens by the text and so needs the tower run in every step, not the cached features
this loop trains on; it is not here.

Cost: the prompts differ per image, so scoring runs the text tower on ``N x C`` prompts
for ``N`` images and ``C`` classes (CoOp runs it on ``C`` prompts once, at fit time). The
adapter therefore holds the prompt token ids, the context and the meta-net, and scoring
needs the model: load it with one (``clipforge.adapt.load(path, embedder)``, which checks
the model's fingerprint), and it encodes ``chunk`` images' prompts per text-tower batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, accuracy, chosen, register
from clipforge.adapt.coop import CHECKPOINTS, PromptLearner, encode_prompts, frozen_towers
from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.ranges import count, count0, integers, positive

META_KEYS = ("meta.w1", "meta.b1", "meta.w2", "meta.b2")
CHUNK = 64  # images whose N x C prompts share one text-tower batch when scoring


@dataclass
class CoCoOpOptions:
    ctx: int = option(4, "learned context vectors", check=integers(1, 64))
    reduction: int = option(16, "meta-net hidden width = feature dim / this (CoCoOp: 16)",
                            check=integers(1, 4096))  # fmt: skip
    steps: int = option(50, "Adam steps when there is no validation split", check=count0)
    max_steps: int = option(100, "longest run the validation search considers", check=count)
    batch: int = option(16, "shots per step (CoCoOp: 1; each costs C text encodes)",
                        check=count)  # fmt: skip
    lr: float = option(2e-3, "Adam learning rate of the context and meta-net", check=positive)
    class_aware: bool = option(False, "meta-net reads image x class text (TOMML's CTP)")


def meta_bias(t: Tensors, x: torch.Tensor) -> torch.Tensor:
    """``pi(x) [N, width]``: the meta-net's bias for each image feature."""
    h = torch.relu(x @ t["meta.w1"].T + t["meta.b1"])
    return h @ t["meta.w2"].T + t["meta.b2"]


def conditional_logits(
    text_tower, t: Tensors, scale: float, x: torch.Tensor, chunk: int = CHUNK
) -> torch.Tensor:
    """``scale * cos(x_n, T(v + pi(x_n), c)) [N, C]``, ``chunk`` images per tower batch."""
    tokens, ctx = t["tokens"], t["ctx"]
    c, (m, w) = len(tokens), ctx.shape
    out = []
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        if "class_text" in t:  # TOMML's class-aware prompts: one bias per (image, class)
            bias = meta_bias(t, xb[:, None, :] * t["class_text"][None] * xb.shape[1] ** 0.5)
            prompts = ctx + bias[:, :, None, :]
        else:  # every image's context, repeated for each class: [n, C, M, W]
            prompts = (ctx + meta_bias(t, xb)[:, None, :])[:, None].expand(-1, c, m, w)
        feats = encode_prompts(text_tower, tokens.repeat(len(xb), 1), prompts.reshape(-1, m, w))
        out.append(scale * (feats.view(len(xb), c, -1) * xb[:, None, :]).sum(dim=-1))
    return torch.cat(out) if out else x.new_zeros(0, c)


def cocoop_logits(t: Tensors, p: Params, x: torch.Tensor, model) -> torch.Tensor:
    with torch.no_grad():
        return conditional_logits(model.text, t, p["scale"], x)


def init_tensors(
    learner: PromptLearner, dim: int, reduction: int, class_text: torch.Tensor | None = None
) -> Tensors:
    """Context from CoOp's initialisation, meta-net with a zero output layer (see above);
    with ``class_text`` (the zero-shot classifier), the class-aware variant."""
    width, hidden = learner.ctx.shape[-1], max(1, dim // reduction)
    g = torch.Generator().manual_seed(0)
    # nn.Linear's default: uniform within 1/sqrt(fan_in).
    w1 = (torch.rand(hidden, dim, generator=g) * 2 - 1) / dim**0.5
    b1 = (torch.rand(hidden, generator=g) * 2 - 1) / dim**0.5
    t = {"tokens": learner.tokens, "ctx": learner.ctx.detach().clone(), "meta.w1": w1,
         "meta.b1": b1, "meta.w2": torch.zeros(width, hidden), "meta.b2": torch.zeros(width)}  # fmt: skip
    if class_text is not None:
        t["class_text"] = class_text.clone()
    return t


def train(
    text_tower, t: Tensors, scale: float, x: torch.Tensor, y: torch.Tensor, steps: int,
    batch: int, lr: float, seed: int, every: tuple[int, ...] = (),
) -> dict[int, Tensors]:  # fmt: skip
    """``steps`` Adam steps on mini-batches of ``batch`` shots drawn by ``seed``; copies of
    the trained tensors at each step count in ``every`` and at ``steps``."""
    fixed = {k: v for k, v in t.items() if k in ("tokens", "class_text")}
    learned = {k: v.clone().requires_grad_(True) for k, v in t.items() if k not in fixed}
    opt = torch.optim.Adam(list(learned.values()), lr=lr)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    snaps: dict[int, Tensors] = {}
    pos = 0
    for step in range(steps + 1):
        if step in every or step == steps:
            snaps[step] = {**fixed, **{k: v.detach().clone() for k, v in learned.items()}}
        if step == steps:
            break
        if pos + min(batch, len(y)) > len(y):  # a fresh pass over the shots
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + batch]
        pos += len(idx)
        logits = conditional_logits(text_tower, {**fixed, **learned}, scale, x[idx])
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return snaps


def fit(shots: Shots, o: CoCoOpOptions) -> tuple[Tensors, Params]:
    emb = shots.embedder
    if emb is None:
        raise ClipforgeError(
            "cocoop needs the model's text tower (fit it through clipforge.adapt.fit)"
        )
    text_tower = emb.model.text
    with frozen_towers(emb.model) as hashes:
        learner = PromptLearner(emb.model, emb.tokenizer, shots.classnames, o.ctx, False)
        start = init_tensors(learner, shots.x.shape[1], o.reduction,
                             shots.text if o.class_aware else None)  # fmt: skip
        steps, table = o.steps, None
        if shots.has_val:
            xt, yt = shots.part("train")
            xv, yv = shots.part("val")
            grid = tuple(c for c in CHECKPOINTS if c <= o.max_steps)
            snaps = train(text_tower, start, shots.scale, xt, yt, max(grid), o.batch, o.lr,
                          shots.seed, grid)  # fmt: skip
            with torch.no_grad():
                table = [({"steps": c}, accuracy(conditional_logits(
                    text_tower, snaps[c], shots.scale, xv), yv)) for c in grid]  # fmt: skip
            steps = max(table, key=lambda r: (r[1], -r[0]["steps"]))[0]["steps"]
        x, y = shots.part("all")
        tensors = train(text_tower, start, shots.scale, x, y, steps, o.batch, o.lr, shots.seed)
        tensors = tensors[steps]
    params = {"steps": steps, "lr": o.lr, "ctx": o.ctx, "batch": o.batch,
              "reduction": o.reduction, "class_aware": o.class_aware, "scale": shots.scale,
              "towers_unchanged": hashes["unchanged"], "model_hash": hashes["before"]}  # fmt: skip
    return tensors, chosen(shots, params, table)


register(
    "cocoop",
    Method(
        "CoCoOp: CoOp's context plus an image-conditioned bias (meta-net); towers frozen "
        "(hashed); scoring runs the text tower on N x C prompts",
        fit, cocoop_logits, CoCoOpOptions, "Zhou et al. 2022, CoCoOp", needs_model=True,
    ),
)  # fmt: skip
