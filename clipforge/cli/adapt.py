"""``clipforge adapt fit|eval|bench``: few-shot adaptation of a frozen model. Thin: each
command checks its outputs (clipforge.outputs), calls clipforge.adapt and prints what it
returns."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from clipforge.cli.flags import overwrite_flag
from clipforge.errors import ClipforgeError

SUBCOMMANDS = ("fit", "eval", "bench", "compose")


def spell_subcommand(argv: list[str]) -> list[str]:
    """``adapt fit ...`` -> ``adapt-fit ...``: the three commands are parsers of their own
    beside ``adapt`` (whose help lists the methods); this reads the spelling users type."""
    if argv[:1] == ["adapt"] and argv[1:2] and argv[1] in SUBCOMMANDS:
        return [f"adapt-{argv[1]}", *argv[2:]]
    return argv


def adapt_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.adapt import METHODS
    from clipforge.config import add_number
    from clipforge.ranges import count, count0

    def _entry(name: str) -> str:
        import dataclasses

        spec = METHODS.get(name)
        opts = [f.name for f in dataclasses.fields(spec.options)] if spec.options else []
        tail = f"\n  {'':<13} options: {', '.join(opts)}" if opts else ""
        return f"  {name:<13} {spec.summary}{tail}"

    listing = "\n".join(_entry(n) for n in METHODS.names())
    a = sub.add_parser(
        "adapt",
        help="few-shot adaptation of a frozen model: 'adapt fit', 'adapt eval', 'adapt bench'",
        description="Adapt a frozen model to new classes from a few labelled images per class "
        "(an image folder, one sub-folder per class). Commands:\n"
        "  clipforge adapt fit MODEL --data FOLDER --method M --shots K --out A.safetensors\n"
        "  clipforge adapt eval MODEL --adapter A.safetensors --data TEST_FOLDER\n"
        "  clipforge adapt bench MODEL --data FOLDER --methods all --shots 1,16 --seeds 3 "
        "--out DIR\nMethod options: fit --options K=V,...; bench --options METHOD:K=V,... "
        "(repeatable).\nMethods (--method):\n" + listing + "\nCompositional matching (not a "
        "classifier): comclip, crops of the objects against the caption's parts, beside the "
        "global score (ComCLIP; training-free):\n"
        "  clipforge adapt compose MODEL [--data CHOICE_JSON --boxes BOXES.json]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.set_defaults(func=lambda args: a.print_help() or 0)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="run folder or checkpoint file")
        p.add_argument("--cache", help="embedding cache folder (default: none for fit/eval, "
                       "OUT/cache for bench)")  # fmt: skip
        add_number(p, "--threads", count, 1, "torch threads")

    def method_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--options", default="", metavar="K=V,...",
                       help="method options, e.g. alpha=1,beta=5.5 (see the method's module; "
                       "ranges checked)")  # fmt: skip

    f = sub.add_parser("adapt-fit", help="same as 'clipforge adapt fit'",
                       description="Fit one method on K shots per class and save it.")  # fmt: skip
    common(f)
    f.add_argument("--data", required=True, help="training image folder (one sub-folder per class)")
    f.add_argument("--method", required=True, choices=METHODS.names())
    add_number(f, "--shots", count, 16, "images per class")
    add_number(f, "--seed", count0, 0, "seed of the few-shot draw")
    method_options(f)
    f.add_argument("--out", required=True, help="adapter file (.safetensors; a .json sidecar "
                   "is written beside it)")  # fmt: skip
    overwrite_flag(f)
    f.set_defaults(func=cmd_adapt_fit)
    e = sub.add_parser("adapt-eval", help="same as 'clipforge adapt eval'",
                       description="Top-1 and ECE of a saved adapter on a labelled image folder.")  # fmt: skip
    common(e)
    e.add_argument("--adapter", required=True, help="adapter file written by 'adapt fit'")
    e.add_argument("--data", required=True, help="test image folder with the adapter's classes")
    e.add_argument("--ood", metavar="FOLDER", help="image folder of none of the adapter's "
                   "classes: also report AUROC and FPR@95 of its OOD scores (clipn: mcm and "
                   "clipn; other methods: maximum softmax probability)")  # fmt: skip
    e.add_argument("--out", help="JSON file for the metrics (default: print only)")
    overwrite_flag(e)
    e.set_defaults(func=cmd_adapt_eval)
    b = sub.add_parser("adapt-bench", help="same as 'clipforge adapt bench'",
                       description="Every method x shot count x seed: results.json, report.md, "
                       "accuracy_vs_shots.png.")  # fmt: skip
    common(b)
    b.add_argument("--data", required=True, help="training image folder, or a folder holding "
                   "train/ and test/ image folders")  # fmt: skip
    b.add_argument("--test", help="test image folder (default: DATA/test)")
    b.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    b.add_argument("--shots", type=_counts("--shots"), default=[1, 2, 4, 8, 16],
                   help="comma-separated shots per class (default: 1,2,4,8,16)")  # fmt: skip
    add_number(b, "--seeds", count, 3, "seeds 0..N-1 of the few-shot draw")
    b.add_argument("--options", action="append", default=[], metavar="METHOD:K=V,...",
                   help="options of one method, e.g. coop:class_specific=true (repeatable)")  # fmt: skip
    b.add_argument("--out", required=True, help="output folder")
    overwrite_flag(b)
    b.set_defaults(func=cmd_adapt_bench)
    _compose_parser(sub, common)


def _compose_parser(sub: argparse._SubParsersAction, common: Callable) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count

    c = sub.add_parser("adapt-compose", help="same as 'clipforge adapt compose'",
                       description="ComCLIP's training-free compositional matching against "
                       "plain CLIP on a caption-choice set (true caption vs hard negatives): "
                       "accuracy overall and per perturbation. Default: the shapes world's "
                       "compositional task, object boxes from the world.")  # fmt: skip
    common(c)
    c.add_argument("--data", help="SugarCrepe/ARO JSON file or folder of them (default: the "
                   "shapes world)")  # fmt: skip
    c.add_argument("--image-root", help="with --data: folder the JSON files' images are in")
    c.add_argument("--boxes", help="with --data: JSON list, per image of the data (in its "
                   "order), of [x0, y0, x1, y1] pixel boxes of the objects")  # fmt: skip
    add_number(c, "--scenes", count, 1000, "shapes-world test scenes (without --data)")
    c.add_argument("--options", default="", metavar="K=V,...",
                   help="weight=1,pad=0.1 (see clipforge/adapt/comclip.py; ranges checked)")  # fmt: skip
    c.add_argument("--out", help="JSON file for the accuracies (default: print only)")
    overwrite_flag(c)
    c.set_defaults(func=cmd_adapt_compose)


def cmd_adapt_compose(args: argparse.Namespace) -> int:
    import torch

    from clipforge.adapt import make_embedder
    from clipforge.adapt.comclip import ComCLIPOptions, evaluate_choice, read_boxes, shapes_boxes
    from clipforge.checkpoint import resolve
    from clipforge.config import check_ranges, from_dict, parse_kv
    from clipforge.eval.datasets import open_eval_data
    from clipforge.outputs import atomic_write, check_file

    torch.set_num_threads(args.threads)
    source = resolve(Path(args.model), "model")
    opts = from_dict(ComCLIPOptions, parse_kv(args.options, "--options"), "comclip options")
    check_ranges(opts)
    if (args.data is None) != (args.boxes is None):
        raise ClipforgeError("--data and --boxes go together (without both: the shapes world)")
    inputs = [source, *(Path(p) for p in (args.data, args.boxes, args.image_root) if p)]
    if args.out:
        check_file(args.out, overwrite=args.overwrite, inputs=inputs)
    emb = make_embedder(args.model, args.cache)
    if args.data is None:
        from clipforge.eval.compositional import shapes_hardneg
        from clipforge.eval.shapes_data import scenes

        size = emb.model.cfg.vision.image_size
        data = shapes_hardneg(size, n=args.scenes)
        boxes = shapes_boxes(scenes(size, n=args.scenes)[0], args.scenes)
    else:
        kind, data = open_eval_data(args.data, image_root=args.image_root)
        if kind != "choice":
            raise ClipforgeError(f"--data {args.data}: a {kind} set, not caption choices")
        boxes = read_boxes(args.boxes, len(data.images))
    res = evaluate_choice(emb, data, boxes, opts)
    for name, acc in res.items():
        cells = "  ".join(f"{k.removesuffix('/accuracy')} {100 * v:.1f}" for k, v in acc.items())
        print(f"{name:<8} {cells}")
    if args.out:
        record = {"model": str(args.model), "data": args.data or "shapes", "rows":
                  len(data.options), "options": vars(opts), **res}  # fmt: skip
        atomic_write(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _counts(flag: str) -> Callable[[str], list[int]]:
    from clipforge.ranges import count

    def read(text: str) -> list[int]:
        parts = [t.strip() for t in text.split(",")]
        return sorted({int(count.read(t, flag)) for t in parts})

    return read


def _adapt_inputs(args: argparse.Namespace) -> tuple[object, list[Path]]:
    import torch

    from clipforge.checkpoint import resolve

    torch.set_num_threads(args.threads)
    return resolve(Path(args.model), "model"), [Path(args.data)]


def cmd_adapt_fit(args: argparse.Namespace) -> int:
    from clipforge.adapt import fit, make_embedder
    from clipforge.adapt.base import sidecar
    from clipforge.adapt.harness import options_of
    from clipforge.config import parse_kv
    from clipforge.eval.datasets import image_folder
    from clipforge.outputs import check_file

    source, inputs = _adapt_inputs(args)
    opts = parse_kv(args.options, "--options")
    options_of(args.method, opts)  # a bad option fails before anything is embedded
    for out in (Path(args.out), sidecar(args.out)):
        check_file(out, overwrite=args.overwrite, inputs=[source, *inputs])
    data = image_folder(args.data)
    emb = make_embedder(args.model, args.cache)
    adapter = fit(args.method, None, data, args.shots, args.seed, embedder=emb, **opts)
    path, side = adapter.save(args.out)
    shown = {k: v for k, v in adapter.params.items() if k != "scale"}
    print(f"{args.method}: {args.shots} shots x {len(data.classnames)} classes, seed {args.seed}, "
          f"fit in {adapter.info['fit_seconds']:.3f} s; chosen {json.dumps(shown)}")  # fmt: skip
    print(f"wrote {path} and {side}")
    return 0


def cmd_adapt_eval(args: argparse.Namespace) -> int:
    from clipforge.adapt import evaluate, evaluate_ood, load, make_embedder
    from clipforge.outputs import atomic_write, check_file

    source, inputs = _adapt_inputs(args)
    if args.ood:
        inputs.append(Path(args.ood))
    if args.out:
        check_file(args.out, overwrite=args.overwrite, inputs=[source, args.adapter, *inputs])
    emb = make_embedder(args.model, args.cache)
    adapter = load(args.adapter, emb)
    res = evaluate(adapter, args.data)
    record = {"adapter": str(args.adapter), "method": adapter.method, "data": str(args.data),
              **res, "params": adapter.params}  # fmt: skip
    print(f"{adapter.method}: top1 {100 * res['top1']:.2f}%  ece {res['ece']:.4f}")
    if args.ood:
        record["ood_data"] = str(args.ood)
        record["ood"] = evaluate_ood(adapter, args.data, args.ood)
        for name, m in record["ood"].items():
            print(f"  ood {name}: auroc {100 * m['auroc']:.2f}  fpr95 {100 * m['fpr95']:.2f}")
    if args.out:
        atomic_write(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_adapt_bench(args: argparse.Namespace) -> int:
    from clipforge.adapt import make_embedder
    from clipforge.adapt.bench import bench, resolve_methods, usable_methods, write
    from clipforge.adapt.harness import options_of
    from clipforge.config import parse_kv
    from clipforge.eval.datasets import image_folder
    from clipforge.outputs import OutputFolder

    source, _ = _adapt_inputs(args)
    methods = resolve_methods(args.methods)
    options = {}
    for spec in args.options:
        method, sep, kv = spec.partition(":")
        if not sep or method not in methods:
            raise ClipforgeError(
                f"--options {spec!r}: expected METHOD:K=V,... for one of --methods"
            )
        options[method] = parse_kv(kv, "--options")
        options_of(method, options[method])  # a bad option fails before any work
    root = Path(args.data)
    train_dir, test_dir = root, Path(args.test) if args.test else root / "test"
    if not args.test:
        if not (root / "train").is_dir() or not test_dir.is_dir():
            raise ClipforgeError(f"--data {root}: no train/ and test/ folders; pass --test FOLDER")
        train_dir = root / "train"
    out = OutputFolder(args.out, "adapt bench", overwrite=args.overwrite,
                       inputs=[source, train_dir, test_dir])  # fmt: skip
    train, test = image_folder(train_dir), image_folder(test_dir)
    methods, skipped = usable_methods(args.methods, methods, train)
    for m, why in skipped.items():
        print(f"not running {m}: {why}")
    with out.building(keep=("cache",)) as build:
        emb = make_embedder(args.model, args.cache or out.kept("cache"), progress=True)
        results = bench(emb, train, test, methods, args.shots, list(range(args.seeds)), options)
        results["model"], results["options"] = str(args.model), options
        if skipped:
            results["skipped"] = skipped
        write(results, build, f"clipforge adapt bench: {train_dir} -> {test_dir}")
    for m, rows in results["methods"].items():
        cells = "  ".join(f"{k}:{100 * r['top1']['mean']:.1f}+-{100 * r['top1']['std']:.1f}"
                          for k, r in rows.items())  # fmt: skip
        print(f"{m:<13} {cells}")
    print(f"wrote {out.path / 'results.json'}, report.md and accuracy_vs_shots.png")
    return 0
