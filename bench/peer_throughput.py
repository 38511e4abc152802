"""clipforge vs OpenCLIP throughput on the same architecture, weights and batch.

In one process, for each case (default: ViT-B/32 at batch 32 and the ``tiny`` preset at
batch 256, with a plain patch embedding since OpenCLIP has no conv stem) it builds a clipforge model, exports its weights into an OpenCLIP model (and
checks that both compute the same features), then times alternately, step by step:

* a training step: forward both towers, symmetric InfoNCE loss, backward, AdamW step;
* inference: image and text embeddings of one batch under ``torch.inference_mode``.

It prints samples/s (median over the timed steps) and the ratio clipforge/OpenCLIP.

Text: by default captions are short, as in real data (about 12 tokens); clipforge drops
the padded tail of a batch, OpenCLIP does not. ``--text full`` fills the whole context to
compare the towers without that advantage.

    OMP_NUM_THREADS=1 python bench/peer_throughput.py                    # both cases
    python bench/peer_throughput.py --cases tiny:256 --steps 20 --text full
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


def run_case(preset: str, batch: int, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    # OpenCLIP has no conv stem; the tiny preset is compared with its plain-patch twin.
    plain = {"vision.stem": "patch"} if preset == "tiny" else None
    ours = create_model(preset, plain).to(device)
    peer = openclip_twin(ours.cpu()).to(device)
    ours.to(device)
    images, tokens = batch_inputs(ours, batch, args.text, device)

    ours.eval(), peer.eval()
    with torch.inference_mode():
        a = ours.encode_image(images[:4]), ours.encode_text(tokens[:4])
        b = peer.encode_image(images[:4]), peer.encode_text(tokens[:4])
    diff = max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
    print(f"\n{preset} batch {batch} ({args.text} text): max feature difference {diff:.1e}")

    def infer(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode():
                model.encode_image(images)
                model.encode_text(tokens)

        return step

    results = {"inference": time_alternately(
        {"clipforge": infer(ours), "openclip": infer(peer)}, args.steps, args.warmup, device
    )}  # fmt: skip

    ours.train(), peer.train()
    opts = {
        "clipforge": torch.optim.AdamW(ours.parameters(), lr=1e-5),
        "openclip": torch.optim.AdamW(peer.parameters(), lr=1e-5),
    }

    def train(name: str, model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            opts[name].zero_grad(set_to_none=True)
            _clip_loss(model, images, tokens).backward()
            opts[name].step()

        return step

    results["train step"] = time_alternately(
        {"clipforge": train("clipforge", ours), "openclip": train("openclip", peer)},
        args.steps,
        args.warmup,
        device,
    )
    print(f"{'mode':<12} {'clipforge/s':>12} {'openclip/s':>12} {'ratio':>7}")
    for mode, t in results.items():
        cf, oc = batch / t["clipforge"], batch / t["openclip"]
        print(f"{mode:<12} {cf:12.1f} {oc:12.1f} {cf / oc:7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="ViT-B-32:32,tiny:256", help="PRESET:BATCH,...")
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (default: 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text", default="captions", choices=["captions", "full"])
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
