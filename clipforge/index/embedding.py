"""``clipforge embed``: a collection through the one embedder into an embedding folder.

The run goes shard by shard (``shard_size`` items each). A shard's items are decoded in
order, unusable ones skipped and counted by reason, and the rest encoded in batches of
``batch_size`` by :class:`clipforge.eval.embed.Embedder` (images, and the captions too, so
that an index can search them without the image tower). Shard boundaries and batch
boundaries depend only on the collection and the two sizes, so a run resumed after a kill
computes every shard exactly as an uninterrupted one would: the result is the same file
content, with no missing or repeated row (see :mod:`.store` for the write order).

Under ``torchrun`` (``python -m clipforge.embed``) every process runs this loop over its
own shards, ``s % world == rank``, writing them into the one folder; for the same reason
they are the files one process would write. Rank 0 alone writes ``model.json`` and
``progress.json``: at the start, and at the end with the counts summed over the ranks.
A resumed parallel run starts again from the progress record, which counts no shard
until the end, so it recomputes (identically) what a kill left.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clipforge.data.sample import SampleError, SkipCounter
from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import Embedder
from clipforge.index.items import Collection
from clipforge.index.store import (
    DTYPES,
    MODEL_FILE,
    PROGRESS_FILE,
    read_json,
    save_array,
    shard_name,
    write_json,
)
from clipforge.models import CLIP
from clipforge.outputs import atomic_write, remove_stale_temporaries

# Settings a resumed run must share with the run it continues: any of them changes what
# is computed or how it is cut into shards.
RESUME_KEYS = (
    "fingerprint", "collection", "kind", "dtype", "shard_size", "batch_size", "runtime"
)  # fmt: skip


def embed_collection(
    model: CLIP,
    tokenizer: Tokenizer,
    items: Collection,
    out: str | Path,
    *,
    model_source: str,
    dtype: str = "float16",
    precision: str = "auto",
    batch_size: int = 128,
    shard_size: int = 1024,
    resume: bool = False,
    progress: bool = True,
    source: dict[str, str | None] | None = None,
    on_shard: Callable[[int], None] | None = None,
    runtime: str = "torch",
    onnx_dir: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Embed ``items`` into the folder ``out`` (already checked and marked by the caller);
    return the final ``model.json`` record. With ``resume`` continue the run recorded
    there. ``source`` (``{"data": ..., "texts": ...}``, as :func:`.items.open_collection`
    takes them) is recorded, so that ``clipforge embed --update`` can open the collection
    again. ``on_shard(n)`` is called after shard ``n`` is recorded (tests use it).
    ``runtime`` ``"onnx"`` encodes with onnxruntime on the export ``onnx_dir`` (default:
    exported into the cache; see :class:`~clipforge.eval.embed.Embedder`). Process
    ``rank`` of ``world`` (joined in a torch.distributed group) embeds its share."""
    if dtype not in DTYPES:
        raise ClipforgeError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    info: dict[str, Any]
    main = rank == 0
    if resume and main:
        remove_stale_temporaries(out)  # a shard file a kill caught half-written
    _barrier(world)  # no rank reads the records before rank 0 has cleaned up
    if resume:
        again = "nothing to resume; start again with --overwrite"
        info = read_json(out / MODEL_FILE, again)
        done = read_json(out / PROGRESS_FILE, again)
        precision = str(info["precision"]["precision"])  # the same arithmetic as before
        # Folders written before the runtime was recorded were all embedded by PyTorch.
        info.setdefault("runtime", "torch")
        if onnx_dir is None and info["runtime"] == runtime == "onnx":
            onnx_dir = info.get("onnx")  # the graphs the run started with, if still there
            if onnx_dir is not None and not Path(onnx_dir).is_dir():
                onnx_dir = None
    embedder = Embedder(
        model, tokenizer, batch_size=batch_size, progress=False, precision=precision,
        runtime=runtime, onnx_dir=onnx_dir,
    )  # fmt: skip
    fresh = {
        "fingerprint": embedder.fingerprint,
        "collection": items.digest,
        "kind": items.kind,
        "dtype": dtype,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "runtime": runtime,
    }
    if resume:
        for key in RESUME_KEYS:
            if info.get(key) != fresh[key]:
                what = "model" if key == "fingerprint" else key
                raise ClipforgeError(
                    f"{out} holds embeddings with {what} {info.get(key)!r}, this run has "
                    f"{fresh[key]!r}; they are not mixed (embed into a new folder)"
                )
        if info.get("complete"):
            return info
        skipped = SkipCounter()
        if main:  # the ranks' counts are added up at the end
            skipped.update(done.get("skipped", {}))
        start_shard = int(done["shards"])
    else:
        info = {
            **fresh,
            "model": model_source,
            "source": source,
            "dim": model.cfg.embed_dim,
            "items": len(items),
            "preprocessing": _preprocessing(model),
            "precision": embedder.precision_record,
            "complete": False,
        }
        if embedder.onnx_dir is not None:
            info["onnx"] = str(embedder.onnx_dir)
        if main:
            write_json(out / MODEL_FILE, info)
            write_json(out / PROGRESS_FILE, {"shards": 0, "rows": 0, "skipped": {}})
        skipped, start_shard = SkipCounter(), 0
    n_shards = (len(items) + shard_size - 1) // shard_size
    rows_done = int(done["rows"]) if resume and main else 0  # summed over ranks at the end
    mine = [s for s in range(start_shard, n_shards) if s % world == rank]
    np_dtype = np.float16 if dtype == "float16" else np.float32
    unit = "img" if items.kind == "image" else "text"
    bar = tqdm(
        total=len(items), initial=min(start_shard * shard_size, len(items)), unit=unit,
        desc="embed", disable=not progress or not main, smoothing=0.1,
    )  # fmt: skip
    t0 = time.perf_counter()
    for s in mine:
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(items))
        rows, images = [], []
        for i in range(lo, hi):
            row = items.row(i)
            if items.kind == "image":
                try:
                    images.append(items.image(i))
                except SampleError as e:
                    skipped.add(e.reason)
                    continue
            rows.append({"item": i, **row})
        base = out / "shards" / shard_name(s)
        if items.kind == "image":
            feats = [embedder.image_batch(images[b : b + batch_size]).numpy()
                     for b in range(0, len(images), batch_size)]  # fmt: skip
            save_array(base.with_name(base.name + ".images.npy"), _stack(feats, info, np_dtype))
        save_array(
            base.with_name(base.name + ".texts.npy"), _captions(embedder, rows, info, np_dtype)
        )
        atomic_write(
            base.with_name(base.name + ".rows.jsonl"),
            "".join(json.dumps(r, default=str) + "\n" for r in rows),
        )
        rows_done += len(rows)
        if world == 1:  # shards done in order: the count is a resume point
            write_json(
                out / PROGRESS_FILE,
                {"shards": s + 1, "rows": rows_done, "skipped": skipped.as_dict()},
            )
        bar.update((hi - lo) * world)
        if on_shard is not None:
            on_shard(s)
    bar.close()
    if world > 1:
        rows_done, skipped = _summed(rows_done, skipped)
    if not resume:  # a resumed run keeps the record (and parity) of the run it continues
        info["precision"] = embedder.precision_record
    if items.kind == "image" and rows_done == 0:
        why = ", ".join(f"{n} {r}" for r, n in skipped.as_dict().items())
        raise ClipforgeError(f"no image of the collection could be read ({why}); nothing to index")
    info.update(
        complete=True,
        shards=n_shards,
        rows=rows_done,
        skipped=skipped.as_dict(),
        seconds=round(time.perf_counter() - t0, 3),
    )
    if main:
        if world > 1:
            write_json(
                out / PROGRESS_FILE,
                {"shards": n_shards, "rows": rows_done, "skipped": skipped.as_dict()},
            )
        write_json(out / MODEL_FILE, info)
    _barrier(world)  # every rank returns once the folder is complete
    return info


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _summed(rows: int, skipped: SkipCounter) -> tuple[int, SkipCounter]:
    """The row count and skip reasons of every rank, added up (on every rank)."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (rows, skipped.as_dict()))
    total = SkipCounter()
    for _, d in parts:
        total.update(d)
    return sum(r for r, _ in parts), total


def _stack(parts: list[np.ndarray], info: dict[str, Any], dtype: type) -> np.ndarray:
    if not parts:
        return np.zeros((0, info["dim"]), dtype)
    return np.concatenate(parts).astype(dtype)


def _captions(
    embedder: Embedder, rows: list[dict], info: dict[str, Any], dtype: type
) -> np.ndarray:
    """Caption features of ``rows``; a row without a caption gets a zero row (never found
    by a caption search, since every query scores 0 against it)."""
    out = np.zeros((len(rows), info["dim"]), np.float32)
    have = [j for j, r in enumerate(rows) if r.get("caption")]
    bs = embedder.batch_size
    for b in range(0, len(have), bs):
        idx = have[b : b + bs]
        out[idx] = embedder.text_batch([rows[j]["caption"] for j in idx]).numpy()
    return out.astype(dtype)


def _preprocessing(model: CLIP) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "image_size": cfg.vision.image_size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "resize_mode": cfg.resize_mode,
        "interpolation": str(cfg.interpolation),
        "context_length": cfg.text.context_length,
    }


__all__ = ["embed_collection"]
