"""Numeric precision of a run: what ``--precision auto`` picks, and why.

bfloat16 pays on hardware with bf16 matrix units (CUDA GPUs from Ampere on, CPUs with
AMX-BF16 or AVX512-BF16), and only once the matrices are large enough that the faster
multiply outweighs the casts around every op. ``auto`` therefore picks bf16 when the
device runs it natively *and* the model's widest tower reaches the crossover width
measured for that kind of hardware (``bench/precision_crossover.py``), float32 otherwise.
The choice and its reason are printed and saved, so a run says what it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp64")

# Width from which bf16 ran faster than fp32, per hardware kind and use, measured with
# bench/precision_crossover.py (2 threads, tiny-preset depth, batch 128; README,
# "Precision"). AMX figures are from the 2-core Xeon of ../CALIBRATION: 0.65-0.7x at width
# 128, 1.5x at 192 in training, 4-5x on ViT-B/32 inference.
CROSSOVER: dict[str, dict[str, int]] = {
    "cuda": {"train": 0, "infer": 0},
    "AMX-BF16": {"train": 192, "infer": 192},
    "AVX512-BF16": {"train": 192, "infer": 64},
}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is fp32, bf16 or fp64; ``reason`` says why."""

    name: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def to_dict(self) -> dict[str, str]:
        return {"precision": self.name, "reason": self.reason}


def bf16_hardware(device: torch.device) -> str | None:
    """The kind of native bf16 support ``device`` has (a key of :data:`CROSSOVER`), or
    None where bf16 would be emulated."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type != "cpu":
        return None
    # torch.cpu's probes are private, so a torch without them counts as no support
    # rather than failing the run.
    probes = (("AMX-BF16", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for kind, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return kind
        except RuntimeError:
            continue
    return None


def resolve(requested: str, width: int, device: torch.device, use: str = "train") -> Precision:
    """The precision to run ``requested`` (one of :data:`PRECISIONS`) with, for a model
    whose widest tower is ``width`` channels, on ``device``, for ``use`` (train or infer)."""
    if requested not in PRECISIONS:
        from clipforge.errors import ClipforgeError

        raise ClipforgeError(f"unknown precision {requested!r} (known: {', '.join(PRECISIONS)})")
    if requested != "auto":
        return Precision(requested, "requested")
    kind = bf16_hardware(device)
    if kind is None:
        return Precision("fp32", f"auto: {device.type} has no native bf16")
    need = CROSSOVER[kind][use]
    if width < need:
        return Precision(
            "fp32", f"auto: width {width} is below the bf16 crossover {need} on {kind}"
        )
    return Precision("bf16", f"auto: {kind}, width {width} >= crossover {need}")


def model_width(cfg: object) -> int:
    """The widest tower of a model config (the size that decides whether bf16 pays)."""
    return max(cfg.vision.width, cfg.text.width)  # type: ignore[attr-defined]
