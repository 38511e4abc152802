"""What every adaptation method shares: the few-shot features it fits on, the fitted
:class:`Adapter`, the registry, and model selection on a validation split.

A method is a pair of pure functions registered under its name: ``fit(shots, options)``
returns the adapter's tensors and its chosen hyper-parameters; ``logits(tensors, params,
x)`` scores normalised image features. Because inference is a function of saved tensors
and JSON numbers only (plus the frozen model, for the methods that declare
``needs_model``), every adapter saves and loads the same way (safetensors + a JSON
sidecar) and ``clipforge adapt eval`` needs no method-specific code.

Model selection never sees test data: :func:`fit` is given the training images only.
Hyper-parameters are chosen on a validation part carved from the shots
(:func:`carve_validation`), then the adapter is refitted on all shots with them. With a
single shot per class there is nothing to carve, and each method falls back to its
option defaults (its "own rule"); the adapter's ``params`` record which happened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.errors import ClipforgeError
from clipforge.registry import Registry

FORMAT = "clipforge-adapter/1"


@dataclass
class Shots:
    """The few-shot training features one method fits on.

    ``x``/``y`` hold every shot; ``train``/``val`` index them (``val`` is empty when the
    shots are too few to carve a validation part). ``text`` is the zero-shot classifier
    (``[C, D]``, normalised) and ``scale`` the model's logit scale.
    """

    x: torch.Tensor
    y: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    text: torch.Tensor
    scale: float
    classnames: list[str]
    seed: int = 0
    templates: Sequence[Any] = ()
    embedder: Any = None  # for methods that encode text of their own (descriptions)
    captions: list[str] | None = None  # each shot's caption, where the data has them

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def has_val(self) -> bool:
        return len(self.val) > 0

    def part(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of ``"train"``, ``"val"`` or ``"all"``."""
        if which == "all":
            return self.x, self.y
        idx = self.train if which == "train" else self.val
        return self.x[idx], self.y[idx]


Tensors = dict[str, torch.Tensor]
Params = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """A registered adaptation method (see the module docstring).

    With ``needs_model``, scoring also runs the frozen model (CoCoOp's per-image prompts go
    through the text tower): ``logits`` is called as ``logits(tensors, params, x, model)``,
    and the adapter must have been fitted or loaded with its model. With ``needs_images``
    the method encodes images itself (TCA condenses the vision tower's tokens): ``logits``
    is called as ``logits(tensors, params, images, embedder)`` with an ``ImageSet`` or a
    pixel batch, and features from the unmodified tower are refused. ``ood(tensors, params,
    x)``, where a method has one, gives named out-of-distribution scores of features
    (higher = in distribution); :func:`clipforge.adapt.harness.evaluate_ood` reports them.
    ``needs_captions``: the shots must carry captions (CapS-Adapter's caption cache).
    """

    summary: str
    fit: Callable[[Shots, Any], tuple[Tensors, Params]]
    logits: Callable[..., torch.Tensor]
    options: type | None = None
    paper: str = ""
    needs_model: bool = False
    needs_images: bool = False
    needs_captions: bool = False
    ood: Callable[[Tensors, Params, torch.Tensor], dict[str, torch.Tensor]] | None = None


METHODS: Registry[Method] = Registry("adaptation method")


def register(name: str, method: Method) -> None:
    METHODS.add(name, method)


# -- few-shot splits ---------------------------------------------------------------------


def draw_shots(
    labels: torch.Tensor, shots: int, seed: int, classnames: Sequence[str]
) -> torch.Tensor:
    """Indices of ``shots`` images of every class, drawn without replacement by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(len(classnames)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots:
            raise ClipforgeError(
                f"class {classnames[c]!r} has {len(idx)} training images; --shots {shots} needs "
                f"{shots}"
            )
        out.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(out)


def carve_validation(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split shot indices into (train, val): a quarter of every class's shots, at least one,
    go to validation when a class has two or more; with one shot there is no validation."""
    g = torch.Generator().manual_seed(seed + 7919)  # not the draw's stream
    tr, va = [], []
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, len(idx) // 4) if len(idx) >= 2 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return int((logits.argmax(dim=1) == y).sum()) / max(len(y), 1)


