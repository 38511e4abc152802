"""``clipforge adapt bench``: every method x shot count x seed on one train/test pair.

The training folder and the test folder are each embedded once (the embedder's cache);
every fit slices the training features. For each (method, shots) the result holds the
test top-1 and ECE of every seed, their mean and spread (population standard deviation
over seeds), the fit time (features cached, so it is the method alone) and the
hyper-parameters each seed chose. Choices are made by :func:`clipforge.adapt.fit_shots`
from the training shots only; the test labels enter only :func:`scores`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clipforge.adapt.base import METHODS
from clipforge.adapt.harness import check_classes, fit_shots, prepare, scores, shots_of
from clipforge.eval.datasets import ClassificationData
from clipforge.eval.embed import Embedder


def resolve_methods(spec: str) -> list[str]:
    """``all`` or a comma-separated list of registered methods (each checked)."""
    if spec == "all":
        return METHODS.names()
    names = [m.strip() for m in spec.split(",") if m.strip()]
    for m in names:
        METHODS.get(m)
    return names


def usable_methods(
    spec: str, methods: Sequence[str], train: ClassificationData
) -> tuple[list[str], dict[str, str]]:
    """``methods`` less those the training data cannot feed, when ``spec`` is ``all``
    (CapS-Adapter on a folder without captions), with the reason for each one left out.
    A method named explicitly stays, so that it fails with its own one-line reason."""
    if spec != "all" or train.captions is not None:
        return list(methods), {}
    left = {m: "the training folder has no captions" for m in methods
            if METHODS.get(m).needs_captions}  # fmt: skip
    return [m for m in methods if m not in left], left


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}


def bench(
    embedder: Embedder,
    train: ClassificationData,
    test: ClassificationData,
    methods: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int],
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The results mapping (see the module docstring); ``options[method]`` are passed on."""
    options = options or {}
    prep = prepare(embedder, train)
    xtest = embedder.images(test.images, desc="embed test images")
    out: dict[str, Any] = {"methods": {}, "shots": list(shots), "seeds": list(seeds),
                           "classes": list(train.classnames), "test_images": len(test.labels),
                           "train_images": len(train.labels)}  # fmt: skip
    bar = tqdm(total=len(methods) * len(shots) * len(seeds), desc="fit", unit="fit",
               disable=not embedder.progress, leave=False)  # fmt: skip
    for m in methods:
        rows: dict[str, Any] = {}
        for k in shots:
            per_seed = []
            for seed in seeds:
                bar.set_postfix_str(f"{m} {k} shots seed {seed}")
                a = fit_shots(m, shots_of(prep, k, seed, embedder), **options.get(m, {}))
                if not per_seed:
                    check_classes(a, test)
                # A method that encodes images itself is given the images, not features.
                spec = METHODS.get(m)
                s = scores(a.logits(test.images if spec.needs_images else xtest), test.labels)
                params = {n: v for n, v in a.params.items() if n != "scale"}
                per_seed.append({"seed": seed, **s, "fit_seconds": a.info["fit_seconds"],
                                 "params": params})  # fmt: skip
                bar.update()
            rows[str(k)] = {
                "top1": _stats([r["top1"] for r in per_seed]),
                "ece": _stats([r["ece"] for r in per_seed]),
                "fit_seconds": _stats([r["fit_seconds"] for r in per_seed]),
                "seeds": per_seed,
            }
        out["methods"][m] = rows
    bar.close()
    return out


def report(results: dict[str, Any], title: str) -> str:
    """A Markdown table: top-1 mean +- spread per method and shot count, then ECE and fit
    time at the largest shot count."""
    shots = results["shots"]
    top = max(shots)
    head = "| method | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in shots)
    head += f" | ECE @{top} | fit s @{top} |"
    lines = [f"# {title}", "",
             f"{len(results['classes'])} classes, {results['test_images']} test images, "
             f"seeds {results['seeds']}; top-1 % as mean +- std over seeds.", "",
             head, "|" + "---|" * (len(shots) + 3)]  # fmt: skip
    for m, rows in results["methods"].items():
        cells = [f"{100 * rows[str(k)]['top1']['mean']:.1f} +- {100 * rows[str(k)]['top1']['std']:.1f}"
                 for k in shots]  # fmt: skip
        last = rows[str(top)]
        cells += [f"{last['ece']['mean']:.3f}", f"{last['fit_seconds']['mean']:.3f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m, why in results.get("skipped", {}).items():
        lines.append(f"\nNot run: {m} ({why}).")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> Path:
    """Accuracy against shots (log axis), one line per method, bars = spread over seeds."""
    from clipforge.eval.plots import plt  # the evaluator's headless matplotlib

    fig, ax = plt.subplots(figsize=(6, 4))
    shots = results["shots"]
    for m, rows in results["methods"].items():
        mean = [100 * rows[str(k)]["top1"]["mean"] for k in shots]
        std = [100 * rows[str(k)]["top1"]["std"] for k in shots]
        ax.errorbar(shots, mean, yerr=std, marker="o", capsize=3, label=m)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write(results: dict[str, Any], folder: Path, title: str) -> list[Path]:
    """``results.json``, ``report.md`` and ``accuracy_vs_shots.png`` in ``folder``."""
    from clipforge.outputs import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write(folder / "report.md", report(results, title))
    return [
        folder / "results.json",
        folder / "report.md",
        plot(results, folder / "accuracy_vs_shots.png"),
    ]
