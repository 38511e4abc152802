"""``clipforge`` command line: a thin layer over the library's public functions."""

from __future__ import annotations

import os

# libgomp's default spin-waiting makes a second thread slow everything down on small
# machines; passive waiting must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from clipforge.cli.flags import (  # noqa: E402
    check_runtime_flags,
    overwrite_flag,
    precision_flag,
    runtime_flags,
)
from clipforge.errors import ClipforgeError  # noqa: E402


def _drop_heads_flag(p: argparse.ArgumentParser, why: str) -> None:
    p.add_argument(
        "--drop-heads",
        action="store_true",
        help="write the towers without the heads a clipforge checkpoint carries (the caption "
        f"decoder of --loss clip+coca; {why}); without it such a model is refused",
    )


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_arguments
    from clipforge.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a model (default: the tiny preset on the shapes world)",
        description="Train a CLIP model. Every config field is a flag; --config loads a YAML "
        "file first and flags override it.",
    )
    p.add_argument("--config", help="YAML file of config fields")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its saved config; --steps may extend it, "
        "other flags must equal the saved values",
    )
    overwrite_flag(p)
    add_arguments(p, TrainConfig)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from clipforge.config import load_yaml, resolve
    from clipforge.train import TrainConfig, train

    cli_only = ("func", "config", "resume", "overwrite", "command")
    overrides = {k: v for k, v in vars(args).items() if k not in cli_only}
    cfg = resolve(TrainConfig, args.config, overrides)
    # What this invocation gives, to hold against a resumed run's saved config.
    given = {**(load_yaml(args.config) if args.config else {}), **overrides}
    result = train(
        cfg, resume=args.resume, changes=given if args.resume else None, overwrite=args.overwrite
    )
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for all
    if result.complete:
        # Exit 0: the run is what was asked for, so a job that resumes until it succeeds
        # stops here; the folder is left byte for byte as it was.
        print(
            f"run folder: {result.run_dir} is already complete at step {result.step}; "
            f"nothing was written (--steps N > {result.step} trains it further)"
        )
        _print_table(result.metrics)
        return 0
    print(f"run folder: {result.run_dir}")
    _print_table(result.metrics)
    print(result.skip_summary())
    return 0


