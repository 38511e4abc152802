"""The evaluation report's plots: confusion matrix, reliability diagram, modality-gap PCA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: evaluation writes files, never opens windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig: plt.Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def confusion(cm: torch.Tensor, classnames: Sequence[str], out: Path) -> Path:
    """Row-normalised confusion matrix (true class per row); names shown up to 60 classes."""
    c = len(classnames)
    norm = cm.float() / cm.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(12.0, 3 + 0.18 * c)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm.numpy(), cmap="viridis", vmin=0, vmax=1)
    if c <= 60:
        ax.set_xticks(range(c), classnames, rotation=90, fontsize=6)
        ax.set_yticks(range(c), classnames, fontsize=6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("zero-shot confusion matrix (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out)


def reliability(
    confidence: torch.Tensor, accuracy: torch.Tensor, counts: torch.Tensor, ece: float, out: Path
) -> Path:
    """Per-bin accuracy against confidence (bars), with the diagonal of perfect calibration."""
    bins = len(counts)
    edges = torch.linspace(0, 1, bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).numpy()
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.bar(centres, accuracy.numpy(), width=1 / bins, edgecolor="k", alpha=0.8, label="accuracy")
    gap = (confidence - accuracy).numpy()
    ax.bar(
        centres, gap, bottom=accuracy.numpy(), width=1 / bins, color="tab:red", alpha=0.3,
        label="gap to confidence",
    )  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {100 * ece:.2f}%)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centres, counts.numpy(), width=1 / bins, color="gray")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("images")
    ax2.set_xlim(0, 1)
    return _save(fig, out)


def modality_pca(image_2d: torch.Tensor, text_2d: torch.Tensor, gap: float, out: Path) -> Path:
    """Image and text embeddings projected on their first two principal components."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(image_2d[:, 0], image_2d[:, 1], s=6, alpha=0.6, label="images")
    ax.scatter(text_2d[:, 0], text_2d[:, 1], s=6, alpha=0.6, label="texts")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"modality gap (centroid distance {gap:.3f})")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out)
