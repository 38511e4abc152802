"""The modality gap (Liang et al., 2022): image and text embeddings live in separate cones.

Measured on paired images and captions (each image with its first caption):

* ``centroid_distance``: ``|| mean(image embeddings) - mean(text embeddings) ||``;
* ``linear_separability``: held-out accuracy of a logistic regression telling image
  from text embeddings (trained on one half of the pairs, tested on the other), 0.5 when
  the modalities overlap, 1.0 when a hyperplane splits them;
* ``paired_cosine``: mean cosine similarity of an image and its own caption;

and a plot of both modalities on their joint first two principal components.
"""

from __future__ import annotations

import torch

from clipforge.eval import shapes_data
from clipforge.eval.datasets import RetrievalData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def centroid_distance(img: torch.Tensor, txt: torch.Tensor) -> float:
    return float((img.mean(dim=0) - txt.mean(dim=0)).norm())


def linear_separability(img: torch.Tensor, txt: torch.Tensor, seed: int = 0) -> float:
    """Test accuracy of a linear image-vs-text classifier; pairs are split, not vectors,
    so no caption of a test image was seen in training."""
    from sklearn.linear_model import LogisticRegression

    n = len(img)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = perm[: n // 2], perm[n // 2 :]

    def xy(idx: torch.Tensor) -> tuple:
        x = torch.cat([img[idx], txt[idx]]).numpy()
        y = torch.cat([torch.zeros(len(idx)), torch.ones(len(idx))]).numpy()
        return x, y

    clf = LogisticRegression(max_iter=1000).fit(*xy(tr))
    return float(clf.score(*xy(te)))


def pca_2d(img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both modalities projected on the first two principal components of their union."""
    allv = torch.cat([img, txt]).double()
    centred = allv - allv.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    proj = (centred @ v[:2].T).float()
    return proj[: len(img)], proj[len(img) :]


def run(ctx: EvalContext, data: RetrievalData) -> TaskResult:
    from clipforge.eval import plots

    img = ctx.embedder.images(data.images)
    txt = ctx.embedder.texts([caps[0] for caps in data.captions])
    gap = centroid_distance(img, txt)
    metrics = {
        "centroid_distance": gap,
        "linear_separability": linear_separability(img, txt, ctx.seed),
        "paired_cosine": float((img * txt).sum(dim=1).mean()),
    }
    p_img, p_txt = pca_2d(img, txt)
    drawn = ctx.plot(
        lambda f: plots.modality_pca(p_img, p_txt, gap, f), "modality-gap-pca.png",
        "modality gap PCA",
    )  # fmt: skip
    return TaskResult(metrics, drawn, {"pairs": len(img)})


def _shapes(ctx: EvalContext) -> RetrievalData:
    return shapes_data.retrieval(ctx.image_size, ctx.seed)


TASKS.add(
    "modality_gap",
    Task(
        "centroid distance and linear separability of image vs text embeddings, 2-D PCA plot",
        ("retrieval",),
        _shapes,
        run,
    ),
)