_MERGE_HELP = "ToMe token merging: merge this many image tokens after each block (0 = off)"


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count, count0

    p = sub.add_parser(
        "eval",
        help="evaluate a run folder or checkpoint (clipforge, OpenAI, OpenCLIP, HF); "
        "'clipforge eval compare A.json B.json' compares two results",
        description="Without --tasks: zero-shot colour x shape classification and image<->text "
        "retrieval on a held-out split of the shapes world (prints a table, writes JSON). "
        "With --tasks: the evaluation suite, writing results.json, report.md and plots. "
        "'clipforge eval compare A.json B.json' prints two results side by side (a run folder "
        "literally named 'compare' is written ./compare).",
    )
    p.add_argument("model", help="run folder or checkpoint file")
    p.add_argument(
        "--tasks",
        help="comma-separated eval tasks or 'all' (known: " + ", ".join(_task_names()) + ")",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="with --tasks: a data set (image folder, CSV/TSV/JSONL, Karpathy JSON, "
        "SugarCrepe/ARO JSON or a folder of them); repeatable; default: the shapes world",
    )
    p.add_argument("--image-root", help="with --data: folder the JSON files' images are in")
    p.add_argument("--cache", help="embedding cache folder (default: OUT/cache)")
    p.add_argument("--progress", type=_bool, default=True, help="progress bars (default: true)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    add_number(p, "--per-class", count, 25, "images per class")
    add_number(p, "--pairs", count, 1000, "retrieval scenes")
    add_number(p, "--threads", count, 1, "torch threads")
    add_number(p, "--merge-tokens", count0, 0, _MERGE_HELP)
    precision_flag(p)
    runtime_flags(p)
    p.add_argument(
        "--out",
        help="without --tasks: JSON file (default: RUN_DIR/eval-SPLIT.json or next to the "
        "file); with --tasks: output folder (default: RUN_DIR/eval or FILE-eval)",
    )
    overwrite_flag(p)
    p.set_defaults(func=_cmd_eval)
    c = sub.add_parser(
        "eval-compare",
        help="same as 'clipforge eval compare': two results.json side by side with deltas",
    )
    c.add_argument("a", help="results.json (or its folder)")
    c.add_argument("b", help="results.json (or its folder)")
    c.set_defaults(func=_cmd_eval_compare)


def _bool(text: str) -> bool:
    from clipforge.config import parse_value

    try:
        return parse_value(bool, text, "flag")
    except ClipforgeError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def _task_names() -> list[str]:
    from clipforge.eval.tasks import TASK_MODULES

    return list(TASK_MODULES)


def _cmd_eval_compare(args: argparse.Namespace) -> int:
    from clipforge.eval.report import compare_table, load_results

    a, b = load_results(args.a), load_results(args.b)
    print(compare_table(a, b, "A", "B"))
    print(f"A = {args.a} ({a['model']})\nB = {args.b} ({b['model']}); delta = B - A, in points")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from clipforge.checkpoint import resolve
    from clipforge.eval.suite import DEFAULT_TASKS, evaluate, flat_metrics
    from clipforge.models import load, tokenizer_for
    from clipforge.models.tome import set_merging
    from clipforge.outputs import atomic_write, check_file

    torch.set_num_threads(args.threads)
    path = Path(args.model)
    check_runtime_flags(args)  # before anything is loaded or written
    if args.tasks is None and args.data:
        raise ClipforgeError("--data needs --tasks (e.g. --tasks all)")
    source = resolve(path, "model")  # the file or weights folder that is read
    if args.tasks is not None:
        return _eval_suite(args, path, source)
    out = (
        Path(args.out)
        if args.out
        else (
            path / f"eval-{args.split}.json"
            if path.is_dir()
            else path.with_suffix(f".eval-{args.split}.json")
        )
    )
    check_file(out, overwrite=args.overwrite, inputs=[source])  # before the evaluation runs
    model = load(path)
    set_merging(model, args.merge_tokens)
    tok = tokenizer_for(model)
    results = evaluate(
        model, tok, DEFAULT_TASKS, split=args.split, per_class=args.per_class,
        scenes=args.pairs, progress=args.progress, precision=args.precision,
        runtime=args.runtime, onnx_dir=args.onnx,
    )  # fmt: skip
    res = flat_metrics(results)
    _print_precision(results["precision"])
    record = {"model": str(path), "split": args.split, **res, "precision": results["precision"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(record, indent=2) + "\n")
    _print_table(res)
    print(f"wrote {out}")
    return 0


def _eval_suite(args: argparse.Namespace, path: Path, source: Path) -> int:
    from clipforge.eval.suite import resolve_tasks, run_suite
    from clipforge.models import load, tokenizer_for
    from clipforge.models.tome import set_merging
    from clipforge.outputs import OutputFolder

    tasks = resolve_tasks(args.tasks)  # fail on a typo before loading anything
    out_dir = (
        Path(args.out)
        if args.out
        else (path / "eval" if path.is_dir() else path.with_name(path.stem + "-eval"))
    )
    inputs = [source, *args.data, *([args.image_root] if args.image_root else [])]
    out = OutputFolder(out_dir, "eval", overwrite=args.overwrite, inputs=inputs)
    cache = Path(args.cache) if args.cache else None
    if cache is not None and out.inside(cache) is not None:
        if out.inside(cache) != "cache":
            raise ClipforgeError(
                f"--cache {cache} is inside --out; leave --cache out to use OUT/cache"
            )
        cache = None  # the default place, named explicitly
    model = load(path)
    set_merging(model, args.merge_tokens)  # the cache's key (fingerprint) includes it
    # The cache's entries are keyed by model and data, so they stay valid when the rest
    # of an earlier output is replaced: OUT/cache is carried over.
    with out.building(keep=("cache",)) as build:
        results = run_suite(
            model,
            tokenizer_for(model),
            build,
            tasks,
            args.data,
            model_name=str(path),
            cache_dir=cache if cache is not None else out.kept("cache"),
            split=args.split,
            image_root=args.image_root,
            progress=args.progress,
            precision=args.precision,
            runtime=args.runtime,
            onnx_dir=args.onnx,
        )
        if not results["tasks"]:
            why = "; ".join(f"{n}: {w}" for n, w in results["skipped"].items())
            raise ClipforgeError(f"no task ran on the given --data ({why}); nothing written")
    _print_precision(results["precision"])
    for name, t in results["tasks"].items():
        _print_table({f"{name}/{k}": v for k, v in t["metrics"].items()})
    for name, why in results["skipped"].items():
        print(f"{name}: skipped ({why})")
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'report.md'}")
    return 0


def _print_precision(record: dict) -> None:
    parity = [
        f"{k.split('_')[0]} min cosine {v['min_cosine']:.6f}"
        for k, v in record.items()
        if k.endswith("_parity")
    ]
    tail = f"; bf16 vs fp32 on the first batch: {', '.join(parity)}" if parity else ""
    print(f"precision {record['precision']} ({record['reason']}){tail}")


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count, count0, integers

    p = sub.add_parser(
        "synth",
        help="write shapes-world samples to disk as PNG + CSV/JSONL or webdataset shards",
    )
    p.add_argument("--out", required=True, help="output folder")
    add_number(p, "--n", count, 1000, "number of samples (of scenes, with --copies)")
    add_number(
        p, "--copies", count, 1,
        "render each scene this many times, with other crops and captions, naming the scene "
        "in the meta column 'group' (a record-linkage set for clipforge link)",
    )  # fmt: skip
    p.add_argument("--format", default="csv", choices=["csv", "jsonl", "wds"])
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    # The shapes world draws nothing below 8 pixels (ShapesWorld refuses it).
    add_number(p, "--image-size", integers(8), 64, "pixels")
    add_number(p, "--seed", count0, 0, "random seed")
    add_number(p, "--shard-size", count, 1000, "samples per tar")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from clipforge.data.shapes import ShapesWorld
    from clipforge.data.shapes.duplicates import duplicates
    from clipforge.data.writers import write_manifest, write_shards
    from clipforge.outputs import OutputFolder

    out = OutputFolder(args.out, "synth", overwrite=args.overwrite)
    world = ShapesWorld(args.image_size, split=args.split, seed=args.seed)
    if args.copies > 1:
        samples = duplicates(world, args.n, args.copies)
    else:
        samples = (world.sample(i) for i in range(args.n))
    with out.building() as build:
        if args.format == "wds":
            shards = write_shards(
                samples, build, name=args.split, shard_size=args.shard_size, progress=True
            )
        else:
            manifest = write_manifest(
                samples, build, fmt=args.format, name=args.split, progress=True
            )
    n = args.n * args.copies
    if args.format == "wds":
        print(f"wrote {n} samples in {len(shards)} shards to {out.path}")
    else:
        print(f"wrote {n} samples: {out.final(manifest)}")
    return 0


def _shard_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count

    p = sub.add_parser(
        "shard",
        help="pack a CSV/TSV/JSONL manifest or an image folder into webdataset tar shards",
        description="Write NAME-000000.tar, ... with one {key}.jpg/png/webp, {key}.txt (one "
        "caption per line) and {key}.json (meta, weight, captions list) per sample. JPEG, "
        "PNG and WebP bytes are copied as they are; other formats are stored as PNG. Rows "
        "with a missing image or no caption are left out and counted.",
    )
    p.add_argument("input", help="manifest (.csv, .tsv, .jsonl) or image folder with sidecars")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--name", default="train", help="shard name prefix (default: train)")
    add_number(p, "--shard-size", count, 1000, "samples per tar")
    p.add_argument("--image-key", default="image", help="manifest image column")
    p.add_argument("--caption-key", default="caption", help="manifest caption column")
    p.add_argument("--verify", action="store_true", help="decode every image; leave out bad ones")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_shard)


