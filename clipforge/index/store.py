"""The embedding folder ``clipforge embed`` writes and ``clipforge index`` reads.

Layout::

    EMB_DIR/model.json            model fingerprint, source, dim, dtype, preprocessing,
                                  precision (with the bf16 parity), counts, skip reasons
    EMB_DIR/progress.json         items done and shards written (what --resume continues)
    EMB_DIR/shards/NNNNN.images.npy   [n, dim] image features of shard NNNNN
    EMB_DIR/shards/NNNNN.texts.npy    [n, dim] caption features (zeros for no caption)
    EMB_DIR/shards/NNNNN.rows.jsonl   one row per embedded item: item, path, caption, ...

Every file is written atomically, and a shard's three files before the progress record
that counts it, so a kill at any moment leaves the shards the progress counts intact; a
shard written after the last progress record is written again, identically, on resume.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.outputs import atomic_write

MODEL_FILE = "model.json"
PROGRESS_FILE = "progress.json"
DTYPES = ("float16", "float32")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or damaged file is a one-line error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipforgeError(f"{path} not found: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipforgeError(f"{path} is damaged ({e}); {what}") from None
    if not isinstance(data, dict):
        raise ClipforgeError(f"{path} is damaged (not a JSON object); {what}")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def save_array(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


def load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ClipforgeError(f"{path} not found: the embedding folder is incomplete") from None
    except (OSError, ValueError) as e:
        raise ClipforgeError(f"{path} is damaged ({e}); embed the collection again") from None


def shard_name(n: int) -> str:
    return f"{n:05d}"


@dataclass
class Embeddings:
    """A complete embedding folder read into memory (float32 arrays)."""

    info: dict[str, Any]
    images: np.ndarray | None  # [N, D], None for a text collection
    texts: np.ndarray  # [N, D] caption features; zero rows where an item has no caption
    rows: list[dict[str, Any]]

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])


def read_embeddings(folder: str | os.PathLike[str]) -> Embeddings:
    """Read the embedding folder ``folder`` written by ``clipforge embed``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipforgeError(f"{folder}: no such embedding folder (clipforge embed writes one)")
    info = read_json(folder / MODEL_FILE, "not a complete `clipforge embed` folder")
    if not info.get("complete"):
        raise ClipforgeError(
            f"{folder} is an unfinished embedding run; finish it with clipforge embed ... --resume"
        )
    shards = int(info["shards"])
    images, texts, rows = [], [], []
    for n in range(shards):
        base = folder / "shards" / shard_name(n)
        if info["kind"] == "image":
            images.append(load_array(base.with_name(base.name + ".images.npy")))
        texts.append(load_array(base.with_name(base.name + ".texts.npy")))
        try:
            lines = base.with_name(base.name + ".rows.jsonl").read_text(encoding="utf-8")
            rows.extend(json.loads(line) for line in lines.splitlines())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClipforgeError(f"{base}.rows.jsonl is damaged or missing ({e})") from None
    dim = int(info["dim"])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        a = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        return np.ascontiguousarray(a, dtype=np.float32)

    img = cat(images) if info["kind"] == "image" else None
    txt = cat(texts)
    if len(txt) != len(rows) or (img is not None and len(img) != len(rows)):
        raise ClipforgeError(f"{folder}: shards and rows disagree in length; embed it again")
    return Embeddings(info, img, txt, rows)


__all__ = [
    "DTYPES",
    "MODEL_FILE",
    "PROGRESS_FILE",
    "Embeddings",
    "load_array",
    "read_embeddings",
    "read_json",
    "save_array",
    "shard_name",
    "write_json",
]
