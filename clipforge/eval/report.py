"""``results.json`` (one versioned schema), the Markdown report and run comparison.

Schema ``clipforge.eval/1``::

    {"schema": "clipforge.eval/1", "model": str, "model_fingerprint": str,
     "created": ISO-8601 UTC, "seconds": float, "embedded_images": int,
     "tasks": {TASK: {"dataset": str, "seconds": float, "metrics": {NAME: float},
                      "plots": {TITLE: PNG file, relative}, "details": {...}}},
     "skipped": {TASK: reason}}

Metric values are fractions in [0, 1] except those named in :data:`RAW_METRICS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.errors import ClipforgeError

SCHEMA = "clipforge.eval/1"
# Metrics that are not fractions (printed as numbers, not percentages).
RAW_METRICS = ("mean_abs_error", "centroid_distance", "paired_cosine", "nll", "cider")


def is_fraction(metric: str) -> bool:
    return not metric.endswith(RAW_METRICS)


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if is_fraction(metric) else f"{value:.4f}"


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and check a ``results.json``."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise ClipforgeError(f"results file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ClipforgeError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else None
        raise ClipforgeError(f"{p}: not a clipforge eval result (schema {found!r}, want {SCHEMA})")
    return doc


def markdown(results: dict[str, Any]) -> str:
    """A human-readable report: one section per task with its metrics, plots and details."""
    lines = [
        "# clipforge evaluation",
        "",
        f"- model: `{results['model']}` (fingerprint `{results['model_fingerprint']}`)",
        f"- created: {results['created']}, {results['seconds']:.1f} s, "
        f"{results['embedded_images']} images embedded (the rest came from the cache)",
        "",
        "| task | data | headline metric | value |",
        "|---|---|---|---|",
    ]
    for name, t in results["tasks"].items():
        first = next(iter(t["metrics"]), None)
        value = fmt(first, t["metrics"][first]) if first else "-"
        lines.append(f"| {name} | {t['dataset']} | {first} | {value} |")
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | - | skipped: {reason} | - |")
    for name, t in results["tasks"].items():
        lines += ["", f"## {name}", "", f"{t.get('description', '')} Data: {t['dataset']}.", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(k, v)} |" for k, v in t["metrics"].items()]
        for title, png in t.get("plots", {}).items():
            lines += ["", f"![{title}]({png})"]
        if t.get("details"):
            lines += ["", "Details:", ""]
            lines += [f"- {k}: {json.dumps(v)}" for k, v in t["details"].items()]
    return "\n".join(lines) + "\n"


def compare(
    a: dict[str, Any], b: dict[str, Any]
) -> list[tuple[str, str, float | None, float | None]]:
    """Rows ``(task, metric, value in a, value in b)`` over the union of both runs' metrics."""
    rows = []
    tasks = list(dict.fromkeys([*a["tasks"], *b["tasks"]]))
    for t in tasks:
        ma = a["tasks"].get(t, {}).get("metrics", {})
        mb = b["tasks"].get(t, {}).get("metrics", {})
        for m in dict.fromkeys([*ma, *mb]):
            rows.append((t, m, ma.get(m), mb.get(m)))
    return rows


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Side-by-side text table with deltas (B - A), in points for fractions."""
    rows = compare(a, b)
    head = ("task", "metric", name_a, name_b, "delta")
    body = []
    for t, m, va, vb in rows:
        if va is None or vb is None:
            delta = "-"
        elif is_fraction(m):
            delta = f"{100 * (vb - va):+.2f}"
        else:
            delta = f"{vb - va:+.4f}"
        body.append((t, m, fmt(m, va), fmt(m, vb), delta))
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(5)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in out)
