"""Prototype / cluster discrimination (after ProtoCLIP, Chen et al., 2023, and MLCD, An et
al., 2024).

Instance contrast pushes apart two images of "a red circle" as hard as a red circle and a
blue star. Prototypes add a coarser target: k-means centres over a running bank of the
batch's image embeddings (faiss k-means, refreshed every ``--proto-every`` steps), and
each image and caption is trained to score its image's ``--proto-labels`` nearest
prototypes above all the others (MLCD's multi-label loss; ProtoCLIP's cross-modal use:
the caption is pulled into its image's clusters)::

    L = 1/2 [ML(x_i) + ML(y_i)],  ML(z) = -log sum_{p in P_i} e^{<z, c_p>/t} / sum_p e^{<z, c_p>/t}

with ``P_i`` the nearest prototypes of the (detached) image embedding ``x_i``. Until the
bank first fills and the first refresh runs, the term is zero. The bank, the prototypes
and the step counter are buffers, so a resumed run clusters the same embeddings at the
same steps: faiss k-means with a fixed seed on one thread is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import check_field, option
from clipforge.errors import ClipforgeError
from clipforge.losses.base import Features, Objective
from clipforge.losses.registry import LossSpec, register
from clipforge.ranges import count, positive


def multilabel_loss(
    z: torch.Tensor, prototypes: torch.Tensor, positives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``mean_i -log sum_{p in P_i} softmax_p(z_i . c_p / t)``; ``positives`` ``[B, k]`` bool."""
    logp = (z @ prototypes.T / temperature).log_softmax(dim=1)
    return -torch.logsumexp(logp.masked_fill(~positives, float("-inf")), dim=1).mean()


def nearest(x: torch.Tensor, prototypes: torch.Tensor, m: int) -> torch.Tensor:
    """``[B, k]`` bool: each row's ``m`` most similar prototypes."""
    top = (x @ prototypes.T).topk(min(m, prototypes.shape[0]), dim=1).indices
    return torch.zeros(x.shape[0], prototypes.shape[0], dtype=torch.bool,
                       device=x.device).scatter_(1, top, True)  # fmt: skip


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = 20) -> torch.Tensor:
    """``[k, D]`` unit k-means centres of unit rows ``x`` (faiss, spherical, one thread)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # its reductions in a fixed order: the same centres again
    try:
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(x.detach().cpu().float().numpy()))
    finally:
        faiss.omp_set_num_threads(threads)
    return F.normalize(torch.from_numpy(km.centroids.copy()), dim=1)


def purity(assign: torch.Tensor, labels: torch.Tensor) -> float:
    """Cluster purity: the share of samples in their cluster's most common class."""
    total = 0
    for c in assign.unique():
        total += int(labels[assign == c].bincount().max())
    return total / max(labels.shape[0], 1)


class ProtoObjective(Objective):
    """:func:`multilabel_loss` of images and captions over k-means prototypes of a bank."""

    def __init__(
        self,
        dim: int,
        k: int = 40,
        bank: int = 2048,
        every: int = 50,
        labels: int = 2,
        temperature: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, v in (("proto_k", k), ("proto_bank", bank), ("proto_every", every),
                        ("proto_labels", labels), ("proto_temperature", temperature)):  # fmt: skip
            check_field(ProtoOptions, name, v)
        if bank < k:
            raise ClipforgeError(f"--proto-bank {bank} must hold at least --proto-k {k} embeddings")
        self.k, self.every, self.labels = k, every, labels
        self.temperature, self.seed = temperature, seed
        # Fixed shapes, so a checkpoint of any moment fits: `filled` rows of the bank are
        # embeddings, `cursor` is the next row to overwrite once it is full.
        self.register_buffer("bank", torch.zeros(bank, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(k, dim))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._pending: torch.Tensor | None = None
        self._last: dict[str, float] = {}

    def forward(self, f: Features) -> torch.Tensor:
        self._pending = f.image.detach()
        if not bool(self.ready):
            return f.image.sum() * 0
        protos = self.prototypes.to(f.image.dtype)
        with torch.no_grad():
            pos = nearest(f.image.detach(), protos, self.labels)
        owner = f.owners()
        text, own = f.text[owner >= 0], owner[owner >= 0]  # captions, not hard negatives
        return (multilabel_loss(f.image, protos, pos, self.temperature)
                + multilabel_loss(text, protos, pos[own], self.temperature)) / 2  # fmt: skip

    def after_step(self, model: nn.Module) -> None:
        if self._pending is not None:
            self._push(self._pending)
            self._pending = None
        self.step += 1
        if int(self.step) % self.every == 0 and int(self.filled) >= self.k:
            bank = self.bank[: int(self.filled)]
            self.prototypes.copy_(kmeans(bank, self.k, self.seed + int(self.step)))
            self.ready.fill_(True)
            with torch.no_grad():
                assign = (bank @ self.prototypes.T).argmax(dim=1)
            self._last = {"proto/used": float(assign.unique().numel())}

    @torch.no_grad()
    def _push(self, x: torch.Tensor) -> None:
        """Into the ring bank: fill it, then overwrite the oldest rows."""
        size = self.bank.shape[0]
        for row in x.to(self.bank.dtype):
            self.bank[int(self.cursor)] = row
            self.cursor.fill_((int(self.cursor) + 1) % size)
            self.filled.fill_(min(int(self.filled) + 1, size))

    def metrics(self) -> dict[str, float]:
        return dict(self._last)


@dataclass
class ProtoOptions:
    proto_k: int = option(40, "proto: k-means prototypes", check=count)
    proto_bank: int = option(2048, "proto: image embeddings in the running bank", check=count)
    proto_every: int = option(50, "proto: refresh the prototypes every N steps", check=count)
    proto_labels: int = option(2, "proto: nearest prototypes each sample is a positive of",
                               check=count)  # fmt: skip
    proto_temperature: float = option(0.1, "proto: softmax temperature over prototypes",
                                      check=positive)  # fmt: skip


def _build(o: ProtoOptions, run: Any) -> Objective:
    from clipforge.models import get_model_config

    try:
        import faiss  # noqa: F401
    except ImportError:
        raise ClipforgeError("loss 'proto' clusters with faiss: pip install faiss-cpu") from None
    model = get_model_config(getattr(run, "model", "tiny"), getattr(run, "model_args", None))
    return ProtoObjective(model.embed_dim, o.proto_k, o.proto_bank, o.proto_every,
                          o.proto_labels, o.proto_temperature, getattr(run, "seed", 0))  # fmt: skip


register(
    "proto",
    LossSpec(
        _build,
        summary="multi-label discrimination over k-means prototypes of a running bank (ProtoCLIP, MLCD)",
        contrastive=False,
        options=ProtoOptions,
    ),
)
