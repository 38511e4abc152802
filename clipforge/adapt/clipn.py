"""``clipn``: out-of-distribution detection with learned "no" prompts beside the MCM score
(CLIPN, Wang et al. 2023, "CLIPN for Zero-Shot OOD Detection: Teaching CLIP to Say No").

Every class ``c`` has its zero-shot "yes" embedding ``t_c`` (the prompt-ensemble
classifier) and a "no" embedding ``n_c``: the text tower's feature of
``[start] v_1 .. v_M <class name>. [end]``, the ``M`` context vectors learned (as in
coop) and shared by every class or, with ``class_specific``, one set per class. At
``ctx = 4`` they start as the words "a photo of no". For an image feature ``x``,
``s = scale * x t^T`` and ``r = scale * x n^T``, the probability that the image is *not*
class ``c`` is ``q_c = sigmoid(r_c - s_c)`` (a two-way softmax between the yes and the no
prompt of ``c``). Training (Adam on the shots, towers frozen and hashed) asks each shot to
say "no" to every other class and "not no" to its own: binary cross-entropy of ``q`` with
targets 1 off its class and 0 at it, the two parts averaged separately (one own class
against ``C - 1`` others). This is CLIPN's image-text binary-opposite loss; the few shots
replace its pre-training captions, and no OOD image is used.

Scores, higher for in-distribution images:

* ``mcm``: ``max softmax(x t^T / tau)``, ``tau = 1`` (Ming et al. 2022; as
  :func:`clipforge.eval.ood.mcm_score`);
* ``clipn``: CLIPN's agreeing-to-differ score ``sum_c softmax(s)_c (1 - q_c)``: the
  probability of the predicted classes weighted by how much their no prompts agree.

Classification is left as zero-shot (``logits`` are ``s``). The number of steps is chosen
on the validation shots by the balanced accuracy of the yes/no decisions ``q_c > 1/2``,
in-distribution images only, among checkpoints of one run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipforge.adapt.base import Method, Params, Shots, Tensors, chosen, register
from clipforge.adapt.coop import CHECKPOINTS, PromptLearner, frozen_towers
from clipforge.config import option
from clipforge.errors import ClipforgeError
from clipforge.eval.ood import mcm_score
from clipforge.ranges import count, count0, integers, positive

NO_WORDS = "a photo of no"


@dataclass
class CLIPNOptions:
    ctx: int = option(4, "learned context vectors of the no prompts", check=integers(1, 64))
    class_specific: bool = option(False, "one no context per class instead of one shared")
    epochs: int = option(50, "full-batch steps when there is no validation split", check=count0)
    max_epochs: int = option(100, "longest run the validation search considers", check=count)
    lr: float = option(2e-3, "Adam learning rate of the no context", check=positive)


def no_probability(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``q = sigmoid(r - s)``: P(not class c) between the yes logits ``s`` and no logits ``r``."""
    return torch.sigmoid(r - s)


def clipn_score(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``sum_c softmax(s)_c (1 - q_c)``, higher = in distribution."""
    return (s.softmax(dim=1) * (1 - no_probability(s, r))).sum(dim=1)


def opposite_loss(s: torch.Tensor, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean BCE of ``q`` against "yes" at the label, plus the mean BCE against "no" at the
    other classes."""
    own = torch.nn.functional.one_hot(y, s.shape[1]).bool()
    d = r - s
    bce = torch.nn.functional.binary_cross_entropy_with_logits(d, (~own).float(), reduction="none")
    return bce[own].mean() + (bce[~own].mean() if s.shape[1] > 1 else 0.0)


def yes_no_accuracy(s: torch.Tensor, r: torch.Tensor, y: torch.Tensor) -> float:
    """Balanced accuracy of ``q > 1/2`` as "not this class": own class and others alike."""
    own = torch.nn.functional.one_hot(y, s.shape[1]).bool()
    says_no = no_probability(s, r) > 0.5
    at_own = float((~says_no[own]).float().mean())
    return (at_own + float(says_no[~own].float().mean())) / 2 if s.shape[1] > 1 else at_own


def clipn_logits(t: Tensors, p: Params, x: torch.Tensor) -> torch.Tensor:
    return p["scale"] * x @ t["text"].T


def clipn_ood(t: Tensors, p: Params, x: torch.Tensor) -> dict[str, torch.Tensor]:
    s, r = p["scale"] * x @ t["text"].T, p["scale"] * x @ t["no"].T
    return {"mcm": mcm_score(x @ t["text"].T, p["tau"]), "clipn": clipn_score(s, r)}


def train_no(
    learner: PromptLearner, text: torch.Tensor, scale: float, x: torch.Tensor, y: torch.Tensor,
    steps: int, lr: float, every: tuple[int, ...] = (),
) -> dict[int, torch.Tensor]:  # fmt: skip
    """``steps`` full-batch Adam steps of the no context; no embeddings at ``every`` step
    count and at ``steps``."""
    opt = torch.optim.Adam([learner.ctx], lr=lr)
    s = scale * x @ text.T
    snaps: dict[int, torch.Tensor] = {}
    for step in range(steps + 1):
        if step in every or step == steps:
            with torch.no_grad():
                snaps[step] = learner.class_embeddings()
        if step == steps:
            break
        loss = opposite_loss(s, scale * x @ learner.class_embeddings().T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return snaps


def fit(shots: Shots, o: CLIPNOptions) -> tuple[Tensors, Params]:
    emb = shots.embedder
    if emb is None:
        raise ClipforgeError(
            "clipn needs the model's text tower (fit it through clipforge.adapt.fit)"
        )
    with frozen_towers(emb.model) as hashes:

        def learner() -> PromptLearner:
            return PromptLearner(emb.model, emb.tokenizer, shots.classnames, o.ctx,
                                 o.class_specific, init_words=NO_WORDS)  # fmt: skip

        steps, table = o.epochs, None
        if shots.has_val:
            xt, yt = shots.part("train")
            xv, yv = shots.part("val")
            grid = tuple(c for c in CHECKPOINTS if c <= o.max_epochs)
            snaps = train_no(learner(), shots.text, shots.scale, xt, yt, max(grid), o.lr, grid)
            sv = shots.scale * xv @ shots.text.T
            table = [({"epochs": c}, yes_no_accuracy(sv, shots.scale * xv @ snaps[c].T, yv))
                     for c in grid]  # fmt: skip
            steps = max(table, key=lambda r: (r[1], -r[0]["epochs"]))[0]["epochs"]
        final = learner()
        x, y = shots.part("all")
        no = train_no(final, shots.text, shots.scale, x, y, steps, o.lr)[steps]
    params = {"epochs": steps, "lr": o.lr, "ctx": o.ctx, "class_specific": o.class_specific,
              "scale": shots.scale, "tau": 1.0, "towers_unchanged": hashes["unchanged"],
              "model_hash": hashes["before"]}  # fmt: skip
    tensors = {"text": shots.text, "no": no, "ctx": final.ctx.detach().clone()}
    return tensors, chosen(shots, params, table)


register(
    "clipn",
    Method(
        "CLIPN: learned 'no' prompts beside MCM for OOD detection (adapt eval --ood); "
        "classifies as zero-shot; towers frozen (hashed)",
        fit, clipn_logits, CLIPNOptions, "Wang et al. 2023, CLIPN", ood=clipn_ood,
    ),
)  # fmt: skip
