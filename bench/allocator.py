"""What :func:`clipforge.allocator.tune_allocator` gains: the same work with glibc's default
thresholds and with clipforge's, in fresh processes.

The setting is process-wide and cannot be undone once memory is laid out, so each
measurement runs in its own subprocess (``CLIPFORGE_MALLOC=system`` for the baseline),
the two settings alternating round by round so that machine drift hits both alike. Prints
the median rate of each and the ratio tuned/system:

* ViT-B-32 image encoding (random weights, 224 px, batch 64), fp32 and bf16 weights;
* training steps of the default config (``tiny``, shapes world, batch 128, fp32), as
  ``bench/train_throughput.py`` runs them;
* training steps of the w192 peer architecture (64 px, width 192, 4+4 layers, full-length
  text, batch 64), fp32 and bf16 autocast, as ``bench/peer_throughput.py`` runs them.

    python bench/allocator.py                      # every workload, 3 rounds
    python bench/allocator.py --only vit-fp32,vit-bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WORKLOADS = ("vit-fp32", "vit-bf16", "tiny-train", "w192-train-fp32", "w192-train-bf16")


def _median_rate(fn, n: int, reps: int) -> float:
    fn()  # warm-up: kernels chosen, memory laid out
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def work(name: str, threads: int) -> float:
    """Samples/s of one workload in this process, after tuning the allocator (unless
    ``CLIPFORGE_MALLOC=system``)."""
    from clipforge.allocator import tune_allocator

    tune_allocator()
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from clipforge.models import create_model

    if name.startswith("vit"):
        model = create_model("ViT-B-32").eval()
        x = torch.randn(64, 3, 224, 224)
        if name == "vit-bf16":
            model, x = copy.deepcopy(model).to(torch.bfloat16).eval(), x.bfloat16()

        def encode() -> None:
            with torch.inference_mode():
                model.encode_image(x, normalize=True)

        return _median_rate(encode, len(x), 3)
    if name == "tiny-train":
        from train_throughput import measure

        return measure(8, 128, threads, "fp32", warmup=2)
    from peer_throughput import CASES, _clip_loss, batch_inputs

    from clipforge.train.optim import build_optimizer

    preset, over = CASES["w192"]
    model = create_model(preset, over).train()
    opt = build_optimizer(model, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    images, tokens = batch_inputs(model, 64, "full", torch.device("cpu"))
    bf16 = name.endswith("bf16")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = _clip_loss(model, images, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _median_rate(step, len(images), 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(work(args.worker, args.threads)))
        return
    names = args.only.split(",")
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        ap.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    settings = {"system": {"CLIPFORGE_MALLOC": "system"}, "tuned": {"CLIPFORGE_MALLOC": ""}}
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = list(settings) if r % 2 == 0 else list(settings)[::-1]
        for name in names:
            for setting in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", name, "--threads", str(args.threads)],
                    env={**os.environ, **settings[setting]}, capture_output=True, text=True,
                    check=True,
                )  # fmt: skip
                rate = float(out.stdout.strip().splitlines()[-1])
                rates.setdefault((name, setting), []).append(rate)
                print(f"  round {r}: {name:<16} {setting:<7} {rate:8.1f} samples/s", flush=True)
    print(f"\n{'workload':<16} {'system/s':>9} {'tuned/s':>9} {'tuned/system':>13}")
    for name in names:
        sys_rate = statistics.median(rates[(name, "system")])
        tuned = statistics.median(rates[(name, "tuned")])
        print(f"{name:<16} {sys_rate:9.1f} {tuned:9.1f} {tuned / sys_rate:12.2f}x")


if __name__ == "__main__":
    main()
