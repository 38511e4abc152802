"""The registry of evaluation tasks and what a task receives and returns.

A task is one module under ``clipforge/eval/`` that registers a :class:`Task` in
:data:`TASKS`. It says which kinds of data set it accepts (``"classification"``,
``"retrieval"``, ``"choice"``), how to build its default data from the shapes world, and
how to turn data plus an :class:`EvalContext` into a :class:`TaskResult`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipforge.data.tokenizer import Tokenizer
from clipforge.registry import Registry

if TYPE_CHECKING:  # eval.embed imports the models, which tasks need not load
    from clipforge.eval.embed import Embedder
    from clipforge.models import CLIP

# Modules holding registered tasks, in report order; importing one registers its task.
TASK_MODULES: tuple[str, ...] = (
    "zeroshot",
    "retrieval",
    "linear_probe",
    "knn",
    "compositional",
    "counting",
    "ood",
    "calibration",
    "modality_gap",
    "long_captions",
    "captioning",
    "region_retrieval",
)


@dataclass
class EvalContext:
    """Everything a task needs besides its data: the model, cached embeddings, a folder.

    ``out_dir`` is None when the results stay in memory (evaluations during training):
    tasks then draw no plots. ``split``, ``per_class`` and ``scenes`` choose the
    shapes-world sets (None: each set's default size).
    """

    model: CLIP
    tokenizer: Tokenizer
    embedder: Embedder
    out_dir: Path | None
    seed: int = 0
    split: str = "test"
    per_class: int | None = None
    scenes: int | None = None

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature ``exp(t)``, capped as in training: the scale its
        softmax over prompts was trained with."""
        return float(self.model.logit_scale_exp().detach())

    @property
    def image_size(self) -> int:
        return int(self.model.cfg.vision.image_size)

    def plot(self, draw: Callable[[Path], Path], name: str, label: str) -> dict[str, str]:
        """``{label: file}`` after ``draw(OUT/name)``, or nothing when there is no folder."""
        if self.out_dir is None:
            return {}
        return {label: draw(self.out_dir / name).name}


@dataclass
class TaskResult:
    """Scalar metrics (fractions in [0, 1] unless the name says otherwise), plot files
    (relative to the output folder) and free-form details for the report."""

    metrics: dict[str, float]
    plots: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A registered evaluation task.

    ``accepts`` lists the data kinds ``run`` understands; ``shapes`` builds the default
    data set from the shapes world for a model of the given image size. ``unavailable``
    says why the task cannot run on a context's model (one without a caption decoder,
    say), or None when it can; such a task is skipped with that reason.
    """

    description: str
    accepts: tuple[str, ...]
    shapes: Callable[[EvalContext], Any]
    run: Callable[[EvalContext, Any], TaskResult]
    unavailable: Callable[[EvalContext], str | None] | None = None


TASKS: Registry[Task] = Registry("eval task")


def load_tasks() -> Registry[Task]:
    """Import every task module (registering its task) and return the registry."""
    for name in TASK_MODULES:
        importlib.import_module(f"clipforge.eval.{name}")
    return TASKS


def task_names() -> list[str]:
    """Task names in report order."""
    load_tasks()
    order = {n: i for i, n in enumerate(TASK_MODULES)}
    return sorted(TASKS.names(), key=lambda n: (order.get(n, len(order)), n))
