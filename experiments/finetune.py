"""Fine-tuning a shapes-world model on a shifted domain: which method, at what cost?

    PYTHONPATH=. nice -n 5 python experiments/finetune.py --base runs/base --out runs/finetune

The base model (``--base``: a run folder or checkpoint; without it, the quick-start
recipe is trained first for ``--base-steps``) knows the eight training colours. The
shifted domain draws every object in the three colours it never saw, ``pink``, ``brown``
and ``grey`` (``--shapes-args colours=[pink,brown,grey]``): new pixels, and new words in
the captions. Each method fine-tunes the base on that domain with the same steps, batch,
seed and sample stream:

* full fine-tune, with an EMA of its weights (``--ema-decay``, ``checkpoints/ema.pt``,
  scored apart); lock-image (LiT: only the text tower and the heads train); LoRA rank 8
  (attention and MLP of both towers; the customary higher learning rate); patch dropout
  0.5;
* WiSE-FT: ``(1 - alpha) base + alpha full``, for a curve of alphas;
* MoE upcycling (CLIP-MoE, folder ``moe``): ``clipforge upcycle`` of the base
  (``--moe-experts 4 --moe-top-k 2``, written as ``OUT/moe.pt``), fine-tuned like the
  full fine-tune (``--init OUT/moe.pt --model-args moe_experts=4,moe_top_k=2``) with the
  routers' balancing loss (``--moe-aux-weight``); its expert load (share of routed token
  slots per expert and layer, on 256 shifted-domain test samples) before and after, and
  its training speed against the dense full fine-tune's, timed in turns in this process;
  with ``--moe-equal-wall``, the dense full fine-tune again with as many steps as the MoE
  fine-tune's time holds at that ratio (folder ``full_moe_wall``);
* with ``--equal-wall``, patch dropout 0.5 again with as many steps as fit in the full
  fine-tune's training wall time at its measured speed (accuracy at equal wall-clock).

Each model is scored by ``clipforge.eval.suite.evaluate``: in-domain zero-shot top-1 over
the 15 new classes (5 shapes x 3 held-out colours, single objects of the test split,
written once as an image folder) and zero-shot top-1 on the base domain's 40 classes
(forgetting). Writes ``OUT/finetune.json``, ``OUT/finetune.md`` and
``OUT/wise_curve.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from clipforge.config import from_dict
from clipforge.data.shapes import SHAPES, ShapesWorld
from clipforge.data.tokenizer import get_tokenizer
from clipforge.eval.suite import evaluate
from clipforge.models import CLIP, load, save_checkpoint
from clipforge.models.moe import expert_shares, upcycle
from clipforge.models.wise import interpolate
from clipforge.train import TrainConfig, finetune, train

SHIFTED = ("pink", "brown", "grey")
TEMPLATES = ("a {}", "a photo of a {}", "one {}", "there is a {}", "a picture of a {}")
# (label, folder, TrainConfig overrides, checkpoint to score inside the run folder)
METHODS: list[tuple[str, str, dict[str, Any], str]] = [
    ("full fine-tune", "full", {}, "final.pt"),
    # EMA only shadows the weights, so the full fine-tune's run (with --ema-decay) holds it.
    ("EMA of full fine-tune", "full", {}, "ema.pt"),
    ("lock-image (LiT)", "lit", {"lock_image": True}, "final.pt"),
    ("LoRA r8", "lora", {"lora_rank": 8, "lora_alpha": 16.0}, "final.pt"),
    ("patch dropout 0.5", "pdrop", {"patch_dropout": 0.5}, "final.pt"),
]


def shifted_test_set(folder: Path, image_size: int, per_class: int) -> Path:
    """Single-object test images of the 15 shifted classes as a class-folder data set."""
    if (folder / "templates.txt").exists():
        return folder
    world = ShapesWorld(image_size, split="test", seed=0)
    i = 0
    for colour in SHIFTED:
        for shape in SHAPES:
            d = folder / f"{colour} {shape}"
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                world.object_sample(i, shape, colour).image.save(d / f"{k:03d}.png")
                i += 1
    (folder / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return folder


def score(model: CLIP, shifted: Path, per_class: int) -> dict[str, float]:
    tok = get_tokenizer(model.cfg.text.context_length)
    base = evaluate(model, tok, "zeroshot", per_class=per_class)
    new = evaluate(model, tok, "zeroshot", data=[str(shifted)])
    top1 = lambda r: r["tasks"]["zeroshot"]["metrics"]["top1"]  # noqa: E731
    return {"in_domain": top1(new), "base_domain": top1(base)}


def trainable(base: CLIP, cfg: TrainConfig) -> int:
    return finetune.configure(copy.deepcopy(base), cfg).trainable


def architecture(base: Path) -> dict[str, Any]:
    """The ``model`` and ``model_args`` of a base run folder (a fine-tune must build the
    same architecture to take its weights); a bare checkpoint is taken as ``tiny``."""
    import yaml

    f = base / "config.yaml"
    if not f.is_file():
        return {}
    saved = yaml.safe_load(f.read_text())
    return {"model": saved["model"], "model_args": saved.get("model_args") or {}}


def finetune_cfg(a: argparse.Namespace, base: Path, folder: Path, **over: Any) -> TrainConfig:
    lr = a.lr * (a.lora_lr_factor if over.get("lora_rank") else 1.0)
    fields = dict(
        **architecture(base), init=str(base), steps=a.steps, batch_size=a.batch_size, lr=lr,
        warmup=max(1, a.steps // 6), shapes_args={"colours": list(SHIFTED)}, evals="none",
        eval_every=0, threads=a.threads, progress=False, seed=a.seed, out=str(folder),
    )  # fmt: skip
    fields.update(over)
    fields["ckpt_every"] = fields["steps"]
    return from_dict(TrainConfig, fields)


def run(cfg: TrainConfig) -> float:
    """Train ``cfg`` unless its run is finished; the training wall time (seconds, saved
    beside the run so a rerun of the script reports it again)."""
    folder = Path(str(cfg.out))
    stamp = folder / "wall_seconds.txt"
    if (folder / "checkpoints" / "final.pt").exists() and stamp.exists():
        return float(stamp.read_text())
    t0 = time.perf_counter()
    train(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    stamp.write_text(f"{wall:.1f}\n")
    return wall


def samples_per_s(folder: Path) -> float:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r]
    return sum(rates) / len(rates)


def shifted_batches(cfg: TrainConfig, image_size: int, context: int, n: int, split: str) -> list:
    """``n`` batches of ``cfg.batch_size`` shifted-domain samples of ``split``, as the
    trainer collates them (crops, tokens)."""
    from clipforge.data.batches import Collator, SampleProcessor
    from clipforge.data.loader import iter_batches
    from clipforge.data.shapes import ShapesConfig
    from clipforge.data.sources import ShapesSource
    from clipforge.data.transforms import SeededCrop
    from clipforge.models import get_model_config

    mcfg = get_model_config(cfg.model, cfg.model_args)
    world = ShapesWorld(image_size, split=split, config=ShapesConfig(colours=list(SHIFTED)))
    it = iter_batches(ShapesSource(world), SampleProcessor(SeededCrop(image_size), seed=0),
                      Collator(get_tokenizer(context), mcfg.mean, mcfg.std), cfg.batch_size)  # fmt: skip
    return [next(it) for _ in range(n)]


def expert_load(model: CLIP, batches: list) -> dict[str, Any]:
    """Each MoE layer's share of routed token slots per expert over ``batches`` (image
    and text towers, eval mode), with the extremes over all layers and experts."""
    totals: dict[str, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(b.images, b.tokens)
            for name, share in expert_shares(model).items():
                totals[name] = totals.get(name, 0) + share / len(batches)
    layers = {k.removesuffix(".mlp"): [round(float(x), 3) for x in v] for k, v in totals.items()}
    flat = [x for v in layers.values() for x in v]
    return {"min_share": min(flat), "max_share": max(flat), "layers": layers}


def step_rates(
    configs: dict[str, tuple[TrainConfig, Path]], batches: list, rounds: int
) -> dict[str, float]:
    """Training samples/s of each ``(config, init checkpoint)`` in turns, in this process
    (full steps through the trainer's Stepper: forward, backward, AdamW), the median of
    ``rounds``: a machine shared with other jobs slows them alike, so their ratio holds."""
    import statistics

    from clipforge.losses import get_loss
    from clipforge.models import get_model_config
    from clipforge.train.distributed import World
    from clipforge.train.optim import build_optimizer
    from clipforge.train.step import Stepper

    steppers = {}
    for name, (cfg, init) in configs.items():
        spec = get_loss(cfg.loss)
        model = CLIP(get_model_config(cfg.model, cfg.model_args), spec.init_logit_scale)
        model.load_state_dict(load(init).state_dict())
        finetune.configure(model, cfg)
        model.train()
        objective = spec.build(cfg)
        opt = build_optimizer(torch.nn.ModuleList([model, objective]), cfg.lr, cfg.weight_decay,
                              (cfg.beta1, cfg.beta2), cfg.eps)  # fmt: skip
        steppers[name] = Stepper(cfg, World(), model, model, objective, opt)
        steppers[name](batches[0], 0)  # warm-up: allocator, first-call costs
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, stepper in steppers.items():
            t0 = time.perf_counter()
            for i, b in enumerate(batches):
                stepper(b, i)
            rates[name].append(
                len(batches) * batches[0].images.shape[0] / (time.perf_counter() - t0)
            )
    return {name: statistics.median(r) for name, r in rates.items()}


def logged(folder: Path, key: str) -> list[float]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def plot_wise(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs = [c["alpha"] for c in curve]
    ax.plot(xs, [100 * c["in_domain"] for c in curve], "o-", label="in-domain (held-out colours)")
    ax.plot(xs, [100 * c["base_domain"] for c in curve], "s-", label="base domain zero-shot")
    ax.set_xlabel("WiSE-FT alpha (0 = base, 1 = full fine-tune)")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="base run folder or checkpoint (default: train one)")
    ap.add_argument("--base-steps", type=int, default=250)
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-lr-factor", type=float, default=4.0)
    ap.add_argument("--ema-decay", type=float, default=0.95)
    ap.add_argument("--per-class", type=int, default=10, help="test images per class")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--equal-wall", action="store_true")
    ap.add_argument("--moe-experts", type=int, default=4)
    ap.add_argument("--moe-top-k", type=int, default=2)
    ap.add_argument("--moe-aux-weight", type=float, default=0.01)
    ap.add_argument("--moe-equal-wall", action="store_true",
                    help="also the dense fine-tune with as many steps as the MoE's time holds")  # fmt: skip
    ap.add_argument("--rate-rounds", type=int, default=3,
                    help="rounds of the in-turn speed measurement of MoE against dense")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="the fine-tunes' seed (stream, routers)")
    ap.add_argument("--only", default="", help="comma list of folders to run (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.base:
        base_path = Path(a.base)
    else:
        base_path = out / "base"
        cfg = from_dict(TrainConfig, dict(steps=a.base_steps, eval_every=0, progress=False,
                                          out=str(base_path), threads=a.threads))  # fmt: skip
        if not (base_path / "checkpoints" / "final.pt").exists():
            run(cfg)
    base = load(base_path)
    shifted = shifted_test_set(out / "shifted_test", base.cfg.vision.image_size, a.per_class)
    only = {s for s in a.only.split(",") if s}
    results: list[dict[str, Any]] = []

    def report(label: str, model: CLIP, **extra: Any) -> dict[str, Any]:
        row = {"method": label, **score(model, shifted, a.per_class), **extra}
        results.append(row)
        print(json.dumps(row), flush=True)
        return row

    base_cfg = finetune_cfg(a, base_path, out / "none")
    report("base (no fine-tune)", base, seconds=0.0, trainable=0, steps=0)
    walls: dict[str, float] = {}
    for label, name, over, ckpt in METHODS:
        if only and name not in only:
            continue
        if name == "full":
            over = {"ema_decay": a.ema_decay}
        cfg = finetune_cfg(a, base_path, out / name, **over)
        walls[name] = run(cfg)
        model = load(out / name / "checkpoints" / ckpt)
        report(label, model, seconds=round(walls[name], 1), trainable=trainable(base, cfg),
               steps=cfg.steps, samples_per_s=round(samples_per_s(out / name), 1))  # fmt: skip

    curve = []
    if (out / "full" / "checkpoints" / "final.pt").exists():
        full = load(out / "full" / "checkpoints" / "final.pt")
        for alpha in (float(x) for x in a.alphas.split(",")):
            mixed = interpolate(base, full, alpha)
            if alpha == 0.5:
                save_checkpoint(mixed, out / "wise0.5.pt", "clipforge")
            s = score(mixed, shifted, a.per_class)
            curve.append({"alpha": alpha, **s})
            print(json.dumps(curve[-1]), flush=True)
        half = next((c for c in curve if c["alpha"] == 0.5), None)
        if half is not None:
            results.append({"method": "WiSE-FT alpha 0.5 (of full)", "in_domain": half["in_domain"],
                            "base_domain": half["base_domain"], "seconds": walls.get("full", 0.0),
                            "trainable": trainable(base, base_cfg), "steps": a.steps})  # fmt: skip
        plot_wise(curve, out / "wise_curve.png")

    if a.equal_wall and "full" in walls and "pdrop" in walls:
        # As many steps as the full fine-tune's wall time holds at patch dropout's speed.
        steps = max(1, round(a.steps * walls["full"] / walls["pdrop"]))
        cfg = finetune_cfg(a, base_path, out / "pdrop_wall", patch_dropout=0.5, steps=steps)
        wall = run(cfg)
        report("patch dropout 0.5, full's wall time", load(out / "pdrop_wall" / "checkpoints" / "final.pt"),
               seconds=round(wall, 1), trainable=trainable(base, cfg), steps=steps,
               samples_per_s=round(samples_per_s(out / "pdrop_wall"), 1))  # fmt: skip

    moe_info: dict[str, Any] = {}
    if not only or "moe" in only:
        moe_info = run_moe(a, base, base_path, out, walls, report)

    (out / "finetune.json").write_text(
        json.dumps({"results": results, "wise": curve, "moe": moe_info}, indent=2)
    )
    lines = [
        "| method | steps | in-domain top-1 (15 new classes) | base-domain zero-shot (40) "
        "| train wall (s) | samples/s | trainable parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sps = r.get("samples_per_s")
        lines.append(
            f"| {r['method']} | {r['steps']} | {100 * r['in_domain']:.1f}% | "
            f"{100 * r['base_domain']:.1f}% | {r['seconds']:.0f} | "
            f"{sps if sps is not None else '-'} | {r['trainable']:,} |"
        )
    if curve:
        lines += ["", "| WiSE-FT alpha | in-domain | base domain |", "|---|---|---|"]
        lines += [f"| {c['alpha']:g} | {100 * c['in_domain']:.1f}% | {100 * c['base_domain']:.1f}% |"
                  for c in curve]  # fmt: skip
    if moe_info:
        lines += ["", "| MoE | value |", "|---|---|"]
        lines += [
            f"| {k} | {v} |" for k, v in moe_info.items() if k not in ("load_before", "load_after")
        ]
        for when in ("load_before", "load_after"):
            lines += ["", f"{when} (share of token slots per expert):", ""]
            lines += [f"- {layer}: {shares}" for layer, shares in moe_info[when]["layers"].items()]
    (out / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def run_moe(a: argparse.Namespace, base: CLIP, base_path: Path, out: Path,
            walls: dict[str, float], report: Any) -> dict[str, Any]:  # fmt: skip
    """Upcycle the base, fine-tune it as the full fine-tune, report it; returns the
    load balance, parameter counts and speed against the dense fine-tune."""
    moe_path = out / "moe.pt"
    torch.manual_seed(a.seed)  # the routers are drawn fresh: the same ones on every rerun
    upcycled = upcycle(base, a.moe_experts, a.moe_top_k)
    if not moe_path.exists():
        save_checkpoint(upcycled, moe_path, "clipforge")
    arch = architecture(base_path)
    moe_args = {
        **arch.get("model_args", {}),
        "moe_experts": a.moe_experts,
        "moe_top_k": a.moe_top_k,
    }
    cfg = finetune_cfg(a, base_path, out / "moe", init=str(moe_path), model_args=moe_args,
                       moe_aux_weight=a.moe_aux_weight)  # fmt: skip
    walls["moe"] = run(cfg)
    model = load(out / "moe" / "checkpoints" / "final.pt")
    report(f"MoE upcycled ({a.moe_experts} experts, top {a.moe_top_k})", model,
           seconds=round(walls["moe"], 1), trainable=finetune.configure(copy.deepcopy(upcycled), cfg).trainable,
           steps=cfg.steps, samples_per_s=round(samples_per_s(out / "moe"), 1))  # fmt: skip
    size, context = base.cfg.vision.image_size, base.cfg.text.context_length
    probe = shifted_batches(cfg, size, context, 8, "test")  # 8 x 32 = 256 samples
    dense_cfg = finetune_cfg(a, base_path, out / "full")
    rates = step_rates({"dense": (dense_cfg, base_path), "moe": (cfg, moe_path)},
                       shifted_batches(cfg, size, context, 2, "train"), a.rate_rounds)  # fmt: skip
    aux = logged(out / "moe", "moe_aux_loss")
    layers = len(upcycled.visual.transformer.blocks) + len(upcycled.text.transformer.blocks)
    e, k = a.moe_experts, a.moe_top_k
    mlp = sum(p.numel() for n, p in base.named_parameters() if ".mlp." in n)
    info = {
        "parameters_dense": sum(p.numel() for p in base.parameters()),
        "parameters_moe": sum(p.numel() for p in upcycled.parameters()),
        # Each token runs top_k of the E expert MLPs (and the router) instead of one MLP.
        "parameters_active_per_token": sum(p.numel() for p in base.parameters())
        + (k - 1) * mlp
        + sum(p.numel() for n, p in upcycled.named_parameters() if "router" in n),
        "moe_layers": layers,
        "aux_loss_first_logged": round(aux[0], 4),
        "aux_loss_last_logged": round(aux[-1], 4),
        "aux_loss_balanced_value": float(layers),
        "samples_per_s_dense_in_turns": round(rates["dense"], 1),
        "samples_per_s_moe_in_turns": round(rates["moe"], 1),
        "samples_per_s_ratio_moe_over_dense": round(rates["moe"] / rates["dense"], 3),
        "even_share": round(1 / e, 3),
        "load_before": expert_load(upcycled, probe),
        "load_after": expert_load(model, probe),
    }
    if a.moe_equal_wall:
        # The dense fine-tune given the steps that the MoE fine-tune's time holds at their
        # speed ratio measured in turns above: accuracy at equal training compute time.
        steps = max(1, round(a.steps * rates["dense"] / rates["moe"]))
        wall_cfg = finetune_cfg(a, base_path, out / "full_moe_wall", steps=steps)
        wall = run(wall_cfg)
        report("full fine-tune, the MoE's wall time", load(out / "full_moe_wall"),
               seconds=round(wall, 1), trainable=trainable(base, wall_cfg), steps=steps,
               samples_per_s=round(samples_per_s(out / "full_moe_wall"), 1))  # fmt: skip
        info["equal_wall_dense_steps"] = steps
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    raise SystemExit(main())