def _cmd_shard(args: argparse.Namespace) -> int:
    from clipforge.data.readers import ShardDataset, open_dataset
    from clipforge.data.writers import shard_dataset
    from clipforge.outputs import OutputFolder

    out = OutputFolder(args.out, "shard", overwrite=args.overwrite, inputs=[args.input])
    ds = open_dataset(args.input, image_key=args.image_key, caption_key=args.caption_key)
    if isinstance(ds, ShardDataset):
        raise ClipforgeError(f"{args.input} is already tar shards")
    with out.building() as build:
        shards, skipped = shard_dataset(
            ds, build, args.name, args.shard_size, verify=args.verify, progress=True
        )
        if not shards:
            why = ", ".join(f"{n} {reason}" for reason, n in skipped.as_dict().items())
            raise ClipforgeError(
                f"nothing to shard: all {len(ds)} samples of {args.input} were left out"
                + (f" ({why})" if why else "")
                + "; nothing written"
            )
    kept = len(ds) - skipped.total
    print(f"wrote {kept} samples in {len(shards)} shards to {out.path}")
    for reason, n in skipped.as_dict().items():
        print(f"  left out {n}: {reason}")
    return 0


def _curate_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count, count0

    p = sub.add_parser(
        "curate",
        help="MetaCLIP-style balancing of a data set over metadata entries",
        description="Match every caption against the entries (substring, case-insensitive), "
        "count the pairs per entry and keep each pair with probability "
        "min(1, t / count of its rarest entry), deterministically by --seed. Writes "
        "curated.jsonl (manifest or folder input) or curated-*.tar (shard input), "
        "entry_counts.json and entry_histogram.png (before/after).",
    )
    p.add_argument("input", help="manifest, image folder, tar shard pattern or folder of shards")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--entries", help="entry file, one per line (default: the shipped shapes-world entries)"
    )
    add_number(p, "--t", count, 20_000, "pairs per entry cap")
    add_number(p, "--seed", count0, 0, "random seed")
    p.add_argument("--keep-unmatched", action="store_true", help="keep pairs matching no entry")
    p.add_argument("--case-sensitive", action="store_true")
    p.add_argument("--image-key", default="image", help="manifest image column")
    p.add_argument("--caption-key", default="caption", help="manifest caption column")
    add_number(p, "--shard-size", count, 1000, "samples per curated tar")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args: argparse.Namespace) -> int:
    from clipforge.data.curate import curate
    from clipforge.outputs import OutputFolder

    inputs = [args.input, *([args.entries] if args.entries else [])]
    out = OutputFolder(args.out, "curate", overwrite=args.overwrite, inputs=inputs)
    with out.building() as build:
        summary = curate(
            args.input,
            build,
            entries=args.entries,
            t=args.t,
            seed=args.seed,
            keep_unmatched=args.keep_unmatched,
            case_sensitive=args.case_sensitive,
            image_key=args.image_key,
            caption_key=args.caption_key,
            shard_size=args.shard_size,
            progress=True,
        )
        line = (
            f"kept {summary['kept']} of {summary['pairs']} pairs ({summary['matched']} matched "
            f"{summary['entries_matched']} of {summary['entries']} entries)"
        )
        if summary["written_samples"] == 0:
            # An empty data set trains nothing; the counts say why (no match, or --t).
            raise ClipforgeError(f"{line}; nothing written")
    print(
        f"{line}; largest entry {summary['max_count_before']} -> {summary['max_count_after']} pairs"
    )
    for name in summary["written"]:
        print(f"wrote {out.path / name}")
    print(f"wrote {out.path / 'entry_counts.json'} and entry_histogram.png")
    return 0


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert OpenAI / OpenCLIP / Hugging Face CLIP and SigLIP weights",
        description="Read a checkpoint (OpenAI CLIP TorchScript or state dict, OpenCLIP state "
        "dict or folder, Hugging Face CLIPModel/SiglipModel/Siglip2Model folder, clipforge "
        "checkpoint) "
        "and write it as a clipforge checkpoint, an OpenCLIP folder or state dict, or a "
        "Hugging Face folder. The architecture is inferred from the tensors and configs. "
        "No code from the input is run.",
    )
    p.add_argument("input", help="checkpoint file or folder")
    p.add_argument(
        "output",
        help="clipforge: a .pt file; openclip: a folder, or a .pt/.bin/.safetensors file "
        "for the state dict only; hf: a folder",
    )
    p.add_argument("--to", required=True, choices=["clipforge", "openclip", "hf"])
    p.add_argument("--arch", help="a model preset to use instead of the inferred architecture")
    p.add_argument(
        "--model-args",
        default="",
        help="dotted overrides of the architecture, e.g. act=gelu,text.heads=8 (an OpenCLIP "
        "state dict without open_clip_config.json is read with OpenAI's quick_gelu and "
        "64-wide heads); vision.image_size=N reads a SigLIP 2 folder at N px",
    )
    _drop_heads_flag(p, "openclip and hf have no place for them")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from clipforge.config import parse_kv
    from clipforge.models.convert import convert, describe, writes_folder
    from clipforge.outputs import OutputFolder, check_file

    overrides = parse_kv(args.model_args, "model-args")
    inputs = [args.input]
    if not writes_folder(args.output, args.to):
        check_file(args.output, overwrite=args.overwrite, inputs=inputs)
        ckpt, files = convert(
            args.input, args.output, args.to, args.arch, overrides, drop_heads=args.drop_heads
        )
    else:
        out = OutputFolder(args.output, "convert", overwrite=args.overwrite, inputs=inputs)
        with out.building() as build:
            ckpt, files = convert(
                args.input, build, args.to, args.arch, overrides, drop_heads=args.drop_heads
            )
        files = [out.final(f) for f in files]
    print(f"read {ckpt.path} ({ckpt.format}): {describe(ckpt.config)}")
    for f in files:
        print(f"wrote {f}")
    return 0


