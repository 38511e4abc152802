"""Out-of-distribution detection with zero-shot scores.

In-distribution (ID) images belong to the classification classes; OOD images show
held-out shapes and colours the classes do not name. Two scores, both higher for ID:

* MCM (Ming et al., 2022, "Delving into OOD detection with vision-language
  representations"): the maximum of ``softmax(cos(image, class prompts) / tau)``,
  with ``tau = 1`` as the paper recommends.
* energy (Liu et al., 2020): ``T * logsumexp(logits / T)`` with the model's own logits
  ``logit_scale * cos`` and ``T = 1`` (the negative free energy).

Reported per score: AUROC (ID as the positive class; ties count half) and FPR@95, the
fraction of OOD images accepted at the threshold that keeps 95% of ID images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clipforge.eval import shapes_data
from clipforge.eval.datasets import ClassificationData, ImageSet
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


@dataclass
class OODData:
    id: ClassificationData
    ood: ImageSet


def auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """P(ID score > OOD score) + P(tie) / 2: the area under the ROC curve, exactly."""
    allv = torch.cat([id_scores, ood_scores]).double()
    # Average ranks of tied values make the Mann-Whitney statistic count ties as half.
    order = allv.argsort()
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, len(allv) + 1, dtype=torch.double)
    uniq, inv = allv.unique(return_inverse=True)
    mean_rank = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, ranks)
    mean_rank /= torch.bincount(inv, minlength=len(uniq)).double()
    r = mean_rank[inv]
    n1, n2 = len(id_scores), len(ood_scores)
    u = r[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n2))


def fpr_at_tpr(id_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """Fraction of OOD scores >= the highest threshold that accepts ``tpr`` of ID scores."""
    desc = id_scores.sort(descending=True).values
    threshold = desc[math.ceil(tpr * len(desc)) - 1]
    return float((ood_scores >= threshold).float().mean())


def mcm_score(cos: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    return (cos / tau).softmax(dim=1).max(dim=1).values


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def run(ctx: EvalContext, data: OODData) -> TaskResult:
    w = ctx.embedder.classifier(data.id.classnames, data.id.templates)
    cos_id = ctx.embedder.images(data.id.images) @ w.T
    cos_ood = ctx.embedder.images(data.ood, desc="embed OOD images") @ w.T
    metrics = {}
    scores = {
        "mcm": (mcm_score(cos_id), mcm_score(cos_ood)),
        "energy": (energy_score(ctx.logit_scale * cos_id), energy_score(ctx.logit_scale * cos_ood)),
    }
    for name, (a, b) in scores.items():
        metrics[f"{name}/auroc"] = auroc(a, b)
        metrics[f"{name}/fpr95"] = fpr_at_tpr(a, b)
    details = {"ID images": len(cos_id), "OOD images": len(cos_ood), "logit scale": ctx.logit_scale}
    return TaskResult(metrics, details=details)


def _shapes(ctx: EvalContext) -> OODData:
    return OODData(
        shapes_data.classification(ctx.image_size, ctx.seed),
        shapes_data.ood(ctx.image_size, ctx.seed),
    )


TASKS.add(
    "ood",
    Task(
        "OOD detection of held-out shapes/colours: MCM and energy scores, AUROC and FPR@95",
        ("ood",),
        _shapes,
        run,
    ),
)
