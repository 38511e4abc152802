"""Image folders, packing data into shards, odd image modes, weights and captions in shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.cli.main import main
from clipforge.data.batches import SampleProcessor
from clipforge.data.readers import FolderDataset, ShardDataset, open_dataset
from clipforge.data.sample import Sample, SampleError
from clipforge.data.transforms import SeededCrop
from clipforge.data.writers import shard_dataset


def _image(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode)


def _folder(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    _image(0).save(root / "a" / "x.png")
    (root / "a" / "x.txt").write_text("first caption\n\nsecond caption\n")
    _image(1).save(root / "y.jpg", quality=90)
    (root / "y.json").write_text(json.dumps({"captions": ["why"], "weight": 0.5, "src": "web"}))
    _image(2).save(root / "z.png")  # no sidecar
    _image(3).save(root / "w.bmp")
    (root / "w.txt").write_text("a bitmap")
    _image(4).save(root / "v.png")
    (root / "v.json").write_text(json.dumps({"caption": "vee", "weight": "heavy"}))
    return root


def test_image_folder_with_sidecar_captions(tmp_path: Path) -> None:
    ds = open_dataset(_folder(tmp_path / "f"))
    assert isinstance(ds, FolderDataset) and len(ds) == 5
    by_key = {}
    for i in range(len(ds)):
        try:
            by_key[ds.load(i).key] = ds.load(i)
        except SampleError as e:
            by_key[str(ds.image_path(i).name)] = e.reason
    assert by_key["a/x.png"].texts == ["first caption", "second caption"]
    assert by_key["y.jpg"].texts == ["why"] and by_key["y.jpg"].meta == {
        "weight": 0.5,
        "src": "web",
    }
    assert by_key["w.bmp"].image.mode == "RGB"
    assert by_key["z.png"] == "missing_caption" and by_key["v.png"] == "bad_weight"


def test_shard_a_folder_copies_bytes_and_keeps_captions_and_weights(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f")
    shards, skipped = shard_dataset(FolderDataset(root), tmp_path / "s", shard_size=2)
    assert skipped.as_dict() == {"bad_weight": 1, "missing_caption": 1}
    assert [p.name for p in shards] == ["train-000000.tar", "train-000001.tar"]
    samples = {s.key: s for s in ShardDataset([str(p) for p in shards]).iter_samples()}
    assert isinstance(samples["x"], Sample) and samples["x"].texts == [
        "first caption",
        "second caption",
    ]
    assert samples["y"].meta == {"weight": 0.5, "src": "web"}
    with tarfile.open(shards[0]) as tf:
        names = tf.getnames()
        assert tf.extractfile("x.png").read() == (root / "a" / "x.png").read_bytes()  # type: ignore[union-attr]
    assert "w.png" in names or "w.png" in tarfile.open(shards[1]).getnames()  # BMP -> PNG


def test_shard_cli_counts_rows_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        _image(i).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text(
        "image,caption,weight\n0.png,zero,1\n1.png,one,0.25\nmissing.png,gone,1\n2.png,,1\n"
    )
    assert main(["shard", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 samples in 1 shards" in out
    assert "left out 1: missing_image" in out and "left out 1: empty_caption" in out
    got = list(ShardDataset(str(tmp_path / "s" / "train-000000.tar")).iter_samples())
    assert [(s.texts, s.meta["weight"]) for s in got] == [(["zero"], 1.0), (["one"], 0.25)]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_odd_modes_long_texts_weights_and_json_captions_in_shards(tmp_path: Path) -> None:
    palette = _image(0).convert("P")
    sixteen = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    members = [
        ("cmyk.jpg", _encoded(_image(0, "CMYK"), "JPEG")),
        ("cmyk.txt", b"cmyk"),
        ("pal.png", _encoded(palette, "PNG", transparency=0)),
        ("pal.txt", b"palette with transparency"),
        ("deep.png", _encoded(sixteen, "PNG")),
        ("deep.txt", b"sixteen bit"),
        ("alpha.png", _encoded(_image(1, "LA"), "PNG")),
        ("alpha.json", json.dumps({"captions": ["only in json"], "weight": 0.25}).encode()),
        ("long.png", _encoded(_image(2), "PNG")),
        ("long.txt", ("word " * 4000).encode()),
        ("neg.png", _encoded(_image(3), "PNG")),
        ("neg.txt", b"negative weight"),
        ("neg.json", b'{"weight": -1}'),
    ]
    items = list(ShardDataset(_tar(tmp_path / "odd.tar", members)).iter_samples())
    good = [x for x in items if isinstance(x, Sample)]
    assert [x.key for x in good] == ["cmyk", "pal", "deep", "alpha", "long"]
    assert all(x.image.mode == "RGB" for x in good)
    assert good[2].image.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257, not clipped
    assert good[3].texts == ["only in json"] and good[3].meta == {"weight": 0.25}
    assert isinstance(items[-1], SampleError) and items[-1].reason == "bad_weight"
    proc = SampleProcessor(SeededCrop(8), seed=0)
    assert proc(0, good[3]).weight == 0.25
    assert len(proc(0, good[4]).text) == 2000  # an over-long caption is cut, not fatal


def test_a_shard_sample_is_read_by_its_key(tmp_path: Path) -> None:
    from clipforge.data.readers.shards import read_sample, read_sample_image

    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    members = [
        ("a/one.PNG", _encoded(red, "PNG")),
        ("a/one.txt", b"red"),
        ("two.jpg", _encoded(blue, "JPEG", quality=95)),
        ("two.txt", b"blue"),
        # The same key again: the reader's next sample, which a key cannot name.
        ("two.jpg", _encoded(red, "JPEG")),
        ("nopic.txt", b"no image"),
    ]
    shard = _tar(tmp_path / "s.tar", members)
    assert read_sample(shard, "a/one") == {"png": members[0][1], "txt": b"red"}
    assert read_sample(shard, "a/one", ("txt",)) == {"txt": b"red"}
    assert np.array_equal(np.asarray(read_sample_image(shard, "a/one")), np.asarray(red))
    # The first sample of a repeated key: JPEG keeps a flat colour within a few levels.
    assert read_sample_image(shard, "two").getpixel((0, 0))[2] > 240
    for key, detail in [("nokey", "no such sample"), ("nopic", "no image member")]:
        with pytest.raises(SampleError, match=detail) as e:
            read_sample_image(shard, key)
        assert e.value.reason == "missing_image"
    with pytest.raises(SampleError, match="no such shard"):
        read_sample(str(tmp_path / "gone.tar"), "a/one")
    # A rewritten shard is read again, not answered from the cached member table.
    _tar(tmp_path / "s.tar", [("three.png", _encoded(blue, "PNG"))])
    assert read_sample(shard, "three") == {"png": _encoded(blue, "PNG")}
    # A compressed shard, and a damaged one: the members before the damage are readable.
    gz = tmp_path / "s.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        tf.add(shard, arcname="inner.tar")  # any member will do: a key and an extension
    assert read_sample(str(gz), "inner") == {"tar": Path(shard).read_bytes()}
    long = _tar(tmp_path / "l.tar", [(f"k{i}.png", _encoded(red, "PNG")) for i in range(8)])
    data = Path(long).read_bytes()
    Path(long).write_bytes(data[: len(data) // 2])
    assert read_sample(long, "k0") == {"png": _encoded(red, "PNG")}
    with pytest.raises(SampleError):
        read_sample_image(long, "k7")
