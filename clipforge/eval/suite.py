"""Run a set of evaluation tasks on a model and write results.json, report.md and plots."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.datasets import open_eval_data
from clipforge.eval.embed import Embedder
from clipforge.eval.report import SCHEMA, markdown
from clipforge.eval.tasks import EvalContext, load_tasks, task_names
from clipforge.models import CLIP


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """``"all"`` or a comma-separated list of task names, checked against the registry."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ClipforgeError("no eval tasks named")
    if names == ["all"]:
        return task_names()
    registry = load_tasks()
    for n in names:
        registry.get(n)  # raises a one-line error listing the known tasks
    return list(dict.fromkeys(names))


DEFAULT_TASKS = ("zeroshot", "retrieval")
"""What a training run and a plain ``clipforge eval`` measure."""


def evaluate(
    model: CLIP,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    data: Sequence[str] = (),
    *,
    out_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    cache_dir: str | Path | None = None,
    split: str = "test",
    per_class: int | None = None,
    scenes: int | None = None,
    image_root: str | None = None,
    seed: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    runtime: str = "torch",
    onnx_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` in memory and return the results dict.

    Without ``data`` every task runs on its shapes-world set of ``split`` (``per_class``
    and ``scenes`` size the classification and scene sets). With ``data`` (paths, see
    :func:`~clipforge.eval.datasets.open_eval_data`) a task runs on the first data set
    whose kind it accepts and is skipped, with the reason recorded, when there is none.
    Plots are drawn only into an ``out_dir``. The model's train/eval mode is restored.
    ``precision`` (fp32, bf16 or auto) is the embedder's; what it chose, and the bf16
    parity check of its first batches, are recorded under ``"precision"``. ``runtime``
    and ``onnx_dir`` choose what runs the encoders (:class:`~clipforge.eval.embed.Embedder`:
    eager PyTorch, onnxruntime or the compiled image tower); an ``embedder`` given
    brings its own.
    """
    names = resolve_tasks(tasks)
    registry = load_tasks()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    user = [open_eval_data(p, split=split, image_root=image_root) for p in data]
    was_training = model.training
    embedder = embedder or Embedder(
        model, tokenizer, cache_dir, progress=progress, precision=precision,
        runtime=runtime, onnx_dir=onnx_dir,
    )  # fmt: skip
    ctx = EvalContext(model.eval(), tokenizer, embedder, out, seed, split, per_class, scenes)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "model": "",
        "model_fingerprint": embedder.fingerprint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": {},
        "skipped": {},
    }
    start = time.perf_counter()
    try:
        for name in names:
            task = registry.get(name)
            why = task.unavailable(ctx) if task.unavailable is not None else None
            if why:
                results["skipped"][name] = why
                continue
            if user:
                match = [(k, d) for k, d in user if k in task.accepts]
                if not match:
                    results["skipped"][name] = f"needs {' or '.join(task.accepts)} data"
                    continue
                ds = match[0][1]
                ds_name = ds.name
            else:
                ds = task.shapes(ctx)
                ds_name = "shapes world"
            t0 = time.perf_counter()
            with torch.inference_mode():
                res = task.run(ctx, ds)
            results["tasks"][name] = {
                "description": task.description,
                "dataset": ds_name,
                "seconds": round(time.perf_counter() - t0, 2),
                "metrics": res.metrics,
                "plots": res.plots,
                "details": res.details,
            }
            if progress:
                head = ", ".join(f"{k} {v:.4f}" for k, v in list(res.metrics.items())[:3])
                print(f"{name}: {head}", flush=True)
    finally:
        model.train(was_training)
    results["seconds"] = round(time.perf_counter() - start, 2)
    results["embedded_images"] = embedder.embedded_images
    results["precision"] = embedder.precision_record
    return results


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` of a results dict, in task order."""
    return {f"{t}/{k}": v for t, r in results["tasks"].items() for k, v in r["metrics"].items()}


def run_suite(
    model: CLIP,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    tasks: str | Sequence[str] = "all",
    data: Sequence[str] = (),
    model_name: str = "",
    cache_dir: str | Path | None = None,
    split: str = "test",
    image_root: str | None = None,
    seed: int = 0,
    progress: bool = True,
    precision: str = "fp32",
    runtime: str = "torch",
    onnx_dir: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`evaluate`, then write ``OUT/results.json``, ``OUT/report.md`` and the plots."""
    results = evaluate(
        model, tokenizer, tasks, data, out_dir=out_dir, cache_dir=cache_dir, split=split,
        image_root=image_root, seed=seed, progress=progress, precision=precision,
        runtime=runtime, onnx_dir=onnx_dir,
    )  # fmt: skip
    results["model"] = model_name
    out = Path(out_dir)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(markdown(results))
    return results