def _lora_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lora", help="LoRA adapters: 'clipforge lora merge RUN --out MODEL.pt'")
    lora = p.add_subparsers(dest="lora_command", required=True)
    m = lora.add_parser(
        "merge",
        help="fold a LoRA run's adapters into its weights and write a plain checkpoint",
        description="Read a run folder or checkpoint trained with --lora-rank (or any model "
        "with --adapters FILE, an adapters.safetensors of such a run), add (alpha / r) B A to "
        "every adapted weight and write one clipforge checkpoint without adapters.",
    )
    m.add_argument("model", help="LoRA run folder or checkpoint (with --adapters: the base)")
    m.add_argument("--adapters", help="adapters.safetensors to apply to MODEL before merging")
    m.add_argument("--out", required=True, help="the merged checkpoint (.pt)")
    overwrite_flag(m)
    m.set_defaults(func=_cmd_lora_merge)


def _cmd_lora_merge(args: argparse.Namespace) -> int:
    from clipforge.checkpoint import resolve
    from clipforge.models import load, save_checkpoint
    from clipforge.models.convert import read_checkpoint
    from clipforge.models.lora import apply_adapters, is_adapter_key, load_adapters, merge_lora
    from clipforge.outputs import check_file

    inputs = [args.model, *([args.adapters] if args.adapters else [])]
    out = check_file(args.out, overwrite=args.overwrite, inputs=inputs)
    if args.adapters:
        model = merge_lora(apply_adapters(load(args.model), load_adapters(args.adapters)))
    else:
        path = resolve(args.model, "lora merge")
        n = sum(is_adapter_key(k) for k in read_checkpoint(path).state_dict)
        if not n:
            raise ClipforgeError(
                f"{path} holds no LoRA adapters (train with --lora-rank, or give --adapters)"
            )
        model = load(path)  # merges the adapters it holds
    save_checkpoint(model, out, "clipforge")
    print(f"wrote {out}")
    return 0


