"""The index planner at scale: build time, memory, recall@10 and p50/p99 latency.

Synthetic clustered unit vectors (``--clusters`` Gaussian clusters on the sphere, not real
embeddings: real CLIP features are clustered too, but how much varies by collection), run
through :func:`clipforge.index.planner.plan` with a memory budget and a latency goal, as
``clipforge index`` runs it. Latency is single-query search on one core; builds use all.

    python bench/index_scale.py                       # 1,000,000 x 512, 4GB, 10 ms
    python bench/index_scale.py --n 200000 --memory 1GB
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from clipforge.index.planner import parse_memory, plan


def clustered(n: int, d: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # in chunks: a float64 temporary of 1M x 512 is 4 GB
        m = min(100_000, n - s)
        x = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, d), np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--memory", default="4GB")
    ap.add_argument("--max-latency-ms", type=float, default=10.0)
    args = ap.parse_args()
    x = clustered(args.n, args.dim, args.clusters)
    t = time.perf_counter()
    _, report = plan(x, parse_memory(args.memory), args.max_latency_ms)
    total = time.perf_counter() - t
    print(f"{args.n} x {args.dim} clustered synthetic vectors, budget {args.memory}, "
          f"p99 goal {args.max_latency_ms} ms; planning took {total:.0f} s")  # fmt: skip
    print(
        f"{'index':<22} {'params':<12} {'build s':>8} {'MiB':>7} {'recall@10':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for c in report["candidates"]:
        if c["build_s"] is None:
            print(
                f"{c['factory']:<22} {'':<12} {'-':>8} {c['memory_bytes'] / 2**20:>7.0f}  {c['note']}"
            )
            continue
        print(f"{c['factory']:<22} {c['params']:<12} {c['build_s']:>8.1f} {c['memory_bytes'] / 2**20:>7.0f} "
              f"{c['recall_at_10']:>9.3f} {c['p50_ms']:>7.2f} {c['p99_ms']:>7.2f}")  # fmt: skip
    print(f"chosen: {report['chosen']} {report['params']}; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
