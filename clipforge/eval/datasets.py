"""Evaluation data sets: what a task consumes and how to read it from disk.

Three kinds, each a small dataclass:

* :class:`ClassificationData` (``"classification"``): images, labels, class names and
  prompt templates. Read from an image folder (one sub-folder per class).
* :class:`RetrievalData` (``"retrieval"``): images with one or more captions each. Read
  from a CSV/TSV/JSONL manifest or a COCO/Flickr caption JSON in Karpathy's split format.
* :class:`ChoiceData` (``"choice"``): for each row an image and candidate captions, one of
  them right (hard negatives, counting). Read from SugarCrepe- or ARO-style JSON files.

Images are loaded lazily through an :class:`ImageSet`, whose ``key`` identifies its
content for the embedding cache. Nothing is ever downloaded: a data set is a path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipforge.data.readers import decode_image
from clipforge.data.sample import SampleError
from clipforge.errors import ClipforgeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Template = str | Callable[[str], str]


@dataclass
class ImageSet:
    """``n`` images loaded on demand by ``load(i)``; ``key`` names their content."""

    key: str
    n: int
    load: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return self.n


@dataclass
class ClassificationData:
    name: str
    images: ImageSet
    labels: torch.Tensor  # [N] int64
    classnames: list[str]
    templates: Sequence[Template]
    # One caption per image where the data has them (an image folder's captions.jsonl or
    # .txt sidecars); None otherwise.
    captions: list[str] | None = None


@dataclass
class RetrievalData:
    """Images with several captions each. ``positives[i, j]`` says text ``j`` describes image
    ``i``; by default exactly the captions listed for that image (CLIP_benchmark's rule)."""

    name: str
    images: ImageSet
    captions: list[list[str]]
    positives: torch.Tensor | None = None

    @property
    def texts(self) -> list[str]:
        return [t for caps in self.captions for t in caps]

    @property
    def owner(self) -> torch.Tensor:
        """``[T]``: the image index of every text."""
        return torch.tensor([i for i, caps in enumerate(self.captions) for _ in caps])

    def positive_matrix(self) -> torch.Tensor:
        if self.positives is not None:
            return self.positives
        owner = self.owner
        pos = torch.zeros(len(self.captions), len(owner), dtype=torch.bool)
        pos[owner, torch.arange(len(owner))] = True
        return pos


@dataclass
class ChoiceData:
    """Row ``r`` asks which of ``options[r]`` describes image ``image_index[r]``; the right one
    is ``options[r][answer[r]]``. ``group[r]`` names the row's category (perturbation type,
    true count) for per-group accuracy."""

    name: str
    images: ImageSet
    image_index: list[int]
    options: list[list[str]]
    answer: list[int]
    group: list[str] = field(default_factory=list)


def _file_key(path: Path, extra: str = "") -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{extra}"


def _path_loader(paths: list[Path]) -> Callable[[int], Image.Image]:
    def load(i: int) -> Image.Image:
        try:
            return decode_image(paths[i], str(paths[i]))
        except SampleError as e:
            raise ClipforgeError(f"{e.detail}: {e.reason.replace('_', ' ')}") from None

    return load


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ClipforgeError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ClipforgeError(f"{path}: not valid UTF-8 text ({e.reason})") from None


# -- image folders ---------------------------------------------------------------------------


def _read_templates(path: Path) -> list[str]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "{c}" in line:  # CLIP_benchmark's spelling of the placeholder
            line = line.replace("{c}", "{}")
        if line.count("{}") != 1:
            raise ClipforgeError(f"{path}:{n}: a template needs exactly one {{}} or {{c}}")
        out.append(line)
    if not out:
        raise ClipforgeError(f"{path}: no templates")
    return out


def image_folder(path: str | os.PathLike[str]) -> ClassificationData:
    """A classification set: ``PATH/<class>/*.png`` (sorted class folders give the labels).

    Optional files next to the class folders: ``classnames.txt`` (one readable name per
    line, in sorted folder order; default: the folder name with ``_`` as space) and
    ``templates.txt`` (one prompt per line with ``{}`` or ``{c}`` for the class name;
    default: ``"a photo of a {}."``). Captions, where every image has one: a
    ``captions.jsonl`` of ``{"image": "<class>/<file>", "caption": ...}`` lines, or a
    ``<file>.txt`` sidecar beside each image (first line).
    """
    root = Path(path)
    if not root.is_dir():
        raise ClipforgeError(f"image folder not found: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ClipforgeError(f"{root}: no class sub-folders")
    paths: list[Path] = []
    labels: list[int] = []
    for ci, d in enumerate(classes):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [ci] * len(files)
    if not paths:
        raise ClipforgeError(
            f"{root}: the class folders hold no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    names = [d.name.replace("_", " ") for d in classes]
    names_file = root / "classnames.txt"
    if names_file.exists():
        names = [
            ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()
        ]
        if len(names) != len(classes):
            raise ClipforgeError(
                f"{names_file}: {len(names)} names for {len(classes)} class folders"
            )
    tfile = root / "templates.txt"
    templates = _read_templates(tfile) if tfile.exists() else ["a photo of a {}."]
    digest = hashlib.sha1("\n".join(str(p) for p in paths).encode()).hexdigest()
    key = f"folder:{root.resolve()}:{len(paths)}:{digest}"
    return ClassificationData(
        root.name,
        ImageSet(key, len(paths), _path_loader(paths)),
        torch.tensor(labels),
        names,
        templates,
        _folder_captions(root, paths),
    )


def _folder_captions(root: Path, paths: list[Path]) -> list[str] | None:
    """Every image's caption from ``root/captions.jsonl`` or ``.txt`` sidecars, or None
    when some image has none (a partial caption set is refused, not silently padded)."""
    manifest = root / "captions.jsonl"
    if manifest.exists():
        found: dict[str, str] = {}
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found[str(Path(row["image"]))] = str(row["caption"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ClipforgeError(
                    f'{manifest}:{n}: expected {{"image": ..., "caption": ...}}'
                ) from None
        missing = [p for p in paths if str(p.relative_to(root)) not in found]
        if missing:
            raise ClipforgeError(
                f"{manifest}: no caption for {missing[0].relative_to(root)} "
                f"({len(missing)} of {len(paths)} images have none)"
            )
        return [found[str(p.relative_to(root))] for p in paths]
    sidecars = [p.with_name(p.name + ".txt") for p in paths]
    if paths and all(s.exists() for s in sidecars):
        return [(s.read_text(encoding="utf-8").splitlines() or [""])[0].strip() for s in sidecars]
    return None


# -- retrieval -------------------------------------------------------------------------------


def retrieval_manifest(path: str | os.PathLike[str]) -> RetrievalData:
    """Images and captions from a CSV/TSV/JSONL manifest (see :class:`ManifestDataset`);
    a JSONL caption may be a list, giving several captions per image."""
    from clipforge.data.readers import ManifestDataset

    ds = ManifestDataset(path)
    if len(ds) == 0:
        raise ClipforgeError(f"{path}: the manifest has no rows")
    rows = ds._rows  # the captions are already parsed and validated there
    for r in rows:
        if not [t for t in r.texts if t.strip()]:
            raise ClipforgeError(f"{path}:{r.line}: empty caption")
    paths = [ds.root / r.image for r in rows]
    captions = [[t for t in r.texts if t.strip()] for r in rows]
    images = ImageSet(_file_key(Path(path)), len(paths), _path_loader(paths))
    return RetrievalData(Path(path).stem, images, captions)


def karpathy_json(
    path: str | os.PathLike[str], split: str = "test", image_root: str | None = None
) -> RetrievalData:
    """COCO/Flickr captions in Karpathy's split format (``dataset_coco.json``):
    ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``. Images are
    found under ``image_root`` (default: the JSON file's folder) + ``filepath/filename``."""
    p = Path(path)
    doc = _read_json(p)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ClipforgeError(f"{p}: expected an object with an 'images' list (Karpathy format)")
    root = Path(image_root) if image_root else p.parent
    paths, captions = [], []
    # Karpathy's "restval" images are training images held out of the original val set.
    wanted = {split, "restval"} if split == "train" else {split}
    for i, entry in enumerate(doc["images"]):
        if not isinstance(entry, dict) or "filename" not in entry or "sentences" not in entry:
            raise ClipforgeError(f"{p}: images[{i}] needs 'filename' and 'sentences'")
        if entry.get("split", split) not in wanted:
            continue
        caps = [s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"]]
        caps = [c.strip() for c in caps if c and c.strip()]
        if not caps:
            raise ClipforgeError(f"{p}: images[{i}] ({entry['filename']}) has no captions")
        paths.append(root / entry.get("filepath", "") / entry["filename"])
        captions.append(caps)
    if not paths:
        raise ClipforgeError(f"{p}: no images in split {split!r}")
    images = ImageSet(_file_key(p, f"{split}:{root.resolve()}"), len(paths), _path_loader(paths))
    return RetrievalData(f"{p.stem}-{split}", images, captions)


# -- hard negatives (SugarCrepe / ARO) ---------------------------------------------------------


def _hardneg_rows(p: Path, doc: Any) -> list[tuple[str, str, list[str], tuple | None]]:
    """``(image, true caption, negatives, crop box)`` rows of one benchmark file."""
    rows = []
    if isinstance(doc, dict):  # SugarCrepe: {"id": {"filename", "caption", "negative_caption"}}
        items = list(doc.items())
    elif isinstance(doc, list):  # ARO: [{"image_path", "true_caption", "false_caption", bbox}]
        items = [(str(i), e) for i, e in enumerate(doc)]
    else:
        raise ClipforgeError(f"{p}: expected a JSON object or list of hard-negative entries")
    for key, e in items:
        if not isinstance(e, dict):
            raise ClipforgeError(f"{p}: entry {key} is not an object")
        image = e.get("filename") or e.get("image_path") or e.get("image")
        pos = e.get("caption", e.get("true_caption"))
        neg = e.get("negative_caption", e.get("false_caption"))
        if not image or not isinstance(pos, str) or neg is None:
            raise ClipforgeError(
                f"{p}: entry {key} needs an image (filename/image_path), a caption "
                "(caption/true_caption) and a negative (negative_caption/false_caption)"
            )
        negs = [neg] if isinstance(neg, str) else [str(n) for n in neg]
        box = None
        if all(k in e for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")):
            x, y, w, h = (float(e[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
            box = (x, y, x + w, y + h)
        rows.append((str(image), pos, negs, box))
    return rows


def hardneg_json(
    paths: Sequence[str | os.PathLike[str]], image_root: str | None = None
) -> ChoiceData:
    """Compositional hard negatives from SugarCrepe-style (``{"id": {"filename", "caption",
    "negative_caption"}}``) or ARO-style (``[{"image_path", "true_caption",
    "false_caption", "bbox_x", ...}]``) JSON files. Each file is one perturbation type,
    named by its file stem (e.g. ``replace_att``); ARO boxes crop the image first."""
    files = [Path(p) for p in paths]
    image_paths: list[Path] = []
    boxes: list[tuple | None] = []
    index: dict[tuple[str, tuple | None], int] = {}
    rows_img, options, groups = [], [], []
    for f in files:
        root = Path(image_root) if image_root else f.parent
        for image, pos, negs, box in _hardneg_rows(f, _read_json(f)):
            k = (str(root / image), box)
            if k not in index:
                index[k] = len(image_paths)
                image_paths.append(root / image)
                boxes.append(box)
            rows_img.append(index[k])
            options.append([pos, *negs])
            groups.append(f.stem)
    if not rows_img:
        raise ClipforgeError(f"{', '.join(map(str, files))}: no hard-negative entries")
    base = _path_loader(image_paths)

    def load(i: int) -> Image.Image:
        img = base(i)
        return img.crop(tuple(round(v) for v in boxes[i])) if boxes[i] else img

    key = "hardneg:" + "|".join(_file_key(f, str(image_root)) for f in files)
    return ChoiceData(
        files[0].stem if len(files) == 1 else files[0].parent.name,
        ImageSet(key, len(image_paths), load),
        rows_img,
        options,
        [0] * len(rows_img),
        groups,
    )


# -- dispatch ---------------------------------------------------------------------------------


def _is_hardneg_doc(doc: Any) -> bool:
    first = next(iter(doc.values()), None) if isinstance(doc, dict) else (doc[0] if doc else None)
    return isinstance(first, dict) and ("negative_caption" in first or "false_caption" in first)


def open_eval_data(
    path: str | os.PathLike[str], split: str = "test", image_root: str | None = None
) -> tuple[str, ClassificationData | RetrievalData | ChoiceData]:
    """Read a data set named by path and say its kind.

    * a folder of class sub-folders -> ``classification``;
    * a folder of hard-negative JSON files, or one such file -> ``choice``;
    * ``*.csv``/``*.tsv``/``*.jsonl`` -> ``retrieval``; ``*.json`` in Karpathy format ->
      ``retrieval`` (``split`` picks the images).
    """
    p = Path(path)
    if not p.exists():
        raise ClipforgeError(f"eval data not found: {p}")
    if p.is_dir():
        jsons = sorted(p.glob("*.json"))
        if jsons and all(_is_hardneg_doc(_read_json(j)) for j in jsons):
            return "choice", hardneg_json(jsons, image_root)
        return "classification", image_folder(p)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".jsonl"):
        return "retrieval", retrieval_manifest(p)
    if suffix == ".json":
        doc = _read_json(p)
        if _is_hardneg_doc(doc):
            return "choice", hardneg_json([p], image_root)
        return "retrieval", karpathy_json(p, split, image_root)
    raise ClipforgeError(
        f"{p}: unknown eval data format; expected an image folder, a CSV/TSV/JSONL manifest, "
        "a Karpathy caption JSON or SugarCrepe/ARO JSON"
    )
