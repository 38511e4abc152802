"""Where bfloat16 starts to pay on this machine: fp32 vs bf16 by model width.

For each vision/text width (the ``tiny`` preset otherwise: 32 px, patch 4, 4+4 layers,
heads of 32 channels) it times, alternately so that machine load hits both alike:

* a training step (forward, symmetric InfoNCE, backward, AdamW) in float32 and under bf16
  autocast, at batch 128;
* inference (image and text embeddings of a batch of 256) in float32 and with bf16
  weights, the way the evaluator runs bf16.

It prints the bf16/fp32 speed ratio per width, for the conv stem (the preset's) and a
plain patch stem, and the stem's own share of the bf16 step. Last, it times training
steps of the tiny preset whose caption length is new to the process against steps with
a length seen before: bf16 kernels are built per shape, and the text tower's shape
follows the longest caption of each batch. ``--precision auto`` uses
bf16 above the width where the ratio crosses 1 (``clipforge/precision.py`` holds the
measured crossover per kind of bf16 hardware).

    python bench/precision_crossover.py
    python bench/precision_crossover.py --widths 128,256 --steps 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from clipforge.losses import clip_loss  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.precision import bf16_hardware, bf16_matmul_speedup  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402


def _median_times(fns: dict[str, Callable[[], None]], steps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(steps + 1):  # the first call of each warms allocator and kernels
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def case(width: int, stem: str, steps: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    over = {"vision.width": width, "text.width": width, "embed_dim": width,
            "vision.heads": max(1, width // 32), "text.heads": max(1, width // 32),
            "vision.stem": stem}  # fmt: skip
    model = create_model("tiny", over)
    size, ctx = model.cfg.vision.image_size, model.cfg.text.context_length
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, 1000, (batch, ctx))
    opt = build_optimizer(model, 1e-5, 0.05, (0.9, 0.98), 1e-6)

    def train(bf16: bool) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = model(images, tokens)
                loss = clip_loss(out.image.float(), out.text.float(), out.scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    half = copy.deepcopy(model).eval().to(torch.bfloat16)
    model_eval = copy.deepcopy(model).eval()
    big = torch.randn(2 * batch, 3, size, size)
    big_tokens = tokens.repeat(2, 1)

    def infer(m: torch.nn.Module, dtype: torch.dtype) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                m.encode_image(big.to(dtype))
                m.encode_text(big_tokens)

        return run

    def stem_step(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = model.visual.patch_embed(images)
            out.float().sum().backward()

        return run

    t = _median_times({"train fp32": train(False), "train bf16": train(True),
                       "infer fp32": infer(model_eval, torch.float32),
                       "infer bf16": infer(half, torch.bfloat16),
                       "stem fp32": stem_step(False), "stem bf16": stem_step(True)}, steps)  # fmt: skip
    return {
        "train": t["train fp32"] / t["train bf16"],
        "infer": t["infer fp32"] / t["infer bf16"],
        "stem": t["stem fp32"] / t["stem bf16"],
        "stem share": t["stem bf16"] / t["train bf16"],
        "train fp32 samples/s": batch / t["train fp32"],
    }


def first_shape_cost(batch: int, repeats: int = 2) -> dict[str, tuple[float, float]]:
    """Seconds of a training step of the tiny preset whose caption length is new to the
    process, and of one whose length was seen before, in fp32 and bf16.

    clipforge trims a batch's padded text tail, so the text tower's shapes change with the
    longest caption of each batch; a bf16 kernel library that builds a kernel per shape pays
    that once per new length."""
    torch.manual_seed(0)
    model = create_model("tiny")
    opt = build_optimizer(model, 1e-5, 0.05, (0.9, 0.98), 1e-6)
    size, ctx = model.cfg.vision.image_size, model.cfg.text.context_length
    images = torch.randn(batch, 3, size, size)
    out: dict[str, tuple[float, float]] = {}
    for bf16, lengths in ((False, range(8, 14)), (True, range(14, 20))):
        new, seen = [], []
        for n in lengths:
            tokens = torch.randint(1, 1000, (batch, ctx))
            tokens[:, n - 1], tokens[:, n:] = 49407, 0  # end token at n - 1, then padding
            for r in range(1 + repeats):
                t0 = time.perf_counter()
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    o = model(images, tokens)
                    loss = clip_loss(o.image.float(), o.text.float(), o.scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                (seen if r else new).append(time.perf_counter() - t0)
        out["bf16" if bf16 else "fp32"] = (statistics.median(new), statistics.median(seen))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="64,96,128,192,256,384")
    ap.add_argument("--stems", default="conv,patch")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-first-shape", action="store_true", help="skip the first-shape timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"bf16 hardware: {bf16_hardware(torch.device('cpu')) or 'none'}; threads {args.threads}; "
        f"bf16/fp32 matmul speed (auto's check): {bf16_matmul_speedup():.2f}x"
    )
    print(f"{'stem':<6}{'width':>6}{'train bf16/fp32':>17}{'infer bf16/fp32':>17}"
          f"{'stem bf16/fp32':>16}{'stem share':>12}{'fp32 samples/s':>16}")  # fmt: skip
    for stem in args.stems.split(","):
        for w in (int(x) for x in args.widths.split(",")):
            r = case(w, stem, args.steps, args.batch)
            print(f"{stem:<6}{w:>6}{r['train']:>16.2f}x{r['infer']:>16.2f}x{r['stem']:>15.2f}x"
                  f"{r['stem share']:>11.0%}{r['train fp32 samples/s']:>16.1f}")  # fmt: skip
    if not args.no_first_shape:
        cost = first_shape_cost(args.batch)
        print("\ntiny preset, training step with a caption length new to the process vs seen:")
        for k, (new, seen) in cost.items():
            print(f"  {k}: new length {new:.3f} s, seen length {seen:.3f} s ({new / seen:.2f}x)")


if __name__ == "__main__":
    main()
