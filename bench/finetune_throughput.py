"""Training-step throughput of the fine-tuning options, as ratios in one process.

The tiny preset, batch 128 of shapes-world samples made once beforehand (so the data
pipeline is left out), full steps (forward, backward, AdamW) through the trainer's own
:class:`~clipforge.train.step.Stepper`. The settings are measured in turns, a few rounds
each, and the median of each is divided by the median of the default, so a machine
shared with other jobs slows them alike:

    python bench/finetune_throughput.py --steps 3 --rounds 3

With ``--onnx`` it also times the image encoder under onnxruntime against PyTorch
(inference, batch 128; needs the onnx extra).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from clipforge.data.batches import Collator, SampleProcessor  # noqa: E402
from clipforge.data.loader import iter_batches  # noqa: E402
from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.sources import ShapesSource  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.data.transforms import SeededCrop  # noqa: E402
from clipforge.losses import get_loss  # noqa: E402
from clipforge.models import CLIP, get_model_config  # noqa: E402
from clipforge.train import finetune  # noqa: E402
from clipforge.train.config import TrainConfig  # noqa: E402
from clipforge.train.distributed import World  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402
from clipforge.train.step import Stepper  # noqa: E402

SETTINGS = {
    "default (full fine-tune)": {},
    "--patch-dropout 0.5": {"patch_dropout": 0.5},
    "--lock-image": {"lock_image": True},
    "--lora-rank 8": {"lora_rank": 8},
    "--accum-steps 4": {"accum_steps": 4},
    "--accum-steps 4 --accum-exact": {"accum_steps": 4, "accum_exact": True},
}


def batches(n: int, size: int) -> list:
    cfg = get_model_config("tiny")
    it = iter_batches(
        ShapesSource(ShapesWorld(cfg.vision.image_size)),
        SampleProcessor(SeededCrop(cfg.vision.image_size), seed=0),
        Collator(get_tokenizer(cfg.text.context_length), cfg.mean, cfg.std),
        size,
    )
    return [next(it) for _ in range(n)]


def stepper(flags: dict, batch_size: int) -> tuple[Stepper, int]:
    cfg = replace(TrainConfig(batch_size=batch_size, precision="fp32"), **flags)
    spec = get_loss(cfg.loss)
    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny"), spec.init_logit_scale, spec.init_logit_bias)
    trainable = finetune.configure(model, cfg)
    model.train()
    objective = spec.build(cfg)
    trained = torch.nn.ModuleList([model, objective])
    opt = build_optimizer(trained, 1e-4, 0.05, (0.9, 0.98), 1e-6)
    return Stepper(cfg, World(), model, model, objective, opt), trainable.trainable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="steps per round and setting")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = batches(args.steps, args.batch)
    runs = {name: stepper(flags, args.batch) for name, flags in SETTINGS.items()}
    for s, _ in runs.values():
        s(data[0], 0)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (s, _) in runs.items():
            t0 = time.perf_counter()
            for i, b in enumerate(data):
                s(b, i)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t0))
    base = statistics.median(rates["default (full fine-tune)"])
    print(f"{'setting':<32}{'samples/s':>10}{'ratio':>7}  trainable parameters")
    for name, r in rates.items():
        v = statistics.median(r)
        print(f"{name:<32}{v:10.1f}{v / base:7.2f}  {runs[name][1]:,}")
    if args.onnx:
        onnx_ratio(data[0].images, args.rounds)


def onnx_ratio(images: torch.Tensor, rounds: int) -> None:
    import onnxruntime as ort

    from clipforge.models.export import export_onnx

    torch.manual_seed(0)
    model = CLIP(get_model_config("tiny")).eval()
    with tempfile.TemporaryDirectory() as d:
        export_onnx(model, d)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(f"{d}/image.onnx", opts)
    x = images.numpy()

    def torch_run() -> None:
        with torch.no_grad():
            model.encode_image(images, normalize=True)

    def onnx_run() -> None:
        session.run(None, {"pixels": x})

    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for fn in (torch_run, onnx_run):
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in (("torch", torch_run), ("onnx", onnx_run)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
    n = images.shape[0]
    print(
        f"image encoder, batch {n}: PyTorch {n / t:.0f} images/s, onnxruntime {n / o:.0f} images/s (ratio {t / o:.2f})"
    )


if __name__ == "__main__":
    main()
