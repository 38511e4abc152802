"""Tests of clipforge's CLIP BPE tokenizer: hand cases and id-for-id parity with OpenCLIP."""

from __future__ import annotations

import gzip
import html
import pickle
import random

import ftfy
import pytest
import torch

from clipforge.data.tokenizer import Tokenizer, _clean, _needs_fixing, get_tokenizer
from clipforge.errors import ClipforgeError

SOT, EOT = 49406, 49407
A, PHOTO, OF, CAT = 320, 1125, 539, 2368  # "a</w>", "photo</w>", "of</w>", "cat</w>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


# ---------------------------------------------------------------- hand cases


def test_vocab_and_special_ids(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49408
    assert tok.sot_token_id == SOT
    assert tok.eot_token_id == EOT
    assert tok.context_length == 77


def test_short_text_row_layout() -> None:
    out = Tokenizer(8)("a photo")
    assert out.dtype == torch.long
    assert out.tolist() == [[SOT, A, PHOTO, EOT, 0, 0, 0, 0]]


def test_batch_and_context_override(tok: Tokenizer) -> None:
    out = tok(["a photo of a cat", "", "a"], context_length=6)
    assert out.shape == (3, 6)
    assert out.tolist() == [
        [SOT, A, PHOTO, OF, A, EOT],
        [SOT, EOT, 0, 0, 0, 0],
        [SOT, A, EOT, 0, 0, 0],
    ]
    assert tok([]).shape == (0, 77)


def test_truncation_keeps_eot_last() -> None:
    out = Tokenizer(5)("a photo of a cat")  # 5 text tokens, room for 3
    assert out.tolist() == [[SOT, A, PHOTO, OF, EOT]]
    # The smallest legal context holds only the two special tokens.
    assert Tokenizer(2)("a photo").tolist() == [[SOT, EOT]]
    # Exactly fitting: no truncation, no padding.
    assert Tokenizer(7)("a photo of a cat").tolist() == [[SOT, A, PHOTO, OF, A, CAT, EOT]]


def test_encode_has_no_special_tokens(tok: Tokenizer) -> None:
    assert tok.encode("a photo of a cat") == [A, PHOTO, OF, A, CAT]
    assert tok.encode("") == []
    assert tok.encode("   \t\n ") == []


@pytest.mark.parametrize(
    "text",
    ["a photo of a cat", "two red circles left of a blue square", "zebra", "hello world"],
)
def test_decode_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text
    row = tok(text)[0]  # a padded LongTensor row
    assert tok.decode(row) == text


def test_decode_drops_specials_and_padding_but_keeps_bang(tok: Tokenizer) -> None:
    ids = tok.encode("!$")
    assert ids == [0, 259]  # "!" (inside a word) has id 0, the same value as padding
    assert tok.decode(ids) == "!$"
    assert tok.decode([SOT, *ids, EOT, 0, 0, 0]) == "!$"
    assert tok.decode(torch.tensor([SOT, A, PHOTO, EOT, 0, 0])) == "a photo"
    with pytest.raises(ClipforgeError, match="outside the vocabulary"):
        tok.decode([49408])


def test_cleaning_html_whitespace_and_case(tok: Tokenizer) -> None:
    assert tok.encode("cats &amp; dogs") == tok.encode("cats & dogs")
    assert tok.encode("cats &amp;amp; dogs") == tok.encode("cats & dogs")  # unescaped twice
    assert tok.encode("  A\tPHOTO \n\n  of   a\u3000Cat  ") == [A, PHOTO, OF, A, CAT]


def test_ascii_fast_path_matches_full_clean_up() -> None:
    # Plain ASCII skips ftfy and html.unescape; that must never change the result.
    rng = random.Random(1)
    alphabet = [chr(i) for i in range(128)] + list("abc XYZ<>;#\t\n\r.'\"")
    skipped = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        full = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        assert _clean(text) == " ".join(full.split()).lower(), repr(text)
        skipped += not _needs_fixing(text)
    assert skipped > 300


def test_contractions_split(tok: Tokenizer) -> None:
    # "'s" is its own word, so "cat's" is "cat" + "'s".
    assert tok.encode("cat's") == [tok.encode("cat")[0], tok.encode("'s")[0]]
    assert len(tok.encode("'s")) == 1


@pytest.mark.parametrize("bad", [0, 1, -3, 2.5, "77", True])
def test_bad_context_length(bad: object) -> None:
    with pytest.raises(ClipforgeError, match="context_length must be an integer >= 2"):
        Tokenizer(bad)  # type: ignore[arg-type]
    with pytest.raises(ClipforgeError, match="context_length"):
        get_tokenizer(8)("a", context_length=bad)  # type: ignore[arg-type]


def test_missing_or_bad_bpe_file(tmp_path) -> None:
    with pytest.raises(ClipforgeError, match="not found"):
        Tokenizer(bpe_path=tmp_path / "nope.txt.gz")
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ClipforgeError, match="expected 48894"):
        Tokenizer(bpe_path=short)


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer(16) is get_tokenizer(16)
    assert get_tokenizer(16) is not get_tokenizer(77)
    assert get_tokenizer(16).context_length == 16
    assert get_tokenizer(16)("a photo").shape == (1, 16)
    # Tokenizers of the same merges file share one text cache.
    get_tokenizer(16)("a never seen before caption")
    before = get_tokenizer(77).cache_info()["text"].hits
    get_tokenizer(77)("a never seen before caption")
    assert get_tokenizer(77).cache_info()["text"].hits == before + 1


