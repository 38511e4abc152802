"""Caption decoding with a :class:`~clipforge.models.decoder.CaptionDecoder`: greedy and beam.

Both return tokenizer ids without the start and end tokens, one list per image, of at
most ``max_len`` tokens (a caption that has not ended by then is cut). The
decoder is run on the whole prefix at every step (no key/value cache): captions are at
most ``context_length`` tokens, a few dozen, and the image memory, the larger input, is
computed once per image.
"""

from __future__ import annotations

import torch

from clipforge.models.decoder import CaptionDecoder


def _start(decoder: CaptionDecoder, n: int, start: int, device: torch.device) -> torch.Tensor:
    first = decoder.to_decoder_ids(torch.tensor([start], device=device))
    return first.expand(n, 1).clone()


def _steps(decoder: CaptionDecoder, max_len: int) -> int:
    # A caption holds at most max_len tokens and, as in training, context_length - 2
    # (start and end take the other two positions); one not ended by then is cut there.
    return max(1, min(max_len, decoder.cfg.context_length - 2))


def _banned(decoder: CaptionDecoder, logits: torch.Tensor, start_index: int) -> torch.Tensor:
    """Log-probabilities with the unknown and start tokens ruled out: neither is text."""
    logits = logits.clone()
    logits[..., decoder.unknown] = float("-inf")
    logits[..., start_index] = float("-inf")
    return logits.log_softmax(dim=-1)


@torch.no_grad()
def greedy(
    decoder: CaptionDecoder, image_tokens: torch.Tensor, start: int, end: int, max_len: int = 30
) -> list[list[int]]:
    """The most likely next token at every step until ``end`` or ``max_len`` tokens."""
    device = image_tokens.device
    memory = decoder.memory(image_tokens)
    seq = _start(decoder, image_tokens.shape[0], start, device)
    s_idx, e_idx = int(seq[0, 0]), int(decoder.to_decoder_ids(torch.tensor([end]))[0])
    done = torch.zeros(seq.shape[0], dtype=torch.bool, device=device)
    for _ in range(_steps(decoder, max_len)):
        logp = _banned(decoder, decoder(seq, memory=memory)[:, -1], s_idx)
        nxt = logp.argmax(dim=-1)
        nxt = torch.where(done, e_idx, nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        done |= nxt == e_idx
        if bool(done.all()):
            break
    return [_strip(decoder, row, e_idx) for row in seq[:, 1:]]


@torch.no_grad()
def beam(
    decoder: CaptionDecoder,
    image_tokens: torch.Tensor,
    start: int,
    end: int,
    beams: int = 3,
    max_len: int = 30,
) -> list[list[int]]:
    """Beam search on the summed log-probability (no length penalty), per image.

    Each step ranks every extension of the open hypotheses; an ``end`` among the top
    ``beams`` finishes its hypothesis, which keeps its score, and the best ``beams``
    other extensions stay open. The search for an image stops when its best finished
    hypothesis beats every open one (scores only fall as tokens are added) or after
    ``max_len`` tokens. With ``beams=1`` it makes the same choices as :func:`greedy`.
    """
    out: list[list[int]] = []
    for i in range(image_tokens.shape[0]):
        out.append(_beam_one(decoder, image_tokens[i : i + 1], start, end, beams, max_len))
    return out


def _beam_one(
    decoder: CaptionDecoder,
    image_tokens: torch.Tensor,
    start: int,
    end: int,
    beams: int,
    max_len: int,
) -> list[int]:
    device = image_tokens.device
    memory = decoder.memory(image_tokens)
    seq = _start(decoder, 1, start, device)
    s_idx, e_idx = int(seq[0, 0]), int(decoder.to_decoder_ids(torch.tensor([end]))[0])
    scores = torch.zeros(1, device=device)
    finished: list[tuple[float, torch.Tensor]] = []
    for _ in range(_steps(decoder, max_len)):
        logp = _banned(decoder, decoder(seq, memory=memory.expand(seq.shape[0], -1, -1))[:, -1],
                       s_idx)  # fmt: skip
        total = (scores[:, None] + logp).flatten()
        vocab = logp.shape[1]
        top = total.topk(min(2 * beams, total.numel()))
        keep_rows, keep_tok, keep_scores = [], [], []
        ranked = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        for rank, (score, flat) in enumerate(ranked):
            row, tok = divmod(flat, vocab)
            if tok == e_idx:
                if rank < beams:  # an end further down would not have been a beam
                    finished.append((score, seq[row, 1:]))
            else:
                keep_rows.append(row)
                keep_tok.append(tok)
                keep_scores.append(score)
            if len(keep_rows) == beams:
                break
        best_done = max((s for s, _ in finished), default=float("-inf"))
        if not keep_rows or best_done >= keep_scores[0]:
            break
        rows = torch.tensor(keep_rows, device=device)
        seq = torch.cat([seq[rows], torch.tensor(keep_tok, device=device)[:, None]], dim=1)
        scores = torch.tensor(keep_scores, device=device)
    else:
        # Out of room: the open hypotheses compete as they are.
        finished += [(float(s), row[1:]) for s, row in zip(scores, seq, strict=True)]
    if not finished:
        finished = [(float(s), row[1:]) for s, row in zip(scores, seq, strict=True)]
    _, best = max(finished, key=lambda t: t[0])
    return _strip(decoder, best, e_idx)


def _strip(decoder: CaptionDecoder, row: torch.Tensor, e_idx: int) -> list[int]:
    """Tokenizer ids of a decoded row, up to (without) the first end token."""
    ids: list[int] = []
    for index in row.tolist():
        if index == e_idx:
            break
        ids.append(int(decoder.to_tokenizer_ids(torch.tensor(index))))
    return ids


__all__ = ["beam", "greedy"]
