"""Reading and writing checkpoint files without running code from them.

* Pickled state dicts (``.pt``, ``.bin``, ``.pth``) go through ``torch.load(...,
  weights_only=True)``, whose unpickler only builds tensors, containers and plain values.
* ``.safetensors`` files hold no code at all.
* An OpenAI TorchScript archive is a zip with a pickled module tree (``data.pkl``), the
  module's TorchScript source (``code/``) and tensor records (``data/``). It is read with
  :class:`_TensorOnlyUnpickler`, which knows the handful of callables such a pickle names
  (tensor rebuilding, storage types, ``__torch__`` module classes, which become inert
  records) and refuses any other: the TorchScript code is never compiled or run.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoint import atomic_save, torch_load
from clipforge.data.hf_tokenizers import TokenizerSpec, find_tokenizer
from clipforge.data.tokenizer import is_clip_bpe
from clipforge.errors import ClipforgeError
from clipforge.outputs import atomic_file, atomic_write

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
OPENCLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass
class RawCheckpoint:
    """Tensors read from a checkpoint plus whatever configuration came with them."""

    path: Path
    container: str  # "torchscript", "pickle", "safetensors", "hf folder", "openclip folder"
    tensors: dict[str, torch.Tensor]
    clipforge_config: dict[str, Any] | None = None  # a clipforge checkpoint's model_config
    hf_config: dict[str, Any] | None = None  # config.json
    hf_preprocessor: dict[str, Any] | None = None  # preprocessor_config.json
    openclip_config: dict[str, Any] | None = None  # open_clip_config.json
    openclip_model: str | None = None  # the run's `model: NAME` (open_clip_train params.txt)
    heads: dict[str, Any] | None = None  # a clipforge checkpoint's trained heads (a decoder)
    # The text tokenizer the checkpoint ships when it is not CLIP's BPE (a SigLIP folder's
    # spiece.model, a clipforge checkpoint's stored copy); see tokenizer_files.
    tokenizer: TokenizerSpec | None = None
    # The tokenizer files found: a folder's names (CLIP's vocab.json + merges.txt, checked
    # to be CLIP's BPE, count too), or ["checkpoint"] for a clipforge checkpoint's entry.
    tokenizer_files: tuple[str, ...] = ()


def read_raw(path: str | Path) -> RawCheckpoint:
    """Read a checkpoint file or folder into tensors (see the module docstring for safety)."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise ClipforgeError(f"checkpoint not found: {path}")
    tensors, container, clipforge_config, heads, tok = _read_file(path)
    raw = RawCheckpoint(path, container, tensors, clipforge_config=clipforge_config, heads=heads)
    if tok is not None:
        raw.tokenizer = TokenizerSpec.from_payload(tok, str(path))
        raw.tokenizer_files = ("checkpoint",)
    # OpenCLIP hub folders keep the model config next to the weights.
    sidecar = path.with_name("open_clip_config.json")
    if clipforge_config is None and sidecar.is_file():
        raw.openclip_config = _read_json(sidecar)
    if clipforge_config is None:
        raw.openclip_model = _params_model(path)
    return raw