def test_long_texts_bypass_text_cache(tok: Tokenizer) -> None:
    long_text = "a photo of a cat " * 100  # 1700 characters, 500 tokens
    before = tok.cache_info()["text"].currsize
    assert tok.encode(long_text) == [A, PHOTO, OF, A, CAT] * 100
    row = tok(long_text)[0].tolist()
    assert row[:6] == [SOT, A, PHOTO, OF, A, CAT] and row[-1] == EOT and len(row) == 77
    assert tok.cache_info()["text"].currsize == before


def test_non_string_text_is_rejected(tok: Tokenizer) -> None:
    with pytest.raises(TypeError, match="texts must be str, got NoneType"):
        tok(["a photo", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="texts must be str, got int"):
        tok.encode(3)  # type: ignore[arg-type]


def test_pickle_round_trip(tok: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone(["a photo of a cat"]), tok(["a photo of a cat"]))


def test_text_cache_returns_fresh_lists(tok: Tokenizer) -> None:
    first = tok.encode("a photo")
    first.append(999)
    assert tok.encode("a photo") == [A, PHOTO]


# ---------------------------------------------------------------- OpenCLIP parity

_WORDS = [
    "a", "photo", "of", "the", "cat", "Dog", "RED", "blue", "Circle", "squares", "left",
    "right", "above", "below", "tiny", "HUGE", "zebra", "quickly", "jumped", "over",
    "lazy", "fox", "mcdonald", "xylophone", "antidisestablishmentarianism", "iPhone",
    "OpenAI", "COVID-19", "e-mail", "rock'n'roll", "U.S.A.", "naïve", "café", "Straße",
    "ß", "Æsir", "Øre", "Ünïcödé", "中文", "日本語のテキスト", "한국어", "Ελληνικά",
    "ΣΊΣΥΦΟΣ", "русский", "ТЕКСТ", "עברית", "العربية", "हिन्दी", "ไทย", "İstanbul",
    "ǅemal", "ﬁne", "Ⅻ", "K", "ſ", "x²", "٣", "½", "e\u0301", "🙂", "👍🏽", "👨‍👩‍👧",
    "🐱🐶", "❤️", "©", "™", "°C", "€100", "$5.99", "#hashtag", "@user", "http://x.io/a?b=c",
    "<start_of_text>", "<END_OF_TEXT>", "</w>", "cafÃ©", "â€œquotedâ€\x9d",
]  # fmt: skip
_PUNCT = [".", ",", "!", "?", "...", "--", "—", "(", ")", "[x]", '"', "'", ";", ":", "/", "&"]
_ENTITIES = [
    "&amp;",
    "&lt;",
    "&gt;",
    "&quot;",
    "&#39;",
    "&nbsp;",
    "&amp;amp;",
    "&eacute;",
    "&#x4e2d;",
]
_APOSTROPHES = ["it's", "don't", "we're", "I've", "I'm", "you'll", "he'd", "IT'S", "cat'S", "'ſ"]
_SPACES = [" ", "  ", "\t", "\n", " \n\t ", "\u3000", "\xa0", "\u2003", "\r\n"]


def _random_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.03:
        return rng.choice(["", " ", "\t\n", "&amp;", "!!!", "0", "<start_of_text>"])
    n = rng.randint(50, 110) if kind < 0.10 else rng.randint(1, 14)
    parts: list[str] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            w = rng.choice(_WORDS)
            w = rng.choice([w, w.lower(), w.upper(), w.title()])
        elif r < 0.65:
            w = str(rng.randint(0, 10 ** rng.randint(1, 7)))
        elif r < 0.75:
            w = rng.choice(_PUNCT)
        elif r < 0.83:
            w = rng.choice(_ENTITIES)
        elif r < 0.91:
            w = rng.choice(_APOSTROPHES)
        else:
            w = "".join(chr(rng.randint(0x21, 0x2FFF)) for _ in range(rng.randint(1, 4)))
        parts.append(w)
        parts.append(rng.choice(_SPACES) if rng.random() < 0.2 else rng.choice([" ", "", " "]))
    text = "".join(parts)
    return rng.choice(["", " ", "  \t"]) + text + rng.choice(["", " ", "\n"])


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(0)
    texts = [_random_text(rng) for _ in range(2200)]
    texts += ["two red circles left of a blue square", "a photo of a cat"] * 10  # repeats
    return texts


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")  # imported once; the import takes seconds
    return open_clip


def test_corpus_covers_edge_cases(tok: Tokenizer, corpus: list[str]) -> None:
    lengths = [len(tok.encode(t)) for t in corpus]
    assert len(corpus) >= 2000
    assert sum(n > 75 for n in lengths) >= 100  # truncated at context 77
    assert sum(n == 0 for n in lengths) >= 10  # empty after cleaning
    assert sum("&amp;" in t for t in corpus) >= 100
    assert sum(any(ord(c) > 0xFFFF for c in t) for t in corpus) >= 100  # emoji


@pytest.mark.parametrize("context_length", [77, 16])
def test_parity_with_open_clip(open_clip_tokenizer, corpus: list[str], context_length: int) -> None:
    ours = Tokenizer(context_length)(corpus)
    theirs = open_clip_tokenizer.tokenize(corpus, context_length=context_length)
    assert ours.dtype == theirs.dtype == torch.long
    assert ours.shape == (len(corpus), context_length)
    mismatches = [i for i in range(len(corpus)) if not torch.equal(ours[i], theirs[i])]
    assert not mismatches, f"{len(mismatches)} rows differ, first: {corpus[mismatches[0]]!r}"
    assert torch.equal(ours, theirs)


def test_encode_and_decode_parity_with_open_clip(
    open_clip_tokenizer, tok: Tokenizer, corpus: list[str]
) -> None:
    # Rows above only show the first 75 ids; compare the full encoding of long texts.
    ref = open_clip_tokenizer.tokenizer._tokenizer
    long_texts = [t for t in corpus if len(tok.encode(t)) > 75]
    assert len(long_texts) >= 100
    for text in long_texts:
        assert tok.encode(text) == ref.encode(text), text
    # OpenCLIP's decode leaves a trailing space; ours strips it.
    checked = 0
    for text in corpus[:400]:
        ids = tok.encode(text)
        if SOT not in ids and EOT not in ids:
            assert tok.decode(ids) == ref.decode(ids).strip(), text
            checked += 1
    assert checked >= 300
