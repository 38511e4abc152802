"""``--compile``: training steps of the tiny preset with and without ``torch.compile``.

In one process, on the same prepared batches (made beforehand, so data loading is not
timed): the first compiled step's time (the compilation), then ``--rounds`` rounds that
alternate eager and compiled steps so machine load hits both alike. Prints the median
step times and their ratio; compilation pays after ``compile time / time saved per step``
steps.

    python bench/train_compile.py --steps 3 --rounds 5
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from clipforge.data.batches import Collator, SampleProcessor  # noqa: E402
from clipforge.data.loader import iter_batches  # noqa: E402
from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.sources import ShapesSource  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.data.transforms import SeededCrop  # noqa: E402
from clipforge.losses import clip_loss  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps per round and mode")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    eager = create_model("tiny")
    torch.manual_seed(0)
    plain = create_model("tiny")
    compiled = torch.compile(plain)
    cfg = eager.cfg
    batches = iter_batches(
        ShapesSource(ShapesWorld(cfg.vision.image_size)),
        SampleProcessor(SeededCrop(cfg.vision.image_size), seed=0),
        Collator(get_tokenizer(cfg.text.context_length), cfg.mean, cfg.std),
        a.batch,
    )
    data = [next(batches) for _ in range(a.steps)]
    opts = {
        "eager": build_optimizer(eager, 1e-3, 0.05, (0.9, 0.98), 1e-6),
        "compiled": build_optimizer(plain, 1e-3, 0.05, (0.9, 0.98), 1e-6),
    }
    nets = {"eager": eager, "compiled": compiled}

    def step(mode: str, b) -> float:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = nets[mode](b.images, b.tokens)
        loss = clip_loss(out.image, out.text, out.scale)
        opts[mode].zero_grad(set_to_none=True)
        loss.backward()
        opts[mode].step()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    step("compiled", data[0])  # compiles the forward and backward graphs
    compile_s = time.perf_counter() - t0
    step("eager", data[0])
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(a.rounds):
        for mode in times:
            times[mode] += [step(mode, b) for b in data]
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"tiny, batch {a.batch}, {a.threads} threads, {a.rounds} x {a.steps} steps per mode")
    print(f"first compiled step (compilation included): {compile_s:.1f} s")
    print(f"median step: eager {e:.3f} s, compiled {c:.3f} s, speed-up {e / c:.2f}x")
    saved = e - c
    print(
        f"compilation pays after {compile_s / saved:.0f} steps"
        if saved > 0
        else "compiled steps are not faster: compilation never pays"
    )


if __name__ == "__main__":
    main()