def _params_model(path: Path) -> str | None:
    """The ``model: NAME`` line of the open_clip_train run a checkpoint belongs to
    (``RUN/params.txt`` beside ``RUN/checkpoints/epoch_N.pt``), if there is one."""
    for params in (path.with_name("params.txt"), path.parent.parent / "params.txt"):
        if params.is_file():
            for line in params.read_text(errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model" and value.strip():
                    return value.strip()
    return None


def _read_folder(path: Path) -> RawCheckpoint:
    if (path / "config.json").is_file():
        raw = RawCheckpoint(path, "hf folder", _read_weights_in(path, HF_WEIGHT_FILES))
        raw.hf_config = _read_json(path / "config.json")
        if (path / "preprocessor_config.json").is_file():
            raw.hf_preprocessor = _read_json(path / "preprocessor_config.json")
        # A CLIP folder's tokenizer is CLIP's BPE by definition, as clipforge has always
        # read it (hub folders also ship a tokenizer.json of that BPE, without ftfy's
        # clean-up and padded with the end token: not used). Any other folder's is read.
        if raw.hf_config.get("model_type") != "clip":
            raw.tokenizer = find_tokenizer(path, raw.hf_config.get("model_type"))
            raw.tokenizer_files = _tokenizer_files(path, raw.tokenizer)
        return raw
    if (path / "open_clip_config.json").is_file():
        raw = RawCheckpoint(path, "openclip folder", _read_weights_in(path, OPENCLIP_WEIGHT_FILES))
        raw.openclip_config = _read_json(path / "open_clip_config.json")
        return raw
    raise ClipforgeError(
        f"{path} is a folder without config.json (Hugging Face) or open_clip_config.json (OpenCLIP)"
    )


def _tokenizer_files(folder: Path, spec: TokenizerSpec | None) -> tuple[str, ...]:
    """The tokenizer files of a Hugging Face folder: ``spec``'s file, else CLIP's BPE
    (``vocab.json`` + ``merges.txt``, refused when they are another BPE vocabulary)."""
    if spec is not None:
        return (spec.file_name,)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return ()
    try:
        same = is_clip_bpe(_read_json(vocab), merges.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ClipforgeError(f"cannot read {merges}: {e}") from None
    if not same:
        raise ClipforgeError(
            f"{folder}: its vocab.json and merges.txt are not CLIP's BPE vocabulary, the one "
            "BPE clipforge tokenizes with"
        )
    return ("vocab.json", "merges.txt")


def _read_weights_in(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for name in names:
        index = folder / f"{name}.index.json"  # sharded weights
        if index.is_file():
            weight_map = _read_json(index).get("weight_map", {})
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(_read_file(folder / shard)[0])
            return tensors
        if (folder / name).is_file():
            return _read_file(folder / name)[0]
    raise ClipforgeError(f"no weights in {folder} (looked for {', '.join(names)})")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClipforgeError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClipforgeError(f"{path} does not hold a JSON object")
    return data


_Read = tuple[dict[str, torch.Tensor], str, dict[str, Any] | None, dict[str, Any] | None, Any]


def _read_file(path: Path) -> _Read:
    """(tensors, container kind, and if it is a clipforge checkpoint its model_config,
    heads and tokenizer entry)."""
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu"), "safetensors", None, None, None
        except (SafetensorError, OSError, ValueError) as e:
            raise ClipforgeError(f"cannot read {path}: {_first_line(e)}") from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            prefix = _torchscript_prefix(z)
            if prefix is not None:
                return read_torchscript_tensors(path, z, prefix), "torchscript", None, None, None
    obj = torch_load(path)
    return _unwrap(path, obj)


def _unwrap(path: Path, obj: Any) -> _Read:
    cfg = heads = tokenizer = None
    if isinstance(obj, dict) and "model" in obj and "model_config" in obj:
        heads, tokenizer = obj.get("heads"), obj.get("tokenizer")
        obj, cfg = obj["model"], obj["model_config"]  # a clipforge checkpoint
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # an OpenCLIP training checkpoint
    if not isinstance(obj, dict) or not obj:
        raise ClipforgeError(
            f"{path} is not a checkpoint clipforge reads: it holds a {type(obj).__name__}, "
            "not a state dict"
        )
    odd = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise ClipforgeError(
            f"{path} is not a state dict: entries that are not tensors: {_names(map(str, odd))}"
        )
    # Checkpoints saved from DistributedDataParallel prefix every name with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj), "pickle", cfg, heads, tokenizer


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _names(names: Any, limit: int = 8) -> str:
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _is_safetensors(path: Path) -> bool:
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and n < os.path.getsize(path)


# --- TorchScript archives ----------------------------------------------------------------


def _torchscript_prefix(z: zipfile.ZipFile) -> str | None:
    """The archive's top folder if it is a TorchScript archive (it has code/ or constants)."""
    names = z.namelist()
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if not pkls:
        return None
    prefix = pkls[0][: -len("data.pkl")]
    if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
        return prefix
    return None


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: only its dtype is needed."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ScriptObject:
    """An inert record of a pickled TorchScript module: its attributes, no behaviour."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(
    storage: torch.Tensor,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor record without storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool = False, hooks: Any = None):
    return data


def _restore_type_tag(value: Any, type_str: str) -> Any:
    return value


# The only callables a TorchScript module pickle needs; anything else is refused.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "device"): str,  # a device attribute: its name is enough, nothing to run
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, z: zipfile.ZipFile, prefix: str, path: Path) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.z, self.prefix, self.path = z, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module.startswith("__torch__."):
            return _ScriptObject
        raise ClipforgeError(
            f"refusing to load {self.path}: its pickle imports {module}.{name}, which a "
            "TorchScript weight archive does not need (loading it normally could run code)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent record {pid!r:.60}")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError("storage record without a storage type")
        key = str(key)
        if key not in self.storages:
            try:
                data = self.z.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"missing tensor record data/{key}") from None
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if len(data) != int(numel) * itemsize:
                raise pickle.UnpicklingError(f"tensor record data/{key} has the wrong size")
            self.storages[key] = (
                torch.frombuffer(bytearray(data), dtype=kind.dtype)
                if data
                else torch.empty(0, dtype=kind.dtype)
            )
        return self.storages[key]


def read_torchscript_tensors(
    path: Path, z: zipfile.ZipFile | None = None, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive, named by module path (as ``state_dict()``).

    Only ``data.pkl`` is read, with an unpickler that accepts tensor records and module
    records and nothing else; the archive's code is never compiled or executed.
    """
    if z is None:
        with zipfile.ZipFile(path) as zz:
            pre = _torchscript_prefix(zz)
            if pre is None:
                raise ClipforgeError(f"{path} is not a TorchScript archive")
            return read_torchscript_tensors(path, zz, pre)
    assert prefix is not None
    try:
        root = _TensorOnlyUnpickler(z.read(f"{prefix}data.pkl"), z, prefix, path).load()
    except ClipforgeError:
        raise
    except Exception as e:
        raise ClipforgeError(f"cannot read TorchScript archive {path}: {_first_line(e)}") from None
    out: dict[str, torch.Tensor] = {}
    _flatten(root, "", out)
    if not out:
        raise ClipforgeError(f"TorchScript archive {path} holds no tensors")
    return {k: v.clone() for k, v in out.items()}  # own memory, not views of the records


def _flatten(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[prefix + str(k)] = v
        elif isinstance(v, _ScriptObject):
            _flatten(v, f"{prefix}{k}.", out)


# --- writing -------------------------------------------------------------------------


def write_state_dict(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None):
    """Write ``tensors`` as safetensors (by suffix) or a pickled state dict, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fresh contiguous copies: safetensors refuses shared or strided storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        # safetensors writes by file name, so only the temporary name comes from atomic_file.
        with atomic_file(path) as f:
            save_file(tensors, f.name, metadata={"format": "pt", **(metadata or {})})
    else:
        atomic_save(tensors, path)


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=2) + "\n")
