"""Few-shot adaptation of a frozen CLIP: one harness for training-free and trained methods.

``adapter = clipforge.adapt.fit("gda", model, "photos/train", shots=16, seed=0)``;
``adapter.logits(features_or_images)``; ``adapter.save("a.safetensors")`` and
``clipforge.adapt.load("a.safetensors", embedder)``. Each method is one module here that
registers itself in :data:`METHODS`; importing the package imports them all.
"""

# Each method module registers itself on import.
from clipforge.adapt import (  # noqa: F401
    caps,
    clipn,
    cocoop,
    coop,
    gda,
    linear_probe,
    tca,
    tip,
    tip_f,
    zeroshot,
    zslp,
)
from clipforge.adapt.base import METHODS, Adapter, Shots, load
from clipforge.adapt.harness import (
    evaluate,
    evaluate_ood,
    fit,
    fit_shots,
    make_embedder,
    prepare,
    shots_of,
)

__all__ = [
    "METHODS", "Adapter", "Shots", "evaluate", "evaluate_ood", "fit", "fit_shots", "load",
    "make_embedder", "prepare", "shots_of",
]  # fmt: skip
