"""``clipforge embed``, ``clipforge index`` and ``clipforge search``: a collection from a
folder to an answered query. Thin: each command checks its output (clipforge.outputs),
calls clipforge.index and prints what it returns."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from clipforge.cli.flags import (
    check_runtime_flags,
    overwrite_flag,
    precision_flag,
    runtime_flags,
)
from clipforge.errors import ClipforgeError

if TYPE_CHECKING:
    from clipforge.index.search import Searcher


def embed_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import count, count0

    p = sub.add_parser(
        "embed",
        help="embed an image folder, a CSV/TSV/JSONL manifest or a text file into EMB_DIR",
        description="Write float16 embedding shards, a rows table (path, caption, manifest "
        "columns) and EMB_DIR/model.json (model fingerprint, dim, preprocessing, precision). "
        "Unreadable images are skipped and counted. A killed run continues with --resume.",
    )
    p.add_argument(
        "model", nargs="?", help="run folder or checkpoint (clipforge, OpenAI, OpenCLIP, HF)"
    )
    p.add_argument("data", nargs="?", help="image folder (recursive), manifest or tar shards")
    p.add_argument("--texts", metavar="FILE", help="embed one text per line instead of images")
    p.add_argument("--out", help="embedding folder to write")
    p.add_argument(
        "--update",
        metavar="EMB_DIR",
        help="re-embed the collection of this embedding folder with --model NEW, replacing it "
        "whole when done (an index of it must then be built again)",
    )
    p.add_argument("--model", dest="new_model", metavar="NEW", help="the model of --update")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    precision_flag(p)
    runtime_flags(p)
    add_number(p, "--batch-size", count, 128, "images per encoder batch")
    add_number(p, "--shard-size", count, 1024, "items per shard (the unit of --resume)")
    add_number(p, "--threads", count, 2, "torch threads")
    add_number(
        p, "--merge-tokens", count0, 0,
        "ToMe token merging: merge this many image tokens after each block (0 = off)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--progress", type=_bool, default=True, help="progress bar (default: true)")
    overwrite_flag(p)
    p.set_defaults(func=cmd_embed)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def cmd_embed(args: argparse.Namespace) -> int:
    import torch

    from clipforge.checkpoint import resolve
    from clipforge.index.embedding import embed_collection
    from clipforge.index.items import open_collection
    from clipforge.models import load, tokenizer_for
    from clipforge.models.tome import set_merging
    from clipforge.outputs import OutputFolder, marker_command

    torch.set_num_threads(args.threads)
    check_runtime_flags(args)  # before any output is made
    if args.update:
        return _update(args)
    if args.new_model:
        raise ClipforgeError("--model NEW goes with --update EMB_DIR; give the model first")
    if not args.model or not args.out:
        raise ClipforgeError("give MODEL, DATA (or --texts FILE) and --out EMB_DIR")
    source = resolve(Path(args.model), "model")
    items = open_collection(args.data, args.texts)
    inputs = [source, *(x for x in (args.data, args.texts) if x)]
    out = Path(args.out)
    rank, world = _world()
    folder, refusal = None, None
    try:
        if args.resume:
            if marker_command(out) != "embed":
                raise ClipforgeError(f"--resume: {out} is not a `clipforge embed` folder")
            OutputFolder(out, "embed", overwrite=True, inputs=inputs)  # the input checks
        else:
            folder = OutputFolder(
                out, "embed", overwrite=args.overwrite, inputs=inputs,
                noun=f"embeddings{_held_model(out)}", hint="; or --resume to continue that run",
            )  # fmt: skip
    except ClipforgeError as e:
        refusal = e
    _agree(world, None if refusal is None else str(refusal))  # none waits for the others
    if refusal is not None:
        raise refusal
    # The model loads before the folder is made: a model clipforge cannot read is refused
    # with nothing written.
    model = load(args.model)
    set_merging(model, args.merge_tokens)  # part of the fingerprint a resume checks
    if folder is not None and rank == 0:
        folder.prepare()  # in place, like a run folder: --resume continues it
    try:
        info = embed_collection(
            model, tokenizer_for(model), items, out,
            model_source=str(Path(args.model).resolve()), dtype=args.dtype,
            precision=args.precision, batch_size=args.batch_size, shard_size=args.shard_size,
            resume=args.resume, progress=args.progress, source=_source(args.data, args.texts),
            runtime=args.runtime, onnx_dir=args.onnx,
            rank=rank, world=world,
        )  # fmt: skip
    except ClipforgeError:
        # A refusal (no image readable, a runtime that cannot run the model) leaves no
        # half-made folder; a kill or crash keeps it, since --resume continues from it.
        if folder is not None and rank == 0:
            folder.unprepare()
        raise
    if rank == 0:
        _report(info, out)
    return 0


def _world() -> tuple[int, int]:
    """``(rank, world size)``; under torchrun, after joining its (gloo) process group."""
    import os

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _agree(world: int, error: str | None) -> None:
    """Every rank learns whether any refused its checks, and raises the first refusal;
    the folder is prepared only after all of them have checked it (a prepared folder
    looks like an earlier output)."""
    if world <= 1:
        return
    import torch.distributed as dist

    errors: list[str | None] = [None] * world
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first and error is None:
        raise ClipforgeError(first)


def _source(data: str | None, texts: str | None) -> dict[str, str | None]:
    """Where the collection is, as absolute paths (a shard pattern keeps its braces)."""

    def absolute(p: str | None) -> str | None:
        return None if p is None else str(Path(p).absolute())

    return {"data": absolute(data), "texts": absolute(texts)}


def _update(args: argparse.Namespace) -> int:
    """``clipforge embed --update EMB_DIR --model NEW``: the same collection, re-embedded
    by another model into a new folder that replaces EMB_DIR whole when complete."""
    from clipforge.checkpoint import resolve
    from clipforge.eval.embed import model_fingerprint
    from clipforge.index.embedding import embed_collection
    from clipforge.index.items import open_collection
    from clipforge.index.store import read_embeddings
    from clipforge.models import load, tokenizer_for
    from clipforge.models.tome import set_merging
    from clipforge.outputs import OutputFolder, marker_command

    if args.model or args.data or args.texts or args.out or args.resume:
        raise ClipforgeError(
            "--update EMB_DIR re-embeds that folder's own collection; give only --model NEW"
        )
    if _world()[1] > 1:
        raise ClipforgeError("--update runs in one process; start it without torchrun")
    if not args.new_model:
        raise ClipforgeError("--update EMB_DIR needs --model NEW, the model to embed it with")
    emb_dir = Path(args.update)
    if marker_command(emb_dir) != "embed":
        raise ClipforgeError(f"--update: {emb_dir} is not a `clipforge embed` folder")
    old = read_embeddings(emb_dir)
    src = old.info.get("source")
    if not isinstance(src, dict):
        raise ClipforgeError(
            f"--update: {emb_dir} does not record where its collection is; embed it again "
            "with MODEL DATA --out"
        )
    items = open_collection(src.get("data"), src.get("texts"))
    if items.digest != old.info.get("collection"):
        raise ClipforgeError(
            f"--update: the collection of {emb_dir} ({src.get('data') or src.get('texts')}) "
            f"has changed since it was embedded ({old.info.get('items')} items then, "
            f"{len(items)} now); embed it into a new folder"
        )
    model_source = resolve(Path(args.new_model), "--model")
    inputs = [model_source, *(x for x in src.values() if x)]
    folder = OutputFolder(emb_dir, "embed", overwrite=True, inputs=inputs)
    model = load(args.new_model)
    set_merging(model, args.merge_tokens)
    if model_fingerprint(model) == old.fingerprint:
        print(f"{emb_dir} is already embedded with model {old.fingerprint}; nothing to do")
        return 0
    with folder.building() as build:  # the old embeddings stay whole until the new ones are
        info = embed_collection(
            model, tokenizer_for(model), items, build,
            model_source=str(Path(args.new_model).resolve()), dtype=old.info["dtype"],
            precision=args.precision, batch_size=args.batch_size,
            shard_size=int(old.info["shard_size"]), progress=args.progress, source=src,
            runtime=args.runtime, onnx_dir=args.onnx,
        )  # fmt: skip
    print(f"model {old.fingerprint} -> {info['fingerprint']}: build its index again")
    _report(info, emb_dir)
    return 0


def _report(info: dict, out: Path) -> None:
    rec = info["precision"]
    print(f"precision {rec['precision']} ({rec['reason']})" + _parity(rec))
    if info.get("runtime") == "onnx":
        print(f"runtime onnx ({info.get('onnx')})")
    print(
        f"embedded {info['rows']} of {info['items']} items ({info['dim']}-d, {info['dtype']}) into {out}"
    )
    for reason, n in info["skipped"].items():
        print(f"  skipped {n}: {reason}")


def _held_model(out: Path) -> str:
    """`` of model FINGERPRINT`` for a folder holding embeddings, so a refusal names it."""
    try:
        fp = json.loads((out / "model.json").read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return ""
    return f" of model {fp}" if fp else ""


def _parity(rec: dict) -> str:
    parity = [f"{k.split('_')[0]} min cosine {v['min_cosine']}" for k, v in rec.items()
              if k.endswith("_parity")]  # fmt: skip
    what = "onnx vs torch" if rec.get("runtime") == "onnx" else "bf16 vs fp32"
    return f"; {what} on the first batch: {', '.join(parity)}" if parity else ""


def index_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import positive

    p = sub.add_parser(
        "index",
        help="build a faiss index of an embedding folder, measuring recall@10 and latency",
        description="Choose the index from the collection size and --memory (exact flat for "
        "small collections; HNSW, IVF-Flat, OPQ+IVF-PQ as they grow), measure recall@10 "
        "against exact search on held-out queries and p50/p99 latency on one core for each "
        "candidate, and write INDEX_DIR/report.json. --add EMB_DIR2 appends to --out.",
    )
    p.add_argument("embeddings", nargs="?", help="embedding folder (clipforge embed --out)")
    p.add_argument("--out", required=True, help="index folder to write (or to extend with --add)")
    p.add_argument("--memory", default="2GB", help="memory budget of the index (default: 2GB)")
    add_number(p, "--max-latency-ms", positive, 10.0, "p99 latency goal per query, one core")
    p.add_argument(
        "--add", metavar="EMB_DIR", help="append this embedding folder to the index --out"
    )
    overwrite_flag(p)
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from clipforge.index.planner import parse_memory
    from clipforge.index.search import IndexFolder, build_index
    from clipforge.index.store import read_embeddings
    from clipforge.outputs import OutputFolder, marker_command

    memory = parse_memory(args.memory)
    if args.add:
        if args.embeddings:
            raise ClipforgeError("--add EMB_DIR appends to --out; give no other EMB_DIR")
        if marker_command(args.out) != "index":
            raise ClipforgeError(f"--add: {args.out} is not a `clipforge index` folder")
        folder = OutputFolder(args.out, "index", overwrite=True, inputs=[args.add])
        old = IndexFolder(args.out)
        emb = read_embeddings(args.add)
        with folder.building() as build:  # the old index stays whole until the new one is
            rows = old.add(emb, build)
        print(f"added {len(emb.rows)} rows to {args.out}: {rows} rows")
        return 0
    if not args.embeddings:
        raise ClipforgeError("give the embedding folder to index (or --add EMB_DIR)")
    folder = OutputFolder(args.out, "index", overwrite=args.overwrite, inputs=[args.embeddings])
    emb = read_embeddings(args.embeddings)
    with folder.building() as build:
        report = build_index(emb, build, memory, args.max_latency_ms)
    for target, r in report.items():
        print(f"{target}: {r['vectors']} vectors, chosen {r['chosen']} {r['params']}".rstrip())
        print(
            f"  {'index':<24} {'params':<12} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8} {'MiB':>8}  note"
        )
        for c in r["candidates"]:
            rec = "-" if c["recall_at_10"] is None else f"{c['recall_at_10']:.3f}"
            p50 = "-" if c["p50_ms"] is None else f"{c['p50_ms']:.3f}"
            p99 = "-" if c["p99_ms"] is None else f"{c['p99_ms']:.3f}"
            print(f"  {c['factory']:<24} {c['params']:<12} {rec:>9} {p50:>8} {p99:>8} "
                  f"{c['memory_bytes'] / 2**20:>8.1f}  {c['note']}")  # fmt: skip
    print(f"wrote {folder.path / 'report.json'}")
    return 0


def search_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.index.search import MAX_K
    from clipforge.ranges import integers

    p = sub.add_parser(
        "search",
        help="search an index by text, by image, or over its captions",
        description="Text to image by default; --image FILE for image to image; --captions "
        "for text to text over the stored captions (no image tower at query time).",
    )
    p.add_argument("index", help="index folder (clipforge index --out)")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", metavar="FILE", help="search by this image instead")
    p.add_argument("--captions", action="store_true", help="match the text against captions")
    add_number(p, "-k", integers(1, MAX_K), 10, "results")
    p.add_argument("--model", help="model to embed the query (default: the one that built it)")
    p.add_argument(
        "--adapter",
        metavar="A.safetensors",
        help="re-rank the top --candidates images by this few-shot adapter's probability of "
        "the query's class (the class the text names, or the query image's class)",
    )
    add_number(p, "--candidates", integers(1, MAX_K), 100, "hits re-ranked with --adapter")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    precision_flag(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    import torch

    from clipforge.index.search import check_query

    if (args.query is None) == (args.image is None):
        raise ClipforgeError("give a text query or --image FILE (one of them)")
    if args.image and args.captions:
        raise ClipforgeError("--captions matches text against captions; it takes no --image")
    if args.query is not None:
        check_query(args.query)  # before loading anything
    torch.set_num_threads(2)
    searcher = load_searcher(args.index, args.model, args.precision)
    adapter = None
    if args.adapter:
        from clipforge.index.rerank import load_adapter

        adapter = load_adapter(args.adapter, searcher.embedder)
    kw = {"adapter": adapter, "candidates": args.candidates}
    if args.image:
        hits = searcher.image(args.image, args.k, label=args.image, **kw)
    else:
        hits = searcher.text(args.query, args.k, captions=args.captions, **kw)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, default=str))
        return 0
    width = max([len(str(h.row.get("path", ""))) for h in hits] + [4])
    p_col = f"  {'adapter':>7}" if adapter is not None else ""
    print(f"{'rank':>4}  {'score':>6}{p_col}  {'path':<{width}}  caption")
    for h in hits:
        p = f"  {h.adapter_p:>7.3f}" if h.adapter_p is not None else ""
        print(
            f"{h.rank:>4}  {h.score:>6.3f}{p}  {h.row.get('path', ''):<{width}}  {h.row.get('caption', '')}"
        )
    return 0


def link_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.index.link import MODES
    from clipforge.ranges import Range, integers

    p = sub.add_parser(
        "link",
        help="record linkage: cluster the rows of an embedding folder that show the same thing",
        description="Join each row to its -k nearest rows whose cosine is at least --threshold "
        "and print the connected components. --mode both (default) pools the image and caption "
        "embeddings (their normalised mean), as in CLIPPINGS. With --truth COLUMN (a manifest "
        "column naming each row's true group) print pairwise precision, recall and F1; without "
        "--threshold, choose it on a validation half of the groups and report the other half.",
    )
    p.add_argument("embeddings", help="embedding folder (clipforge embed --out)")
    p.add_argument("--mode", default="both", choices=list(MODES))
    p.add_argument(
        "--threshold",
        type=Range(low=-1, high=1).reader("--threshold"),
        default=None,
        metavar="FLOAT",
        help="cosine at or above which two rows are linked (a number in [-1, 1]; "
        "default: chosen on a validation half, which needs --truth)",
    )
    add_number(p, "-k", integers(1, 1000), 10, "nearest neighbours considered per row")
    p.add_argument("--truth", metavar="COLUMN", help="row column holding each row's true group")
    p.add_argument("--out", metavar="FILE.jsonl", help="write each row with its cluster here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    overwrite_flag(p)
    p.set_defaults(func=cmd_link)


def cmd_link(args: argparse.Namespace) -> int:
    import numpy as np

    from clipforge.index import link
    from clipforge.index.store import read_embeddings
    from clipforge.outputs import atomic_write, check_file

    if args.threshold is None and not args.truth:
        raise ClipforgeError("give --threshold, or --truth COLUMN to choose it on validation rows")
    if args.out:
        check_file(args.out, overwrite=args.overwrite, inputs=[args.embeddings])
    emb = read_embeddings(args.embeddings)
    x = link.vectors(emb, args.mode)
    truth = link.truth_of(emb, args.truth) if args.truth else None
    summary: dict = {"mode": args.mode, "k": args.k, "rows": len(x)}
    say = (lambda _: None) if args.json else print
    if args.threshold is None:
        assert truth is not None
        tuned = link.tune(x, truth, args.k)
        summary.update(tuned)
        threshold = tuned["threshold"]
        t = tuned["test"]
        say(f"threshold {threshold} (best F1 {tuned['validation_f1']} on "
              f"{tuned['validation_rows']} validation rows)")  # fmt: skip
        say(f"test ({tuned['test_rows']} rows): precision {t['precision']:.4f} "
              f"recall {t['recall']:.4f} F1 {t['f1']:.4f}")  # fmt: skip
    else:
        threshold = args.threshold
    labels, _, _ = link.link(x, threshold, args.k)
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    summary.update(
        threshold=threshold, clusters=len(sizes), linked_rows=int(sizes[sizes > 1].sum())
    )
    say(f"{args.mode}: {len(sizes)} clusters of {len(x)} rows at threshold {threshold}; "
          f"{int((sizes > 1).sum())} hold more than one row ({summary['linked_rows']} rows), "
          f"the largest {int(sizes.max())}")  # fmt: skip
    if truth is not None and args.threshold is not None:
        s = link.pair_scores(labels, truth)
        summary["all"] = s.to_dict()
        say(f"all rows: precision {s.precision:.4f} recall {s.recall:.4f} F1 {s.f1:.4f}")
    if args.out:
        lines = [json.dumps({**r, "cluster": int(c)}, default=str) + "\n"
                 for r, c in zip(emb.rows, labels, strict=True)]  # fmt: skip
        atomic_write(args.out, "".join(lines))
        say(f"wrote {args.out}")
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def serve_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import add_number
    from clipforge.ranges import integers

    p = sub.add_parser(
        "serve",
        help="serve an index: HTTP API and a search page (FastAPI + uvicorn)",
        description="GET / is a search page; GET /api/search?q=&k=, POST /api/search (image "
        "upload), POST /api/embed, GET /api/items/ID (thumbnail), GET /healthz, GET /metrics.",
    )
    p.add_argument("index", help="index folder (clipforge index --out)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    add_number(p, "--port", integers(1, 65535), 8000, "port")
    p.add_argument("--model", help="model to embed queries (default: the one that built it)")
    add_number(p, "--threads", integers(1), 2, "torch threads")
    precision_flag(p)
    p.set_defaults(func=cmd_serve)


def load_searcher(index_dir: str, model: str | None, precision: str) -> Searcher:
    """The index folder with its model loaded (once) and checked by fingerprint."""
    from clipforge.index.search import IndexFolder, Searcher
    from clipforge.models import load, tokenizer_for

    index = IndexFolder(index_dir)
    source = model or index.info.get("model")
    if model is None and not Path(str(source)).exists():
        raise ClipforgeError(f"the index's model {source} is gone; give it with --model")
    m = load(source)
    return Searcher(index, m, tokenizer_for(m), precision)


def cmd_serve(args: argparse.Namespace) -> int:
    import torch

    try:
        import uvicorn

        from clipforge.serve.app import create_app
    except ImportError:
        raise ClipforgeError(
            "clipforge serve needs fastapi and uvicorn: pip install 'clipforge[serve]'"
        ) from None
    torch.set_num_threads(args.threads)
    searcher = load_searcher(args.index, args.model, args.precision)
    print(
        f"serving {args.index} ({len(searcher.index.rows)} items) on http://{args.host}:{args.port}/"
    )
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level="warning")
    return 0


__all__ = ["embed_parser", "index_parser", "link_parser", "search_parser", "serve_parser"]
