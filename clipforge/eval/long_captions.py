"""Long-caption retrieval: image <-> text retrieval with multi-sentence captions.

Each shapes-world test scene is described in several sentences (count, every object and
its place, relations), usually longer than a small model's text context: the numbers
show how much a model keeps beyond its first words. ``truncated`` reports the fraction
of captions longer than the context (the tokenizer cuts them).
"""

from __future__ import annotations

from clipforge.eval import retrieval as retrieval_task
from clipforge.eval import shapes_data
from clipforge.eval.datasets import RetrievalData
from clipforge.eval.tasks import TASKS, EvalContext, Task, TaskResult


def run(ctx: EvalContext, data: RetrievalData) -> TaskResult:
    res = retrieval_task.run(ctx, data)
    ctx_len = ctx.tokenizer.context_length
    lengths = [len(ctx.tokenizer.encode(t)) + 2 for t in data.texts]  # + start/end tokens
    res.metrics["truncated"] = sum(n > ctx_len for n in lengths) / len(lengths)
    res.details.update({"mean tokens": round(sum(lengths) / len(lengths), 1), "context": ctx_len})
    return res


def _shapes(ctx: EvalContext) -> RetrievalData:
    return shapes_data.long_captions(ctx.image_size, ctx.seed, ctx.scenes)


TASKS.add(
    "long_captions",
    Task(
        "retrieval with multi-sentence captions (R@1/5/10 both ways, share truncated)",
        ("retrieval",),
        _shapes,
        run,
    ),
)
