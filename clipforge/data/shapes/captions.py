"""Captions of shapes-world scenes: the templates, count and long multi-sentence captions."""

from __future__ import annotations

from clipforge.data.shapes.scenes import (
    COLOURS,
    INVERSE,
    NUMBER_WORDS,
    OOD_COLOURS,
    OOD_SHAPES,
    PLACES,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    article,
    place_of,
    plural,
    relation_of,
)


def captions_for(scene: Scene, positions: bool = False) -> list[str]:
    """All captions of a scene. The first is the canonical, most detailed one.

    With ``positions``, single-object and two-object scenes get extra captions that say
    where the objects are in the image ("a red circle on the left and a blue square on
    the right"); they come after the usual ones, so template numbers stay the same.
    """
    caps = _captions(scene)
    if not positions:
        return caps
    objs = scene.objects
    if scene.kind == "single" and scene.image_size:
        o = objs[0]
        caps.append(f"{o.phrase(False)} {place_of(o, scene.image_size)}")
    elif scene.kind == "pair":
        a, b = objs
        pa, pb = PLACES[scene.relation or relation_of(a, b)]
        caps.append(f"{a.phrase(True)} {pa} and {b.phrase(True)} {pb}")
        caps.append(f"{a.phrase(False)} {pa} and {b.phrase(False)} {pb}")
    return caps


def _captions(scene: Scene) -> list[str]:
    objs = scene.objects
    if scene.kind == "single":
        o = objs[0]
        return [
            o.phrase(True),
            o.phrase(False),
            f"a photo of {o.phrase(False)}",
            f"one {o.colour} {o.shape}",
            f"a picture of {o.phrase(True)}",
            f"there is {o.phrase(False)}",
        ]
    if scene.kind == "group":
        o, n = objs[0], len(objs)
        word = NUMBER_WORDS[n]
        return [
            f"{word} {o.size} {o.colour} {plural(o.shape)}",
            f"{word} {o.colour} {plural(o.shape)}",
            f"{n} {o.colour} {plural(o.shape)}",
            f"a photo of {word} {o.colour} {plural(o.shape)}",
            f"a group of {word} {o.colour} {plural(o.shape)}",
        ]
    if scene.kind == "pair":
        a, b = objs
        rel = scene.relation or relation_of(a, b)
        inv = INVERSE[rel]
        return [
            f"{a.phrase(True)} {rel} {b.phrase(True)}",
            f"{a.phrase(False)} {rel} {b.phrase(False)}",
            f"{b.phrase(False)} {inv} {a.phrase(False)}",
            f"{a.phrase(False)} and {b.phrase(False)}",
            f"{b.phrase(False)} and {a.phrase(False)}",
        ]
    # "many": objects listed from left to right in the canonical caption.
    ordered = sorted(objs, key=lambda o: o.center[0])
    full = [o.phrase(True) for o in ordered]
    short = [o.phrase(False) for o in ordered]
    n = len(objs)
    return [
        ", ".join(full[:-1]) + " and " + full[-1],
        ", ".join(short[:-1]) + " and " + short[-1],
        f"{NUMBER_WORDS[n]} shapes: " + ", ".join(short[:-1]) + " and " + short[-1],
        f"{NUMBER_WORDS[n]} objects",
    ]


def without_colour(caption: str, colour: str) -> str:
    """``caption`` with the word ``colour`` left out ("an orange circle" -> "a circle")."""
    words = caption.split(" ")
    if colour not in words:
        raise ValueError(f"caption {caption!r} does not name the colour {colour!r}")
    i = words.index(colour)
    rest = words[:i] + words[i + 1 :]
    if 0 < i < len(rest) and rest[i - 1] in ("a", "an"):
        rest[i - 1] = article(rest[i])  # the article now stands before the next word
    return " ".join(rest)


def count_caption(n: int, shape: str, colour: str) -> str:
    """``"seven red circles"``: the caption of a counting scene."""
    return f"{NUMBER_WORDS[n]} {colour} {shape if n == 1 else plural(shape)}"


def _where(o: ShapeObject, image_size: int) -> str:
    x, y = (v / image_size for v in o.center)
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    return "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"


def long_caption(scene: Scene, image_size: int) -> str:
    """A multi-sentence description: object count, each object and where it is, relations.

    Longer than a short text encoder's context on purpose: long-caption retrieval measures
    what a model keeps of text beyond its first few words.
    """
    objs = sorted(scene.objects, key=lambda o: o.center[0])
    n = len(objs)
    noun = "object" if n == 1 else "objects"
    sentences = [f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun} in the picture."]
    for o in objs:
        phrase = o.phrase(True)
        sentences.append(f"{phrase[0].upper()}{phrase[1:]} is in the {_where(o, image_size)}.")
    for a, b in zip(objs, objs[1:], strict=False):
        sentences.append(
            f"The {a.colour} {a.shape} is {relation_of(a, b)} the {b.colour} {b.shape}."
        )
    return " ".join(sentences)


def class_names() -> list[str]:
    """The colour x shape classes of the zero-shot benchmark, e.g. ``"red circle"``."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


# The words of the caption templates above, besides the scene vocabulary.
_TEMPLATE_WORDS = (
    "a an the one of and is are there photo picture group shapes objects object in "
    "on at left right top bottom middle centre above below , : ."
)


def caption_words() -> list[str]:
    """Every word a shapes-world caption can use (out-of-distribution names included),
    lower-case, sorted: a closed vocabulary, e.g. for a caption decoder's output."""
    shapes = (*SHAPES, *OOD_SHAPES)
    words = {*_TEMPLATE_WORDS.split(), *COLOURS, *OOD_COLOURS, *SIZES, *NUMBER_WORDS}
    words |= {*shapes, *map(plural, shapes)} | {str(d) for d in range(10)}
    return sorted(words)
