"""Command-line flags that several commands share, defined once so that they read and
behave the same everywhere (``--overwrite``, ``--precision``, ``--runtime``)."""

from __future__ import annotations

import argparse

from clipforge.errors import ClipforgeError


def overwrite_flag(p: argparse.ArgumentParser) -> None:
    """``--overwrite``: replace an earlier output of the same command."""
    from clipforge.outputs import OVERWRITE_HELP

    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def precision_flag(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` of the commands that run an encoder."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto (default): bf16 where the hardware runs it natively and the model is wide "
        "enough to gain, else fp32; bf16 is checked against fp32 on the first batch",
    )


def runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--runtime torch|onnx|compile`` and ``--onnx DIR``: what runs the encoders of an
    :class:`~clipforge.eval.embed.Embedder` (``clipforge embed``, ``clipforge eval``)."""
    # The choices are clipforge.eval.embed.RUNTIMES, written out: importing that module
    # here would load torchvision and Inductor's dependencies (about 1.8 s) for every
    # command's --help. The Embedder refuses any other name in one line.
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnx", "compile"],
        help="torch (default); onnx: onnxruntime on the model's exported encoders "
        "(float32; first batch checked against PyTorch; needs the onnx extra); compile: "
        "the image tower compiled by TorchInductor (about 30 s to compile ViT-B-32, a few "
        "seconds once its kernels are cached, then 1.3x faster on CPU; needs a C++ compiler)",
    )
    p.add_argument(
        "--onnx",
        metavar="DIR",
        help="with --runtime onnx, the export to run (clipforge export MODEL --to onnx); "
        "default: export once into ~/.cache/clipforge/onnx/FINGERPRINT",
    )


def check_runtime_flags(args: argparse.Namespace) -> None:
    """Refuse a runtime this machine cannot run, in one line and before any output is
    made (the checks would otherwise fail deep inside the first batch)."""
    if args.onnx and args.runtime != "onnx":
        raise ClipforgeError("--onnx names an export for --runtime onnx; add --runtime onnx")
    if args.runtime == "onnx":
        from clipforge.models.export import check_onnx
        from clipforge.models.onnx_runtime import check_runtime

        check_runtime()
        if not args.onnx:
            check_onnx()  # the export into the cache needs the exporter too
    if args.runtime == "compile":
        from clipforge.models.compiled import check_compiler

        check_compiler()