def _wise_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import probability

    p = sub.add_parser(
        "wise",
        help="weight-space ensemble of a zero-shot and a fine-tuned model (WiSE-FT)",
        description="Write (1 - alpha) ZS_MODEL + alpha FT_MODEL, weight by weight, as one "
        "clipforge checkpoint. Both must share an architecture.",
    )
    p.add_argument("zero_shot", metavar="ZS_MODEL", help="run folder or checkpoint")
    p.add_argument("fine_tuned", metavar="FT_MODEL", help="run folder or checkpoint")
    add_number(p, "--alpha", probability, 0.5, "weight of the fine-tuned model")
    p.add_argument("--out", required=True, help="the ensembled checkpoint (.pt)")
    _drop_heads_flag(p, "needed when only one of the models has a head")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_wise)


def _cmd_wise(args: argparse.Namespace) -> int:
    from clipforge.models import load, save_checkpoint
    from clipforge.models.wise import interpolate
    from clipforge.outputs import check_file

    out = check_file(args.out, overwrite=args.overwrite, inputs=[args.zero_shot, args.fine_tuned])
    model = interpolate(
        load(args.zero_shot), load(args.fine_tuned), args.alpha, drop_heads=args.drop_heads
    )
    save_checkpoint(model, out, "clipforge")
    print(f"wrote {out} (alpha {args.alpha})")
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count0

    p = sub.add_parser(
        "export",
        help="export the image and text encoders (ONNX)",
        description="Write image.onnx (pixels -> normalised features), text.onnx (tokens -> "
        "normalised features), model.yaml and the model's tokenizer (its files and "
        "tokenizer_info.json) into the folder --out.",
    )
    p.add_argument("model", help="run folder or checkpoint")
    p.add_argument("--to", required=True, choices=["onnx"])
    p.add_argument("--out", required=True, help="output folder")
    add_number(p, "--merge-tokens", count0, 0, _MERGE_HELP + "; built into image.onnx")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from clipforge.models import load
    from clipforge.models.export import check_onnx, export_onnx
    from clipforge.models.tome import set_merging
    from clipforge.outputs import OutputFolder

    out = OutputFolder(args.out, "export", overwrite=args.overwrite, inputs=[args.model])
    check_onnx()
    model = load(args.model)
    set_merging(model, args.merge_tokens)
    with out.building() as build:
        files = export_onnx(model, build)
    for f in files:
        print(f"wrote {out.final(f)}")
    return 0


