"""Mixture-of-experts MLPs by upcycling (CLIP-MoE: Zhang et al., 2024; sparse upcycling:
Komatsuzaki et al., 2023).

``moe_experts E > 0`` in the model config turns the MLP of every block of both towers
into ``E`` experts and a linear router: each token goes to the ``moe_top_k`` experts of
highest router probability, and their outputs are averaged with those probabilities
renormalised over the chosen ones. :func:`upcycle` copies a dense model's MLP into every
expert; since the chosen weights sum to 1, the upcycled model computes the dense one
at initialisation (to rounding), and fine-tuning lets the experts diverge.

A router that sends every token to the same experts wastes the others, so training adds
the load-balancing loss of Switch Transformers (Fedus et al., 2022),
``E sum_e f_e P_e``: ``f_e`` the share of routed token slots that expert ``e`` takes,
``P_e`` its mean router probability; 1 when balanced. :func:`aux_loss` sums it over the
blocks of the last forward; the trainer adds ``--moe-aux-weight`` times it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.models.transformer import MLP


class MoEMLP(nn.Module):
    """``experts`` copies of an MLP behind a top-``top_k`` router."""

    def __init__(self, width: int, hidden: int, act: str, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(width, experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.experts = nn.ModuleList(MLP(width, hidden, act) for _ in range(experts))
        self.last_aux: torch.Tensor | None = None  # the balancing loss of the last forward
        # Each expert's share of the routed token slots of the last forward (``f_e``).
        self.last_share: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        # At least float32: bf16 probabilities would pick experts by rounding noise.
        probs = self.router(flat).to(torch.promote_types(flat.dtype, torch.float32))
        probs = probs.softmax(dim=-1)  # [N, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        n_experts = len(self.experts)
        if torch.compiler.is_exporting():
            out = self._dense_dispatch(flat, chosen, weights)
        else:
            out = torch.zeros_like(flat)
            for e, expert in enumerate(self.experts):
                rows, slot = (chosen == e).nonzero(as_tuple=True)
                if rows.numel():
                    out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None])
        share = F.one_hot(chosen, n_experts).float().sum(dim=(0, 1)) / chosen.numel()
        self.last_aux = n_experts * (share * probs.mean(dim=0)).sum()
        self.last_share = share.detach()
        return out.reshape(x.shape)

    def _dense_dispatch(
        self, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The routed mixture with every expert run on every token and a zero gate where
        it was not chosen: the same sums in the same expert order (a zero term adds
        exactly), without the data-dependent row counts that an exported graph (ONNX)
        cannot hold. ``experts / top_k`` times the MLP work of the sparse dispatch."""
        gates = torch.zeros(flat.shape[0], len(self.experts), dtype=flat.dtype, device=flat.device)
        gates = gates.scatter(1, chosen, weights)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            out = out + expert(flat) * gates[:, e, None]
        return out


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The summed load-balancing losses of the last forward (None: no experts)."""
    losses = [m.last_aux for m in moe_layers(model) if m.last_aux is not None]
    return torch.stack(losses).sum() if losses else None


def expert_shares(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each MoE layer's share of routed token slots per expert in the last forward, by
    module name (``visual.transformer.blocks.0.mlp``): the load balance, 1/E each when
    even. A layer that has not run yet is left out."""
    return {
        name: m.last_share
        for name, m in model.named_modules()
        if isinstance(m, MoEMLP) and m.last_share is not None
    }


def make_experts(model: nn.Module, experts: int, top_k: int, act: str) -> None:
    """Swap every block's MLP of ``model``'s two towers for a :class:`MoEMLP` (fresh
    weights: the architecture a config with ``moe_experts`` describes)."""
    for tower in (model.visual, model.text):
        for blk in tower.transformer.blocks:
            dense = blk.mlp
            blk.mlp = MoEMLP(dense.fc1.in_features, dense.fc1.out_features, act, experts, top_k)


def upcycle(model: nn.Module, experts: int, top_k: int) -> nn.Module:
    """A copy of the dense ``model`` whose MLPs are ``experts`` copies each, routed
    top-``top_k``; it computes the dense model's function at initialisation."""
    from clipforge.models.clip import CLIP

    if model.cfg.moe_experts:
        from clipforge.errors import ClipforgeError

        raise ClipforgeError(f"the model already has {model.cfg.moe_experts} experts per MLP")
    cfg = model.cfg.with_overrides({"moe_experts": experts, "moe_top_k": top_k})
    cfg.validate()
    new = CLIP(cfg)
    state = {}
    for name, t in model.state_dict().items():
        if ".mlp." in name and ".blocks." in name:
            head, _, tail = name.partition(".mlp.")
            for e in range(experts):
                state[f"{head}.mlp.experts.{e}.{tail}"] = t.clone()
        else:
            state[name] = t
    for name, t in new.state_dict().items():
        if name.endswith("mlp.router.weight"):
            state[name] = t  # freshly drawn: small, so every expert starts near 1/E
    new.load_state_dict(state)
    # The upcycled towers compute the dense ones, so a caption decoder reading their
    # image tokens stays valid as it is.
    new.heads.update(model.heads)
    new.tokenizer_spec = model.tokenizer_spec
    return new.to(next(model.parameters()).dtype)


__all__ = ["MoEMLP", "aux_loss", "expert_shares", "make_experts", "moe_layers", "upcycle"]
