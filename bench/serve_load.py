"""A bounded load test of ``clipforge serve`` on loopback.

Builds a small collection (shapes-world PNGs, a random micro model unless ``--model``),
starts ``clipforge serve`` as its own process, and sends ``--requests`` text searches from
``--clients`` concurrent clients (httpx, one asyncio loop), then stops. Prints p50/p99
latency, requests/s, errors, and how many queries each encoder call served (the batching).

    python bench/serve_load.py                       # 100 clients, 2000 requests
    python bench/serve_load.py --clients 10 --requests 500 --model RUN_DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MICRO = ("embed_dim=32,vision.image_size=16,vision.patch_size=4,vision.width=32,vision.layers=1,"
         "vision.heads=2,text.width=32,text.layers=1,text.heads=2,text.context_length=24")  # fmt: skip


def cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "clipforge", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def build(tmp: Path, model: str | None, n: int) -> Path:
    if model is None:
        import torch

        from clipforge.models import create_model, save_checkpoint

        torch.manual_seed(0)
        overrides = dict(kv.split("=") for kv in MICRO.split(","))
        m = create_model("tiny", {k: int(v) for k, v in overrides.items()})
        model = str(tmp / "micro.pt")
        save_checkpoint(m, model, "clipforge")
    cli("synth", "--out", str(tmp / "data"), "--n", str(n))
    cli("embed", model, str(tmp / "data"), "--out", str(tmp / "emb"), "--progress", "false")
    cli("index", str(tmp / "emb"), "--out", str(tmp / "index"))
    return tmp / "index"


async def load(url: str, clients: int, requests: int) -> tuple[np.ndarray, int]:
    words = ["red", "blue", "green", "circle", "square", "two", "large", "star", "above"]
    latencies: list[float] = []
    errors = 0
    todo = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in todo:
            q = f"a {words[i % len(words)]} {words[(i * 7) % len(words)]}"
            t = time.perf_counter()
            try:
                r = await c.get(url + "/api/search", params={"q": q, "k": 10})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t) * 1e3)
            errors += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return np.array(latencies), errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--model", help="run folder or checkpoint (default: random micro model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = build(Path(tmp), args.model, args.images)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [sys.executable, "-m", "clipforge", "serve", str(index), "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            t = time.perf_counter()
            lat, errors = asyncio.run(load(url, args.clients, args.requests))
            wall = time.perf_counter() - t
            enc = httpx.get(url + "/metrics").json()["encoder"]
        finally:
            server.terminate()
            server.wait(30)
    print(f"{args.requests} text searches from {args.clients} concurrent clients on loopback")
    print(f"  p50 {np.percentile(lat, 50):.1f} ms   p99 {np.percentile(lat, 99):.1f} ms   "
          f"{args.requests / wall:.0f} requests/s   errors {errors}")  # fmt: skip
    print(f"  encoder calls {enc['text_batches']} for {enc['texts']} queries "
          f"({enc['texts'] / max(1, enc['text_batches']):.1f} queries per call)")  # fmt: skip


if __name__ == "__main__":
    main()
