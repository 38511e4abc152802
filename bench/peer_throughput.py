"""clipforge vs OpenCLIP throughput on the same architecture, weights and batch.

In one process, for each case (default ``w192``: 64 px, patch 8, width 192, 4+4 layers,
text context 32, batch 64) it builds a clipforge model, exports its weights into an
OpenCLIP model (and checks that both compute the same features), then times
alternately, step by step, in float32 and under bf16 autocast:

* a training step: forward both towers, symmetric InfoNCE loss, backward, AdamW step;
* inference: image and text embeddings of one batch under ``torch.inference_mode``.

It prints samples/s (median over the timed steps) and the ratio clipforge/OpenCLIP, for
two kinds of text: ``captions`` (short, about 12 tokens, as in real data: clipforge drops
the padded tail of a batch, OpenCLIP does not) and ``full`` (every position used, which
compares the towers' arithmetic alone).

    python bench/peer_throughput.py                                 # w192, both texts
    python bench/peer_throughput.py --cases tiny:256,ViT-B-32:32 --text full --steps 5
    python bench/peer_throughput.py --foreach-adamw   # clipforge without its fused AdamW
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.models import CLIP, create_model  # noqa: E402
from clipforge.models.convert import export_tensors  # noqa: E402
from clipforge.models.convert.arch import openclip_config  # noqa: E402
from clipforge.train.optim import build_optimizer  # noqa: E402

WORDS = "a photo of the small big red blue green cat dog circle square left right on under".split()


def openclip_twin(model: CLIP) -> torch.nn.Module:
    """An OpenCLIP ``CLIP`` holding exactly ``model``'s weights."""
    import open_clip

    mc = openclip_config(model.cfg)["model_cfg"]
    peer = open_clip.model.CLIP(**mc)
    peer.load_state_dict(export_tensors(model.state_dict(), "openclip", model.cfg))
    return peer


def batch_inputs(
    model: CLIP, batch: int, text: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    rnd = random.Random(0)
    ctx = model.cfg.text.context_length
    n_words = (lambda: ctx) if text == "full" else (lambda: rnd.randint(6, 14))
    captions = [" ".join(rnd.choice(WORDS) for _ in range(n_words())) for _ in range(batch)]
    tokens = get_tokenizer(ctx)(captions)  # truncated to the context, end token kept
    size = model.cfg.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return images.to(device), tokens.to(device)


def _features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    out = model(images, tokens)
    if isinstance(out, dict):  # OpenCLIP with output_dict
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    img, txt, scale = _features(model, images, tokens)
    # clipforge returns exp(scale) already; OpenCLIP returns exp(logit_scale) too.
    logits = scale * img @ txt.T
    labels = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_alternately(
    fns: dict[str, Callable[[], None]], steps: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each fn, interleaving them so drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


CASES = {
    # The architecture of the peer comparison in the README: 64 px, patch 8, width 192,
    # 4+4 layers, text context 32 (the tiny preset's depth and context).
    "w192": ("tiny", {"vision.image_size": 64, "vision.patch_size": 8, "vision.width": 192,
                      "vision.heads": 6, "vision.stem": "patch", "vision.pool": "cls",
                      "text.width": 192, "text.heads": 6, "embed_dim": 192}),
    # OpenCLIP has no conv stem; the tiny preset is compared with its plain-patch twin.
    "tiny": ("tiny", {"vision.stem": "patch"}),
    "ViT-B-32": ("ViT-B-32", None),
}  # fmt: skip


def run_case(name: str, batch: int, args: argparse.Namespace, device: torch.device) -> None:
    preset, over = CASES.get(name, (name, None))
    torch.manual_seed(0)
    ours = create_model(preset, over).to(device)
    peer = openclip_twin(ours.cpu()).to(device)
    ours.to(device)
    inputs = {text: batch_inputs(ours, batch, text, device) for text in args.text.split(",")}
    # Parity before any timed training step: the two models train apart from then on.
    ours.eval(), peer.eval()
    diffs = {}
    for text, (images, tokens) in inputs.items():
        with torch.inference_mode():
            a = ours.encode_image(images[:4]), ours.encode_text(tokens[:4])
            b = peer.encode_image(images[:4]), peer.encode_text(tokens[:4])
        diffs[text] = max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
    for text, (images, tokens) in inputs.items():
        print(f"\n{name} batch {batch}, {text} text: max feature difference {diffs[text]:.1e}")
        print(f"{'mode':<22} {'clipforge/s':>12} {'openclip/s':>12} {'ratio':>7}")
        flops = _train_flops(ours, images, tokens) if args.peak_tflops else 0.0
        for precision in args.precision.split(","):
            results = _time_modes(ours, peer, images, tokens, precision, args, device)
            for mode, t in results.items():
                cf, oc = batch / t["clipforge"], batch / t["openclip"]
                line = f"{mode + ' ' + precision:<22} {cf:12.1f} {oc:12.1f} {cf / oc:7.2f}"
                if flops and mode == "train step":
                    mfu = {k: flops / v / 1e12 / args.peak_tflops for k, v in t.items()}
                    line += (
                        f"   MFU clipforge {mfu['clipforge']:.1%}, openclip {mfu['openclip']:.1%}"
                    )
                print(line)


def _train_flops(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Floating-point operations of one training step (forward and backward), counted by
    torch's FLOP counter: the numerator of model FLOP utilisation."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        _clip_loss(model, images, tokens).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _time_modes(
    ours: CLIP,
    peer: torch.nn.Module,
    images: torch.Tensor,
    tokens: torch.Tensor,
    precision: str,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    bf16 = precision == "bf16"

    def amp() -> torch.autocast:
        return torch.autocast(device.type, torch.bfloat16, enabled=bf16)

    def infer(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), amp():
                model.encode_image(images)
                model.encode_text(tokens)

        return step

    ours.eval(), peer.eval()
    results = {"inference": time_alternately(
        {"clipforge": infer(ours), "openclip": infer(peer)}, args.steps, args.warmup, device
    )}  # fmt: skip
    ours.train(), peer.train()
    # Each side's optimizer as its trainer builds it: clipforge's (fused where it
    # applies; --foreach-adamw for the multi-tensor update) and open_clip_train's plain AdamW.
    ours_opt = build_optimizer(ours, 1e-5, 0.05, (0.9, 0.98), 1e-6)
    if args.foreach_adamw:
        ours_opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opts = {"clipforge": ours_opt, "openclip": torch.optim.AdamW(peer.parameters(), lr=1e-5)}

    def train(name: str, model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            opts[name].zero_grad(set_to_none=True)
            with amp():
                loss = _clip_loss(model, images, tokens)
            loss.backward()
            opts[name].step()

        return step

    results["train step"] = time_alternately(
        {"clipforge": train("clipforge", ours), "openclip": train("openclip", peer)},
        args.steps,
        args.warmup,
        device,
    )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cases", default="w192:64", help="CASE:BATCH,... (w192, tiny, ViT-B-32 or a preset)"
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (default: 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text", default="captions,full", help="captions, full or both")
    p.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 or both")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="device peak TFLOP/s: print model FLOP utilisation of training",
    )
    p.add_argument(
        "--foreach-adamw",
        action="store_true",
        help="clipforge with torch's default multi-tensor AdamW instead of its own fused one",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    for case in args.cases.split(","):
        preset, _, batch = case.partition(":")
        run_case(preset, int(batch or 32), args, device)


if __name__ == "__main__":
    main()
