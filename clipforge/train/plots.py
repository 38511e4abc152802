"""Training-curve plot written into the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write files, never open windows
import matplotlib.pyplot as plt  # noqa: E402


def plot_curve(metrics_path: str | Path, out: str | Path) -> None:
    """Loss over steps (left) and held-out zero-shot / retrieval over steps (right)."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "zeroshot/top1" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    if evals:
        steps = [r["step"] for r in evals]
        ax2.plot(steps, [r["zeroshot/top1"] for r in evals], "o-", label="zero-shot top-1")
        ax2.plot(steps, [r["retrieval/i2t_R@1"] for r in evals], "s-", label="image->text R@1")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="lower right")
    ax2.set_xlabel("step")
    ax2.set_title("held-out evaluation")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