def _stretch_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count

    p = sub.add_parser(
        "stretch",
        help="stretch the text context for long captions (Long-CLIP)",
        description="Keep the first --keep text position embeddings and interpolate the rest "
        "over --context positions; write the model as one clipforge checkpoint, to fine-tune "
        "on long captions (--init).",
    )
    p.add_argument("model", help="run folder or checkpoint")
    add_number(p, "--context", count, 248, "new text context length")
    add_number(p, "--keep", count, 20, "leading positions kept as trained")
    p.add_argument("--out", required=True, help="the stretched checkpoint (.pt)")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_stretch)


def _cmd_stretch(args: argparse.Namespace) -> int:
    from clipforge.models import load, save_checkpoint
    from clipforge.models.stretch import stretch_positions
    from clipforge.outputs import check_file

    out = check_file(args.out, overwrite=args.overwrite, inputs=[args.model])
    model = stretch_positions(load(args.model), args.context, args.keep)
    save_checkpoint(model, out, "clipforge")
    print(f"wrote {out} (text context {args.context}, first {args.keep} positions kept)")
    return 0


def _upcycle_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count, integers

    p = sub.add_parser(
        "upcycle",
        help="turn every MLP into a mixture of experts (CLIP-MoE upcycling)",
        description="Copy each block's MLP into --experts experts behind a router that sends "
        "each token to --top-k of them; the model computes the dense one until fine-tuned "
        "(--init OUT with --model-args moe_experts=E,moe_top_k=K).",
    )
    p.add_argument("model", help="run folder or checkpoint")
    add_number(p, "--experts", integers(2), 4, "experts per MLP")
    add_number(p, "--top-k", count, 2, "experts each token goes to")
    p.add_argument("--out", required=True, help="the upcycled checkpoint (.pt)")
    overwrite_flag(p)
    p.set_defaults(func=_cmd_upcycle)


def _cmd_upcycle(args: argparse.Namespace) -> int:
    from clipforge.models import load, save_checkpoint
    from clipforge.models.moe import upcycle
    from clipforge.outputs import check_file

    out = check_file(args.out, overwrite=args.overwrite, inputs=[args.model])
    model = upcycle(load(args.model), args.experts, args.top_k)
    save_checkpoint(model, out, "clipforge")
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({args.experts} experts per MLP, top {args.top_k}; {n:,} parameters)")
    return 0


def _list_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model presets")
    p.set_defaults(func=lambda a: _print_names("models"))
    p = sub.add_parser("losses", help="list objectives with a one-line summary each")
    p.set_defaults(func=lambda a: _print_names("losses"))


def _caption_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count

    p = sub.add_parser(
        "caption",
        help="caption images with a model's caption decoder (trained with --loss clip+coca)",
        description="Decode a caption for each image (greedy with --beam 1, else beam search "
        "on the summed log-probability) and print 'IMAGE<TAB>CAPTION' lines, or a JSON list.",
    )
    p.add_argument("model", help="run folder or checkpoint file with a caption decoder")
    p.add_argument("images", nargs="*", help="image files or folders of images")
    p.add_argument(
        "--captions-for",
        metavar="FOLDER",
        help="caption every image of a class-folder data set (FOLDER/<class>/<image>) and "
        "write FOLDER/captions.jsonl, the captions `clipforge adapt` (caps) reads",
    )
    overwrite_flag(p)
    add_number(p, "--beam", count, 1, "beams (1 = greedy)")
    add_number(p, "--max-len", count, 30, "most tokens per caption")
    add_number(p, "--batch-size", count, 64, "images decoded together")
    add_number(p, "--threads", count, 1, "torch threads")
    p.add_argument("--json", action="store_true", help="print a JSON list of {image, caption}")
    p.set_defaults(func=_cmd_caption)


