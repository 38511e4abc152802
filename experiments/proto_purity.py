"""Cluster purity of a ``clip+proto`` run's prototypes against the shapes-world classes.

    PYTHONPATH=. python experiments/proto_purity.py RUN_DIR [--per-class 10]

Embeds the held-out single-object images of the 40 colour x shape classes, assigns each
to its nearest prototype of the run's last refresh (``RUN/checkpoints/last.pt``) and
prints the purity against the 40 classes, the 8 colours and the 5 shapes, next to the
same for a fresh k-means (same k) on those very embeddings, the best the features allow
that k-means finds. Purity is the share of images in their cluster's most common class.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clipforge.checkpoint import load as load_checkpoint  # noqa: E402
from clipforge.data.tokenizer import get_tokenizer  # noqa: E402
from clipforge.eval import shapes_data  # noqa: E402
from clipforge.eval.embed import Embedder  # noqa: E402
from clipforge.losses.proto import kmeans, purity  # noqa: E402
from clipforge.models import load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.run)
    state = load_checkpoint(f"{args.run}/checkpoints/last.pt")["objective"]
    keys = [k for k in state if k.endswith("prototypes")]
    if not keys:
        raise SystemExit(f"{args.run}: no prototypes in its objective state (not a clip+proto run)")
    (key,) = keys
    protos = state[key]
    data = shapes_data.classification(model.cfg.vision.image_size, per_class=args.per_class)
    emb = Embedder(model, get_tokenizer(model.cfg.text.context_length), progress=False)
    x = emb.images(data.images)
    labels = data.labels
    classes = shapes_data.classes()  # (shape, colour) in label order
    colour = torch.tensor([sorted({c for _, c in classes}).index(classes[i][1]) for i in labels])
    shape = torch.tensor([sorted({s for s, _ in classes}).index(classes[i][0]) for i in labels])
    fresh = kmeans(x, protos.shape[0], seed=0)
    print(f"{len(labels)} images, k = {protos.shape[0]}")
    print("clusters       | class (40) | colour (8) | shape (5) | clusters used")
    for name, centres in (("run prototypes", protos), ("fresh k-means ", fresh)):
        assign = (x @ centres.T).argmax(dim=1)
        print(f"{name} | {purity(assign, labels):10.3f} | {purity(assign, colour):10.3f} | "
              f"{purity(assign, shape):9.3f} | {assign.unique().numel()}")  # fmt: skip


if __name__ == "__main__":
    main()
