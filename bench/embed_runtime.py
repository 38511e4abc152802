"""``clipforge embed`` throughput, onnxruntime against PyTorch, as a ratio in one process.

    python bench/embed_runtime.py --images 512 --rounds 3

A randomly initialised ``tiny`` model (weights do not change the arithmetic's cost)
embeds a manifest of shapes-world scenes (images and captions) through
:func:`clipforge.index.embedding.embed_collection` with each runtime, in turns, so a
machine shared with other jobs slows both alike. The ONNX graphs are exported once
beforehand (the export is not timed: it is a one-off per model). Prints items/s of
each runtime (median of the rounds) and their ratio. Needs the onnx extra.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from clipforge.data.shapes import ShapesWorld  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.data.writers import write_manifest  # noqa: E402
from clipforge.index.embedding import embed_collection  # noqa: E402
from clipforge.index.items import open_collection  # noqa: E402
from clipforge.models import create_model  # noqa: E402
from clipforge.models.export import export_onnx  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    tok = get_tokenizer(model.cfg.text.context_length)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = ShapesWorld(model.cfg.vision.image_size, split="test", seed=0)
        write_manifest((world.sample(i) for i in range(a.images)), root / "data")
        items = open_collection(str(root / "data"))
        (root / "onnx").mkdir()
        export_onnx(model, root / "onnx")
        times: dict[str, list[float]] = {"torch": [], "onnx": []}
        for r in range(a.rounds):
            for runtime in times:
                t0 = time.perf_counter()
                embed_collection(
                    model, tok, items, root / f"{runtime}{r}", model_source="bench",
                    batch_size=a.batch_size, progress=False, runtime=runtime,
                    onnx_dir=root / "onnx" if runtime == "onnx" else None,
                )  # fmt: skip
                times[runtime].append(time.perf_counter() - t0)
    rate = {k: a.images / statistics.median(v) for k, v in times.items()}
    for k, v in rate.items():
        print(f"{k:6s} {v:7.1f} items/s (image + caption), rounds: "
              + ", ".join(f"{t:.1f}s" for t in times[k]))  # fmt: skip
    print(f"onnx / torch: {rate['onnx'] / rate['torch']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