def _cmd_caption(args: argparse.Namespace) -> int:
    import torch

    from clipforge.eval.captioning import Captioner, open_images
    from clipforge.models import load, tokenizer_for

    if bool(args.images) == bool(args.captions_for):
        raise ClipforgeError("give IMAGES to print captions, or --captions-for FOLDER")
    root = Path(args.captions_for) if args.captions_for else None
    if root is not None:
        from clipforge.outputs import check_file

        if not root.is_dir():
            raise ClipforgeError(f"--captions-for: folder not found: {root}")
        classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ClipforgeError(f"--captions-for: {root} has no class sub-folders")
        out = check_file(root / "captions.jsonl", overwrite=args.overwrite,
                         inputs=[args.model])  # fmt: skip
    torch.set_num_threads(args.threads)
    model = load(args.model)
    tokenizer = tokenizer_for(model)
    captioner = Captioner(model, tokenizer, beams=args.beam, max_len=args.max_len,
                          batch_size=args.batch_size, what=args.model)  # fmt: skip
    images = open_images(classes if root is not None else args.images)
    captions = captioner([im for _, im in images])
    if root is not None:
        from clipforge.outputs import atomic_write

        # The key image_folder matches: the image's path below the data set's folder.
        lines = [json.dumps({"image": p.relative_to(root).as_posix(), "caption": c})
                 for (p, _), c in zip(images, captions, strict=True)]  # fmt: skip
        atomic_write(out, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} captions to {out}")
        return 0
    rows = [{"image": str(p), "caption": c} for (p, _), c in zip(images, captions, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['image']}\t{r['caption']}")
    return 0


def _print_names(kind: str) -> int:
    if kind == "models":
        from clipforge.models import list_models

        print("\n".join(list_models()))
        return 0
    from clipforge.losses import LOSSES

    width = max(len(n) for n in LOSSES)
    for name in LOSSES:
        print(f"{name:<{width}}  {LOSSES.get(name).summary}")
    print("combine with weights: --loss clip+0.1*uniformity+0.1*alignment")
    return 0


def _print_table(res: dict) -> None:
    from clipforge.eval.report import fmt

    rows = [(k, v) for k, v in res.items() if isinstance(v, float)]
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {fmt(k, v):>7}")


def _collection_parsers() -> tuple[Callable[[argparse._SubParsersAction], None], ...]:
    from clipforge.cli.collections import (
        embed_parser,
        index_parser,
        link_parser,
        search_parser,
        serve_parser,
    )

    return (embed_parser, index_parser, search_parser, serve_parser, link_parser)


def _adapt_parser() -> Callable[[argparse._SubParsersAction], None]:
    from clipforge.cli.adapt import adapt_parser

    return adapt_parser


def _adapt_argv(argv: list[str]) -> list[str]:
    from clipforge.cli.adapt import spell_subcommand

    return spell_subcommand(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge", description="Contrastive language-image learning on a laptop and beyond."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    builders: Sequence[Callable[[argparse._SubParsersAction], None]] = (
        _train_parser,
        _eval_parser,
        _synth_parser,
        _shard_parser,
        _curate_parser,
        _list_parser,
        _caption_parser,
        _convert_parser,
        *_collection_parsers(),
        _adapt_parser(),
        _lora_parser,
        _wise_parser,
        _export_parser,
        _stretch_parser,
        _upcycle_parser,
    )
    for b in builders:
        b(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from clipforge.allocator import tune_allocator

    # Before any tensor exists: freed activations then stay in the heap for the next step
    # instead of being page-faulted in again (clipforge.allocator).
    tune_allocator()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "eval compare A B" is its own command; a run folder named "compare" is "./compare".
    if argv[:2] == ["eval", "compare"]:
        argv = ["eval-compare", *argv[2:]]
    argv = _adapt_argv(argv)
    try:
        # A numeric argument out of its range is refused while parsing, as a ClipforgeError
        # (clipforge.ranges.FlagReader), so it gets the same one line as any user error.
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
