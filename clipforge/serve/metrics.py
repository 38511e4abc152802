"""Request counts and latencies per route, for ``GET /metrics``."""

from __future__ import annotations

import threading
from collections import defaultdict, deque

import numpy as np

WINDOW = 10_000  # latencies kept per route: percentiles of the recent traffic


class Metrics:
    """Thread-safe counters: requests by route and status, latency percentiles by route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))

    def record(self, route: str, status: int, ms: float) -> None:
        with self._lock:
            self._counts[route][status] += 1
            self._latency[route].append(ms)

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            out = {}
            for route, counts in self._counts.items():
                lat = np.array(self._latency[route])
                out[route] = {
                    "requests": sum(counts.values()),
                    "by_status": {str(k): v for k, v in sorted(counts.items())},
                    "p50_ms": round(float(np.percentile(lat, 50)), 3),
                    "p99_ms": round(float(np.percentile(lat, 99)), 3),
                }
            return out


__all__ = ["Metrics"]
