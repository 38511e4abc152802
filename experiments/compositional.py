"""Compositional binding: which pooling and objective make the default model bind?

    PYTHONPATH=. python experiments/compositional.py --out runs/compositional \
        [--steps 350] [--seed 0] [--variants default,cls,map,map+hardneg]

Trains the ``tiny`` preset on the shapes world once per variant, with the default run's
recipe (``clipforge train``: 350 steps, batch 128) and only the pooling, the hard
negatives or the objective changed, then evaluates on held-out test scenes: zero-shot
top-1 (colour x shape classes) and the ``compositional`` task (true caption against its
attribute-, relation-, shape- and count-swapped versions; chance 50%).

Variants (``--variants all`` runs every one, in this order):

``default``     ``clipforge train`` as it is: mean pooling, ``--loss clip``
``cls``, ``map``, ``grid``  the same with ``vision.pool`` = class token, attention pool
                (MAP), mean + grid cells
``X+hardneg``   variant X with ``--hard-negatives attribute,relation`` (extra negative
                columns of every image's softmax, NegCLIP style)
``X+attrneg``   variant X with ``--hard-negatives attribute`` (colour swaps only)
``X+textneg``   variant X with ``--loss clip+textneg`` and the same hard negatives, which
                the ``textneg`` term also contrasts with their own image under a margin
``X+textneg01`` the same at a tenth of the weight, ``--loss clip+0.1*textneg``
``X+textsep``   variant X with ``--loss clip+textsep`` and colour-swap hard negatives (all
                kinds with ``hardneg``): each caption pushed from its own negatives in
                the text tower alone
``X+bil``       ``vision.bilinear=128,text.bilinear=128``: a second-order pooled term on
                both towers, which keeps which features share a token; ``X+bilR`` rank R
``X+hnw3``      ``--hard-negative-weight 3``: each hard-negative column counts three times
                in its image's softmax; ``X+hnwW`` W times (``hnw10``, ``hnw5``, ...)
``X+para``      ``--caption all --max-captions 2``: two captions of every image, both
                positives (``textsep``'s paraphrase reference)
``X+pairs``     ``--shapes-args group_prob=0.2``: more scenes of distinct objects;
                ``X+pairsP`` group_prob = P/100 (``pairs10``: fewer groups still)
``filip``       ``--loss clip+filip`` (token-level late interaction beside the pooled loss)
``calib``       ../shared/CALIBRATION.md's class-token recipe: plain patch stem, random
                learned positions, class-token pooling, lr 1e-3, 30 warm-up steps;
                ``calib+map``, ``calib+mean``, ``calib+conv``, ``calib+sincos`` change
                its pooling, stem or position init (modifiers combine:
                ``calib+conv+sincos+hardneg``)

A run of another ``--steps`` keeps the default schedule's shape (warm-up 50/350 of the
steps; ``calib`` keeps its 30). ``--bench STEPS`` trains nothing: it interleaves STEPS
training steps of every listed variant in one process and prints each one's samples/s
and the step count that takes the wall clock of ``--steps`` steps of ``default``, so a
variant with a faster or slower step is compared at equal time, not equal steps. The held-out evaluation runs once, at the end (``--eval-every 0``), so a variant's wall
time is its training plus one evaluation. Each finished variant is appended to
``OUT/compositional.json`` and the markdown table ``OUT/compositional.md`` is rewritten,
so a long queue can be read (and stopped) at any point, and queues run side by side
(each with ``--threads 1``) can share one ``--out``; a variant whose run folder
already holds ``checkpoints/final.pt`` is read back instead of retrained.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from clipforge.config import from_dict
from clipforge.train import TrainConfig, train

HARD_NEGATIVES = "attribute,relation"
POOLS = {"default": "mean", "cls": "cls", "map": "map", "grid": "grid"}
# The compositional task's groups, in table order.
KINDS = ("attribute", "relation", "shape", "count")


# CALIBRATION.md's class-token recipe: CLIP's plain ViT (one strided patch convolution,
# random learned positions, class-token pooling) at half the default's peak learning rate
# and a 30-step warm-up. It bound attributes at 87% there (18 classes, another caption mix).
CALIB_MODEL = {"vision.stem": "patch", "vision.pos_init": "random", "vision.pool": "cls"}
CALIB_LR, CALIB_WARMUP = 1e-3, 30
# Modifiers after the base name: what each changes in the variant's config.
MODIFIERS = (
    "hardneg", "attrneg", "textneg", "textneg01", "textsep", "para", "bil", "hnw", "pairs", "map",
    "mean", "conv", "sincos", "twins", "twfrom", "shapeneg",
    "reltw", "tww", "temp", "nocol",
)  # fmt: skip
# Modifiers that take a number after their name (bil256, hnw5, pairs10), and the value of
# the bare name (bil = rank 128; pairs = group_prob 0.2; twins = share 0.5; hnw, twfrom,
# tww, temp and nocol have no bare form).
NUMBERED = {
    "bil": 128,
    "hnw": None,
    "pairs": 20,
    "twins": 50,
    "twfrom": None,
    "tww": None,
    "temp": None,
    "nocol": None,
}
# "pairs": of the multi-object draws, 20% instead of half are groups of one repeated
# object, so scenes of distinct objects, the only ones an attribute swap applies to, rise
# from 19% to 31% of the stream; single objects stay at 60% (counted over 20,000 scenes:
# a draw of several objects that does not fit is drawn again, which favours singles).
NEGATIVE_MODIFIERS = {"hardneg", "attrneg", "textneg", "textneg01", "textsep"}


def variant_config(name: str) -> dict[str, Any]:
    """TrainConfig overrides of variant ``name``: ``filip``, or a base (``default``,
    ``cls``, ``map``, ``grid``, ``calib``) followed by ``+``-joined modifiers
    (``hardneg``, ``attrneg``, ``textneg``, ``textneg01``, ``pairs``; for ``calib`` also
    ``map``, ``mean``,
    ``conv``, ``sincos``), e.g. ``calib+conv+sincos``."""
    if name == "filip":
        return {"loss": "clip+filip"}
    base, *parts = name.split("+")
    known = f"known: {', '.join(VARIANTS)}; modifiers {', '.join(MODIFIERS)}"
    if base not in POOLS and base != "calib":
        raise SystemExit(f"unknown variant {name!r} ({known})")
    mods, numbers = _numbered(name, parts, known)
    for m in mods:
        architectural = m in ("map", "mean", "conv", "sincos")
        if m not in MODIFIERS or (architectural and base != "calib") or mods.count(m) > 1:
            raise SystemExit(f"unknown variant {name!r} ({known})")
    if "textneg" in mods and "textneg01" in mods:
        raise SystemExit(f"variant {name!r}: textneg and textneg01 exclude each other")
    over: dict[str, Any] = {}
    if base == "calib":
        model = dict(CALIB_MODEL)
        for m, key, value in (
            ("map", "vision.pool", "map"), ("mean", "vision.pool", "mean"),
            ("conv", "vision.stem", "conv"), ("sincos", "vision.pos_init", "sincos"),
        ):  # fmt: skip
            if m in mods:
                model[key] = value
        over.update(model_args=model, lr=CALIB_LR, warmup=CALIB_WARMUP)
    elif base != "default":
        over["model_args"] = {"vision.pool": POOLS[base]}
    if "hardneg" in mods and "attrneg" in mods:
        raise SystemExit(f"variant {name!r}: hardneg and attrneg exclude each other")
    if NEGATIVE_MODIFIERS & set(mods):
        # attrneg: colour swaps alone. Under mean pooling a relation flip is a negative
        # the image embedding may not be able to reject, and its inverse phrasing ("B
        # above A" for "A below B") is one of the scene's own positive captions.
        # textsep alone: colour swaps too, the binding the text tower lacks.
        colour_only = "attrneg" in mods or ("textsep" in mods and "hardneg" not in mods)
        over["hard_negatives"] = "attribute" if colour_only else HARD_NEGATIVES
    if "shapeneg" in mods:
        # Shape swaps as well ("a red square" against a red circle): the zero-shot errors
        # of the twin runs are shape confusions (circle/square, star/triangle), never
        # colour ones (experiments/zeroshot_errors.py). Measured, it does not win them
        # back (README, Compositional binding).
        kinds = over.get("hard_negatives")
        over["hard_negatives"] = f"{kinds},shape" if kinds else "shape"
    if "bil" in mods:
        # Second-order pooling on both towers (models/bilinear.py); bare, rank = embed width.
        rank = int(numbers["bil"])
        model = dict(over.get("model_args", {}))
        model.update({"vision.bilinear": rank, "text.bilinear": rank})
        over["model_args"] = model
    if "hnw" in mods:
        # Each hard-negative column weighs as w columns in its image's softmax.
        over["hard_negative_weight"] = float(numbers["hnw"])
    if "temp" in mods:
        # tempT: the run starts at softmax temperature T/1000 (CLIP's own: 0.07).
        over["init_temperature"] = numbers["temp"] / 1000
    if "para" in mods:
        # Two captions of each image, both positives: a caption's paraphrase in the batch.
        over.update(caption="all", max_captions=2)
    shapes: dict[str, Any] = {}
    if "pairs" in mods:
        shapes["group_prob"] = numbers["pairs"] / 100
    if "nocol" in mods:
        # nocolP: P% of single-object and group scenes captioned without colour words, so
        # that only shape can match them (shapes colourless=P/100).
        shapes["colourless"] = numbers["nocol"] / 100
    for needs_twins in ("twfrom", "reltw", "tww"):
        if needs_twins in mods and "twins" not in mods:
            raise SystemExit(f"variant {name!r}: {needs_twins} needs twins")
    if "twins" in mods:
        # Colour-swap twins (data/shapes/twins.py): the image-side counterpart of the
        # colour-swap caption, so the caption must also pick its image over the twin's.
        shapes.update(twins=numbers["twins"] / 100, twin_kinds=["attribute"])
        if "tww" in mods:
            # twwW: a twin and the scene it follows weigh W/100 of a sample in the loss.
            shapes["twin_weight"] = numbers["tww"] / 100
        if "reltw" in mods:
            # And mirrored twins of two-object scenes: "A left of B" beside "A right of
            # B", the image-side counterpart of the relation-flip caption.
            shapes["twin_kinds"] = ["attribute", "relation"]
        if "twfrom" in mods:
            # twfromS: from step S, once colours and shapes are learned (sample index).
            shapes["twins_from"] = int(numbers["twfrom"]) * TrainConfig.batch_size
    if shapes:
        over["shapes_args"] = shapes
    if "textneg" in mods:
        over["loss"] = "clip+textneg"
    if "textneg01" in mods:
        # A tenth of the weight: the full term kept the default on the colour plateau.
        over["loss"] = "clip+0.1*textneg"
    if "textsep" in mods:
        over["loss"] = over.get("loss", "clip") + "+textsep"
    return over


def _numbered(name: str, parts: list[str], known: str) -> tuple[list[str], dict[str, float]]:
    """Split numbered modifiers (``hnw5``) into their name and value; others pass as they
    are. A numbered modifier given twice (``hnw3+hnw10``) is refused."""
    mods: list[str] = []
    numbers: dict[str, float] = {}
    for p in parts:
        m = re.fullmatch(r"([a-z]+?)(\d+(?:\.\d+)?)?", p)
        if m and m.group(1) in NUMBERED:
            key, value = m.group(1), m.group(2)
            if key in numbers:
                raise SystemExit(f"variant {name!r}: {key} is given twice")
            bare = NUMBERED[key]
            if value is None and bare is None:
                raise SystemExit(f"unknown variant {name!r} ({key} needs a number: {key}3)")
            numbers[key] = float(value) if value is not None else float(bare)
            mods.append(key)
        else:
            mods.append(p)
    return mods, numbers


VARIANTS: tuple[str, ...] = (
    "default", "cls", "map", "map+hardneg", "map+textneg", "cls+textneg", "cls+hardneg",
    "default+hardneg", "default+textneg", "filip", "grid", "grid+hardneg", "calib",
    "calib+map", "calib+conv", "calib+hardneg", "default+textneg01", "default+attrneg",
    "default+attrneg+textneg01", "default+attrneg+pairs", "grid+attrneg",
)  # fmt: skip


def warmup(steps: int) -> int:
    """The default run's warm-up (50 of 350 steps), scaled to a shorter or longer run so
    the schedule keeps its shape."""
    return max(1, round(50 * steps / 350))


def run_config(name: str, steps: int, seed: int, threads: int, out: Path) -> TrainConfig:
    """The TrainConfig of variant ``name``: the default run's, with the variant's
    overrides (its own warm-up where it has one)."""
    over = variant_config(name)
    return from_dict(TrainConfig, {
        "steps": steps, "seed": seed, "threads": threads, "eval_every": 0,
        "warmup": warmup(steps), "evals": "zeroshot,retrieval,compositional",
        "ckpt_every": steps, "progress": False, "out": str(out), **over,
    })  # fmt: skip


def bench(names: list[str], steps: int, threads: int, warm: int = 3) -> dict[str, float]:
    """Training samples/s of each variant (data, forward, backward, AdamW), measured
    side by side: every variant's model, objective, optimizer and data stream is built
    in this process, and their steps are interleaved one by one, so a change of machine
    load (other jobs) hits all of them alike. Each variant's ``warm`` first steps
    (allocator, tokenizer cache) are not timed; the rate is the batch size over the
    median of its ``steps`` timed steps."""
    import statistics

    import torch

    from clipforge.data.loader import iter_batches
    from clipforge.models import CLIP
    from clipforge.train.builders import build
    from clipforge.train.distributed import World
    from clipforge.train.optim import build_optimizer
    from clipforge.train.step import Stepper

    world = World()
    torch.set_num_threads(threads)
    runs = []
    for n in names:
        cfg = run_config(n, 350, 0, threads, Path("unused"))
        parts = build(cfg, world)
        torch.manual_seed(0)
        model = CLIP(parts.model_config, parts.loss.init_logit_scale, parts.loss.init_logit_bias)
        objective = parts.objective
        objective.attach(model)
        trained = torch.nn.ModuleList([model, objective])
        opt = build_optimizer(trained, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps)
        model.train()
        batches = iter_batches(parts.source, parts.processor, parts.collate, cfg.batch_size)
        runs.append((n, cfg.batch_size, Stepper(cfg, world, model, model, objective, opt), batches))
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(warm + steps):
        for n, _, stepper, batches in runs:
            t0 = time.perf_counter()
            stepper(next(batches), i)
            if i >= warm:
                times[n].append(time.perf_counter() - t0)
    return {n: size / statistics.median(times[n]) for n, size, _, _ in runs}


def _final(folder: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("final"))


def row_of(name: str, final: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """One table row: the metrics the table shows, fractions in [0, 1]."""
    row: dict[str, Any] = {
        "variant": name,
        "zeroshot": final["zeroshot/top1"],
        "i2t_R@1": final.get("retrieval/i2t_R@1"),
    }
    for kind in KINDS:
        row[f"{kind}_swap"] = final.get(f"compositional/{kind}/accuracy")
    row["seconds"] = None if seconds is None else round(seconds)
    return row


def markdown(results: list[dict[str, Any]], steps: int, seed: int) -> str:
    head = (
        f"| variant ({steps} steps, seed {seed}) | zero-shot | i2t R@1 | attribute swap "
        "| relation swap | shape swap | count swap | wall time |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for r in results:
        cells = [pct(r["zeroshot"]), pct(r["i2t_R@1"])]
        cells += [pct(r[f"{k}_swap"]) for k in KINDS]
        wall = "-" if r["seconds"] is None else f"{r['seconds'] / 60:.1f} min"
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/compositional")
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS[:6]),
                    help="comma list of variants, or 'all' (default: the first six)")  # fmt: skip
    ap.add_argument("--bench", type=int, default=0, metavar="STEPS",
                    help="instead of training: samples/s of each variant, STEPS steps each "
                         "interleaved in one process, and its step count equal in wall "
                         "clock to --steps of default")  # fmt: skip
    a = ap.parse_args()
    names = list(VARIANTS) if a.variants == "all" else [v.strip() for v in a.variants.split(",")]
    for n in names:  # every name checked before anything is trained
        variant_config(n)
    if a.bench:
        speeds = bench(["default"] + [n for n in names if n != "default"], a.bench, a.threads)
        for n, v in speeds.items():
            ratio = v / speeds["default"]
            print(json.dumps({"variant": n, "samples_per_s": round(v, 1),
                              "ratio": round(ratio, 3),
                              "steps_equal_to_default": round(a.steps * ratio)}))  # fmt: skip
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "compositional.json"
    for name in names:
        folder = out / f"{name.replace('+', '_')}_s{a.seed}_n{a.steps}"
        seconds: float | None = None
        if not (folder / "checkpoints" / "final.pt").exists():
            t0 = time.perf_counter()
            cfg = run_config(name, a.steps, a.seed, a.threads, folder)
            train(cfg)
            seconds = time.perf_counter() - t0
        row = row_of(name, _final(folder), seconds)
        row.update(steps=a.steps, seed=a.seed)
        # Read just before writing: another queue may share the folder and have added rows.
        results: list[dict[str, Any]] = json.loads(table.read_text()) if table.is_file() else []
        # A re-read variant keeps the wall time its training run recorded.
        old = [
            r for r in results if (r["variant"], r["steps"], r["seed"]) == (name, a.steps, a.seed)
        ]
        if seconds is None and old:
            row["seconds"] = old[0]["seconds"]
        results = [r for r in results if r not in old] + [row]
        part = table.with_suffix(".json.part")
        part.write_text(json.dumps(results, indent=2) + "\n")
        part.replace(table)
        mine = [r for r in results if (r["steps"], r["seed"]) == (a.steps, a.seed)]
        (out / "compositional.md").write_text(markdown(mine, a.steps, a.seed))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
