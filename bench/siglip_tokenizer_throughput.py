"""Throughput of clipforge's SigLIP (SentencePiece) tokenizer against transformers'.

Trains a small SentencePiece model on ``--n`` shapes-world captions (offline, in this
process; SigLIP's special-token layout), then tokenizes the same captions with
``clipforge.data.hf_tokenizers.SentencePieceTokenizer`` and with
``transformers.SiglipTokenizer`` (``padding="max_length", truncation=True``), alternating
the two ``--repeat`` times. Prints captions per second for each, the ratio clipforge /
transformers, and checks that both give the same ids.

Usage::

    python bench/siglip_tokenizer_throughput.py --n 20000
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizer_throughput import make_captions  # bench/ is on the path when run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="number of captions")
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="alternating timed passes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import sentencepiece as spm
    import transformers

    from clipforge.data.hf_tokenizers import find_tokenizer

    captions = make_captions(args.n)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=buf, vocab_size=200,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, num_threads=1, minloglevel=2,
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    (folder / "spiece.model").write_bytes(buf.getvalue())
    ours = find_tokenizer(folder).build(args.context_length)
    theirs = transformers.SiglipTokenizer(str(folder / "spiece.model"))
    warnings.simplefilter("ignore")
    length, bs = args.context_length, args.batch_size
    batches = [captions[i : i + bs] for i in range(0, len(captions), bs)]

    def run_ours() -> torch.Tensor:
        return torch.cat([ours(b) for b in batches])

    def run_theirs() -> torch.Tensor:
        return torch.cat([
            theirs(b, padding="max_length", truncation=True, max_length=length,
                   return_tensors="pt").input_ids
            for b in batches
        ])  # fmt: skip

    times: dict[str, list[float]] = {"clipforge": [], "transformers": []}
    for _ in range(args.repeat):
        for name, fn in (("clipforge", run_ours), ("transformers", run_theirs)):
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if name == "clipforge":
                a = out
            else:
                assert torch.equal(a, out), "the tokenizers disagree"
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:>12}: {len(captions) / v:10.0f} captions/s (best of {args.repeat})")
    print(f"clipforge / transformers: {best['transformers'] / best['clipforge']:.2f}x; same ids")


if __name__ == "__main__":
    main()
