"""What every reader shares: image decoding, caption and meta checks, the form names."""

from __future__ import annotations

import io
import os
from typing import IO, Any

import numpy as np
from PIL import Image

from clipforge.data.sample import SampleError
from clipforge.errors import ClipforgeError

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")

# Column (or JSON field) names that write_manifest uses to carry every caption and the
# structured annotations of a sample; the reader understands them so a written manifest
# reads back to the same Sample.
CAPTIONS_COLUMN = "captions"
META_COLUMN = "meta"

ACCEPTED_FORMS = (
    "a manifest (.csv, .tsv, .jsonl), a tar shard (.tar), a brace pattern such as "
    "'shards/train-{0000..0099}.tar', or a directory holding *.tar shards or one manifest"
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB copy of ``image`` whatever its mode.

    Transparent images are composited on white rather than converted directly, because a
    plain ``convert("RGB")`` keeps whatever colour sits under the alpha channel (often black
    or noise). 16- and 32-bit grayscale are rescaled to 8 bits, because Pillow's own
    conversion clips every value above 255 to white.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        return Image.fromarray(gray, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    # convert() always returns a copy, so the result outlives the file it came from.
    return image.convert("RGB")


def _to_uint8(array: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map a high-bit-depth grayscale array onto 0..255.

    ``I;16`` data has a known range, so a dark 16-bit image stays dark. Modes ``I`` and
    ``F`` carry no range, so it is guessed from the values: 8-bit, 16-bit, [0, 1] floats,
    or else the array's own min..max.
    """
    values = array.astype(np.float64)
    if sixteen_bit:
        scaled = values / 257.0  # 65535 -> 255 exactly
    elif values.size == 0:
        scaled = values
    else:
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0 and array.dtype.kind == "f":
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_image(source: str | os.PathLike[str] | bytes, label: str) -> Image.Image:
    """Open and fully decode an image (a path or encoded bytes) into RGB.

    Raises ``SampleError("missing_image", label)`` when the file does not exist and
    ``SampleError("unreadable_image", label)`` for anything Pillow cannot decode. The
    ``.load()`` call is what makes a truncated file fail here rather than later inside a
    DataLoader worker; it relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` staying False,
    which clipforge never changes.
    """
    fp: str | os.PathLike[str] | IO[bytes]
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise SampleError("missing_image", label) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's decoders raise a zoo of types for damaged data (OSError, SyntaxError,
        # ValueError, struct.error, zlib.error, EOFError, DecompressionBombError, ...);
        # every one of them means this single image is unusable.
        raise SampleError("unreadable_image", f"{label} ({type(exc).__name__}: {exc})") from None


def json_captions(meta: dict[str, Any]) -> list[str] | None:
    """The captions a JSON record carries (``captions`` list or ``caption`` string), if any."""
    captions = meta.get(CAPTIONS_COLUMN)
    if isinstance(captions, list) and all(isinstance(t, str) for t in captions):
        return list(captions)
    caption = meta.get("caption")
    if isinstance(caption, str):
        return [caption]
    return None


def is_weight(value: Any) -> bool:
    """A per-sample loss weight must be a finite number >= 0."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        return False
    return w >= 0.0 and np.isfinite(w)


def check_weight(meta: dict[str, Any], where: str) -> None:
    """Parse a manifest's ``weight`` field in place (CSV cells are text) or fail on its row."""
    if "weight" not in meta:
        return
    value = meta["weight"]
    if isinstance(value, str) and not value.strip():
        del meta["weight"]  # an empty cell means the default weight
        return
    if not is_weight(value):
        raise ClipforgeError(f"{where}: weight must be a number >= 0, found {value!r}")
    meta["weight"] = float(value)


def clean_texts(texts: list[str]) -> list[str]:
    """Drop blank captions; a sample whose captions are all blank has none."""
    return [t for t in texts if t.strip()]