def select(
    grid: Sequence[Params], score: Callable[[Params], float]
) -> tuple[Params, list[tuple[Params, float]]]:
    """The grid point of best validation ``score``; ties go to the earliest point (grids
    list the simplest or most regularised settings first). Also returns every score."""
    table = [(p, score(p)) for p in grid]
    best = max(range(len(table)), key=lambda i: (table[i][1], -i))
    return dict(table[best][0]), table


def chosen(shots: Shots, values: Params, table: list[tuple[Params, float]] | None) -> Params:
    """The params record of a fit: the values, and how they were chosen."""
    if table is None:
        return {**values, "selection": "defaults (no validation split at 1 shot)"}
    return {
        **values,
        "selection": f"validation ({len(shots.val)} of {len(shots.y)} shots)",
        "val_accuracy": round(max(s for _, s in table), 4),
    }


# -- the fitted adapter ------------------------------------------------------------------


@dataclass
class Adapter:
    """A fitted method: its tensors, chosen hyper-parameters and provenance.

    ``logits(x)`` takes normalised image features ``[N, D]``, an image batch
    ``[N, 3, H, W]`` (encoded by the embedder's model) or an evaluation ``ImageSet``
    (through the embedder and its cache); the latter two need ``embedder``, which
    :func:`clipforge.adapt.fit` sets and :func:`load` sets when given a model.
    """

    method: str
    tensors: Tensors
    params: Params
    info: dict[str, Any]
    embedder: Any = None

    def logits(self, x: Any) -> torch.Tensor:
        spec = METHODS.get(self.method)
        if (spec.needs_model or spec.needs_images) and self.embedder is None:
            raise ClipforgeError(
                f"{self.method} scores with the model's towers: load the adapter with its model"
            )
        if spec.needs_images:
            if isinstance(x, torch.Tensor) and x.dim() == 2:
                raise ClipforgeError(
                    f"{self.method} encodes images itself: pass images, not features"
                )
            return spec.logits(self.tensors, self.params, x, self.embedder)
        feats = self._features(x)
        if spec.needs_model:
            return spec.logits(self.tensors, self.params, feats, self.embedder.model)
        return spec.logits(self.tensors, self.params, feats)

    def ood_scores(self, x: Any) -> dict[str, torch.Tensor]:
        """Named OOD scores of ``x`` (as :meth:`logits` takes it), higher = in
        distribution: the method's own, or else ``msp``, the maximum softmax probability
        of its logits."""
        spec = METHODS.get(self.method)
        if spec.ood is None or spec.needs_images:
            return {"msp": self.logits(x).softmax(dim=1).max(dim=1).values}
        return spec.ood(self.tensors, self.params, self._features(x))

    def _features(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 2:
            return x.float()
        if self.embedder is None:
            raise ClipforgeError(
                "this adapter has no model: pass features, or load it with a model"
            )
        if isinstance(x, torch.Tensor):
            model = self.embedder.model
            with torch.inference_mode():
                return model.encode_image(x, normalize=True).float()
        return self.embedder.images(x)

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``path`` (safetensors: the tensors) and ``path.json`` (method, params,
        info), each atomically. Returns both paths."""
        from safetensors.torch import save

        from clipforge.outputs import atomic_write

        path = Path(path)
        side = sidecar(path)
        meta = {"format": FORMAT, "method": self.method, "params": self.params, "info": self.info}
        blob = save({k: v.contiguous() for k, v in self.tensors.items()}, {"format": FORMAT})
        atomic_write(path, blob)
        atomic_write(side, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path, side


def sidecar(path: str | os.PathLike[str]) -> Path:
    """The JSON file saved beside an adapter's safetensors file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load(path: str | os.PathLike[str], embedder: Any = None) -> Adapter:
    """An adapter saved by :meth:`Adapter.save`; ``embedder`` lets it score images."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path, side = Path(path), sidecar(path)
    for f in (path, side):
        if not f.is_file():
            raise ClipforgeError(f"adapter file not found: {f}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"{side}: not an adapter sidecar ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ClipforgeError(f"{side}: not a clipforge adapter sidecar (format {FORMAT})")
    METHODS.get(meta["method"])  # an unknown method is one line
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ClipforgeError(f"{path}: not a safetensors file ({e})") from None
    if embedder is not None:
        want, got = meta["info"].get("model"), embedder.fingerprint
        if want and want != got:
            raise ClipforgeError(
                f"{path} was fitted on another model (fingerprint {want}, this one {got})"
            )
    return Adapter(meta["method"], tensors, meta["params"], meta["info"], embedder)
