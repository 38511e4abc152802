"""The shapes-world additions for evaluation leave every existing sample unchanged."""

import hashlib

from clipforge.data.shapes import ShapesWorld, count_caption, long_caption


def test_existing_samples_bit_identical():
    # Digest of images, captions and scene metadata as written before the OOD shapes and
    # colours, counting scenes and long captions were added (Pillow renders
    # deterministically for a fixed version).
    h = hashlib.sha1()
    for split in ("train", "test"):
        w = ShapesWorld(32, split)
        for i in range(50):
            s = w.sample(i)
            h.update(s.image.tobytes())
            h.update(repr(s.texts).encode())
            h.update(repr([s.meta[k] for k in ("kind", "count", "relation", "objects")]).encode())
        for i in range(10):
            h.update(w.object_sample(i, "star", "cyan").image.tobytes())
    assert h.hexdigest() == "5e380090c89cc175f093ecd1090d7731ee2a4b6b"


def test_ood_objects_render_in_their_colour():
    w = ShapesWorld(32, "test")
    img = w.object_sample(0, "hexagon", "pink", "large").image
    sc = w.object_scene(0, "hexagon", "pink", "large")
    cx, cy = (round(v) for v in sc.objects[0].center)
    r, g, b = img.getpixel((cx, cy))
    assert abs(r - 250) < 30 and abs(g - 150) < 30 and abs(b - 200) < 30
    assert w.object_sample(0, "diamond", "grey").image.size == (32, 32)


def test_long_caption_and_count_caption():
    w = ShapesWorld(64, "test")
    sc = next(w.scene(i) for i in range(100) if w.scene(i).kind == "pair")
    text = long_caption(sc, 64)
    a, b = sorted(sc.objects, key=lambda o: o.center[0])
    assert text.startswith("There are two objects in the picture. ")
    assert f"The {a.colour} {a.shape} is " in text and text.count(".") == 4
    assert count_caption(7, "cross", "red") == "seven red crosses"
    assert count_caption(1, "cross", "red") == "one red cross"
