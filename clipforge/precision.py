"""Numeric precision of a run: what ``--precision auto`` picks, and why.

bfloat16 pays on hardware with bf16 matrix units (CUDA GPUs from Ampere on, CPUs with
AMX-BF16 or AVX512-BF16), and only once the matrices are large enough that the faster
multiply outweighs the casts around every op. ``auto`` therefore picks bf16 when the
device runs it natively *and* the model's widest tower reaches the crossover width
measured for that kind of hardware (``bench/precision_crossover.py``), float32 otherwise.
The choice and its reason are printed and saved, so a run says what it did.
"""

from __future__ import annotations

import functools
import time
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


# A CPU whose flags announce bf16 can still run it slowly: a hypervisor may hide the units
# oneDNN needs, or deny AMX tile permission, and bf16 then goes through emulated kernels.
# On an AVX2-only EPYC a 384-square bf16 matmul ran at 0.01-0.05x of fp32 (one thread);
# native bf16 units run it faster than fp32. Below this measured ratio ``auto`` stays in
# fp32; the gap is far wider than the machine's 25% run-to-run noise.
MIN_MATMUL_SPEEDUP = 1.0


@functools.cache
def bf16_matmul_speedup(size: int = 384, rounds: int = 5) -> float:
    """How many times faster a ``size``-square bf16 matmul runs than fp32 on one CPU
    thread (best of ``rounds``; milliseconds where bf16 is native, about a second where it
    is emulated). Measured once per process."""
    # One thread: with two, a loaded machine's thread wake-ups dominated the fp32 time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(size, size, generator=g)
        return _best_matmul(x, rounds) / _best_matmul(x.bfloat16(), rounds)
    finally:
        torch.set_num_threads(threads)


def _best_matmul(a: torch.Tensor, rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):  # the first call builds the kernel
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return min(times[1:])


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
    if device.type == "cpu":
        speedup = bf16_matmul_speedup()
        if speedup < MIN_MATMUL_SPEEDUP:
            return Precision(
                "fp32",
                f"auto: the CPU reports {kind}, but a bf16 matmul ran at {speedup:.2f}x of "
                "fp32 here (emulated kernels)",
            )
    return Precision("bf16", f"auto: {kind}, width {width} >= crossover {need}")


def model_width(cfg: object) -> int:
    """The widest tower of a model config (the size that decides whether bf16 pays)."""
    return max(cfg.vision.width, cfg.text.width)  # type: ignore[attr-defined]
