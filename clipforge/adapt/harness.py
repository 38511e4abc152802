"""The one way in: :func:`fit` a registered method on a few shots of an image folder, and
:func:`evaluate` an adapter on a test set.

Every method reads its features from the one evaluator's :class:`Embedder` and its cache:
the training folder is embedded once per (model, folder), and every method, shot count
and seed slices those features, so a second method on the same shots embeds nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.adapt.base import METHODS, Adapter, Shots, carve_validation, draw_shots
from clipforge.config import check_ranges, from_dict
from clipforge.errors import ClipforgeError
from clipforge.eval.calibration import expected_calibration_error
from clipforge.eval.datasets import ClassificationData, ImageSet, image_folder
from clipforge.eval.embed import Embedder


def make_embedder(
    model: Any, cache_dir: str | os.PathLike[str] | None = None, progress: bool = False,
    precision: str = "fp32",
) -> Embedder:  # fmt: skip
    """The evaluator's embedder for ``model`` (a CLIP, a run folder or a checkpoint)."""
    from clipforge.models import load, tokenizer_for

    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    tok = tokenizer_for(model)
    return Embedder(model, tok, cache_dir=cache_dir, progress=progress, precision=precision)


def as_data(data: ClassificationData | str | os.PathLike[str]) -> ClassificationData:
    return data if isinstance(data, ClassificationData) else image_folder(Path(data))


@dataclass
class Prepared:
    """A training set's features and zero-shot classifier, shared by every fit on it."""

    data: ClassificationData
    x: torch.Tensor
    text: torch.Tensor
    scale: float


def prepare(embedder: Embedder, data: ClassificationData) -> Prepared:
    x = embedder.images(data.images, desc="embed training images")
    text = embedder.classifier(data.classnames, data.templates)
    scale = float(embedder.model.logit_scale_exp().detach())
    return Prepared(data, x, text, scale)


def shots_of(prep: Prepared, shots: int, seed: int, embedder: Embedder | None = None) -> Shots:
    """``shots`` images per class drawn by ``seed``, with a validation part carved from them."""
    d = prep.data
    idx = draw_shots(d.labels, shots, seed, d.classnames)
    y = d.labels[idx]
    train, val = carve_validation(y, seed)
    captions = [d.captions[i] for i in idx.tolist()] if d.captions is not None else None
    return Shots(
        prep.x[idx], y, train, val, prep.text, prep.scale, list(d.classnames), seed,
        d.templates, embedder, captions,
    )  # fmt: skip


def options_of(method: str, opts: dict[str, Any]) -> Any:
    spec = METHODS.get(method)
    if spec.options is None:
        if opts:
            raise ClipforgeError(f"method {method!r} takes no options (got {', '.join(opts)})")
        return None
    o = from_dict(spec.options, opts, source=f"{method} options")
    check_ranges(o)
    return o


def fit_shots(method: str, shots: Shots, **opts: Any) -> Adapter:
    """Fit ``method`` on prepared shots (what :func:`fit` and the bench call)."""
    spec = METHODS.get(method)
    options = options_of(method, opts)
    start = time.perf_counter()
    tensors, params = spec.fit(shots, options)
    seconds = time.perf_counter() - start
    info = {
        "classnames": shots.classnames,
        "shots": int(len(shots.y) // max(shots.num_classes, 1)),
        "seed": shots.seed,
        "fit_seconds": round(seconds, 4),
        "model": shots.embedder.fingerprint if shots.embedder is not None else None,
        "options": {k: v for k, v in (vars(options) if options is not None else {}).items()},
    }
    return Adapter(method, tensors, params, info, shots.embedder)


def fit(
    method: str,
    model: Any,
    train_set: ClassificationData | str | os.PathLike[str],
    shots: int = 16,
    seed: int = 0,
    *,
    embedder: Embedder | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **opts: Any,
) -> Adapter:
    """Fit ``method`` on ``shots`` images per class of ``train_set`` (an image folder or
    :class:`ClassificationData`) drawn by ``seed``. ``model`` is a CLIP, a run folder or a
    checkpoint; pass ``embedder`` to share its feature cache between calls. ``opts`` are
    the method's options (``clipforge adapt --help`` lists them)."""
    METHODS.get(method)  # an unknown name fails before anything is embedded
    options_of(method, opts)
    if embedder is None and model is None:
        raise ClipforgeError("fit needs a model or an embedder")
    emb = embedder or make_embedder(model, cache_dir)
    prep = prepare(emb, as_data(train_set))
    return fit_shots(method, shots_of(prep, shots, seed, emb), **opts)


def check_classes(adapter: Adapter, data: ClassificationData) -> None:
    want = adapter.info["classnames"]
    if list(data.classnames) != list(want):
        raise ClipforgeError(
            f"{data.name}: classes {data.classnames} differ from the adapter's {want}"
        )


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy and ECE (15 bins) of the softmax of ``logits``."""
    conf, pred = logits.softmax(dim=1).max(dim=1)
    correct = (pred == labels).float()
    return {
        "top1": int(correct.sum()) / len(labels),
        "ece": expected_calibration_error(conf, correct),
    }


def evaluate(adapter: Adapter, data: ClassificationData | str | os.PathLike[str]) -> dict:
    """Top-1 and ECE of ``adapter`` on a labelled image folder with the adapter's classes."""
    data = as_data(data)
    check_classes(adapter, data)
    return scores(adapter.logits(data.images), data.labels)


def evaluate_ood(
    adapter: Adapter,
    data: ClassificationData | str | os.PathLike[str],
    ood: ImageSet | ClassificationData | str | os.PathLike[str],
) -> dict[str, dict[str, float]]:
    """AUROC and FPR@95 (:mod:`clipforge.eval.ood`: ID is the positive class) of each of
    ``adapter``'s OOD scores, ``data`` holding in-distribution images of its classes and
    ``ood`` (images, or an image folder whose labels are not read) images of none of them."""
    from clipforge.eval.ood import auroc, fpr_at_tpr

    data = as_data(data)
    ood_images = ood if isinstance(ood, ImageSet) else as_data(ood).images
    check_classes(adapter, data)
    id_scores, ood_scores = adapter.ood_scores(data.images), adapter.ood_scores(ood_images)
    return {
        name: {"auroc": auroc(s, ood_scores[name]), "fpr95": fpr_at_tpr(s, ood_scores[name])}
        for name, s in id_scores.items()
    }
