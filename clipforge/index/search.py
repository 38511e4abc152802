"""An index folder (``clipforge index``) and the queries against it (``clipforge search``).

Layout::

    INDEX_DIR/model.json       the embedding run's record (fingerprint, model, dim, ...)
    INDEX_DIR/images.faiss     image features (absent for a text collection)
    INDEX_DIR/images.ids.npy   faiss row -> collection row
    INDEX_DIR/captions.faiss   caption features of the rows that have a caption
    INDEX_DIR/captions.ids.npy faiss row -> collection row
    INDEX_DIR/rows.jsonl       one row per item: item, path, caption, manifest columns
    INDEX_DIR/report.json      what the planner measured (recall@10, p50/p99) per index

A query is embedded by the model the collection was embedded with, checked by
fingerprint: features of another model live in another space, so a query of another model
is refused rather than answered with noise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from clipforge.data.readers import decode_image
from clipforge.data.sample import SampleError
from clipforge.data.tokenizer import Tokenizer
from clipforge.errors import ClipforgeError
from clipforge.eval.embed import Embedder
from clipforge.index.planner import _faiss, plan
from clipforge.index.rerank import CANDIDATES, image_class, rerank, text_class
from clipforge.index.store import Embeddings, load_array, read_json, save_array, write_json
from clipforge.models import CLIP
from clipforge.outputs import atomic_write

if TYPE_CHECKING:
    from clipforge.adapt import Adapter

MAX_QUERY_CHARS = 1000  # far beyond any text tower's context; longer is a mistake
MAX_K = 1000
TARGETS = ("images", "captions")


@dataclass
class Hit:
    """One search result: rank (1-based), cosine score, collection row ``id`` and its row."""

    rank: int
    score: float
    id: int
    row: dict[str, Any]
    adapter_p: float | None = None  # with --adapter: its probability of the query's class

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.adapter_p is None else {"adapter_p": round(self.adapter_p, 6)}
        return {"rank": self.rank, "score": round(self.score, 6), "id": self.id, **extra,
                **self.row}  # fmt: skip


def _write_faiss(index: Any, path: Path) -> None:
    faiss = _faiss()
    atomic_write(path, faiss.serialize_index(index).tobytes())


def build_index(
    emb: Embeddings, out: Path, memory_bytes: int, max_latency_ms: float, **plan_args: Any
) -> dict[str, Any]:
    """Plan and write the index folder ``out`` for ``emb``; return the report."""
    report: dict[str, Any] = {}
    if emb.images is not None:
        (index, ids), report["images"] = plan(emb.images, memory_bytes, max_latency_ms, **plan_args)
        _write_faiss(index, out / "images.faiss")
        save_array(out / "images.ids.npy", ids)
    captioned = np.array([j for j, r in enumerate(emb.rows) if r.get("caption")], np.int64)
    if len(captioned):
        vecs = np.ascontiguousarray(emb.texts[captioned])
        (index, ids), report["captions"] = plan(vecs, memory_bytes, max_latency_ms, **plan_args)
        _write_faiss(index, out / "captions.faiss")
        save_array(out / "captions.ids.npy", captioned[ids])
    atomic_write(out / "rows.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in emb.rows))
    part = {"fingerprint": emb.fingerprint, "rows": len(emb.rows)}
    write_json(out / "model.json", {**emb.info, "rows": len(emb.rows), "parts": [part]})
    write_json(out / "report.json", report)
    return report


class IndexFolder:
    """An index folder read from disk; every missing or damaged file is a one-line error."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ClipforgeError(f"{self.path}: no such index folder (clipforge index writes one)")
        self.info = read_json(self.path / "model.json", "not a `clipforge index` folder")
        self.report = read_json(
            self.path / "report.json", "not a complete `clipforge index` folder"
        )
        try:
            text = (self.path / "rows.jsonl").read_text(encoding="utf-8")
            self.rows = [json.loads(line) for line in text.splitlines()]
        except FileNotFoundError:
            raise ClipforgeError(
                f"{self.path / 'rows.jsonl'} not found; build the index again"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClipforgeError(
                f"{self.path / 'rows.jsonl'} is damaged ({e}); build it again"
            ) from None
        self._check_parts()
        self.indexes: dict[str, tuple[Any, np.ndarray]] = {}
        for target in TARGETS:
            if target in self.report:
                self.indexes[target] = self._read(target)

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])

    def _check_parts(self) -> None:
        """Refuse an index whose parts (its first build, each ``--add``) were embedded by
        different models: their features live in different spaces, so one query's scores
        against them are not comparable, and no single model can embed the queries."""
        parts = self.info.get("parts") or [
            {"fingerprint": self.fingerprint, "rows": len(self.rows)}
        ]
        rows: dict[str, int] = {}
        for p in parts:
            fp = str(p.get("fingerprint"))
            rows[fp] = rows.get(fp, 0) + int(p.get("rows", 0))
        if len(rows) > 1 or self.fingerprint not in rows:
            mix = ", ".join(f"{n} rows of model {fp}" for fp, n in rows.items())
            raise ClipforgeError(
                f"{self.path} mixes embeddings of different models ({mix}; the index says "
                f"{self.fingerprint}); build it again from one model's embeddings"
            )

    def _read(self, target: str) -> tuple[Any, np.ndarray]:
        faiss = _faiss()
        f = self.path / f"{target}.faiss"
        try:
            data = np.frombuffer(f.read_bytes(), dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except FileNotFoundError:
            raise ClipforgeError(f"{f} not found; build the index again") from None
        except (OSError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClipforgeError(f"{f} is damaged ({first[:120]}); build the index again") from None
        ids = load_array(self.path / f"{target}.ids.npy")
        if index.ntotal != len(ids) or (len(ids) and int(ids.max()) >= len(self.rows)):
            raise ClipforgeError(f"{f} does not match rows.jsonl; build the index again")
        params = self.report[target].get("params", "")
        if params:
            faiss.ParameterSpace().set_index_parameters(index, params)
        return index, ids

    def search(self, vectors: np.ndarray, k: int, target: str = "images") -> list[list[Hit]]:
        """The ``k`` best rows for each query vector ``[Q, D]`` in the ``target`` index."""
        check_k(k)
        if target not in self.indexes:
            have = ", ".join(self.indexes) or "nothing"
            raise ClipforgeError(f"{self.path} has no {target} index (it indexes {have})")
        index, ids = self.indexes[target]
        q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, index.d)
        scores, found = index.search(q, min(k, index.ntotal))
        out = []
        for srow, frow in zip(scores, found, strict=True):
            hits = [(float(s), int(ids[f])) for s, f in zip(srow, frow, strict=True) if f >= 0]
            out.append([Hit(r, s, i, self.rows[i]) for r, (s, i) in enumerate(hits, 1)])
        return out

    def search_with_vectors(
        self, vector: np.ndarray, k: int, target: str = "images"
    ) -> tuple[list[Hit], np.ndarray]:
        """The ``k`` best rows for one query vector and their stored features ``[n, D]``
        (as the index holds them: exact for flat, HNSW and IVF-Flat, decoded for PQ)."""
        check_k(k)
        if target not in self.indexes:
            raise ClipforgeError(f"{self.path} has no {target} index")
        index, ids = self.indexes[target]
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, index.d)
        scores, found, vecs = index.search_and_reconstruct(q, min(k, index.ntotal))
        keep = found[0] >= 0
        hits = [Hit(r, float(s), int(ids[f]), self.rows[int(ids[f])])
                for r, (s, f) in enumerate(zip(scores[0][keep], found[0][keep], strict=True), 1)]  # fmt: skip
        return hits, vecs[0][keep]

    def add(self, emb: Embeddings, out: Path) -> int:
        """Write into ``out`` this index with the rows of ``emb`` appended (no rebuild)."""
        if emb.fingerprint != self.fingerprint:
            raise ClipforgeError(
                f"--add: those embeddings are of model {emb.fingerprint}, the index of "
                f"{self.fingerprint}; embed them with the index's model ({self.info.get('model')})"
            )
        if emb.info["kind"] != self.info["kind"]:
            raise ClipforgeError(
                f"--add: a {emb.info['kind']} collection into a {self.info['kind']} index"
            )
        base = len(self.rows)
        for target, (index, ids) in self.indexes.items():
            if target == "images":
                new_ids, vecs = np.arange(len(emb.rows), dtype=np.int64), emb.images
            else:
                new_ids = np.array(
                    [j for j, r in enumerate(emb.rows) if r.get("caption")], np.int64
                )
                vecs = emb.texts[new_ids]
            index.add(np.ascontiguousarray(vecs, dtype=np.float32))
            _write_faiss(index, out / f"{target}.faiss")
            save_array(out / f"{target}.ids.npy", np.concatenate([ids, new_ids + base]))
        rows = self.rows + emb.rows
        atomic_write(out / "rows.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
        parts = self.info.get("parts") or [{"fingerprint": self.fingerprint, "rows": base}]
        parts = [*parts, {"fingerprint": emb.fingerprint, "rows": len(emb.rows)}]
        write_json(out / "model.json", {**self.info, "rows": len(rows), "parts": parts})
        report = dict(self.report)
        report["added"] = [*self.report.get("added", []), {"rows": len(emb.rows)}]
        write_json(out / "report.json", report)
        return len(rows)


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ClipforgeError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")


def check_query(text: str) -> str:
    """``text`` stripped; an empty or overlong query is a one-line error."""
    q = text.strip()
    if not q:
        raise ClipforgeError("the query is empty")
    if len(q) > MAX_QUERY_CHARS:
        raise ClipforgeError(
            f"the query is {len(q)} characters long; the limit is {MAX_QUERY_CHARS}"
        )
    return q


class Searcher:
    """An index folder with the model its collection was embedded by: text and image
    queries in, hits out. ``precision`` as for :class:`~clipforge.eval.embed.Embedder`."""

    def __init__(
        self, index: IndexFolder, model: CLIP, tokenizer: Tokenizer, precision: str = "auto"
    ) -> None:
        self.index = index
        self.embedder = Embedder(model, tokenizer, progress=False, precision=precision)
        if self.embedder.fingerprint != index.fingerprint:
            raise ClipforgeError(
                f"{index.path} was built with model {index.fingerprint} "
                f"({index.info.get('model')}); this model is {self.embedder.fingerprint}: "
                "query it with the model it was built with"
            )

    def embed_text(self, text: str) -> np.ndarray:
        return self.embedder.text_batch([check_query(text)]).numpy()

    def embed_image(
        self, image: Image.Image | str | os.PathLike[str] | bytes, label: str = "image"
    ) -> np.ndarray:
        if not isinstance(image, Image.Image):
            try:
                image = decode_image(image, label)
            except SampleError as e:
                raise ClipforgeError(
                    f"query image {e.detail or label}: {e.reason.replace('_', ' ')}"
                ) from None
        return self.embedder.image_batch([image]).numpy()

    def text(
        self, text: str, k: int = 10, captions: bool = False, adapter: Adapter | None = None,
        candidates: int = CANDIDATES,
    ) -> list[Hit]:  # fmt: skip
        """Text to image (or, with ``captions``, text to caption: no image tower used).
        With ``adapter``, the top ``candidates`` images re-ranked by it (:mod:`.rerank`)."""
        check_k(k)
        target = "captions" if captions or "images" not in self.index.indexes else "images"
        q = self.embed_text(text)
        if adapter is None:
            return self.index.search(q, k, target)[0]
        if target != "images":
            raise ClipforgeError("--adapter re-ranks images; it takes no --captions or text index")
        return self._rerank(q, k, adapter, text_class(adapter, self.embedder, text), candidates)

    def image(
        self, image: Image.Image | str | os.PathLike[str] | bytes, k: int = 10,
        label: str = "image", adapter: Adapter | None = None, candidates: int = CANDIDATES,
    ) -> list[Hit]:  # fmt: skip
        """Image to image; with ``adapter``, re-ranked by the class it gives the query."""
        check_k(k)
        q = self.embed_image(image, label)
        if adapter is None:
            return self.index.search(q, k, "images")[0]
        return self._rerank(q, k, adapter, image_class(adapter, q), candidates)

    def _rerank(
        self, q: np.ndarray, k: int, adapter: Adapter, cls: int, candidates: int
    ) -> list[Hit]:
        hits, vecs = self.index.search_with_vectors(q, min(MAX_K, max(k, candidates)))
        return rerank(hits, vecs, adapter, cls)[:k]


__all__ = [
    "MAX_K",
    "MAX_QUERY_CHARS",
    "Hit",
    "IndexFolder",
    "Searcher",
    "build_index",
    "check_k",
    "check_query",
]
