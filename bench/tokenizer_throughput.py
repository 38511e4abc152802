"""Throughput of clipforge's CLIP tokenizer against OpenCLIP's, on shapes-world captions.

Generates ``--n`` deterministic captions in the style of the shapes world ("two red
circles left of a blue square"), then tokenizes the same list with a fresh
``clipforge.data.tokenizer.Tokenizer`` and with ``open_clip.tokenize`` (whose module-level
tokenizer has not been called before, so both first calls start with empty caches). It
prints captions per second for each, the ratio clipforge / OpenCLIP, and checks that both
produce the same tensor.

Usage::

    python bench/tokenizer_throughput.py --n 100000
    python bench/tokenizer_throughput.py --n 100000 --batch-size 256 --repeat 2
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

import ftfy
import torch

NUMBERS = ["a", "one", "two", "three", "four", "five", "several", "many"]
SIZES = ["", "tiny", "small", "medium", "large", "big", "huge"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta", "gray"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ellipse"]
RELATIONS = ["left of", "right of", "above", "below", "next to", "near", "far from"]
TEMPLATES = [
    "{np1}",
    "{np1} {rel} {np2}",
    "a photo of {np1}",
    "a photo of {np1} {rel} {np2}",
    "there is {np1} {rel} {np2}.",
    "{np1} and {np2}",
    "An image with {np1}, {np2} and {np3}.",
    "{np1} {rel} {np2}, {np3} {rel2} {np4}",
]


def _noun_phrase(rng: random.Random) -> str:
    number = rng.choice(NUMBERS)
    words = [number, rng.choice(SIZES), rng.choice(COLORS)]
    shape = rng.choice(SHAPES)
    words.append(shape if number in ("a", "one") else shape + "s")
    return " ".join(w for w in words if w)


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` shapes-world captions, the same for the same ``seed``."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        template = rng.choice(TEMPLATES)
        captions.append(
            template.format(
                np1=_noun_phrase(rng),
                np2=_noun_phrase(rng),
                np3=_noun_phrase(rng),
                np4=_noun_phrase(rng),
                rel=rng.choice(RELATIONS),
                rel2=rng.choice(RELATIONS),
            )
        )
    return captions


def _time(
    tokenize: Callable[[Sequence[str]], torch.Tensor], captions: list[str], batch_size: int
) -> tuple[float, torch.Tensor]:
    """Seconds to tokenize all ``captions`` (in batches if ``batch_size`` > 0) and the result."""
    start = time.perf_counter()
    if batch_size > 0:
        parts = [
            tokenize(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)
        ]
        out = torch.cat(parts)
    else:
        out = tokenize(captions)
    return time.perf_counter() - start, out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of captions")
    parser.add_argument("--seed", type=int, default=0, help="caption generator seed")
    parser.add_argument("--context-length", type=int, default=77)
    parser.add_argument(
        "--batch-size", type=int, default=0, help="tokenize in batches of this size (0: one call)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="passes over the list; passes after the first are warm",
    )
    args = parser.parse_args(argv)

    captions = make_captions(args.n, args.seed)
    print(
        f"{len(captions)} captions, {len(set(captions))} unique, "
        f"context_length={args.context_length}, batch_size={args.batch_size or len(captions)}"
    )

    start = time.perf_counter()
    import open_clip

    print(f"import open_clip: {time.perf_counter() - start:.2f} s")
    from clipforge.data.tokenizer import Tokenizer

    start = time.perf_counter()
    ours_tok = Tokenizer(context_length=args.context_length)
    print(f"clipforge Tokenizer(): {time.perf_counter() - start:.2f} s")

    def ours(texts: Sequence[str]) -> torch.Tensor:
        return ours_tok(texts)

    def theirs(texts: Sequence[str]) -> torch.Tensor:
        return open_clip.tokenize(list(texts), context_length=args.context_length)

    # Warm up what both share (ftfy builds lookup tables on its first call), but not the
    # tokenizers' own caches: the first pass stays cold for both.
    ftfy.fix_text("warm-up caf\u00c3\u00a9 &amp; text")

    for rep in range(args.repeat):
        label = "cold" if rep == 0 else "warm"
        t_theirs, out_theirs = _time(theirs, captions, args.batch_size)
        t_ours, out_ours = _time(ours, captions, args.batch_size)
        same = torch.equal(out_ours, out_theirs)
        print(
            f"[pass {rep + 1}, {label}] clipforge: {len(captions) / t_ours:,.0f} captions/s "
            f"({t_ours:.2f} s) | OpenCLIP: {len(captions) / t_theirs:,.0f} captions/s "
            f"({t_theirs:.2f} s) | ratio clipforge/OpenCLIP: {t_theirs / t_ours:.2f}x | "
            f"identical output: {same}"
        )
        if not same:
            raise SystemExit("clipforge and OpenCLIP disagree")


if __name__ == "__main__":
    main()
