"""Readers: manifests, tar shards, damaged data and user errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import clipforge.data.readers.shards as shard_reader
from clipforge.data.readers import ManifestDataset, ShardDataset, open_dataset, to_rgb
from clipforge.data.sample import Sample, SampleError
from clipforge.errors import ClipforgeError

# --------------------------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------------------------


def _rgb(seed: int, size: tuple[int, int] = (16, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _sample_members(key: str, seed: int, caption: str | None = None) -> list[tuple[str, bytes]]:
    return [
        (f"{key}.png", _encode(_rgb(seed))),
        (f"{key}.txt", (caption or f"caption {key}").encode()),
        (f"{key}.json", json.dumps({"index": seed}).encode()),
    ]


def _shards(folder: Path, n_shards: int = 3, per_shard: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        members = []
        for j in range(per_shard):
            i = s * per_shard + j
            members += _sample_members(f"s{i:04d}", i)
        paths.append(_tar(folder / f"train-{s:06d}.tar", members))
    return paths


def _reasons(items: list[Sample | SampleError]) -> list[str]:
    return ["ok" if isinstance(x, Sample) else x.reason for x in items]


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def test_csv_manifest_reads_rows_meta_and_relative_and_absolute_paths(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    _rgb(0).save(tmp_path / "img" / "a.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    _rgb(1, (20, 10)).save(other / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,caption,source\n"
        'img/a.png,"a red, round thing",web\n'
        "\n"  # blank lines are ignored
        f'{other / "b.png"},"two\nlines",scan\n',
        encoding="utf-8",
    )
    ds = ManifestDataset(manifest)
    assert len(ds) == 2
    a = ds.load(0)
    assert a.texts == ["a red, round thing"]
    assert a.meta == {"source": "web"}
    assert a.key == "img/a.png"
    assert a.image.mode == "RGB" and a.image.size == (16, 16)
    assert np.array_equal(np.asarray(a.image), np.asarray(_rgb(0)))
    b = ds.load(1)
    assert b.texts == ["two\nlines"]
    assert b.image.size == (20, 10)
    assert ds.load(-1).key == b.key
    with pytest.raises(IndexError):
        ds.load(2)


def test_csv_captions_and_meta_columns(tmp_path: Path) -> None:
    _rgb(0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(
        "image,caption,captions,meta,weight\n"
        'a.png,first,"[""x"", ""y""]","{""k"": [1, 2]}",0.5\n'
        "a.png,only,,,1\n"
        "a.png,free,,some notes,1\n"
    )
    ds = ManifestDataset(tmp_path / "m.csv")
    assert ds.load(0).texts == ["x", "y"]
    # A CSV weight cell is parsed into the float the loss weights with.
    assert ds.load(0).meta == {"k": [1, 2], "weight": 0.5}
    assert ds.load(1).texts == ["only"] and ds.load(1).meta == {"weight": 1.0}
    assert ds.load(2).meta == {"meta": "some notes", "weight": 1.0}
    # Named as the caption column, `captions` is plain text again.
    literal = ManifestDataset(tmp_path / "m.csv", caption_key="captions")
    assert literal.load(0).texts == ['["x", "y"]']
    assert literal.load(0).meta["caption"] == "first"


def test_several_caption_columns(tmp_path: Path) -> None:
    _rgb(0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,c1,c2,src\na.png,one,two,web\na.png,,only two,web\n")
    ds = ManifestDataset(tmp_path / "m.csv", caption_key="c1, c2")
    assert ds.load(0).texts == ["one", "two"] and ds.load(0).meta == {"src": "web"}
    assert ds.load(1).texts == ["only two"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "c1": "x", "c2": ["y", "z"]}))
    assert ManifestDataset(tmp_path / "m.jsonl", caption_key="c1,c2").load(0).texts == [
        "x",
        "y",
        "z",
    ]
    with pytest.raises(ClipforgeError, match="no column 'c3'"):
        ManifestDataset(tmp_path / "m.csv", caption_key="c1,c3")


def test_tsv_and_custom_column_names(tmp_path: Path) -> None:
    _rgb(0).save(tmp_path / "a.png")
    manifest = tmp_path / "m.tsv"
    manifest.write_text('\ufefftext\tfilepath\nsays "hi" twice\ta.png\n', encoding="utf-8")
    ds = ManifestDataset(manifest, image_key="filepath", caption_key="text")
    sample = ds.load(0)
    assert sample.texts == ['says "hi" twice']  # quotes inside a field are literal
    assert sample.meta == {}


def test_jsonl_caption_list_and_nested_meta(tmp_path: Path) -> None:
    _rgb(0).save(tmp_path / "a.png")
    _rgb(1).save(tmp_path / "b.png")
    rows = [
        {"image": "a.png", "caption": ["one", "two"], "source": "x"},
        {"image": "b.png", "caption": "first", "captions": ["c1", "c2", "c3"], "meta": {"k": 1}},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = ManifestDataset(manifest)
    assert len(ds) == 2
    assert ds.load(0).texts == ["one", "two"]
    assert ds.load(0).meta == {"source": "x"}
    assert ds.load(1).texts == ["c1", "c2", "c3"]  # `captions` wins over `caption`
    assert ds.load(1).meta == {"k": 1}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('image,caption\na.png,""\n', "empty_caption"),
        ("image,caption\na.png,   \n", "empty_caption"),
    ],
)
def test_empty_caption_is_a_sample_error_not_a_manifest_error(
    tmp_path: Path, content: str, reason: str
) -> None:
    _rgb(0).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(content)
    ds = ManifestDataset(tmp_path / "m.csv")
    assert len(ds) == 1
    with pytest.raises(SampleError) as info:
        ds.load(0)
    assert info.value.reason == reason
    assert "m.csv:2" in info.value.detail


def test_jsonl_null_and_empty_list_captions_are_empty(tmp_path: Path) -> None:
    _rgb(0).save(tmp_path / "a.png")
    lines = ['{"image": "a.png", "caption": null}', '{"image": "a.png", "caption": []}']
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    ds = ManifestDataset(tmp_path / "m.jsonl")
    for i in range(2):
        with pytest.raises(SampleError, match="empty_caption"):
            ds.load(i)


def test_corrupt_missing_and_exotic_images(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    size = (24, 12)
    base = _rgb(3, size)
    png = _encode(base, "PNG")
    jpg = _encode(base, "JPEG")
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 20)
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    base.convert("P").save(tmp_path / "palette.png")
    rgba = base.convert("RGBA")
    alpha = np.full((size[1], size[0]), 255, np.uint8)
    alpha[0, 0] = 0  # one fully transparent pixel
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    gray16 = np.zeros((size[1], size[0]), np.uint16)
    gray16[0, 0], gray16[0, 1], gray16[0, 2] = 65535, 257 * 100, 300
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    base.convert("L").save(tmp_path / "gray.png")
    base.convert("1").save(tmp_path / "bw.png")
    base.convert("LA").save(tmp_path / "la.png")
    names = [
        "truncated.png",
        "truncated.jpg",
        "garbage.png",
        "missing.png",
        "cmyk.jpg",
        "palette.png",
        "rgba.png",
        "gray16.png",
        "gray.png",
        "bw.png",
        "la.png",
    ]
    (tmp_path / "m.csv").write_text(
        "image,caption\n" + "".join(f"{n},caption of {n}\n" for n in names)
    )
    ds = ManifestDataset(tmp_path / "m.csv")
    outcome: dict[str, str | Image.Image] = {}
    for i, name in enumerate(names):
        try:
            outcome[name] = ds.load(i).image
        except SampleError as exc:
            outcome[name] = exc.reason
            assert name in exc.detail  # the detail names the file
    assert outcome["truncated.png"] == "unreadable_image"
    assert outcome["truncated.jpg"] == "unreadable_image"
    assert outcome["garbage.png"] == "unreadable_image"
    assert outcome["missing.png"] == "missing_image"
    for name in names[4:]:
        image = outcome[name]
        assert isinstance(image, Image.Image), name
        assert image.mode == "RGB" and image.size == size, name
    rgba_px = np.asarray(outcome["rgba.png"])
    assert tuple(rgba_px[0, 0]) == (255, 255, 255)  # transparent -> white background
    assert np.array_equal(rgba_px[1:], np.asarray(base)[1:])
    gray_px = np.asarray(outcome["gray16.png"])[0, :3, 0]
    assert list(gray_px) == [255, 100, 1]  # rescaled, not clipped at 255
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("array", "mode", "expected"),
    [
        (np.array([[0, 200, 65535]], np.uint16), "I;16", [0, 1, 255]),  # dark stays dark
        (np.array([[0, 100, 255]], np.int32), "I", [0, 100, 255]),
        (np.array([[0, 25700, 65535]], np.int32), "I", [0, 100, 255]),
        (np.array([[-10, 0, 10]], np.int32), "I", [0, 128, 255]),
        (np.array([[0.0, 0.5, 1.0]], np.float32), "F", [0, 128, 255]),
        (np.array([[0.0, 100.0, 255.0]], np.float32), "F", [0, 100, 255]),
    ],
)
def test_to_rgb_rescales_high_bit_depth(array: np.ndarray, mode: str, expected: list[int]) -> None:
    image = Image.fromarray(array)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, :, 0].tolist() == expected
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_to_rgb_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    px = np.asarray(to_rgb(image))
    assert tuple(px[0, 0]) == (255, 255, 255)
    assert tuple(px[1, 1]) == (255, 0, 0)


# --------------------------------------------------------------------------------------------
# Manifest errors
# --------------------------------------------------------------------------------------------


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ClipforgeError, match="manifest not found: .*nope.csv"):
        ManifestDataset(tmp_path / "nope.csv")


def test_csv_row_with_too_many_fields_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad_rows.csv"
    path.write_text("image,caption\na.png,fine\nb.png,one,two\n")
    with pytest.raises(ClipforgeError) as info:
        ManifestDataset(path)
    message = str(info.value)
    assert "bad_rows.csv:3:" in message
    assert "expected 2 fields" in message and "found 3" in message


def test_csv_line_numbers_count_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('image,caption\na.png,"spans\nthree\nlines"\nb.png\n')
    with pytest.raises(ClipforgeError, match=r"m\.csv:5: expected 2 fields"):
        ManifestDataset(path)


def test_csv_unterminated_quote_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('image,caption\na.png,"never closed\nb.png,ok\n')
    with pytest.raises(ClipforgeError, match=r"m\.csv:2:"):
        ManifestDataset(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("image,caption\n ,x\n", "m.csv:2: empty image path"),
        ("", "empty manifest"),
        ("image,caption,image\na,b,c\n", "m.csv:1: duplicate column 'image'"),
        ('image,caption,captions\na.png,x,"not json"\n', "m.csv:2: column 'captions'"),
    ],
)
def test_other_csv_errors(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ClipforgeError) as info:
        ManifestDataset(tmp_path / "m.csv")
    assert fragment in str(info.value)


def test_missing_column_names_column_and_columns_present(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("filepath,caption\na.png,x\n")
    with pytest.raises(ClipforgeError) as info:
        ManifestDataset(path)
    message = str(info.value)
    assert "m.csv" in message and "'image'" in message and "'filepath'" in message
    with pytest.raises(ClipforgeError, match="'title'"):
        ManifestDataset(path, image_key="filepath", caption_key="title")


def test_jsonl_bad_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"image": "a.png", "caption": "x"}\n'
        '{"image": "b.png", "caption": "y"}\n'
        '{"image": "c.png", "caption": \n'
    )
    with pytest.raises(ClipforgeError) as info:
        ManifestDataset(path)
    assert "m.jsonl:3:" in str(info.value) and "invalid JSON" in str(info.value)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"caption": "x"}', "m.jsonl:2: no column 'image'; columns present: 'caption'"),
        ('{"image": "a.png"}', "m.jsonl:2: no column 'caption'"),
        ('["a.png", "x"]', "m.jsonl:2: expected a JSON object"),
        ('{"image": "", "caption": "x"}', "m.jsonl:2: empty image path"),
        ('{"image": 3, "caption": "x"}', "m.jsonl:2: image path must be a string"),
        ('{"image": "a.png", "caption": [1, 2]}', "m.jsonl:2: field 'caption'"),
    ],
)
def test_other_jsonl_errors(tmp_path: Path, line: str, fragment: str) -> None:
    (tmp_path / "m.jsonl").write_text('{"image": "ok.png", "caption": "fine"}\n' + line + "\n")
    with pytest.raises(ClipforgeError) as info:
        ManifestDataset(tmp_path / "m.jsonl")
    assert fragment in str(info.value)


def test_json_array_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('[\n {"image": "a.png", "caption": "x"}\n]\n')
    with pytest.raises(ClipforgeError, match="m.json:1: .*JSON Lines"):
        ManifestDataset(tmp_path / "m.json")


def test_invalid_utf8_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b"image,caption\na.png,\xff\xfe bad\n")
    with pytest.raises(ClipforgeError, match="m.csv: not valid UTF-8"):
        ManifestDataset(tmp_path / "m.csv")


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def test_brace_pattern_reads_all_shards_in_order_and_resumes(tmp_path: Path) -> None:
    _shards(tmp_path, n_shards=3, per_shard=7)  # 21 samples
    pattern = f"{tmp_path}/train-{{000000..000002}}.tar"
    ds = ShardDataset(pattern)
    assert ds.shards == [str(tmp_path / f"train-{i:06d}.tar") for i in range(3)]
    assert ds.count_samples() == 21
    items = list(ds.iter_samples())
    assert all(isinstance(x, Sample) for x in items)
    assert [x.key for x in items] == [f"s{i:04d}" for i in range(21)]
    first = items[0]
    assert first.texts == ["caption s0000"] and first.meta == {"index": 0}
    assert np.array_equal(np.asarray(first.image), np.asarray(_rgb(0)))

    resumed = list(ds.iter_samples(start=10))
    assert [x.key for x in resumed] == [f"s{i:04d}" for i in range(10, 21)]
    assert list(ds.iter_samples(start=21)) == []
    assert list(ds.iter_samples(start=500)) == []


def test_start_skips_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _shards(tmp_path, n_shards=2, per_shard=10)
    decoded: list[str] = []
    real = shard_reader.decode_image

    def counting(source: bytes, label: str) -> Image.Image:
        decoded.append(label)
        return real(source, label)

    monkeypatch.setattr(shard_reader, "decode_image", counting)
    ds = ShardDataset([str(p) for p in sorted(tmp_path.glob("*.tar"))])
    items = list(ds.iter_samples(start=15))
    assert [x.key for x in items] == [f"s{i:04d}" for i in range(15, 20)]
    assert len(decoded) == 5


def test_shard_groups_and_per_sample_errors(tmp_path: Path) -> None:
    members = (
        _sample_members("a", 0)
        + [("b.txt", b"no image here")]
        + [("c.jpg", _encode(_rgb(2), "JPEG"))]  # no caption
        + [("d.png", b"\x89PNG garbage bytes"), ("d.txt", b"damaged image")]
        + [("e.png", _encode(_rgb(4))), ("e.txt", b"first\r\n\nsecond\n")]
        + [("f.png", _encode(_rgb(5))), ("f.txt", b"   \n")]
        + [("g.png", _encode(_rgb(6))), ("g.txt", b"\xff\xfe")]
        + [("h.png", _encode(_rgb(7))), ("h.txt", b"x"), ("h.json", b"[1, 2")]
        + [("dir/i.seg.png", b"ignored"), ("dir/i.png", _encode(_rgb(8))), ("dir/i.txt", b"i")]
        + [("README", b"no extension"), ("._j.png", b"macOS resource fork")]
        + [("k.PNG", _encode(_rgb(9))), ("k.txt", b"upper case ext")]
    )
    path = _tar(tmp_path / "mixed.tar", members)
    ds = ShardDataset(str(path))
    items = list(ds.iter_samples())
    assert _reasons(items) == [
        "ok",
        "missing_image",
        "missing_caption",
        "unreadable_image",
        "ok",
        "empty_caption",
        "unreadable_caption",
        "unreadable_meta",
        "ok",
        "ok",
    ]
    assert ds.count_samples() == len(items)
    assert items[4].texts == ["first", "second"]
    assert items[8].key == "dir/i" and items[8].texts == ["i"]
    assert items[9].key == "k"
    assert str(path) in items[1].detail and "b" in items[1].detail


def test_repeated_key_starts_a_new_sample(tmp_path: Path) -> None:
    members = _sample_members("a", 0, "one") + _sample_members("a", 1, "two")
    ds = ShardDataset(str(_tar(tmp_path / "dup.tar", members)))
    items = list(ds.iter_samples())
    assert [x.texts for x in items] == [["one"], ["two"]]  # type: ignore[union-attr]
    assert ds.count_samples() == 2


def test_damaged_member_and_truncated_shard(tmp_path: Path) -> None:
    paths = _shards(tmp_path, n_shards=3, per_shard=6)
    # Shard 0: overwrite the image bytes of sample 2 with garbage in place.
    raw = bytearray(paths[0].read_bytes())
    with tarfile.open(paths[0]) as tf:
        member = tf.getmember("s0002.png")
    raw[member.offset_data : member.offset_data + member.size] = b"\x00" * member.size
    paths[0].write_bytes(bytes(raw))
    # Shard 1: cut in the middle of sample 9's image (the 4th of that shard).
    with tarfile.open(paths[1]) as tf:
        member = tf.getmember("s0009.png")
    cut = member.offset_data + member.size // 2
    paths[1].write_bytes(paths[1].read_bytes()[:cut])

    ds = ShardDataset([str(p) for p in paths])
    items = list(ds.iter_samples())
    reasons = _reasons(items)
    # 6 from shard 0 (one unreadable), 3 intact + 1 truncated_shard from shard 1, 6 from 2.
    assert reasons == (
        ["ok", "ok", "unreadable_image", "ok", "ok", "ok"]
        + ["ok", "ok", "ok", "truncated_shard"]
        + ["ok"] * 6
    )
    assert str(paths[1]) in items[9].detail
    assert [x.key for x in items if isinstance(x, Sample)][-6:] == [
        f"s{i:04d}" for i in range(12, 18)
    ]
    assert ds.count_samples() == 16
    # Resuming right at, and right after, the truncation error keeps positions stable.
    assert _reasons(list(ds.iter_samples(start=9))) == reasons[9:]
    assert _reasons(list(ds.iter_samples(start=10))) == reasons[10:]


def test_every_cut_point_yields_one_truncated_shard_error(tmp_path: Path) -> None:
    members: list[tuple[str, bytes]] = []
    for i in range(4):
        members += _sample_members(f"k{i}", i)
    full = _tar(tmp_path / "full.tar", members).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        end_of_members = max(m.offset_data + m.size for m in tf.getmembers())
    cut_path = tmp_path / "cut.tar"
    for cut in range(0, end_of_members + 1, 97):
        cut_path.write_bytes(full[:cut])
        if cut < tarfile.BLOCKSIZE:  # not even one header: as the only shard, refused at once
            with pytest.raises(ClipforgeError, match="cut.tar is not a tar shard"):
                ShardDataset(str(cut_path))
            continue
        ds = ShardDataset(str(cut_path))
        items = list(ds.iter_samples())
        reasons = _reasons(items)
        assert reasons[-1:] == ["truncated_shard"], cut
        assert reasons[:-1] == ["ok"] * (len(items) - 1), cut
        assert ds.count_samples() == len(items), cut


def test_garbage_header_mid_shard_is_damage(tmp_path: Path) -> None:
    members = _sample_members("a", 0) + _sample_members("b", 1) + _sample_members("c", 2)
    path = _tar(tmp_path / "x.tar", members)
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tf:
        header = tf.getmember("b.png").offset
    raw[header : header + 512] = b"\x7f" * 512
    path.write_bytes(bytes(raw))
    # Sample a is dropped too: whether more of its members followed cannot be known.
    assert _reasons(list(ShardDataset(str(path)).iter_samples())) == ["truncated_shard"]


@pytest.mark.parametrize("content", [b"", b"not a tar file at all" * 40])
def test_unopenable_shard_is_one_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "a-000000.tar"
    bad.write_bytes(content)
    good = _tar(tmp_path / "a-000001.tar", _sample_members("z", 0))
    ds = ShardDataset([str(bad), str(good)])
    assert _reasons(list(ds.iter_samples())) == ["truncated_shard", "ok"]
    assert ds.count_samples() == 2


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "empty file"),
        (bytes(range(256)) * 40, "no tar header at its start"),
        (b"\x1f\x8b" + bytes(100), "gzip data that does not decompress"),
    ],
)
def test_a_data_set_of_no_tar_at_all_is_refused_at_open(
    tmp_path: Path, content: bytes, why: str
) -> None:
    # Otherwise the reader would skip round and round the data until the skip limit.
    bad = tmp_path / "a.tar"
    bad.write_bytes(content)
    with pytest.raises(ClipforgeError, match=f"{bad} is not a tar shard \\({why}"):
        ShardDataset(str(bad))
    (tmp_path / "b.tar").write_bytes(content)
    with pytest.raises(ClipforgeError, match="nor is the other shard"):
        ShardDataset([str(bad), str(tmp_path / "b.tar")])


def test_csv_takes_a_caption_longer_than_the_csv_field_limit(tmp_path: Path) -> None:
    # csv's default limit is 128 KiB; JSON Lines has none, and a batch cuts any caption
    # to 2000 characters, so both formats give the same sample and the same cut caption.
    from clipforge.data.batches import SampleProcessor
    from clipforge.data.transforms import SeededCrop

    _rgb(0).save(tmp_path / "a.png")
    caption = "a red ball " * 100_000  # 1.1 MB
    (tmp_path / "m.csv").write_text(f'image,caption\na.png,"{caption}"\n')
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "caption": caption}) + "\n")
    processor = SampleProcessor(SeededCrop(16), seed=0)
    items = []
    for name in ("m.csv", "m.jsonl"):
        sample = ManifestDataset(tmp_path / name).load(0)
        assert sample.texts == [caption]
        items.append(processor(0, sample))
    assert items[0].texts == items[1].texts == [caption[:2000]]


def test_empty_but_valid_tar_has_no_samples(tmp_path: Path) -> None:
    path = _tar(tmp_path / "empty.tar", [])
    ds = ShardDataset(str(path))
    assert list(ds.iter_samples()) == []
    assert ds.count_samples() == 0


def test_stream_mode_via_pipe_url(tmp_path: Path) -> None:
    paths = _shards(tmp_path, n_shards=2, per_shard=4)
    cut = paths[0].read_bytes()
    paths[0].write_bytes(cut[: len(cut) // 2])
    ds = ShardDataset([f"pipe:cat {p}" for p in paths])
    reasons = _reasons(list(ds.iter_samples()))
    assert reasons[-5:] == ["truncated_shard", "ok", "ok", "ok", "ok"]
    assert ds.count_samples() == len(reasons)
    assert [x.key for x in ds.iter_samples(start=len(reasons) - 2)] == ["s0006", "s0007"]


def test_custom_caption_and_image_keys(tmp_path: Path) -> None:
    members = [("a.webp", _encode(_rgb(0), "WEBP")), ("a.caption", b"webp caption")]
    ds = ShardDataset(str(_tar(tmp_path / "x.tar", members)), caption_key="caption")
    (item,) = list(ds.iter_samples())
    assert isinstance(item, Sample) and item.texts == ["webp caption"]


def test_missing_shards_are_named(tmp_path: Path) -> None:
    _shards(tmp_path, n_shards=2)
    with pytest.raises(ClipforgeError, match=r"shard not found: .*train-000002\.tar"):
        ShardDataset(f"{tmp_path}/train-{{000000..000002}}.tar")
    with pytest.raises(ClipforgeError, match=r"\(and 1 more\)"):
        ShardDataset([str(tmp_path / "x.tar"), str(tmp_path / "y.tar")])
    with pytest.raises(ClipforgeError, match="bad shard pattern 'x-{0..2.tar'"):
        ShardDataset("x-{0..2.tar")
    with pytest.raises(ClipforgeError, match="no shards"):
        ShardDataset([])
    with pytest.raises(ValueError):
        list(ShardDataset(str(tmp_path / "train-000000.tar")).iter_samples(start=-1))


# --------------------------------------------------------------------------------------------
# open_dataset
# --------------------------------------------------------------------------------------------


def test_open_dataset_picks_the_reader(tmp_path: Path) -> None:
    shard_dir = tmp_path / "shards"
    paths = _shards(shard_dir, n_shards=3, per_shard=2)
    (shard_dir / "notes.csv").write_text("image,caption\n")  # tars win over manifests

    single = open_dataset(str(paths[0]))
    assert isinstance(single, ShardDataset) and single.shards == [str(paths[0])]
    pattern = open_dataset(f"{shard_dir}/train-{{000000..000001}}.tar")
    assert isinstance(pattern, ShardDataset) and len(pattern.shards) == 2
    folder = open_dataset(shard_dir)
    assert isinstance(folder, ShardDataset)
    assert folder.shards == [str(p) for p in paths] and folder.count_samples() == 6

    manifest_dir = tmp_path / "manifest"
    manifest_dir.mkdir()
    _rgb(0).save(manifest_dir / "a.png")
    (manifest_dir / "m.jsonl").write_text('{"file": "a.png", "text": "x"}\n')
    by_dir = open_dataset(manifest_dir, image_key="file", caption_key="text")
    assert isinstance(by_dir, ManifestDataset) and by_dir.load(0).texts == ["x"]
    by_file = open_dataset(str(manifest_dir / "m.jsonl"), image_key="file", caption_key="text")
    assert isinstance(by_file, ManifestDataset) and len(by_file) == 1


def test_open_dataset_errors(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"x")
    with pytest.raises(ClipforgeError, match=r"data\.parquet.*expected a manifest"):
        open_dataset(tmp_path / "data.parquet")
    with pytest.raises(ClipforgeError, match=r"dataset not found: .*nothing.*\.tar"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(ClipforgeError, match="manifest not found"):
        open_dataset(tmp_path / "nothing.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipforgeError, match=r"no \*\.tar shards, manifest or images"):
        open_dataset(empty)
    (empty / "a.csv").write_text("image,caption\n")
    (empty / "b.jsonl").write_text("")
    with pytest.raises(ClipforgeError, match=r"several manifests \(a\.csv, b\.jsonl\)"):
        open_dataset(empty)
